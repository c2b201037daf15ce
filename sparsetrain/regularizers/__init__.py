"""Sparsity strategies selected by name (`regularizer.name`), all applied through the gradient path."""

from __future__ import annotations

import torch

from sparsetrain.config.loader import ConfigError
from sparsetrain.config.schema import RegularizerConfig
from sparsetrain.regularizers.base import GradientRegularizer
from sparsetrain.regularizers.l0 import L0ExpRegularizer, layer_alphas

__all__ = ["GradientRegularizer", "L0ExpRegularizer", "build_regularizer", "layer_alphas", "resolve_kernel"]


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """"auto" → the fused Triton kernel on CUDA, the torch reference elsewhere.

    Raises:
        ConfigError: "triton" was asked for where Triton cannot run (one line naming `regularizer.kernel`).
    """
    if kernel == "triton":
        from triton_kernels._multi_tensor import triton_unusable_reason

        reason = triton_unusable_reason(device)
        if reason is not None:
            raise ConfigError(f"regularizer.kernel: 'triton' cannot run on {device.type}: {reason}; use auto or torch")
    if kernel != "auto":
        return kernel
    if device.type != "cuda":
        return "torch"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "torch"
    return "triton"


def build_regularizer(cfg: RegularizerConfig, sizes: dict[str, int], phase: str, device: torch.device,
                      filter_layouts: dict[str, tuple[int, int]] | None = None) -> GradientRegularizer:
    """The strategy for one phase: dense → l2 only; sparsify → the configured one; finetune → l2 (+ l0 opt.)."""
    kernel = resolve_kernel(cfg.kernel, device)
    zero = {name: 0.0 for name in sizes}
    if phase == "dense" or cfg.name == "l2" or (phase == "finetune" and not cfg.finetune_l0):
        return L0ExpRegularizer(kernel, zero, 0.0, cfg.alpha2)
    if cfg.name == "none":
        return GradientRegularizer(kernel)
    if cfg.name == "l0_exp":
        return L0ExpRegularizer(kernel, layer_alphas(sizes, cfg.alpha0, cfg.layer_scaling), cfg.beta, cfg.alpha2)
    from sparsetrain.regularizers.grad_count import GradCountRegularizer

    return GradCountRegularizer(kernel, cfg, filter_layouts or {})
