"""Helpers to run the CLI in real subprocesses (multi-rank runs, kill-and-resume), robust to a busy machine.

A run on a loaded 2-core CI machine can take many times longer than on an idle one, so these helpers never
fail a run for being slow: they fail it only when it stops making progress (no new output for `STALL_S`),
which is what a hang looks like. `LIMIT_S` is a last-resort ceiling far above any healthy run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STALL_S = float(os.environ.get("SPARSETRAIN_TEST_STALL_S", "300"))
LIMIT_S = float(os.environ.get("SPARSETRAIN_TEST_LIMIT_S", "1500"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_command(overrides: list[str], nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "sparsetrain", "run", *overrides]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", "-m", "sparsetrain", "run", *overrides]


def clean_env() -> dict[str, str]:
    """The test process's env without torch.distributed variables set by in-process runs.

    One intra-op thread per process: on a 2-core machine two ranks with default thread pools oversubscribe the
    cores, and every collective then waits for the slowest, descheduled thread.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group and its descendants' groups: torch.distributed.run starts each rank in a
    session of its own, so killing the launcher's group alone would leave the ranks running."""
    import psutil  # a DeepSpeed dependency

    if proc.poll() is None:
        try:
            descendants = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        for pid in {proc.pid, *(child.pid for child in descendants)}:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait()


def _size(path: Path) -> int:
    """Bytes in a file, or in every file under a folder (a run directory whose files appear as it runs)."""
    paths = path.rglob("*") if path.is_dir() else [path]
    total = 0
    for file in paths:
        try:
            total += file.stat().st_size if file.is_file() else 0
        except OSError:  # replaced or removed between listing and stat (checkpoint rotation)
            pass
    return total


def watch(proc: subprocess.Popen, outputs: list[Path], until: Callable[[], bool] | None = None,
          stall_s: float = STALL_S, limit_s: float = LIMIT_S) -> str:
    """Wait for `proc` (in its own session) to exit, or for `until()` to become true.

    Returns "exited", "until", "stalled" (no byte written to `outputs`, files or folders, for `stall_s`) or
    "limit". A stalled or over-limit process group is killed.
    """
    start = last_change = time.monotonic()
    sizes = [-1] * len(outputs)
    while True:
        if until is not None and until():
            return "until"
        if proc.poll() is not None:
            return "exited"
        now = time.monotonic()
        current = [_size(p) for p in outputs]
        if current != sizes:
            sizes, last_change = current, now
        if now - last_change > stall_s or now - start > limit_s:
            _kill_group(proc)
            return "stalled" if now - last_change > stall_s else "limit"
        time.sleep(0.05)


def run_cli(overrides: list[str], nproc: int = 1, stall_s: float = STALL_S) -> subprocess.CompletedProcess:
    """Run `sparsetrain run` (through torch.distributed.run for nproc > 1) to the end.

    A run that prints nothing for `stall_s` is killed and reported with return code -9 and a last stderr
    line saying so, so that the test's assertion shows it.
    """
    return run_command(cli_command(overrides, nproc), stall_s)


def run_command(command: list[str], stall_s: float = STALL_S) -> subprocess.CompletedProcess:
    """`run_cli` for a whole command line (e.g. the resume command a run printed), run in the repository root."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with out.open("w") as fout, err.open("w") as ferr:
            proc = subprocess.Popen(command, cwd=REPO, env=clean_env(), stdout=fout, stderr=ferr, text=True,
                                    start_new_session=True)
            outcome = watch(proc, [out, err], stall_s=stall_s)
        stdout, stderr = out.read_text(), err.read_text()
    if outcome != "exited":
        stderr += f"\n[test harness] run killed: {outcome} (no output for {stall_s:.0f} s or over {LIMIT_S:.0f} s)\n"
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _checkpoint_step(out_dir: Path, phase: str | None) -> int:
    """Step of the run's last mid-phase checkpoint (of `phase` when given), from state.json; -1 when none."""
    import json

    try:
        current = (json.loads((out_dir / "state.json").read_text()) or {}).get("current") or {}
    except (OSError, ValueError):  # not written yet, or caught between truncate and write
        return -1
    if phase is not None and current.get("phase") != phase:
        return -1
    return int(current.get("step", -1))


def kill_at_checkpoint(overrides: list[str], out_dir: Path, step: int, phase: str | None = None,
                       nproc: int = 1) -> None:
    """Run the CLI and SIGKILL its whole process group (what a node failure does) once state.json records a
    checkpoint at `step` or later; fails the test if the run ends or stalls first."""
    _kill_when(overrides, lambda: _checkpoint_step(out_dir, phase) >= step, f"its step-{step} checkpoint", nproc)


def _logged_step(out_dir: Path) -> int:
    """The last global step written to metrics.jsonl; -1 before the first."""
    import json

    path = out_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    try:
        return max((json.loads(line)["global_step"] for line in lines if line.endswith("}")), default=-1)
    except ValueError:  # a line caught half-written
        return -1


def kill_at_logged_step(overrides: list[str], out_dir: Path, step: int, nproc: int = 1) -> None:
    """Like `kill_at_checkpoint`, but once metrics.jsonl shows global step `step` (mid-way between checkpoints)."""
    _kill_when(overrides, lambda: _logged_step(out_dir) >= step, f"logging step {step}", nproc)


def _kill_when(overrides: list[str], until: Callable[[], bool], what: str, nproc: int) -> None:
    import pytest

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "output"
        with log.open("w") as f:
            proc = subprocess.Popen(cli_command(overrides, nproc), cwd=REPO, env=clean_env(), stdout=f, stderr=f,
                                    start_new_session=True)
            outcome = watch(proc, [log], until=until)
            _kill_group(proc)
        if outcome != "until":
            tail = log.read_text()[-2000:]
            pytest.fail(f"the run {outcome} before {what}; it could not be killed there:\n{tail}")


def signal_at_logged_step(overrides: list[str], out_dir: Path, step: int, sig: int,
                          nproc: int = 1) -> subprocess.CompletedProcess:
    """Run the CLI (through torch.distributed.run for nproc > 1), send `sig` to its process group (what Ctrl-C in a
    terminal does for SIGINT; under torchrun it reaches torchrun, which passes it on to the ranks) once metrics.jsonl
    shows global step `step`, and wait for it to exit; fails the test if it ends or stalls first."""
    return _signal_when(overrides, lambda err: _logged_step(out_dir) >= step, f"logging step {step}",
                        lambda proc: os.killpg(proc.pid, sig), nproc)


def interrupt_when_printed(overrides: list[str], text: str) -> subprocess.CompletedProcess:
    """Run the CLI and, once its stderr shows `text`, press Ctrl-C once (SIGINT to the CLI process only: helper
    processes keep their own handling), then wait for it to exit; fails the test if it ends or stalls before
    printing `text`."""
    return _signal_when(overrides, lambda err: text in err.read_text(), f"printing {text!r}",
                        lambda proc: os.kill(proc.pid, signal.SIGINT))


def _signal_when(overrides: list[str], until: Callable[[Path], bool], what: str,
                 send: Callable[[subprocess.Popen], None], nproc: int = 1) -> subprocess.CompletedProcess:
    """Run the CLI, call `send(proc)` once `until(stderr file)` holds, and wait for the run to exit."""
    import pytest

    command = cli_command(overrides, nproc)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with out.open("w") as fout, err.open("w") as ferr:
            proc = subprocess.Popen(command, cwd=REPO, env=clean_env(), stdout=fout, stderr=ferr, text=True,
                                    start_new_session=True)
            if watch(proc, [out, err], until=lambda: until(err)) != "until":
                _kill_group(proc)
                pytest.fail(f"the run ended or stalled before {what}:\n{err.read_text()[-2000:]}")
            send(proc)
            outcome = watch(proc, [out, err])
        stdout, stderr = out.read_text(), err.read_text()
    if outcome != "exited":
        stderr += f"\n[test harness] run killed after the signal: {outcome}\n"
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def kill_rank_at_logged_step(overrides: list[str], out_dir: Path, step: int, rank: int,
                             nproc: int = 2) -> subprocess.CompletedProcess:
    """Run the CLI under torch.distributed.run, SIGKILL the one rank whose RANK is `rank` (a rank lost to an OOM kill
    or a dead node; its launcher and the other ranks are left alone) once metrics.jsonl shows global step `step`, and
    wait for the run to exit; fails the test if it ends or stalls first."""
    return _signal_when(overrides, lambda err: _logged_step(out_dir) >= step, f"logging step {step}",
                        lambda proc: os.kill(_rank_pid(proc.pid, rank), signal.SIGKILL), nproc)


def _rank_pid(launcher_pid: int, rank: int) -> int:
    """The process id of rank `rank` among the launcher's descendants (by the RANK torch.distributed.run sets)."""
    import psutil  # a DeepSpeed dependency

    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "sparsetrain" in child.cmdline():
                return child.pid
        except psutil.Error:
            continue
    raise LookupError(f"no rank {rank} under process {launcher_pid}")


def _freeze(proc: subprocess.Popen, sig: int) -> None:
    """Send SIGSTOP or SIGCONT to the run's process and each of its descendants (torch.distributed.run's ranks run in
    sessions of their own, so a process group would miss them)."""
    import psutil  # a DeepSpeed dependency

    try:
        family = [proc.pid, *(child.pid for child in psutil.Process(proc.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return
    for pid in family:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def run_with_snapshots(overrides: list[str], out_dir: Path, snapshots: list[tuple[Path, str | None, int]],
                       nproc: int = 1) -> subprocess.CompletedProcess:
    """`run_cli`, keeping copies of out_dir as a kill would have left it: for each (folder, phase, step), in the
    order the run reaches them, once state.json records a checkpoint of `phase` (any phase: None) at `step` or later
    the run is frozen (SIGSTOP to every process of it), out_dir is copied to `folder` and the run goes on (SIGCONT).

    A frozen run writes nothing, so the copy holds what `kill_at_checkpoint` at that moment leaves for a resume
    (state.json is replaced atomically; a kill also leaves the lock file, whose flock dies with the process): one run
    serves as an uninterrupted reference and as the killed runs resumed from its copies (resume may change out_dir).
    Fails the test if the run ends or stalls before a snapshot point.
    """
    import shutil

    import pytest

    command = cli_command(overrides, nproc)
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with out.open("w") as fout, err.open("w") as ferr:
            proc = subprocess.Popen(command, cwd=REPO, env=clean_env(), stdout=fout, stderr=ferr, text=True,
                                    start_new_session=True)
            for folder, phase, step in snapshots:
                reached = watch(proc, [out, err], until=lambda: _checkpoint_step(out_dir, phase) >= step)  # noqa: B023
                if reached != "until":
                    _kill_group(proc)
                    pytest.fail(f"the run {reached} before its {phase or ''} step-{step} checkpoint, where it was to "
                                f"be copied to {folder}:\n{err.read_text()[-2000:]}")
                _freeze(proc, signal.SIGSTOP)
                try:
                    shutil.copytree(out_dir, folder)
                finally:
                    _freeze(proc, signal.SIGCONT)
            outcome = watch(proc, [out, err])
        stdout, stderr = out.read_text(), err.read_text()
    if outcome != "exited":
        stderr += f"\n[test harness] run killed: {outcome} (no output for {STALL_S:.0f} s or over {LIMIT_S:.0f} s)\n"
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)
