"""Method 2 end to end on a tiny UNet: filters removed physically, export loads standalone."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

import sparsetrain
from sparsetrain.config import load_config
from sparsetrain.config.schema import ModelConfig
from sparsetrain.models.factory import build_model
from sparsetrain.pipeline import Pipeline, run_pipeline
from sparsetrain.structural import interleaved_latency_ms
from tests.method2.test_grad_count import TINY_UNET


def test_structural_run_exports_a_smaller_loadable_model(tmp_path: Path) -> None:
    overrides = [*TINY_UNET, f"out_dir={tmp_path}", "phases.sparsify.epochs=1", "phases.finetune.epochs=1",
                 "prune.filter_fraction=0.5", "prune.round_to=1", "regularizer.count_window=3",
                 "deepspeed.zero_stage=0"]
    report = run_pipeline(load_config(None, overrides))
    assert report["params"]["pruned"] < report["params"]["dense"] / 2, "expected >2x fewer parameters"
    assert all(row["kept"] <= row["total"] - row["total"] // 2 for row in report["kept_filters"])
    loaded = sparsetrain.load_compressed(tmp_path / "export")
    assert sum(p.numel() for p in loaded.parameters()) == report["params"]["pruned"]
    pipeline = Pipeline(load_config(None, overrides))
    try:
        trained = pipeline.model_from("finetune").eval()
    finally:
        pipeline.close()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), trained(x), atol=1e-6), "exported model differs from the trained one"
    assert (tmp_path / "kept_filters.png").stat().st_size > 1000
    assert report["latency_ms"]["pruned"] > 0 and report["flops"]["pruned"] < report["flops"]["dense"]
    shutil.rmtree(tmp_path / "export")  # a run directory without export/ is a checkpoint too: its finetune weights
    from_run = build_model(ModelConfig(name="unet_tiny", checkpoint=str(tmp_path)), 3, 1, (3, 32, 32)).eval()
    with torch.no_grad():
        assert torch.equal(from_run(x), loaded(x)), "model.checkpoint=<run dir> did not load weights/finetune/"


def test_structural_run_before_prune_reports_no_before_after_comparison(tmp_path: Path) -> None:
    """Nothing is removed before the prune phase: no params/FLOPs/latency 'dense -> pruned' lines (they compared
    a model with itself, and back-to-back timing showed 2.35x between the two identical models)."""
    overrides = [*TINY_UNET, f"out_dir={tmp_path}", "phases.sparsify.epochs=1", "deepspeed.zero_stage=0"]
    report = run_pipeline(load_config(None, overrides), ["sparsify"])
    assert "sparsify" in report["phases"] and "prune" not in report["phases"], report["phases"].keys()
    for key in ("flops", "latency_ms", "param_reduction", "peak_memory_bytes"):
        assert key not in report, f"{key} reported before anything was removed: {report[key]}"


def test_interleaved_latency_gives_one_median_per_model_and_restores_modes() -> None:
    small, large = torch.nn.Linear(8, 8), torch.nn.Sequential(torch.nn.Linear(8, 512), torch.nn.Linear(512, 8))
    large.train()
    small.eval()
    times = interleaved_latency_ms([small, large], (1, 8), rounds=2, runs=2, warmup=1)
    assert len(times) == 2 and all(t > 0 for t in times), times
    assert large.training and not small.training, "training flags not restored"
