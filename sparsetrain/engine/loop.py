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
from sparsetrain.engine.deepspeed_setup import GradientHooks, build_engine, hyperparameters, restore_hyperparameters
from sparsetrain.engine.distributed import DistInfo, all_reduce_min, all_reduce_sum
from sparsetrain.engine.finite import GRAD_NORM, INPUTS, LOSS, REGULARIZER, FiniteGuard, decode, hint, training_error
from sparsetrain.engine.masters import handoff_module
from sparsetrain.engine.segments import holds_partition
from sparsetrain.phases import DENSE, PHASE_SEEDS, SPARSIFY, TRAINING_PHASES
from sparsetrain.progress import Progress, StepTimer, log
from sparsetrain.pruning.masks import mask_sparsity, prunable_parameters
from sparsetrain.pruning.schedule import GradualPruning
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

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cfg.deepspeed.precision == "bf16" else torch.float32

    def plan(self, phase: str) -> BatchPlan:
        cfg = self.cfg
        return BatchPlan(len(self.train_set), cfg.train.batch_size, self.dist.world_size, self.dist.rank,
                         cfg.deepspeed.gradient_accumulation_steps, cfg.seed * 10 + PHASE_SEEDS[phase])

    def phase_steps(self, phase: str) -> int:
        epochs = getattr(self.cfg.phases, phase).epochs
        if phase == DENSE and epochs == 0:
            return 0  # evaluate only (Pipeline.run_dense)
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
    """Train `model` for the phase's steps on a DeepSpeed engine; returns the trained module in fp32 holding the
    optimizer's master values (under bf16 the model copy is only their rounding)."""
    cfg, plan, total = ctx.cfg, ctx.plan(phase), ctx.phase_steps(phase)
    lr = getattr(cfg.phases, phase).lr or cfg.optim.lr
    prunable = prunable_parameters(model)
    hooks = GradientHooks(regularizer, masks)
    engine = build_engine(cfg, model, ctx.dist.world_size, lr, total, prunable, hooks)
    regularizer.bind(prunable_parameters(engine.module), all_reduce_sum if holds_partition(engine) else None)
    start = 0
    if resume_tag is not None:
        settings = hyperparameters(engine.basic_optimizer)
        client = ctx.checkpointer.load(engine, resume_tag)
        start = client["step"]
        log.info(f"[{phase}] resuming from checkpoint {resume_tag} at step {start}")
        regularizer.load_state_dict(client["regularizer"])
        for key, (old, new) in restore_hyperparameters(engine, settings).items():
            log.info(f"[{phase}] resumed at step {start} with {key} {new} from the config (checkpoint had {old})")
        if client["masks"] is not None:  # masks of a gradual-pruning phase change during the phase
            hooks.masks = {k: v.to(ctx.dist.device) for k, v in client["masks"].items()}
    gradual = phase == SPARSIFY and getattr(cfg.prune, "schedule", "oneshot") == "gradual"
    pruner = GradualPruning(cfg.prune, total) if gradual else None
    _run_steps(ctx, phase, engine, hooks, plan, start, total, pruner)
    return handoff_module(engine)


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
    guard = FiniteGuard(ctx.dist.device)
    progress = Progress(phase, start, total, cfg.train.log_every)
    timer = StepTimer(cfg.train.batch_size)
    batches = iterate_micro_batches(ctx.train_set, plan, start, total, cfg.data.num_workers)
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
            values = _step_values(engine, hooks, loss, partitioned)
            if pruner is not None:
                values["sparsity"] = mask_sparsity(hooks.masks)
            progress.update(step, **values)
            ctx.tracker.log({"phase": phase, "step": done, **values, **timer.window()}, offset + done)
        if stop or save_now:
            with timer.paused():
                _require_finite_weights(ctx, phase, engine, done)
                ctx.checkpointer.save(engine, phase, done,
                                      _client_state(ctx, phase, done, hooks.masks, hooks.regularizer), ctx.state)
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


def _step_values(engine: Any, hooks: GradientHooks, loss: torch.Tensor, partitioned: bool) -> dict[str, float]:
    """Logged values: this rank's last task loss, and the regularizer value and gradient norm over all ranks."""
    sums = torch.stack([(v.detach().float().reshape(()) if v is not None else torch.zeros((), device=loss.device))
                        for v in (hooks.last_value, hooks.grad_sq)]).cpu()
    if partitioned:  # each rank holds a slice of the weights: its values are partial sums
        sums = all_reduce_sum(sums)
    return {"loss": float(loss), "reg": float(sums[0]), "grad_norm": float(sums[1].sqrt()), "lr": engine.get_lr()[0]}


def _resume_note(ctx: RunContext, phase: str) -> str:
    current = ctx.state.get("current")
    if current and current["phase"] == phase:
        return (f"nothing after the last good checkpoint ({phase} step {current['step']}) was saved; a re-run with "
                "resume=true continues from it")
    return f"nothing of {phase} was saved; a re-run with resume=true restarts {phase} from its start weights"


def _require_finite_weights(ctx: RunContext, phase: str, engine: Any, done: int) -> None:
    """A checkpoint must never hold NaN/inf (an update can overflow although its loss and gradients were finite)."""
    from sparsetrain.engine.finite import require_finite

    tensors = {**dict(engine.module.named_parameters()), **dict(engine.module.named_buffers())}
    require_finite(tensors, f"{phase} weights after step {done}",
                   f"{hint(ctx.cfg, phase, 'weights')}; {_resume_note(ctx, phase)}")


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
