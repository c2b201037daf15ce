"""Fused multi-tensor Triton kernels for sparsity training (Method 1), with plain-torch references.

Public API:
    l0_grad_mask_(weights, grads, masks, *, alphas, beta, l2) -> Tensor
    apply_masks_(weights, masks) -> None
    threshold_masks(weights, thresholds) -> tuple[list[Tensor], Tensor]
    get_ops(backend) -> KernelOps      backend in {"triton", "torch", "auto"}

The kernel functions are importable only where triton is; ``get_ops("auto")`` and ``reference`` work
everywhere (the torch reference is the automatic CPU fallback).
"""

from triton_kernels._multi_tensor import LaunchConfig
from triton_kernels.dispatch import BACKENDS, KernelOps, get_ops
from triton_kernels.reference import (
    apply_masks_reference_,
    l0_grad_mask_reference_,
    l0_penalty,
    threshold_masks_reference,
)

__all__ = [
    "BACKENDS",
    "KernelOps",
    "LaunchConfig",
    "apply_masks_",
    "apply_masks_reference_",
    "get_ops",
    "l0_grad_mask_",
    "l0_grad_mask_reference_",
    "l0_penalty",
    "threshold_masks",
    "threshold_masks_reference",
]

try:
    from triton_kernels.apply_masks import apply_masks_
    from triton_kernels.l0_grad_mask import l0_grad_mask_
    from triton_kernels.threshold_masks import threshold_masks
except ImportError:  # pragma: no cover - no triton on this platform: use get_ops("auto") / get_ops("torch")
    __all__ = [name for name in __all__ if name not in ("apply_masks_", "l0_grad_mask_", "threshold_masks")]
