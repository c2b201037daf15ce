"""save_pruned_model/load_pruned_model edge cases and profile_model numbers."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from torch import nn

from sparsetrain.structural.graph import StructuralPruningError, build_channel_groups
from sparsetrain.structural.profile import profile_model
from sparsetrain.structural.remove import remove_channels
from sparsetrain.structural.serialize import ARCH_FILE, load_pruned_model, save_pruned_model

NAME, KWARGS = "mobilenetv3_small_100", {"num_classes": 10}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(NAME, pretrained=False, **KWARGS).eval()


def test_unpruned_model_round_trips(model, tmp_path):
    out = save_pruned_model(model, tmp_path / "m", meta={"model_name": NAME, "model_kwargs": KWARGS, "step": 7})
    arch = json.loads((out / ARCH_FILE).read_text())
    assert arch["modules"] == {} and arch["meta"] == {"step": 7}
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        diff = (load_pruned_model(out / "model.safetensors")(x) - model(x)).abs().max().item()
    assert diff == 0.0, f"loaded vs saved model: {diff:.3e}"


def test_changed_modules_record_type_and_args(model, tmp_path):
    groups = build_channel_groups(model, torch.randn(1, 3, 32, 32))
    pruned = remove_channels(model, {"conv_head": torch.arange(24)}, groups=groups)
    out = save_pruned_model(pruned, tmp_path, meta={"model_name": NAME, "model_kwargs": KWARGS})
    modules = json.loads((out / ARCH_FILE).read_text())["modules"]
    assert set(modules) == {"conv_head", "classifier"}
    assert modules["conv_head"]["args"]["out_channels"] == 1000 and modules["classifier"]["args"]["in_features"] == 1000
    assert modules["conv_head"]["type"] == "torch.nn.modules.conv.Conv2d"


@pytest.mark.parametrize("meta, error, match", [
    ({"model_kwargs": KWARGS}, ValueError, "model_name"),
    ({"model_name": NAME, "model_kwargs": [1]}, ValueError, "model_kwargs"),
    ({"model_name": NAME, "model_kwargs": KWARGS, "obj": object()}, ValueError, "JSON"),
    ({"model_name": "resnet18", "model_kwargs": KWARGS}, StructuralPruningError, "differ from the timm model"),
])
def test_bad_meta_is_refused(model, tmp_path, meta, error, match):
    with pytest.raises(error, match=match):
        save_pruned_model(model, tmp_path, meta=meta)


def test_profile_counts_conv_flops_and_memory():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    stats = profile_model(conv, (1, 3, 8, 8), runs=3, warmup=1)
    assert stats["params"] == 8 * 3 * 9 and stats["weight_bytes"] == 4 * 8 * 3 * 9
    assert stats["flops"] == 2 * 8 * 3 * 9 * 64  # 2 FLOPs per multiply-accumulate
    # Peak: weights + input and output alive together while the conv runs.
    assert stats["peak_memory_bytes"] == stats["weight_bytes"] + 4 * (3 + 8) * 64
    assert stats["latency_ms"] > 0


def test_profile_shrinks_after_removal(model):
    groups = build_channel_groups(model, torch.randn(1, 3, 32, 32))
    drop = {g.id: torch.arange(g.num_channels // 2) for g in groups if g.prunable and g.num_channels > 1}
    before = profile_model(model, (1, 3, 32, 32), runs=2, warmup=1)
    after = profile_model(remove_channels(model, drop, groups=groups), (1, 3, 32, 32), runs=2, warmup=1)
    for key in ("params", "flops", "weight_bytes", "peak_memory_bytes"):
        assert after[key] < before[key], f"{key}: {after[key]} after removal, {before[key]} before"
