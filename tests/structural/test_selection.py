"""Channel scoring (norms, BN scale, gradient counts) is separate from selection (fractions, caps, rounding);
`prune.round_to` keeps channel counts multiples of N (issue 11, item 5)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from sparsetrain.config import ConfigError, load_config
from sparsetrain.config.schema import PruneConfig
from sparsetrain.pruning.filters import choose_filters, remove_filters, selection_notes, why_nothing_removed
from sparsetrain.structural import (
    BNScale,
    ChannelSelection,
    CountRatio,
    L1Norm,
    L2Norm,
    build_channel_groups,
    build_score,
    select_channels,
)
from sparsetrain.structural.selection import rounded_count


class Net(nn.Module):
    """conv(3→40) → BN → ReLU → conv(40→24) → BN → ReLU → pool → linear: two plain groups of 40 and 24 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 40, 3, padding=1, bias=False), nn.BatchNorm2d(40)
        self.conv2, self.bn2 = nn.Conv2d(40, 24, 1, bias=False), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture()
def net() -> tuple[nn.Module, torch.Tensor, list]:
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    return model, x, build_channel_groups(model, x)


@pytest.mark.parametrize("n, kept, step, lowest, expected", [
    (64, 45, 8, 16, 48), (64, 44, 8, 16, 48), (64, 43, 8, 16, 40),  # nearest multiple, ties keep more
    (12, 11, 8, 3, 12), (12, 9, 8, 3, 8), (12, 10, 8, 3, 12),  # the layer's own width counts as a candidate
    (64, 64, 8, 16, 64), (40, 40, 8, 10, 40),  # nothing selected: nothing removed by rounding
    (64, 17, 8, 17, 24), (64, 3, 8, 1, 8),  # within the cap (lowest), never below one step
    (6, 2, 8, 1, 2), (64, 45, 1, 16, 45),  # smaller than a step, or no rounding
])
def test_rounded_count(n, kept, step, lowest, expected):
    assert rounded_count(n, kept, step, lowest) == expected


def kept_counts(groups, drop) -> dict[str, int]:
    return {g.id: g.num_channels - len(drop.get(g.id, [])) for g in groups if g.prunable}


def test_round_to_keeps_multiples_of_n(net):
    model, _, groups = net
    def kept(fraction: float, round_to: int) -> dict[str, int]:
        selection = ChannelSelection(fraction=fraction, round_to=round_to)
        return kept_counts(groups, select_channels(model, groups, L2Norm(), selection))

    assert kept(0.3, 1) == {"conv1": 28, "conv2": 16}, "30 % removed (floor of the kept count)"
    assert kept(0.3, 8) == {"conv1": 32, "conv2": 16}, "28 rounds up to 32 (tie with 24: keep more)"
    assert kept(0.2, 1) == {"conv1": 32, "conv2": 19}
    assert kept(0.2, 8) == {"conv1": 32, "conv2": 16}, "19 rounds down to 16"
    # through the config, with the default round_to (8)
    drop = choose_filters(model, groups, PruneConfig(rule="filters", filter_fraction=0.3))
    assert kept_counts(groups, drop) == {"conv1": 32, "conv2": 16}


def test_round_to_applies_to_the_built_model(net):
    model, x, _ = net
    pruned, kept, _ = remove_filters(model, tuple(x.shape[1:]), PruneConfig(rule="filters", filter_fraction=0.4,
                                                                             round_to=16))
    assert (pruned.conv1.out_channels, pruned.conv2.out_channels) == (32, 16)
    assert {r["group"]: r["kept"] for r in kept} == {"conv1": 32, "conv2": 16}


@pytest.mark.parametrize("override, expected", [
    ("prune={rule: filters, round_to: 0}", "prune.round_to: expected an int in 1..256, got 0"),
    ("prune={rule: filters, round_to: eight}", "prune.round_to:"),
    ("prune={rule: filters, channel_score: taylor}", "prune.channel_score:"),
    ("prune={rule: filters, channel_score: grad_count}",
     "prune.channel_score: grad_count ranks channels by the gradient counts"),
    ("prune.round_to=8", "prune.round_to: not a setting of prune.rule='global_threshold'"),
])
def test_bad_selection_settings_fail_at_load(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value).startswith(expected) and "\n" not in str(info.value), str(info.value)


def test_round_to_loads_with_the_filters_rule():
    assert load_config(None, ["prune={rule: filters, round_to: 16}"]).prune.round_to == 16
    assert load_config("configs/unet_synthetic.yaml", []).prune.round_to == 8


def test_scores_rank_channels_by_their_own_criterion(net):
    """Each score is a small class: the same selection removes different channels under each."""
    model, _, groups = net
    conv1 = next(g for g in groups if g.id == "conv1")
    with torch.no_grad():
        model.conv1.weight[[3, 9]] *= 1e-3  # weakest filters
        model.bn1.weight.fill_(1.0)
        model.bn1.weight[[5, 30]] = 1e-4  # smallest BN scales (network slimming)
    ratios = {"conv1.weight": torch.linspace(1, 0, 40), "conv2.weight": torch.ones(24)}
    select = ChannelSelection(fraction=0.05)  # 2 of 40 channels
    picks = {name: select_channels(model, [conv1], score, select)["conv1"].tolist()
             for name, score in (("l2", L2Norm()), ("l1", L1Norm()), ("bn", BNScale()), ("count", CountRatio(ratios)))}
    assert picks == {"l2": [3, 9], "l1": [3, 9], "bn": [5, 30], "count": [38, 39]}
    assert BNScale()(model, conv1).shape == (40,) and build_score("bn_scale").name == "bn_scale"
    with pytest.raises(ValueError, match="grad_count"):
        build_score("grad_count")


def test_threshold_cap_and_never_all(net):
    model, _, groups = net
    with torch.no_grad():
        model.conv1.weight[:35] = 0.0  # 35 of 40 dead: the cap (75 %) keeps 10
    drop = select_channels(model, groups, L2Norm(), ChannelSelection(threshold=0.01, max_fraction=0.75))
    assert len(drop["conv1"]) == 30 and set(drop["conv1"].tolist()) <= set(range(35))
    assert "conv2" not in drop


def test_a_selection_that_removes_nothing_says_why(net):
    """Fresh-user trial: Method 2 after few steps printed `1.00x fewer` and nothing else."""
    model, _, groups = net
    cfg = PruneConfig(rule="filters")  # threshold 0.01, round_to 8
    relative = {g.id: float((L2Norm()(model, g) / L2Norm()(model, g).max()).min()) for g in groups if g.prunable}
    weakest = min(relative, key=relative.get)
    assert choose_filters(model, groups, cfg) == {}
    assert why_nothing_removed(model, groups, cfg, L2Norm(), {"conv1.weight": torch.zeros(40)}) == (
        "no filter's l2 norm relative to its group's strongest is below prune.filter_norm_threshold=0.01 (smallest "
        f"{relative[weakest]:.3g}, in {weakest}) and none marked redundant; set prune.filter_fraction (e.g. 0.25) to "
        "remove that fraction of every group's weakest filters")
    with torch.no_grad():
        model.conv1.weight[:2] = 0.0  # 2 of 40 below the threshold: 38 kept rounds back to 40
    assert choose_filters(model, groups, cfg) == {}
    assert why_nothing_removed(model, groups, cfg, L2Norm()).startswith(
        "2 filter(s) below prune.filter_norm_threshold=0.01 or marked redundant, but too few in any group to remove a "
        "multiple of prune.round_to=8 channels")


def test_grouped_units_round_in_channels():
    """Units of 8 channels (regnet group width, whole groups removed): round_to=16 keeps an even number of groups."""
    torch.manual_seed(0)
    model, x = timm.create_model("regnetx_002", pretrained=False, num_classes=10).eval(), torch.randn(1, 3, 32, 32)
    groups = build_channel_groups(model, x, grouped_conv="whole_groups")
    drop = select_channels(model, groups, L2Norm(), ChannelSelection(fraction=0.3, round_to=16))
    grouped = [g for g in groups if g.unit_channels == 8 and g.id in drop]
    assert grouped
    for g in grouped:
        kept_channels = (g.num_channels - len(drop[g.id])) * g.unit_channels
        assert kept_channels % 16 == 0, (g.id, kept_channels)


def test_grouped_conv_setting_reaches_method2_removal():
    """`prune.grouped_conv`: Method 2's removal narrows every group of regnetx_002's grouped convs (default, the
    group count stays) or removes whole groups (each group keeps its 8 channels)."""
    torch.manual_seed(0)
    model = timm.create_model("regnetx_002", pretrained=False, num_classes=10).eval()
    shapes = {}
    for mode in ("within_groups", "whole_groups"):
        cfg = PruneConfig(rule="filters", filter_fraction=0.3, round_to=1, grouped_conv=mode)
        conv2 = remove_filters(model, (3, 32, 32), cfg)[0].get_submodule("s4.b1.conv2.conv")
        shapes[mode] = (conv2.groups, conv2.weight.shape[1])
    assert shapes["within_groups"] == (46, 5) and shapes["whole_groups"][1] == 8 > 5, shapes
    assert shapes["whole_groups"][0] < 46, shapes


def test_allow_inexact_groups_are_reported_inexact():
    """`prune.allow_inexact`: LayerNorm-normalized channel groups are pruned too and their rows say exact=False."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_tiny", pretrained=False, num_classes=10, depths=(1, 1, 1, 1),
                              dims=(16, 32, 48, 64)).eval()
    cfg = PruneConfig(rule="filters", filter_fraction=0.5, round_to=1)
    _, kept, _ = remove_filters(model, (3, 32, 32), cfg)
    assert all(r.get("exact", True) for r in kept) and any(r["kept"] < r["total"] for r in kept)
    pruned, kept, _ = remove_filters(model, (3, 32, 32), cfg.model_copy(update={"allow_inexact": True}))
    inexact = {r["group"] for r in kept if r.get("exact") is False}
    assert "stem.0" in inexact and pruned.stem[0].out_channels == 8


def test_inexact_groups_kept_whole_say_why():
    """Trial 28: ConvNeXt's LayerNorm-normalized residual groups stayed at 100 % with no reason anywhere; now their
    kept_filters rows say `kept_because` and one selection note names them and `prune.allow_inexact=true`."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_tiny", pretrained=False, num_classes=10, depths=(1, 1, 1, 1),
                              dims=(16, 32, 48, 64)).eval()
    cfg = PruneConfig(rule="filters", filter_fraction=0.34, round_to=1)
    groups, counts = build_channel_groups(model, torch.zeros(1, 3, 32, 32)), []
    _, kept, _ = remove_filters(model, (3, 32, 32), cfg, groups=groups, counts=counts)
    because = {r["group"]: r["kept_because"] for r in kept if "kept_because" in r}
    residual = ["stem.0", "stages.1.downsample.1", "stages.2.downsample.1", "stages.3.downsample.1"]
    assert because == dict.fromkeys(residual, "inexact (LayerNorm)"), kept
    assert all(r["kept"] == r["total"] for r in kept if r["group"] in because), kept
    assert selection_notes(groups, counts, cfg) == [
        f"4 groups kept whole because their removal would be inexact (LayerNorm): {', '.join(residual)}; "
        "prune.allow_inexact=true removes them too"]
    allowed, counts = cfg.model_copy(update={"allow_inexact": True}), []
    _, kept, _ = remove_filters(model, (3, 32, 32), allowed, groups=groups, counts=counts)
    assert not any("kept_because" in r for r in kept) and selection_notes(groups, counts, allowed) == []


@pytest.mark.parametrize("fraction, expected", [
    (0.34, "2 of 3 units of 64 channels (67 %) in 2 groups: blocks.0.attn.qkv, blocks.1.attn.qkv"),
    (0.6, "2 of 3 units of 64 channels (67 %) in 2 groups: blocks.0.attn.qkv, blocks.1.attn.qkv"),
    (0.67, None),  # 3 asked, the cap keeps one head (the cap's own note): 2 of 3 is what was asked
])
def test_whole_heads_say_what_share_they_remove(fraction: float, expected: str | None) -> None:
    """Trial 28: filter_fraction 0.34 on ViT's 3 heads removes 2 (67 %) with no note; now one line says it, whatever
    round_to (it does not change heads of 64 channels; the MLP's 768 channels lose 262 or 264 and need no note)."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=4, img_size=32, patch_size=4, depth=2).eval()
    groups = build_channel_groups(model, torch.zeros(1, 3, 32, 32))
    for round_to in (1, 8):
        cfg, counts = PruneConfig(rule="filters", filter_fraction=fraction, round_to=round_to), []
        choose_filters(model, groups, cfg, counts=counts)
        notes = [n for n in selection_notes(groups, counts, cfg) if "units go whole" in n]
        assert notes == ([f"prune.filter_fraction={fraction:g} removes {expected}; units go whole (heads, conv "
                          "groups)"] if expected else []), notes


def test_bn_scale_ranks_groups_without_batch_norm_by_l2(net):
    """bn_scale on a model with some BatchNorm: a group no batch norm scales (conv2 here has none; squeeze-excite
    reductions in MobileNetV3) is ranked by l2 instead of being left whole."""
    model, x, _ = net
    model.bn2 = nn.Identity()
    groups = build_channel_groups(model, x)
    conv2 = next(g for g in groups if g.id == "conv2")
    torch.testing.assert_close(BNScale()(model, conv2), L2Norm()(model, conv2))
    cfg = PruneConfig(rule="filters", channel_score="bn_scale", filter_fraction=0.25, round_to=1)
    assert {gid: len(idx) for gid, idx in choose_filters(model, groups, cfg).items()} == {"conv1": 10, "conv2": 6}


class Sixteens(nn.Module):
    """stem conv(3→16) → BN → ReLU, blk conv1(16→16) → BN → ReLU, pool → linear: two groups of 16 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blk = nn.Module()
        self.blk.conv1, self.blk.bn1 = nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.blk.bn1(self.blk.conv1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("settings, kept, expected", [
    # fresh-user trial: 25 % of 16 = 4 selected, 12 kept rounds up to 16 (tie with 8: keep more), silently
    ({"filter_fraction": 0.25}, 16, ["prune.round_to=8: 2 groups of 16 channels keep all 16 (12 rounded up): stem.0, "
                                     "blk.conv1; lower round_to to remove from them"]),
    # 90 % asked, 75 % (12) allowed, 4 kept rounds to 8
    ({"filter_fraction": 0.9}, 8, ["prune.max_filter_fraction=0.75 caps filter_fraction 0.9 in 2 groups"]),
    ({"filter_fraction": 0.9, "round_to": 1}, 4, ["prune.max_filter_fraction=0.75 caps filter_fraction 0.9 in 2 "
                                                  "groups"]),
    ({"filter_fraction": 0.5}, 8, []),  # neither changed anything
])
def test_rounding_and_the_cap_say_what_they_changed(settings: dict, kept: int, expected: list[str]) -> None:
    torch.manual_seed(0)
    model, x = Sixteens().eval(), torch.randn(2, 3, 8, 8)
    groups = build_channel_groups(model, x)
    cfg = PruneConfig(rule="filters", **settings)
    counts: list = []
    drop = choose_filters(model, groups, cfg, counts=counts)
    assert kept_counts(groups, drop) == {g.id: kept for g in groups if g.prunable}
    assert selection_notes(groups, counts, cfg) == expected


def test_the_cap_of_dead_channels_is_said(net):
    model, _, groups = net
    with torch.no_grad():
        model.conv1.weight[:35] = 0.0  # 35 of 40 dead: the cap (75 %) keeps 10, 5 of them dead
    cfg = PruneConfig(rule="filters", round_to=1)
    counts: list = []
    choose_filters(model, groups, cfg, counts=counts)
    assert selection_notes(groups, counts, cfg) == [
        "prune.max_filter_fraction=0.75 caps the removal in 1 group (5 selected channel(s) stay)"]
