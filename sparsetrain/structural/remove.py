"""Zero (mask) or physically remove channels of the groups found by `graph.build_channel_groups`.

`zero_channels` is the masking reference: it clears a dropped channel's producer slices so the channel's
activation is exactly zero (the analysis blocks groups where that would not make it zero at every consumer).
`remove_channels` deletes the same slices, producers and consumers, and returns a smaller dense copy whose
outputs equal the masked model's.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn

from sparsetrain.structural.graph import ChannelGroup, ChannelSlice, StructuralPruningError, build_channel_groups

__all__ = ["kept_channels", "remove_channels", "zero_channels"]

# (module, tensor attribute, dim) -> positions along dim to delete
_Deletions = dict[tuple[str, str, int], set[int]]


def _resolve_groups(model: nn.Module, groups: Sequence[ChannelGroup] | None,
                    example_input: torch.Tensor | None) -> dict[str, ChannelGroup]:
    if groups is None:
        if example_input is None:
            raise ValueError("pass `groups` (from build_channel_groups) or `example_input` to trace the model")
        groups = build_channel_groups(model, example_input)
    return {g.id: g for g in groups}


def check_drop(groups: Mapping[str, ChannelGroup], drop: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Validate `drop` against the groups; return sorted unique int64 indices per group."""
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


def _deletions(model: nn.Module, groups: Mapping[str, ChannelGroup], drop: Mapping[str, torch.Tensor],
               consumers: bool) -> _Deletions:
    """Positions to delete per (module, tensor, dim), producers and (optionally) consumers of every group."""
    dels: _Deletions = defaultdict(set)
    for gid, idx in drop.items():
        group = groups[gid]
        slices = producer_slices(model, group) + (group.consumers if consumers else [])
        for s in slices:
            positions = (s.offset + idx.unsqueeze(1) * s.expand + torch.arange(s.expand)).flatten()
            dels[(s.module, s.param, s.dim)].update(positions.tolist())
    return dels


def kept_channels(num_channels: int, drop: torch.Tensor) -> torch.Tensor:
    """Sorted indices in [0, num_channels) not in `drop`."""
    keep = torch.ones(num_channels, dtype=torch.bool)
    keep[torch.as_tensor(drop, dtype=torch.long)] = False
    return keep.nonzero().flatten()


@torch.no_grad()
def zero_channels(model: nn.Module, drop: Mapping[str, torch.Tensor], *, groups: Sequence[ChannelGroup] | None = None,
                  example_input: torch.Tensor | None = None) -> None:
    """Mask channels in place: zero their producer weights, biases, norm scales and shifts.

    Running statistics are left alone (BN with zero scale and shift outputs zero whatever they are), and so are
    consumer weights (they read an exactly-zero channel).

    Args:
        model: Model to modify in place.
        drop: Group id -> channel indices to zero.
        groups: Output of `build_channel_groups(model, ...)`; traced from `example_input` when omitted.
        example_input: Input batch used to trace the model when `groups` is omitted.

    Raises:
        StructuralPruningError: Unknown or unprunable group, out-of-range indices, or all channels dropped.
    """
    by_id = _resolve_groups(model, groups, example_input)
    checked = check_drop(by_id, drop)
    for gid, idx in checked.items():
        for s in producer_slices(model, by_id[gid]):
            if s.kind == "stat":
                continue
            tensor = _get_tensor(model, s.module, s.param)
            positions = (s.offset + idx.unsqueeze(1) * s.expand + torch.arange(s.expand)).flatten()
            tensor.index_fill_(s.dim, positions.to(tensor.device), 0)


def remove_channels(model: nn.Module, drop: Mapping[str, torch.Tensor], *,
                    groups: Sequence[ChannelGroup] | None = None,
                    example_input: torch.Tensor | None = None) -> nn.Module:
    """Return a copy of `model` with the dropped channels physically removed.

    Every producer slice (conv/linear rows, biases, BN parameters and running stats, layer scales) and every
    consumer slice (input columns of the convs/linears reading the group, at their concat offsets) of the
    dropped channels is deleted; conv/linear/norm attributes (`in_channels`, `out_channels`, `groups` of
    depthwise convs, `in_features`, `num_features`, ...) are updated to the new shapes.

    Args:
        model: The model; left unchanged.
        drop: Group id -> channel indices to remove.
        groups: Output of `build_channel_groups(model, ...)`; traced from `example_input` when omitted.
        example_input: Input batch used to trace the model when `groups` is omitted.

    Returns:
        The smaller model (same class and module names, same training flag).

    Raises:
        StructuralPruningError: Unknown or unprunable group (the message names the blocking layer),
            out-of-range indices, all channels of a group dropped, or a layer whose attributes cannot be updated.
    """
    by_id = _resolve_groups(model, groups, example_input)
    checked = check_drop(by_id, drop)
    dels = _deletions(model, by_id, checked, consumers=True)
    pruned = copy.deepcopy(model)
    old_shapes = {name: _channel_attrs(m) for name, m in pruned.named_modules()}
    touched = set()
    for (module, param, dim), positions in sorted(dels.items()):
        _delete_positions(pruned, module, param, dim, positions)
        touched.add(module)
    for module in sorted(touched):
        _sync_attributes(module, pruned.get_submodule(module), old_shapes[module])
    return pruned


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


def _channel_attrs(m: nn.Module) -> dict[str, int]:
    names = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features")
    return {n: getattr(m, n) for n in names if isinstance(getattr(m, n, None), int)}


def _sync_attributes(name: str, m: nn.Module, old: dict[str, int]) -> None:
    """Update a module's channel-count attributes to its new tensor shapes."""
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
    elif isinstance(m, nn.modules.conv._ConvNd):
        m.out_channels = m.weight.shape[0]
        if old["groups"] > 1:  # only depthwise convs reach here: groups == in == out
            m.groups = m.in_channels = m.out_channels
        else:
            m.in_channels = m.weight.shape[1]
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        ref = m.weight if m.weight is not None else m.running_mean
        m.num_features = ref.shape[0]
    elif old:
        raise StructuralPruningError(f"cannot update channel attributes of '{name}' ({type(m).__name__})")
