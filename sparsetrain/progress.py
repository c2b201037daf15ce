"""Periodic progress lines with throughput and ETA (rank 0 only)."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

log = logging.getLogger("sparsetrain")


def setup_logging(is_main: bool) -> None:
    level = logging.INFO if is_main else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    log.setLevel(level)


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
        shown = " ".join(f"{k} {v:.4g}" for k, v in values.items())
        log.info(f"[{self.phase}] step {done}/{self.total} ({100 * done / self.total:.0f}%) {shown} | "
                 f"{rate:.1f} steps/s ETA {eta}")
