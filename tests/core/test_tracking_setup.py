"""W&B set-up problems end a run in one line with the set-up exit code, before any training."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sparsetrain.cli import main
from sparsetrain.pipeline import run_pipeline
from tests.core.conftest import tiny_config, tiny_overrides
from tests.core.subprocess_runs import REPO, clean_env, cli_command, free_port


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


def test_two_ranks_stop_together_when_wandb_cannot_start(tmp_path: Path) -> None:
    """Only rank 0 starts W&B: when it could not, rank 0 quit with exit 5 and rank 1, waiting for it at the barrier,
    died in a 40-line gloo traceback (peer closed the connection; torchrun kills it with SIGTERM instead). Here two
    ranks are started by hand, as srun does. Now rank 0 tells every rank, and each stops with the set-up exit code
    and the same line."""
    env = {k: v for k, v in clean_env().items() if k not in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL")}
    env.update(HOME=str(tmp_path / "home"), WANDB_CONFIG_DIR=str(tmp_path / "home" / ".config" / "wandb"),
               WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    out_dir = tmp_path / "run"
    ranks = [subprocess.Popen(cli_command(tiny_overrides(out_dir, "tracking.mode=online")), cwd=REPO,
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) for rank in (0, 1)]
    try:
        results = [(proc.wait(timeout=120), proc.stderr.read()) for proc in ranks]
    except subprocess.TimeoutExpired:
        pytest.fail("a rank still waits for rank 0 two minutes after W&B could not start")
    finally:
        for proc in ranks:
            proc.kill()
            proc.wait()
    for code, err in results:
        assert code == 5, err[-2000:]
        assert err.strip().splitlines()[-1].startswith("error: tracking.mode: W&B could not start its online run ("), \
            err[-2000:]
    assert not out_dir.exists(), os.listdir(out_dir)
