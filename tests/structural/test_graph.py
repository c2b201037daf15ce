"""Channel-group structure on known architectures, custom constructs, and the errors for unsupported ones."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from sparsetrain.structural.graph import StructuralPruningError, build_channel_groups, producer_weights
from sparsetrain.structural.remove import remove_channels, zero_channels


def by_id(groups):
    return {g.id: g for g in groups}


def slices(group, role: str = "producers") -> set[tuple[str, str, int, int, int]]:
    return {(s.module, s.param, s.dim, s.offset, s.expand) for s in getattr(group, role)}


class ConcatBNNet(nn.Module):
    """Concat → BN (producer offsets), a layer scale and a divisor buffer, flatten of C×4×4 → linear (expand 16)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 5, 1)
        self.bn = nn.BatchNorm2d(11)
        self.c = nn.Conv2d(11, 7, 3, padding=1, bias=False)
        self.scale = nn.Parameter(torch.rand(7) + 0.5)
        self.register_buffer("div", torch.rand(7, 1, 1) + 0.5)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(7 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))
        x = torch.nn.functional.gelu(self.c(x)) * self.scale.view(1, -1, 1, 1) / self.div
        return self.fc(torch.flatten(self.pool(x), 1))


class Blocked(nn.Module):
    """conv1 → <construct> → conv2 → global pool; `construct` picks what sits between."""

    def __init__(self, construct: str) -> None:
        super().__init__()
        self.construct = construct
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.construct == "channel_mean":
            x = x * torch.sigmoid(x.mean(1, keepdim=True))
        elif self.construct == "sigmoid":
            x = torch.sigmoid(x)
        elif self.construct == "slice":  # a slice with a constant bound inside the concatenation
            x = torch.cat([x, x], dim=1)[:, :8]
            x = x * torch.sigmoid(x.mean((2, 3), keepdim=True))
        elif self.construct == "shuffle":  # ShuffleNet's channel shuffle splits the channel axis
            x = x.view(x.shape[0], 2, 4, 8, 8).transpose(1, 2).reshape(x.shape[0], 8, 8, 8)
        elif self.construct == "softmax":
            x = torch.softmax(x, dim=1)
        return self.conv2(x).mean((2, 3))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if x.sum() > 0 else x  # data-dependent control flow


def test_concat_bn_offsets_and_flatten_expand():
    groups = by_id(build_channel_groups(ConcatBNNet(), torch.randn(1, 3, 8, 8)))
    assert ("bn", "weight", 0, 6, 1) in slices(groups["b"])
    assert slices(groups["a"], "consumers") == {("c", "weight", 1, 0, 1)}
    assert slices(groups["b"], "consumers") == {("c", "weight", 1, 6, 1)}
    assert slices(groups["c"], "consumers") == {("fc", "weight", 1, 0, 16)}
    assert ("", "scale", 0, 0, 1) in slices(groups["c"])
    assert [s.kind for s in groups["c"].producers if s.param == "div"] == ["stat"]  # never zeroed: x / 0 is NaN
    assert not groups["fc"].prunable and not groups["input:x"].prunable


def test_concat_bn_removal_equals_masking():
    torch.manual_seed(0)
    model = ConcatBNNet().eval()
    model.bn.running_mean.normal_()
    model.bn.bias.data.normal_()
    x = torch.randn(2, 3, 8, 8)
    groups = build_channel_groups(model, x)
    drop = {"a": torch.tensor([0, 4]), "b": torch.tensor([2]), "c": torch.tensor([1, 5, 6])}
    masked = copy.deepcopy(model)
    zero_channels(masked, drop, groups=groups)
    pruned = remove_channels(model, drop, groups=groups)
    assert pruned.fc.in_features == 4 * 16 and pruned.bn.num_features == 8 and pruned.c.in_channels == 8
    assert pruned.div.shape == (4, 1, 1)
    with torch.no_grad():
        diff = (pruned(x) - masked(x)).abs().max().item()
    assert diff <= 1e-5, f"removed vs masked: {diff:.3e}"


CONSTRUCTS = ["channel_mean", "sigmoid", "slice", "shuffle", "softmax"]


@pytest.mark.parametrize("construct, fragment", [
    ("channel_mean", "'mean' over the channel axis at node 'mean'"),
    ("sigmoid", "reaches 'conv2' non-zero"),
    ("slice", "channel slice [0:8] with fixed bounds at node 'getitem'"),
    ("shuffle", "reshape splitting or moving the channel axis at node 'view'"),
    ("softmax", "op 'softmax' at node 'softmax'"),
])
def test_unsupported_construct_blocks_group_and_names_layer(construct, fragment):
    model = Blocked(construct)
    groups = by_id(build_channel_groups(model, torch.randn(1, 3, 8, 8)))
    assert not groups["conv1"].prunable and fragment in groups["conv1"].reason
    with pytest.raises(StructuralPruningError, match="conv1") as err:
        remove_channels(model, {"conv1": torch.tensor([0])}, groups=list(groups.values()))
    assert fragment in str(err.value)


@pytest.mark.parametrize("construct", CONSTRUCTS)
def test_removal_of_what_stays_prunable_is_exact(construct):
    """Blocking is sound: around each unsupported construct, the groups left prunable still remove exactly."""
    torch.manual_seed(0)
    model, x = Blocked(construct).eval(), torch.randn(2, 3, 8, 8)
    groups = build_channel_groups(model, x)
    drop = {g.id: torch.tensor([0]) for g in groups if g.prunable and g.num_channels > 1}
    masked = copy.deepcopy(model)
    zero_channels(masked, drop, groups=groups)
    with torch.no_grad():
        diff = (remove_channels(model, drop, groups=groups)(x) - masked(x)).abs().max().item()
    assert diff <= 1e-5, f"{construct}: removed vs masked {diff:.3e}"


def test_producer_gradients_are_filter_rows():
    model = ConcatBNNet()
    x = torch.randn(2, 3, 8, 8)
    groups = by_id(build_channel_groups(model, x))
    model(x).sum().backward()
    (name, g), = producer_weights(model, groups["c"], grad=True)
    assert name == "c.weight" and torch.equal(g, model.c.weight.grad)


def test_untraceable_model_raises():
    with pytest.raises(StructuralPruningError, match="cannot trace Untraceable"):
        build_channel_groups(Untraceable(), torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize("drop, message", [
    ({"nope": torch.tensor([0])}, "unknown channel group 'nope'"),
    ({"a": torch.arange(6)}, "cannot remove all 6 channels"),
    ({"a": torch.tensor([6])}, r"indices must lie in \[0, 6\)"),
])
def test_bad_drop_is_refused(drop, message):
    model = ConcatBNNet()
    with pytest.raises(StructuralPruningError, match=message):
        remove_channels(model, drop, example_input=torch.randn(1, 3, 8, 8))


def test_resnet_residual_stream_is_one_group():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    groups = by_id(build_channel_groups(model, torch.randn(1, 3, 32, 32)))
    stream = groups["conv1"]  # stem conv → maxpool → every layer1 residual add
    assert {"bn1", "layer1.0.bn2", "layer1.1.bn2"} <= {s.module for s in stream.producers}
    assert {"layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0"} == {
        s.module for s in stream.consumers}
    stage2 = groups["layer2.0.conv2"]  # first filter producer, in graph order, of the layer2 stream
    assert stage2.num_channels == 128
    assert {"layer2.0.downsample.0", "layer2.0.bn2", "layer2.1.bn2"} <= {s.module for s in stage2.producers}


def test_mobilenet_depthwise_and_squeeze_excite():
    model = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=10)
    groups = by_id(build_channel_groups(model, torch.randn(1, 3, 32, 32)))
    block = {s.module for s in groups["blocks.2.0.conv_pw"].producers}
    # Depthwise conv and the SE expand conv (which gates these channels) produce the block's channels.
    assert {"blocks.2.0.conv_dw", "blocks.2.0.se.conv_expand", "blocks.2.0.bn2"} <= block
    se = groups["blocks.2.0.se.conv_reduce"]
    assert se.prunable and {s.module for s in se.consumers} == {"blocks.2.0.se.conv_expand"}


def test_convnext_layernorm_channels_inexact_mlp_exact():
    model = timm.create_model("convnext_tiny", pretrained=False, num_classes=10, depths=(1, 1, 1, 1))
    groups = by_id(build_channel_groups(model, torch.randn(1, 3, 32, 32)))
    stem = groups["stem.0"]
    assert stem.prunable and not stem.exact and any("LayerNorm 'stem.1'" in r for r in stem.inexact)
    hidden = groups["stages.0.blocks.0.mlp.fc1"]
    assert hidden.prunable and hidden.exact and {s.module for s in hidden.consumers} == {"stages.0.blocks.0.mlp.fc2"}
    with pytest.raises(StructuralPruningError, match="allow_inexact"):
        remove_channels(model, {"stem.0": torch.tensor([0])}, groups=list(groups.values()))


def test_unet_skip_concat_offsets():
    pytest.importorskip("sparsetrain.models.unet")
    import sparsetrain.models  # noqa: F401  (registers unet)

    model = timm.create_model("unet", pretrained=False, base_width=4, depth=2, up_mode="transpose")
    groups = by_id(build_channel_groups(model, torch.randn(1, 3, 16, 16)))
    # Up.forward concatenates [skip, up(x)]: the skip's channels come first, the upsampled ones after.
    assert ("ups.1.conv.0", "weight", 1, 0, 1) in slices(groups["stem.3"], "consumers")
    assert ("ups.1.conv.0", "weight", 1, 4, 1) in slices(groups["ups.1.up"], "consumers")
    assert not groups["head"].prunable
