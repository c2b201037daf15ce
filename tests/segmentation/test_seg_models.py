"""UNet and LR-ASPP MobileNetV3: timm registration, output shapes, fx tracing (needed by the structural pruner)."""

from __future__ import annotations

import operator

import pytest
import timm
import torch
import torch.fx

import sparsetrain.models  # noqa: F401  (registers the models)
from sparsetrain.models.unet import UNet, check_unet_input

MODELS = ["unet_tiny", "unet_small", "lraspp_mobilenetv3_small_100", "lraspp_mobilenetv3_large_100"]


@pytest.fixture(scope="module")
def built() -> dict[tuple[str, int, int], torch.nn.Module]:
    """Each model once per (num_classes, in_chans) used below; eval mode so BN uses running stats."""
    cache: dict[tuple[str, int, int], torch.nn.Module] = {}

    def get(name: str, num_classes: int, in_chans: int) -> torch.nn.Module:
        key = (name, num_classes, in_chans)
        if key not in cache:
            torch.manual_seed(0)
            cache[key] = timm.create_model(name, num_classes=num_classes, in_chans=in_chans).eval()
        return cache[key]

    return get


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("num_classes", "in_chans"), [(1, 3), (4, 1)])
def test_output_is_per_pixel_logits(built, name: str, num_classes: int, in_chans: int) -> None:
    model = built(name, num_classes, in_chans)
    x = torch.randn(2, in_chans, 32, 48)  # non-square, sides divisible by 2**depth for every UNet here
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, num_classes, 32, 48), f"{name}: output {tuple(out.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite logits"


@pytest.mark.parametrize("name", MODELS)
def test_fx_trace_matches_eager(built, name: str) -> None:
    model = built(name, 1, 3)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0, msg=f"{name}: traced != eager")


@pytest.mark.parametrize("up_mode", ["bilinear", "transpose"])
def test_unet_skips_are_concatenations(up_mode: str) -> None:
    """One torch.cat per decoder level, each joining the encoder skip with the upsampled features."""
    model = UNet(num_classes=2, in_chans=3, base_width=4, depth=3, up_mode=up_mode).eval()
    graph = torch.fx.symbolic_trace(model).graph
    cats = [n for n in graph.nodes if n.op == "call_function" and n.target is torch.cat]
    assert len(cats) == 3, f"{up_mode}: {len(cats)} concatenations"
    x = torch.randn(1, 3, 16, 24)
    assert model(x).shape == (1, 2, 16, 24)
    assert not any(n.target in (operator.getitem, getattr) and "shape" in str(n.args) for n in graph.nodes), \
        "UNet forward must not read input shapes (keeps the graph static)"


def test_unet_widths_follow_base_width_and_depth() -> None:
    model = timm.create_model("unet", base_width=4, depth=2, in_chans=1)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].in_channels == 1 and convs[0].out_channels == 4
    assert max(c.out_channels for c in convs) == 16  # 4 * 2**2 at the bottom
    assert model.get_classifier().out_channels == 1
    model.reset_classifier(5)
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 5, 8, 8)


def test_unet_rejects_pretrained_and_bad_args() -> None:
    with pytest.raises(RuntimeError, match="No pretrained weights exist for unet_small"):  # timm's own check
        timm.create_model("unet_small", pretrained=True)
    with pytest.raises(ValueError, match="up_mode"):
        UNet(up_mode="nearest")
    with pytest.raises(ValueError, match="depth must be >= 1"):
        UNet(depth=0)


def test_check_unet_input_message() -> None:
    check_unet_input(64, 48, depth=4)
    with pytest.raises(ValueError, match=r"depth 3 needs sides divisible by 8, got 60×64"):
        check_unet_input(60, 64, depth=3)


def test_lraspp_uses_one_eighth_and_one_sixteenth_features() -> None:
    model = timm.create_model("lraspp_mobilenetv3_small_100", num_classes=2).eval()
    assert model.backbone.feature_info.reduction() == [8, 16]
    with torch.no_grad():
        low, high = model.forward_features(torch.randn(1, 3, 64, 64))
    assert low.shape[-2:] == (8, 8) and high.shape[-2:] == (4, 4)


def test_unet_forward_rejects_sides_not_divisible_by_2_to_depth() -> None:
    model = timm.create_model("unet_tiny").eval()  # depth 2
    with pytest.raises(ValueError, match=r"depth 2 needs sides divisible by 4, got 30×32"):
        model(torch.randn(1, 3, 30, 32))
