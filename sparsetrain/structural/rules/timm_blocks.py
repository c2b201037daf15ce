"""Rules for timm blocks that `torch.fx` cannot trace: each gives a traceable stand-in for its forward, with the
input-size-dependent branches decided from the traced input shape, which the analysis reads in place of the block.

- VGG's pre-logits `ConvMlp` (a 7x7 conv "fc1", activation, dropout, a 1x1 conv "fc2"): pools small inputs up to
  7x7 first (per channel); both convs are then ordinary layers, so its hidden channels are prunable.
- MetaFormer's `Scale` (PoolFormer, ConvFormer, CAFormer layer scales): multiplies by its vector viewed to a
  stored `shape`, which removal must shrink with the vector.
- MobileViT's `MobileVitBlock`: local conv, 1x1 conv to the transformer width, unfold into patches, transformer
  blocks, fold back, projection and fusion with the shortcut. Unfolding moves each channel to the last axis without
  mixing channels; the stand-in unfolds with a reshape that keeps the channel axis whole, so the analysis follows
  the transformer width through the transformer (its LayerNorms make that group inexact) and the heads and MLP
  widths inside it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.metaformer import Scale
from timm.models.mobilevit import MobileVitBlock
from timm.models.vgg import ConvMlp
from torch import fx, nn

from sparsetrain.structural._spaces import Layout
from sparsetrain.structural.rules.base import LayerRule, TraceContext, register_layer_rule

__all__ = ["ConvMlpRule", "MetaFormerScaleRule", "MobileVitBlockRule"]


def _input_hw(node: fx.Node) -> tuple[int, int]:
    shape = node.args[0].meta["tensor_meta"].shape
    return int(shape[-2]), int(shape[-1])


@register_layer_rule
class ConvMlpRule(LayerRule):
    """timm VGG `ConvMlp` (pre-logits): fc1's output channels become an ordinary prunable group."""

    types = (ConvMlp,)
    subclasses = False

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        h, w = _input_hw(node)
        k = module.input_kernel_size
        size = (max(k, h), max(k, w)) if h < k or w < k else None

        def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
            if size is not None:
                x = F.adaptive_avg_pool2d(x, size)
            return self.act2(self.fc2(self.drop(self.act1(self.fc1(x)))))

        return ctx.trace_inline(node, name, module, forward)

    def attributes(self, module: nn.Module) -> dict[str, Any]:
        return {}


@register_layer_rule
class MobileVitBlockRule(LayerRule):
    """timm `MobileVitBlock`: analyzed through a stand-in forward with a channel-preserving unfold."""

    types = (MobileVitBlock,)
    subclasses = False

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        shape = tuple(node.args[0].meta["tensor_meta"].shape)
        with torch.no_grad():
            h, w = module.conv_1x1(module.conv_kxk(torch.zeros(shape))).shape[-2:]
        ph, pw = module.patch_size
        nh, nw = math.ceil(h / ph), math.ceil(w / pw)

        def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
            shortcut = x
            x = self.conv_1x1(self.conv_kxk(x))
            if (nh * ph, nw * pw) != (h, w):
                x = F.interpolate(x, size=(nh * ph, nw * pw), mode="bilinear", align_corners=False)
            b, c = x.shape[0], x.shape[1]
            x = x.reshape(b, c, nh, ph, nw, pw).permute(0, 3, 5, 2, 4, 1).reshape(b * ph * pw, nh * nw, c)
            x = self.norm(self.transformer(x))
            x = x.reshape(b, ph, pw, nh, nw, c).permute(0, 5, 3, 1, 4, 2).reshape(b, c, nh * ph, nw * pw)
            if (nh * ph, nw * pw) != (h, w):
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
            x = self.conv_proj(x)
            return x if self.conv_fusion is None else self.conv_fusion(torch.cat((shortcut, x), dim=1))

        return ctx.trace_inline(node, name, module, forward)

    def attributes(self, module: nn.Module) -> dict[str, Any]:
        return {}


@register_layer_rule
class MetaFormerScaleRule(LayerRule):
    """timm MetaFormer `Scale`: `x * scale.view(shape)`; the per-channel vector is a producer, `shape` shrinks."""

    types = (Scale,)
    subclasses = False

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        shape = ctx.shape(node)
        if not isinstance(x, Layout) or shape is None or x.cdim != len(shape) - len(module.shape):
            return ctx.unsupported(node, f"layer scale '{name}' off the channel axis")
        ctx.produce(x, name, "scale", 0, "scale")
        return ctx.passthrough(x, node, zero=True)  # a zeroed scale zeroes the channel

    def attributes(self, module: nn.Module) -> dict[str, Any]:
        return {"shape": list(module.shape)}

    def shrink(self, name: str, module: nn.Module, old: dict[str, Any]) -> None:
        module.shape = (module.scale.shape[0], *old["shape"][1:])
