"""The one place where a plain model becomes a DeepSpeed engine.

Order (documented because it matters):
1. the model is built and given its start weights on every rank (single-device code, no DeepSpeed inside);
2. a torch optimizer (one param group) and an LR schedule are created;
3. `deepspeed.initialize` wraps them (ZeRO stage, precision and batch geometry from the config); under bf16 the
   optimizer's fp32 masters are then set to the exact fp32 start weights (`masters.set_masters`) and any state
   DeepSpeed's wrapping step left in the optimizer is dropped;
4. the gradient regularizer and masks are attached as step pre/post hooks of the *basic* torch optimizer,
   working on the optimizer's own fp32 tensors (`segments.build_segments`): pre-hook = add the regularizer
   gradient and mask (after reduction, clipping and unscaling), post-hook = re-apply masks to the updated
   master weights, before DeepSpeed copies/gathers them back into the model.

Under ZeRO 3 the model's parameters are partitions after step 3 (`engine.zero3`); the masks are then the packed
shares of this rank's segments, and under bf16 the fp32 masters are set from the exact start weights.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from sparsetrain.config.schema import RunConfig
from sparsetrain.engine.masters import set_masters
from sparsetrain.engine.segments import Segment, build_segments, weight_slices
from sparsetrain.pruning.sharded_masks import ShardedMasks
from sparsetrain.regularizers.base import GradientRegularizer


def deepspeed_config(cfg: RunConfig, world_size: int, load_universal: bool = False) -> dict:
    """DeepSpeed JSON config derived from the run config (`load_universal`: resume from a universal checkpoint)."""
    ds = cfg.deepspeed
    micro = cfg.train.batch_size // (world_size * ds.gradient_accumulation_steps)
    zero = {"stage": ds.zero_stage, **_offload(ds.offload_optimizer)}
    if ds.zero_stage == 3:
        zero["stage3_param_persistence_threshold"] = ds.param_persistence_threshold
    return {
        "train_batch_size": cfg.train.batch_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "checkpoint": {"load_universal": load_universal},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


# DeepSpeed's note when ZeRO wraps an optimizer outside its own list (torch's SGD; Adam and AdamW are in it), said at
# every engine, i.e. every phase. sparsetrain's tests train SGD under ZeRO 0, 2 and 3 against each other and against
# one process (test_distributed, test_zero3), so for the optimizers `make_optimizer` builds the note is noise.
UNTESTED_OPTIMIZER_NOTE = "**** You are using ZeRO with an untested optimizer, proceed with caution *****"


def _drop_untested_optimizer_note(record: logging.LogRecord) -> bool:
    return record.getMessage() != UNTESTED_OPTIMIZER_NOTE


def _quiet_untested_optimizer_note() -> None:
    """Drop that one message from DeepSpeed's logger (its other messages stay), once per process."""
    from deepspeed.utils import logger

    if _drop_untested_optimizer_note not in logger.filters:
        logger.addFilter(_drop_untested_optimizer_note)


def _offload(device: str) -> dict:
    return {} if device == "none" else {"offload_optimizer": {"device": device, "pin_memory": device == "cpu"}}


def enable_grad_checkpointing(model: nn.Module, name: str) -> None:
    """Turn on timm's activation recomputation for the model's repeated blocks.

    Raises:
        ValueError: the model has no `set_grad_checkpointing` (one line naming train.grad_checkpointing).
    """
    if not hasattr(model, "set_grad_checkpointing"):
        raise ValueError(f"train.grad_checkpointing: model {name} has no set_grad_checkpointing (timm models "
                         "built from repeated blocks have it)")
    model.set_grad_checkpointing(True)


def make_optimizer(cfg: RunConfig, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=o.weight_decay)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak LR at optimizer step `step` of a phase with `total` steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


@dataclass
class GradientHooks:
    """State shared by the optimizer hooks: the strategy, masks, the last regularizer value and the squared norm
    of the gradients this rank's optimizer stepped with (before the regularizer; a partition under ZeRO 1/2)."""

    regularizer: GradientRegularizer
    masks: ShardedMasks | None
    segments: list[Segment] = field(default_factory=list)
    last_value: torch.Tensor | None = None
    grad_sq: torch.Tensor | None = None

    def _present(self, optimizer: torch.optim.Optimizer) -> list[Segment]:
        # ZeRO steps one param group at a time; touch only the segments of the groups being stepped.
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        return [s for s in self.segments if id(s.master) in present]

    def begin_step(self) -> None:
        self.last_value, self.grad_sq = None, None

    def before_step(self, optimizer: torch.optim.Optimizer, *_: object) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:  # one multi-tensor pass, stays on the device (no host sync)
            sq = torch.stack(torch._foreach_norm(grads)).float().square().sum()
            self.grad_sq = sq if self.grad_sq is None else self.grad_sq + sq
        self.last_value = self.regularizer.apply_to_gradients(weight_slices(self._present(optimizer), self.masks))

    @torch.no_grad()
    def set_masks(self, masks: dict[str, torch.Tensor], model_params: dict[str, torch.Tensor]) -> None:
        """Install new masks mid-phase (gradual pruning) and zero the newly pruned weights at once, both in the
        optimizer's masters (this rank's segments) and in the model parameters the next forward pass reads."""
        from sparsetrain.pruning.sharded_masks import shards_for

        self.masks = shards_for(masks, self.segments)
        for seg in self.segments:
            seg.weight().masked_fill_(~masks[seg.name].view(-1)[seg.start:seg.stop].bool(), 0.0)
        for name, param in model_params.items():
            param.masked_fill_(~masks[name].bool(), 0.0)  # a select: pruned slots exactly 0 whatever they held

    @torch.no_grad()
    def set_shard_masks(self, masks: ShardedMasks, model_params: dict[str, nn.Parameter]) -> None:
        """Install masks of this rank's partitions mid-phase (gradual pruning under ZeRO 3) and zero the newly
        pruned weights at once in the fp32 master partitions and in the training-precision partitions (`ds_tensor`)
        the next forward gathers. Parameters that ZeRO 3 keeps whole on every rank (below
        `deepspeed.param_persistence_threshold`) are gathered again from their zeroed partitions, as DeepSpeed does
        after each step (a collective)."""
        self.masks = masks
        for seg in self.segments:
            keep = masks.segment_view(seg).unpack()
            seg.weight().masked_fill_(~keep, 0.0)
            seg.param.ds_tensor.view(-1)[:seg.numel].masked_fill_(~keep.to(seg.param.ds_tensor.device), 0.0)
        _regather_persistent(list(model_params.values()))

    def after_step(self, optimizer: torch.optim.Optimizer, *_: object) -> None:
        if self.masks is None:
            return
        from triton_kernels import get_ops

        segments = self._present(optimizer)
        get_ops(self.regularizer.backend).apply_masks_([s.weight() for s in segments],
                                                       [self.masks.segment_view(s) for s in segments])


def _regather_persistent(params: list[nn.Parameter]) -> None:
    """Re-gather the ZeRO-3 parameters among `params` that stay whole on every rank (`ds_persist`) from their
    partitions; a collective (every rank passes the same parameters)."""
    persistent = [p for p in params if getattr(p, "ds_persist", False)]
    if persistent:
        persistent[0].partition(persistent)  # frees the stale whole copies (the partitions stay)
        persistent[0].all_gather(persistent)


def build_engine(cfg: RunConfig, model: nn.Module, world_size: int, lr: float, total_steps: int,
                 prunable: dict[str, nn.Parameter], hooks: GradientHooks, load_universal: bool = False) -> object:
    """Wrap `model` in a DeepSpeed engine with the regularizer/mask hooks attached (`load_universal`: the run
    resumes from a universal checkpoint, `Checkpointer.prepare_elastic`)."""
    import deepspeed

    zero3 = cfg.deepspeed.zero_stage == 3
    if cfg.train.grad_checkpointing:
        enable_grad_checkpointing(model, cfg.model.name)
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad], lr)
    warmup, schedule = cfg.optim.warmup_steps, cfg.optim.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, schedule))
    bf16 = cfg.deepspeed.precision == "bf16"
    # DeepSpeed casts the model to bf16 in place and makes the masters from that copy: keep the exact values.
    start = {n: p.detach().float().clone() for n, p in model.named_parameters()} if bf16 else None
    _quiet_untested_optimizer_note()
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=deepspeed_config(cfg, world_size, load_universal))
    # FP16_UnfusedOptimizer (bf16, ZeRO 0) runs one optimizer.step() on zero gradients while wrapping: it moves
    # the masters under weight decay and advances Adam's step count. A phase starts with fresh optimizer state.
    engine.basic_optimizer.state.clear()
    _mark_universal_convertible(engine.module)
    if bf16 and zero3:
        from sparsetrain.engine.zero3 import set_master_values

        set_master_values(engine.module, start)
    elif bf16:
        set_masters(engine, start)
    if bf16:
        match_buffers_to_params(engine.module)
    if world_size == 1 and cfg.deepspeed.zero_stage == 0:
        # One rank: DeepSpeed's gradient all-reduce flattens, reduces and copies back the identity, every step.
        engine.enable_backward_allreduce = False
    hooks.segments = build_segments(engine, {n: p for n, p in engine.module.named_parameters() if n in prunable},
                                    start)
    engine.basic_optimizer.register_step_pre_hook(hooks.before_step)
    engine.basic_optimizer.register_step_post_hook(hooks.after_step)
    return engine


def _mark_universal_convertible(module: nn.Module) -> None:
    """Make DeepSpeed write `universal_checkpoint_info` into ZeRO 1/2 checkpoints, which its `ds_to_universal`
    requires (elastic resume, `Checkpointer.prepare_elastic`). DeepSpeed saves the module attribute of that name;
    it is empty here: no tensor or pipeline parallelism, so no parameter needs a merge rule."""
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    setattr(module, UNIVERSAL_CHECKPOINT_INFO, {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE})


def hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, object]]:
    """Each param group's settings (lr, weight decay, momentum, betas ...) without its tensors."""
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def restore_hyperparameters(engine: object, settings: list[dict[str, object]]) -> dict[str, tuple]:
    """After a resume, make the config's optimizer settings win over the checkpoint's (state is kept).

    A checkpoint stores each param group's lr, weight decay and momentum, and the LR schedule's base LRs, so a
    run resumed with a lowered `optim.lr` (the advice after a non-finite stop) would silently keep the old one.
    The schedule's position (`last_epoch`) comes from the checkpoint; the LR is recomputed from it.

    Returns:
        {setting: (checkpoint value, config value)} for the settings that changed.
    """
    optimizer, scheduler = engine.basic_optimizer, engine.lr_scheduler
    changed: dict[str, tuple] = {}
    for group, wanted in zip(optimizer.param_groups, settings, strict=True):
        for key, value in wanted.items():
            if key != "lr" and group.get(key) != value:
                changed[key] = (group.get(key), value)
                group[key] = value
    bases = [float(wanted["initial_lr"]) for wanted in settings]
    if list(scheduler.base_lrs) != bases:
        changed["lr"] = (scheduler.base_lrs[0], bases[0])
    scheduler.base_lrs = bases
    for group, base, factor in zip(optimizer.param_groups, bases, scheduler.lr_lambdas, strict=True):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
    changed.pop("initial_lr", None)
    return changed


def match_buffers_to_params(model: nn.Module) -> None:
    """Cast floating buffers (BatchNorm running statistics) to their module's parameter dtype, in place.

    DeepSpeed's bf16 mode converts parameters only, and batch norm with bf16 weights refuses fp32 running
    statistics (CPU forward: "expected scalar type BFloat16 but found Float"; CUDA backward: "Expected
    running_mean to have type BFloat16 but got Float"), so the statistics follow the parameters.
    """
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if not params:
            continue
        dtype = params[0].dtype
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                setattr(module, name, buffer.to(dtype))
