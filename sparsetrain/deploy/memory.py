"""Peak memory of inference, measured in a fresh process: `python -m sparsetrain.deploy.memory SPEC_JSON`.

What is measured: the process's peak resident set (VmHWM; `ru_maxrss` elsewhere) while it runs one forward pass per
batch size (ascending), minus its resident set with the runtime ready and no model, i.e. the model's weights +
workspace + activations as the operating system saw them. The child first loads the model and runs the smallest
batch once, then frees it (warm-up): lazy imports, the runtime's thread pool and kernel caches are one-time costs of
the process, not of the model (a first `load_compressed` grows the process by ~47 MB, a later one by ~15 MB).
Freed heap is handed back to the system (`malloc_trim`) before each baseline: otherwise what a loader freed stays
resident and counts, e.g. a pruned LeViT export is rebuilt from the dense architecture (peak 81 -> 76 MB for 27 ->
7 MB of weights when counted; 33 -> 11 MB now), and an onnxruntime session keeps its parse buffers (resnet18: 142 MB
for 43 MB of weights). The peak is restarted (`/proc/self/clear_refs`) once the model is loaded: loading is not
inference, and its transient differs by source (a model read from safetensors briefly holds the file's tensors
beside its own). A fresh process per (runtime, model) keeps allocator caches of one measurement out of the next; the
peak never decreases, so each batch's figure covers the smaller batches before it (which need less).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import re
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["measure_peak_memory"]


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (VmHWM on Linux, ru_maxrss elsewhere)."""
    status = Path("/proc/self/status")
    if status.is_file():
        match = re.search(r"VmHWM:\s+(\d+) kB", status.read_text())
        if match:
            return int(match.group(1)) * 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _reset_peak() -> int:
    """Restart the peak at the current resident size (Linux `clear_refs` 5); returns the baseline in bytes.

    Imports can peak above where they settle; without the reset that transient would hide the model's cost.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not permitted: the baseline is the peak so far (an underestimate of the growth)
    return _peak_rss_bytes()


def measure_peak_memory(spec: dict[str, Any], timeout_s: float = 600) -> dict[int, int] | None:
    """Run `spec` in a child process; returns {batch: peak bytes}, or None when the child fails.

    Args:
        spec: {"runtime": "torch" | "onnxruntime", "source": export folder / ONNX file / timm name,
            "kind": "export" | "timm" | "onnx", "model_kwargs": dict (timm),
            "imports": the run's model.imports (timm), "shape": per-sample input shape,
            "batches": list of batch sizes, "threads": intra-op threads}.
    """
    done = subprocess.run([sys.executable, "-m", "sparsetrain.deploy.memory", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        return None
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def _release() -> None:
    """Hand freed memory back to the operating system: collect garbage, then glibc's `malloc_trim(0)` (freed heap
    pages otherwise stay resident and would count as the next model's memory); a no-op without glibc."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _torch_runner(spec: dict[str, Any]) -> Callable[[int], None]:
    import timm
    import torch

    import sparsetrain.models  # noqa: F401  (registers sparsetrain's timm models)
    from sparsetrain.deploy.loading import load_compressed
    from sparsetrain.model_imports import import_models

    torch.set_num_threads(spec["threads"])
    if spec["kind"] == "export":
        model = load_compressed(spec["source"], "safetensors")
    else:
        import_models(spec.get("imports", []))
        model = timm.create_model(spec["source"], pretrained=False, **spec["model_kwargs"]).eval()

    def run(batch: int) -> None:
        with torch.inference_mode():
            model(torch.zeros(batch, *spec["shape"]))

    return run


def _onnx_runner(spec: dict[str, Any]) -> Callable[[int], None]:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()  # as deploy.program.onnx_session, without importing torch here
    options.intra_op_num_threads, options.inter_op_num_threads = spec["threads"], 1
    session = ort.InferenceSession(spec["source"], sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: int) -> None:
        session.run(None, {name: np.zeros((batch, *spec["shape"]), dtype=np.float32)})

    return run


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    load = _torch_runner if spec["runtime"] == "torch" else _onnx_runner
    run = load(spec)  # warm-up: lazy imports, the runtime's thread pool and kernel caches, allocator arenas
    run(min(spec["batches"]))
    del run
    _release()
    base = _reset_peak()  # the runtime ready, no model: what follows is the model's cost
    run = load(spec)
    _release()  # what loading left for the collector
    _reset_peak()  # from the loaded model's resident size on: the loading transient is not inference's cost
    peaks = {}
    for batch in sorted(spec["batches"]):
        run(batch)
        peaks[batch] = _peak_rss_bytes() - base
    print(json.dumps(peaks))


if __name__ == "__main__":
    from sparsetrain.fast_exit import exit_now

    main(sys.argv[1:])
    exit_now(0)
