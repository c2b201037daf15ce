"""Unstructured pruning rules computed from shards of the weights, with collective reductions only.

Each rank holds some element ranges of the prunable weights (`WeightShard`: its ZeRO partition, or its share of
a weights file) and computes the keep flags of exactly those elements; no rank sees a whole layer. The rules are
those of `sparsetrain.pruning.criteria`, with the same results:

* threshold rules (global / per layer) are local: keep |w| > τ;
* target sparsity (one global ranking, or one per layer) prunes exactly k = round(s · n) weights, the k smallest
  |w| with ties broken by position (layers in order, then element index), like a stable sort of the whole set.
  The k-th smallest |w| is found exactly by a radix select over the float's bit pattern (non-negative floats
  order like their int32 bits): four passes of 8 bits, each a histogram of 256 counts per group summed over
  ranks. The ties at that value are then ranked by position from per-shard tie counts summed over ranks.
* a rule registered with `criteria.register_prune_rule` runs its own sharded form, or, on a single rank (where
  the shards are whole weights), its whole-weight mask function.

Collectives per call: 4 all-reduces of [groups, 256] counts, 1 of [layers, ranks] tie counts, 2 small ones for
the finiteness and empty-layer checks; every rank must call with the same layer names in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sparsetrain.config.schema import PruneConfig
from sparsetrain.pruning.criteria import empty_layer_error, mask_rule
from sparsetrain.pruning.sharded_masks import MaskShard, ShardedMasks, pack_shard


@dataclass(frozen=True)
class WeightShard:
    """Elements [start, start + values.numel()) of the flattened weight `name` (size elements, shape `shape`)."""

    name: str
    start: int
    values: torch.Tensor  # flat, any float dtype; read only
    size: int
    shape: tuple[int, ...]


def _world() -> tuple[int, int]:
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def _keys(values: torch.Tensor) -> torch.Tensor:
    """|w| as int32 bit patterns: for non-negative finite floats their order is the order of |w|."""
    return values.detach().float().abs().view(torch.int32)


def _kth_smallest_keys(shards: dict[str, WeightShard], groups: list[list[str]], ks: list[int],
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group g: the key T_g of its ks[g]-th smallest |w| (1-based) and how many of the ks[g] smallest equal T_g.

    Groups with k = 0 get T = -1 (prune nothing). Radix select, most significant byte first.
    """
    prefix = torch.zeros(len(groups), dtype=torch.int64)
    remaining = torch.tensor(ks, dtype=torch.int64)
    for shift in (24, 16, 8, 0):
        hist = torch.zeros(len(groups), 256, dtype=torch.int64, device=device)
        for g, names in enumerate(groups):
            for name in names:
                if name in shards:
                    keys = _keys(shards[name].values).to(torch.int64)  # non-negative: bits 31.. are 0
                    chosen = keys[(keys >> (shift + 8)) == prefix[g].item()]
                    hist[g] += torch.bincount((chosen >> shift) & 255, minlength=256)
        hist = _all_reduce(hist).cpu()
        below = torch.cumsum(hist, dim=1) - hist  # counts in the bins below each bin
        for g in range(len(groups)):
            if remaining[g] > 0:
                b = int(torch.searchsorted(torch.cumsum(hist[g], 0), remaining[g].item()))
                remaining[g] -= below[g, b]
                prefix[g] = (prefix[g] << 8) | b
    thresholds = torch.where(torch.tensor(ks) > 0, prefix, torch.full_like(prefix, -1))
    return thresholds, remaining  # remaining = ties at T_g to prune


def _tie_offsets(shards: dict[str, WeightShard], names: list[str], group_of: dict[str, int],
                 thresholds: torch.Tensor, device: torch.device) -> dict[str, int]:
    """Per local shard: ties (|w| bits == T of its group) at positions before it within its group."""
    rank, world = _world()
    counts = torch.zeros(len(names), world, dtype=torch.int64, device=device)
    starts = torch.zeros(len(names), world, dtype=torch.int64, device=device)
    for i, name in enumerate(names):
        if name in shards:
            keys = _keys(shards[name].values)
            counts[i, rank] = int((keys == int(thresholds[group_of[name]])).sum())
            starts[i, rank] = shards[name].start
    counts, starts = _all_reduce(counts).cpu(), _all_reduce(starts).cpu()
    offsets, running = {}, {}
    for i, name in enumerate(names):
        g = group_of[name]
        before_layer = running.get(g, 0)
        if name in shards:
            earlier = (starts[i] < shards[name].start) & (counts[i] > 0)  # ranks holding earlier elements
            offsets[name] = before_layer + int(counts[i][earlier].sum())
        running[g] = before_layer + int(counts[i].sum())
    return offsets


def _target_masks(shards: dict[str, WeightShard], names: list[str], groups: list[list[str]], ks: list[int],
                  device: torch.device) -> dict[str, torch.Tensor]:
    """Flat bool keep flags of the local shards: exactly ks[g] weights of group g pruned, smallest first."""
    group_of = {name: g for g, members in enumerate(groups) for name in members}
    thresholds, ties = _kth_smallest_keys(shards, groups, ks, device)
    offsets = _tie_offsets(shards, names, group_of, thresholds, device)
    keep = {}
    for name, shard in shards.items():
        g = group_of[name]
        keys, t = _keys(shard.values), int(thresholds[g])
        at_t = keys == t
        tie_rank = torch.cumsum(at_t.to(torch.int64), 0) + offsets[name]  # 1-based rank among the group's ties
        keep[name] = ~((keys < t) | (at_t & (tie_rank <= int(ties[g]))))
    return keep


def _check_finite(shards: dict[str, WeightShard], device: torch.device) -> None:
    bad = torch.tensor([sum(int((~torch.isfinite(s.values)).sum()) for s in shards.values())], device=device)
    if int(_all_reduce(bad).item()):
        raise ValueError(f"prune: {int(bad.item())} weights to prune are NaN or inf; a NaN or inf magnitude cannot be "
                         "ranked (lower the learning rate, enable deepspeed.gradient_clipping)")


def _check_names(cfg: PruneConfig, names: list[str]) -> None:
    for field in ("layer_thresholds", "layer_sparsity"):
        unknown = sorted(set(getattr(cfg, field, {})) - set(names))
        if unknown:
            raise ValueError(f"prune.{field}: unknown layer(s) {', '.join(unknown)}; prunable: {', '.join(names)}")


def shard_masks(shards: list[WeightShard], names: list[str], sizes: dict[str, int], cfg: PruneConfig
                ) -> ShardedMasks:
    """This rank's masks (True = kept) for its `shards` under `cfg.rule`; a collective over all ranks.

    Args:
        shards: this rank's element ranges of prunable weights (at most one per weight).
        names: every prunable weight, in model order (the same list on every rank; global tie order).
        sizes: elements of every prunable weight.
        cfg: the prune section (rule, threshold(s), target sparsity(ies)).

    Raises:
        ValueError: unknown per-layer names, a non-finite weight, a target outside [0, 1), a structural rule.
    """
    _check_names(cfg, names)
    local = {s.name: s for s in shards}
    device = shards[0].values.device if shards else torch.device("cpu")
    _check_finite(local, device)
    sharded = _BUILT_IN.get(cfg.rule) or mask_rule(cfg).sharded or _whole_weights
    keep = sharded(local, names, sizes, cfg, device)
    return ShardedMasks(pack_shard(n, s.start, keep[n], s.shape) for n, s in local.items())


# (this rank's shards by name, every prunable name, sizes, prune section, device) -> flat keep flags per local shard
ShardedFn = Callable[[dict[str, WeightShard], list[str], dict[str, int], PruneConfig, torch.device],
                     dict[str, torch.Tensor]]


def _threshold(local: dict[str, WeightShard], names: list[str], sizes: dict[str, int], cfg: PruneConfig,
               device: torch.device) -> dict[str, torch.Tensor]:
    taus = {n: getattr(cfg, "layer_thresholds", {}).get(n, cfg.threshold) for n in local}
    return {n: _keys(s.values) > _keys(torch.tensor([taus[n]]))[0] for n, s in local.items()}


def _global_sparsity(local: dict[str, WeightShard], names: list[str], sizes: dict[str, int], cfg: PruneConfig,
                     device: torch.device) -> dict[str, torch.Tensor]:
    return _target_masks(local, names, [list(names)], [int(round(cfg.sparsity * sum(sizes.values())))], device)


def _layer_sparsity(local: dict[str, WeightShard], names: list[str], sizes: dict[str, int], cfg: PruneConfig,
                    device: torch.device) -> dict[str, torch.Tensor]:
    targets = [cfg.layer_sparsity.get(n, cfg.sparsity) for n in names]
    for name, target in zip(names, targets, strict=True):
        if not 0.0 <= target < 1.0:
            raise ValueError(f"prune.layer_sparsity.{name}: {target} is outside [0, 1)")
    ks = [int(round(t * sizes[n])) for n, t in zip(names, targets, strict=True)]
    return _target_masks(local, names, [[n] for n in names], ks, device)


def _whole_weights(local: dict[str, WeightShard], names: list[str], sizes: dict[str, int], cfg: PruneConfig,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """A registered rule without a sharded form: its whole-weight mask function, on a single rank."""
    if _world()[1] > 1:
        raise ValueError(f"prune.rule: {cfg.rule!r} has no sharded form for {_world()[1]} ranks; register one "
                         "(register_prune_rule(..., sharded=...)) or prune on one rank")
    weights = {n: s.values.view(s.shape) for n, s in local.items()}
    return {n: m.flatten() for n, m in mask_rule(cfg).masks(weights, cfg, None).items()}


# The built-in rules' sharded forms (their whole-weight forms are registered in `criteria`).
_BUILT_IN: dict[str, ShardedFn] = {"global_threshold": _threshold, "layer_threshold": _threshold,
                                   "global_sparsity": _global_sparsity, "layer_sparsity": _layer_sparsity}


def kept_per_layer(masks: ShardedMasks, names: list[str]) -> dict[str, int]:
    """Kept weights of every layer summed over ranks (a collective)."""
    counts = torch.tensor([int(masks.shards[n].mask.count_kept()) if n in masks.shards else 0 for n in names],
                          dtype=torch.int64)
    return dict(zip(names, _all_reduce(counts).tolist(), strict=True))


def _largest_per_layer(shards: list[WeightShard], names: list[str]) -> dict[str, float]:
    """max |w| of every layer over all ranks' shards (a collective)."""
    local = {s.name: float(s.values.detach().float().abs().max()) for s in shards if s.values.numel()}
    largest = torch.tensor([local.get(n, 0.0) for n in names], dtype=torch.float32)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return dict(zip(names, largest.tolist(), strict=True))


def refuse_empty_layers(masks: ShardedMasks, shards: list[WeightShard], names: list[str], sizes: dict[str, int],
                        cfg: PruneConfig) -> None:
    """A rule must not prune every weight of a layer (it cuts the network): the same one-line `PruneError` as the
    unsharded rules (`criteria.refuse_empty_layers`), naming the setting, the layer and its largest |w|."""
    kept = kept_per_layer(masks, names)
    emptied = [n for n in names if kept[n] == 0 and sizes[n]]
    if emptied:
        largest = _largest_per_layer(shards, names)
        raise empty_layer_error(cfg, emptied[0], sizes[emptied[0]], largest[emptied[0]])


__all__ = ["MaskShard", "ShardedMasks", "WeightShard", "kept_per_layer", "refuse_empty_layers", "shard_masks"]
