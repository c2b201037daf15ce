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
