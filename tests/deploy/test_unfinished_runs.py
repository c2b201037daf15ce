"""A run whose final phase has not finished is never exported, evaluated or timed as if it were the result; an
earlier phase is exported only when named (`export --phase`). `run --phase P` refuses a P whose start weights
come from a phase that has not run. Real tiny runs (tests.core.conftest.TINY)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sparsetrain.cli import main
from sparsetrain.pipeline import run_pipeline
from tests.core.conftest import tiny_config, tiny_overrides

SHORT = ("phases.sparsify.epochs=0.5", "phases.finetune.epochs=0.3")


@pytest.fixture(scope="module")
def half(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run stopped after sparsity training: sparsify finished, prune and finetune not."""
    out = tmp_path_factory.mktemp("half") / "run"
    run_pipeline(tiny_config(out, *SHORT), ["sparsify"])  # what `sparsetrain run --phase sparsify` runs
    assert list(json.loads((out / "state.json").read_text())["completed"]) == ["sparsify"]
    return out


def _error(capsys: pytest.CaptureFixture) -> str:
    """The CLI's error line, which must be the last line of stderr and the only `error:` one. (Log lines of
    earlier in-process runs may precede it: pytest closes the captured stream their handler was bound to.)"""
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:], lines[-5:]
    return errors[0]


@pytest.mark.parametrize("command", [["export"], ["eval"], ["bench", "latency"]])
def test_unfinished_run_is_refused_naming_the_last_phase(half: Path, capsys: pytest.CaptureFixture,
                                                         command: list[str]) -> None:
    capsys.readouterr()
    assert main([*command, str(half)]) == 2
    err = _error(capsys)
    action = " ".join(command)
    assert err.startswith(f"error: {action}: {half} is unfinished: the last completed phase is sparsify, not "
                          f"finetune; finish it with `sparsetrain run {half / 'config.yaml'}`, or export the "
                          f"sparsify phase explicitly with `sparsetrain export {half} --phase sparsify`"), err


def test_export_of_a_named_finished_phase(half: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(half), "--phase", "sparsify"]) == 0
    arch = json.loads((half / "export" / "architecture.json").read_text())
    assert arch["meta"]["phase"] == "sparsify"
    capsys.readouterr()
    assert main(["export", str(half), "--phase", "finetune"]) == 2
    assert _error(capsys) == (f"error: export: phase finetune of {half} has not finished (finished: sparsify)")
    assert main(["export", str(half), "--phase", "polish"]) == 2
    assert "phase: unknown phase(s) polish" in _error(capsys)


@pytest.mark.parametrize(("phase", "before"), [("prune", "sparsify"), ("finetune", "prune")])
def test_phase_whose_start_weights_are_missing_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture, phase: str,
                                                         before: str) -> None:
    out = tmp_path / "fresh"
    assert main(["run", *tiny_overrides(out, *SHORT), "--phase", phase]) == 2
    assert _error(capsys) == (f"error: phase: {phase} starts from the weights of the {before} phase, which has not "
                              f"finished in this out_dir; run --phase {before} first (or both, or no --phase)")
    assert not (out / "weights").exists(), "nothing may be trained or pruned"


def test_phase_after_a_finished_one_runs(half: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    half = Path(shutil.copytree(half, tmp_path / "copy"))  # the fixture stays unfinished for the other tests
    capsys.readouterr()
    assert main(["run", *tiny_overrides(half, *SHORT), "--phase", "finetune"]) == 2  # prune has not run
    assert "finetune starts from the weights of the prune phase" in _error(capsys)
    run_pipeline(tiny_config(half, *SHORT), ["prune", "finetune"])
    assert main(["export", str(half)]) == 0
    assert json.loads((half / "export" / "architecture.json").read_text())["meta"]["phase"] == "finetune"


def test_eval_on_data_of_another_shape_is_one_line(half: Path, capsys: pytest.CaptureFixture) -> None:
    """New-user item 8: the run's model takes 1x8x8 digits; 16x16 synthetic images are one line, no traceback."""
    capsys.readouterr()
    assert main(["eval", str(half / "export"), "data.source=synthetic"]) == 2
    err = _error(capsys)
    assert err.startswith(f"error: eval: the data (data.source=synthetic) has inputs of shape (1, 16, 16), but the "
                          f"model of {half / 'export'} takes (1, 8, 8) (C, H, W); give data of that shape ("), err
