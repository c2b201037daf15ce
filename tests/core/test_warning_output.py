"""Python warnings in a sparsetrain process (`sparsetrain.warning_output`): each once per process, even when something
empties Python's once-per-location registry (a subprocess does, as DeepSpeed's CPU accelerator starts one per ZeRO-3
step); deprecations on rank 0 only; torch's deprecation of the collectives DeepSpeed calls not at all. DeepSpeed's and
torch's start-up notes about finding no GPU are not shown on a machine without one; the first build of DeepSpeed's CPU
comm op is announced."""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch.distributed

from sparsetrain import warning_output
from sparsetrain.engine.distributed import SHM_OP_BUILT, comm_op_build_note
from tests.core.subprocess_runs import LIMIT_S, REPO, clean_env, cli_command


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[warnings.WarningMessage]:
    """The warnings shown after `install()` (recorded where they would be printed), restored afterwards."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    monkeypatch.setattr(warning_output, "_shown", set())
    monkeypatch.delenv("RANK", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        warnings.simplefilter("default")  # Python's own: once per location
        warning_output.install()
        yield seen


def _warn_each_step(text: str, category: type[Warning], steps: int = 3) -> None:
    for _ in range(steps):
        warnings.warn(text, category, stacklevel=1)  # one location
        subprocess.run(["true"], check=True)  # os.get_exec_path's catch_warnings empties the registry


def test_a_warning_raised_every_step_is_shown_once(shown: list[warnings.WarningMessage]) -> None:
    _warn_each_step("a library's note", UserWarning)
    _warn_each_step("a library's deprecation", FutureWarning)
    assert [(w.category, str(w.message)) for w in shown] == [(UserWarning, "a library's note"),
                                                              (FutureWarning, "a library's deprecation")]


def test_installing_twice_still_shows_once(shown: list[warnings.WarningMessage]) -> None:
    warning_output.install()
    _warn_each_step("a library's note", UserWarning)
    assert len(shown) == 1, [str(w.message) for w in shown]


def test_deprecations_on_rank_0_only(shown: list[warnings.WarningMessage], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    _warn_each_step("regularizer.kernel=autograd is deprecated", FutureWarning)
    _warn_each_step("an old call", DeprecationWarning)
    _warn_each_step("this rank's own note", UserWarning)
    assert [str(w.message) for w in shown] == ["this rank's own note"]


@pytest.mark.parametrize("collective", ["all_gather_into_tensor", "reduce_scatter_tensor"])
def test_torch_deprecation_of_the_collectives_deepspeed_calls_is_not_shown(
        shown: list[warnings.WarningMessage], collective: str) -> None:
    text = getattr(torch.distributed, collective).__deprecated__  # torch's own message (typing_extensions.deprecated)
    _warn_each_step(text, FutureWarning)
    _warn_each_step("`torch.distributed.all_reduce_coalesced` is deprecated", FutureWarning, steps=1)
    assert [str(w.message) for w in shown] == ["`torch.distributed.all_reduce_coalesced` is deprecated"]


def test_a_deprecation_is_one_warning_line() -> None:
    line = warning_output.one_line_warning(FutureWarning("x.y is deprecated; use x.z"), FutureWarning, "f.py", 3)
    assert line == "warning: x.y is deprecated; use x.z\n"
    assert "UserWarning" in warning_output.one_line_warning(UserWarning("note"), UserWarning, "f.py", 3)


def test_a_cpu_run_starts_without_deepspeeds_and_torchs_notes(tmp_path: Path) -> None:
    """A run's first lines are its own: no "Setting accelerator to CPU" (DeepSpeed), no "No CUDA runtime is found,
    using CUDA_HOME" (torch), no "built successfully" when DeepSpeed only loaded its cached comm op (built by
    conftest). On a GPU machine none of them is printed in the first place."""
    result = subprocess.run(
        [*cli_command([f"out_dir={tmp_path / 'run'}", "tracking.mode=disabled", "deploy.latency=false",
                       "report.accuracy_curve=false"]), "--phase", "dense"],
        capture_output=True, text=True, timeout=LIMIT_S, env=clean_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for note in ("Setting accelerator to CPU", "No CUDA runtime is found", SHM_OP_BUILT, "building DeepSpeed's"):
        assert note not in output, f"{note!r} shown:\n{output[:3000]}"
    assert "[dense] done" in output, output[-3000:]


def test_the_first_comm_op_build_is_announced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().create_op_builder("ShareMemCommBuilder") is None:
        pytest.skip("DeepSpeed's accelerator here has no CPU comm op to build")
    assert comm_op_build_note() is None, f"conftest built the op into {os.environ['TORCH_EXTENSIONS_DIR']}"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an empty cache: the first run builds it
    assert comm_op_build_note() == (f"building DeepSpeed's CPU communication op once (~1 min, cached in {tmp_path})")


def test_the_first_comm_op_build_is_said_once_on_two_ranks(tmp_path: Path) -> None:
    """Trial 26, finding 11: after the one-time build line, DeepSpeed's "built successfully" came once per rank (the
    second rank, which waited for the build, loads the op and prints it too). A real first build (an empty extension
    cache, ~1 min) under torchrun on 2 ranks: each line once."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().create_op_builder("ShareMemCommBuilder") is None:
        pytest.skip("DeepSpeed's accelerator here has no CPU comm op to build")
    env = {**clean_env(), "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions")}
    result = subprocess.run(
        [*cli_command([f"out_dir={tmp_path / 'run'}", "tracking.mode=disabled", "deploy.latency=false",
                       "report.accuracy_curve=false"], nproc=2), "--phase", "dense"],
        capture_output=True, text=True, timeout=LIMIT_S, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    counts = {note: output.count(note) for note in (SHM_OP_BUILT, "building DeepSpeed's CPU communication op")}
    assert set(counts.values()) == {1}, f"{counts}\n{output[-3000:]}"


@pytest.mark.parametrize(("logger", "message", "args"), [
    ("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.", ()),
    ("torch.utils.cpp_extension", "No CUDA runtime is found, using CUDA_HOME='%s'", ("/usr/local",)),
])
def test_the_cpu_only_notes_are_dropped_exactly_and_only_without_a_gpu(
        logger: str, message: str, args: tuple, caplog: pytest.LogCaptureFixture) -> None:
    warning_output.install()
    log = logging.getLogger(logger)
    own_handler = not log.propagate  # DeepSpeed's logger does not propagate to the root, where caplog listens
    if own_handler:
        log.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger=logger):
            log.warning(message, *args)
            log.warning(message + " (another message)", *args)
    finally:
        if own_handler:
            log.removeHandler(caplog.handler)
    expected = ([] if warning_output.no_gpu_device() else [message % args]) + [(message + " (another message)") % args]
    assert [r.getMessage() for r in caplog.records] == expected
