"""Data-parallel runs with 2 real processes (gloo) equal 1 process with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.core.conftest import tiny_overrides
from tests.core.subprocess_runs import run_cli
from tests.core.test_pipeline import assert_same_weights


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_two_processes_match_one(tmp_path: Path, zero_stage: int) -> None:
    # SGD keeps the comparison at float precision (see test_gradient_hook_equals_autograd_reference).
    extra = (f"deepspeed.zero_stage={zero_stage}", "optim.name=sgd", "optim.lr=0.05")
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"np{nproc}"
        proc = run_cli(tiny_overrides(out, *extra), nproc=nproc)
        assert proc.returncode == 0, f"{nproc}-process run failed:\n{proc.stderr[-3000:]}"
        results[nproc] = (load_file(str(out / "weights" / "finetune.safetensors")),
                          json.loads((out / "report.json").read_text()))
    assert results[2][1]["world_size"] == 2 and results[1][1]["world_size"] == 1
    assert_same_weights(results[1][0], results[2][0], atol=1e-5, rtol=1e-4, label="1 vs 2 processes")
    assert results[1][1]["sparsity"] == results[2][1]["sparsity"]
