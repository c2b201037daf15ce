"""`run --dry-run`'s plan of a Method 2 run (`prune.rule: filters`): the channel groups and how many filters the
prune phase will remove from each, before any training.

The prune phase's count per group depends on the trained scores (dead filters, redundant filters); before training
only its bounds are known: at least the size target (`prune.filter_fraction`), at most the cap
(`prune.max_filter_fraction`), both rounded as the phase rounds them (`prune.round_to`;
`structural.selection.removal_bounds`). Groups the selection skips are listed with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsetrain.config.schema import PruneConfig
from sparsetrain.pruning.filters import group_layers, kept_whole_because, kept_whole_inexact, selection_from
from sparsetrain.structural import ChannelGroup
from sparsetrain.structural.selection import removal_bounds

__all__ = ["GroupPlan", "filter_plan", "format_filter_plan"]


@dataclass(frozen=True)
class GroupPlan:
    """One prunable channel group of the plan.

    Attributes:
        group: The group's id (`ChannelGroup.id`).
        layers: Modules whose filters produce the group's units.
        units: Units (channels, or heads / blocks of channels) in the group.
        fewest: Units the prune phase removes at least (0 for a group it skips).
        most: Units it removes at most.
        skipped: Why the selection skips the group whole ('' when it does not).
    """

    group: str
    layers: list[str]
    units: int
    fewest: int
    most: int
    skipped: str = ""


def filter_plan(groups: list[ChannelGroup], cfg: PruneConfig) -> list[GroupPlan]:
    """The plan of every prunable group in graph order (what `kept_per_group` reports after the prune phase).

    Args:
        groups: `build_channel_groups` of the run's model (a meta-device model is enough: shapes only).
        cfg: The prune section (`rule: filters`).
    """
    selection = selection_from(cfg)
    plans = []
    for g in groups:
        if not g.prunable:
            continue
        if kept_whole_inexact(g, cfg.allow_inexact):
            skipped = f"{kept_whole_because(g)}; prune.allow_inexact=true removes filters"
        elif g.num_channels < 2:
            skipped = "1 unit (one always stays)"
        else:
            skipped = ""
        fewest, most = (0, 0) if skipped else removal_bounds(g.num_channels, selection, g.unit_channels)
        plans.append(GroupPlan(g.id, group_layers(g), g.num_channels, fewest, most, skipped))
    return plans


def _layers_label(layers: list[str], width: int) -> str:
    text = ", ".join(layers)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_filter_plan(plans: list[GroupPlan], cfg: PruneConfig, groups_total: int, limit: int = 30) -> str:
    """The plan as printed by `run --dry-run`: a two-line summary (groups and filters; the fewest and most removed),
    then a table of the groups (the first `limit` groups, then a count of the rest).

    Args:
        plans: `filter_plan(...)`.
        cfg: The prune section.
        groups_total: All channel groups of the model, prunable or not.
        limit: Table rows at most.
    """
    units = sum(p.units for p in plans)
    fewest, most = sum(p.fewest for p in plans), sum(p.most for p in plans)
    skipped = sum(1 for p in plans if p.skipped)
    rounding = f"; kept counts rounded to multiples of prune.round_to={cfg.round_to}" if cfg.round_to > 1 else ""
    lines = [f"filter plan (prune.rule=filters): {len(plans)} prunable channel groups of {groups_total}, "
             f"{units:,} filters" + (f", {skipped} of the groups kept whole" if skipped else ""),
             f"  the prune phase removes at least {fewest:,} filters (prune.filter_fraction {cfg.filter_fraction:g}) "
             f"and at most {most:,} (prune.max_filter_fraction {cfg.max_filter_fraction:g}); how many in between "
             f"depends on the trained filters (weak and redundant ones go){rounding}"]
    if not plans:
        return "\n".join(lines)
    width = max(len("group"), *(len(p.group) for p in plans[:limit]))
    lines.append(f"{'group':<{width}} {'filters':>8} {'removed':>9}  layers")
    for plan in plans[:limit]:
        removed = "0" if plan.skipped else f"{plan.fewest}..{plan.most}"
        note = (f" (kept whole: {plan.skipped})" if plan.skipped else
                f" (prune.round_to={cfg.round_to} keeps every filter)" if plan.most == 0 else "")
        lines.append(f"{plan.group:<{width}} {plan.units:>8,} {removed:>9}  {_layers_label(plan.layers, 60)}{note}")
    if len(plans) > limit:
        lines.append(f"... and {len(plans) - limit} more groups")
    return "\n".join(lines)
