"""Channel selection: which units of each group to remove, given their scores (`scoring.py`).

Per prunable group of n units, in this order:
1. *dead* units: score / max score below `threshold`, plus units the caller marks (redundant filters). With an
   example input, a dead unit that carries a constant (bias / BN shift through the activation) which cannot be
   folded exactly into its consumers (`fold.py`) is not dead: it ranks as the strongest unit.
2. a size target: at least `fraction` of the units go, weakest first (n - floor((1 - fraction) n) units).
3. a cap: at most `max_fraction` of the units, and never all of them.
4. rounding: the kept channel count is rounded to the nearest multiple of `round_to` channels (ties: keep more),
   within the cap, so that the smaller layers still run at full speed on vectorized kernels (Torch-Pruning's
   `round_to`); a group keeps its own width when that is nearer, so rounding never prunes a group nothing was
   selected in; groups smaller than `round_to` channels are not rounded.
Inexact groups (`ChannelGroup.inexact`) are only selected with `allow_inexact`. `select_channels(..., counts=[])`
records each group's count after every step (`GroupCount`), so a caller can say what the cap and rounding changed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sparsetrain.structural.fold import channel_fold_status, rest_values
from sparsetrain.structural.scoring import ChannelScore
from sparsetrain.structural.types import ChannelGroup

__all__ = ["ChannelSelection", "GroupCount", "relative_scores", "removal_bounds", "rounded_count", "select_channels"]


@dataclass(frozen=True)
class ChannelSelection:
    """Selection settings (see the module docstring).

    Attributes:
        threshold: Units whose score relative to the group's best is below this are dead (removed).
        fraction: Remove at least this fraction of each group's units.
        max_fraction: Remove at most this fraction of each group's units.
        round_to: Round kept channel counts to a multiple of this (1: no rounding).
        allow_inexact: Also select groups whose removal differs from masking.
    """

    threshold: float = 0.0
    fraction: float = 0.0
    max_fraction: float = 0.75
    round_to: int = 1
    allow_inexact: bool = False

    def __post_init__(self) -> None:
        checks = {"threshold": self.threshold >= 0, "fraction": 0 <= self.fraction < 1,
                  "max_fraction": 0 < self.max_fraction < 1, "round_to": self.round_to >= 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"ChannelSelection: invalid {', '.join(bad)} ({self})")


@dataclass(frozen=True)
class GroupCount:
    """How many units of one scored group each step of the selection removes (units of `unit_channels` channels).

    Attributes:
        group: The group's id.
        units: Units in the group.
        unit_channels: Channels per unit.
        wanted: Units the dead units and the size target (`fraction`) ask to remove (steps 1-2).
        capped: After the cap: at most `max_fraction` of the units, never all (step 3).
        removed: After rounding the kept count (step 4): what is removed.
    """

    group: str
    units: int
    unit_channels: int
    wanted: int
    capped: int
    removed: int


def select_channels(model: nn.Module, groups: Sequence[ChannelGroup], score: ChannelScore,
                    selection: ChannelSelection, *, marked: Mapping[str, torch.Tensor] | None = None,
                    example_input: torch.Tensor | None = None,
                    counts: list[GroupCount] | None = None) -> dict[str, torch.Tensor]:
    """Group id -> sorted indices of the units to remove.

    Args:
        model: The model the groups were built from.
        groups: Output of `build_channel_groups`.
        score: Unit scores (higher = keep).
        selection: Threshold, fraction, cap, rounding, inexact groups.
        marked: Group id -> bool per unit to remove as dead whatever its score (e.g. redundant filters).
        example_input: Input batch for the constant-output check of dead units (skipped when None).
        counts: When given, one `GroupCount` per scored group is appended to it (in graph order).
    """
    scores, dead = {}, {}
    for group_id, (s, relative) in relative_scores(model, groups, score, selection).items():
        scores[group_id] = s
        dead[group_id] = relative < selection.threshold
        if marked and group_id in marked:
            dead[group_id] |= marked[group_id].bool().cpu()
    alive = _carry_constants(model, groups, dead, example_input) if example_input is not None else {}
    by_id = {g.id: g for g in groups}
    drop = {}
    for gid, s in scores.items():
        group = by_id[gid]
        chosen, steps = _choose(s, dead[gid], alive.get(gid, torch.zeros_like(dead[gid])), selection,
                                _step(selection.round_to, group.unit_channels))
        if counts is not None:
            counts.append(GroupCount(gid, len(s), group.unit_channels, *steps))
        if len(chosen):
            drop[gid] = chosen
    return drop


def relative_scores(model: nn.Module, groups: Sequence[ChannelGroup], score: ChannelScore,
                    selection: ChannelSelection) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Group id -> (unit scores, scores relative to the group's best, which `selection.threshold` compares) of the
    groups a selection may prune: prunable, of 2 units or more, exact unless `allow_inexact`, with a score."""
    result = {}
    for group in groups:
        if not group.prunable or (group.inexact and not selection.allow_inexact) or group.num_channels < 2:
            continue
        s = score(model, group)
        if s is not None:
            result[group.id] = (s, s / s.max().clamp_min(1e-30))
    return result


def _step(round_to: int, unit_channels: int) -> int:
    """Rounding step in units: `round_to` channels in units of `unit_channels` channels."""
    return round_to // math.gcd(round_to, unit_channels)


def _carry_constants(model: nn.Module, groups: Sequence[ChannelGroup], dead: Mapping[str, torch.Tensor],
                     example_input: torch.Tensor) -> dict[str, torch.Tensor]:
    """Of the dead units, those whose constant output cannot be folded exactly into their consumers."""
    channels = {gid: mask.nonzero().flatten() for gid, mask in dead.items() if mask.any()}
    rest = rest_values(model, groups, channels, example_input)
    alive = {}
    for gid, idx in channels.items():
        alive[gid] = torch.zeros_like(dead[gid])
        alive[gid][idx] = channel_fold_status(rest[gid], model) > 1
    return alive


def _choose(scores: torch.Tensor, dead: torch.Tensor, alive: torch.Tensor, sel: ChannelSelection,
            step: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(sorted indices of the units to remove, (wanted, capped, removed) unit counts: `GroupCount`)."""
    n = len(scores)
    dead = dead & ~alive
    wanted = max(int(dead.sum()), fraction_target(n, sel.fraction))
    capped, count = _capped_and_removed(n, wanted, sel, step)
    # dead first (weakest first among them), constant-carrying units last
    rank = torch.where(dead, scores - scores.max() - 1, scores).masked_fill(alive, float("inf"))
    return torch.sort(torch.argsort(rank, stable=True)[:count]).values, (wanted, capped, count)


def _capped_and_removed(n: int, wanted: int, sel: ChannelSelection, step: int) -> tuple[int, int]:
    """Steps 3-4 for a group of `n` units of which `wanted` are asked for: (after the cap, after rounding)."""
    limit = min(math.floor(sel.max_fraction * n), n - 1)
    capped = min(wanted, limit)
    return capped, n - rounded_count(n, n - capped, step, n - limit)


def removal_bounds(n: int, sel: ChannelSelection, unit_channels: int = 1) -> tuple[int, int]:
    """(fewest, most) units the selection removes from a scored group of `n` units, before any score is known.

    The fewest is the size target alone (`fraction`: no unit dead), the most is every unit dead (the cap,
    `max_fraction`, never all), both after rounding (`round_to`). Used by `run --dry-run`'s filter plan.
    """
    step = _step(sel.round_to, unit_channels)
    return (_capped_and_removed(n, fraction_target(n, sel.fraction), sel, step)[1],
            _capped_and_removed(n, n, sel, step)[1])


def fraction_target(n: int, fraction: float) -> int:
    """Units a size target removes from a group of `n`: at least `fraction` of them, n - floor((1 - fraction) n)."""
    return n - math.floor((1 - fraction) * n + 1e-9)


def rounded_count(n: int, kept: int, step: int, lowest: int) -> int:
    """`kept` rounded to the nearest multiple of `step` in [max(lowest, step), n], or to `n` itself (the layer's
    own width: nothing removed) when that is nearer; ties go to the larger count. `kept` if n < step or no
    candidate lies in range.

    Example: n=64, step=8: kept 45 -> 48, 44 -> 48 (tie), 43 -> 40; n=12, step=8: kept 11 -> 12, 9 -> 8.
    """
    if step <= 1 or n < step or kept >= n:
        return min(kept, n)
    lower = kept // step * step
    candidates = [k for k in (n, lower + step, lower) if k == n or max(lowest, step) <= k < n]
    return min(candidates, key=lambda k: (abs(k - kept), -k))
