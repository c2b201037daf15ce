"""What the W&B run holds besides the logged rows: the report's per-layer sparsity and its plots (summary), the Slurm
job (config). Fresh-user trial 22: W&B had no per-layer sparsity (report.json `layers` only), no images and no job
id. Real tiny runs on digits with W&B offline, its run files read back (tests/helpers/wandb_log.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from sparsetrain.pipeline import run_pipeline
from sparsetrain.tracking import slurm_job
from tests.core.conftest import tiny_config
from tests.helpers.wandb_log import assert_wandb_matches_metrics, read_runs

SHORT = ("phases.sparsify.epochs=0.5", "phases.finetune.epochs=0.3", "tracking.mode=offline")


def _run_files(out: Path) -> Path:
    """The `files/` folder of the run's one offline W&B segment."""
    (segment,) = sorted((out / "wandb").glob("offline-run-*"))
    return segment / "files"


def test_wandb_summary_holds_per_layer_sparsity_and_the_plots(tmp_path: Path) -> None:
    """`layer_sparsity/<layer>` numbers and the `layer_sparsity_table` equal report.json's layers; every PNG of the
    report is an image `plots/<name>` with the same bytes; the history still equals metrics.jsonl."""
    out = tmp_path / "run"
    run_pipeline(tiny_config(out, *SHORT, "report.plots=true"))
    (run,) = read_runs(out)
    summary, layers = run["summary"], json.loads((out / "report.json").read_text())["layers"]
    assert layers, "the report lists its prunable layers"
    for layer in layers:
        assert summary[f"layer_sparsity/{layer['name']}"] == pytest.approx(1 - layer["nonzero"] / layer["total"])
    table = summary["layer_sparsity_table"]
    assert table["_type"] == "table-file", table
    stored = json.loads((_run_files(out) / table["path"]).read_text())
    assert stored["columns"] == ["layer", "total", "nonzero", "sparsity"]
    assert [row[:3] for row in stored["data"]] == [[la["name"], la["total"], la["nonzero"]] for la in layers]
    pngs = sorted(path.stem for path in out.glob("*.png"))
    assert pngs == ["accuracy_vs_sparsity", "layer_sparsity", "weight_hist"], pngs
    assert sorted(key for key in summary if key.startswith("plots/")) == [f"plots/{name}" for name in pngs]
    for name in pngs:
        image = summary[f"plots/{name}"]
        assert image["_type"] == "image-file", image
        sent = (_run_files(out) / image["path"]).read_bytes()
        assert hashlib.sha256(sent).hexdigest() == hashlib.sha256((out / f"{name}.png").read_bytes()).hexdigest()
    assert_wandb_matches_metrics(out)  # the history holds metrics.jsonl's rows, nothing else


def test_without_plots_wandb_still_gets_the_per_layer_sparsity(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_pipeline(tiny_config(out, *SHORT))  # report.plots=false (TINY)
    (run,) = read_runs(out)
    assert "layer_sparsity_table" in run["summary"] and "layer_sparsity/fc1.weight" in run["summary"]
    assert not [key for key in run["summary"] if key.startswith("plots/")], run["summary"].keys()
    assert "slurm" not in run["config"], "outside Slurm the config has no job"


def test_wandb_config_and_state_record_the_resolved_backend(tmp_path: Path) -> None:
    """Stop 12 tail: only report.json recorded the backend that ran; the W&B config said `regularizer.backend: auto`
    and state.json nothing. Both now hold report.json's regularizer, gradient path and resolved backend as
    `kernels`."""
    out = tmp_path / "run"
    run_pipeline(tiny_config(out, *SHORT, "regularizer.backend=auto"))
    report = json.loads((out / "report.json").read_text())
    expected = {key: report[key] for key in ("regularizer", "gradient_path", "backend")}
    assert expected["backend"] in ("triton", "torch"), report
    (run,) = read_runs(out)
    assert run["config"]["regularizer"]["backend"] == "auto", run["config"]["regularizer"]
    assert run["config"]["kernels"] == expected, run["config"]
    assert json.loads((out / "state.json").read_text())["kernels"] == expected


def test_slurm_job_names_the_job_as_squeue_does() -> None:
    """An array element is `<array job>_<task>` (squeue, sacct), not its own SLURM_JOB_ID. Trial 23: `restart_count`
    was a string (`'1'`) and absent without a restart (Slurm sets SLURM_RESTART_COUNT only once a job is requeued):
    an int, 0 then."""
    assert slurm_job({}) is None
    assert slurm_job({"SLURM_JOB_ID": "495", "SLURM_RESTART_COUNT": "2", "SLURM_JOB_NAME": "r1-sparsetrain"}) == {
        "job_id": "495", "raw_job_id": "495", "restart_count": 2, "job_name": "r1-sparsetrain"}
    assert slurm_job({"SLURM_JOB_ID": "516", "SLURM_ARRAY_JOB_ID": "514", "SLURM_ARRAY_TASK_ID": "1"}) == {
        "job_id": "514_1", "raw_job_id": "516", "array_job_id": "514", "array_task_id": "1", "restart_count": 0}
