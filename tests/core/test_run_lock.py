"""One run per out_dir at a time (`sparsetrain.runlock`): fresh-user trial 22 saw two jobs run at once in one out_dir
(interleaved metrics.jsonl, two W&B runs). Real `sparsetrain run` processes and a real flock; a SIGKILLed run's lock
is free at once (the kernel drops it with the process), so resumes after preemption or requeue are not refused.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparsetrain.cli import main
from sparsetrain.errors import InputError
from sparsetrain.pipeline import Pipeline, run_pipeline
from sparsetrain.runlock import LOCK_FILE, RunLock, read_holder
from tests.core.conftest import tiny_config, tiny_overrides
from tests.core.subprocess_runs import REPO, _kill_group, clean_env, cli_command

LONG = ("phases.sparsify.epochs=200",)  # runs far longer than any test waits: it is killed
WAIT_S = 25.0  # for a run to hold its lock on a busy 2-core machine


class Holder:
    """The long tiny `sparsetrain run` on `out` that holds its lock now; a test that kills it starts the next one
    (`start`), which holds the lock in its turn."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.proc: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        """Start a run on out (the previous one dead) and wait until the lock file names it as the holder."""
        self.proc = _start(self.out)
        _wait_for_holder(self.proc, self.out)
        return self.proc


@pytest.fixture(scope="module")
def holder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Holder]:
    """One running holder shared by the module's tests (a run start is ~5 s of imports), in either order: a test
    leaves it running or, having killed it, starts the next; the last one is SIGKILLed at the end."""
    held = Holder(tmp_path_factory.mktemp("locked") / "run")
    try:
        held.start()
        yield held
    finally:
        if held.proc is not None:
            _kill_group(held.proc)


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen(cli_command(tiny_overrides(out, *LONG)), cwd=REPO, env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for_holder(proc: subprocess.Popen, out: Path) -> None:
    """Wait until out's lock file names `proc` as its holder; fail the test if the run ends or takes too long."""
    deadline = time.monotonic() + WAIT_S
    while (read_holder(out) or {}).get("pid") != proc.pid:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before holding {out / LOCK_FILE}: "
                        f"{proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no run lock naming pid {proc.pid} in {out} after {WAIT_S:.0f} s")
        time.sleep(0.1)


def test_a_second_run_on_the_out_dir_of_a_running_one_is_refused(holder: Holder) -> None:
    """Trial 22: a second run into the out_dir of a running one trained beside it. It is refused at its start, one
    line naming out_dir and the holder, exit 2, and writes nothing (the first run's files are its own)."""
    first, out = holder.proc, holder.out
    record = read_holder(out)
    assert record is not None and record["host"] == socket.gethostname() and record["slurm_job"] is None, record
    second = subprocess.run(cli_command(tiny_overrides(out, *LONG)), cwd=REPO, env=clean_env(), capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 2 and second.stdout == "", second.stdout + second.stderr
    assert second.stderr == (f"error: out_dir: {out} is in use by another run (host {socket.gethostname()}, pid "
                             f"{first.pid}, since {record['since']}); wait for it, stop it, or use another "
                             "out_dir\n"), second.stderr
    assert first.poll() is None and read_holder(out) == record  # the first run goes on, still the holder


def test_the_lock_of_a_killed_run_is_free_at_once(holder: Holder) -> None:
    """A run SIGKILLed (a node failure, preemption without grace) leaves its lock file, not its lock: the next run
    on the out_dir starts and holds it (what a resume after a requeue does)."""
    _kill_group(holder.proc)
    assert (holder.out / LOCK_FILE).is_file()
    holder.start()  # fails the test unless the next run holds the lock; it stays the module's holder


def test_an_open_pipeline_holds_its_out_dir_until_closed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """In one process as across processes (Python API): a second pipeline on an opened out_dir is refused; after
    `close` a run there continues, and export (which rewrites export/) takes the lock too, eval does not need it."""
    out = tmp_path / "run"
    short = ("phases.sparsify.epochs=0.5", "phases.finetune.epochs=0.3")
    run_pipeline(tiny_config(out, *short))
    first = Pipeline(tiny_config(out, *short))
    try:
        first.open()
        with pytest.raises(InputError, match=rf"^out_dir: {out} is in use by another run \(host .*, pid {os.getpid()}"):
            Pipeline(tiny_config(out, *short))
        capsys.readouterr()
        assert main(["export", str(out)]) == 2
        assert capsys.readouterr().err.startswith(f"error: out_dir: {out} is in use by another run"), "export"
        assert main(["eval", str(out)]) == 0, capsys.readouterr().err  # reads only
    finally:
        first.close()
    assert main(["export", str(out)]) == 0, capsys.readouterr().err
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    held = RunLock.take(out)  # free again: export released it
    assert held is not None
    held.release()
