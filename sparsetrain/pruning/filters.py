"""Structural pruning (Method 2): which channels to remove, from the prune section of the config.

Maps `prune.*` onto a channel score (`prune.channel_score`, `structural.scoring`) and a selection
(`structural.selection`): a channel of a prunable group is dead when its score relative to the strongest channel
of the group falls below `prune.filter_norm_threshold`, or when the gradient-counting strategy marked one of its
filters redundant, unless it carries a constant (BN shift) that cannot be folded exactly into its consumers; then
the weakest channels are added until `prune.filter_fraction` of the group is chosen (a size target). At most
`prune.max_filter_fraction` of a group's channels are removed, at least one always stays, and kept channel counts
are rounded to multiples of `prune.round_to`. A grouped conv loses the same channels in every group
(`prune.grouped_conv: within_groups`) or whole groups (`whole_groups`). Groups whose removal is inexact
(LayerNorm over channels) are pruned only with `prune.allow_inexact`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sparsetrain.config.schema import PruneConfig
from sparsetrain.structural import (
    ChannelGroup,
    ChannelScore,
    ChannelSelection,
    GroupCount,
    batch_norm_scales,
    build_channel_groups,
    build_score,
    fold_constant_channels,
    producer_weights,
    relative_scores,
    remove_channels,
    select_channels,
)
from sparsetrain.structural.selection import fraction_target

_SCORE_NAMES = {"l2": "l2 norm", "l1": "l1 norm", "bn_scale": "|BN scale|", "grad_count": "gradient count ratio"}


def channel_groups(model: nn.Module, input_shape: tuple[int, ...], grouped_conv: str = "within_groups"
                   ) -> list[ChannelGroup]:
    """Coupled channel groups of `model` for one input of `input_shape` (no batch dim); `grouped_conv` as
    `prune.grouped_conv`."""
    device = next(model.parameters()).device
    return build_channel_groups(model, torch.zeros(1, *input_shape, device=device), grouped_conv=grouped_conv)


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


def check_channel_score(model: nn.Module, groups: list[ChannelGroup], cfg: PruneConfig, model_name: str) -> None:
    """Refuse `prune.channel_score: bn_scale` when no group the selection may prune (prunable, 2 units or more, exact
    unless `allow_inexact`) has a batch norm after its filters: every group would be ranked by l2 (`BNScale`), so the
    setting would mean nothing. A model with some such groups is taken; its other groups are ranked by l2.

    Raises:
        ValueError: `prune.channel_score: bn_scale ranks ... ; vit_tiny_patch16_224 has none ...; use
            prune.channel_score=l2`.
    """
    if getattr(cfg, "channel_score", None) != "bn_scale":
        return
    selectable = [g for g in groups
                  if g.prunable and g.num_channels >= 2 and not kept_whole_inexact(g, cfg.allow_inexact)]
    if any(batch_norm_scales(model, g) for g in selectable):
        return
    raise ValueError(f"prune.channel_score: bn_scale ranks channels by the BatchNorm scale after their filters, but "
                     f"{model_name} has no BatchNorm after any prunable layer; use prune.channel_score=l2 (or l1)")


def selection_from(cfg: PruneConfig) -> ChannelSelection:
    """The channel selection that `prune.*` describes."""
    return ChannelSelection(threshold=cfg.filter_norm_threshold, fraction=cfg.filter_fraction,
                            max_fraction=cfg.max_filter_fraction, round_to=cfg.round_to,
                            allow_inexact=cfg.allow_inexact)


def redundancy_marks(model: nn.Module, groups: list[ChannelGroup],
                     redundant: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Group id → bool per channel: a filter of the channel was marked redundant (per weight name)."""
    marks: dict[str, torch.Tensor] = {}
    for group in groups:
        for name, _ in producer_weights(model, group):
            if redundant and name in redundant and redundant[name].numel() == group.num_channels:
                marks[group.id] = marks.get(group.id, torch.zeros(group.num_channels, dtype=torch.bool)) | (
                    redundant[name].bool().cpu())
    return marks


def choose_filters(model: nn.Module, groups: list[ChannelGroup], cfg: PruneConfig,
                   redundant: dict[str, torch.Tensor] | None = None, example_input: torch.Tensor | None = None,
                   ratios: dict[str, torch.Tensor] | None = None, score: ChannelScore | None = None,
                   counts: list[GroupCount] | None = None) -> dict[str, torch.Tensor]:
    """Group id → indices of channels to remove (see the module docstring).

    Args:
        model: The trained model.
        groups: Its channel groups.
        cfg: The prune section.
        redundant: Weight name → bool per filter, marked redundant by the regularizer.
        example_input: Input batch for the constant-output check of dead channels (skipped when None).
        ratios: Weight name → gradient count ratio per filter (needed for `channel_score: grad_count`).
        score: Scores computed beforehand (`sharded_filters.sharded_channel_scores`); default: `cfg.channel_score`
            computed from `model`'s weights.
        counts: When given, each scored group's counts are appended to it (`selection_notes` reads them).
    """
    score = score or build_score(cfg.channel_score, ratios)
    return select_channels(model, groups, score, selection_from(cfg), counts=counts,
                           marked=redundancy_marks(model, groups, redundant), example_input=example_input)


def remove_filters(model: nn.Module, input_shape: tuple[int, ...], cfg: PruneConfig,
                   regularizer_state: dict | None = None, *, groups: list[ChannelGroup] | None = None,
                   score: ChannelScore | None = None, counts: list[GroupCount] | None = None
                   ) -> tuple[nn.Module, list[dict], dict[str, int]]:
    """Method 2's prune step: choose channels, fold their constant outputs into consumers, remove them.

    Args:
        model: The trained model (left unchanged).
        input_shape: One input's shape without the batch dim.
        cfg: The prune section.
        regularizer_state: The sparsify phase's grad_count state (`redundant` marks, count `ratio`), if any.
        groups: The model's channel groups, when already built (e.g. from a meta-device copy).
        score: Channel scores computed beforehand (see `choose_filters`).
        counts: When given, each scored group's counts are appended to it (`selection_notes` reads them).

    Returns:
        (smaller model, `kept_per_group` rows, counts of removed channels whose constant output was folded
        exactly / approximately / not at all).
    """
    state = regularizer_state or {}
    groups = groups if groups is not None else channel_groups(model, input_shape, cfg.grouped_conv)
    device = next(model.parameters()).device
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    drop = choose_filters(model, groups, cfg, state.get("redundant"), example, state.get("ratio"), score, counts)
    work = copy.deepcopy(model)
    folded = fold_constant_channels(work, groups, drop, example, allow_inexact=cfg.allow_inexact)
    counts = {kind: sum(getattr(folded, kind).values()) for kind in ("exact", "approximate", "unfolded")}
    pruned = remove_channels(work, drop, groups=groups, allow_inexact=cfg.allow_inexact)
    return pruned, kept_per_group(groups, drop, cfg.allow_inexact), counts


def kept_per_group(groups: list[ChannelGroup], drop: dict[str, torch.Tensor], allow_inexact: bool = False
                   ) -> list[dict]:
    """[{group, total, kept, layers}] for every prunable group, in graph order (what the report, the prune phase's
    log block and the plot show): `total` and `kept` count units (channels, or blocks of channels), `layers` names
    the modules whose filters produce the group; `exact` is False for groups removed although their removal is
    inexact; `kept_because` (e.g. `inexact (LayerNorm)`: `kept_whole_because`) on groups of 2 units or more that
    the selection skipped whole because their removal would be inexact and `allow_inexact` is off."""
    rows = []
    for g in groups:
        if not g.prunable:
            continue
        row = {"group": g.id, "total": g.num_channels, "kept": g.num_channels - len(drop.get(g.id, [])),
               "layers": group_layers(g), **({"exact": False} if g.inexact and g.id in drop else {})}
        if kept_whole_inexact(g, allow_inexact):
            row["kept_because"] = kept_whole_because(g)
        rows.append(row)
    return rows


def kept_whole_inexact(group: ChannelGroup, allow_inexact: bool) -> bool:
    """Whether the selection skips `group` whole: a prunable group of 2 units or more whose removal would be inexact,
    with `prune.allow_inexact` off."""
    return group.prunable and bool(group.inexact) and group.num_channels >= 2 and not allow_inexact


def inexact_kinds(group: ChannelGroup) -> list[str]:
    """The kinds of layer that normalize over an inexact group's channels (`LayerNorm`, `GroupNorm`, or `a norm over
    heads`), from `ChannelGroup.inexact`, each once."""
    return list(dict.fromkeys("a norm over heads" if why.startswith("'") else why.split(" ", 1)[0]
                              for why in group.inexact))


def kept_whole_because(group: ChannelGroup) -> str:
    """`inexact (LayerNorm)`: why the selection skips an inexact group (`inexact_kinds`)."""
    return f"inexact ({', '.join(inexact_kinds(group))})"


def group_layers(group: ChannelGroup) -> list[str]:
    """The modules whose filters (conv / linear weight rows) produce a group's channels, in graph order, each once."""
    return list(dict.fromkeys(s.module for s in group.producers if s.kind == "filter"))


def why_nothing_removed(model: nn.Module, groups: list[ChannelGroup], cfg: PruneConfig, score: ChannelScore,
                        redundant: dict[str, torch.Tensor] | None = None) -> str:
    """Why `choose_filters` chose no channel, with what to set (the prune phase's line when a model stays whole).

    No channel's score relative to its group's best is below `prune.filter_norm_threshold` (the smallest is named)
    and none is marked redundant; or some are, but too few in a group to remove a multiple of `prune.round_to`
    channels (or they carry a constant that cannot be folded away).
    """
    relative = {gid: rel for gid, (_, rel) in relative_scores(model, groups, score, selection_from(cfg)).items()}
    if not relative:
        return "no channel group can be pruned (see the channel groups: prunable, exact, 2 channels or more)"
    weakest = min(relative, key=lambda gid: float(relative[gid].min()))
    smallest = float(relative[weakest].min())
    marked = sum(int(m.sum()) for m in redundancy_marks(model, groups, redundant).values())
    below = sum(int((r < cfg.filter_norm_threshold).sum()) for r in relative.values())
    fraction = "set prune.filter_fraction (e.g. 0.25) to remove that fraction of every group's weakest filters"
    if below or marked:
        return (f"{below + marked} filter(s) below prune.filter_norm_threshold={cfg.filter_norm_threshold:g} or "
                f"marked redundant, but too few in any group to remove a multiple of prune.round_to={cfg.round_to} "
                f"channels (or they carry a constant that cannot be folded); {fraction}, or prune.round_to=1")
    none_marked = " and none marked redundant" if redundant is not None else ""
    named = _SCORE_NAMES.get(cfg.channel_score, f"{cfg.channel_score} score")  # a registered score: its own name
    return (f"no filter's {named} relative to its group's strongest is below "
            f"prune.filter_norm_threshold={cfg.filter_norm_threshold:g} (smallest {smallest:.3g}, in {weakest})"
            f"{none_marked}; {fraction}")


def selection_notes(groups: list[ChannelGroup], counts: list[GroupCount], cfg: PruneConfig,
                    max_names: int = 6) -> list[str]:
    """One line each when `prune.round_to` left groups whole that had channels selected, when
    `prune.max_filter_fraction` lowered what groups remove, when whole units (attention heads, conv groups) made
    `prune.filter_fraction` remove more than asked, and when groups were kept whole because their removal would be
    inexact (the prune phase logs them and stores them in the report).

    Args:
        groups: The channel groups the selection ran on.
        counts: `choose_filters(..., counts=[])`'s record, one per scored group.
        cfg: The prune section.
        max_names: Layers named in a line before `and N more`.

    Returns:
        e.g. `prune.round_to=8: 2 groups of 16 channels keep all 16 (12 rounded up): stem.0, blk.conv1; lower round_to
        to remove from them`, `prune.max_filter_fraction=0.75 caps filter_fraction 0.9 in 3 groups`,
        `prune.filter_fraction=0.34 removes 2 of 3 units of 64 channels (67 %) in 12 groups: ...; units go whole
        (heads, conv groups)` and
        `4 groups kept whole because their removal would be inexact (LayerNorm): stem.0, ...; prune.allow_inexact=true
        removes them too`; [] when none applies.
    """
    by_id = {g.id: g for g in groups}
    notes = [_rounding_note(by_id, counts, cfg, max_names), _cap_note(counts, cfg),
             _whole_units_note(by_id, counts, cfg, max_names), _inexact_note(groups, cfg, max_names)]
    return [note for note in notes if note]


def _listed(names: list[str], max_names: int) -> str:
    """`a, b, c and 3 more`."""
    return ", ".join(names[:max_names]) + (f" and {len(names) - max_names} more" if len(names) > max_names else "")


def _groups(n: int) -> str:
    return f"{n} group{'s' if n > 1 else ''}"


def _rounding_note(by_id: dict[str, ChannelGroup], counts: list[GroupCount], cfg: PruneConfig,
                   max_names: int) -> str:
    """The groups `prune.round_to` left whole although channels were selected in them ('' when none)."""
    whole = [c for c in counts if c.capped and not c.removed]
    if not whole:
        return ""
    bins: dict[tuple[int, int], list[str]] = {}
    for c in whole:
        names = group_layers(by_id[c.group]) if c.group in by_id else []
        key = (c.units * c.unit_channels, (c.units - c.capped) * c.unit_channels)
        bins.setdefault(key, []).append("+".join(names) or c.group)
    parts = [f"{_groups(len(names))} of {width} channels keep{'' if len(names) > 1 else 's'} all {width} "
             f"({kept} rounded up): {_listed(names, max_names)}" for (width, kept), names in bins.items()]
    return f"prune.round_to={cfg.round_to}: {'; '.join(parts)}; lower round_to to remove from them"


def _cap_note(counts: list[GroupCount], cfg: PruneConfig) -> str:
    """The groups whose removal `prune.max_filter_fraction` lowered ('' when none)."""
    capped = [c for c in counts if c.wanted > c.capped]
    if not capped:
        return ""
    if cfg.filter_fraction > cfg.max_filter_fraction:
        return (f"prune.max_filter_fraction={cfg.max_filter_fraction:g} caps filter_fraction {cfg.filter_fraction:g} "
                f"in {_groups(len(capped))}")
    left = sum((c.wanted - c.capped) * c.unit_channels for c in capped)  # dead / redundant channels over the cap
    return (f"prune.max_filter_fraction={cfg.max_filter_fraction:g} caps the removal in {_groups(len(capped))} "
            f"({left} selected channel(s) stay)")


WHOLE_UNIT_SLACK = 0.01  # a share removed this much above filter_fraction (1 point) is said (whole units)


def _whole_units_note(by_id: dict[str, ChannelGroup], counts: list[GroupCount], cfg: PruneConfig,
                      max_names: int) -> str:
    """The groups of blocks of channels (attention heads, conv groups, a channel of every group of a grouped conv) in
    which `prune.filter_fraction`, rounded up to whole units ("at least" the fraction), removed a share more than
    `WHOLE_UNIT_SLACK` above it ('' when none), e.g. 2 of 3 heads (67 %) for 0.34. Removals driven by dead or
    redundant units, or changed by the cap or rounding (their own notes), are not counted."""
    bins: dict[tuple[int, int, int], list[str]] = {}
    for c in counts:
        target = fraction_target(c.units, cfg.filter_fraction)
        if c.unit_channels > 1 and c.removed == c.wanted == target > 0 and (
                c.removed / c.units > cfg.filter_fraction + WHOLE_UNIT_SLACK):
            names = group_layers(by_id[c.group]) if c.group in by_id else []
            bins.setdefault((c.units, c.unit_channels, c.removed), []).append(names[0] if names else c.group)
    parts = [f"{removed} of {units} units of {width} channels ({100 * removed / units:.0f} %) in "
             f"{_groups(len(names))}: {_listed(names, max_names)}" for (units, width, removed), names in bins.items()]
    if not parts:
        return ""  # numbers first, names last: the end-of-run table cuts the line at 100 characters
    return (f"prune.filter_fraction={cfg.filter_fraction:g} removes {'; '.join(parts)}; units go whole (heads, conv "
            "groups)")


def _inexact_note(groups: list[ChannelGroup], cfg: PruneConfig, max_names: int) -> str:
    """The groups the selection kept whole because their removal would be inexact, with the setting that removes
    them ('' when none, or with `prune.allow_inexact`)."""
    kept = [g for g in groups if kept_whole_inexact(g, cfg.allow_inexact)]
    if not kept:
        return ""
    why = ", ".join(dict.fromkeys(kind for g in kept for kind in inexact_kinds(g)))
    names = [(group_layers(g) or [g.id])[0] for g in kept]
    its, them = ("their", "them") if len(kept) > 1 else ("its", "it")
    return (f"{_groups(len(kept))} kept whole because {its} removal would be inexact ({why}): "
            f"{_listed(names, max_names)}; prune.allow_inexact=true removes {them} too")
