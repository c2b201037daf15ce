"""The dry run's per-rank memory plan: ZeRO accounting, activations measured on the meta device, CLI output."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from sparsetrain.cli import main
from sparsetrain.config import load_config
from sparsetrain.engine.deepspeed_setup import deepspeed_config
from sparsetrain.memory_plan import (
    GiB,
    MemoryPlan,
    activation_bytes,
    format_memory_plan,
    model_states,
    saved_for_backward,
)
from tests.core.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]
P, L, N = 1000, 100, 4  # parameters, largest layer, ranks


@pytest.mark.parametrize(("stage", "bf16", "expected"), [
    (0, False, {"parameters": 4 * P, "gradients": 4 * P, "optimizer": 8 * P}),  # fp32 Adam: no separate master
    (0, True, {"parameters": 2 * P, "gradients": 2 * P + 4 * P, "optimizer": 12 * P}),
    (1, True, {"parameters": 2 * P, "gradients": 2 * P + 4 * P // N, "optimizer": 12 * P // N}),
    (2, True, {"parameters": 2 * P, "gradients": (2 * P + 4 * P) // N, "optimizer": 12 * P // N}),
    (3, True, {"parameters": 2 * P // N + 2 * 2 * L, "gradients": (2 * P + 4 * P) // N, "optimizer": 12 * P // N}),
])
def test_model_states_follow_the_zero_accounting(stage: int, bf16: bool, expected: dict[str, int]) -> None:
    gpu, cpu = model_states(P, L, stage, bf16, slots=2, world=N, offload=False)
    assert gpu == pytest.approx(expected, abs=N), f"ZeRO {stage}, bf16={bf16}"
    assert cpu == {}
    gpu, cpu = model_states(P, L, stage or 1, bf16, slots=2, world=N, offload=True)
    assert gpu["optimizer"] == 0 and cpu["optimizer"] > 0, "offloaded optimizer state must sit in host memory"


@pytest.mark.parametrize(("name", "kwargs"), [("resnet18", {}), ("test_vit", {"img_size": 32})])
def test_meta_device_activations_equal_what_a_cpu_forward_saves(name: str, kwargs: dict) -> None:
    shape = (3, 32, 32)
    real_model = timm.create_model(name, num_classes=10, **kwargs)
    real, _ = saved_for_backward(real_model, torch.randn(4, *shape))
    with torch.device("meta"):
        meta_model = timm.create_model(name, num_classes=10, **kwargs)
    estimate = activation_bytes(meta_model, shape, 4, torch.float32, checkpointing=False)
    assert estimate == pytest.approx(real, rel=0.02), f"{name}: meta {estimate} B vs CPU forward {real} B"
    assert real > 4 * 3 * 32 * 32 * 4, "nothing saved: the measurement would be vacuous"
    checkpointed = activation_bytes(meta_model, shape, 4, torch.float32, checkpointing=True)
    assert checkpointed < estimate, f"{name}: checkpointing should keep less ({checkpointed} vs {estimate})"


@pytest.fixture(autouse=True)
def _not_under_a_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    """An in-process run earlier in this session sets WORLD_SIZE=1 (single-process init): plans here come from the
    launch section, as on a login node."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def _dry_run(capsys: pytest.CaptureFixture, *overrides: str) -> str:
    code = main(["run", str(REPO / "configs" / "vit_giant_imagefolder.yaml"), "--dry-run", *overrides])  # as README
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def test_vit_giant_dry_run_plans_one_and_four_nodes(capsys: pytest.CaptureFixture) -> None:
    one_node = _dry_run(capsys)
    assert "a model of 1,012,611,432 parameters" in one_node
    assert "ZeRO stage 3, bf16, world size 8, micro-batch 32" in one_node
    for row in ("parameters", "gradients", "optimizer", "masks", "buffers", "activations", "total"):
        assert f"  {row} " in one_node, f"memory plan lacks {row}:\n{one_node}"
    assert "WARNING" not in one_node, "a 1 B model with ZeRO-3 fits 80 GB per rank"
    assert "data not read here (data.path: required for data.source='imagefolder')" in one_node
    four_nodes = _dry_run(capsys, "launch.nodes=4")
    assert "world size 32, micro-batch 8" in four_nodes
    tight = _dry_run(capsys, "launch.gpu_mem_gb=2")
    assert "WARNING:" in tight and "GiB per rank exceeds launch.gpu_mem_gb=2 GiB" in tight


def _plan(stage: int, offload: str, checkpointing: bool, total: int) -> MemoryPlan:
    return MemoryPlan(8, 32, stage, "bf16", offload, 10**9, 10**7, 10**9, gpu={"total": total},
                      checkpointing=checkpointing)


def test_memory_warning_is_in_gib_and_advises_only_what_is_not_in_effect() -> None:
    """launch.gpu_mem_gb is GiB, like the table; the vit_giant recipe already has ZeRO 3 and grad checkpointing."""
    warning = format_memory_plan(_plan(3, "none", True, int(4.9 * GiB)), gpu_mem_gb=4).splitlines()[-1]
    assert warning.startswith("WARNING: 4.90 GiB per rank exceeds launch.gpu_mem_gb=4 GiB; to lower it: "), warning
    assert "zero_stage" not in warning and "grad_checkpointing" not in warning, warning
    assert "deepspeed.offload_optimizer=cpu" in warning and "train.batch_size (micro-batch now 32" in warning
    offloaded = format_memory_plan(_plan(3, "cpu", True, int(4.9 * GiB)), gpu_mem_gb=4)
    assert "offload_optimizer" not in offloaded and "more ranks (world size now 8" in offloaded, offloaded
    plain = format_memory_plan(_plan(0, "none", False, int(4.9 * GiB)), gpu_mem_gb=4)
    assert "deepspeed.zero_stage=1 (now 0" in plain and "train.grad_checkpointing=true" in plain, plain
    assert "offload_optimizer" not in plain, "offloading needs ZeRO >= 1: not a remedy on its own"
    assert "WARNING" not in format_memory_plan(_plan(3, "none", True, int(3.9 * GiB)), gpu_mem_gb=4)


def test_offload_and_checkpointing_settings_reach_deepspeed_and_the_model(tmp_path: Path) -> None:
    cfg = load_config(None, ["deepspeed.zero_stage=2", "deepspeed.offload_optimizer=cpu"])
    zero = deepspeed_config(cfg, 1)["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"]["device"] == "cpu"
    with pytest.raises(ValueError, match="deepspeed.offload_optimizer: offloading needs deepspeed.zero_stage >= 1"):
        load_config(None, ["deepspeed.offload_optimizer=cpu"])
    from sparsetrain.pipeline import run_pipeline

    with pytest.raises(ValueError, match="train.grad_checkpointing: model lenet300_100 has no set_grad_checkpointing"):
        run_pipeline(tiny_config(tmp_path / "lenet", "train.grad_checkpointing=true"), ["sparsify"])


def test_grad_checkpointing_trains_like_the_plain_model(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from sparsetrain.pipeline import run_pipeline

    common = ("model.name=test_vit", "model.kwargs={patch_size: 4}", "data.source=synthetic", "data.num_samples=400",
              "phases.sparsify.epochs=0.5", "optim.name=sgd", "optim.lr=0.05")
    for flag in ("false", "true"):
        run_pipeline(tiny_config(tmp_path / flag, *common, f"train.grad_checkpointing={flag}"), ["sparsify"])
    plain, checkpointed = (load_file(str(tmp_path / f / "weights" / "sparsify.safetensors")) for f in ("false", "true"))
    for name, tensor in plain.items():
        assert torch.allclose(tensor, checkpointed[name], atol=1e-5), f"{name} differs with grad checkpointing"


def test_without_dry_run_data_path_is_still_required(capsys: pytest.CaptureFixture) -> None:
    code = main(["run", str(REPO / "configs" / "vit_giant_imagefolder.yaml")])
    err = capsys.readouterr().err
    assert code != 0 and "data.path: required for data.source='imagefolder'" in err, err
