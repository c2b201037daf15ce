"""The kernels compile for a Hopper target on this (GPU-less) machine and their bulk loops use vector accesses."""

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
    lines = [line for line in proc.stdout.splitlines() if "loads" in line]
    assert len(lines) == 6, f"expected 3 kernels x 2 dtypes, got:\n{proc.stdout}"
    for line in lines:
        assert "ld.global.v4.b32" in line, f"no 16-byte vector loads on the aligned path: {line}"
        assert "st.global.v" in line, f"no vector stores on the aligned path: {line}"
        assert "regs" not in line or " 0 B spills" in line, f"register spills: {line}"
