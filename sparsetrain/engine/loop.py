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
from sparsetrain.progress import Progress, StepTimer
from sparsetrain.pruning.masks import mask_sparsity, prunable_parameters
from sparsetrain.pruning.schedule import GradualPruning
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

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cfg.deepspeed.precision == "bf16" else torch.float32

    def plan(self, phase: str) -> BatchPlan:
        cfg = self.cfg
        return BatchPlan(len(self.train_set), cfg.train.batch_size, self.dist.world_size, self.dist.rank,
                         cfg.deepspeed.gradient_accumulation_steps, cfg.seed * 10 + PHASE_SEEDS[phase])

    def phase_steps(self, phase: str) -> int:
        epochs = getattr(self.cfg.phases, phase).epochs
        if phase == "dense" and epochs == 0:
            return 0  # evaluate only (Pipeline.run_dense)
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


@torch.no_grad()
def evaluate(ctx: RunContext, model: nn.Module) -> dict[str, float]:
    """Metrics over the whole test set: each rank evaluates a contiguous shard, sums are all-reduced."""
    shard = eval_shard(len(ctx.test_set), ctx.dist.world_size, ctx.dist.rank)
    indices = list(shard) or [0]  # an empty shard still runs once (weighted 0) so collectives line up
    weight = 1.0 if len(shard) else 0.0
    was_training = model.training
    model.eval()
    total = None
    dtype = next(model.parameters()).dtype  # bf16 inside an engine, fp32 for a plain model
    for batch in _eval_batches(ctx, indices):
        x, y = to_device(batch, ctx.dist.device, dtype)
        stats = ctx.task.batch_stats(model(x), y).double().cpu() * weight
        total = stats if total is None else total + stats
    model.train(was_training)
    return ctx.task.finalize(all_reduce_sum(total))


def _client_state(ctx: RunContext, phase: str, step: int, masks: dict[str, torch.Tensor] | None,
                  regularizer: GradientRegularizer) -> dict[str, Any]:
    from sparsetrain.config import config_to_dict

    cpu_masks = None if masks is None else {k: v.cpu() for k, v in masks.items()}
    return {"phase": phase, "step": step, "masks": cpu_masks, "regularizer": regularizer.state_dict(),
            "config": config_to_dict(ctx.cfg)}


def train_phase(ctx: RunContext, phase: str, model: nn.Module, regularizer: GradientRegularizer,
                masks: dict[str, torch.Tensor] | None, resume_tag: str | None) -> nn.Module:
    """Train `model` for the phase's steps on a DeepSpeed engine; returns the trained module."""
    cfg, plan, total = ctx.cfg, ctx.plan(phase), ctx.phase_steps(phase)
    lr = getattr(cfg.phases, phase).lr or cfg.optim.lr
    prunable = prunable_parameters(model)
    hooks = GradientHooks(regularizer, masks)
    engine = build_engine(cfg, model, ctx.dist.world_size, lr, total, prunable, hooks)
    regularizer.bind(prunable_parameters(engine.module), holds_partition(engine))
    start = 0
    if resume_tag is not None:
        client = ctx.checkpointer.load(engine, resume_tag)
        start = client["step"]
        regularizer.load_state_dict(client["regularizer"])
        if client["masks"] is not None:  # masks of a gradual-pruning phase change during the phase
            hooks.masks = {k: v.to(ctx.dist.device) for k, v in client["masks"].items()}
    pruner = GradualPruning(cfg.prune, total) if phase == "sparsify" and cfg.prune.schedule == "gradual" else None
    _run_steps(ctx, phase, engine, hooks, plan, start, total, pruner)
    return engine.module


def _update_masks(hooks: GradientHooks, pruner: GradualPruning, params: dict[str, torch.Tensor], step: int) -> None:
    """Gradual pruning after optimizer step `step`: masks from the full model weights `params`, which every rank
    holds (ZeRO <= 2 replicates them; in bf16 they are the bf16 copies), so all ranks choose the same masks."""
    if pruner.progress(step) is None:
        return
    masks = pruner.masks(step, {n: p.detach() for n, p in params.items()})
    if masks is not None:
        hooks.set_masks(masks, params)


def _run_steps(ctx: RunContext, phase: str, engine: Any, hooks: GradientHooks, plan: BatchPlan, start: int,
               total: int, pruner: GradualPruning | None) -> None:
    cfg, offset = ctx.cfg, ctx.global_offset(phase)
    params = prunable_parameters(engine.module)
    partitioned = holds_partition(engine)
    progress = Progress(phase, start, total, cfg.train.log_every)
    timer = StepTimer(cfg.train.batch_size)
    batches = iterate_micro_batches(ctx.train_set, plan, start, total, cfg.data.num_workers)
    engine.train()
    for step in range(start, total):
        loss = _one_step(ctx, engine, hooks.regularizer, params, batches, plan.grad_accum)
        timer.count()
        if pruner is not None:
            _update_masks(hooks, pruner, params, step + 1)
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == total:
            reg = hooks.last_value.detach().float().cpu() if hooks.last_value is not None else torch.zeros(())
            reg = float(all_reduce_sum(reg.reshape(1)).item()) if partitioned else float(reg)
            values = {"loss": float(loss), "reg": reg, "lr": engine.get_lr()[0]}
            if pruner is not None:
                values["sparsity"] = mask_sparsity(hooks.masks)
            progress.update(step, **values)
            ctx.tracker.log({"phase": phase, "step": step + 1, **values, **timer.window()}, offset + step + 1)
        stop = any_rank(preemption.stop_requested(), ctx.dist.device)
        if stop or (step + 1) % cfg.train.checkpoint_every == 0:
            with timer.paused():
                ctx.checkpointer.save(engine, phase, step + 1, _client_state(ctx, phase, step + 1, hooks.masks,
                                                                              hooks.regularizer), ctx.state)
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
