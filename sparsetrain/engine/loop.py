"""Training loop of one phase on a DeepSpeed engine, and sharded evaluation."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from sparsetrain.config.schema import RunConfig
from sparsetrain.deepspeed_linear import deepspeed_linear_scope
from sparsetrain.engine import preemption
from sparsetrain.engine.batches import BatchPlan, eval_shard, iterate_micro_batches, worker_errors
from sparsetrain.engine.checkpoint import Checkpointer
from sparsetrain.engine.deepspeed_setup import GradientHooks, build_engine, hyperparameters, restore_hyperparameters
from sparsetrain.engine.distributed import DistInfo, all_reduce_min, all_reduce_sum, average_norm_statistics
from sparsetrain.engine.finite import (
    GRAD_NORM,
    INPUTS,
    LOSS,
    REGULARIZER,
    FiniteGuard,
    decode,
    hint,
    nonfinite_stops_from,
    training_error,
)
from sparsetrain.engine.masters import handoff_module
from sparsetrain.engine.segments import holds_partition
from sparsetrain.engine.zero3 import WholeWeights, is_partitioned
from sparsetrain.phases import PHASE_SEEDS, SPARSIFY, TRAINING_PHASES
from sparsetrain.progress import Progress, StepTimer, log
from sparsetrain.pruning.distributed import WeightShard
from sparsetrain.pruning.masks import prunable_parameters
from sparsetrain.pruning.schedule import GradualPruning
from sparsetrain.pruning.sharded_masks import ShardedMasks, read_ranges
from sparsetrain.regularizers.base import GradientRegularizer
from sparsetrain.tasks.base import Task
from sparsetrain.tracking import Tracker


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
    attempt_start: float = 0.0  # time.perf_counter() when this process started the current phase
    earlier_s: float = 0.0  # seconds the phase's earlier attempts took up to the checkpoint this one resumed from

    def start_phase_clock(self, phase: str) -> None:
        """Start timing `phase`; resuming it, from the seconds its checkpoint recorded (state.json `current.elapsed_s`,
        0 for checkpoints written before it was recorded)."""
        current = self.state.get("current") or {}
        self.earlier_s = float(current.get("elapsed_s") or 0.0) if current.get("phase") == phase else 0.0
        self.attempt_start = time.perf_counter()

    def phase_elapsed(self) -> float:
        """Wall seconds of the current phase over its attempts: each earlier one up to the checkpoint the next
        continued from (steps redone after a hard kill count once), then this one so far."""
        return self.earlier_s + time.perf_counter() - self.attempt_start

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cfg.deepspeed.precision == "bf16" else torch.float32

    def plan(self, phase: str) -> BatchPlan:
        cfg = self.cfg
        return BatchPlan(len(self.train_set), cfg.train.batch_size, self.dist.world_size, self.dist.rank,
                         cfg.deepspeed.gradient_accumulation_steps, cfg.seed * 10 + PHASE_SEEDS[phase])

    def phase_steps(self, phase: str) -> int:
        epochs = getattr(self.cfg.phases, phase).epochs
        if epochs == 0:
            return 0  # evaluate only (Pipeline._evaluate_only)
        return max(1, round(epochs * self.plan(phase).steps_per_epoch))

    def global_offset(self, phase: str) -> int:
        """Steps of the training phases before `phase`, so logged steps increase across the whole run."""
        order = TRAINING_PHASES
        before = order[: order.index(phase)] if phase in order else order
        return sum(self.phase_steps(p) for p in before if getattr(self.cfg.phases, p).enabled)


def to_device(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    return x.to(device=device, dtype=dtype, non_blocking=True), y.to(device=device, non_blocking=True)


def _eval_batches(ctx: RunContext, indices: list[int]) -> Any:
    size = ctx.cfg.train.eval_batch_size
    workers = ctx.cfg.data.workers()
    if hasattr(ctx.test_set, "__getitems__") and workers == 0:
        return (ctx.test_set.__getitems__(indices[i:i + size]) for i in range(0, len(indices), size))
    return worker_errors(DataLoader(Subset(ctx.test_set, indices), batch_size=size, num_workers=workers,
                                    collate_fn=None if not hasattr(ctx.test_set, "__getitems__") else lambda b: b))


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
def evaluate(ctx: RunContext, model: nn.Module) -> dict[str, Any]:
    """Metrics over the whole test set: each rank evaluates a contiguous shard, sums are all-reduced. The model's
    buffers must be the same on every rank (`train_phase` averages BatchNorm statistics before it returns)."""
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


def _ranks(count: int) -> str:
    return f"{count} rank" if count == 1 else f"{count} ranks"


def _elastic(ctx: RunContext, resume_tag: str | None) -> bool:
    """Whether the checkpoint to resume was written by another number of ranks under ZeRO >= 1 (then it is
    converted to DeepSpeed's universal format and loaded through it)."""
    if resume_tag is None:
        return False
    current = ctx.state.get("current") or {}
    saved = ctx.checkpointer.saved_world_size(resume_tag, current.get("world_size"))
    if saved != ctx.dist.world_size:
        log.info(f"resuming {resume_tag}, written by {_ranks(saved)}, on {_ranks(ctx.dist.world_size)}")
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
    """Train `model` for the phase's steps on a DeepSpeed engine. `masks_file`: packed masks (whole ranges) to
    keep fixed; each rank reads its share. Returns the trained module in fp32 holding the optimizer's master values
    (under bf16 the model copy is only their rounding), its BatchNorm statistics the same on every rank (their mean,
    `average_norm_statistics`, also before each checkpoint); under ZeRO 3 the engine's module, still partitioned (its
    fp32 values are gathered by `zero3.gather_state_dict`)."""
    cfg, plan, total = ctx.cfg, ctx.plan(phase), ctx.phase_steps(phase)
    lr = getattr(cfg.phases, phase).lr or cfg.optim.lr
    prunable = prunable_parameters(model)
    hooks = GradientHooks(regularizer, None)
    universal = _elastic(ctx, resume_tag)
    with deepspeed_linear_scope():  # ZeRO 3's replacement of F.linear lives only while the phase trains
        engine = build_engine(cfg, model, ctx.dist.world_size, lr, total, prunable, hooks, universal)
        regularizer.bind(WholeWeights(prunable_parameters(engine.module)),
                         all_reduce_sum if holds_partition(engine) else None)
        if masks_file is not None:
            hooks.masks = read_ranges([masks_file], _segment_ranges(hooks), _masks_device(ctx, hooks))
        start = 0
        if resume_tag is not None:
            settings = hyperparameters(engine.basic_optimizer)
            client = ctx.checkpointer.load(engine, resume_tag, universal)
            start = client["step"]
            log.info(f"[{phase}] resuming from checkpoint {resume_tag} at step {start}")
            regularizer.load_state_dict(client["regularizer"])
            for key, (old, new) in restore_hyperparameters(engine, settings).items():
                log.info(f"[{phase}] resumed at step {start} with {key} {new} from the config (checkpoint had {old})")
            saved = ctx.checkpointer.load_masks(resume_tag, _segment_ranges(hooks), _masks_device(ctx, hooks))
            hooks.masks = saved if saved is not None else hooks.masks  # gradual pruning changes masks mid-phase
        ctx.phase_info = {"mask_memory": mask_memory(hooks.masks, ctx.dist.world_size)} if hooks.masks else {}
        gradual = phase == SPARSIFY and getattr(cfg.prune, "schedule", "oneshot") == "gradual"
        pruner = GradualPruning(cfg.prune, total) if gradual else None
        _run_steps(ctx, phase, engine, hooks, plan, start, total, pruner)
    average_norm_statistics(engine.module)  # the saved, evaluated and handed-on model is the same on every rank
    return engine.module if is_partitioned(engine.module) else handoff_module(engine)


def _update_masks(hooks: GradientHooks, pruner: GradualPruning, params: dict[str, torch.Tensor], step: int) -> None:
    """Gradual pruning after optimizer step `step`. ZeRO <= 2: masks from the full model weights `params`, which
    every rank holds (in bf16 they are the bf16 copies), so all ranks choose the same masks. ZeRO 3: masks of each
    rank's fp32 partitions, chosen from the partitions with collective reductions (`GradualPruning.shard_masks`)."""
    if pruner.progress(step) is None:
        return
    if any(hasattr(p, "ds_id") for p in params.values()):  # ZeRO-3 partitions
        shards = [WeightShard(s.name, s.start, s.weight(), s.size, tuple(s.param.ds_shape)) for s in hooks.segments]
        sizes = {n: int(p.ds_numel) for n, p in params.items()}
        masks = pruner.shard_masks(step, shards, list(params), sizes)
        if masks is not None:
            hooks.set_shard_masks(masks, params)
        return
    masks = pruner.masks(step, {n: p.detach() for n, p in params.items()})
    if masks is not None:
        hooks.set_masks(masks, params)


def _mask_sparsity(masks: ShardedMasks | None, partitioned: bool) -> float:
    """Fraction of weights the masks prune, over all ranks' shares when each rank holds a part (a collective)."""
    if masks is None:
        return 0.0
    counts = torch.tensor([masks.kept(), masks.numel], dtype=torch.float64)
    if partitioned:
        counts = all_reduce_sum(counts)
    return 1.0 - float(counts[0]) / max(float(counts[1]), 1.0)


def _run_steps(ctx: RunContext, phase: str, engine: Any, hooks: GradientHooks, plan: BatchPlan, start: int,
               total: int, pruner: GradualPruning | None) -> None:
    cfg, offset = ctx.cfg, ctx.global_offset(phase)
    params = prunable_parameters(engine.module)
    partitioned = holds_partition(engine)
    guard = FiniteGuard(ctx.dist.device)
    progress = Progress(phase, start, total, cfg.train.log_every)
    timer = StepTimer(cfg.train.batch_size)
    batches = iterate_micro_batches(ctx.train_set, plan, start, total, cfg.data.workers())
    engine.train()
    for step in range(start, total):
        done = step + 1
        loss = _one_step(ctx, engine, hooks, params, batches, plan.grad_accum, guard)
        timer.count()
        if pruner is not None:
            _update_masks(hooks, pruner, params, done)
        guard.end_step(done)
        log_now = done % cfg.train.log_every == 0 or done == total
        save_now = done % cfg.train.checkpoint_every == 0
        stop, first_bad = _agree(ctx, guard, boundary=log_now or save_now or done == total)
        bad = decode(first_bad) if first_bad is not None else None
        if bad is not None:
            raise training_error(cfg, phase, bad[0], total, bad[1], _resume_note(ctx, phase))
        if log_now:
            values = _step_values(engine, hooks, loss, partitioned, ctx.dist.world_size)
            if pruner is not None:
                values["sparsity"] = _mask_sparsity(hooks.masks, partitioned)
            progress.update(step, **values)
            ctx.tracker.log({"phase": phase, "step": done, **values, **timer.window()}, offset + done)
        if stop or save_now:
            with timer.paused():
                average_norm_statistics(engine.module)  # a resume on any number of ranks reads rank 0's
                _require_finite_weights(ctx, phase, engine, done)
                ctx.checkpointer.save(engine, phase, done, _client_state(ctx, phase, done, hooks.regularizer),
                                      ctx.state, hooks.masks, elapsed_s=ctx.phase_elapsed())
                ctx.tracker.commit()  # W&B gets the rows this checkpoint covers, never a step a resume would redo
        if stop:
            raise preemption.Preempted(f"stopped on request after {phase} step {done}; checkpoint saved")


def _agree(ctx: RunContext, guard: FiniteGuard, boundary: bool) -> tuple[bool, int | None]:
    """Whether any rank asked to stop, and the code of the first non-finite step on any rank (None: not read).

    One process on a GPU reads the device-side record only at boundaries (a host sync); CPU runs read it every
    step, and several ranks fold it into the stop flag's collective, which runs every step anyway.
    """
    stop = preemption.stop_requested()
    if ctx.dist.world_size == 1:
        if ctx.dist.device.type == "cpu" or boundary or stop:
            return stop, int(guard.first.item())
        return stop, None
    local = torch.stack([torch.tensor(-int(stop), dtype=torch.int64, device=guard.device), guard.first])
    stop_min, first_bad = all_reduce_min(local).tolist()
    return stop_min < 0, first_bad


def _step_values(engine: Any, hooks: GradientHooks, loss: torch.Tensor, partitioned: bool,
                 world_size: int) -> dict[str, float]:
    """Logged values: the last step's task loss as the mean over ranks (each rank's own micro-batch, so one rank's
    value would depend on the world size), the regularizer value and the gradient norm of the whole model (summed
    over ranks when each rank holds a slice of the weights). Reduced on the loss's device (NCCL has no CPU tensors),
    then read on the host: a collective every rank runs at each logging step."""
    values = torch.stack([v.detach().float().reshape(()).to(loss.device) if v is not None
                          else torch.zeros((), device=loss.device) for v in (loss, hooks.last_value, hooks.grad_sq)])
    if world_size > 1:
        summed = all_reduce_sum(values.clone())
        values = torch.cat([summed[:1] / world_size, summed[1:] if partitioned else values[1:]])
    loss_mean, reg, grad_sq = values.cpu().tolist()
    return {"loss": loss_mean, "reg": reg, "grad_norm": grad_sq ** 0.5, "lr": engine.get_lr()[0]}


def _resume_note(ctx: RunContext, phase: str) -> str:
    """Where a re-run continues after this stop; when an earlier attempt already diverged from the same checkpoint
    (it may be finite yet blown up), that a plain resume repeats it and the ways out."""
    current = ctx.state.get("current")
    before = nonfinite_stops_from(ctx.state, phase)
    if current and current["phase"] == phase and before:
        return (f"the run diverged again from its last good checkpoint ({phase} step {current['step']}; stop "
                f"{before + 1} from it), so a resume with the same settings repeats this: resume with a lower "
                f"optim.lr or phases.{phase}.lr, or start the run over with resume=false")
    if current and current["phase"] == phase:
        return (f"nothing after the last good checkpoint ({phase} step {current['step']}) was saved; a re-run with "
                "resume=true continues from it")
    return f"nothing of {phase} was saved; a re-run with resume=true restarts {phase} from its start weights"


def _require_finite_weights(ctx: RunContext, phase: str, engine: Any, done: int) -> None:
    """A checkpoint must never hold NaN/inf (an update can overflow although its loss and gradients were finite)."""
    from sparsetrain.engine.finite import NonFiniteError, nonfinite_names, require_finite

    what = f"{phase} weights after step {done}"
    advice = f"{hint(ctx.cfg, phase, 'weights')}; {_resume_note(ctx, phase)}"
    module = engine.module
    if not is_partitioned(module):
        require_finite({**dict(module.named_parameters()), **dict(module.named_buffers())}, what, advice)
        return
    # ZeRO 3: each rank checks its own partitions; all ranks agree before anyone stops (a save is a collective)
    bad = nonfinite_names({n: p.ds_tensor for n, p in module.named_parameters()} | dict(module.named_buffers()))
    if float(all_reduce_sum(torch.tensor([float(len(bad))]))[0]) > 0:
        raise NonFiniteError(f"non-finite values in {what} ({', '.join(bad[:3]) or 'on another rank'}); {advice}")


def _one_step(ctx: RunContext, engine: Any, hooks: GradientHooks, params: dict[str, torch.Tensor], batches: Any,
              grad_accum: int, guard: FiniteGuard) -> torch.Tensor:
    """One optimizer step over `grad_accum` micro-batches; returns the last micro-batch's task loss.

    Every input batch, loss, regularizer value and the gradient norm is noted in `guard` (device-side).
    """
    guard.begin_step()
    hooks.begin_step()
    for _ in range(grad_accum):
        x, y = to_device(next(batches), ctx.dist.device, ctx.dtype)
        guard.note(INPUTS, x)
        task_loss = ctx.task.loss(engine(x), y)
        guard.note(LOSS, task_loss)
        term = hooks.regularizer.loss_term(params)
        if term is not None:
            guard.note(REGULARIZER, term)
        engine.backward(task_loss if term is None else task_loss + term)
        engine.step()
    if not engine.was_step_applied():  # DeepSpeed skips a step whose gradients overflowed (ZeRO, bf16 wrappers)
        guard.flag(GRAD_NORM)
    for cause, value in ((GRAD_NORM, hooks.grad_sq), (REGULARIZER, hooks.last_value)):
        if value is not None:
            guard.note(cause, value)
    hooks.regularizer.end_step()
    return task_loss.detach()
