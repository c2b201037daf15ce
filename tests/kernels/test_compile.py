"""The kernels (byte and packed-bit mask variants) compile for a Hopper target on this GPU-less machine, and their
bulk loops use vector accesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_kernels_compile_for_sm90_with_vector_accesses() -> None:
    """Runs ``benchmarks.compile_check`` outside the interpreter (Triton's bundled ptxas, no GPU needed)."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = "from benchmarks.compile_check import main; main(['--arch', '90', '--dtypes', 'fp32,bf16'])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "ptxas" in proc.stderr.lower() and "not found" in proc.stderr.lower():
        pytest.skip("Triton's ptxas is not available here")
    assert proc.returncode == 0, f"compile_check failed:\n{proc.stderr[-3000:]}"
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if "loads" in line}
    kernels = ["l0_grad_mask", "apply_masks", "threshold_masks"]
    expected = {f"{k}{kind}/{dt}" for k in kernels for kind in ("", "_packed") for dt in ("fp32", "bf16")}
    assert set(lines) == expected, f"expected 3 kernels x 2 mask kinds x 2 dtypes, got:\n{proc.stdout}"
    for label, line in lines.items():
        assert "ld.global.v4.b32" in line, f"{label}: no 16-byte vector loads on the aligned path: {line}"
        assert "regs" not in line or " 0 B spills" in line, f"{label}: register spills: {line}"
        if label.startswith("threshold_masks_packed"):
            # 1 bit per element: a 1024-element block writes 128 bytes, one per thread; nothing to vectorize.
            assert "st.global.b8" in line, f"{label}: expected byte stores of packed bits: {line}"
        else:
            assert "st.global.v" in line, f"{label}: no vector stores on the aligned path: {line}"
        if "_packed" in label and not label.startswith("threshold"):
            assert "ld.global.b8" in line, f"{label}: packed masks are read as bytes: {line}"


def test_compiled_bf16_store_rounds_to_nearest() -> None:
    """Trial 24 item 5: the bf16 store (``g.to(DTYPE)``, Triton's default downcast) compiles to round-to-nearest-even
    ``cvt.rn.bf16.f32``; only the interpreter rounds toward zero (``test_l0_grad_mask.py``)."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = ("import re, triton.language as tl; from benchmarks.compile_check import compile_kernel\n"
            "ptx = compile_kernel('l0_grad_mask', tl.bfloat16, 90)\n"
            "print(*sorted(set(re.findall(r'cvt\\.[\\w.]*bf16\\.f32', ptx))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"compile failed:\n{proc.stderr[-3000:]}"
    assert proc.stdout.strip() == "cvt.rn.bf16.f32", f"l0_grad_mask's fp32 -> bf16 conversions: {proc.stdout}"
