"""A toy sparsity strategy added from outside the package: one module, one settings class, one registry entry.

l1 (lasso) pull: R(W) = strength · Σ|w|, ∂R/∂w = strength · sign(w), added on the gradient path; masks as the
base strategy applies them.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from sparsetrain.config.strategies import RegularizerConfig
from sparsetrain.regularizers import GradientRegularizer, StrategyInputs, WeightSlice, register_regularizer
from sparsetrain.regularizers.base import columns


class ToyL1Config(RegularizerConfig):
    name: Literal["toy_l1"] = Field("toy_l1", description="l1 pull (test strategy).")
    gradient_path: Literal["hook"] = Field("hook", description="hook only.")
    strength: float = Field(1e-3, ge=0, description="l1 strength.")


class ToyL1Regularizer(GradientRegularizer):
    name = "toy_l1"

    def __init__(self, backend: str, strength: float) -> None:
        super().__init__(backend)
        self.strength = strength

    @torch.no_grad()
    def apply_to_gradients(self, slices: list[WeightSlice]) -> torch.Tensor:
        weights, grads, _ = columns(slices)
        value = torch.zeros(())
        for w, g in zip(weights, grads, strict=True):
            g.add_(torch.sign(w), alpha=self.strength)
            value = value + self.strength * w.abs().sum().to(value.device)
        return value + super().apply_to_gradients(slices)  # masks (and a zero penalty) the base way


def _build(cfg: ToyL1Config, inputs: StrategyInputs) -> ToyL1Regularizer:
    return ToyL1Regularizer(inputs.backend, cfg.strength)


register_regularizer(ToyL1Config, _build)
