"""Method 1: smooth l0 surrogate + l2 (and the l2-only baseline), per Oliveira et al. (arXiv 2109.05075).

    R_l(W) = α0_l · Σ (1 − exp(−β|w|)) + α2 · Σ w²
    ∂R_l/∂w = α0_l · β · sign(w) · exp(−β|w|) + 2 · α2 · w
    α0_l = α0 · sqrt(N_l / N_max)    (layer_scaling = "sqrt_size", the authors' NORM=True)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from sparsetrain.regularizers.base import GradientRegularizer, WeightSlice, columns

if TYPE_CHECKING:
    from triton_kernels import PackedMask


def layer_alphas(sizes: dict[str, int], alpha0: float, scaling: str) -> dict[str, float]:
    """Per-layer l0 strength; sizes are full weight counts (the authors drop the conv kernel height)."""
    if not sizes:
        return {}
    largest = max(sizes.values())
    if scaling == "none":
        return {name: alpha0 for name in sizes}
    return {name: alpha0 * math.sqrt(n / largest) for name, n in sizes.items()}


class L0ExpRegularizer(GradientRegularizer):
    """Zero attraction α·β·e^{−β|w|} (strong near 0, vanishing for large |w|) plus l2."""

    name = "l0_exp"

    def __init__(self, backend: str, alphas: dict[str, float], beta: float, l2: float,
                 gradient_path: str = "hook") -> None:
        super().__init__(backend, gradient_path)
        self.alphas, self.beta, self.l2 = alphas, beta, l2

    def loss_term(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor | None:
        if not self.uses_autograd:
            return None
        from triton_kernels import l0_penalty

        names = list(params)
        return l0_penalty([params[n] for n in names], [self.alphas[n] for n in names], self.beta, self.l2)

    def apply_to_gradients(self, slices: list[WeightSlice]) -> torch.Tensor:
        if self.uses_autograd:
            return super().apply_to_gradients(slices)
        from triton_kernels import get_ops

        weights, grads, masks = columns(slices)
        alphas = [self.alphas[s.name] for s in slices]
        if self.backend == "torch" and not any(alphas) and _all_fp32(weights + grads):
            return _l2_and_masks(weights, grads, masks, self.l2)
        return get_ops(self.backend).l0_grad_mask_(weights, grads, masks, alphas=alphas, beta=self.beta, l2=self.l2)


def _all_fp32(tensors: list[torch.Tensor]) -> bool:
    return all(t.dtype == torch.float32 for t in tensors)


@torch.no_grad()
def _l2_and_masks(weights: list[torch.Tensor], grads: list[torch.Tensor], masks: list[PackedMask] | None,
                  l2: float) -> torch.Tensor:
    """The l2-only case (α = 0: dense phase, fine-tuning) with torch's multi-tensor ops: g = m ? g + 2·l2·w : 0 in
    place (a select: a pruned slot is exactly 0 whatever it held), returns l2·Σw². Same values as the reference
    kernel, a fraction of its passes over memory on CPU."""
    if not weights:
        return torch.zeros(())
    if l2:
        torch._foreach_add_(grads, weights, alpha=2.0 * l2)
    if masks is not None:
        from triton_kernels.bitmask import keep_flags  # packed masks (WeightSlice views) unpack to bool here

        for g, m in zip(grads, masks, strict=True):
            g.masked_fill_(~keep_flags(m).view_as(g), 0.0)
    norms = torch._foreach_norm(weights)
    return l2 * torch.stack(norms).square().sum()
