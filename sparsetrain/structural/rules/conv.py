"""Rules for convolutions: plain, depthwise, grouped (narrowed inside every group, or whole groups removed),
transposed.

A grouped conv (groups G, in_channels / G > 1 input channels per group) is pruned one of two ways
(`GROUPED_CONV`, chosen per analysis: `build_channel_groups(..., grouped_conv=...)`, `prune.grouped_conv`):

- "within_groups" (default): every group loses the same channels, inputs and outputs independently; unit u of
  the input is input channel u of every group (weight column u), unit u of the output is output channel u of every
  group (weight rows u, u + out/G, ...). `groups` stays G, both channels per group shrink, so the weight shrinks
  like a dense conv's (Torch-Pruning's grouped-conv pruning, which also keeps the groups equal).
- "whole_groups": input group k and output group k are one unit; `groups` shrinks, channels per group stay.

Both are exact. Depthwise convs (one input channel per group) couple input channel k to its outputs either way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import fx, nn

from sparsetrain.structural.rules.base import LayerRule, TraceContext, register_layer_rule
from sparsetrain.structural.types import StructuralPruningError

__all__ = ["GROUPED_CONV", "ConvRule", "ConvTransposeRule", "add_to_bias", "conv_coupling"]

GROUPED_CONV = ("within_groups", "whole_groups")

_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)  # subclasses may pad in forward (timm Conv2dSame): no exact fold


def conv_coupling(ctx: TraceContext, node: fx.Node, x: Any, module: str, weight: torch.Tensor, bias: str | None,
                  groups: int) -> Any:
    """Couple a conv's channels: a plain conv consumes its input and opens a new space; a grouped conv is narrowed
    inside its groups (`ctx.grouped_conv`, when its input is one channel space) or links group k of its input to
    group k of its output (whole groups removed; depthwise convs always)."""
    out_chs, in_per_group = weight.shape[0], weight.shape[1]
    local = None
    if groups > 1 and in_per_group > 1 and ctx.grouped_conv == "within_groups":
        local = ctx.interleave(x, groups)  # None: a concatenated / flattened input; whole groups then
    if groups == 1 or local is not None:
        ctx.consume(x if local is None else local, module, "weight", 1, 1, module)
        out = ctx.fresh(node, module)
        if local is not None:
            ctx.interleave(out, groups)
    else:
        out = ctx.link_blocks(x, node, in_per_group, out_chs // groups, module,
                              f"grouped conv '{module}' (groups={groups})")
    ctx.produce(out, module, "weight", 0, "filter")
    ctx.produce(out, module, bias, 0, "bias")
    return out


@torch.no_grad()
def add_to_bias(module: nn.Module, columns: torch.Tensor, values: torch.Tensor, dim: int) -> None:
    """bias += W[:, columns] · values, conv kernels summed over their taps (a bias is created if missing)."""
    weight = module.weight
    cols = weight.index_select(dim, columns.to(weight.device)).movedim(dim, 1)
    cols = cols.reshape(cols.shape[0], cols.shape[1], -1).sum(2)  # [out, columns]
    delta = cols.double() @ values.to(device=weight.device, dtype=torch.float64)
    if module.bias is None:
        module.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
    module.bias.add_(delta.to(module.bias.dtype))


@register_layer_rule
class ConvRule(LayerRule):
    """`nn.Conv1d/2d/3d` and subclasses. Grouped convs are narrowed inside their groups (`groups` stays) or lose
    whole groups (`groups` shrinks; see the module docstring); depthwise convs are grouped convs with one input
    channel per group."""

    types = (nn.modules.conv._ConvNd,)

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        return conv_coupling(ctx, node, x, name, module.weight, "bias" if module.bias is not None else None,
                             module.groups)

    def attributes(self, module: nn.Module) -> dict[str, Any]:
        return {"in_channels": module.in_channels, "out_channels": module.out_channels, "groups": module.groups,
                "dilation": module.dilation}

    def before_removal(self, module: nn.Module, deleted: Mapping[tuple[str, int], Collection[int]]) -> dict[str, Any]:
        """Attributes, plus whether removal narrows the groups (deletes in-group columns, or the same number of
        rows from every group without emptying it) rather than deleting whole groups."""
        old = self.attributes(module)
        rows, per_group = deleted.get(("weight", 0), ()), module.out_channels // module.groups
        lost = Counter(r // per_group for r in rows)
        old["narrowed"] = ("weight", 1) in deleted or (len(lost) == module.groups and len(set(lost.values())) == 1
                                                        and next(iter(lost.values())) < per_group)
        return old

    def shrink(self, name: str, module: nn.Module, old: Mapping[str, Any]) -> None:
        module.out_channels = module.weight.shape[0]
        if old["groups"] > 1 and old.get("narrowed"):  # narrowed inside the groups: group count unchanged
            module.in_channels = module.groups * module.weight.shape[1]
        elif old["groups"] > 1:  # whole groups removed: channels per group unchanged
            module.groups = old["groups"] * module.out_channels // old["out_channels"]
            module.in_channels = module.groups * module.weight.shape[1]
        else:
            module.in_channels = module.weight.shape[1]
        if all(size == 1 for size in module.kernel_size):
            # A 1x1 kernel reads one tap, so dilation changes nothing in its output or shape, but a dilation > 1
            # (timm sets it on every conv of a dilated stage, e.g. MobileNetV3 at output stride 16) sends
            # PyTorch's CPU convolution to its slow dilated path: ~20x slower for a 72 -> 432 1x1 conv.
            module.dilation = (1,) * len(module.kernel_size)

    def input_axis(self, module: nn.Module) -> int | None:
        return 1

    def fold_exactness(self, module: nn.Module) -> str | None:
        if module.groups != 1 or type(module) not in _PLAIN_CONVS:
            return None
        padding = (1,) if module.padding == "same" else (0,) if module.padding == "valid" else module.padding
        # Zero padding shows the constant to border outputs through fewer taps: exact only in the interior.
        return "exact" if module.padding_mode != "zeros" or not any(padding) else "approximate"

    def fold_constant(self, module: nn.Module, columns: torch.Tensor, values: torch.Tensor, dim: int) -> None:
        add_to_bias(module, columns, values, dim)


@register_layer_rule
class ConvTransposeRule(ConvRule):
    """`nn.ConvTranspose*` with groups=1 (weights are [in, out, k...])."""

    types = (nn.modules.conv._ConvTransposeNd,)

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        if module.groups != 1:
            return ctx.unsupported(node, f"grouped transposed conv '{name}'")
        ctx.consume(x, name, "weight", 0, 1, name)
        out = ctx.fresh(node, name)
        ctx.produce(out, name, "weight", 1, "filter")
        ctx.produce(out, name, "bias" if module.bias is not None else None, 0, "bias")
        return out

    def shrink(self, name: str, module: nn.Module, old: Mapping[str, Any]) -> None:
        if old["groups"] != 1:
            raise StructuralPruningError(f"'{name}': grouped transposed convs are not pruned")
        module.in_channels, module.out_channels = module.weight.shape[0], module.weight.shape[1]

    def input_axis(self, module: nn.Module) -> int | None:
        return None  # each output position sees a different tap: a constant input does not fold into the bias

    def fold_exactness(self, module: nn.Module) -> str | None:
        return None
