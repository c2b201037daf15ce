"""Removing channels whose filters are zero keeps the function: their constant output (bias / BN shift through
the activation) is folded into the consumers' biases where that is exact, and such channels are not "dead" where
it is not (issue 10, fault 7)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from sparsetrain.config.schema import PruneConfig
from sparsetrain.pruning.filters import choose_filters, remove_filters
from sparsetrain.structural import build_channel_groups, remove_channels
from sparsetrain.structural.fold import fold_constant_channels
from tests.structural.test_remove_timm import randomize

ATOL = 1e-5


def zero_filters(model: nn.Module, groups, channels: dict[str, list[int]]) -> None:
    """Zero the conv/linear rows of the given channels (what sparsity training drives them to)."""
    by_id = {g.id: g for g in groups}
    with torch.no_grad():
        for gid, idx in channels.items():
            for s in by_id[gid].producers:
                if s.kind == "filter":
                    getattr(model.get_submodule(s.module), s.param).index_fill_(s.dim, torch.tensor(idx), 0)


def max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


class ConvMLP(nn.Module):
    """conv → BN → ReLU → 2×2 pool → flatten → linear (a flattened consumer: 4 positions per channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(2), nn.Linear(8 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    randomize(model, seed=1)
    return model


def test_resnet18_dead_channels_are_removed_without_changing_the_output(resnet18):
    """The issue's case: zero-filter channels with a BN shift; the prune step must keep the output (<= 1e-5)."""
    x = torch.randn(2, 3, 64, 64)
    groups = build_channel_groups(resnet18, x)
    model = copy.deepcopy(resnet18)
    # layer4's residual stream reaches the classifier through pooling: its constants fold exactly into fc;
    # layer1.0.conv1's channels reach a zero-padded 3x3 conv: folding would be exact only away from the borders.
    stream, inner = "layer4.0.conv2", "layer1.0.conv1"
    zero_filters(model, groups, {stream: [1, 5, 100, 300], inner: [2, 7]})
    with torch.no_grad():  # BN rest value = bias - weight * mean / sqrt(var + eps); zero means: rest = bias
        for bn, bias in (("layer4.0.bn2", -0.5), ("layer4.0.downsample.1", -0.2), ("layer4.1.bn2", 0.7),
                         ("layer1.0.bn1", 0.4)):
            channels = [2, 7] if bn.startswith("layer1") else [1, 5, 100, 300]
            model.get_submodule(bn).running_mean[channels] = 0.0
            model.get_submodule(bn).bias[channels] = bias  # stream: 0 after layer4.0's ReLU, 0.7 after layer4.1's
    drop = choose_filters(model, groups, PruneConfig(rule="filters", filter_fraction=0.0, round_to=1), None, x)
    assert drop[stream].tolist() == [1, 5, 100, 300], "zero-filter stream channels are dead"
    assert inner not in drop, "channels carrying a constant into a padded conv are not dead"

    unfolded = remove_channels(model, drop, groups=groups)
    assert max_diff(unfolded, model, x) > 1e-2, "removal without folding must change the output (test can fail)"
    folded = copy.deepcopy(model)
    report = fold_constant_channels(folded, groups, drop, x)
    assert report.exact == {stream: 4} and not report.approximate and not report.unfolded
    pruned = remove_channels(folded, drop, groups=groups)
    assert pruned.fc.in_features == 508
    diff = max_diff(pruned, model, x)
    assert diff <= ATOL, f"pruned vs trained resnet18: {diff:.3e}"


def test_folded_constants_reach_a_flattened_linear_and_a_biasless_1x1_conv():
    """Two more consumers of the same kind: flatten → linear (4 positions per channel) and a 1x1 conv without bias
    (a bias is added by the fold)."""
    torch.manual_seed(0)
    mlp = ConvMLP().eval()
    randomize(mlp, seed=3)
    x = torch.randn(3, 3, 8, 8)
    groups = build_channel_groups(mlp, x)
    zero_filters(mlp, groups, {"conv": [0, 3, 6]})
    folded = copy.deepcopy(mlp)
    fold_constant_channels(folded, groups, {"conv": torch.tensor([0, 3, 6])}, x)
    pruned = remove_channels(folded, {"conv": torch.tensor([0, 3, 6])}, groups=groups)
    assert pruned.fc.in_features == 5 * 4
    assert max_diff(pruned, mlp, x) <= ATOL

    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.Hardswish(),
                        nn.Conv2d(6, 4, 1, bias=False)).eval()
    randomize(net, seed=4)
    groups = build_channel_groups(net, x)
    zero_filters(net, groups, {"0": [1, 4]})
    folded = copy.deepcopy(net)
    report = fold_constant_channels(folded, groups, {"0": torch.tensor([1, 4])}, x)
    assert report.exact == {"0": 2} and folded[3].bias is not None
    pruned = remove_channels(folded, {"0": torch.tensor([1, 4])}, groups=groups)
    assert max_diff(pruned, net, x) <= ATOL


def test_padded_conv_fold_is_reported_approximate_and_exact_in_the_interior():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 4, 3, padding=1)).eval()
    randomize(net, seed=5)
    net[1].bias.data.abs_()  # positive shift: relu keeps it
    x = torch.randn(2, 3, 10, 10)
    groups = build_channel_groups(net, x)
    zero_filters(net, groups, {"0": [2]})
    folded = copy.deepcopy(net)
    report = fold_constant_channels(folded, groups, {"0": torch.tensor([2])}, x)
    assert report.approximate == {"0": 1}
    pruned = remove_channels(folded, {"0": torch.tensor([2])}, groups=groups)
    with torch.no_grad():
        diff = (pruned(x) - net(x)).abs()
    assert diff[..., 1:-1, 1:-1].max() <= ATOL and diff.max() > 1e-3, "exact inside, off at the zero-padded border"


def test_folded_model_round_trips_through_the_export(tmp_path, resnet18):
    from sparsetrain.structural.serialize import load_pruned_model, save_pruned_model

    x = torch.randn(1, 3, 32, 32)
    model = copy.deepcopy(resnet18)
    groups = build_channel_groups(model, x)
    drop = {"layer2.0.conv1": torch.tensor([0, 1])}  # consumer: layer2.0.conv2, a 3x3 conv without bias
    fold_constant_channels(model, groups, drop, x)
    pruned = remove_channels(model, drop, groups=groups)
    assert pruned.layer2[0].conv2.bias is not None
    out = save_pruned_model(pruned, tmp_path, meta={"model_name": "resnet18", "model_kwargs": {"num_classes": 10}})
    assert max_diff(load_pruned_model(out), pruned.eval(), x) == 0.0


def test_fold_into_a_consumer_that_loses_channels_too():
    """The bias a fold adds to conv b is sliced with b's own removed rows (it did not exist when traced)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    randomize(net, seed=6)
    x = torch.randn(2, 3, 6, 6)
    groups = build_channel_groups(net, x)
    drop = {"0": torch.tensor([1, 2, 5]), "3": torch.tensor([0, 4])}
    zero_filters(net, groups, {k: v.tolist() for k, v in drop.items()})
    folded = copy.deepcopy(net)
    report = fold_constant_channels(folded, groups, drop, x)
    assert report.exact == {"0": 3, "3": 2}
    pruned = remove_channels(folded, drop, groups=groups)
    assert pruned[3].bias.shape == (4,) and pruned[3].weight.shape == (4, 5, 1, 1)
    assert max_diff(pruned, net, x) <= ATOL


@pytest.fixture(scope="module")
def mobilenetv3() -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10).eval()
    randomize(model, seed=7)
    return model


# MobileNetV3 groups whose removed channels carry a constant: an inverted residual with squeeze-excite (the SE gate
# of a zero-filter channel is a constant too: hard_sigmoid of conv_expand's bias), one without SE, the residual
# stream of stage 4 (read by 1x1 convs) and the head conv read by the classifier through hardswish.
MNV3_DEAD = {"blocks.2.0.conv_pw": [1, 6, 40], "blocks.1.0.conv_pw": [0, 13], "blocks.4.0.conv_pwl": [2, 30],
             "conv_head": [5, 100, 900]}


def test_mobilenetv3_dead_channels_are_removed_without_changing_the_output(mobilenetv3):
    """Method 2's prune step on a MobileNetV3 whose zero-filter channels output hardswish(BN shift) constants."""
    x = torch.randn(2, 3, 64, 64)
    groups = build_channel_groups(mobilenetv3, x)
    model = copy.deepcopy(mobilenetv3)
    zero_filters(model, groups, MNV3_DEAD)
    cfg = PruneConfig(rule="filters", filter_fraction=0.0, round_to=1)
    drop = choose_filters(model, groups, cfg, None, x)
    assert {g: v.tolist() for g, v in drop.items()} == MNV3_DEAD, "exactly the zero-filter channels are dead"
    assert max_diff(remove_channels(model, drop, groups=groups), model, x) > 1e-2, "constants matter (can fail)"

    pruned, kept, folded = remove_filters(model, (3, 64, 64), cfg)
    assert folded == {"exact": 10, "approximate": 0, "unfolded": 0}
    assert pruned.conv_head.out_channels == 1021 and pruned.blocks[2][0].conv_pw.out_channels == 61
    diff = max_diff(pruned, model, x)
    assert diff <= ATOL, f"pruned vs trained MobileNetV3: {diff:.3e}"


def test_zero_bn_scale_channels_are_constant_and_folded(mobilenetv3):
    """Same kind, another cause: filters intact but BN scale 0 (network slimming drives gamma to 0), so the
    channel outputs act(beta). Scored by |gamma| (`channel_score: bn_scale`) and removed, the output is kept."""
    x = torch.randn(2, 3, 64, 64)
    model = copy.deepcopy(mobilenetv3)
    with torch.no_grad():  # blocks.1.0: conv_pw → bn1 → conv_dw → bn2 → conv_pwl (no SE); bn2 alone makes it constant
        for bn in ("bn1", "bn2"):
            model.blocks[1][0].get_submodule(bn).weight[[4, 21, 22]] = 0.0
    cfg = PruneConfig(rule="filters", filter_fraction=0.0, round_to=1, channel_score="bn_scale")
    pruned, kept, folded = remove_filters(model, (3, 64, 64), cfg)
    assert {r["group"]: r["total"] - r["kept"] for r in kept if r["kept"] < r["total"]} == {"blocks.1.0.conv_pw": 3}
    assert folded == {"exact": 3, "approximate": 0, "unfolded": 0}
    diff = max_diff(pruned, model, x)
    assert diff <= ATOL, f"pruned vs original: {diff:.3e}"
