"""Rules for layers that act on each channel alone: activations, dropout, pooling, upsampling, flatten."""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from sparsetrain.structural._spaces import Layout
from sparsetrain.structural.rules.base import LayerRule, TraceContext, register_layer_rule

__all__ = ["NONZERO_OPS", "SPATIAL_OPS", "ZERO_OPS", "PerChannelRule", "keeps_zero"]

# Functions/methods that act per channel and map 0 to 0 (a zeroed channel stays zero after them).
ZERO_OPS = {
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "hardswish", "hardswish_", "leaky_relu", "elu", "mish",
    "tanh", "hardtanh", "dropout", "dropout2d", "contiguous", "clone", "float", "double", "half", "to", "type",
    "detach", "neg", "abs",
}
# Per channel but f(0) != 0: a zeroed channel is no longer zero after them.
NONZERO_OPS = {"sigmoid", "sigmoid_", "hardsigmoid", "exp", "softplus", "cos", "reciprocal"}
# Spatial ops: per channel and 0 -> 0 on channel-first tensors.
SPATIAL_OPS = {"avg_pool2d", "max_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "interpolate"}

_ZERO_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Tanh, nn.Hardtanh, nn.Softsign, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout,
)
_NONZERO_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad2d,
)


def keeps_zero(module: nn.Module) -> bool | None:
    """True/False for a per-channel module that maps 0 to 0 / to a non-zero value; None if not per channel."""
    if isinstance(module, _ZERO_MODULES):
        return True
    if isinstance(module, _NONZERO_MODULES):
        return False
    return None


def untracked(ctx: TraceContext, node: fx.Node, name: str, module: nn.Module) -> Any:
    """The output of a layer whose input carries no channels the analysis follows."""
    if node.args and any(isinstance(a, fx.Node) for a in node.args):
        return ctx.unsupported(node, f"module '{name}' ({type(module).__name__}) of an untracked tensor")
    return ctx.fresh(node, f"op:{node.name}", f"tensor made by module '{name}' from constants")


@register_layer_rule
class PerChannelRule(LayerRule):
    """Activations and dropout: same channels out as in; sigmoid-like layers make a zeroed channel non-zero."""

    types = _ZERO_MODULES + _NONZERO_MODULES

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        if not isinstance(x, Layout):
            return untracked(ctx, node, name, module)
        return ctx.passthrough(x, node, zero=None if keeps_zero(module) else False)


@register_layer_rule
class SpatialRule(LayerRule):
    """Pooling, upsampling and spatial padding of channel-first tensors."""

    types = _SPATIAL_MODULES

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        if not isinstance(x, Layout):
            return untracked(ctx, node, name, module)
        return ctx.apply_op(node, x, "avg_pool2d")


@register_layer_rule
class FlattenRule(LayerRule):
    """`nn.Flatten` / `nn.Unflatten`: followed like `torch.flatten` / `reshape`."""

    types = (nn.Flatten, nn.Unflatten)

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        if not isinstance(x, Layout):
            return untracked(ctx, node, name, module)
        return ctx.apply_op(node, x, "flatten")
