"""Backend selection: fused Triton kernels, the torch reference, or "auto" (Triton on CUDA, torch elsewhere)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from triton_kernels import reference
from triton_kernels._multi_tensor import INTERPRET, triton_unusable_reason
from triton_kernels.plan import LaunchPlan

BACKENDS = ("triton", "torch", "auto")


@dataclass(frozen=True)
class KernelOps:
    """The multi-tensor ops of one backend, and their plan builders; signatures as in ``triton_kernels``."""

    backend: str  # "triton" or "torch": get_ops resolves "auto" before it builds one
    l0_grad_mask_: Callable[..., torch.Tensor]
    apply_masks_: Callable[..., None]
    threshold_masks: Callable[..., tuple[list, torch.Tensor]]
    plan_l0_grad_mask_: Callable[..., LaunchPlan[torch.Tensor]]
    plan_apply_masks_: Callable[..., LaunchPlan[None]]


def _triton_ops() -> tuple[Callable, ...]:
    from triton_kernels.apply_masks import apply_masks_, plan_apply_masks_
    from triton_kernels.l0_grad_mask import l0_grad_mask_, plan_l0_grad_mask_
    from triton_kernels.threshold_masks import threshold_masks

    return l0_grad_mask_, apply_masks_, threshold_masks, plan_l0_grad_mask_, plan_apply_masks_


def auto_backend(device: torch.device) -> tuple[str, str]:
    """What "auto" means, the one rule for ``get_ops`` and a run's ``regularizer.backend``: ("triton", why) for a CUDA
    device where Triton can run, else ("torch", why).

    The interpreter (``TRITON_INTERPRET=1``) never makes "auto" pick Triton on CPU: it is a debugging tool, hundreds of
    times slower than the reference; ask for ``"triton"`` by name to run it.

    Returns:
        The backend and why, e.g. ``("torch", "not CUDA (cpu); TRITON_INTERPRET=1 runs Triton only when asked for")``.
    """
    if device.type != "cuda":
        interpreter = "; TRITON_INTERPRET=1 runs Triton only when asked for" if INTERPRET else ""
        return "torch", f"not CUDA ({device.type}){interpreter}"
    reason = triton_unusable_reason(device)
    if reason is not None:
        return "torch", reason
    return "triton", "CUDA with Triton installed"


def get_ops(backend: str = "auto", device: torch.device | str | None = None) -> KernelOps:
    """The kernel ops of ``backend``, resolved once: ``.backend`` is "triton" or "torch", never "auto".

    Args:
        backend: "triton" (fused kernels; error if they cannot run), "torch" (the plain-torch reference) or
            "auto" (``auto_backend``: Triton for a CUDA device where it can run, the torch reference otherwise, also
            on CPU under ``TRITON_INTERPRET=1``; the meaning of ``regularizer.backend=auto``).
        device: where the tensors will live; None: CUDA when available, else CPU.

    Returns:
        A ``KernelOps`` with ``l0_grad_mask_``, ``apply_masks_``, ``threshold_masks`` and the plan builders
        ``plan_l0_grad_mask_``, ``plan_apply_masks_``. The Triton ops raise a one-line RuntimeError for tensors on
        a device where they cannot run.

    Raises:
        ValueError: unknown backend.
        RuntimeError: "triton" on a machine (or ``device``) where Triton cannot run (no CUDA device and no
            interpreter).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if device is not None:
        device = torch.device(device)
    if backend == "auto":
        backend, _ = auto_backend(device or torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if backend == "torch":
        return KernelOps(
            "torch",
            reference.l0_grad_mask_reference_,
            reference.apply_masks_reference_,
            reference.threshold_masks_reference,
            reference.plan_l0_grad_mask_reference_,
            reference.plan_apply_masks_reference_,
        )
    if device is None:  # the interpreter runs on CPU tensors; compiled kernels need a CUDA device
        device = torch.device("cpu") if INTERPRET or not torch.cuda.is_available() else torch.device("cuda")
    reason = triton_unusable_reason(device)
    if reason is not None:
        raise RuntimeError(f"backend 'triton' cannot run on this machine: {reason}")
    return KernelOps("triton", *_triton_ops())
