"""Compiles every fused kernel for a CUDA target without a GPU and reports its global memory access widths.

Triton ships ptxas, so the full compile (TTIR → TTGIR → LLVM → PTX → cubin) runs on any Linux machine. This
catches what the CPU interpreter cannot (type errors in lowering, unsupported ops) and shows whether the
bulk loop got 16-byte vector accesses (``ld.global.v4.b32``) on its aligned path.

Must run with ``TRITON_INTERPRET`` unset or 0 (the interpreter replaces the kernels):
``TRITON_INTERPRET=0 python -m benchmarks.compile_check [--arch 90] [--ptx-dir DIR]``.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import tempfile
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sparsetrain.argtypes import CommandParser
from triton_kernels._multi_tensor import INTERPRET

# Modules, not the same-named public functions that triton_kernels re-exports.
apply_masks = importlib.import_module("triton_kernels.apply_masks")
l0_grad_mask = importlib.import_module("triton_kernels.l0_grad_mask")
threshold_masks = importlib.import_module("triton_kernels.threshold_masks")

TABLES = {"tensor_table_ptr": "*i64", "chunk_table_ptr": "*i64"}
L0_SIGNATURE = {**TABLES, "alpha_ptr": "*fp32", "partial_ptr": "*fp32", "beta": "fp32", "l2": "fp32"}
THRESHOLD_SIGNATURE = {**TABLES, "tau_ptr": "*fp32", "count_ptr": "*i64"}
# Kernel variant → (kernel, signature, constexprs): byte masks (bool/uint8) and packed bit masks.
SIGNATURES = {
    "l0_grad_mask": (l0_grad_mask._l0_grad_mask_kernel, L0_SIGNATURE, {"HAS_MASK": True, "PACKED": False}),
    "l0_grad_mask_packed": (l0_grad_mask._l0_grad_mask_kernel, L0_SIGNATURE, {"HAS_MASK": True, "PACKED": True}),
    "apply_masks": (apply_masks._apply_masks_kernel, dict(TABLES), {"PACKED": False}),
    "apply_masks_packed": (apply_masks._apply_masks_kernel, dict(TABLES), {"PACKED": True}),
    "threshold_masks": (threshold_masks._threshold_masks_kernel, THRESHOLD_SIGNATURE, {"PACKED": False}),
    "threshold_masks_packed": (threshold_masks._threshold_masks_kernel, THRESHOLD_SIGNATURE, {"PACKED": True}),
}


def compile_kernel(name: str, dtype: tl.dtype, arch: int) -> str:
    """PTX of kernel ``name`` for ``dtype`` with the default launch geometry."""
    fn, signature, extra = SIGNATURES[name]
    constexprs = {"DTYPE": dtype, "CHUNK": 16384, "BLOCK": 1024, **extra}
    signature = {**signature, **dict.fromkeys(constexprs, "constexpr")}
    # Table and output pointers come from torch allocations: 16-byte aligned, as at a real launch.
    attrs = {(i,): [["tt.divisibility", 16]] for i, kind in enumerate(signature.values()) if kind.startswith("*")}
    src = ASTSource(fn, signature, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4}).asm["ptx"]


def access_widths(ptx: str) -> tuple[list[str], list[str]]:
    """Distinct global load and store instructions in ``ptx``."""
    loads = sorted(set(re.findall(r"ld\.global[.\w]*", ptx)))
    stores = sorted(set(re.findall(r"st\.global[.\w]*", ptx)))
    return loads, stores


def resource_usage(ptx: str) -> str:
    """Registers, stack and spills per thread, from Triton's bundled ``ptxas -v`` ("" if it is not there)."""
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    target = re.search(r"\.target\s+(\w+)", ptx)
    if not ptxas.exists() or target is None:
        return ""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        cmd = [str(ptxas), f"-arch={target.group(1)}", "-v", str(src), "-o", str(Path(tmp) / "kernel.cubin")]
        report = subprocess.run(cmd, capture_output=True, text=True).stderr
    regs = re.search(r"Used (\d+) registers", report)
    stack = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", report)
    if regs is None or stack is None:
        return ""
    return f"{regs.group(1)} regs, {stack.group(1)} B stack, {stack.group(2)} B spills"


def main(argv: list[str] | None = None) -> dict[str, tuple[list[str], list[str]]]:
    """Compiles all kernels × dtypes, prints their access widths and returns them by label ("kernel/dtype").

    Each kernel holds two copies of its loop, chosen per tensor at run time: with 16-byte alignment hints
    (expect ``.v4``/``.v2`` accesses) and without (scalar accesses, for views at odd offsets).
    """
    parser = CommandParser(prog="python -m benchmarks.compile_check", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for Hopper")
    parser.add_argument("--ptx-dir", type=Path, help="also write each kernel's PTX here")
    parser.add_argument("--dtypes", default="fp32,bf16,fp16")
    args = parser.parse_args(argv)
    if INTERPRET:
        parser.error("TRITON_INTERPRET=1 is set: the kernels are interpreted, nothing to compile")
    dtypes = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16}
    results = {}
    for name in SIGNATURES:
        for dtype_name in args.dtypes.split(","):
            label = f"{name}/{dtype_name}"
            ptx = compile_kernel(name, dtypes[dtype_name], args.arch)
            if args.ptx_dir:
                args.ptx_dir.mkdir(parents=True, exist_ok=True)
                (args.ptx_dir / f"{label.replace('/', '-')}.ptx").write_text(ptx)
            results[label] = access_widths(ptx)
            loads, stores = results[label]
            print(f"{label:<29} {resource_usage(ptx):<34} loads {' '.join(loads)}; stores {' '.join(stores)}")
    return results


if __name__ == "__main__":
    main()
