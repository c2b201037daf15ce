"""Periodic progress lines with throughput and ETA (rank 0 only)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta

log = logging.getLogger("sparsetrain")
# set by `package_logging` (the Python API): the process's logging is the caller's, sparsetrain configures its own
_PACKAGE_ONLY: ContextVar[bool] = ContextVar("sparsetrain_package_logging", default=False)


class _RunLines(logging.StreamHandler):
    """The stderr handler `setup_logging` adds (a class of its own, so a second set-up replaces it)."""


def setup_logging(is_main: bool) -> None:
    """Log lines as `HH:MM:SS message` to stderr, warnings and errors as `HH:MM:SS warning: message`; rank 0 logs
    from INFO on, the other ranks only warnings.

    The CLI owns its process and configures the root logger (other libraries' records are formatted alike); inside
    `package_logging` (a Python API call) only the package logger `sparsetrain` gets the handler, and does not
    propagate to the caller's root handlers (which would print each line twice), as transformers' logger does.
    """
    level = logging.INFO if is_main else logging.WARNING
    handler = _RunLines()
    handler.addFilter(_level_prefix)
    handler.setFormatter(logging.Formatter("%(asctime)s %(level_prefix)s%(message)s", datefmt="%H:%M:%S"))
    if _PACKAGE_ONLY.get():
        log.handlers = [*(h for h in log.handlers if not isinstance(h, _RunLines)), handler]
        log.propagate = False
    else:
        logging.basicConfig(level=level, handlers=[handler], force=True)
    log.setLevel(level)


@contextmanager
def package_logging() -> Iterator[None]:
    """Within the block `setup_logging` configures the `sparsetrain` logger only, never the root logger; at its end
    (also on an error) that logger's handlers, level and propagation are as they were before."""
    saved = (list(log.handlers), log.level, log.propagate)
    token = _PACKAGE_ONLY.set(True)
    try:
        yield
    finally:
        _PACKAGE_ONLY.reset(token)
        log.handlers, log.propagate = saved[0], saved[2]
        log.setLevel(saved[1])


def format_value(value: float) -> str:
    """A logged number as people read it: integer counts in full with thousands separators (`122,809`), other
    numbers to 4 significant digits (`0.9312`, `4.5e-05`). Only the log line: metrics.jsonl keeps the value."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:.4g}"


def _level_prefix(record: logging.LogRecord) -> bool:
    """Name the level of a warning or error in its line (INFO lines, the progress, stay unmarked)."""
    record.level_prefix = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
    return True


class Progress:
    """Tracks steps of one phase and prints `[phase] step i/N … ETA` every `every` steps."""

    def __init__(self, phase: str, start: int, total: int, every: int) -> None:
        self.phase, self.start, self.total, self.every = phase, start, total, every
        self.t0 = time.perf_counter()

    def update(self, step: int, **values: float) -> None:
        done = step + 1
        if done % self.every and done != self.total:
            return
        elapsed = time.perf_counter() - self.t0
        rate = (done - self.start) / max(elapsed, 1e-9)
        eta = timedelta(seconds=int((self.total - done) / max(rate, 1e-9)))
        shown = "".join(f" {k} {format_value(v)}" for k, v in values.items())
        log.info(f"[{self.phase}] step {done}/{self.total} ({100 * done / self.total:.0f}%){shown} | "
                 f"{rate:.1f} steps/s ETA {eta}")


class StepTimer:
    """Training throughput over the steps since the last `window()` call, checkpoint saves excluded.

    Wall-clock time includes data loading and the host sync of the logged loss, so it holds on CUDA too. The
    process CPU time (all threads) is reported beside it: on a shared machine wall time measures the load,
    CPU time what the steps themselves cost (e.g. a slowdown from subnormal arithmetic).
    """

    def __init__(self, global_batch: int) -> None:
        self.global_batch = global_batch
        self._restart()

    def _restart(self) -> None:
        self.t0, self.cpu0, self.steps = time.perf_counter(), time.process_time(), 0
        self.excluded = self.cpu_excluded = 0.0

    def count(self) -> None:
        self.steps += 1

    @contextmanager
    def paused(self) -> Iterator[None]:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - start
            self.cpu_excluded += time.process_time() - cpu

    def window(self) -> dict[str, float]:
        """Mean ms per optimizer step (wall, and process CPU time) and global samples per second; restarts."""
        elapsed = max(time.perf_counter() - self.t0 - self.excluded, 1e-9)
        cpu = max(time.process_time() - self.cpu0 - self.cpu_excluded, 0.0)
        steps = max(self.steps, 1)
        self._restart()
        return {"step_time_ms": 1e3 * elapsed / steps, "cpu_time_ms": 1e3 * cpu / steps,
                "samples_per_s": steps * self.global_batch / elapsed}
