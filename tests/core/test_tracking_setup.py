"""W&B set-up problems end a run in one line with the set-up exit code, before any training."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsetrain.cli import main
from sparsetrain.pipeline import run_pipeline
from tests.core.conftest import tiny_config, tiny_overrides


def _logged_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc, no wandb settings: nobody is logged in
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config" / "wandb"))


def test_online_tracking_without_a_wandb_login_is_one_line_and_exit_5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """Fresh-user trial: `tracking.mode=online` with no API key ended in wandb's 30-line UsageError traceback,
    exit 1 (the README promises one line, exit 5 for library set-up)."""
    _logged_out(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["run", *tiny_overrides(tmp_path / "run", "tracking.mode=online")]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: tracking.mode: W&B could not start its online run (") and "Traceback" not in \
        "\n".join(err), err
    assert "tracking.mode=offline" in err[-1]
    assert not (tmp_path / "run").exists(), "the refused run left the out_dir it created"


def test_wandb_that_cannot_start_leaves_an_earlier_run_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """resume=false with W&B unable to start: the earlier run's outputs were cleared before W&B refused (and its W&B
    run id replaced); W&B now starts first."""
    out = tmp_path / "run"
    run_pipeline(tiny_config(out, "phases.dense.enabled=true", "phases.dense.epochs=0", "tracking.mode=offline"),
                 ["dense"])
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "wandb"}
    _logged_out(tmp_path, monkeypatch)
    capsys.readouterr()
    assert main(["run", *tiny_overrides(out, "tracking.mode=online", "resume=false")]) == 5
    assert "error: tracking.mode: W&B could not start its online run (" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "wandb"} == before
