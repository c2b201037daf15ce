"""Backend selection: fused Triton kernels, the torch reference, or "auto" (Triton where it can run)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from triton_kernels import reference
from triton_kernels._multi_tensor import INTERPRET, triton_unusable_reason
from triton_kernels.plan import LaunchPlan

BACKENDS = ("triton", "torch", "auto")


@dataclass(frozen=True)
class KernelOps:
    """The multi-tensor ops of one backend, and their plan builders; signatures as in ``triton_kernels``."""

    backend: str
    l0_grad_mask_: Callable[..., torch.Tensor]
    apply_masks_: Callable[..., None]
    threshold_masks: Callable[..., tuple[list, torch.Tensor]]
    plan_l0_grad_mask_: Callable[..., LaunchPlan[torch.Tensor]]
    plan_apply_masks_: Callable[..., LaunchPlan[None]]


def _first_device(weights: Sequence[torch.Tensor]) -> torch.device:
    return weights[0].device if len(weights) else torch.device("cpu")


def _triton_ops() -> tuple[Callable, ...]:
    from triton_kernels.apply_masks import apply_masks_, plan_apply_masks_
    from triton_kernels.l0_grad_mask import l0_grad_mask_, plan_l0_grad_mask_
    from triton_kernels.threshold_masks import threshold_masks

    return l0_grad_mask_, apply_masks_, threshold_masks, plan_l0_grad_mask_, plan_apply_masks_


def _checked(fn: Callable) -> Callable:
    """``fn`` that raises a one-line RuntimeError when Triton cannot run on the weights' device."""

    def wrapper(weights: Sequence[torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        reason = triton_unusable_reason(_first_device(weights))
        if reason is not None:
            raise RuntimeError(f"backend 'triton' cannot run: {reason}")
        return fn(weights, *args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _auto(fused: Callable, fallback: Callable) -> Callable:
    """``fused`` where Triton can run on the weights' device, else ``fallback`` (the torch reference)."""

    def wrapper(weights: Sequence[torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        fn = fused if triton_unusable_reason(_first_device(weights)) is None else fallback
        return fn(weights, *args, **kwargs)

    wrapper.__name__ = wrapper.__qualname__ = fused.__name__
    wrapper.__doc__ = fused.__doc__
    return wrapper


def get_ops(backend: str = "auto") -> KernelOps:
    """The kernel ops of ``backend``.

    Args:
        backend: "triton" (fused kernels; error if they cannot run), "torch" (the plain-torch reference) or
            "auto" (per call: Triton for CUDA tensors, or for CPU tensors under ``TRITON_INTERPRET=1``; the
            torch reference otherwise).

    Returns:
        A ``KernelOps`` with ``l0_grad_mask_``, ``apply_masks_``, ``threshold_masks`` and the plan builders
        ``plan_l0_grad_mask_``, ``plan_apply_masks_`` ("auto" picks the backend once, at plan time).

    Raises:
        ValueError: unknown backend.
        RuntimeError: "triton" on a machine where Triton cannot run (no CUDA device and no interpreter).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
    refs = (
        reference.l0_grad_mask_reference_,
        reference.apply_masks_reference_,
        reference.threshold_masks_reference,
        reference.plan_l0_grad_mask_reference_,
        reference.plan_apply_masks_reference_,
    )
    if backend == "torch":
        return KernelOps("torch", *refs)
    if backend == "triton":
        # The interpreter runs on CPU tensors; compiled kernels need a CUDA device.
        device = torch.device("cpu") if INTERPRET or not torch.cuda.is_available() else torch.device("cuda")
        reason = triton_unusable_reason(device)
        if reason is not None:
            raise RuntimeError(f"backend 'triton' cannot run on this machine: {reason}")
        return KernelOps("triton", *(_checked(fn) for fn in _triton_ops()))
    try:
        fused = _triton_ops()
    except ImportError:  # no triton (e.g. macOS): every call takes the reference
        return KernelOps("auto", *refs)
    return KernelOps("auto", *(_auto(f, r) for f, r in zip(fused, refs, strict=True)))
