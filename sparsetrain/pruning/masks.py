"""Prunable-parameter discovery, mask application and sparsity accounting (measured from the weights)."""

from __future__ import annotations

import torch
from torch import nn

PRUNABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Conv and linear kernels (not biases, not norm layers), by parameter name. A ZeRO-3 parameter is judged by
    its full shape (`ds_shape`; the tensor itself is an empty partition)."""
    return {f"{name}.weight" if name else "weight": module.weight for name, module in model.named_modules()
            if isinstance(module, PRUNABLE_TYPES) and len(getattr(module.weight, "ds_shape", module.weight.shape)) > 1}


@torch.no_grad()
def apply_masks(params: dict[str, nn.Parameter], masks: dict[str, torch.Tensor]) -> None:
    """Set the pruned weights to exactly 0 in place, whatever they held (a select, not w * m: NaN * 0 is NaN)."""
    for name, mask in masks.items():
        params[name].masked_fill_(~mask.to(device=params[name].device, dtype=torch.bool), 0.0)


@torch.no_grad()
def layer_counts(params: dict[str, torch.Tensor]) -> list[dict[str, int | str]]:
    """[{name, total, nonzero}] per prunable layer, counted from the weight values."""
    return [{"name": name, "total": p.numel(), "nonzero": int(torch.count_nonzero(p).item())}
            for name, p in params.items()]


def sparsity_of(layers: list[dict]) -> float:
    """Fraction of prunable weights that are exactly zero."""
    total = sum(layer["total"] for layer in layers)
    return 1.0 - sum(layer["nonzero"] for layer in layers) / max(total, 1)


def mask_sparsity(masks: dict[str, torch.Tensor] | None) -> float:
    """Fraction of weights the masks prune (0 for no masks)."""
    if not masks:
        return 0.0
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
