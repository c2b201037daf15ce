"""Rule for multi-head self-attention with a fused qkv projection (timm ViT/DeiT `Attention`, Swin's
`WindowAttention`): whole heads are removed, exactly.

Head h owns rows [k·A + h·d, k·A + (h+1)·d) of `qkv` for k = q, k, v (A = heads·d, d = head dim), the same rows of
a gate projection, columns [h·d, (h+1)·d) of `proj`, and per-head parameters such as Swin's relative position bias
table (column h). Zeroing those rows makes q = k = 0 and v = 0, so the head's output is exactly zero whatever the
attention weights are: removing the head equals zeroing it. A norm over all heads' outputs (`scale_norm`) makes the
removal inexact. The embedding channels that qkv reads and proj writes are ordinary channels of the residual stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from timm.layers import Attention
from timm.models.swin_transformer import WindowAttention
from torch import fx, nn

from sparsetrain.structural._spaces import Layout
from sparsetrain.structural.rules.base import LayerRule, TraceContext, register_layer_rule
from sparsetrain.structural.types import ChannelSlice

__all__ = ["AttentionHeadsRule"]


def _head_dim(module: nn.Module) -> int:
    return module.qkv.out_features // (3 * module.num_heads)


@register_layer_rule
class AttentionHeadsRule(LayerRule):
    """Heads of timm `Attention` and Swin `WindowAttention` (`num_heads` shrinks; head dims stay)."""

    types = (Attention, WindowAttention)
    subclasses = False  # subclasses (rotary, differential attention) compute heads differently: traced, not assumed
    head_params: dict[type, tuple[tuple[str, int], ...]] = {WindowAttention: (("relative_position_bias_table", 1),)}

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        shape = ctx.shape(node)
        if not isinstance(x, Layout) or shape is None or not self._fused(module):
            return ctx.unsupported(node, f"attention '{name}' ({type(module).__name__})")
        ctx.consume(x, f"{name}.qkv", "weight", 1, len(shape) - 1, f"{name}.qkv")
        heads, d = module.num_heads, _head_dim(module)
        space = ctx.new_space(heads, f"{name}.heads")
        for k in range(3):
            self._rows(ctx, space, f"{name}.qkv", module.qkv, k * heads * d, d)
        gate = getattr(module, "gate", None)
        if isinstance(gate, nn.Linear):
            ctx.consume(x, f"{name}.gate", "weight", 1, len(shape) - 1, f"{name}.gate")
            self._rows(ctx, space, f"{name}.gate", gate, 0, d)
        ctx.add_slice(space, "c", ChannelSlice(f"{name}.proj", "weight", 1, 0, d, "input"))
        for param, dim in self.head_params.get(type(module), ()):
            ctx.add_slice(space, "p", ChannelSlice(name, param, dim, 0, 1, "stat"))
        if not isinstance(getattr(module, "norm", nn.Identity()), nn.Identity):
            ctx.inexact(Layout((space,), (1,), (True,), 0, 1),
                        f"'{name}.norm' normalizes over all heads: removing a head changes the others")
        out = ctx.fresh(node, f"{name}.proj", cdim=-1)
        ctx.produce(out, f"{name}.proj", "weight", 0, "filter")
        ctx.produce(out, f"{name}.proj", "bias" if module.proj.bias is not None else None, 0, "bias")
        return out

    @staticmethod
    def _fused(module: nn.Module) -> bool:
        qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
        return (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and qkv.out_features % 3 == 0
                and proj.in_features * 3 == qkv.out_features and qkv.out_features % (3 * module.num_heads) == 0)

    @staticmethod
    def _rows(ctx: TraceContext, space: int, module: str, linear: nn.Linear, offset: int, d: int) -> None:
        ctx.add_slice(space, "p", ChannelSlice(module, "weight", 0, offset, d, "filter"))
        if linear.bias is not None:
            ctx.add_slice(space, "p", ChannelSlice(module, "bias", 0, offset, d, "bias"))

    def attributes(self, module: nn.Module) -> dict[str, Any]:
        return {"num_heads": module.num_heads, "head_dim": _head_dim(module)}

    def shrink(self, name: str, module: nn.Module, old: Mapping[str, Any]) -> None:
        module.num_heads = module.qkv.weight.shape[0] // (3 * old["head_dim"])
        if hasattr(module, "attn_dim"):
            module.attn_dim = module.num_heads * old["head_dim"]

    def rebuild(self, name: str, module: nn.Module, attributes: Mapping[str, Any]) -> None:
        super().rebuild(name, module, attributes)
        if hasattr(module, "attn_dim"):
            module.attn_dim = attributes["num_heads"] * attributes["head_dim"]
