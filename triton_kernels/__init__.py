"""Fused multi-tensor Triton kernels for sparsity training (Method 1), with plain-torch references.

Public API:
    l0_grad_mask_(weights, grads, masks, *, alphas, beta, l2) -> Tensor
    apply_masks_(weights, masks) -> None
    threshold_masks(weights, thresholds, *, packed=False) -> tuple[list[Tensor | PackedMask], Tensor]
    plan_l0_grad_mask_(...), plan_apply_masks_(...) -> LaunchPlan   (validated once; ``plan()`` re-runs)
    get_ops(backend, device=None) -> KernelOps   backend "triton", "torch" or "auto"; ``.backend``: the resolved one
    PackedMask                          keep-mask packed 1 bit per weight (``triton_kernels.bitmask``)

Masks are bool/uint8 tensors (non-zero = kept) or ``PackedMask``s, mixed freely; masking is a select (a
pruned element becomes exactly 0). The kernel functions are importable only where triton is, and run on CUDA
tensors (or CPU tensors under ``TRITON_INTERPRET=1``; other tensors: a one-line RuntimeError before any launch);
``get_ops("auto")``, ``PackedMask`` and ``reference`` work everywhere. "auto" is Triton for a CUDA device where it
can run and the torch reference everywhere else, also on CPU under the interpreter (``dispatch.auto_backend``, the
rule ``regularizer.backend=auto`` follows).
"""

from triton_kernels._multi_tensor import LaunchConfig
from triton_kernels.bitmask import PackedMask, packed_nbytes
from triton_kernels.dispatch import BACKENDS, KernelOps, get_ops
from triton_kernels.plan import LaunchPlan
from triton_kernels.reference import (
    apply_masks_reference_,
    l0_grad_mask_reference_,
    l0_penalty,
    plan_apply_masks_reference_,
    plan_l0_grad_mask_reference_,
    threshold_masks_reference,
)

_FUSED = ("apply_masks_", "l0_grad_mask_", "threshold_masks", "plan_apply_masks_", "plan_l0_grad_mask_")
__all__ = [
    "BACKENDS",
    "KernelOps",
    "LaunchConfig",
    "LaunchPlan",
    "PackedMask",
    "apply_masks_reference_",
    "get_ops",
    "l0_grad_mask_reference_",
    "l0_penalty",
    "packed_nbytes",
    "plan_apply_masks_reference_",
    "plan_l0_grad_mask_reference_",
    "threshold_masks_reference",
    "apply_masks_",
    "l0_grad_mask_",
    "plan_apply_masks_",
    "plan_l0_grad_mask_",
    "threshold_masks",
]

try:
    from triton_kernels.apply_masks import apply_masks_, plan_apply_masks_
    from triton_kernels.l0_grad_mask import l0_grad_mask_, plan_l0_grad_mask_
    from triton_kernels.threshold_masks import threshold_masks
except ImportError:  # pragma: no cover - no triton on this platform: use get_ops("auto") / get_ops("torch")
    __all__ = [name for name in __all__ if name not in _FUSED]
