"""Layer rules: each new rule removes what masking zeroes (exact rules to 1e-5 in fp32), updates the layer's
attributes, and round-trips through the export; LayerNorm over channels only on request; a user rule for a
custom layer is one class."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import fx, nn

from sparsetrain.structural import (
    ChannelSelection,
    L2Norm,
    LayerRule,
    StructuralPruningError,
    build_channel_groups,
    load_pruned_model,
    register_functional_rule,
    register_layer_rule,
    remove_channels,
    save_pruned_model,
    select_channels,
    zero_channels,
)
from tests.structural.test_remove_timm import randomize

ATOL = 1e-5


def prune_and_compare(model: nn.Module, x: torch.Tensor, *, allow_inexact: bool = False, fraction: float = 0.3,
                      grouped_conv: str = "within_groups"):
    """Drop `fraction` of every selectable group (weakest by L2); return (groups, drop, pruned, removed-vs-masked)."""
    groups = build_channel_groups(model, x, grouped_conv=grouped_conv)
    drop = select_channels(model, groups, L2Norm(), ChannelSelection(fraction=fraction, allow_inexact=allow_inexact))
    masked = copy.deepcopy(model)
    zero_channels(masked, drop, groups=groups, allow_inexact=allow_inexact)
    pruned = remove_channels(model, drop, groups=groups, allow_inexact=allow_inexact).eval()
    with torch.no_grad():
        assert (masked(x) - model(x)).abs().max() > 1e-4, "masking changed nothing: the comparison is not meaningful"
        diff = (pruned(x) - masked(x)).abs().max().item()
    return {g.id: g for g in groups}, drop, pruned, diff


def round_trip(pruned: nn.Module, x: torch.Tensor, tmp_path, name: str, kwargs: dict[str, Any]) -> float:
    out = save_pruned_model(pruned, tmp_path / name, meta={"model_name": name, "model_kwargs": kwargs})
    with torch.no_grad():
        return (load_pruned_model(out)(x) - pruned(x)).abs().max().item()


def timm_model(name: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    randomize(model, seed + 1)
    return model


def test_shrunk_1x1_conv_drops_its_no_op_dilation(tmp_path):
    """MobileNetV3 at output stride 16 dilates every conv of its last stage, 1x1 convs included, where dilation
    changes nothing but slows PyTorch's CPU conv ~20x: a shrunk 1x1 conv gets dilation 1 (exact, and it survives
    the export), a shrunk dilated depthwise 5x5 keeps its dilation."""
    import sparsetrain.models  # noqa: F401  (registers the LR-ASPP models with timm)

    model = timm_model("lraspp_mobilenetv3_small_100", num_classes=2)
    x = torch.randn(2, 3, 64, 64)
    dilated = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)}
    _, _, pruned, diff = prune_and_compare(model, x)
    assert diff <= ATOL, f"removed vs masked: {diff:.3e}"
    convs = {name: m for name, m in pruned.named_modules() if name in dilated}
    undilated = [name for name, m in convs.items() if m.kernel_size == (1, 1) and m.dilation == (1, 1)]
    assert undilated, f"no shrunk 1x1 conv lost its dilation among {sorted(dilated)}"
    assert all(m.dilation != (1, 1) for m in convs.values() if m.kernel_size != (1, 1))
    assert round_trip(pruned, x, tmp_path, "lraspp_mobilenetv3_small_100", {"num_classes": 2}) == 0


# ----- grouped convolutions (narrowed inside every group, or whole groups) and GroupNorm -------------------------


def test_grouped_conv_narrows_every_group(tmp_path):
    """regnety_002 stage 4: conv1 (1x1) → grouped conv2 (46 groups of 8) → SE gate → conv3; each group loses the
    same channels on both sides of conv2, the SE gate's rows follow conv2's outputs, the group count stays."""
    model = timm_model("regnety_002", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    groups, drop, pruned, diff = prune_and_compare(model, x)
    assert diff <= ATOL, f"removed vs masked: {diff:.3e}"
    inside, outside = groups["s4.b1.conv1.conv"], groups["s4.b1.conv2.conv"]  # conv2's input / output channels
    for group in (inside, outside):  # unit u = channel u of each of the 46 groups
        assert (group.num_channels, group.unit_channels, group.exact) == (8, 46, True)
    assert [s.repeat for s in outside.producers if s.module == "s4.b1.se.fc2"] == [46, 46], "SE gate rows follow"
    kept_in, kept_out = 8 - len(drop["s4.b1.conv1.conv"]), 8 - len(drop["s4.b1.conv2.conv"])
    conv2 = pruned.get_submodule("s4.b1.conv2.conv")
    assert (conv2.groups, conv2.weight.shape[1], conv2.in_channels, conv2.out_channels) == (
        46, kept_in, 46 * kept_in, 46 * kept_out), "every group narrowed, group count kept"
    assert pruned.get_submodule("s4.b1.conv1.conv").out_channels == 46 * kept_in
    assert round_trip(pruned, x, tmp_path, "regnety_002", {"num_classes": 10}) == 0.0


def test_grouped_conv_removes_whole_groups(tmp_path):
    model = timm_model("regnetx_002", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    groups, drop, pruned, diff = prune_and_compare(model, x, grouped_conv="whole_groups")
    assert diff <= ATOL, f"removed vs masked: {diff:.3e}"
    grouped = groups["s4.b1.conv1.conv"]  # conv1 → grouped conv2 (group width 8): one unit = 8 channels
    assert grouped.unit_channels == 8 and grouped.num_channels == 46 and grouped.exact
    conv2 = pruned.get_submodule("s4.b1.conv2.conv")
    kept = 46 - len(drop["s4.b1.conv1.conv"])
    assert (conv2.groups, conv2.in_channels, conv2.weight.shape[1]) == (kept, 8 * kept, 8), "whole groups removed"
    assert round_trip(pruned, x, tmp_path, "regnetx_002", {"num_classes": 10}) == 0.0


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.norm, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.Conv2d(16, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.norm(self.conv1(x))))


def test_groupnorm_removes_whole_norm_groups():
    torch.manual_seed(0)
    model = GroupNormNet().eval()
    nn.init.normal_(model.norm.bias)
    x = torch.randn(2, 3, 6, 6)
    groups, drop, pruned, diff = prune_and_compare(model, x, fraction=0.5)
    assert groups["conv1"].num_channels == 4 and groups["conv1"].unit_channels == 4 and groups["conv1"].exact
    assert diff <= ATOL, f"removed vs masked: {diff:.3e}"
    assert (pruned.norm.num_groups, pruned.norm.num_channels, pruned.conv1.out_channels) == (2, 8, 8)


# ----- attention heads -------------------------------------------------------------------------------------------


VIT = ("vit_tiny_patch16_224", {"num_classes": 10, "img_size": 32, "patch_size": 8, "depth": 2})


def test_vit_attention_heads_removed_whole_and_exact(tmp_path):
    name, kwargs = VIT
    model, x = timm_model(name, **kwargs), torch.randn(2, 3, 32, 32)
    groups, drop, pruned, diff = prune_and_compare(model, x)
    heads = groups["blocks.0.attn.qkv"]
    assert heads.num_channels == 3 and heads.unit_channels == 64 and heads.exact
    assert {s.offset for s in heads.producers if s.kind == "filter"} == {0, 192, 384}, "q, k and v rows of a head"
    assert "blocks.0.attn.qkv" in drop and not any(g.startswith("patch_embed") for g in drop), "stream is inexact"
    assert diff <= ATOL, f"removed vs masked: {diff:.3e}"
    attn = pruned.blocks[0].attn
    assert (attn.num_heads, attn.attn_dim, attn.qkv.out_features, attn.proj.in_features) == (2, 128, 384, 128)
    assert round_trip(pruned, x, tmp_path, name, kwargs) <= 1e-6


def test_swin_window_attention_heads_and_relative_position_table():
    model = timm_model("swin_tiny_patch4_window7_224", num_classes=10, img_size=56, embed_dim=32,
                       depths=(2, 2), num_heads=(2, 4))
    x = torch.randn(2, 3, 56, 56)
    groups, drop, pruned, diff = prune_and_compare(model, x, fraction=0.5)
    heads = groups["layers.1.blocks.1.attn.qkv"]
    assert heads.num_channels == 4 and ("layers.1.blocks.1.attn", "relative_position_bias_table", 1) in {
        (s.module, s.param, s.dim) for s in heads.producers}
    assert diff <= ATOL, f"removed vs masked: {diff:.3e}"
    attn = pruned.layers[1].blocks[1].attn
    assert attn.num_heads == 2 and attn.relative_position_bias_table.shape[1] == 2


# ----- pre-logits and blocks fx cannot trace ---------------------------------------------------------------------


def test_vgg_pre_logits_conv_mlp_hidden_channels(tmp_path):
    kwargs = {"num_classes": 10, "mlp_ratio": 1 / 64}  # 64 hidden channels instead of 4096: CI-sized
    model, x = timm_model("vgg11_bn", **kwargs), torch.randn(2, 3, 32, 32)  # 1x1 features: pooled up to 7x7
    groups, drop, pruned, diff = prune_and_compare(model, x)
    hidden = groups["pre_logits.fc1"]
    assert hidden.exact and {s.module for s in hidden.consumers} == {"pre_logits.fc2"}
    assert "features.25" in drop and groups["features.25"].consumers[0].module == "pre_logits.fc1"
    assert diff <= ATOL, f"removed vs masked: {diff:.3e}"
    assert pruned.pre_logits.fc1.out_channels == 64 - len(drop["pre_logits.fc1"])
    assert round_trip(pruned, x, tmp_path, "vgg11_bn", kwargs) <= 1e-6


def test_linear_pre_logits_hidden_features(tmp_path):
    """timm's NormMlpClassifierHead: pool → LayerNorm → flatten → pre_logits (Linear + GELU) → fc."""
    kwargs = {"num_classes": 10, "depths": (1, 1, 1, 1), "dims": (16, 32, 48, 64), "head_hidden_size": 24}
    model, x = timm_model("convnext_tiny", **kwargs), torch.randn(2, 3, 32, 32)
    groups, drop, pruned, diff = prune_and_compare(model, x)
    hidden = groups["head.pre_logits.fc"]
    assert hidden.exact and {s.module for s in hidden.consumers} == {"head.fc"} and "head.pre_logits.fc" in drop
    assert diff <= ATOL, f"removed vs masked: {diff:.3e}"
    assert pruned.head.fc.in_features == 24 - len(drop["head.pre_logits.fc"]) == 16
    assert round_trip(pruned, x, tmp_path, "convnext_tiny", kwargs) <= 1e-6


def test_mobilevit_block_exact_inside_inexact_transformer_width(tmp_path):
    model, x = timm_model("mobilevit_xxs", num_classes=10), torch.randn(2, 3, 64, 64)
    groups, drop, pruned, diff = prune_and_compare(model, x)
    width = groups["stages.2.1.conv_1x1"]  # the transformer width: LayerNorms normalize over it
    assert width.prunable and not width.exact and "stages.2.1.conv_1x1" not in drop
    assert groups["stages.2.1.transformer.0.attn.qkv"].exact and "stages.2.1.transformer.0.mlp.fc1" in drop
    assert diff <= ATOL, f"removed vs masked: {diff:.3e}"
    assert round_trip(pruned, x, tmp_path, "mobilevit_xxs", {"num_classes": 10}) <= 1e-6


def test_ghostnet_concatenated_halves_and_misaligned_residual_add():
    model, x = timm_model("ghostnet_100", num_classes=10), torch.randn(2, 3, 32, 32)
    groups, drop, pruned, diff = prune_and_compare(model, x)
    assert diff <= ATOL, f"removed vs masked: {diff:.3e}"
    # primary conv, cheap depthwise conv and both halves of the shortcut conv are one group
    group = groups["blocks.3.0.ghost2.primary_conv.0"]
    assert {("blocks.3.0.shortcut.2", 0), ("blocks.3.0.shortcut.2", 20)} <= {
        (s.module, s.offset) for s in group.producers if s.kind == "filter"}


class SliceNet(nn.Module):
    """Slices with constant bounds: channels before the bound cannot be removed, channels after it can."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(6, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        return self.c(F.relu(y[:, 4:])) + y[:, :4].mean(1, keepdim=True)


def test_slice_with_constant_bounds():
    torch.manual_seed(0)
    model, x = SliceNet().eval(), torch.randn(2, 3, 4, 4)
    groups = {g.id: g for g in build_channel_groups(model, x)}
    assert not groups["a"].prunable and "channel slice [4:10] with fixed bounds" in groups["a"].reason
    assert groups["b"].prunable and groups["b"].exact
    _, drop, pruned, diff = prune_and_compare(model, x, fraction=0.5)
    assert set(drop) == {"b"} and diff <= ATOL


# ----- LayerNorm over channels: inexact, on request ----------------------------------------------------------------


class LayerNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.norm = nn.Conv2d(3, 16, 3, padding=1), timm.layers.LayerNorm2d(16)
        self.conv, self.head = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.conv(self.norm(self.stem(x)))).mean((2, 3)))


def test_layernorm_channels_removed_only_with_allow_inexact():
    model = timm_model("convnext_tiny", num_classes=10, depths=(1, 1, 1, 1), dims=(16, 32, 48, 64))
    x = torch.randn(2, 3, 32, 32)
    groups, drop, _, diff = prune_and_compare(model, x)
    assert all(groups[g].exact for g in drop) and diff <= ATOL, "exact groups only by default"
    with pytest.raises(StructuralPruningError, match="allow_inexact"):
        remove_channels(model, {"stem.0": torch.tensor([0])}, groups=list(groups.values()))
    groups, drop, _, diff = prune_and_compare(model, x, allow_inexact=True)
    assert "stem.0" in drop and diff > 1e-4, "removing LayerNorm-normalized channels changes the others"


def test_inexact_removal_is_recovered_by_fine_tuning():
    """Fit a target, remove 30 % of the LayerNorm-normalized channels, fine-tune: the loss comes back down."""
    torch.manual_seed(0)
    model, x = LayerNormNet(), torch.randn(32, 3, 4, 4)
    target = torch.randn(32, 4)

    def fit(m: nn.Module, steps: int) -> float:
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(steps):
            opt.zero_grad()
            loss = F.mse_loss(m(x), target)
            loss.backward()
            opt.step()
        with torch.no_grad():
            return F.mse_loss(m(x), target).item()

    trained = fit(model, 150)
    groups = build_channel_groups(model, x)
    drop = select_channels(model, groups, L2Norm(), ChannelSelection(fraction=0.3, allow_inexact=True))
    assert "stem" in drop
    pruned = remove_channels(model, drop, groups=groups, allow_inexact=True)
    with torch.no_grad():
        after_removal = F.mse_loss(pruned(x), target).item()
    recovered = fit(pruned, 60)
    assert after_removal > 2 * trained, (trained, after_removal)
    assert recovered < (trained + after_removal) / 4, (trained, after_removal, recovered)


# ----- a user rule for a custom layer ------------------------------------------------------------------------------


class ScaledConv(nn.Module):
    """A custom layer fx cannot trace (data-dependent branch); its weight is called `kernel`."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.in_chs, self.out_chs = in_chs, out_chs
        self.kernel = nn.Parameter(torch.randn(out_chs, in_chs, 3, 3) * 0.2)
        self.shift = nn.Parameter(torch.randn(out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 2.0 if x.abs().mean() > 10 else 1.0
        return F.conv2d(x, self.kernel * scale, padding=1) + self.shift.view(1, -1, 1, 1)


class ScaledConvRule(LayerRule):
    """The whole rule a custom layer needs: how it couples, shrinks and is rebuilt."""

    types = (ScaledConv,)

    def trace(self, ctx, node: fx.Node, name: str, module: nn.Module, x: Any) -> Any:
        ctx.consume(x, name, "kernel", 1, 1, name)
        out = ctx.fresh(node, name)
        ctx.produce(out, name, "kernel", 0, "filter")
        ctx.produce(out, name, "shift", 0, "bias")
        return out

    def attributes(self, module: nn.Module) -> dict[str, Any]:
        return {"in_chs": module.in_chs, "out_chs": module.out_chs}

    def shrink(self, name: str, module: nn.Module, old) -> None:
        module.out_chs, module.in_chs = module.kernel.shape[:2]


class CustomNet(nn.Module):
    def __init__(self, num_classes: int = 3, **_: Any) -> None:
        super().__init__()
        self.a, self.b = ScaledConv(3, 8), ScaledConv(8, 8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.b(F.relu(self.a(x)))).mean((2, 3)))


@register_model
def sparsetrain_test_custom_net(pretrained: bool = False, **kwargs: Any) -> CustomNet:
    return CustomNet(**{k: v for k, v in kwargs.items() if k == "num_classes"})


def test_custom_layer_rule_is_one_registered_class(tmp_path):
    torch.manual_seed(0)
    model, x = timm_model("sparsetrain_test_custom_net"), torch.randn(2, 3, 8, 8)
    with pytest.raises(StructuralPruningError, match="cannot trace"):  # without a rule, fx traces into it
        build_channel_groups(model, x)
    register_layer_rule(ScaledConvRule)
    groups, drop, pruned, diff = prune_and_compare(model, x, fraction=0.5)
    assert set(drop) == {"a", "b"} and diff <= ATOL
    assert (pruned.b.in_chs, pruned.b.out_chs) == (4, 4)
    assert round_trip(pruned, x, tmp_path, "sparsetrain_test_custom_net", {}) == 0.0


# ----- a user rule for a functional op ----------------------------------------------------------------------------


def channel_affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A per-channel affine of the user's own (one opaque call in the traced graph: fx.wrap below)."""
    return x * weight[:, None, None] + bias[:, None, None]


fx.wrap("channel_affine")


class AffineNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.aff, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Module(), nn.Conv2d(8, 4, 1)
        self.aff.weight, self.aff.bias = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.randn(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(channel_affine(self.conv1(x), self.aff.weight, self.aff.bias)))


def channel_affine_rule(ctx, node: fx.Node, x: Any) -> Any:
    """Its scale and shift are producers of the channels: zeroed with them, the output channel is zero."""
    for arg in node.args[1:3]:
        module, param = ctx.param_ref(arg)
        ctx.produce(x, module, param, 0, "norm")
    return ctx.passthrough(x, node, zero=True)


def test_functional_op_rule_is_one_registered_function():
    torch.manual_seed(0)
    model, x = AffineNet().eval(), torch.randn(2, 3, 6, 6)
    before = {g.id: g for g in build_channel_groups(model, x)}["conv1"]
    assert not before.prunable and "unsupported op 'channel_affine'" in before.reason
    register_functional_rule(channel_affine_rule, "channel_affine")
    groups, drop, pruned, diff = prune_and_compare(model, x, fraction=0.5)
    assert "conv1" in drop and groups["conv1"].exact and diff <= ATOL
    assert pruned.aff.weight.shape == pruned.aff.bias.shape == (4,) and pruned.conv2.in_channels == 4


# ----- parameters reshaped to sizes written in the code ----------------------------------------------------------


class FixedViewNet(nn.Module):
    """A layer scale viewed to a shape stored at construction: removal could not shrink it without a rule."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.gamma, self.shape = nn.Parameter(torch.rand(8) + 0.5), (8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(x)) * self.gamma.view(self.shape))


def test_parameter_reshaped_to_fixed_sizes_blocks_its_group():
    torch.manual_seed(0)
    model, x = FixedViewNet().eval(), torch.randn(2, 3, 6, 6)
    groups = {g.id: g for g in build_channel_groups(model, x)}
    assert not groups["conv"].prunable and "'gamma' is reshaped to sizes fixed in the code" in groups["conv"].reason


def test_metaformer_layer_scale_rule_shrinks_its_shape(tmp_path):
    """PoolFormer: the stream is normalized by one-group GroupNorms (inexact); its layer scales `Scale` keep a
    `shape` attribute that the rule shrinks with the vector, so the inexact removal runs and reloads."""
    model, x = timm_model("poolformer_s12", num_classes=10), torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # layer scales start at 1e-5: make the blocks matter
        for name, p in model.named_parameters():
            if name.endswith(".scale"):
                p.copy_(torch.rand(p.shape) + 0.5)
    groups, drop, pruned, _ = prune_and_compare(model, x)
    assert "stem.conv" not in drop and groups["stem.conv"].prunable and not groups["stem.conv"].exact
    groups, drop, pruned, _ = prune_and_compare(model, x, allow_inexact=True)
    kept = 64 - len(drop["stem.conv"])
    assert pruned.stages[0].blocks[0].layer_scale1.shape == (kept, 1, 1)
    with torch.no_grad():
        assert pruned(x).shape == (2, 10)
    assert round_trip(pruned, x, tmp_path, "poolformer_s12", {"num_classes": 10}) <= 1e-6


class FixedReshapeNet(nn.Module):
    """An activation reshaped with its channel count written in the code (8), next to one that reads it from x."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 6, 1), nn.Linear(6 * 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.a(x)).reshape(x.shape[0], 8, 16).mean(2)
        b = F.relu(self.b(x)).reshape(x.shape[0], -1)
        return self.head(b) + a.sum(1, keepdim=True)


def test_activation_reshaped_to_fixed_channel_count_blocks_its_group():
    torch.manual_seed(0)
    model, x = FixedReshapeNet().eval(), torch.randn(2, 3, 4, 4)
    groups = {g.id: g for g in build_channel_groups(model, x)}
    assert not groups["a"].prunable and "reshape to sizes fixed in the code" in groups["a"].reason
    assert groups["b"].prunable, "a size read from the tensor follows the removal"
    _, drop, _, diff = prune_and_compare(model, x, fraction=0.5)
    assert set(drop) == {"b"} and diff <= ATOL
