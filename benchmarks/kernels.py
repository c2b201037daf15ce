"""Benchmark of the fused mask kernels: ours vs torch eager vs torch.compile (vs autograd-in-loss for ℓ0).

Cases: flat tensors of 1M…1G elements (one tensor, like a DeepSpeed flat partition) and the real conv/linear
weight lists (ndim > 1) of timm resnet50, vit_base_patch16_224 and convnext_tiny. Each case times, per op
(``--ops``) and mask kind (``--masks``: ``bool`` = 1 byte per weight, ``packed`` = ``PackedMask``, 1 bit):

* ours: the fused kernel with masks — ``l0_grad_mask_`` (reads w, g, m; writes g) or ``apply_masks_``
  (reads w, m; writes w);
* eager: the torch reference the tests use (``l0_grad_mask_reference_`` / ``apply_masks_reference_``; for
  packed masks it unpacks them first, as a torch caller would);
* compile: ``torch.compile`` of that reference;
* autograd (ℓ0 only): forward + backward of ``l0_penalty`` (the penalty added to the loss; no masking);
* max abs diff: the largest |ours − eager| over what the op writes (the gradients, or the weights), both run once
  on copies of the same inputs (`max_abs_diff`).

GB/s counts the minimum bytes of ours (the mask at 1 byte or 1/8 byte per weight) and is compared with the
device copy bandwidth measured in the same run. Needs CUDA to mean anything; on CPU it runs a quick smoke mode
(tiny sizes, the torch backend against the reference): those times are a smoke test of the code path, not kernel
performance (`timing_caveat`, printed and in the JSON), each variant timed after `CPU_WARMUP_CALLS` untimed calls by
``torch.utils.benchmark.Timer.blocked_autorange`` (`benchmarks.common.time_call`; the JSON records the timer and
the calls).

Usage: ``python -m benchmarks.kernels [--quick] [--sizes 1M,64M] [--models resnet50] [--dtypes fp32,bf16]
[--ops l0_grad_mask,apply_masks] [--masks bool,packed]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.common import (
    CPU_WARMUP_CALLS,
    OUTPUT_DIR,
    Timing,
    bench_ms,
    copy_gbps,
    device_label,
    fmt,
    kernel_backend,
    pick_device,
    slug,
    time_call,
    write_json,
)
from sparsetrain.argtypes import CommandParser, out_folder
from triton_kernels import PackedMask, apply_masks_reference_, get_ops, l0_grad_mask_reference_, l0_penalty

PROG = "python -m benchmarks.kernels"  # the usage line's command; `sparsetrain bench kernels` passes its own
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OPS = ["l0_grad_mask", "apply_masks"]
DEFAULT_OPS = "l0_grad_mask"
MASKS = ["bool", "packed"]
MODELS = ["resnet50", "vit_base_patch16_224", "convnext_tiny"]
FULL_SIZES = [2**20, 2**23, 2**26, 2**28, 2**30]
QUICK_GPU_SIZES = [2**20, 2**22]
CPU_SIZES = [4096, 65537]
CPU_MODEL_TENSORS = 8  # smoke mode keeps the first few weight tensors of each model
ALPHA0, BETA, L2 = 1e-6, 10.0, 1e-4


@dataclass
class Row:
    """One benchmark row (milliseconds are medians; None = not measured). `timer`, `warmup_calls`, `ours_calls` and
    `eager_calls`: how ours and eager were timed (`benchmarks.common.Timing`; calls None where the timer decides by
    time). `max_abs_diff`: ours against the torch reference (`max_abs_diff`), in the weights' units. `backend`: what
    ran as ours (`backend_ran`: torch, triton-interpreter or triton-cuda)."""

    case: str
    numel: int
    dtype: str
    op: str
    mask: str
    ours_ms: float | None
    eager_ms: float | None
    compile_ms: float | None
    autograd_ms: float | None
    gbps: float | None
    copy_gbps: float
    host_ms: float | None = None
    graph_ms: float | None = None
    timer: str = ""
    warmup_calls: int | None = None
    ours_calls: int | None = None
    eager_calls: int | None = None
    max_abs_diff: float | None = None
    backend: str = ""


def parse_size(text: str) -> int:
    """ "1M" → 2^20, "1G" → 2^30, "4096" → 4096.

    Raises:
        ValueError: not an integer with an optional K, M or G suffix.
    """
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:].upper(), 1)
    return int(text[:-1] if scale > 1 else text) * scale


def size_list(text: str) -> list[int]:
    """`--sizes`: comma-separated positive sizes (`parse_size`), e.g. "1M,64M,1G" → [2^20, 2^26, 2^30].

    Raises:
        argparse.ArgumentTypeError: `expected sizes like 1M,64M,1G (positive), got 'foo'` naming the first bad
            size (argparse prefixes the flag).
    """
    sizes = []
    for item in text.split(","):
        try:
            size = parse_size(item.strip())
        except ValueError:
            size = 0
        if size < 1:
            raise argparse.ArgumentTypeError(f"expected sizes like 1M,64M,1G (positive), got {item!r}")
        sizes.append(size)
    return sizes


def choice_list(choices: Collection[str]) -> Callable[[str], list[str]]:
    """A converter of a comma-separated flag whose items come from `choices` (`--dtypes`, `--ops`, `--masks`).

    Raises (from the converter):
        argparse.ArgumentTypeError: `unknown 'fp64' (choose from fp32, bf16, fp16)` naming the first unknown item.
    """

    def convert(text: str) -> list[str]:
        values = text.split(",")
        unknown = [v for v in values if v not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown[0]!r} (choose from {', '.join(choices)})")
        return values

    return convert


def model_list(text: str) -> list[str]:
    """`--models`: comma-separated timm model names, or `none` for no model case.

    Raises (argparse shows it as one line naming the flag):
        argparse.ArgumentTypeError: `unknown timm model 'resnet-50' (closest: resnet50, ...)` for the first unknown.
    """
    from sparsetrain.model_names import check_model_name

    if text == "none":
        return []
    names = [name.strip() for name in text.split(",")]
    for name in names:
        try:
            check_model_name(name)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix("model.name: ")) from None
    return names


def layer_alphas(weights: list[torch.Tensor]) -> list[float]:
    """Method 1's per-layer scaling α0·sqrt(N_l / N_max)."""
    n_max = max(w.numel() for w in weights)
    return [ALPHA0 * math.sqrt(w.numel() / n_max) for w in weights]


def model_weights(name: str, limit: int | None) -> list[torch.Tensor]:
    """fp32 CPU copies of the conv/linear weights (ndim > 1) of a randomly initialised timm model."""
    import timm

    import sparsetrain.models  # noqa: F401  (registers sparsetrain's timm models: `--models` takes their names)

    model = timm.create_model(name, pretrained=False)
    return [p.detach().clone() for p in model.parameters() if p.ndim > 1][:limit]


def fits(numel: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether w, g, m and the eager reference's fp32 temporaries (about eight) fit in free device memory."""
    if device.type != "cuda":
        return True
    need = numel * (3 * dtype.itemsize + 1 + 8 * 4)
    return need < torch.cuda.mem_get_info(device)[0]


def make_masks(weights: list[torch.Tensor], kind: str, gen: torch.Generator) -> list[torch.Tensor | PackedMask]:
    """Random keep-masks (half kept) of one kind: bool tensors shaped like the weights, or ``PackedMask``s."""
    masks = [torch.rand(w.shape, generator=gen, device=w.device) > 0.5 for w in weights]
    return masks if kind == "bool" else [PackedMask.pack(m) for m in masks]


def mask_bytes(weights: list[torch.Tensor], kind: str) -> int:
    """Bytes of the masks of ``weights``: one per weight (bool) or ``ceil(numel / 8)`` per tensor (packed)."""
    return sum(w.numel() if kind == "bool" else (w.numel() + 7) // 8 for w in weights)


def _op_calls(op: str, weights: list[torch.Tensor], masks: list, alphas: list[float], gen: torch.Generator, args):
    """(ours, reference, reference arguments, minimum bytes of ours without the masks) of one op."""
    ops = get_ops(args.backend)
    if op == "l0_grad_mask":
        grads = [(torch.randn(w.shape, generator=gen, device=w.device) * 1e-3).to(w.dtype) for w in weights]
        kwargs = {"alphas": alphas, "beta": BETA, "l2": L2}
        numel = sum(w.numel() for w in weights)
        return (
            lambda: ops.l0_grad_mask_(weights, grads, masks, **kwargs),
            l0_grad_mask_reference_,
            ((weights, grads, masks), kwargs),
            numel * 3 * weights[0].dtype.itemsize,  # read w, g; write g
        )
    return (
        lambda: ops.apply_masks_(weights, masks),
        apply_masks_reference_,
        ((weights, masks), {}),
        sum(w.numel() for w in weights) * 2 * weights[0].dtype.itemsize,  # read w; write w
    )


def max_abs_diff(op: str, weights: list[torch.Tensor], masks: list, alphas: list[float], gen: torch.Generator,
                 backend: str) -> float:
    """Largest |ours − reference| (fp32) over every element the op writes: the gradients of ``l0_grad_mask_`` (on
    the same random gradients) or the weights of ``apply_masks_``, each run once on its own copy; 0.0 for no element.

    The reference is the one the kernel tests use (``l0_grad_mask_reference_`` / ``apply_masks_reference_``).
    """
    ops = get_ops(backend)
    if op == "l0_grad_mask":
        grads = [(torch.randn(w.shape, generator=gen, device=w.device) * 1e-3).to(w.dtype) for w in weights]
        ours, ref = [g.clone() for g in grads], [g.clone() for g in grads]
        kwargs = {"alphas": alphas, "beta": BETA, "l2": L2}
        ops.l0_grad_mask_(weights, ours, masks, **kwargs)
        l0_grad_mask_reference_(weights, ref, masks, **kwargs)
    else:
        ours, ref = [w.clone() for w in weights], [w.clone() for w in weights]
        ops.apply_masks_(ours, masks)
        apply_masks_reference_(ref, masks)
    diffs = [(a.float() - b.float()).abs().max().item() for a, b in zip(ours, ref, strict=True) if a.numel()]
    return max(diffs, default=0.0)


def _time_variants(
    op: str, kind: str, weights: list[torch.Tensor], alphas: list[float], gen: torch.Generator, args
) -> tuple[Timing, Timing, float | None, float | None, float | None, int, float]:
    """Timings of ours and eager and milliseconds of compiled on random data and masks (half kept); ours' host and
    CUDA-graph (device-only) milliseconds; the minimum bytes ours moves; ours' max abs diff from the reference."""
    device = weights[0].device
    masks = make_masks(weights, kind, gen)
    diff = max_abs_diff(op, weights, masks, alphas, gen, args.backend)
    ours_fn, reference, (ref_args, ref_kwargs), data_bytes = _op_calls(op, weights, masks, alphas, gen, args)
    ours, host, graph = time_call(ours_fn, device), host_ms(ours_fn, device), graph_ms(ours_fn, device)
    eager = time_call(lambda: reference(*ref_args, **ref_kwargs), device)
    compiled_ms = None
    if args.compile:
        torch._dynamo.reset()  # a fresh cache per case: each case is a new list of shapes
        compiled = torch.compile(reference, dynamic=False)
        compiled_ms = bench_ms(lambda: compiled(*ref_args, **ref_kwargs), device)
    return ours, eager, compiled_ms, host, graph, data_bytes + mask_bytes(weights, kind), diff


def graph_ms(fn, device: torch.device) -> float | None:
    """Device-only milliseconds per call: ``fn`` captured in a CUDA graph and replayed (no host overhead).

    None off CUDA or when the call cannot be captured.
    """
    if device.type != "cuda":
        return None
    from triton.testing import do_bench_cudagraph

    try:
        return float(do_bench_cudagraph(fn, quantiles=[0.5, 0.2, 0.8])[0])
    except RuntimeError as exc:  # capture refused: report the row without it
        print(f"graph capture failed: {exc}".splitlines()[0])
        return None


def host_ms(fn, device: torch.device, calls: int = 50) -> float | None:
    """Host milliseconds per call of ``fn`` with the device idle at the start (launch and Python overhead only).

    When this exceeds the device time of one call, a tight loop of calls is host-bound; inside a training
    step the call overlaps the backward kernels still queued on the device.
    """
    if device.type != "cuda":
        return None
    fn()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize(device)
    return elapsed * 1e3 / calls


def time_case(
    case: str, tensors: list, dtype: torch.dtype, device: torch.device, args: argparse.Namespace, copy: float
) -> list[Row]:
    """Times every op × mask kind on one list of weights (given tensors, or shapes filled with random values)."""
    gen = torch.Generator(device=device).manual_seed(0)  # random data on the device: never time zeros
    weights = [
        t.to(device, dtype)
        if isinstance(t, torch.Tensor)
        else (torch.randn(t, generator=gen, device=device) * 0.05).to(dtype)
        for t in tensors
    ]
    alphas = layer_alphas(weights)
    autograd = None
    if "l0_grad_mask" in args.ops:
        params = [w.clone().requires_grad_() for w in weights]
        autograd = bench_ms(lambda: l0_penalty(params, alphas, BETA, L2).backward(), device, grad_to_none=params)
        del params
    numel = sum(w.numel() for w in weights)
    name = {v: k for k, v in DTYPES.items()}[dtype]
    rows = []
    for op in args.ops:
        for kind in args.masks:
            ours, eager, compiled_ms, host, graph, min_bytes, diff = _time_variants(op, kind, weights, alphas, gen,
                                                                                    args)
            gbps = min_bytes / (ours.ms * 1e6) if ours.ms else None
            auto = autograd if op == "l0_grad_mask" else None
            rows.append(Row(case, numel, name, op, kind, ours.ms, eager.ms, compiled_ms, auto, gbps, copy, host, graph,
                            ours.timer, ours.warmup_calls, ours.timed_calls, eager.timed_calls, diff,
                            backend_ran(args.backend, device)))
    return rows


def run_case(case: str, tensors: list, dtype: torch.dtype, device: torch.device, args, copy: float) -> list[Row]:
    """``time_case``, or no rows (with a note) when it does not fit in device memory."""
    numel = sum(t.numel() if isinstance(t, torch.Tensor) else math.prod(t) for t in tensors)
    if not fits(numel, dtype, device):
        print(f"skip {case} {dtype}: does not fit in free device memory")
        return []
    try:
        return time_case(case, tensors, dtype, device, args, copy)
    except torch.cuda.OutOfMemoryError:
        print(f"skip {case} {dtype}: out of memory")
        return []
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


# (name, unit, width) of each printed column; a second header line gives the units
COLUMNS = [("case", "", -24), ("numel", "elements", 11), ("dtype", "", 6), ("op", "", 13), ("mask", "", 7),
           ("ours", "ms", 9), ("eager", "ms", 9), ("compile", "ms", 9), ("autograd", "ms", 9),
           ("eager/ours", "ratio", 11), ("comp/ours", "ratio", 10), ("auto/ours", "ratio", 10), ("GB/s", "GB/s", 7),
           ("%copy", "%", 6), ("host", "ms", 7), ("graph", "ms", 8), ("maxdiff", "abs", 9)]


def table_header() -> str:
    """The column names, then their units: median ms per call of each variant, speed-up ratios of ours over each
    baseline, ours' GB/s and its % of the copy bandwidth, host ms per call (launch-only loop), ms per CUDA-graph
    replay, ours' max abs diff from the torch reference."""
    def line(key: int) -> str:
        return "".join(f"{column[key]:<{-width}}" if width < 0 else f"{column[key]:>{width}}"
                       for *column, width in COLUMNS)
    return f"{line(0)}\n{line(1)}"


def print_table(rows: list[Row], header: bool = True) -> None:
    """Milliseconds, speed-ups of ours over each baseline, GB/s as a share of copy bandwidth, host ms per call
    (`table_header` names the columns and their units)."""
    if header:
        print(table_header())
    for r in rows:
        ratios = [
            None if (b is None or not r.ours_ms) else b / r.ours_ms for b in (r.eager_ms, r.compile_ms, r.autograd_ms)
        ]
        share = None if r.gbps is None else 100 * r.gbps / r.copy_gbps
        print(
            f"{r.case:<24}{r.numel:>11}{r.dtype:>6}{r.op:>13}{r.mask:>7}{fmt(r.ours_ms):>9}{fmt(r.eager_ms):>9}"
            f"{fmt(r.compile_ms):>9}{fmt(r.autograd_ms):>9}{fmt(ratios[0], '.2f'):>11}{fmt(ratios[1], '.2f'):>10}"
            f"{fmt(ratios[2], '.2f'):>10}{fmt(r.gbps, '.0f'):>7}{fmt(share, '.0f'):>6}{fmt(r.host_ms):>7}"
            f"{fmt(r.graph_ms):>8}{fmt(r.max_abs_diff, '.1e'):>9}"
        )


def parse_args(argv: list[str] | None, prog: str = PROG) -> argparse.Namespace:
    """The arguments; `prog` is the command that the usage line and errors name (`sparsetrain bench kernels`
    from the CLI)."""
    parser = CommandParser(prog=prog, description=__doc__.splitlines()[0], epilog=HELP_CAVEAT)
    parser.add_argument("--quick", action="store_true", help="few small cases (forced on CPU)")
    parser.add_argument("--sizes", type=size_list, help="flat sizes, comma separated, e.g. 1M,64M,1G")
    parser.add_argument("--models", type=model_list,
                        help=f"comma separated timm models (default: {','.join(MODELS)}; the CPU / --quick mode: "
                        f"{MODELS[0]}); 'none' for none")
    parser.add_argument("--dtypes", type=choice_list(DTYPES), default="fp32,bf16",
                        help=f"comma separated from {','.join(DTYPES)} (default: fp32,bf16)")
    parser.add_argument("--ops", type=choice_list(OPS), default=DEFAULT_OPS,
                        help=f"comma separated from {','.join(OPS)} (default: {DEFAULT_OPS}; add apply_masks to time "
                        "the masking after each finetune step too)")
    parser.add_argument("--masks", type=choice_list(MASKS), default="bool,packed",
                        help=f"mask kinds, comma separated from {','.join(MASKS)} (default: bool,packed)")
    parser.add_argument("--backend", choices=("triton", "torch"),
                        help="ours: triton (default on CUDA) or torch (default on CPU)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip torch.compile (always skipped on CPU)")
    parser.add_argument("--out", type=out_folder, default=OUTPUT_DIR, help=f"folder for kernels-<device>.json "
                        f"(default {OUTPUT_DIR}; benchmarks/results holds the committed tables)")
    parser.add_argument("--append", action="store_true", help="keep earlier rows of the JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str = PROG) -> None:
    """Runs the benchmark, prints the table and writes ``<out>/kernels-<device>.json``.

    Args:
        argv: The arguments after the command (default: `sys.argv[1:]`).
        prog: The command as typed, for the usage line and errors: `python -m benchmarks.kernels` or
            `sparsetrain bench kernels`.
    """
    args = parse_args(argv, prog)
    device = pick_device()
    cpu = device.type == "cpu"
    if cpu and not args.quick:
        print("no CUDA device: running the CPU smoke mode (--quick)")
    quick = args.quick or cpu
    args.backend = kernel_backend(args.backend, device)
    args.compile = args.compile and not cpu  # NO_COMPILE_ON_CPU: said in a note line and in --help
    sizes = args.sizes or (CPU_SIZES if cpu else QUICK_GPU_SIZES if quick else FULL_SIZES)
    models = MODELS[:1] if quick else MODELS
    if args.models is not None:
        models = args.models
    name = device_label(device)
    ran = backend_ran(args.backend, device)
    label = name if ran != "triton-interpreter" else f"{name}-{ran}"  # its own file: never replaces a torch run's
    copy = copy_gbps(device)
    print(f"device: {name}; copy bandwidth {copy:.0f} GB/s; ours = backend {ran}; {ops_words(args.ops)}")
    caveat = timing_caveat(device, args.backend)
    if caveat:
        print(f"note: {caveat}")
    if cpu:
        print(f"note: {NO_COMPILE_ON_CPU}")

    cases = [(f"flat-{n}", [(n,)]) for n in sizes]
    for model in models:
        weights = model_weights(model, CPU_MODEL_TENSORS if cpu else None)
        cases.append((model if not cpu else f"{model}[:{CPU_MODEL_TENSORS}]", weights))
    rows: list[Row] = []
    earlier = previous_rows(args.out, label) if args.append else []
    path = None
    for case, tensors in cases:
        for dtype_name in args.dtypes:
            case_rows = run_case(case, tensors, DTYPES[dtype_name], device, args, copy)
            if case_rows:
                print_table(case_rows, header=not rows)
                rows += case_rows
                # Written after every case: a run cut short by a time limit keeps what it measured.
                path = write_json({"device": name, "backend": ran, "caveat": caveat,
                                   "compile": None if cpu else args.compile, "rows": merged(earlier, rows)},
                                  args.out, "kernels", label)
    # the rows were printed as each case finished (one table, its header once): not printed again
    print(f"wrote {path}" if path else "no rows measured")


NO_COMPILE_ON_CPU = ("torch.compile is not timed on CPU (the compile column is '-'): inductor on CPU needs a C++ "
                     "toolchain and minutes per case, too much for a smoke test")
HELP_CAVEAT = ("On CPU, and under TRITON_INTERPRET=1, the times are a smoke test of the code path, not kernel "
               "performance: on CPU ours is the torch backend, the same computation as eager; under the interpreter "
               f"ours is Triton's Python emulation of the kernel. CPU timings: {CPU_WARMUP_CALLS} warm-up calls, then "
               f"torch.utils.benchmark's blocked_autorange. On CPU the compile column is '-': {NO_COMPILE_ON_CPU}. "
               "The JSON rows record the backend that ran as ours (torch, triton-interpreter or triton-cuda); an "
               "interpreter run writes kernels-cpu-triton-interpreter.json, beside a torch run's kernels-cpu.json.")


def backend_ran(backend: str, device: torch.device) -> str:
    """What runs as ours: `torch`, `triton-cuda` (compiled Triton kernels) or `triton-interpreter` (Triton's Python
    emulation on CPU tensors, TRITON_INTERPRET=1): the rows' `backend` and the output file's name."""
    if backend == "torch":
        return "torch"
    return "triton-cuda" if device.type == "cuda" else "triton-interpreter"


def timing_caveat(device: torch.device, backend: str) -> str | None:
    """The line that says what the times cannot show, or None on CUDA with compiled Triton kernels.

    Under TRITON_INTERPRET=1 eager is not timed inside the interpreter (the reference is plain torch, timed before
    or after ours, never during): what inflated it in trial 18 (112 ms for a 0.18 ms op) was the wall-clock median of
    three calls of a niced process on a shared 2-core CPU, which waits for a core for whole scheduler ticks; the
    torch backend's times swung the same way (eager/ours 2.9 to 19.8 for one case). `benchmarks.common.time_call`
    now times many calls in process CPU time.
    """
    if backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        return ("TRITON_INTERPRET=1: ours runs in Triton's Python interpreter (a CPU emulation of the kernel), so "
                "ours, GB/s and the ratios are not comparable with eager: a smoke test of the code path, not kernel "
                "performance; bf16 maxdiff is the interpreter's: it rounds bf16 results toward zero (1 bf16 ulp "
                "at most), where the compiled kernel rounds to nearest as the reference does")
    if device.type == "cpu":
        return ("on CPU these times are a smoke test of the code path, not kernel performance: ours is the torch "
                "backend, the same computation as eager, so eager/ours near 1 is all they can show (process CPU time "
                "on one thread)")
    return None


def ops_words(ops: list[str]) -> str:
    """`ops l0_grad_mask (apply_masks: --ops l0_grad_mask,apply_masks)`: the ops timed, and how to add the others
    (they are not timed by default, on any device)."""
    left = [op for op in OPS if op not in ops]
    return f"ops {','.join(ops)}" + (f" ({', '.join(left)}: --ops {','.join(OPS)})" if left else "")


def previous_rows(out_dir: Path, device_name: str) -> list[dict]:
    """Rows of an earlier ``kernels-<device>.json`` in ``out_dir`` (none when absent); ``device_name`` is the file's
    label (``cpu-triton-interpreter`` for an interpreter run)."""
    path = out_dir / f"kernels-{slug(device_name)}.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []


def merged(earlier: list[dict], rows: list[Row]) -> list[dict]:
    """Earlier rows, with this run's rows replacing those of the same (case, dtype, op, mask) and new ones appended.

    Rows written before ops and mask kinds existed count as ``l0_grad_mask`` with bool masks.
    """

    def key(row: dict) -> tuple:
        return row["case"], row["dtype"], row.get("op", "l0_grad_mask"), row.get("mask", "bool")

    new = [asdict(r) for r in rows]
    keys = {key(r) for r in new}
    return [r for r in earlier if key(r) not in keys] + new


if __name__ == "__main__":
    main()
