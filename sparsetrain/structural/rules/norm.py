"""Rules for normalization layers: BatchNorm (exact), GroupNorm (whole groups, exact), LayerNorm over channels
(removal changes the statistics of the other channels: inexact, only on request)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import fx, nn

from sparsetrain.structural._spaces import Layout
from sparsetrain.structural.rules.base import LayerRule, TraceContext, register_layer_rule
from sparsetrain.structural.rules.elementwise import keeps_zero, untracked

__all__ = ["BatchNormRule", "GroupNormRule", "LayerNormRule", "batch_norm_coupling", "group_norm_coupling",
           "layer_norm_coupling"]


def batch_norm_coupling(ctx: TraceContext, node: fx.Node, x: Any, module: str, params: tuple, stats: tuple,
                        keeps_zero_after: bool) -> Any:
    """BN scale/shift and running statistics are producers of the channels they normalize."""
    if not isinstance(x, Layout) or x.cdim != 1:
        return ctx.unsupported(node, f"batch norm '{module}' off the channel axis")
    for p, kind in zip(params + stats, ("norm", "norm", "stat", "stat"), strict=True):
        ctx.produce(x, module, p, 0, kind)
    # With gamma and beta zeroed, BN outputs exactly 0 for the channel, whatever it reads.
    return ctx.passthrough(x, node, zero=keeps_zero_after)


def layer_norm_coupling(ctx: TraceContext, node: fx.Node, x: Any, n_norm_dims: int, module: str,
                        weight: str | None, bias: str | None) -> Any:
    """LayerNorm over the last `n_norm_dims` axes; when they include the channel axis, the group is inexact."""
    if not isinstance(x, Layout):
        return ctx.fresh(node, module, f"LayerNorm '{module}' of an untracked tensor")
    first = x.ndim - n_norm_dims
    if x.cdim < first:  # channels are not normalized together; the affine runs over other axes
        return ctx.passthrough(x, node, zero=False)
    ctx.inexact(x, f"LayerNorm '{module}' normalizes over channels: removing a channel changes the others")
    ctx.produce(x, module, weight, x.cdim - first, "norm")
    ctx.produce(x, module, bias, x.cdim - first, "norm")
    return ctx.passthrough(x, node, zero=weight is not None)


def group_norm_coupling(ctx: TraceContext, node: fx.Node, x: Any, groups: int, module: str, weight: str | None,
                        bias: str | None) -> Any:
    """GroupNorm normalizes blocks of channels together: whole blocks are removed (exact); one group is LayerNorm."""
    if not isinstance(x, Layout) or x.cdim != 1:
        return ctx.unsupported(node, f"group norm '{module}' off the channel axis")
    channels = ctx.shape(node)[1]
    if groups == 1 and channels > 1:
        ctx.inexact(x, f"GroupNorm '{module}' with one group normalizes over all channels: removing a channel "
                       "changes the others")
    elif 1 < groups < channels and not ctx.require_blocks(x, channels // groups, f"GroupNorm '{module}'"):
        return ctx.passthrough(x, node, zero=False)
    ctx.produce(x, module, weight, 0, "norm")
    ctx.produce(x, module, bias, 0, "norm")
    return ctx.passthrough(x, node, zero=weight is not None)


def _post_activation(module: nn.Module) -> bool | None:
    """timm's norm+act layers apply `drop` and `act` after normalizing: do they keep a zero a zero?"""
    post = [getattr(module, "drop", nn.Identity()), getattr(module, "act", nn.Identity())]
    flags = [keeps_zero(m) for m in post]
    return None if None in flags else all(flags)


@register_layer_rule
class BatchNormRule(LayerRule):
    """`nn.BatchNorm*d` and subclasses, including timm's BatchNormAct2d (BN + drop + activation)."""

    types = (nn.modules.batchnorm._BatchNorm,)

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        post = _post_activation(module)
        if post is None:
            return ctx.unsupported(node, f"activation in '{name}' ({type(module.act).__name__})")
        params = ("weight", "bias") if module.affine else (None, None)
        stats = ("running_mean", "running_var") if module.running_mean is not None else (None, None)
        return batch_norm_coupling(ctx, node, x, name, params, stats, module.affine and post)

    def attributes(self, module: nn.Module) -> dict[str, Any]:
        return {"num_features": module.num_features}

    def shrink(self, name: str, module: nn.Module, old: Mapping[str, Any]) -> None:
        ref = module.weight if module.weight is not None else module.running_mean
        module.num_features = ref.shape[0]


@register_layer_rule
class LayerNormRule(LayerRule):
    """`nn.LayerNorm` (subclasses that are traced into reach `layer_norm_coupling` through `F.layer_norm`)."""

    types = (nn.LayerNorm,)

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        return layer_norm_coupling(ctx, node, x, len(module.normalized_shape), name,
                                   "weight" if module.weight is not None else None,
                                   "bias" if module.bias is not None else None)

    def attributes(self, module: nn.Module) -> dict[str, Any]:
        return {"normalized_shape": list(module.normalized_shape)}

    def shrink(self, name: str, module: nn.Module, old: Mapping[str, Any]) -> None:
        if module.weight is not None:
            module.normalized_shape = tuple(module.weight.shape)


@register_layer_rule
class GroupNormRule(LayerRule):
    """`nn.GroupNorm` and subclasses (timm's GroupNormAct and GroupNorm1 are traced through `F.group_norm`)."""

    types = (nn.GroupNorm,)

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        if not isinstance(x, Layout):
            return untracked(ctx, node, name, module)
        affine = module.affine
        return group_norm_coupling(ctx, node, x, module.num_groups, name, "weight" if affine else None,
                                   "bias" if affine else None)

    def attributes(self, module: nn.Module) -> dict[str, Any]:
        return {"num_groups": module.num_groups, "num_channels": module.num_channels}

    def shrink(self, name: str, module: nn.Module, old: Mapping[str, Any]) -> None:
        if module.weight is None:
            return
        channels, old_groups, old_channels = module.weight.shape[0], old["num_groups"], old["num_channels"]
        module.num_channels = channels
        if old_groups == old_channels:
            module.num_groups = channels
        elif old_groups > 1:  # whole groups were removed
            module.num_groups = channels // (old_channels // old_groups)
