"""Structural pruning (Method 2): choose filters to remove per channel group, from norms and redundancy marks.

A channel of a prunable group is removed when the joint norm of its producer filters, relative to the
strongest channel of the group, falls below `prune.filter_norm_threshold`, or when the gradient-counting
strategy marked one of its producer filters redundant; then the weakest channels are added until
`prune.filter_fraction` of the group is chosen (a size target). At most `prune.max_filter_fraction` of a group's
channels are removed (weakest first) and at least one channel always stays.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from sparsetrain.config.schema import PruneConfig
from sparsetrain.structural import ChannelGroup, build_channel_groups, producer_weights, remove_channels
from sparsetrain.structural.fold import channel_fold_status, fold_constant_channels, rest_values


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


def _not_dead(model: nn.Module, groups: list[ChannelGroup], weak: dict[str, torch.Tensor],
              example_input: torch.Tensor) -> dict[str, torch.Tensor]:
    """Of the weak channels, those whose removal would change the model even with their filters zeroed: they
    carry a constant (BN shift through the activation) that cannot be folded exactly into their consumers."""
    channels = {gid: mask.nonzero().flatten() for gid, mask in weak.items() if mask.any()}
    rest = rest_values(model, groups, channels, example_input)
    alive = {}
    for gid, idx in channels.items():
        mask = torch.zeros_like(weak[gid])
        mask[idx] = channel_fold_status(rest[gid], model) > 1
        alive[gid] = mask
    return alive


def choose_filters(model: nn.Module, groups: list[ChannelGroup], cfg: PruneConfig,
                   redundant: dict[str, torch.Tensor] | None = None,
                   example_input: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Group id → indices of channels to remove.

    With `example_input`, a weak channel (low norm or redundant) whose constant output (its BN shift through the
    activation) cannot be folded exactly into its consumers is not weak: it is ranked as the strongest channel,
    so it goes only when the size target needs every channel.
    """
    norms, weak = {}, {}
    for group in groups:
        norm = _channel_norms(model, group) if group.prunable else None
        if norm is None or group.num_channels < 2:
            continue
        norms[group.id] = norm
        weak[group.id] = norm / norm.max().clamp_min(1e-30) < cfg.filter_norm_threshold
        for name, _ in producer_weights(model, group):
            if redundant and name in redundant and redundant[name].numel() == group.num_channels:
                weak[group.id] |= redundant[name].bool().cpu()
    alive = _not_dead(model, groups, weak, example_input) if example_input is not None else {}
    drop = {}
    for gid, norm in norms.items():
        chosen = _select(norm, weak[gid], alive.get(gid, torch.zeros_like(weak[gid])), cfg)
        if len(chosen):
            drop[gid] = chosen
    return drop


def _select(norms: torch.Tensor, weak: torch.Tensor, alive: torch.Tensor, cfg: PruneConfig) -> torch.Tensor:
    """Weak channels, topped up to the fraction target weakest first, capped at max_filter_fraction."""
    n = len(norms)
    weak = weak & ~alive
    limit = min(math.floor(cfg.max_filter_fraction * n), n - 1)
    target = min(math.floor(cfg.filter_fraction * n), limit)
    # weak first (weakest first among them), constant-carrying channels last
    rank = torch.where(weak, norms - norms.max() - 1, norms).masked_fill(alive, float("inf"))
    if int(weak.sum()) < target:
        weak = weak.clone()
        weak[torch.argsort(rank, stable=True)[:target]] = True
    chosen = weak.nonzero().flatten()
    if len(chosen) > limit:
        chosen = chosen[torch.argsort(rank[chosen], stable=True)[:limit]]
    return torch.sort(chosen).values


def remove_filters(model: nn.Module, input_shape: tuple[int, ...], cfg: PruneConfig,
                   redundant: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, list[dict], dict[str, int]]:
    """Method 2's prune step: choose channels, fold their constant outputs into consumers, remove them.

    Args:
        model: The trained model (left unchanged).
        input_shape: One input's shape without the batch dim.
        cfg: The prune section.
        redundant: Weight name -> bool per filter, marked redundant by the regularizer.

    Returns:
        (smaller model, `kept_per_group` rows, counts of removed channels whose constant output was folded
        exactly / approximately / not at all).
    """
    groups = channel_groups(model, input_shape)
    device = next(model.parameters()).device
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    drop = choose_filters(model, groups, cfg, redundant, example)
    work = copy.deepcopy(model)
    folded = fold_constant_channels(work, groups, drop, example)
    counts = {kind: sum(getattr(folded, kind).values()) for kind in ("exact", "approximate", "unfolded")}
    return remove_channels(work, drop, groups=groups), kept_per_group(groups, drop), counts


def kept_per_group(groups: list[ChannelGroup], drop: dict[str, torch.Tensor]) -> list[dict]:
    """[{group, total, kept}] for every prunable group (what the report and plot show)."""
    return [{"group": g.id, "total": g.num_channels, "kept": g.num_channels - len(drop.get(g.id, []))}
            for g in groups if g.prunable]
