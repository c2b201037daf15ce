"""The fused Triton kernels (interpreter on CPU) run inside the DeepSpeed trainer where the reference did.

A tiny timm-created model trains a few steps with `regularizer.backend=triton` and with the autograd-in-loss
reference: same losses and weights within tolerance; in fine-tuning the Triton mask kernels keep zeros zero.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsetrain.config.strategies import KERNEL_TO_SETTINGS
from sparsetrain.pipeline import run_pipeline
from sparsetrain.pruning.sharded_masks import load_full_masks
from tests.core.conftest import tiny_config
from tests.helpers.compare import assert_weights_alike_away_from_zero
from triton_kernels import get_ops

TINY_MODEL = ("model.kwargs={hidden: [32, 16]}", "phases.sparsify.epochs=0.4", "phases.finetune.epochs=0.2",
              "optim.name=sgd", "optim.lr=0.1", "train.log_every=1", "prune.sparsity=0.7")
# The former regularizer.kernel values as (gradient path, backend) overrides.
KERNEL_SETTINGS = {kernel: tuple(f"regularizer.{k}={v}" for k, v in settings.items())
                   for kernel, settings in KERNEL_TO_SETTINGS.items()}

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 on CPU")


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line) and json.loads(line).get("phase") == "sparsify"]


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_triton_kernel_in_trainer_matches_autograd(tmp_path: Path, zero_stage: int) -> None:
    runs = {}
    for kernel in ("triton", "autograd"):
        out = tmp_path / kernel
        run_pipeline(tiny_config(out, *TINY_MODEL, *KERNEL_SETTINGS[kernel],
                                 f"deepspeed.zero_stage={zero_stage}", "regularizer.finetune_l0=true"))
        runs[kernel] = out
    assert _losses(runs["triton"]) == pytest.approx(_losses(runs["autograd"]), rel=1e-3), "losses differ"
    for phase in ("sparsify", "finetune"):  # trajectories: compared away from zero (tests/helpers/compare.py)
        assert_weights_alike_away_from_zero(load_file(str(runs["triton"] / "weights" / f"{phase}.safetensors")),
                                            load_file(str(runs["autograd"] / "weights" / f"{phase}.safetensors")),
                                            label=f"triton vs autograd after {phase}")
    masks = load_full_masks(runs["triton"] / "weights" / "masks.safetensors")
    final = load_file(str(runs["triton"] / "weights" / "finetune.safetensors"))
    for name, mask in masks.items():
        assert torch.all(final[name][mask == 0] == 0), f"{name}: Triton path revived a pruned weight"


def test_run_says_and_records_the_backend_that_ran(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """`regularizer.backend=auto` under TRITON_INTERPRET=1 on CPU is torch, as the README's vocabulary says and as
    `get_ops("auto")` now resolves it too; the start line says which backend and why, report.json records the
    resolved backend and the gradient path (the run log, report.json and state held neither before)."""
    out = tmp_path / "auto"
    run_pipeline(tiny_config(out, *TINY_MODEL, "regularizer.backend=auto", "phases.finetune.enabled=false"))
    report = json.loads((out / "report.json").read_text())
    recorded = tuple(report.get(key) for key in ("regularizer", "gradient_path", "backend"))
    assert recorded == ("l0_exp", "hook", "torch"), f"report.json's regularizer, gradient_path, backend: {recorded}"
    line = ("regularizer: l0_exp, gradient path hook, backend torch (auto: not CUDA (cpu); TRITON_INTERPRET=1 runs "
            "Triton only when asked for)")
    assert line in capfd.readouterr().err, f"start line missing: {line!r}"
    assert get_ops("auto").backend == "torch", "get_ops('auto') must resolve as regularizer.backend=auto does"
    from sparsetrain.backend import explain_backend

    assert explain_backend("triton", torch.device("cpu")) == ("triton", "asked for"), "triton by name, interpreter"
