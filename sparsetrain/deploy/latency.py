"""Dense vs compressed inference latency, timed side by side: `sparsetrain bench latency RUN_DIR|EXPORT`.

The models timed (`MODELS`; the table's `timed` names them): the dense model (the timm architecture of the export,
unpruned), the compressed model (the export's own `model.safetensors`) and, when the export folder holds a verified
`compact/` (Method 1, `deploy/compact.py`), the compact model: the masked model with its dead units physically
removed, a smaller dense graph. For each runtime (torch eager and onnxruntime on the CPU; torch on CUDA when present)
and batch size they are timed *interleaved*: after warm-up, each round times one forward pass of each, the order
reversed every other round (dense, compressed, compact / compact, compressed, dense), with a fixed intra-op thread
count for both runtimes, each sample a block of calls lasting >= 20 ms. Load on a busy machine then hits all models
alike. The speed-up is the ratio of the 20th percentiles dense / compressed (`speedup`; dense / compact:
`speedup_compact`): on a machine shared with other work, time slices lost to other processes make the upper part of
each distribution (even the median) mostly noise, while the fast quantile is the model's own cost; the ratio of the
medians and the median of the per-round ratios (`speedup_median`, `speedup_paired`; `_compact` for the compact
model) are kept beside it. Reported per model: median and the 20th / 80th percentiles (ms), peak memory
(`deploy.memory`, a fresh process per model and runtime), and the ten slowest layers (each model warmed up first,
then the median per layer; forward hooks in torch, onnxruntime's own profiler for ONNX). Unstructured sparsity
runs as a dense graph: its rows say so, with the storage
saving beside the speed-up; the compact model is where Method 1's speed-up is. `RUN/export/compact` timed alone is
dense vs compact (`compact_ms`, `speedup_compact`), keyed as in the run's table.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsetrain.deploy.compact import COMPACT_DIR
from sparsetrain.deploy.latency_report import noise_range, noise_words, row_spread, speedup_key, unpruned
from sparsetrain.deploy.loading import (
    export_folder,
    is_compact,
    load_compressed,
    missing_compact,
    read_manifest,
    verified_compact,
)
from sparsetrain.deploy.program import ONNX_FILE, onnx_session, trace, write_onnx
from sparsetrain.model_imports import arch_imports, import_for_arch
from sparsetrain.progress import log
from sparsetrain.rundir import check_finished
from sparsetrain.structural.serialize import ARCH_FILE

__all__ = ["interleaved_times", "latency_table"]

MODELS = ("dense", "compressed", "compact")  # the order of each round; compact only when the export holds one
COMPACT = "the compact model: dead units removed, a smaller dense graph"  # what `timed` says of it
NO_SPEEDUP_BELOW = 1.10  # an unstructured speed-up under this is reported as "no speed-up"
TOP_LAYERS = 10
PROFILE_WARMUP = 3  # untimed calls of each model with the profiling hooks on, before its slowest-layers profile
MIN_SAMPLE_MS = 20.0  # each timing sample runs >= 20 ms (a block of calls), so sub-ms preemption averages out


def interleaved_times(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int = 3,
                      sync: Callable[[], None] | None = None, min_sample_ms: float = 0.0) -> dict[str, list[float]]:
    """Wall times (ms per call) of each call, `repeats` rounds after `warmup`, the order alternating between rounds.

    Args:
        calls: name -> zero-argument function running one forward pass.
        repeats: Timed rounds; each round times every call once (or a block of calls, see `min_sample_ms`).
        warmup: Untimed rounds first.
        sync: Called before reading the clock (e.g. `torch.cuda.synchronize`), so device work is timed.
        min_sample_ms: Time blocks of k calls, k chosen after warm-up so that a block of the fastest call lasts
            at least this long (as `timeit.autorange` does); a sample then averages over scheduler hiccups
            shorter than a block. 0 = one call per sample.
    """
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    block = 1
    for round_ in range(warmup + repeats):
        if round_ == warmup and min_sample_ms > 0:
            fastest = min(_block_ms(calls[name], 1, sync) for name in names)
            block = max(1, min(1000, math.ceil(min_sample_ms / max(fastest, 1e-3))))
        for name in names if round_ % 2 == 0 else names[::-1]:
            elapsed = _block_ms(calls[name], block, sync)
            if round_ >= warmup:
                times[name].append(elapsed / block)
    return times


def _block_ms(call: Callable[[], Any], count: int, sync: Callable[[], None] | None) -> float:
    start = time.perf_counter()
    for _ in range(count):
        call()
    if sync is not None:
        sync()
    return (time.perf_counter() - start) * 1e3


def _summary(ms: list[float]) -> dict[str, float]:
    q = np.quantile(ms, [0.2, 0.5, 0.8])
    return {"median": float(q[1]), "p20": float(q[0]), "p80": float(q[2]), "runs": len(ms)}


def _speedups(times: dict[str, list[float]], stats: dict[str, dict[str, float]], which: str) -> dict[str, float]:
    """Dense / `which` as the ratio of the p20s, of the medians, the median per-round ratio and the per-round
    ratios' p20 and p80 (their spread: `noise_range`) (`speedup*` for the compressed model, `speedup_compact*`
    for the compact one)."""
    key = speedup_key(which)
    dense, other = stats["dense_ms"], stats[f"{which}_ms"]
    rounds = [d / max(c, 1e-9) for d, c in zip(times["dense"], times[which], strict=True)]
    p20, p80 = np.quantile(rounds, [0.2, 0.8])
    return {key: dense["p20"] / max(other["p20"], 1e-9), f"{key}_median": dense["median"] / max(other["median"], 1e-9),
            f"{key}_paired": statistics.median(rounds), f"{key}_paired_p20": float(p20),
            f"{key}_paired_p80": float(p80)}


def _verified_compact(folder: Path) -> dict[str, Any] | None:
    """`loading.verified_compact` of export folder `folder`'s manifest; a warning when `compact/` was written but
    failed its verification (it is not timed)."""
    manifest = read_manifest(folder)
    verified = verified_compact(manifest)
    failed = None if verified else manifest.get("formats", {}).get("compact")
    if isinstance(failed, dict):
        log.warning(f"[latency] {folder}/compact/ failed its verification (max abs diff "
                    f"{failed.get('max_abs_diff')}): not timed")
    return verified


class _Models:
    """The torch models (dense, compressed and, when the export has a verified one, compact), their ONNX files and
    what the table says about storage."""

    def __init__(self, path: str | Path, scratch: Path) -> None:
        import timm

        import sparsetrain.models  # noqa: F401  (registers sparsetrain's timm models)

        if reason := missing_compact(path):
            raise ValueError(f"bench latency: {reason}")
        check_finished(Path(path), "bench latency")  # a run directory: only once its final phase has finished
        self.folder = export_folder(path)
        if not (self.folder / ARCH_FILE).is_file():
            raise ValueError(f"bench latency: {path} is not a run directory or export folder (no {ARCH_FILE})")
        self.arch = json.loads((self.folder / ARCH_FILE).read_text())
        manifest = self.folder / "manifest.json"
        shape = json.loads(manifest.read_text())["input_shape"] if manifest.is_file() else None
        self.shape = tuple(shape or self.arch["meta"].get("input_shape") or ())
        if not self.shape:
            raise ValueError(f"bench latency: {self.folder} records no input shape (manifest.json or meta)")
        # export/compact/ timed alone: its model is Method 1's compact one, not a Method 2 (filter-pruned) export
        self.kind = "compact" if is_compact(self.folder) else "structural" if self.arch.get("modules") \
            else "unstructured"
        torch.manual_seed(0)
        import_for_arch(self.arch)  # a user's own model: the modules of its run's model.imports
        self.torch = {"dense": timm.create_model(self.arch["model_name"], pretrained=False,
                                                 **self.arch["model_kwargs"]).eval()}
        self.compact = None if self.kind == "compact" else _verified_compact(self.folder)
        if self.kind == "compact":  # keyed "compact" as in the run's three-model table (compact_ms, speedup_compact)
            self.torch["compact"] = load_compressed(self.folder, "compact")
        else:
            self.torch["compressed"] = load_compressed(self.folder, "safetensors")
        if self.compact:
            self.torch["compact"] = load_compressed(self.folder, "compact")
        self.names = tuple(name for name in MODELS if name in self.torch)
        self.scratch = scratch
        self._onnx: dict[str, Path] = {}

    def onnx(self, which: str) -> Path:
        """The model as ONNX with a dynamic batch: the export's own file, or one written to scratch."""
        if which not in self._onnx:
            own = self.folder / ONNX_FILE
            manifest = self.folder / "manifest.json"
            dynamic = manifest.is_file() and json.loads(manifest.read_text())["formats"].get(
                "onnx", {}).get("dynamic_batch", False)
            if which == "compressed" and own.is_file() and dynamic:
                self._onnx[which] = own
            else:
                program, _ = trace(self.torch[which], torch.randn(2, *self.shape))
                self._onnx[which] = write_onnx(program, torch.randn(2, *self.shape), self.scratch / f"{which}.onnx",
                                               opset=18)
        return self._onnx[which]

    def timed(self) -> dict[str, str]:
        """Which models were timed: name -> what it is (latency.json's `timed`)."""
        from sparsetrain.structural.serialize import WEIGHTS_FILE

        compact = self.folder.name if self.kind == "compact" else f"{self.folder.name}/{COMPACT_DIR}"
        what = {"dense": f"{self.arch['model_name']} as timm builds it (unpruned architecture, random weights)",
                "compressed": f"{self.folder.name}/{WEIGHTS_FILE}",
                "compact": f"{compact}/{WEIGHTS_FILE} ({COMPACT})"}
        return {name: what[name] for name in self.names}

    def storage(self) -> dict[str, Any]:
        """Bytes of the dense model's safetensors file (header included, as the weights files are measured;
        `bitmask.plain_bytes`) vs the export's smallest weights file (`compressed_*`; not for
        `RUN/export/compact` timed alone) and the compact model's weights file (`compact_*`, when timed)."""
        from sparsetrain.deploy.bitmask import BITMASK_FILE, plain_bytes
        from sparsetrain.structural.serialize import WEIGHTS_FILE

        dense = plain_bytes(self.torch["dense"].state_dict())
        params = {k: sum(p.numel() for p in m.parameters()) for k, m in self.torch.items()}
        out: dict[str, Any] = {"dense_bytes": dense, "params": params}
        if self.kind == "compact":
            size = (self.folder / WEIGHTS_FILE).stat().st_size
            nonzero = sum(int(torch.count_nonzero(p)) for p in self.torch["compact"].parameters())
            return {**out, "compact_bytes": size, "compact_file": f"{COMPACT_DIR}/{WEIGHTS_FILE}",
                    "compact_ratio": dense / max(size, 1), "compact_nonzero_params": nonzero}
        files = {name: (self.folder / name).stat().st_size for name in (WEIGHTS_FILE, BITMASK_FILE)
                 if (self.folder / name).is_file()}
        best = min(files, key=files.get)
        nonzero = sum(int(torch.count_nonzero(p)) for p in self.torch["compressed"].parameters())
        out.update(compressed_bytes=files[best], compressed_file=best, ratio=dense / max(files[best], 1),
                   nonzero_params=nonzero)
        if self.compact:
            weights = self.compact["files"][-1]  # compact/model.safetensors
            out.update(compact_bytes=self.compact["weights_bytes"], compact_file=weights,
                       compact_ratio=dense / max(self.compact["weights_bytes"], 1),
                       compact_nonzero_params=self.compact["nonzero_params"])
        return out


def _torch_calls(models: _Models, batch: int, device: torch.device) -> dict[str, Callable[[], Any]]:
    x = torch.randn(batch, *models.shape, device=device)
    placed = {k: m.to(device) for k, m in models.torch.items()}

    def call(model: nn.Module) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return model(x)
        return run

    return {k: call(m) for k, m in placed.items()}


def _onnx_calls(models: _Models, batch: int, threads: int) -> dict[str, Callable[[], Any]]:
    x = np.random.default_rng(0).standard_normal((batch, *models.shape), dtype=np.float32)
    sessions = {k: onnx_session(models.onnx(k), threads) for k in models.names}
    return {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: x})) for k, s in sessions.items()}


def _torch_layers(model: nn.Module, call: Callable[[], Any], runs: int,
                  warmup: int = PROFILE_WARMUP) -> list[dict[str, Any]]:
    """Median forward time per leaf module (forward pre/post hooks) over `runs` calls, slowest first (ms).

    `warmup` calls with the hooks on run first, untimed: the first calls of a model (or of its hooked modules)
    pay one-off costs, which made the first layer of the model profiled first look 50x slower (trial 24: dense fc1
    0.425 ms against compact's 0.008 ms); the median keeps a call that lost its core out as well."""
    spent: dict[str, list[float]] = defaultdict(list)
    started: dict[str, float] = {}
    handles = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            handles.append(module.register_forward_pre_hook(
                lambda m, a, n=name: started.__setitem__(n, time.perf_counter())))
            handles.append(module.register_forward_hook(
                lambda m, a, o, n=name: spent[n].append(time.perf_counter() - started[n])))
    try:
        for _ in range(warmup):
            call()
        spent.clear()
        for _ in range(runs):
            call()
    finally:
        for handle in handles:
            handle.remove()
    types = {n: type(m).__name__ for n, m in model.named_modules()}
    medians = {n: statistics.median(t) for n, t in spent.items()}
    rows = sorted(medians.items(), key=lambda kv: -kv[1])[:TOP_LAYERS]
    return [{"layer": n, "op": types[n], "ms": 1e3 * t} for n, t in rows]


def _onnx_layers(path: Path, batch: int, shape: tuple[int, ...], threads: int, runs: int,
                 scratch: Path, warmup: int = PROFILE_WARMUP) -> list[dict[str, Any]]:
    """Median time per graph node (ms) from onnxruntime's profiler (a separate session: profiling costs time) over
    `runs` calls after `warmup` calls whose events are dropped (a new session's first runs pay one-off costs)."""
    session = onnx_session(path, threads, profile_prefix=str(scratch / f"{path.stem}_b{batch}"))
    x = np.zeros((batch, *shape), dtype=np.float32)
    for _ in range(warmup + runs):
        session.run(None, {session.get_inputs()[0].name: x})
    trace_file = Path(session.end_profiling())
    spent: dict[str, list[float]] = defaultdict(list)
    ops: dict[str, str] = {}
    for event in sorted(json.loads(trace_file.read_text()), key=lambda e: e.get("ts", 0)):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            node = event["name"].removesuffix("_kernel_time")
            spent[node].append(event["dur"] / 1e3)
            ops[node] = event.get("args", {}).get("op_name", "")
    trace_file.unlink(missing_ok=True)
    medians = {n: statistics.median(t[warmup:] or t) for n, t in spent.items()}
    rows = sorted(medians.items(), key=lambda kv: -kv[1])[:TOP_LAYERS]
    return [{"layer": n, "op": ops[n], "ms": t} for n, t in rows]


def _memory(models: _Models, runtime: str, batches: tuple[int, ...], threads: int) -> dict[str, dict[int, int]]:
    from sparsetrain.deploy.memory import measure_peak_memory

    peaks = {}
    log.info(f"[latency] {runtime} peak memory: {', '.join(models.names)}, each loaded and run in a fresh process "
             f"(batches {', '.join(map(str, batches))}; a few seconds per model)")
    for which in models.names:
        if runtime == "torch":
            spec = {"kind": "timm", "source": models.arch["model_name"], "model_kwargs": models.arch["model_kwargs"],
                    "imports": arch_imports(models.arch)}
            if which != "dense":
                spec = {"kind": "export",
                        "source": str(models.folder / COMPACT_DIR if which == "compact" else models.folder)}
        else:
            spec = {"kind": "onnx", "source": str(models.onnx(which))}
        spec.update(runtime=runtime, shape=list(models.shape), batches=list(batches), threads=threads)
        peaks[which] = measure_peak_memory(spec)
    return peaks


def _runtimes() -> list[tuple[str, str]]:
    found = [("torch", "cpu")]
    try:
        import onnxruntime  # noqa: F401
        found.append(("onnxruntime", "cpu"))
    except ImportError:
        log.warning("bench latency: onnxruntime is not installed; timing torch only")
    if torch.cuda.is_available():
        found.append(("torch", "cuda"))
    return found


def latency_table(path: str | Path, batches: tuple[int, ...] = (1, 16), repeats: int = 20, threads: int = 1,
                  warmup: int = 3, memory: bool = True) -> dict[str, Any]:
    """Time the dense, compressed and (when the export holds a verified `compact/`) compact models of an export
    side by side, interleaved in the same rounds (see the module docstring).

    Args:
        path: A run directory or export folder (`RUN/export/compact` itself: its model is then timed alone against
            the dense architecture, keyed "compact" as in a run's table, and the table's `kind` is "compact").
        batches: Batch sizes (e.g. 1 and a larger one).
        repeats: Timed rounds per runtime and batch.
        threads: Intra-op threads of torch and onnxruntime (torch's setting is restored afterwards).
        warmup: Untimed rounds first.
        memory: Measure peak memory (child processes, a few seconds each).

    Returns:
        {"rows": [...], "slowest_layers": {...}, "storage": {...}, "timed", "kind", "model", "phase" (the run phase
        the export holds, architecture.json's meta.phase; None for an export that does not record it),
        "input_shape", "threads", "repeats", "warmup"}. `kind`: "unstructured" (a masked model), "structural" (a
        smaller architecture: Method 2's filters removed) or "compact" (`RUN/export/compact`, Method 1's dead units
        removed, timed alone). `timed`: the models timed, name -> what it is ("dense",
        "compressed", and "compact" when present; "dense" and "compact" for kind "compact"; tables written before
        it timed dense and compressed, and tables of `RUN/export/compact` written before it keyed the compact
        model "compressed"). A row
        (one runtime, device and batch) holds `<model>_ms` ({median, p20, p80 in ms, runs}) per model timed, the
        speed-ups over dense (`speedup`, `speedup_median`, `speedup_paired` for compressed; `speedup_compact`,
        `speedup_compact_median`, `speedup_compact_paired` for compact), `peak_memory_bytes` {model: bytes or None}
        and a `note`. `storage`: `dense_bytes` and `params` (per model timed); `compressed_bytes`,
        `compressed_file`, `ratio` and `nonzero_params` for the compressed model; `compact_bytes`, `compact_file`,
        `compact_ratio` and `compact_nonzero_params` when compact was timed.

    Raises:
        ValueError: `repeats` or a batch under 1, `threads` under 1 (one line naming it); what `_Models` refuses.
    """
    for name, value in (("repeats", repeats), ("threads", threads), *(("batch", b) for b in batches)):
        if value < 1:
            raise ValueError(f"bench latency: {name}: expected an integer >= 1, got {value}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="sparsetrain-latency-") as scratch:
            return _measure(_Models(path, Path(scratch)), tuple(batches), repeats, threads, warmup, memory)
    finally:
        torch.set_num_threads(previous)


def _measure(models: _Models, batches: tuple[int, ...], repeats: int, threads: int, warmup: int,
             memory: bool) -> dict[str, Any]:
    storage = models.storage()
    rows, layers = [], {}
    for runtime, device in _runtimes():
        peaks = _memory(models, runtime, batches, threads) if memory and device == "cpu" else {}
        for batch in batches:
            log.info(f"[latency] {runtime} {device} batch {batch}: {repeats} interleaved rounds")
            if runtime == "torch":
                calls = _torch_calls(models, batch, torch.device(device))
                sync = torch.cuda.synchronize if device == "cuda" else None
            else:
                calls, sync = _onnx_calls(models, batch, threads), None
            times = interleaved_times(calls, repeats, warmup, sync, min_sample_ms=MIN_SAMPLE_MS)
            stats = {f"{k}_ms": _summary(times[k]) for k in models.names}
            row = {"runtime": runtime, "device": device, "batch": batch, **stats}
            for which in models.names[1:]:
                row.update(_speedups(times, stats, which))
            row["peak_memory_bytes"] = {k: (peaks.get(k) or {}).get(batch) for k in models.names}
            row["note"] = _note(models.kind, row, storage.get("ratio"), unpruned=unpruned(storage))
            rows.append(row)
            key = f"{runtime}-{device}/batch{batch}"
            runs = max(3, min(repeats, 10))
            for which in models.names:
                layers[f"{key}/{which}"] = (
                    _torch_layers(models.torch[which], calls[which], runs) if runtime == "torch"
                    else _onnx_layers(models.onnx(which), batch, models.shape, threads, runs, models.scratch))
    for model in models.torch.values():
        model.cpu()
    return {"kind": models.kind, "model": models.arch["model_name"], "phase": models.arch.get("meta", {}).get("phase"),
            "input_shape": list(models.shape),
            "threads": threads, "repeats": repeats, "warmup": warmup, "timed": models.timed(), "storage": storage,
            "rows": rows, "slowest_layers": layers}


def _note(kind: str, row: dict[str, Any], storage_ratio: float | None, unpruned: bool = False) -> str:
    """What a row means: unstructured zeros run as a dense graph, so any measured gap of the compressed model is
    noise, not sparsity (`unpruned`: it has no zeros at all, `latency_report.unpruned`, e.g. the dense phase's
    export, so the note says it is the same graph as dense, and claims no zeros nor a storage saving); a model made
    smaller (Method 2's filters removed, the compact model's dead units) is a smaller dense graph, so its gap can be
    real, unless its three ratios disagree (`noise_range`: then the note gives their range). `row` holds the
    speed-ups (`speedup*`; none for `RUN/export/compact` timed alone, whose `speedup_compact*` are the compact
    model's); `storage_ratio` the compressed weights file's saving. Speed-ups are judged as printed (2 decimals):
    0.996 prints as 1.00x and is not called slower."""
    parts = []
    if "speedup" in row:
        speedup = _shown(row["speedup"])
        if kind == "unstructured" and unpruned:
            parts.append(f"no weight pruned: dense and compressed are the same graph; {speedup:.2f}x is timing noise")
        elif kind == "unstructured":
            parts.append(f"no speed-up: unstructured zeros run as a dense graph ({speedup:.2f}x); "
                         f"{_storage_saving(storage_ratio)}" if speedup < NO_SPEEDUP_BELOW else
                         f"no speed-up expected: the same dense graph, {speedup:.2f}x is measurement noise; "
                         f"{_storage_saving(storage_ratio)}")
        else:
            parts.append(_judged(row, "compressed", faster=""))
    if "speedup_compact" in row:
        parts.append(_judged(row, "compact", faster="dead units removed, "))
    return "; ".join(part for part in parts if part)


def _storage_saving(ratio: float) -> str:
    """`storage 9.9x smaller`, or `storage the same size` when the saving prints as 1.0x (few zeros: the plain
    weights file is the compressed one)."""
    return "storage the same size" if f"{ratio:.1f}" == "1.0" else f"storage {ratio:.1f}x smaller"


def _judged(row: dict[str, Any], model: str, faster: str) -> str:
    """`model`'s speed-up in words: within noise (with the range), slower than dense, or `faster` + the ratio
    (nothing when `faster` is empty); the compact model's words are prefixed `compact: `."""
    key = speedup_key(model)
    speedup, prefix = _shown(row[key]), "compact: " if model == "compact" else ""
    noisy = noise_range(row[key], row.get(f"{key}_median"), row.get(f"{key}_paired"), row_spread(row, key))
    if noisy:
        return f"{prefix}{speedup:.2f}x is {noise_words(noisy)}"
    if speedup < 1.0:
        return f"{prefix}slower than dense ({speedup:.2f}x)"
    return f"{prefix}{faster}{speedup:.2f}x" if faster else ""


def _shown(speedup: float) -> float:
    """The speed-up as the note prints it (`:.2f`), so its words agree with its number."""
    return float(f"{speedup:.2f}")
