"""The layer-rule interface and its registry: what structural pruning knows about one layer type.

A rule answers, for the modules of its types, the three questions removal asks of a layer (the split of
Torch-Pruning's `BasePruningFunc`, in our own terms):

- **couple** (`trace`): given the channel layout of the layer's input, which parameter slices produce and consume
  which channels, and which channels of the input and output are the same (depthwise conv) or blocks of the
  same units (grouped conv, attention heads); what the layer does to a zeroed channel.
- **shrink** (`shrink`): after removal sliced its tensors, update the attributes that describe its width
  (`out_channels`, `groups`, `num_heads`, ...).
- **rebuild** (`attributes` / `rebuild`): the attributes recorded in the export, and how a freshly created layer
  takes them on load before its tensors are resized.

Plus, for consumers, how a constant input channel folds into the bias (`input_axis`, `fold_exactness`,
`fold_constant`).

Rules are looked up by the module's exact type, then by its base classes for rules with `subclasses = True`.
A module whose exact type has a rule is a leaf of the traced graph (its `forward` is not traced), so a rule can
also describe a block that `torch.fx` cannot trace. `register_layer_rule` adds or replaces rules; a user rule for
a custom layer is one class (see docs/structural.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, ClassVar, Protocol

import torch
from torch import fx, nn

from sparsetrain.structural.types import ChannelSlice, StructuralPruningError

__all__ = ["CHANNEL_ATTRS", "FunctionalRule", "LayerRule", "TraceContext", "export_context", "functional_rule",
           "register_functional_rule", "register_layer_rule", "registered_functional_rules", "registered_rules",
           "rule_for"]

# Integer attributes that describe a layer's width; recorded in the export and checked on removal.
CHANNEL_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
                 "num_channels", "num_groups")


class TraceContext(Protocol):
    """What a rule may ask of the channel analysis (implemented by `_analysis.ChannelAnalyzer`).

    A *layout* (`_spaces.Layout`) describes an activation: the channel spaces concatenated along its channel axis
    `cdim`, and per space whether a zeroed channel is still exactly zero there.
    """

    gm: fx.GraphModule
    grouped_conv: str  # "within_groups" | "whole_groups": how grouped convs are pruned (see rules/conv.py)

    def module_name(self, target: str) -> str:
        """Qualified name in the whole model of a module target of the graph being analyzed."""

    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        """Output shape of a node (None if it is not a tensor)."""

    def param_ref(self, arg: Any) -> tuple[str, str] | None:
        """(qualified module, tensor name) when a graph value is a parameter/buffer of the model, else None."""

    def tensor(self, module: str, param: str) -> torch.Tensor:
        """A parameter/buffer of the model by qualified module name."""

    def apply_op(self, node: fx.Node, x: Any, op: str) -> Any:
        """The analysis of the functional op `op` (e.g. "flatten", "avg_pool2d") applied to layout `x` at `node`."""

    def fresh(self, node: fx.Node, name: str, reason: str | None = None, cdim: int = 1) -> Any:
        """A layout for the node's output holding one new channel space along `cdim`."""

    def new_space(self, size: int, name: str) -> int:
        """A new channel space of `size` channels that flows in no activation (e.g. attention heads)."""

    def add_slice(self, space: int, role: str, s: ChannelSlice) -> None:
        """Register a producer ("p") or consumer ("c") slice of one space."""

    def produce(self, x: Any, module: str, param: str | None, dim: int, kind: str) -> None:
        """`module.param` slices along `dim` produce the channels of layout `x` (in its order)."""

    def consume(self, x: Any, module: str, param: str, dim: int, cdim: int | None, where: str) -> None:
        """`module.param` columns along `dim` read the channels of layout `x`, whose channel axis must be `cdim`."""

    def passthrough(self, x: Any, node: fx.Node | None = None, zero: bool | None = None,
                    cdim: int | None = None) -> Any:
        """`x` through a per-channel op: same spaces; new zero flags (False: f(0) != 0), channel axis or rank."""

    def link_blocks(self, x: Any, node: fx.Node, in_block: int, out_block: int, name: str, where: str) -> Any:
        """Output layout of a layer whose output block k (`out_block` channels) reads only input block k."""

    def interleave(self, x: Any, parts: int) -> Any:
        """Make a unit of layout `x` (one channel space) the same channel(s) of each of `parts` equal consecutive
        parts of it (a grouped conv narrowed inside every group). Returns a layout one part wide whose channel k
        is channel k of every part (for the conv's in-group weight columns), or None (nothing changed) when `x`
        is concatenated, flattened or already split into other parts."""

    def require_blocks(self, x: Any, block: int, where: str) -> bool:
        """Make the units of `x`'s spaces whole multiples of `block` channels, aligned; False (and block) if not."""

    def block(self, x: Any, reason: str) -> None:
        """Mark the groups of layout `x` unprunable."""

    def inexact(self, x: Any, reason: str) -> None:
        """Mark the groups of layout `x` inexact: removal would not equal zeroing."""

    def unsupported(self, node: fx.Node, what: str) -> Any:
        """Block what the node reads and return new blocked spaces for its outputs."""

    def trace_inline(self, node: fx.Node, name: str, module: nn.Module, forward: Callable[..., Any]) -> Any:
        """Analyze `forward(module, *inputs)` (a traceable stand-in for the module's forward) in place of the node."""


class LayerRule:
    """How one layer type takes part in structural pruning (see the module docstring).

    Subclasses set `types` and override what differs from the defaults: no coupling knowledge (the analysis
    treats the layer as unsupported), attributes = the integer `CHANNEL_ATTRS` the module has, nothing to shrink.
    """

    types: ClassVar[tuple[type[nn.Module], ...]] = ()
    subclasses: ClassVar[bool] = True  # also used for subclasses of `types` (when their semantics are the same)

    def trace(self, ctx: TraceContext, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        """Couple the layer's channels; return the layout of its output (None if not a tensor)."""
        return ctx.unsupported(node, f"module '{name}' ({type(module).__name__})")

    def attributes(self, module: nn.Module) -> dict[str, Any]:
        """Width attributes recorded in the export (JSON-serializable) and compared before/after removal."""
        return {k: getattr(module, k) for k in CHANNEL_ATTRS if isinstance(getattr(module, k, None), int)}

    def before_removal(self, module: nn.Module, deleted: Mapping[tuple[str, int], Collection[int]]) -> dict[str, Any]:
        """What `shrink` is told about the module before removal: by default its `attributes`.

        Args:
            module: The module, before its tensors are sliced.
            deleted: (tensor name, dim) -> positions that removal deletes along that dim.
        """
        return self.attributes(module)

    def shrink(self, name: str, module: nn.Module, old: Mapping[str, Any]) -> None:
        """Update width attributes from the module's new tensor shapes (`old`: `before_removal`'s answer)."""
        if old:
            raise StructuralPruningError(f"cannot update channel attributes of '{name}' ({type(module).__name__}): "
                                         "register a layer rule for it")

    def rebuild(self, name: str, module: nn.Module, attributes: Mapping[str, Any]) -> None:
        """Give a freshly created module the recorded attributes (its tensors are resized afterwards); recorded
        keys the rule does not describe are ignored."""
        own = self.attributes(module)
        for key, value in attributes.items():
            if key in own:
                setattr(module, key, tuple(value) if isinstance(value, list) else value)

    def input_axis(self, module: nn.Module) -> int | None:
        """Axis of the module's input that its consumer columns read (None: constants cannot be folded)."""
        return None

    def fold_exactness(self, module: nn.Module) -> str | None:
        """Whether a constant input channel folds into the bias "exact"ly, "approximate"ly, or not at all (None)."""
        return None

    def fold_constant(self, module: nn.Module, columns: torch.Tensor, values: torch.Tensor, dim: int) -> None:
        """Add `W[:, columns] · values` (the effect of constant input columns along weight `dim`) to the bias."""
        raise StructuralPruningError(f"{type(module).__name__}: constants cannot be folded into this layer")

    def for_export(self, module: nn.Module) -> contextlib.AbstractContextManager[None]:
        """What the module needs while `torch.export` traces it (`export_context`): by default nothing."""
        return contextlib.nullcontext()


_RULES: dict[type, LayerRule] = {}


def register_layer_rule(rule: LayerRule | type[LayerRule], *types: type[nn.Module]) -> LayerRule | type[LayerRule]:
    """Register a rule (instance or class; a class is instantiated) for `types` (default: its `types`).

    Usable as a class decorator. A later registration for the same type replaces the earlier one.

    Raises:
        TypeError: The rule names no module types.
    """
    instance = rule() if isinstance(rule, type) else rule
    for t in types or instance.types:
        _RULES[t] = instance
    if not (types or instance.types):
        raise TypeError(f"{type(instance).__name__}: no module types to register for")
    return rule


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule for `module`'s exact type, else for its nearest base class whose rule allows subclasses."""
    rule = _RULES.get(type(module))
    if rule is not None:
        return rule
    return next((_RULES[c] for c in type(module).__mro__[1:] if c in _RULES and _RULES[c].subclasses), None)


@contextlib.contextmanager
def export_context(model: nn.Module) -> Iterator[None]:
    """Every module's `LayerRule.for_export` entered while `torch.export` traces `model` (pruned or not)."""
    with contextlib.ExitStack() as stack:
        for module in model.modules():
            rule = rule_for(module)
            if rule is not None:
                stack.enter_context(rule.for_export(module))
        yield


def is_rule_leaf(module: nn.Module) -> bool:
    """Whether the tracer keeps `module` opaque because a rule is registered for its exact type."""
    return type(module) in _RULES


def registered_rules() -> dict[type, LayerRule]:
    """A copy of the registry: module type -> rule."""
    return dict(_RULES)


# ----- functional ops ------------------------------------------------------------------------------------------

FunctionalRule = Callable[[TraceContext, fx.Node, Any], Any]
"""Couples the channels of one call of a functional op: (ctx, node, layout of its first argument) -> the layout
of its output (see `LayerRule.trace`; parameters reach it as `ctx.param_ref(node.args[i])`)."""

_FUNCTIONAL: dict[str, FunctionalRule] = {}


def register_functional_rule(rule: FunctionalRule, *ops: str) -> FunctionalRule:
    """Register `rule` for the functional ops / tensor methods named `ops` (the graph's target `__name__`, e.g.
    "conv2d" for `F.conv2d`, "linear"; a later registration replaces an earlier one). A function of your own
    stays one call in the traced graph when wrapped with `torch.fx.wrap`.

    Raises:
        TypeError: No op names given.
    """
    if not ops:
        raise TypeError(f"{getattr(rule, '__name__', rule)}: no op names to register for")
    for op in ops:
        _FUNCTIONAL[op] = rule
    return rule


def functional_rule(op: str) -> FunctionalRule | None:
    """The rule registered for the functional op `op`, if any."""
    return _FUNCTIONAL.get(op)


def registered_functional_rules() -> dict[str, FunctionalRule]:
    """A copy of the functional registry: op name -> rule."""
    return dict(_FUNCTIONAL)
