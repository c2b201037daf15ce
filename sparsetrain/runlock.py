"""One run per `out_dir` at a time: the process that writes a run's files (rank 0) holds an exclusive `fcntl.flock`
on `<out_dir>/run.lock` for the run's whole life.

Two runs writing into one out_dir interleave metrics.jsonl, start two W&B runs and mix their checkpoints (fresh-user
trial 22: a sweep ran two jobs at once in one out_dir). The lock is non-blocking: a second run is refused at its
start, before it writes anything, with a line naming who holds it. The kernel releases it when the holder's process
ends however it ends (a normal exit, an error, SIGKILL, preemption, a Slurm requeue), so a resume never finds a stale
lock. The file stays after the run and records its last holder as JSON (`host`, `pid`, `slurm_job`, `since`), which
the launcher reads before submitting (`launch.checks`). Reading a run (eval, bench, `sweep --collect`) takes no lock;
`export` writes into the run directory and takes it.

The lock works where flock does: local file systems and NFS (Linux emulates flock with NFS byte-range locks); Lustre
needs its `flock` mount option.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from sparsetrain.errors import InputError

LOCK_FILE = "run.lock"


def slurm_job_id(env: Mapping[str, str]) -> str | None:
    """The Slurm job this process runs in as squeue names it (`507_1` for an array element, else `SLURM_JOB_ID`);
    None outside Slurm."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def holder_record() -> dict[str, Any]:
    """Who this process is, as the lock file records it: host, pid, Slurm job (None outside Slurm), start time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": slurm_job_id(os.environ),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def read_holder(out_dir: Path) -> dict[str, Any] | None:
    """The record in `out_dir`'s lock file (its current or last holder); None when there is none or it is unreadable
    (e.g. read while its holder was writing it)."""
    try:
        record = json.loads((Path(out_dir) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def describe_holder(record: dict[str, Any] | None) -> str:
    """`host H, pid P, Slurm job J, since T` (the parts the record has), or `holder not recorded`."""
    if not record:
        return "holder not recorded"
    parts = [f"{name} {record[key]}" for key, name in (("host", "host"), ("pid", "pid"), ("slurm_job", "Slurm job"),
                                                       ("since", "since")) if record.get(key)]
    return ", ".join(parts) or "holder not recorded"


def in_use_error(out_dir: Path, record: dict[str, Any] | None) -> InputError:
    """`out_dir: D is in use by another run (host H, pid P, Slurm job J, since T); wait for it, scancel it, or use
    another out_dir` (`stop it` for a run outside Slurm)."""
    stop = "scancel it" if record and record.get("slurm_job") else "stop it"
    return InputError(f"out_dir: {out_dir} is in use by another run ({describe_holder(record)}); wait for it, {stop}, "
                      "or use another out_dir")


class RunLock:
    """The held lock of one out_dir (`take`); `release` (or the process's end) frees it."""

    def __init__(self, out_dir: Path, file: IO[str]) -> None:
        self.out_dir, self._file = out_dir, file

    @classmethod
    def take(cls, out_dir: Path, create: bool = True) -> RunLock | None:
        """Lock `out_dir` for this process; the file's record is left as it is (`record` names this process, once
        the run is accepted: a run refused after taking the lock leaves out_dir's files as they were).

        Args:
            out_dir: an existing run directory.
            create: create the lock file when it is missing; False: return None then (nothing is written: a run that
                is still checking its settings takes the lock of an existing lock file only).

        Raises:
            InputError: another process holds it (`in_use_error`), or the lock file cannot be opened (one line
                naming out_dir and the OS's reason).
        """
        path = Path(out_dir) / LOCK_FILE
        if not create and not (path.is_file() and os.access(path, os.W_OK)):
            return None  # `open` takes it, after `prepare_out_dir` has named what is wrong with a read-only out_dir
        try:
            file = open(path, "a+")  # noqa: SIM115 - held open for the run's life, closed by `release`
        except OSError as err:
            raise InputError(f"out_dir: cannot open the run lock {path} ({err.strerror or err})") from None
        if not _try_flock(file):
            file.close()
            raise in_use_error(out_dir, read_holder(out_dir))
        return cls(Path(out_dir), file)

    def record(self) -> None:
        """Write this process as the holder into the lock file (`holder_record`, one JSON line)."""
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps(holder_record()) + "\n")
        self._file.flush()

    def release(self) -> None:
        """Free the lock (idempotent); the file and its record stay."""
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


def held_by_another(out_dir: Path) -> dict[str, Any] | None:
    """The lock file's record when some process holds `out_dir`'s lock now (an empty record when it holds it without
    a readable one), else None; takes the lock for an instant only, writes nothing and creates no file."""
    path = Path(out_dir) / LOCK_FILE
    try:
        file = open(path)  # noqa: SIM115 - closed below
    except OSError:
        return None
    with file:
        if _try_flock(file):
            fcntl.flock(file, fcntl.LOCK_UN)
            return None
    return read_holder(out_dir) or {}


def _try_flock(file: IO[str]) -> bool:
    """Take an exclusive flock on `file` without waiting; False when another open file holds it."""
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True
