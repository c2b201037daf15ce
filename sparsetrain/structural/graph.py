"""Channel groups of a model: which parameter slices must shrink together when channels are removed.

The graph comes from `torch.fx` symbolic tracing of the plain model (`trace.py`: timm's registered no-trace
modules, torch.nn layers and layers with a registered rule stay opaque), shapes from one forward pass on
`example_input`; `_analysis.ChannelAnalyzer` applies the layer rules (`rules/`) and follows everything else.
Vocabulary: `types.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sparsetrain.structural._analysis import ChannelAnalyzer
from sparsetrain.structural.rules.conv import GROUPED_CONV
from sparsetrain.structural.trace import trace_model
from sparsetrain.structural.types import ChannelGroup, ChannelSlice, StructuralPruningError

__all__ = [
    "ChannelGroup",
    "ChannelSlice",
    "StructuralPruningError",
    "build_channel_groups",
    "groups_by_id",
    "producer_weights",
    "producer_weights_by_group",
    "trace_model",
]


def build_channel_groups(model: nn.Module, example_input: torch.Tensor, *,
                         grouped_conv: str = "within_groups") -> list[ChannelGroup]:
    """Find the coupled channel groups of `model`.

    Args:
        model: A timm model (or any model `torch.fx` can trace) built from layers with a registered rule,
            activations, pooling, adds, multiplies, concatenations, slicing, permutes, reshapes and flatten.
        example_input: One input batch with the shape the model will be used with; flatten→linear heads and
            input-size-dependent blocks depend on the spatial size.
        grouped_conv: "within_groups" (every group of a grouped conv loses the same channels; the group count
            stays) or "whole_groups" (whole groups are removed); see `rules/conv.py`.

    Returns:
        All groups, prunable or not, exact or not, in graph order of their first producer.

    Raises:
        StructuralPruningError: The model cannot be traced.
        ValueError: Unknown `grouped_conv`.
    """
    if grouped_conv not in GROUPED_CONV:
        raise ValueError(f"grouped_conv: expected one of {', '.join(GROUPED_CONV)} (got {grouped_conv!r})")
    return ChannelAnalyzer(trace_model(model, example_input), grouped_conv=grouped_conv).run()


def producer_weights(model: nn.Module, group: ChannelGroup, *, grad: bool = False) -> list[tuple[str, torch.Tensor]]:
    """The filter weights that produce a group's units (or their gradients), with the unit on dim 0.

    Used by channel scoring (norms, gradient counts, cosine similarity between filters). Depthwise and grouped
    conv filters of the group are included; norm parameters and biases are not.

    Args:
        model: The model the group was built from (or a copy with the same shapes).
        group: One group of `build_channel_groups(model, ...)`.
        grad: Return views of the parameters' `.grad` instead (filters without a gradient are skipped).

    Returns:
        (qualified parameter name, view) per filter producer: shape [units, ...] for single-channel units,
        [units, channels per unit, ...] for blocks, [units, groups, channels per unit, ...] for a grouped conv
        narrowed inside its groups; the views share storage with the parameters (or gradients).
    """
    out = []
    for s in group.producers:
        if s.kind != "filter":
            continue
        weight = model.get_submodule(s.module).get_parameter(s.param)
        tensor = weight.grad if grad else weight
        if tensor is None:
            continue
        out.append((s.qualname, _unit_view(tensor.movedim(s.dim, 0), s, group.num_channels)))
    return out


def _unit_view(tensor: torch.Tensor, s: ChannelSlice, units: int) -> torch.Tensor:
    """`tensor` (slice dim first) per unit: [units, ...], [units, expand, ...] or [units, repeat, expand, ...]."""
    if s.repeat == 1:
        view = tensor.narrow(0, s.offset, units * s.expand)
        return view if s.expand == 1 else view.unflatten(0, (units, s.expand))
    view = tensor.narrow(0, s.offset, s.repeat * s.stride).unflatten(0, (s.repeat, s.stride))
    return view.narrow(1, 0, units * s.expand).unflatten(1, (units, s.expand)).movedim(1, 0)


def producer_weights_by_group(model: nn.Module, groups: Sequence[ChannelGroup], *, prunable_only: bool = True,
                              grad: bool = False) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """`producer_weights` for every (prunable) group, keyed by group id."""
    return {g.id: producer_weights(model, g, grad=grad) for g in groups if g.prunable or not prunable_only}


def groups_by_id(groups: Sequence[ChannelGroup]) -> dict[str, ChannelGroup]:
    """Index groups by id."""
    return {g.id: g for g in groups}
