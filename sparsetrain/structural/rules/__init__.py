"""Layer rules: one class per layer type, in one registry (`base.py`), extensible with `register_layer_rule`.

Importing this package registers the built-in rules. Functional ops (`F.conv2d`, `F.linear`, `F.batch_norm`,
`F.layer_norm`, `F.group_norm`) on a module's parameters get the same couplings through the functional registry
(`register_functional_rule`), which users can extend like the layer registry.
"""

from __future__ import annotations

from typing import Any

from torch import fx

from sparsetrain.structural.rules import attention, conv, elementwise, levit, linear, norm, timm_blocks
from sparsetrain.structural.rules.base import (
    CHANNEL_ATTRS,
    FunctionalRule,
    LayerRule,
    TraceContext,
    export_context,
    functional_rule,
    is_rule_leaf,
    register_functional_rule,
    register_layer_rule,
    registered_functional_rules,
    registered_rules,
    rule_for,
)

__all__ = ["CHANNEL_ATTRS", "FunctionalRule", "LayerRule", "TraceContext", "export_context", "functional_rule",
           "is_rule_leaf", "register_functional_rule", "register_layer_rule", "registered_functional_rules",
           "registered_rules", "rule_for"]

_ = (attention, elementwise, levit, timm_blocks)  # imported for their registrations


def _arg(node: fx.Node, i: int, key: str, default: Any = None) -> Any:
    return node.args[i] if len(node.args) > i else node.kwargs.get(key, default)


def _f_conv(ctx: TraceContext, node: fx.Node, x: Any) -> Any:
    w, b = ctx.param_ref(_arg(node, 1, "weight")), ctx.param_ref(_arg(node, 2, "bias"))
    if w is None or w[1] != "weight" or (b is not None and b != (w[0], "bias")):
        return ctx.unsupported(node, "functional conv with a computed weight")
    weight = ctx.tensor(w[0], w[1])
    return conv.conv_coupling(ctx, node, x, w[0], weight, "bias" if b else None, _arg(node, 6, "groups", 1))


def _f_linear(ctx: TraceContext, node: fx.Node, x: Any) -> Any:
    w, b = ctx.param_ref(_arg(node, 1, "weight")), ctx.param_ref(_arg(node, 2, "bias"))
    if w is None or (b is not None and b[0] != w[0]):
        return ctx.unsupported(node, "linear with a computed weight")
    return linear.linear_coupling(ctx, node, x, w[0], w[1], b[1] if b else None)


def _f_batch_norm(ctx: TraceContext, node: fx.Node, x: Any) -> Any:
    refs = [ctx.param_ref(_arg(node, i, k)) for i, k in ((3, "weight"), (4, "bias"), (1, "running_mean"),
                                                          (2, "running_var"))]
    modules = {r[0] for r in refs if r is not None}
    if len(modules) != 1:
        return ctx.unsupported(node, "batch_norm with parameters of several modules")
    names = tuple(r[1] if r else None for r in refs)
    return norm.batch_norm_coupling(ctx, node, x, modules.pop(), names[:2], names[2:], None not in names[:2])


def _f_layer_norm(ctx: TraceContext, node: fx.Node, x: Any) -> Any:
    w, b = ctx.param_ref(_arg(node, 2, "weight")), ctx.param_ref(_arg(node, 3, "bias"))
    module = w[0] if w else b[0] if b else f"op:{node.name}"
    return norm.layer_norm_coupling(ctx, node, x, len(_arg(node, 1, "normalized_shape")), module,
                                    w[1] if w else None, b[1] if b else None)


def _f_group_norm(ctx: TraceContext, node: fx.Node, x: Any) -> Any:
    w, b = ctx.param_ref(_arg(node, 2, "weight")), ctx.param_ref(_arg(node, 3, "bias"))
    module = w[0] if w else b[0] if b else f"op:{node.name}"
    return norm.group_norm_coupling(ctx, node, x, _arg(node, 1, "num_groups"), module, w[1] if w else None,
                                    b[1] if b else None)


register_functional_rule(_f_conv, "conv1d", "conv2d", "conv3d")
register_functional_rule(_f_linear, "linear")
register_functional_rule(_f_batch_norm, "batch_norm")
register_functional_rule(_f_layer_norm, "layer_norm")
register_functional_rule(_f_group_norm, "group_norm")
