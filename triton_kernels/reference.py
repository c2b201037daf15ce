"""Plain-torch references of the fused kernels; also the CPU fallback of ``get_ops("torch")``.

Each computes in fp32 and follows the kernel's formula term by term, so tests can compare with tight
tolerances. They run on any device, need no Triton, and take the same arguments as the fused versions,
masks of every kind included (``config`` is accepted and ignored so the two backends are interchangeable).
Masking is a select, as in the kernels: a pruned element becomes exactly 0 whatever it held (NaN, inf).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from triton_kernels._multi_tensor import Mask, check_strength, per_tensor_strengths, per_tensor_thresholds
from triton_kernels.bitmask import PackedMask, keep_flags
from triton_kernels.plan import LaunchPlan, reference_plan


@torch.no_grad()
def l0_grad_mask_reference_(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    masks: Sequence[Mask] | None,
    *,
    alphas: float | Sequence[float],
    beta: float,
    l2: float,
    config: object = None,
) -> torch.Tensor:
    """In place ``g = m ? g + α·β·sign(w)·exp(−β|w|) + 2·l2·w : 0``; returns ``Σ α(1 − exp(−β|w|)) + l2·Σ w²``.

    Args:
        weights: float tensors.
        grads: one per weight, same numel; updated in place.
        masks: one per weight: a bool/uint8 tensor (non-zero = kept) or a ``PackedMask``; or None for no mask.
        alphas: ℓ0 strength per tensor (or one float for all).
        beta: sharpness β of the surrogate.
        l2: ℓ2 strength.
        config: ignored.

    Returns:
        fp32 scalar tensor on the weights' device (CPU for an empty list).

    Raises:
        ValueError: alphas, beta or l2 not finite and >= 0 (one line naming it, as the Triton kernel says it).
    """
    alphas = per_tensor_strengths("alphas", alphas, len(weights))
    beta, l2 = check_strength("beta", beta), check_strength("l2", l2)
    total = torch.zeros((), dtype=torch.float32, device=weights[0].device if weights else "cpu")
    for i, (w, g) in enumerate(zip(weights, grads, strict=True)):
        w32 = w.reshape(-1).float()
        e = torch.exp(-beta * w32.abs())
        new = g.reshape(-1).float() + alphas[i] * beta * torch.sign(w32) * e + 2.0 * l2 * w32
        if masks is not None:
            new = torch.where(keep_flags(masks[i]), new, 0.0)  # a select: pruned NaN/inf gradients become 0
        g.copy_(new.view_as(g))
        total += alphas[i] * (1.0 - e).sum() + l2 * (w32 * w32).sum()
    return total


@torch.no_grad()
def apply_masks_reference_(weights: Sequence[torch.Tensor], masks: Sequence[Mask], *, config: object = None) -> None:
    """In place ``w = m ? w : 0`` (a select: pruned NaN/inf weights become 0).

    Args:
        weights: float tensors.
        masks: one per weight, same numel: a bool/uint8 tensor (non-zero = kept) or a ``PackedMask``.
        config: ignored.
    """
    for w, m in zip(weights, masks, strict=True):
        w.masked_fill_(~keep_flags(m).view(w.shape), 0)


@torch.no_grad()
def threshold_masks_reference(
    weights: Sequence[torch.Tensor], thresholds: float | Sequence[float], *, packed: bool = False, config: object = None
) -> tuple[list[torch.Tensor] | list[PackedMask], torch.Tensor]:
    """Keep-masks ``|w| > τ`` (compared in fp32, τ rounded to fp32) and the int64 kept count of each tensor.

    Args:
        weights: float tensors.
        thresholds: one global τ or one per tensor, each >= 0.
        packed: return ``PackedMask``s (flat, offset 0) instead of bool tensors.
        config: ignored.

    Returns:
        Bool masks shaped like the weights (or ``PackedMask``s) and an int64 ``[len(weights)]`` tensor of kept
        counts.

    Raises:
        ValueError: a NaN or negative threshold, in the fused kernel's line (``thresholds: must be >= 0 and not NaN,
            got nan``).
    """
    taus = per_tensor_thresholds("thresholds", thresholds, len(weights))
    masks = [w.float().abs() > torch.tensor(tau, dtype=torch.float32) for w, tau in zip(weights, taus, strict=True)]
    device = weights[0].device if weights else "cpu"
    counts = torch.stack([m.sum() for m in masks]) if masks else torch.zeros(0, dtype=torch.int64, device=device)
    return ([PackedMask.pack(m) for m in masks] if packed else masks), counts


def plan_l0_grad_mask_reference_(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    masks: Sequence[Mask] | None,
    *,
    alphas: float | Sequence[float],
    beta: float,
    l2: float,
    config: object = None,
) -> LaunchPlan[torch.Tensor]:
    """``l0_grad_mask_reference_`` bound to these arguments (the torch backend of ``plan_l0_grad_mask_``); ValueError
    at plan time as ``l0_grad_mask_reference_``."""
    alphas = per_tensor_strengths("alphas", alphas, len(weights))
    beta, l2 = check_strength("beta", beta), check_strength("l2", l2)
    return reference_plan(
        l0_grad_mask_reference_, "l0_grad_mask_reference_", weights, grads, masks, alphas=alphas, beta=beta, l2=l2
    )


def plan_apply_masks_reference_(
    weights: Sequence[torch.Tensor], masks: Sequence[Mask], *, config: object = None
) -> LaunchPlan[None]:
    """``apply_masks_reference_`` bound to these arguments (the torch backend of ``plan_apply_masks_``)."""
    return reference_plan(apply_masks_reference_, "apply_masks_reference_", weights, masks)


def l0_penalty(
    weights: Sequence[torch.Tensor], alphas: float | Sequence[float], beta: float, l2: float
) -> torch.Tensor:
    """Differentiable ``Σ α(1 − exp(−β|w|)) + l2·Σ w²``: the autograd-in-loss variant of the fused kernel.

    Its gradient is ``α·β·sign(w)·exp(−β|w|) + 2·l2·w`` (autograd's ``abs`` has gradient 0 at 0).

    Args:
        weights: float tensors (usually parameters with ``requires_grad``).
        alphas: ℓ0 strength per tensor (or one float for all).
        beta: sharpness β of the surrogate.
        l2: ℓ2 strength.

    Returns:
        fp32 scalar (fp64 if the weights are fp64), on the weights' device (CPU for an empty list).

    Raises:
        ValueError: alphas, beta or l2 not finite and >= 0 (one line naming it, as ``l0_grad_mask_`` says it).
    """
    alphas = per_tensor_strengths("alphas", alphas, len(weights))
    beta, l2 = check_strength("beta", beta), check_strength("l2", l2)
    terms = []
    for a, w in zip(alphas, weights, strict=True):
        w32 = w if w.dtype == torch.float64 else w.float()
        terms.append(a * (1.0 - torch.exp(-beta * w32.abs())).sum() + l2 * (w32 * w32).sum())
    if not terms:
        return torch.zeros((), dtype=torch.float32)
    return torch.stack(terms).sum()
