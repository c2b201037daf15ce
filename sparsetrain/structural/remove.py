"""Zero (mask) or physically remove the units of the groups found by `graph.build_channel_groups`.

`zero_channels` is the masking reference: it clears a dropped unit's producer slices so the unit's activation is
exactly zero (the analysis blocks groups where that would not make it zero at every consumer). `remove_channels`
deletes the same slices, producers and consumers, lets each touched layer's rule update its attributes, and
returns a smaller dense copy whose outputs equal the masked model's (for exact groups).
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn

from sparsetrain.structural.graph import build_channel_groups
from sparsetrain.structural.rules import rule_for
from sparsetrain.structural.types import ChannelGroup, ChannelSlice, StructuralPruningError

__all__ = ["check_drop", "kept_channels", "producer_slices", "remove_channels", "zero_channels"]

# (module, tensor attribute, dim) -> positions along dim to delete
_Deletions = dict[tuple[str, str, int], set[int]]


def _resolve_groups(model: nn.Module, groups: Sequence[ChannelGroup] | None,
                    example_input: torch.Tensor | None) -> dict[str, ChannelGroup]:
    if groups is None:
        if example_input is None:
            raise ValueError("pass `groups` (from build_channel_groups) or `example_input` to trace the model")
        groups = build_channel_groups(model, example_input)
    return {g.id: g for g in groups}


def check_drop(groups: Mapping[str, ChannelGroup], drop: Mapping[str, torch.Tensor],
               allow_inexact: bool = False) -> dict[str, torch.Tensor]:
    """Validate `drop` against the groups; return sorted unique int64 indices per group.

    Raises:
        StructuralPruningError: Unknown or unprunable group, an inexact group without `allow_inexact`,
            out-of-range indices, or every unit of a group dropped.
    """
    out = {}
    for gid, idx in drop.items():
        if gid not in groups:
            raise StructuralPruningError(f"unknown channel group '{gid}'")
        group = groups[gid]
        idx = torch.as_tensor(idx, dtype=torch.long).flatten().unique()
        if idx.numel() == 0:
            continue
        if not group.prunable:
            raise StructuralPruningError(f"channel group '{gid}' is not prunable: {group.reason}")
        if group.inexact and not allow_inexact:
            more = f" and {len(group.inexact) - 1} more" if len(group.inexact) > 1 else ""
            raise StructuralPruningError(f"channel group '{gid}': removal would not equal masking "
                                         f"({group.inexact[0]}{more}); pass allow_inexact=True to remove anyway")
        if idx.min() < 0 or idx.max() >= group.num_channels:
            raise StructuralPruningError(f"channel group '{gid}': indices must lie in [0, {group.num_channels})")
        if idx.numel() >= group.num_channels:
            raise StructuralPruningError(f"channel group '{gid}': cannot remove all {group.num_channels} channels")
        out[gid] = idx
    return out


def producer_slices(model: nn.Module, group: ChannelGroup) -> list[ChannelSlice]:
    """The group's producer slices, plus the bias of a filter producer that gained one after tracing (a fold)."""
    have = {(s.module, s.param) for s in group.producers}
    added = [replace(s, param="bias", dim=0, kind="bias") for s in group.producers
             if s.kind == "filter" and s.param == "weight" and (s.module, "bias") not in have
             and isinstance(getattr(model.get_submodule(s.module), "bias", None), torch.Tensor)]
    return group.producers + added


def _deletions(model: nn.Module, groups: Mapping[str, ChannelGroup], drop: Mapping[str, torch.Tensor]) -> _Deletions:
    """Positions to delete per (module, tensor, dim), producers and consumers of every group."""
    dels: _Deletions = defaultdict(set)
    for gid, idx in drop.items():
        for s in producer_slices(model, groups[gid]) + groups[gid].consumers:
            dels[(s.module, s.param, s.dim)].update(s.index(idx).tolist())
    return dels


def kept_channels(num_channels: int, drop: torch.Tensor) -> torch.Tensor:
    """Sorted indices in [0, num_channels) not in `drop`."""
    keep = torch.ones(num_channels, dtype=torch.bool)
    keep[torch.as_tensor(drop, dtype=torch.long)] = False
    return keep.nonzero().flatten()


@torch.no_grad()
def zero_channels(model: nn.Module, drop: Mapping[str, torch.Tensor], *, groups: Sequence[ChannelGroup] | None = None,
                  example_input: torch.Tensor | None = None, allow_inexact: bool = False) -> None:
    """Mask units in place: zero their producer weights, biases, norm scales and shifts.

    Running statistics are left alone (a norm with zero scale and shift outputs zero whatever they are), and so are
    consumer weights (they read an exactly-zero channel).

    Args:
        model: Model to modify in place.
        drop: Group id -> unit indices to zero.
        groups: Output of `build_channel_groups(model, ...)`; traced from `example_input` when omitted.
        example_input: Input batch used to trace the model when `groups` is omitted.
        allow_inexact: Accept inexact groups (see `ChannelGroup.inexact`).

    Raises:
        StructuralPruningError: As `check_drop`.
    """
    by_id = _resolve_groups(model, groups, example_input)
    for gid, idx in check_drop(by_id, drop, allow_inexact).items():
        for s in producer_slices(model, by_id[gid]):
            if s.kind == "stat":
                continue
            tensor = _get_tensor(model, s.module, s.param)
            tensor.index_fill_(s.dim, s.index(idx).to(tensor.device), 0)


def remove_channels(model: nn.Module, drop: Mapping[str, torch.Tensor], *,
                    groups: Sequence[ChannelGroup] | None = None, example_input: torch.Tensor | None = None,
                    allow_inexact: bool = False) -> nn.Module:
    """Return a copy of `model` with the dropped units physically removed.

    Every producer slice (conv/linear rows, biases, norm parameters and running stats, layer scales) and every
    consumer slice (input columns of the layers reading the group, at their concat offsets) of the dropped units is
    deleted; each touched layer's rule then updates its attributes (`in_channels`, `out_channels`, `groups`,
    `in_features`, `num_features`, `num_heads`, ...).

    Args:
        model: The model; left unchanged.
        drop: Group id -> unit indices to remove.
        groups: Output of `build_channel_groups(model, ...)`; traced from `example_input` when omitted.
        example_input: Input batch used to trace the model when `groups` is omitted.
        allow_inexact: Accept inexact groups (removal then differs from masking; fine-tuning recovers).

    Returns:
        The smaller model (same class and module names, same training flag).

    Raises:
        StructuralPruningError: As `check_drop` (the message names the blocking layer), or a layer whose
            attributes its rule cannot update.
    """
    by_id = _resolve_groups(model, groups, example_input)
    dels = _deletions(model, by_id, check_drop(by_id, drop, allow_inexact))
    pruned = copy.deepcopy(model)
    # Layers with a rule update their width attributes; modules that were traced into (their forward is part of
    # the graph, e.g. a model root holding a class token) only have tensors sliced.
    # A block rule (attention heads) describes its children's tensors: it updates its own attributes too.
    touched = {m for m, _, _ in dels}
    touched |= {parent for m in touched for parent in _ancestors(m)}
    rules = {name: rule for name in touched if (rule := rule_for(pruned.get_submodule(name)))}
    own: dict[str, dict[tuple[str, int], set[int]]] = defaultdict(dict)
    for (module, param, dim), positions in dels.items():
        own[module][(param, dim)] = positions
    old = {name: rule.before_removal(pruned.get_submodule(name), own[name]) for name, rule in rules.items()}
    for (module, param, dim), positions in sorted(dels.items()):
        _delete_positions(pruned, module, param, dim, positions)
    for name, rule in sorted(rules.items(), key=lambda kv: (-kv[0].count("."), kv[0])):  # children first
        rule.shrink(name, pruned.get_submodule(name), old[name])
    return pruned


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _get_tensor(model: nn.Module, module: str, param: str) -> torch.Tensor:
    tensor = getattr(model.get_submodule(module), param, None)
    if not isinstance(tensor, torch.Tensor):
        raise StructuralPruningError(f"'{module}' has no tensor '{param}'")
    return tensor


def _delete_positions(model: nn.Module, module: str, param: str, dim: int, positions: set[int]) -> None:
    """Replace `module.param` by a copy without `positions` along `dim` (a Parameter stays a Parameter)."""
    owner = model.get_submodule(module)
    old = _get_tensor(model, module, param)
    keep = kept_channels(old.shape[dim], torch.tensor(sorted(positions), dtype=torch.long)).to(old.device)
    new = old.detach().index_select(dim, keep).clone()
    if isinstance(old, nn.Parameter):
        setattr(owner, param, nn.Parameter(new, requires_grad=old.requires_grad))
    elif param in owner._buffers:
        owner._buffers[param] = new
    else:
        raise StructuralPruningError(f"'{module}.{param}' is neither a parameter nor a buffer")
