"""Rule for `nn.Linear` (channels on the last axis, as in transformers and after flatten)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import fx, nn

from sparsetrain.structural.rules.base import LayerRule, TraceContext, register_layer_rule
from sparsetrain.structural.rules.conv import add_to_bias

__all__ = ["LinearRule", "linear_coupling"]


def linear_coupling(ctx: TraceContext, node: fx.Node, x: Any, module: str, weight: str, bias: str | None) -> Any:
    """A linear reads the channels of its input's last axis and opens a new space on its output's last axis."""
    ndim = len(ctx.shape(node) or (0,))
    ctx.consume(x, module, weight, 1, ndim - 1, module)
    out = ctx.fresh(node, module, cdim=-1)
    ctx.produce(out, module, weight, 0, "filter")
    ctx.produce(out, module, bias, 0, "bias")
    return out


@register_layer_rule
class LinearRule(LayerRule):
    """`nn.Linear` and subclasses."""

    types = (nn.Linear,)

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        return linear_coupling(ctx, node, x, name, "weight", "bias" if module.bias is not None else None)

    def attributes(self, module: nn.Module) -> dict[str, Any]:
        return {"in_features": module.in_features, "out_features": module.out_features}

    def shrink(self, name: str, module: nn.Module, old: Mapping[str, Any]) -> None:
        module.out_features, module.in_features = module.weight.shape

    def input_axis(self, module: nn.Module) -> int | None:
        return -1

    def fold_exactness(self, module: nn.Module) -> str | None:
        return "exact"

    def fold_constant(self, module: nn.Module, columns: torch.Tensor, values: torch.Tensor, dim: int) -> None:
        add_to_bias(module, columns, values, dim)
