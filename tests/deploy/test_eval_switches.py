"""`sparsetrain eval`'s latency switch (`deploy.latency=false`) and its hint for a run's weights file given without
the run's config (fresh-user trial 19)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from sparsetrain.cli import main
from tests.segmentation.test_seg_miou import street_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A unet_tiny segmentation run (not the default model nor data): dense evaluates a checkpoint, prune 30 %."""
    return street_run(tmp_path_factory.mktemp("eval_switches"))


def test_eval_with_deploy_latency_false_does_not_time(run, capsys: pytest.CaptureFixture) -> None:
    """It timed and printed a latency line whatever deploy.latency said; the run's own config.yaml (made with
    deploy.latency=false) does not switch eval's timing off, the eval command line does."""
    out, _ = run
    capsys.readouterr()
    assert main(["eval", str(out / "export"), "deploy.latency=false", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"] is None
    assert main(["eval", str(out / "export"), "deploy.latency=false"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1].startswith("bytes ") and not any(line.startswith("latency") for line in printed), printed
    assert main(["eval", str(out / "export"), "deploy.latency_repeats=3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"]["median"] > 0, "timed by default"


@pytest.mark.parametrize("extra", [[], ["model.name=unet_tiny"]])
def test_a_runs_weights_file_without_config_names_the_command_that_works(run, extra: list[str],
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """`sparsetrain eval weights/dense.safetensors` said `set model.name=unet_tiny`; doing so then failed on the
    default digits data (its classes). Both now name the run's config.yaml, and the command given works."""
    out, report = run
    monkeypatch.chdir(out)
    capsys.readouterr()
    assert main(["eval", "weights/dense.safetensors", *extra]) == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "`sparsetrain eval weights/dense.safetensors config.yaml`" in message, message
    assert "model.name=" not in message, "the old hint, whose command then failed on the default data"
    command = shlex.split(message.split("`")[1])
    assert main([*command[1:], "deploy.latency=false", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    assert metrics["miou"] == pytest.approx(report["phases"]["dense"]["miou"]), metrics
