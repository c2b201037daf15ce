"""Rules for timm's LeViT (Graham et al. 2021, "LeViT: a Vision Transformer in ConvNet's Clothing for Faster
Inference", https://arxiv.org/abs/2104.01136): its `LinearNorm` layer and its two attention blocks.

LeViT normalizes with BatchNorm, never LayerNorm, so all its channels can be removed exactly, the residual stream
included:

- `LinearNorm` (Linear without bias, then BatchNorm1d over the tokens flattened into the batch,
  `bn(x.flatten(0, 1)).reshape_as(x)`): the BN is a per-channel affine map of the linear's output features, so
  its scale, shift and running statistics are producers of the linear's output channels. With the linear's row
  and the BN's scale and shift zeroed the channel is exactly 0.
- `Attention` (qkv LinearNorm, per-head q/k/v, learned per-head `attention_biases`, `proj` = activation +
  LinearNorm) and `AttentionDownsample` (kv LinearNorm on all tokens, q LinearNorm on subsampled tokens): whole
  heads are removed. qkv's output is viewed as (heads, key_dim + key_dim + val_dim), so head h owns the contiguous
  rows [h·(2·key_dim + val_dim), (h+1)·(2·key_dim + val_dim)) of qkv and its BN (AttentionDownsample: kv rows
  [h·(key_dim + val_dim), ...) and q rows [h·key_dim, ...)), row h of `attention_biases`, and the columns
  [h·val_dim, (h+1)·val_dim) of proj's linear. Zeroing a head's rows gives q = k = v = 0: its attention weights
  are softmax(bias), finite, and its output (attn @ v) is 0, which proj's activation (Hardswish: 0 -> 0) keeps
  0, so removing the head equals zeroing it. `attention_bias_idxs` (tokens x tokens) does not depend on the
  heads; the eval-mode cache of gathered biases is cleared on shrink and bypassed while exported (`for_export`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from timm.models.levit import Attention, AttentionDownsample, LinearNorm
from torch import fx, nn

from sparsetrain.structural._spaces import Layout
from sparsetrain.structural.rules.base import LayerRule, TraceContext, register_layer_rule
from sparsetrain.structural.rules.elementwise import keeps_zero
from sparsetrain.structural.rules.linear import linear_coupling
from sparsetrain.structural.types import ChannelSlice

__all__ = ["LevitAttentionHeadsRule", "LinearNormRule", "linear_norm_coupling"]

_BN_TENSORS = (("weight", "norm"), ("bias", "norm"), ("running_mean", "stat"), ("running_var", "stat"))


def _bn_tensors(bn: nn.Module) -> list[tuple[str, str]]:
    """(tensor name, slice kind) of the BN's per-channel tensors that exist."""
    return [(p, kind) for p, kind in _BN_TENSORS if getattr(bn, p, None) is not None]


def linear_norm_coupling(ctx: TraceContext, node: fx.Node, x: Any, name: str, module: nn.Module) -> Any:
    """LinearNorm `name`: the linear reads `x` on its last axis; linear rows and BN channels produce the output."""
    bias = "bias" if module.linear.bias is not None else None
    out = linear_coupling(ctx, node, x, f"{name}.linear", "weight", bias)
    for param, kind in _bn_tensors(module.bn):
        ctx.produce(out, f"{name}.bn", param, 0, kind)
    return out if out is None else ctx.passthrough(out, node, zero=module.bn.affine)


@register_layer_rule
class LinearNormRule(LayerRule):
    """timm LeViT `LinearNorm`: Linear + BatchNorm1d of its output features (its children shrink themselves)."""

    types = (LinearNorm,)
    subclasses = False

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        return linear_norm_coupling(ctx, node, x, name, module)

    def attributes(self, module: nn.Module) -> dict[str, Any]:
        return {}


@register_layer_rule
class LevitAttentionHeadsRule(LayerRule):
    """Heads of timm LeViT `Attention` and `AttentionDownsample` on token sequences (`num_heads` shrinks)."""

    types = (Attention, AttentionDownsample)
    subclasses = False

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        shape = ctx.shape(node)
        kd, vd = module.key_dim, module.val_dim
        rows = {"kv": kd + vd, "q.ln": kd} if isinstance(module, AttentionDownsample) else {"qkv": 2 * kd + vd}
        norms = [module.get_submodule(rel) for rel in (*rows, "proj.ln")]
        if (module.use_conv or not isinstance(x, Layout) or shape is None or keeps_zero(module.proj.act) is not True
                or not all(isinstance(m, LinearNorm) and m.bn.affine for m in norms)):
            return ctx.unsupported(node, f"LeViT attention '{name}' ({type(module).__name__}: conv mode, an "
                                         "activation that does not keep 0, or a BatchNorm without affine)")
        space = ctx.new_space(module.num_heads, f"{name}.heads")
        for (rel, per_head), ln in zip(rows.items(), norms, strict=False):
            ctx.consume(x, f"{name}.{rel}.linear", "weight", 1, len(shape) - 1, f"{name}.{rel}")
            self._head_rows(ctx, space, f"{name}.{rel}", ln, per_head)
        ctx.add_slice(space, "p", ChannelSlice(name, "attention_biases", 0, 0, 1, "stat"))
        ctx.add_slice(space, "c", ChannelSlice(f"{name}.proj.ln.linear", "weight", 1, 0, vd, "input"))
        return linear_norm_coupling(ctx, node, None, f"{name}.proj.ln", module.proj.ln)

    @staticmethod
    def _head_rows(ctx: TraceContext, space: int, name: str, ln: nn.Module, per_head: int) -> None:
        """Head h owns rows [h * per_head, (h+1) * per_head) of LinearNorm `name` (linear and BN)."""
        tensors = [("linear", "weight", "filter")] + [("bn", p, kind) for p, kind in _bn_tensors(ln.bn)]
        if ln.linear.bias is not None:  # a folded constant added one
            tensors.append(("linear", "bias", "bias"))
        for child, param, kind in tensors:
            ctx.add_slice(space, "p", ChannelSlice(f"{name}.{child}", param, 0, 0, per_head, kind))

    def attributes(self, module: nn.Module) -> dict[str, Any]:
        return {"num_heads": module.num_heads}

    def shrink(self, name: str, module: nn.Module, old: Mapping[str, Any]) -> None:
        self._set_heads(module, module.attention_biases.shape[0])

    def rebuild(self, name: str, module: nn.Module, attributes: Mapping[str, Any]) -> None:
        self._set_heads(module, attributes["num_heads"])

    @contextlib.contextmanager
    def for_export(self, module: nn.Module) -> Iterator[None]:
        """The gathered biases `attention_biases[:, attention_bias_idxs]` computed in the exported graph, not read
        from timm's eval-mode cache. In eval mode `get_attention_biases` stores them in a plain dict attribute
        (`attention_bias_cache`), which torch.export would see assigned during export (a UserWarning: a tensor
        attribute outside the program's parameters and buffers). timm skips the cache when the module is training
        (and under torch.jit tracing, for the same reason): only the module's own flag is set, its LinearNorm /
        BatchNorm children stay in eval mode, and these blocks read it nowhere else."""
        training = module.training
        module.training = True
        try:
            yield
        finally:
            module.training = training
            module.attention_bias_cache = {}  # whatever the export left there was traced, not computed

    @staticmethod
    def _set_heads(module: nn.Module, heads: int) -> None:
        module.num_heads = heads
        module.key_attn_dim = module.key_dim * heads
        module.val_attn_dim = module.val_dim * heads
        module.attention_bias_cache = {}  # eval-mode cache of the gathered biases, one entry per device
