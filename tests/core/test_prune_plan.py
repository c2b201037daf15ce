"""Pruning settings in the pipeline: a rule that would empty a layer stops with one line and can be fixed on resume;
per-layer settings naming layers the model lacks fail before any training (issue 10, fault 3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsetrain.cli import main
from sparsetrain.config import ConfigError
from sparsetrain.pipeline import run_pipeline
from sparsetrain.pruning.criteria import PruneError
from tests.core.conftest import tiny_config, tiny_overrides

THRESHOLD_RULE = ("prune={rule: layer_threshold, threshold: 0.01}",)  # a new rule: the whole section


def _sparsify_rows(out: Path) -> list[str]:
    return [line for line in (out / "metrics.jsonl").read_text().splitlines() if '"phase": "sparsify"' in line]


def test_threshold_that_would_empty_the_head_stops_and_a_fixed_rerun_continues_at_prune(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(PruneError) as info:
        run_pipeline(tiny_config(out, *THRESHOLD_RULE, "prune.layer_thresholds={head.weight: 100}"))
    assert str(info.value).startswith("prune.layer_thresholds.head.weight: threshold 100 would prune all 1,000 "
                                      "weights of head.weight (its largest |w| is "), info.value
    state = json.loads((out / "state.json").read_text())
    assert list(state["completed"]) == ["sparsify"], state
    assert not (out / "weights" / "masks.safetensors").exists() and not (out / "weights" / "prune.safetensors").exists()
    sparsify_rows = _sparsify_rows(out)

    report = run_pipeline(tiny_config(out, *THRESHOLD_RULE, "prune.layer_thresholds={head.weight: 0.01}"))
    head = next(layer for layer in report["layers"] if layer["name"] == "head.weight")
    assert head["nonzero"] > 0, "the head was emptied"
    assert _sparsify_rows(out) == sparsify_rows, "sparsify was trained again instead of continuing at prune"
    assert json.loads((out / "state.json").read_text())["completed"]["sparsify"] == state["completed"]["sparsify"]


@pytest.mark.parametrize("rule, setting, field", [
    ("prune.rule=layer_sparsity", "prune.layer_sparsity={fc9.weight: 0.5}", "prune.layer_sparsity.fc9.weight"),
    (THRESHOLD_RULE[0], "prune.layer_thresholds={fc1: 0.5}", "prune.layer_thresholds.fc1"),  # a module's name
])
def test_per_layer_setting_naming_a_missing_layer_fails_before_training(tmp_path: Path, rule: str, setting: str,
                                                                         field: str) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as info:
        run_pipeline(tiny_config(out, rule, setting))
    assert str(info.value) == (f"{field}: not a prunable layer of this model (prunable: fc1.weight, fc2.weight, "
                               "head.weight)"), info.value
    assert not any((out / name).exists() for name in ("checkpoints", "weights", "metrics.jsonl", "state.json"))


def test_cli_reports_a_missing_layer_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["run", *tiny_overrides(tmp_path / "run", *THRESHOLD_RULE, "prune.layer_thresholds={fc9.weight: 0.1}")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == ("error: prune.layer_thresholds.fc9.weight: not a prunable layer of this model (prunable: "
                   "fc1.weight, fc2.weight, head.weight)"), err


VIT_BN_SCALE = ["data.source=synthetic", "data.num_samples=32", "data.image_size=32", "data.in_chans=3",
                "train.batch_size=8", "model.name=vit_tiny_patch16_224", "model.kwargs.depth=1",
                "tracking.mode=disabled", "prune={rule: filters, channel_score: bn_scale}"]


@pytest.mark.parametrize("command", [["run", "--dry-run"], ["run"], ["config"]])
def test_bn_scale_on_a_model_without_batch_norm_is_refused_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture, command: list[str]) -> None:
    """Trial 28: bn_scale on a ViT trained the sparsify phase, then said `no channel group can be pruned`. Now the
    model check of run, --dry-run and config (channel groups traced on the meta model) refuses it in one line."""
    out = tmp_path / "run"
    assert main([*command, *VIT_BN_SCALE, f"out_dir={out}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: prune.channel_score: bn_scale ranks channels by the BatchNorm scale after their filters, but "
        "vit_tiny_patch16_224 has no BatchNorm after any prunable layer; use prune.channel_score=l2 (or l1)")
    assert not out.exists() or not any((out / name).exists() for name in ("weights", "metrics.jsonl", "state.json"))
