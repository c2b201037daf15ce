"""Timing, bandwidth and output helpers shared by the benchmarks."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"  # the committed tables; written only when asked (--out)
OUTPUT_DIR = Path("runs") / "bench"  # default --out of kernels / train_step / throughput: under the current folder
QUANTILES = [0.5, 0.2, 0.8]


def pick_device() -> torch.device:
    """CUDA when present, else CPU (smoke mode only: CPU numbers say nothing about the GPU kernels)."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def kernel_backend(requested: str | None, device: torch.device) -> str:
    """The `--backend` a benchmark times as "ours": `requested`, or triton on CUDA and torch on CPU when not given.

    Raises:
        ConfigError: triton asked for where it cannot run, one line as `run` says it for `regularizer.backend`
            (`get_ops` would raise a RuntimeError traceback).
    """
    if requested is None:
        return "torch" if device.type == "cpu" else "triton"
    if requested == "triton":
        from sparsetrain.config.loader import ConfigError
        from triton_kernels._multi_tensor import triton_unusable_reason

        if (reason := triton_unusable_reason(device)) is not None:
            raise ConfigError(f"--backend: 'triton' cannot run on {device.type}: {reason}; use --backend torch "
                              "(or leave it out)")
    return requested


def device_label(device: torch.device) -> str:
    """Human-readable device name, e.g. "NVIDIA H100 80GB HBM3" or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def slug(text: str) -> str:
    """File-name-safe lower-case form of ``text``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


CPU_WARMUP_CALLS = 3  # untimed calls before a CPU timing: first-call allocations and lazy inits stay out of it
CPU_MIN_RUN_S = 0.2  # blocked_autorange's least total timed time per variant: many calls of a short op, not 3


@dataclass(frozen=True)
class Timing:
    """One variant's timing: median milliseconds per call, untimed warm-up calls and timed calls (None where the
    timer decides by time, `triton.testing.do_bench` on CUDA), and the timer used."""

    ms: float
    warmup_calls: int | None
    timed_calls: int | None
    timer: str


def time_call(fn: Callable[[], object], device: torch.device, grad_to_none: list[torch.Tensor] | None = None,
              warmup: int = CPU_WARMUP_CALLS, min_run_s: float = CPU_MIN_RUN_S) -> Timing:
    """Median milliseconds per call of ``fn``, with how it was measured.

    CUDA: ``triton.testing.do_bench`` (device events, L2 flushed between calls, quantiles 0.5/0.2/0.8; the
    median). CPU: ``warmup`` untimed calls, then ``torch.utils.benchmark.Timer.blocked_autorange`` (blocks of calls
    sized to the clock's resolution, at least ``min_run_s`` seconds in all; the median of the blocks' per-call
    means) on one thread, in process CPU time: a wall-clock median of three calls swung up to 100x between runs on
    a shared 2-core machine, where a niced process waits for a core whole scheduler ticks (4 ms) inside a 0.08 ms
    call; CPU time leaves the waiting out.

    Args:
        fn: The call to time; it may work in place (it is called again and again on the same tensors).
        device: Where ``fn`` runs.
        grad_to_none: Tensors whose ``.grad`` is reset before every call (a backward would accumulate).
        warmup: Untimed calls first (CPU).
        min_run_s: Least timed seconds (CPU).
    """
    def call() -> None:
        for t in grad_to_none or ():
            t.grad = None
        fn()

    if device.type == "cuda":
        from triton.testing import do_bench

        ms = float(do_bench(fn, quantiles=QUANTILES, grad_to_none=grad_to_none)[0])
        return Timing(ms, None, None, "triton.testing.do_bench (25 ms warm-up, 100 ms of calls)")
    from torch.utils.benchmark import Timer

    for _ in range(warmup):
        call()
    # CPU time of this process on one thread: the time it waited for a core on a shared machine stays out
    measured = Timer("call()", globals={"call": call}, timer=time.process_time, num_threads=1).blocked_autorange(
        min_run_time=min_run_s)
    return Timing(measured.median * 1e3, warmup, len(measured.times) * measured.number_per_run,
                  "torch.utils.benchmark.Timer.blocked_autorange, process CPU time, 1 thread")


def bench_ms(fn: Callable[[], object], device: torch.device, grad_to_none: list[torch.Tensor] | None = None) -> float:
    """Median milliseconds per call of ``fn`` (`time_call`'s)."""
    return time_call(fn, device, grad_to_none).ms


def copy_gbps(device: torch.device, max_bytes: int = 1 << 30) -> float:
    """Measured device copy bandwidth in GB/s (bytes read + bytes written) of a large device-to-device copy."""
    if device.type == "cuda":
        max_bytes = min(max_bytes, torch.cuda.mem_get_info(device)[0] // 4)
    else:
        max_bytes = min(max_bytes, 1 << 26)
    src = torch.randn(max_bytes // 4, device=device)  # random data, never zeros (see the GPU method notes)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * 4 / (ms * 1e6)


def write_json(payload: dict, out_dir: Path, stem: str, device_name: str) -> Path:
    """Writes ``payload`` to ``out_dir/<stem>-<device slug>.json`` and returns the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}-{slug(device_name)}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def fmt(value: float | None, spec: str = ".3f") -> str:
    """``value`` formatted, or "-" when it was not measured."""
    return "-" if value is None else format(value, spec)
