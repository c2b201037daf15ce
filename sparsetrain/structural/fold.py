"""Fold the constant output of removed channels into their consumers' biases, so removal keeps the function.

A channel whose filters (conv/linear rows of its group) are zero still outputs a constant: the bias and the
BatchNorm shift, through the activation (`relu(beta - gamma * mean / sqrt(var + eps))` for conv → BN → ReLU).
Zeroing or removing it drops that constant. Its *rest value* (what it carries, with its filters zeroed, at
each consumer) is moved into the consumers' biases instead, then the channel is zeroed; removing it afterwards
equals masking it, and the model computes what it computed before wherever the fold is exact:

- linear consumers: always (every token sees the constant);
- conv consumers with no zero padding (padding 0, or a replicate/reflect/circular padding mode);
- convs with zero padding see the constant at every tap only away from the borders: the fold is exact in the
  interior and approximate at the borders (reported as approximate);
- consumers that see a non-constant value (a spatial gate, a padded depthwise filter with non-zero weights, an
  average pool with zero padding) or that are not conv/linear layers (transposed convs) are not folded.

Rest values are measured with a forward pass of a copy of the model (filters of the listed channels zeroed) on an
example input, recording each consumer's input; a value counts as constant when it is the same over the batch and
all positions (to float rounding). A fold adds a bias to a consumer created without one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sparsetrain.structural.remove import check_drop, zero_channels
from sparsetrain.structural.rules import rule_for
from sparsetrain.structural.types import ChannelGroup, ChannelSlice

__all__ = ["FoldReport", "fold_constant_channels", "rest_values"]

_REL_TOL = 1e-5  # a value counts as constant when max - min <= tol * (1 + |mean|)


@dataclass
class RestValue:
    """The value a group's channels carry at one consumer when their filters are zero.

    Attributes:
        consumer: The consumer's input slice.
        values: [units, consumer.width] constant per unit and position (NaN where not constant).
    """

    consumer: ChannelSlice
    values: torch.Tensor


@dataclass
class FoldReport:
    """What `fold_constant_channels` did, per group id: channel counts folded exactly / approximately / not at all.

    A channel counts as `exact` when every consumer's fold is exact (or its rest value is zero there),
    `approximate` when some fold is exact only away from the borders of a zero-padded conv, `unfolded` when some
    consumer sees a non-constant value or cannot take a bias.
    """

    exact: dict[str, int] = field(default_factory=dict)
    approximate: dict[str, int] = field(default_factory=dict)
    unfolded: dict[str, int] = field(default_factory=dict)


def _input_axis(module: nn.Module) -> int | None:
    rule = rule_for(module)
    return rule.input_axis(module) if rule is not None else None


def _fold_exactness(module: nn.Module) -> str | None:
    rule = rule_for(module)
    return rule.fold_exactness(module) if rule is not None else None


def _zero_filters(model: nn.Module, groups: Mapping[str, ChannelGroup], channels: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for gid, idx in channels.items():
            for s in groups[gid].producers:
                if s.kind == "filter":
                    tensor = getattr(model.get_submodule(s.module), s.param)
                    tensor.index_fill_(s.dim, s.index(idx).to(tensor.device), 0)


def _capture_inputs(model: nn.Module, modules: set[str], example_input: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    handles = [model.get_submodule(name).register_forward_pre_hook(
        lambda _m, args, name=name: seen[name].append(args[0].detach())) for name in modules]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def _constant_values(inputs: list[torch.Tensor], axis: int, positions: torch.Tensor) -> torch.Tensor:
    """[positions] constant value per channel position over all calls, batch and other axes; NaN if not constant."""
    if not inputs:
        return torch.full((len(positions),), float("nan"))
    rows = torch.cat([x.index_select(axis, positions.to(x.device)).movedim(axis, 0).flatten(1).float().cpu()
                      for x in inputs], dim=1)
    mean = rows.mean(1)
    constant = (rows.amax(1) - rows.amin(1)) <= _REL_TOL * (1 + mean.abs())
    return torch.where(constant, mean, torch.full_like(mean, float("nan")))


def rest_values(model: nn.Module, groups: Sequence[ChannelGroup], channels: Mapping[str, torch.Tensor],
                example_input: torch.Tensor) -> dict[str, list[RestValue]]:
    """The constant each listed channel carries at each of its consumers once its filters are zeroed.

    Args:
        model: The model (not modified; a copy is run).
        groups: Output of `build_channel_groups(model, ...)`.
        channels: Group id -> channel indices.
        example_input: An input batch (random content; two or more images make batch-dependence visible).

    Returns:
        Group id -> one `RestValue` per consumer slice (values NaN where the channel is not constant there).
    """
    by_id = {g.id: g for g in groups}
    channels = {gid: torch.as_tensor(idx, dtype=torch.long) for gid, idx in channels.items() if len(idx)}
    rest = copy.deepcopy(model)
    _zero_filters(rest, by_id, channels)
    modules = {s.module for gid in channels for s in by_id[gid].consumers
               if _input_axis(rest.get_submodule(s.module)) is not None}
    seen = _capture_inputs(rest, modules, example_input)
    out: dict[str, list[RestValue]] = {}
    for gid, idx in channels.items():
        out[gid] = []
        for s in by_id[gid].consumers:
            axis = _input_axis(rest.get_submodule(s.module))
            values = (_constant_values(seen[s.module], axis, s.index(idx)) if axis is not None
                      else torch.full((len(idx) * s.width,), float("nan")))
            out[gid].append(RestValue(s, values.view(len(idx), s.width)))
    return out


def channel_fold_status(rest: list[RestValue], model: nn.Module) -> torch.Tensor:
    """Per channel: 0 = zero at every consumer, 1 = exactly foldable, 2 = approximately, 3 = not foldable."""
    status = torch.zeros(rest[0].values.shape[0] if rest else 0, dtype=torch.long)
    for r in rest:
        nonzero = (r.values != 0).any(1)  # NaN counts as non-zero
        kind = _fold_exactness(model.get_submodule(r.consumer.module))
        level = 3 if kind is None else 1 if kind == "exact" else 2
        level = torch.where(r.values.isnan().any(1), torch.full_like(status, 3), torch.full_like(status, level))
        status = torch.maximum(status, torch.where(nonzero, level, torch.zeros_like(level)))
    return status


def fold_constant_channels(model: nn.Module, groups: Sequence[ChannelGroup], channels: Mapping[str, torch.Tensor],
                           example_input: torch.Tensor, *, allow_inexact: bool = False) -> FoldReport:
    """Move the rest value of each listed channel into its consumers' biases, then zero the channel (in place).

    Removing the channels afterwards (`remove_channels`) equals zeroing them, and, where every fold is exact and
    the channels' filters were zero, the model computes what it computed before (see the module docstring). For
    channels with non-zero filters the fold replaces them by their rest value, a first-order approximation.

    Args:
        model: Model to modify in place.
        groups: Output of `build_channel_groups(model, ...)`.
        channels: Group id -> channel indices (the channels about to be removed).
        example_input: Input batch for measuring rest values.
        allow_inexact: Accept inexact groups (as `remove_channels`).

    Returns:
        Counts per group of exactly / approximately folded and unfolded channels.

    Raises:
        StructuralPruningError: Unknown or unprunable group, out-of-range indices (as `zero_channels`).
    """
    checked = check_drop({g.id: g for g in groups}, channels, allow_inexact)
    rest = rest_values(model, groups, checked, example_input)
    report = FoldReport()
    for gid, per_consumer in rest.items():
        status = channel_fold_status(per_consumer, model)
        for r in per_consumer:
            _fold_consumer(model, r, checked[gid])
        for name, level in (("exact", (0, 1)), ("approximate", (2,)), ("unfolded", (3,))):
            count = int(sum((status == v).sum() for v in level))
            if count:
                getattr(report, name)[gid] = count
    zero_channels(model, checked, groups=groups, allow_inexact=allow_inexact)
    return report


def _fold_consumer(model: nn.Module, r: RestValue, idx: torch.Tensor) -> None:
    """Fold into one consumer the channels whose rest value is a non-zero constant there."""
    module = model.get_submodule(r.consumer.module)
    if _fold_exactness(module) is None:
        return
    ok = ~r.values.isnan().any(1) & (r.values != 0).any(1)
    if not ok.any():
        return
    columns = r.consumer.index(idx[ok])
    rule_for(module).fold_constant(module, columns, r.values[ok].flatten(), r.consumer.dim)
