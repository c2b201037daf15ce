"""The optimizer's fp32 master weights: exact at the start of a phase, and what a phase hands on at its end.

Under bf16, DeepSpeed trains a bf16 model copy while the optimizer updates fp32 masters. It creates those masters
by up-casting the bf16 copies, so without help a phase that starts from fp32 weights starts from bf16-rounded
ones, and the model a phase ends with holds bf16 copies (relative error up to 2^-8). Both ends go through here:

- `set_masters` writes exact fp32 values into the masters (and their rounding into the bf16 copies) right
  after `deepspeed.initialize`;
- `handoff_module` returns the trained module in fp32 holding the master values, so the phase's saved weights,
  its evaluation, and the next phase's pruning decisions all use the values the optimizer trained.

The masters are reached through DeepSpeed's own accessors where it has them (`safe_get_full_fp32_param` /
`safe_set_full_fp32_param`: ZeRO 1/2 and its bf16 optimizer) and through the per-parameter copies of
`FP16_UnfusedOptimizer` (bf16 without ZeRO), which has none. fp32 runs train the model's own tensors: nothing to do.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sparsetrain.engine.segments import per_param_masters


def _master_accessors(engine: object) -> tuple[dict[int, torch.Tensor] | None, bool]:
    """(per-parameter masters of the unfused wrapper or None, whether DeepSpeed's fp32 accessors apply)."""
    per_param = per_param_masters(engine.optimizer)
    if per_param is not None:
        return per_param, False
    return None, any(hasattr(p, "_hp_mapping") for p in engine.module.parameters())


def uses_masters(engine: object) -> bool:
    """Whether the optimizer trains fp32 copies of a lower-precision model (bf16)."""
    return any(p.dtype != torch.float32 for p in engine.module.parameters())


@torch.no_grad()
def set_masters(engine: object, values: Mapping[str, torch.Tensor]) -> None:
    """Write fp32 `values` (by parameter name) into the optimizer's masters and their rounding into the model.

    Under ZeRO 1/2 each rank writes the slice it owns; every rank must call this (no collective runs, though).
    """
    if not uses_masters(engine):
        return
    per_param, has_accessors = _master_accessors(engine)
    from deepspeed.utils import safe_set_full_fp32_param

    for name, param in engine.module.named_parameters():
        value = values[name].to(device=param.device, dtype=torch.float32)
        if per_param is not None and id(param) in per_param:
            per_param[id(param)].copy_(value)
        elif has_accessors:
            safe_set_full_fp32_param(param, value)
        param.copy_(value)  # the bf16 copy is the masters' rounding, as after any optimizer step


@torch.no_grad()
def master_values(engine: object) -> dict[str, torch.Tensor]:
    """Full fp32 value of every parameter as the optimizer holds it (a collective under ZeRO: all ranks call)."""
    from deepspeed.utils import safe_get_full_fp32_param

    per_param, has_accessors = _master_accessors(engine)
    values = {}
    for name, param in engine.module.named_parameters():
        if per_param is not None and id(param) in per_param:
            values[name] = per_param[id(param)].detach().clone()
        elif has_accessors and param.dtype != torch.float32:
            values[name] = safe_get_full_fp32_param(param).detach().clone()
        else:
            values[name] = param.detach().float().clone()
    return values


@torch.no_grad()
def handoff_module(engine: object) -> nn.Module:
    """The trained module, in fp32, holding the optimizer's master values (the engine must not step again)."""
    module = engine.module
    if not uses_masters(engine):
        return module
    values = master_values(engine)
    module.float()  # new fp32 tensors; DeepSpeed's flat bf16 buffers are left to the discarded engine
    for name, param in module.named_parameters():
        param.copy_(values[name])
    return module
