"""Cooperative stop: a signal handler (or submitit's checkpoint()) asks the training loop to stop.

The loop checks `stop_requested()` once per optimizer step, agrees on it across ranks, saves a checkpoint at
that exact step and raises `Preempted`; the requeued job resumes from it with no lost or repeated steps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from sparsetrain.errors import ResumeError

_STOP = threading.Event()
_INTERRUPTED = threading.Event()  # the stop was asked by Ctrl-C (SIGINT), not by the cluster (SIGTERM, SIGUSR1)
_NO_STEPS = threading.Event()  # no training step is left to stop at (report, export, latency): Ctrl-C quits at once


class Preempted(ResumeError):
    """Raised after the checkpoint for a requested stop has been written."""


def request_stop(*_: object) -> None:
    """Ask the training loop to checkpoint and stop (safe from signal handlers and other threads)."""
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def interrupted() -> bool:
    """Whether the pending stop was asked by Ctrl-C (`interrupt`): the CLI then reports an interruption (exit 130)
    rather than a preemption to requeue (exit 3)."""
    return _INTERRUPTED.is_set()


def clear() -> None:
    _STOP.clear()
    _INTERRUPTED.clear()
    _NO_STEPS.clear()


@contextlib.contextmanager
def after_training() -> Iterator[None]:
    """The work after the last training step (evaluation, report, export, latency table): no step boundary is left
    to checkpoint at, and everything in it is redone by a re-run, so Ctrl-C quits at once (KeyboardInterrupt; the
    CLI prints one `interrupted:` line, exit 130), also a Ctrl-C still pending from the last phase. SIGTERM and
    SIGUSR1 let it finish: a cluster's stop then finds the run complete.

    Raises:
        KeyboardInterrupt: on entry when a Ctrl-C is pending, or at a Ctrl-C inside.
    """
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt
    _NO_STEPS.set()
    try:
        yield
    finally:
        _NO_STEPS.clear()


def interrupt(*_: object) -> None:
    """SIGINT (Ctrl-C): the first asks for a stop like SIGTERM (a checkpoint at the next step); a second one while that
    is pending, or any after training (`after_training`), raises KeyboardInterrupt at once. Either way the CLI prints
    one `interrupted:` line with the command that resumes, and exits 130."""
    if _STOP.is_set() or _NO_STEPS.is_set():
        _INTERRUPTED.set()
        raise KeyboardInterrupt
    _INTERRUPTED.set()
    _STOP.set()
    # os.write, not print: a handler that prints while the interrupted code prints raises a reentrancy error. Rank 0
    # only: Ctrl-C reaches every rank (a terminal's process group; torchrun passes its SIGINT on to the ranks)
    if os.environ.get("RANK", "0") == "0":
        os.write(2, b"interrupt: stopping after the current step with a checkpoint (Ctrl-C again to quit at once)\n")


def install_signal_handlers(signals: tuple[int, ...] = (signal.SIGUSR1,)) -> None:
    """Route the given signals to `request_stop`, SIGINT to `interrupt` (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for sig in signals:
            signal.signal(sig, interrupt if sig == signal.SIGINT else request_stop)
