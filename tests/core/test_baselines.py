"""Baselines beside l0 at the same sparsity and budget: l2 + one-shot magnitude pruning and GMP, as resumable
sub-runs whose results join the main report, table and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sparsetrain.pipeline import run_pipeline
from tests.core.conftest import tiny_config, tiny_overrides
from tests.core.subprocess_runs import kill_at_checkpoint, run_cli
from tests.core.test_pipeline import assert_same_weights

BASELINES = ("baselines=[l2_oneshot,gmp]", "prune.gradual.every_steps=5")


def _kernel_sparsity(weights: dict[str, torch.Tensor]) -> float:
    kernels = [w for w in weights.values() if w.ndim > 1]
    return 1 - sum(int(torch.count_nonzero(w)) for w in kernels) / sum(w.numel() for w in kernels)


def test_baselines_join_the_report(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    report = run_pipeline(tiny_config(run_dir, *BASELINES, "phases.dense.enabled=true", "phases.dense.epochs=1",
                                      "report.plots=true"))
    table, logged = capsys.readouterr()
    assert set(report["baselines"]) == {"l2_oneshot", "gmp"}, f"baselines: {list(report.get('baselines', {}))}"
    for name, row in report["baselines"].items():
        sub = run_dir / "baselines" / name
        state = json.loads((sub / "state.json").read_text())
        assert set(state["completed"]) == {"sparsify", "prune", "finetune"}, f"{name}: phases {state['completed']}"
        assert row["sparsity"] == pytest.approx(report["sparsity"], abs=1e-6), f"{name}: not at l0's sparsity"
        for key in ("prune", "finetune"):
            assert 0 <= row[key] <= 100, f"{name}.{key}: {row.get(key)}"
        cfg = yaml.safe_load((sub / "config.yaml").read_text())
        assert cfg["regularizer"]["name"] == "l2" and not cfg["phases"]["dense"]["enabled"], f"{name}: config"
        assert cfg["phases"]["sparsify"]["epochs"] == 2 and cfg["phases"]["finetune"]["epochs"] == 1, "budget differs"
    l2_trained = load_file(str(run_dir / "baselines" / "l2_oneshot" / "weights" / "sparsify.safetensors"))
    gmp_trained = load_file(str(run_dir / "baselines" / "gmp" / "weights" / "sparsify.safetensors"))
    assert _kernel_sparsity(l2_trained) < 0.01, "the l2 baseline must train dense before its one-shot prune"
    assert _kernel_sparsity(gmp_trained) == pytest.approx(report["sparsity"], abs=1e-6), "GMP must prune in training"
    curve = report["prune_curve"]
    at = curve["sparsity"].index(round(report["sparsity"], 6))
    assert curve["l0"][at] == pytest.approx(report["phases"]["prune"]["metric"]), "curve at l0's sparsity != prune"
    assert curve["l2"][at] == pytest.approx(report["baselines"]["l2_oneshot"]["prune"]), "curve != l2 baseline"
    assert (run_dir / "accuracy_vs_sparsity.png").stat().st_size > 1000, "accuracy_vs_sparsity.png missing"
    points = 2 * len(curve["sparsity"])
    said = [line.split(" ", 1)[1] for line in logged.splitlines() if " [accuracy curve] " in line]  # after HH:MM:SS
    assert said and said[0].startswith(f"[accuracy curve] global magnitude pruning of the l0 and l2-trained model at "
                              f"{len(curve['sparsity'])} sparsities, {points} evaluations"), said
    assert "report.accuracy_curve=false skips it" in said[0] and f"step {points}/{points} (100%)" in said[-1], said
    for label in ("l0 (this run)", "l2 + one-shot magnitude", "gradual magnitude (GMP)", "dense (l2, 1 epoch)"):
        assert label in table, f"the printed table lacks the row {label!r}"
    again = run_pipeline(tiny_config(run_dir, *BASELINES, "phases.dense.enabled=true", "phases.dense.epochs=1",
                                     "report.accuracy_curve=false", "report.plots=true"))
    # report.* settings may change on a re-run
    assert again["baselines"] == report["baselines"], "re-running a finished run changed its baselines"
    assert "prune_curve" not in again, "report.accuracy_curve=false must skip the curve"
    kept = capsys.readouterr().err
    assert "accuracy_vs_sparsity.png is kept from an earlier run, not part of this report" in kept, kept


def test_baseline_subrun_resumes_exactly(tmp_path: Path) -> None:
    extra = (*BASELINES, "phases.sparsify.epochs=4", "train.checkpoint_every=7", "prune.gradual.every_steps=20",
             "prune.gradual.end=0.9")
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    kill_at_checkpoint(tiny_overrides(interrupted, *extra), interrupted / "baselines" / "gmp", 21, phase="sparsify")
    assert "finetune" in json.loads((interrupted / "state.json").read_text())["completed"], "main run not done"
    result = run_cli(tiny_overrides(interrupted, *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    run_pipeline(tiny_config(reference, *extra))  # the uninterrupted run: in this process (no start-up to pay)
    for phase in ("sparsify", "finetune"):
        path = Path("baselines") / "gmp" / "weights" / f"{phase}.safetensors"
        assert_same_weights(load_file(str(reference / path)), load_file(str(interrupted / path)), atol=1e-6,
                            rtol=1e-6, label=f"GMP baseline {phase}: resumed vs uninterrupted")
    reports = [json.loads((run / "report.json").read_text()) for run in (interrupted, reference)]
    assert reports[0]["baselines"]["gmp"]["finetune"] == reports[1]["baselines"]["gmp"]["finetune"]
