"""Method 2's channel scores from shards of the weights, with collective reductions only.

Each rank reads its share (`sharded_prune.even_range`, ZeRO-3's split of the flattened tensor) of every tensor a
score needs from the phase weights file, and sums a per-element statistic f(w) by its position along the channel
dimension: a [positions] vector per tensor. A filter's row may straddle two ranks' shares; each rank adds only
the part it holds, and one all-reduce over all the vectors (concatenated) gives every rank the whole-row sums:

    l2        f = w²,  unit score sqrt(Σ_producers Σ_unit-rows f)        (`structural.scoring.L2Norm`)
    l1        f = |w|, unit score Σ_producers Σ_unit-rows f              (`structural.scoring.L1Norm`)
    bn_scale  f = |γ| of the batch norms scaling the group, summed       (`structural.scoring.BNScale`);
              a group no batch norm scales is scored by l2 (one more all-reduce)

Sums are taken in float64 (squares of float32 are exact there), so the scores do not depend on the number of
ranks up to float64 rounding, and equal the unsharded scores to float32 rounding. `grad_count` scores are per-filter
ratios the sparsify phase already reduced over ranks (`weights/sparsify_regularizer.pt`); they need no weights.
No rank reads a tensor it does not own a share of beyond the rows that hold its share (`read_shard`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from sparsetrain.pruning.sharded_prune import even_range, read_shard
from sparsetrain.structural.scoring import ChannelScore, batch_norm_scales
from sparsetrain.structural.types import ChannelGroup, ChannelSlice

SHARDED_SCORES = ("l2", "l1", "bn_scale")
_CHUNK = 1 << 22  # elements per index_add_ pass: bounds the int64 position buffer to 32 MiB


class PrecomputedScore(ChannelScore):
    """Scores computed beforehand, by group id (groups without an entry are not scored, as for `ChannelScore`)."""

    def __init__(self, scores: Mapping[str, torch.Tensor]) -> None:
        self.scores = dict(scores)

    def __call__(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor | None:
        return self.scores.get(group.id)


def group_score(model: nn.Module, group: ChannelGroup, score: str) -> str:
    """The score `group` is ranked by: `score`, or l2 for bn_scale on a group no batch norm scales (`BNScale`)."""
    return "l2" if score == "bn_scale" and not batch_norm_scales(model, group) else score


def scored_slices(model: nn.Module, group: ChannelGroup, score: str) -> list[ChannelSlice]:
    """The slices of `group` whose values `score` reads: the filters (l1, l2) or the batch-norm scales (bn_scale)."""
    if score == "bn_scale":
        return batch_norm_scales(model, group)
    return [s for s in group.producers if s.kind == "filter"]


def position_sums(values: torch.Tensor, start: int, shape: Sequence[int], dim: int, power: int) -> torch.Tensor:
    """Σ |w|^power of the elements [start, start + values.numel()) of a flattened tensor of `shape`, by their
    position along `dim`: float64 [shape[dim]] (positions outside the range get 0)."""
    stride = int(torch.Size(shape[dim + 1:]).numel())
    sums = torch.zeros(int(shape[dim]), dtype=torch.float64)
    flat = values.reshape(-1)
    for lo in range(0, flat.numel(), _CHUNK):
        part = flat[lo:lo + _CHUNK].detach().cpu().double().abs()
        position = (torch.arange(start + lo, start + lo + part.numel()) // stride) % int(shape[dim])
        sums.index_add_(0, position, part.square() if power == 2 else part)
    return sums


def _needed(model: nn.Module, groups: Sequence[ChannelGroup], score: str) -> dict[tuple[str, int], tuple[int, ...]]:
    """(tensor name, channel dim) → tensor shape, for every slice a prunable group's score reads."""
    needed = {}
    for group in groups:
        if group.prunable:
            for s in scored_slices(model, group, score):
                needed[(s.qualname, s.dim)] = tuple(model.get_submodule(s.module).get_parameter(s.param).shape)
    return needed


def _reduced_sums(path: Path, needed: Mapping[tuple[str, int], tuple[int, ...]], power: int
                  ) -> dict[tuple[str, int], torch.Tensor]:
    """Whole-tensor position sums of every needed (name, dim), from this rank's shares (one all-reduce)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    parts = []
    for (name, dim), shape in needed.items():
        start, stop = even_range(int(torch.Size(shape).numel()), world, rank)
        values = read_shard(path, name, start, stop) if stop > start else torch.zeros(0)
        parts.append(position_sums(values, start, shape, dim, power))
    flat = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    if world > 1:
        dist.all_reduce(flat)
    return dict(zip(needed, flat.split([p.numel() for p in parts]), strict=True))


def sharded_channel_scores(path: Path, model: nn.Module, groups: Sequence[ChannelGroup], score: str
                           ) -> PrecomputedScore:
    """The `score` ("l2", "l1" or "bn_scale") of every unit of every prunable group, from this rank's shares of the
    weights in `path`; a collective (every rank must call it with the same groups). Identical on every rank.

    Args:
        path: safetensors file of the model's weights (state-dict names).
        model: the model the groups were built from; only its structure is read (a meta-device model will do).
        groups: `build_channel_groups(model, ...)`.
        score: `prune.channel_score`, one of `SHARDED_SCORES`.

    Returns:
        A `ChannelScore` giving float32 [units] per scored group, on the CPU (bn_scale: l2 for a group no batch norm
        scales, as `structural.scoring.BNScale`).

    Raises:
        ValueError: `score` is not one of `SHARDED_SCORES`.
    """
    if score not in SHARDED_SCORES:
        raise ValueError(f"prune.channel_score: {score!r} is not computed from weight shards; expected one of "
                         f"{', '.join(SHARDED_SCORES)}")
    names = (score, "l2") if score == "bn_scale" else (score,)  # bn_scale groups without a batch norm: l2
    by_score: dict[str, list[ChannelGroup]] = {name: [] for name in names}
    for group in groups:
        if group.prunable:
            by_score[group_score(model, group, score)].append(group)
    scores = {}
    for name, scored in by_score.items():  # the same names on every rank: one all-reduce each
        sums = _reduced_sums(path, _needed(model, scored, name), 2 if name == "l2" else 1)
        for group in scored:
            units = _unit_sums(sums, scored_slices(model, group, name), group)
            if units is not None:
                scores[group.id] = (units.sqrt() if name == "l2" else units).float()
    return PrecomputedScore(scores)


def _unit_sums(sums: Mapping[tuple[str, int], torch.Tensor], slices: Sequence[ChannelSlice], group: ChannelGroup
               ) -> torch.Tensor | None:
    """float64 [units]: the position sums of `slices` added up per unit of `group` (None without slices)."""
    if not slices:
        return None
    every_unit = torch.arange(group.num_channels)
    return torch.stack([sums[(s.qualname, s.dim)][s.index(every_unit)].view(group.num_channels, s.width).sum(1)
                        for s in slices]).sum(0)
