"""Remove the dead units of an unstructured-sparse (masked) model exactly: a physically smaller dense model.

After unstructured pruning many units of a prunable channel group are *dead*:
- *input-dead*: none of the group's producer filters (conv/linear rows, depthwise filters) has a non-zero weight
  for the unit, so its output is a constant (bias / BN shift through the activation); that constant is folded into
  the consumers' biases (`fold.fold_constant_channels`) and the unit removed, where the fold is exact;
- *unread*: every consumer input column of the unit is zero, so nothing uses its output; it is removed as is.

Removal equals the masked model up to float rounding. Input-dead units whose constant cannot be folded exactly (a
zero-padded conv consumer sees it through fewer taps at the borders; a consumer that sees a non-constant value, or
cannot take a bias) are kept. Non-prunable and inexact groups (`ChannelGroup.prunable`, `.inexact`) are left alone,
and a group keeps at least one unit. Removing units can kill units of the next group (a unit of fc2 whose only
non-zero inputs came from dead fc1 units), so the search is repeated on the smaller model until nothing changes.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import nn

from sparsetrain.structural.fold import channel_fold_status, fold_constant_channels, rest_values
from sparsetrain.structural.graph import build_channel_groups, groups_by_id, producer_weights
from sparsetrain.structural.remove import remove_channels
from sparsetrain.structural.types import ChannelGroup

__all__ = ["DeadUnits", "DeadUnitRemoval", "dead_units", "remove_dead_units"]

_MAX_ROUNDS = 20  # a chain of layers dies back one group per round; deeper chains than this are not expected


@dataclass
class DeadUnits:
    """Dead units of one channel group (int64 index tensors into the group's units).

    Attributes:
        no_input: Units with no non-zero producer filter weight (constant output).
        unread: Units whose consumer input columns are all zero.
    """

    no_input: torch.Tensor
    unread: torch.Tensor


@dataclass
class DeadUnitRemoval:
    """What `remove_dead_units` returns.

    Attributes:
        model: The smaller dense model (a copy; the input model is unchanged).
        removed: Group id (of the input model's groups) -> units removed, over all rounds.
        kept_unfoldable: Group id -> input-dead units of the returned model kept because their constant does not
            fold exactly.
        rounds: Search rounds run (the last one found nothing more to remove).
    """

    model: nn.Module
    removed: dict[str, int] = field(default_factory=dict)
    kept_unfoldable: dict[str, int] = field(default_factory=dict)
    rounds: int = 0


def _nonzero_units(tensors: list[torch.Tensor], units: int) -> torch.Tensor:
    """[units] bool: whether any tensor (unit on dim 0) holds a non-zero for the unit."""
    alive = torch.zeros(units, dtype=torch.bool)
    for t in tensors:
        alive |= (t.detach().reshape(units, -1) != 0).any(1).cpu()
    return alive


def _consumer_columns(model: nn.Module, group: ChannelGroup) -> list[torch.Tensor]:
    """Each consumer's input columns of the group, as [units, ...] (unit-major, `ChannelSlice.index` order)."""
    units, out = torch.arange(group.num_channels), []
    for s in group.consumers:
        weight = model.get_submodule(s.module).get_parameter(s.param).detach()
        cols = weight.index_select(s.dim, s.index(units).to(weight.device)).movedim(s.dim, 0)
        out.append(cols.reshape(group.num_channels, -1))
    return out


def dead_units(model: nn.Module, group: ChannelGroup) -> DeadUnits:
    """The input-dead and unread units of one group of `model` (see the module docstring).

    Args:
        model: The model the group was built from.
        group: One group of `build_channel_groups(model, ...)`.

    Returns:
        `DeadUnits`; `unread` is empty for a group without consumers (its units are the model's outputs).
    """
    has_input = _nonzero_units([w for _, w in producer_weights(model, group)], group.num_channels)
    cols = _consumer_columns(model, group)
    read = _nonzero_units(cols, group.num_channels) if cols else torch.ones(group.num_channels, dtype=torch.bool)
    return DeadUnits(no_input=(~has_input).nonzero().flatten(), unread=(~read).nonzero().flatten())


def _removable(model: nn.Module, groups: list[ChannelGroup], example_input: torch.Tensor
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, int]]:
    """(units to fold, units to remove, input-dead units kept as unfoldable) per group of one round."""
    dead = {g.id: dead_units(model, g) for g in groups if g.prunable and not g.inexact}
    constant = {gid: d.no_input[~torch.isin(d.no_input, d.unread)] for gid, d in dead.items()}
    rest = rest_values(model, groups, constant, example_input)
    fold, drop, kept, by_id = {}, {}, {}, groups_by_id(groups)
    for gid, d in dead.items():
        exact = constant[gid][channel_fold_status(rest[gid], model) <= 1] if gid in rest else constant[gid]
        units = torch.cat([exact, d.unread]).unique()
        if len(units) >= by_id[gid].num_channels:  # a group keeps one unit; keep a folded one, so the rest stays exact
            exact, units = exact[exact != units[0]], units[1:]
        if len(constant[gid]) > len(exact):
            kept[gid] = len(constant[gid]) - len(exact)
        if len(units):
            fold[gid], drop[gid] = exact, units
    return fold, drop, kept


def _one_round(model: nn.Module, example_input: torch.Tensor) -> tuple[nn.Module, dict[str, int], dict[str, int]]:
    """Fold and remove the dead units found in `model` once: (smaller model, removed, kept unfoldable)."""
    groups = build_channel_groups(model, example_input)
    fold, drop, kept = _removable(model, groups, example_input)
    if not drop:
        return model, {}, kept
    folded = copy.deepcopy(model)
    fold_constant_channels(folded, groups, {gid: idx for gid, idx in fold.items() if len(idx)}, example_input)
    smaller = remove_channels(folded, drop, groups=groups)
    return smaller, {gid: len(idx) for gid, idx in drop.items()}, kept


@torch.no_grad()
def remove_dead_units(model: nn.Module, example_input: torch.Tensor) -> DeadUnitRemoval:
    """Return a physically smaller copy of an unstructured-sparse `model` without its dead units, exactly.

    Dead units (no non-zero producer filter weight, or no non-zero consumer weight reading them; see the module
    docstring) of every prunable, exact channel group are removed; constants of input-dead units are folded into
    the consumers' biases where exact, else the units are kept. Repeated until a round removes nothing.

    Args:
        model: A timm model (or any model `build_channel_groups` traces) with exact zeros, e.g. Method 1's
            pruned and fine-tuned weights. Not modified.
        example_input: An input batch [N, ...] of the data's shape (N >= 2, random content is fine), used to
            trace the channel groups and to measure the constants.

    Returns:
        `DeadUnitRemoval`: the smaller model in eval mode (an unchanged copy when nothing is dead) and the units
        removed per group id; its outputs equal `model`'s up to float rounding.

    Raises:
        StructuralPruningError: The model cannot be traced.
    """
    current = copy.deepcopy(model).eval()
    removed: Counter[str] = Counter()
    rounds, dropped = 0, {"": 1}
    while dropped and rounds < _MAX_ROUNDS:
        current, dropped, kept = _one_round(current, example_input)
        removed.update(dropped)
        rounds += 1
    return DeadUnitRemoval(model=current, removed=dict(removed), kept_unfoldable=kept, rounds=rounds)
