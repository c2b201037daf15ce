"""Training loop of one phase on a DeepSpeed engine, and sharded evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from sparsetrain.config.schema import RunConfig
from sparsetrain.engine import preemption
from sparsetrain.engine.batches import BatchPlan, eval_shard, iterate_micro_batches
from sparsetrain.engine.checkpoint import Checkpointer
from sparsetrain.engine.deepspeed_setup import GradientHooks, build_engine
from sparsetrain.engine.distributed import DistInfo, all_reduce_sum, any_rank
from sparsetrain.engine.segments import holds_partition
from sparsetrain.progress import Progress, log
from sparsetrain.pruning.masks import prunable_parameters
from sparsetrain.pruning.sharded_masks import ShardedMasks, read_ranges
from sparsetrain.regularizers.base import GradientRegularizer
from sparsetrain.tasks.base import Task
from sparsetrain.tracking import Tracker

PHASE_SEEDS = {"dense": 1, "sparsify": 2, "prune": 3, "finetune": 4}


@dataclass
class RunContext:
    """Everything a phase needs besides its model: config, ranks, data, task, tracking, checkpoints."""

    cfg: RunConfig
    dist: DistInfo
    train_set: Dataset
    test_set: Dataset
    task: Task
    tracker: Tracker
    checkpointer: Checkpointer
    out_dir: Path
    state: dict[str, Any] = field(default_factory=dict)
    phase_info: dict[str, Any] = field(default_factory=dict)  # facts of the last trained phase for its results

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cfg.deepspeed.precision == "bf16" else torch.float32

    def plan(self, phase: str) -> BatchPlan:
        cfg = self.cfg
        return BatchPlan(len(self.train_set), cfg.train.batch_size, self.dist.world_size, self.dist.rank,
                         cfg.deepspeed.gradient_accumulation_steps, cfg.seed * 10 + PHASE_SEEDS[phase])

    def phase_steps(self, phase: str) -> int:
        epochs = getattr(self.cfg.phases, phase).epochs
        return max(1, round(epochs * self.plan(phase).steps_per_epoch))

    def global_offset(self, phase: str) -> int:
        """Steps of the training phases before `phase`, so logged steps increase across the whole run."""
        order = ["dense", "sparsify", "finetune"]
        before = order[: order.index(phase)] if phase in order else order
        return sum(self.phase_steps(p) for p in before if getattr(self.cfg.phases, p).enabled)


def to_device(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    return x.to(device=device, dtype=dtype, non_blocking=True), y.to(device=device, non_blocking=True)


def _eval_batches(ctx: RunContext, indices: list[int]) -> Any:
    size = ctx.cfg.train.eval_batch_size
    if hasattr(ctx.test_set, "__getitems__") and ctx.cfg.data.num_workers == 0:
        return (ctx.test_set.__getitems__(indices[i:i + size]) for i in range(0, len(indices), size))
    return DataLoader(Subset(ctx.test_set, indices), batch_size=size, num_workers=ctx.cfg.data.num_workers,
                      collate_fn=None if not hasattr(ctx.test_set, "__getitems__") else lambda b: b)


def _lockstep_indices(ctx: RunContext) -> tuple[list[int], int]:
    """This rank's evaluation indices, padded to as many batches as the largest shard has, and how many are real.

    A ZeRO-3 forward gathers every layer with a collective, so every rank must run the same number of batches
    (an empty shard runs one); the padding repeats a sample and is weighted 0.
    """
    shard = list(eval_shard(len(ctx.test_set), ctx.dist.world_size, ctx.dist.rank))
    size = ctx.cfg.train.eval_batch_size
    batches = max(1, -(-len(eval_shard(len(ctx.test_set), ctx.dist.world_size, 0)) // size))
    padding = max(0, (batches - 1) * size + 1 - len(shard))
    return shard + [shard[0] if shard else 0] * padding, len(shard)


@torch.no_grad()
def evaluate(ctx: RunContext, model: nn.Module) -> dict[str, float]:
    """Metrics over the whole test set: each rank evaluates a contiguous shard, sums are all-reduced."""
    indices, real = _lockstep_indices(ctx)
    was_training = model.training
    model.eval()
    total, seen = None, 0
    dtype = next(model.parameters()).dtype  # bf16 inside an engine, fp32 for a plain model
    for batch in _eval_batches(ctx, indices):
        x, y = to_device(batch, ctx.dist.device, dtype)
        out = model(x)
        n = min(max(real - seen, 0), len(x))
        seen += len(x)
        stats = ctx.task.batch_stats(out[:max(n, 1)], y[:max(n, 1)]).double().cpu() * (1.0 if n else 0.0)
        total = stats if total is None else total + stats
    model.train(was_training)
    return ctx.task.finalize(all_reduce_sum(total))


def _client_state(ctx: RunContext, phase: str, step: int, regularizer: GradientRegularizer) -> dict[str, Any]:
    """What a checkpoint holds besides DeepSpeed's state (masks go to per-rank files, see `Checkpointer.save`)."""
    from sparsetrain.config import config_to_dict

    return {"phase": phase, "step": step, "regularizer": regularizer.state_dict(), "config": config_to_dict(ctx.cfg)}


def _segment_ranges(hooks: GradientHooks) -> list[tuple[str, int, int]]:
    return [(s.name, s.start, s.stop) for s in hooks.segments]


def _masks_device(ctx: RunContext, hooks: GradientHooks) -> torch.device:
    """Masks sit beside the fp32 masters they mask (host memory under ZeRO-Offload)."""
    return hooks.segments[0].master.device if hooks.segments else ctx.dist.device


def _elastic(ctx: RunContext, resume_tag: str | None) -> bool:
    """Whether the checkpoint to resume was written by another number of ranks under ZeRO >= 1 (then it is
    converted to DeepSpeed's universal format and loaded through it)."""
    if resume_tag is None:
        return False
    current = ctx.state.get("current") or {}
    saved = ctx.checkpointer.saved_world_size(resume_tag, current.get("world_size"))
    if saved != ctx.dist.world_size:
        log.info(f"resuming {resume_tag}, written by {saved} ranks, on {ctx.dist.world_size} ranks")
    return ctx.checkpointer.prepare_elastic(resume_tag, saved, ctx.cfg.deepspeed.zero_stage, ctx.cfg.optim.name)


def mask_memory(masks: ShardedMasks | None, world_size: int) -> dict[str, list[int]] | None:
    """Bytes of packed masks and weights they cover, per rank (a collective; None without masks)."""
    if masks is None:
        return None
    rank = torch.distributed.get_rank() if world_size > 1 else 0
    table = torch.zeros(world_size, 2, dtype=torch.int64)
    table[rank] = torch.tensor([masks.nbytes, masks.numel])
    all_reduce_sum(table)
    return {"bytes_per_rank": table[:, 0].tolist(), "weights_per_rank": table[:, 1].tolist()}


def train_phase(ctx: RunContext, phase: str, model: nn.Module, regularizer: GradientRegularizer,
                masks_file: Path | None, resume_tag: str | None) -> nn.Module:
    """Train `model` for the phase's steps on a DeepSpeed engine; returns the trained module (ZeRO-3 partitions
    under stage 3). `masks_file`: packed masks (whole ranges) to keep fixed; each rank reads its share."""
    cfg, plan, total = ctx.cfg, ctx.plan(phase), ctx.phase_steps(phase)
    lr = getattr(cfg.phases, phase).lr or cfg.optim.lr
    prunable = prunable_parameters(model)
    hooks = GradientHooks(regularizer, None)
    universal = _elastic(ctx, resume_tag)
    engine = build_engine(cfg, model, ctx.dist.world_size, lr, total, prunable, hooks, universal)
    regularizer.bind(prunable_parameters(engine.module), holds_partition(engine))
    if masks_file is not None:
        hooks.masks = read_ranges([masks_file], _segment_ranges(hooks), _masks_device(ctx, hooks))
    start = 0
    if resume_tag is not None:
        client = ctx.checkpointer.load(engine, resume_tag, universal)
        start = client["step"]
        regularizer.load_state_dict(client["regularizer"])
        saved = ctx.checkpointer.load_masks(resume_tag, _segment_ranges(hooks), _masks_device(ctx, hooks))
        hooks.masks = saved if saved is not None else hooks.masks
    ctx.phase_info = {"mask_memory": mask_memory(hooks.masks, ctx.dist.world_size)} if hooks.masks else {}
    _run_steps(ctx, phase, engine, hooks, plan, start, total)
    return engine.module


def _run_steps(ctx: RunContext, phase: str, engine: Any, hooks: GradientHooks, plan: BatchPlan, start: int,
               total: int) -> None:
    cfg, offset = ctx.cfg, ctx.global_offset(phase)
    params = prunable_parameters(engine.module)
    partitioned = holds_partition(engine)
    progress = Progress(phase, start, total, cfg.train.log_every)
    batches = iterate_micro_batches(ctx.train_set, plan, start, total, cfg.data.num_workers)
    engine.train()
    for step in range(start, total):
        loss = _one_step(ctx, engine, hooks.regularizer, params, batches, plan.grad_accum)
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == total:
            reg = hooks.last_value.detach().float().cpu() if hooks.last_value is not None else torch.zeros(())
            reg = float(all_reduce_sum(reg.reshape(1)).item()) if partitioned else float(reg)
            values = {"loss": float(loss), "reg": reg, "lr": engine.get_lr()[0]}
            progress.update(step, **values)
            ctx.tracker.log({"phase": phase, "step": step + 1, **values}, offset + step + 1)
        stop = any_rank(preemption.stop_requested(), ctx.dist.device)
        if stop or (step + 1) % cfg.train.checkpoint_every == 0:
            ctx.checkpointer.save(engine, phase, step + 1, _client_state(ctx, phase, step + 1, hooks.regularizer),
                                  ctx.state, hooks.masks)
        if stop:
            raise preemption.Preempted(f"stopped on request after {phase} step {step + 1}; checkpoint saved")


def _one_step(ctx: RunContext, engine: Any, regularizer: GradientRegularizer, params: dict[str, torch.Tensor],
              batches: Any, grad_accum: int) -> torch.Tensor:
    """One optimizer step over `grad_accum` micro-batches; returns the last micro-batch's task loss."""
    for _ in range(grad_accum):
        x, y = to_device(next(batches), ctx.dist.device, ctx.dtype)
        task_loss = ctx.task.loss(engine(x), y)
        term = regularizer.loss_term(params)
        engine.backward(task_loss if term is None else task_loss + term)
        engine.step()
    regularizer.end_step()
    return task_loss.detach()
