"""Which kernels run the penalty gradients and masks: resolved once per run from `regularizer.backend`.

Vocabulary: the *backend* (`triton` | `torch`) is which implementation does the work; the *gradient path*
(`regularizer.gradient_path`: `hook` | `autograd`) is where the penalty's gradient enters training. They are
independent settings; `auto` means one thing, here and in `triton_kernels.get_ops("auto")`
(`triton_kernels.dispatch.auto_backend`): triton on CUDA when Triton can run there, torch everywhere else (also
on CPU under TRITON_INTERPRET=1: the interpreter runs only when `triton` is asked for by name).
"""

from __future__ import annotations

import torch

from sparsetrain.config.loader import ConfigError


def resolve_backend(requested: str, device: torch.device) -> str:
    """"auto" → "triton" on CUDA with Triton installed, else "torch"; "triton"/"torch" are checked and kept.

    Raises:
        ConfigError: "triton" was asked for where Triton cannot run (one line naming `regularizer.backend`).
    """
    return explain_backend(requested, device)[0]


def explain_backend(requested: str, device: torch.device) -> tuple[str, str]:
    """`resolve_backend`'s backend and why, for the run's start line: `("torch", "auto: not CUDA (cpu)")`,
    `("triton", "asked for")`.

    Raises:
        ConfigError: as `resolve_backend`.
    """
    from triton_kernels._multi_tensor import triton_unusable_reason

    if requested == "triton":
        reason = triton_unusable_reason(device)
        if reason is not None:
            raise ConfigError(f"regularizer.backend: 'triton' cannot run on {device.type}: {reason}; use auto or torch")
    if requested != "auto":
        return requested, "asked for"
    from triton_kernels.dispatch import auto_backend

    backend, why = auto_backend(device)
    return backend, f"auto: {why}"
