"""Structural pruning (Method 2): choose filters to remove per channel group, from norms and redundancy marks.

A channel of a prunable group is removed when the joint norm of its producer filters, relative to the
strongest channel of the group, falls below `prune.filter_norm_threshold`, or when the gradient-counting
strategy marked one of its producer filters redundant; then the weakest channels are added until
`prune.filter_fraction` of the group is chosen (a size target). At most `prune.max_filter_fraction` of a group's
channels are removed (weakest first) and at least one channel always stays.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparsetrain.config.schema import PruneConfig
from sparsetrain.structural import ChannelGroup, build_channel_groups, producer_weights


def channel_groups(model: nn.Module, input_shape: tuple[int, ...]) -> list[ChannelGroup]:
    """Coupled channel groups of `model` for one input of `input_shape` (no batch dim)."""
    device = next(model.parameters()).device
    return build_channel_groups(model, torch.zeros(1, *input_shape, device=device))


def filter_layouts(model: nn.Module, groups: list[ChannelGroup]) -> dict[str, tuple[int, int]]:
    """Weights whose output rows are the channels of a prunable group: name → (filters, elements per filter)."""
    layouts = {}
    for group in groups:
        if not group.prunable:
            continue
        for name, view in producer_weights(model, group):
            weight = model.get_parameter(name)
            if view.shape[0] == weight.shape[0] == group.num_channels and weight.ndim > 1:
                layouts[name] = (weight.shape[0], weight[0].numel())
    return layouts


def _channel_norms(model: nn.Module, group: ChannelGroup) -> torch.Tensor | None:
    views = producer_weights(model, group)
    if not views:
        return None
    return torch.stack([v.detach().float().flatten(1).square().sum(1) for _, v in views]).sum(0).sqrt().cpu()


def choose_filters(model: nn.Module, groups: list[ChannelGroup], cfg: PruneConfig,
                   redundant: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Group id → indices of channels to remove."""
    drop = {}
    for group in groups:
        norms = _channel_norms(model, group) if group.prunable else None
        if norms is None or group.num_channels < 2:
            continue
        weak = norms / norms.max().clamp_min(1e-30) < cfg.filter_norm_threshold
        for name, _ in producer_weights(model, group):
            if redundant and name in redundant and redundant[name].numel() == group.num_channels:
                weak |= redundant[name].bool()
        limit = min(math.floor(cfg.max_filter_fraction * group.num_channels), group.num_channels - 1)
        target = min(math.floor(cfg.filter_fraction * group.num_channels), limit)
        if int(weak.sum()) < target:
            order = torch.argsort(norms.masked_fill(weak, -1.0), stable=True)  # already-weak ones sort first
            weak[order[:target]] = True
        chosen = weak.nonzero().flatten()
        if len(chosen) > limit:
            chosen = chosen[torch.argsort(norms[chosen], stable=True)[:limit]]
        if len(chosen):
            drop[group.id] = torch.sort(chosen).values
    return drop


def kept_per_group(groups: list[ChannelGroup], drop: dict[str, torch.Tensor]) -> list[dict]:
    """[{group, total, kept}] for every prunable group (what the report and plot show)."""
    return [{"group": g.id, "total": g.num_channels, "kept": g.num_channels - len(drop.get(g.id, []))}
            for g in groups if g.prunable]
