"""A phase at chance level: one warning line when it ends, kept in report.json, printed in the end-of-run table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from sparsetrain.config import load_config
from sparsetrain.pipeline import run_pipeline
from sparsetrain.report import format_table
from sparsetrain.tasks.classification import ClassificationTask, chance_accuracy

# Digits, LeNet-300-100: an l0 strength of 1 zeroes the model within one sparsify epoch (accuracy ~9 % on 10 classes);
# fine-tuning for 0 epochs hands the collapsed weights on.
COLLAPSING = ["phases.dense.enabled=false", "regularizer.alpha0=1", "phases.sparsify.epochs=1",
              "phases.finetune.epochs=0", "tracking.mode=disabled", "deploy.formats=[]", "deploy.latency=false",
              "report.accuracy_curve=false"]


def test_a_collapsed_run_says_so_after_the_phase_in_report_json_and_in_the_table(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Seen: a run that ended at chance accuracy (10 % on 10 classes) was reported like any other."""
    capsys.readouterr()
    run_pipeline(load_config(None, [*COLLAPSING, f"out_dir={tmp_path}"]))  # a collapse is a result: the run goes on
    out, err = capsys.readouterr()
    phases = json.loads((tmp_path / "report.json").read_text())["phases"]
    sparsify = phases["sparsify"]
    assert sparsify["metric"] <= sparsify["chance"] < 20, sparsify  # digits: 10 classes, 359 test samples
    assert re.fullmatch(r"accuracy \d+\.\d\d % is at chance level \(at or below \d+\.\d\d %, what a model that learned "
                        r"nothing can score on this test set\): the model collapsed; try a lower regularizer\.alpha0 "
                        r"\(now 1\), or more phases\.sparsify\.epochs \(now 1\)", sparsify["at_chance"]), sparsify
    assert phases["prune"]["at_chance"].endswith("it was at chance after sparsify already (see that warning)")
    assert phases["finetune"]["at_chance"].endswith("try more phases.finetune.epochs (now 0); it was at chance after "
                                                    "sparsify already (see that warning)"), phases["finetune"]
    logged = [line for line in err.splitlines() if "at chance level" in line]
    assert [line.split("warning: ")[1] for line in logged] == [f"[{p}] {phases[p]['at_chance']}" for p in phases], \
        logged  # one line per phase, after it ended
    table = out.splitlines()
    assert table[1].startswith("sparsify") and table[1].endswith("at chance (see the warning below)"), table
    assert table[-3:] == [f"warning      {p}: {phases[p]['at_chance']}" for p in phases], table


def test_a_collapse_on_two_ranks_is_said_once(tmp_path: Path) -> None:
    """Trial 26, finding 11: under torchrun the at-chance warning of a phase came once per rank (rank 1 logs warnings
    too), e.g. twice around Method 2's filters table; rank 0 says it once per phase."""
    from tests.core.subprocess_runs import run_cli

    result = run_cli([*COLLAPSING, f"out_dir={tmp_path}"], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    phases = json.loads((tmp_path / "report.json").read_text())["phases"]
    logged = [line.split("warning: ", 1)[1] for line in result.stderr.splitlines() if "at chance level" in line]
    assert logged == [f"[{p}] {phases[p]['at_chance']}" for p in phases], logged


def test_a_phase_a_later_one_recovered_from_gets_no_warning_line() -> None:
    """Fine-tuning often recovers a pruned model at chance: the row says so, no warning line asks to change it."""
    said = "accuracy 9.00 % is at chance level (...)"
    report = {"task": "classification", "phases": {"sparsify": {"metric": 90.0}, "prune": {"metric": 9.0,
                                                                                        "at_chance": said},
                                                   "finetune": {"metric": 88.0}}}
    assert format_table(report).splitlines() == ["phase        accuracy %", "sparsify       90.00",
                                                 "prune           9.00  at chance, recovered in finetune",
                                                 "finetune       88.00"]


def test_the_chance_level_is_the_commonest_class_share_plus_three_standard_errors() -> None:
    """Not a multiple of 1/K: 1.5 / K would call a binary classifier at 70 % collapsed."""
    assert chance_accuracy([500, 500]) == pytest.approx(100 * (0.5 + 3 * (0.25 / 1000) ** 0.5))
    assert chance_accuracy([900, 100]) == pytest.approx(100 * (0.9 + 3 * (0.09 / 1000) ** 0.5))
    assert chance_accuracy([50] * 1000) == pytest.approx(0.1424, abs=1e-4)
    task = ClassificationTask(3)  # batch sums add up: the class counts of the whole test set
    targets = torch.tensor([0, 0, 2, 0, 1, 0])
    stats = task.batch_stats(torch.zeros(4, 3), targets[:4]) + task.batch_stats(torch.zeros(2, 3), targets[4:])
    result = task.finalize(stats)
    assert result["accuracy"] == pytest.approx(100 * 4 / 6) and result["chance"] == pytest.approx(100.0), result


def test_an_untrained_phase_at_chance_is_told_to_train_not_to_weaken_its_regularizer() -> None:
    """Seen on a prune-only run (phases.sparsify.epochs=0): the line asked for a lower regularizer.lambda_s."""
    from sparsetrain.collapse import chance_warning

    cfg = load_config(None, ["phases.sparsify.epochs=0", "tracking.mode=disabled"])
    said = chance_warning("sparsify", {"metric": 9.0, "chance": 16.8}, cfg, {})
    assert said.endswith("the model collapsed; it was not trained (phases.sparsify.epochs=0): try more epochs, or "
                         "model.checkpoint (a trained model)"), said
    assert chance_warning("sparsify", {"metric": 17.0, "chance": 16.8}, cfg, {}) is None


def test_an_untrained_phase_on_the_users_checkpoint_at_chance_names_the_checkpoint_and_the_data(tmp_path: Path) -> None:
    """Trial 29: the MobileNetV3 recipe's own mode (dense.epochs=0 from model.checkpoint) at chance was told to try
    'model.checkpoint (a trained model)', the one it had."""
    from sparsetrain.collapse import chance_warning

    ckpt = tmp_path / "mine.safetensors"
    ckpt.write_bytes(b"0")
    cfg = load_config(None, ["phases.dense.epochs=0", f"model.checkpoint={ckpt}", "tracking.mode=disabled"])
    said = chance_warning("dense", {"metric": 9.0, "chance": 16.8}, cfg, {})
    assert f"model.checkpoint ({ckpt}) scores like an untrained model on this data (phases.dense.epochs=0" in said, said
    assert "data.normalize=True" in said and "classes are in the data's order" in said, said
    assert "collapsed" not in said and "try more epochs, or model.checkpoint" not in said, said
    # a later phase that starts from a dense phase at chance is not blamed on the checkpoint
    later = chance_warning("sparsify", {"metric": 9.0, "chance": 16.8},
                           load_config(None, ["phases.sparsify.epochs=0", f"model.checkpoint={ckpt}",
                                              "tracking.mode=disabled"]), {"dense": {"at_chance": True}})
    assert "scores like an untrained model" not in later, later


def test_a_weight_decay_far_above_the_usual_range_is_named_in_the_collapse_hint(tmp_path: Path) -> None:
    """Seen: optim.weight_decay=1e30 (Adam, whose coupled decay has no per-step bound to refuse at load) collapsed
    the dense phase to chance, and the line asked only for a lower optim.lr."""
    from sparsetrain.collapse import chance_warning

    cfg = load_config(None, ["optim.weight_decay=1e30", "phases.sparsify.epochs=1", "tracking.mode=disabled",
                             "deploy.latency=false", "report.accuracy_curve=false", f"out_dir={tmp_path}"])
    dense = run_pipeline(cfg, phases=["dense"])["phases"]["dense"]
    decay = "try a much lower optim.weight_decay (now 1e+30, far above the usual 0 to 0.1), "
    assert dense["at_chance"].endswith(f"the model collapsed; {decay}a lower optim.lr (now 0.001) or more "
                                       "phases.dense.epochs (now 1)"), dense
    said = chance_warning("sparsify", {"metric": 9.0, "chance": 16.8}, cfg, {})
    assert said.endswith(f"; {decay}a lower regularizer.alpha0 (now 1e-05), or more phases.sparsify.epochs (now 1)")
    said = chance_warning("finetune", {"metric": 9.0, "chance": 16.8}, cfg, {})
    assert said.endswith(f"; {decay}a lower phases.finetune.lr (now 0.001) or more phases.finetune.epochs (now 1)")
    usual = load_config(None, ["optim.weight_decay=0.05", "tracking.mode=disabled"])
    assert "weight_decay" not in chance_warning("dense", {"metric": 9.0, "chance": 16.8}, usual, {})


def test_a_later_phase_just_above_the_chance_bound_is_not_called_a_recovery() -> None:
    """Trial 18: `at chance, recovered in finetune` for finetune 14.20 % over a chance bound of 14.08 %. Recovered
    now means clearly above: the bound plus the same 3 standard errors (`chance_margin`) again."""
    task = ClassificationTask(10)
    targets = torch.arange(359) % 10  # digits-like: 359 test samples, 10 classes
    result = task.finalize(task.batch_stats(torch.zeros(359, 10), targets))
    p = 36 / 359
    assert result["chance_margin"] == pytest.approx(100 * 3 * (p * (1 - p) / 359) ** 0.5), result
    bound, margin = result["chance"], result["chance_margin"]
    said = "accuracy 9.00 % is at chance level (...)"
    phases = {"sparsify": {"metric": 90.0, "chance": bound, "chance_margin": margin},
              "prune": {"metric": 9.0, "chance": bound, "chance_margin": margin, "at_chance": said},
              "finetune": {"metric": bound + 0.12, "chance": bound, "chance_margin": margin}}
    lines = format_table({"task": "classification", "phases": phases}).splitlines()
    assert lines[2] == (f"prune           9.00  at chance; finetune {bound + 0.12:.2f} %, chance bound {bound:.2f} %: "
                        "not clearly above it (see the warning below)"), lines
    assert lines[-1] == f"warning      prune: {said}", lines
    phases["finetune"]["metric"] = bound + margin + 0.1
    lines = format_table({"task": "classification", "phases": phases}).splitlines()
    assert lines[2] == "prune           9.00  at chance, recovered in finetune", lines
    assert not lines[-1].startswith("warning"), lines
