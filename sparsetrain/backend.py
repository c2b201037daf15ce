"""Which kernels run the penalty gradients and masks: resolved once per run from `regularizer.backend`.

Vocabulary: the *backend* (`triton` | `torch`) is which implementation does the work; the *gradient path*
(`regularizer.gradient_path`: `hook` | `autograd`) is where the penalty's gradient enters training. They are
independent settings; `auto` means one thing: triton on CUDA when Triton imports, torch everywhere else.
"""

from __future__ import annotations

import torch

from sparsetrain.config.loader import ConfigError


def resolve_backend(requested: str, device: torch.device) -> str:
    """"auto" → "triton" on CUDA with Triton installed, else "torch"; "triton"/"torch" are checked and kept.

    Raises:
        ConfigError: "triton" was asked for where Triton cannot run (one line naming `regularizer.backend`).
    """
    if requested == "triton":
        from triton_kernels._multi_tensor import triton_unusable_reason

        reason = triton_unusable_reason(device)
        if reason is not None:
            raise ConfigError(f"regularizer.backend: 'triton' cannot run on {device.type}: {reason}; use auto or torch")
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "torch"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "torch"
    return "triton"
