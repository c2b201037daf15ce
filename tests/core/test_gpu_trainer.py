"""On a CUDA GPU: every phase runs on the device through DeepSpeed (NCCL, one rank) with the compiled Triton kernels.

fp32 under ZeRO 0 and 2: the fused kernel follows the autograd-in-loss reference. bf16 with fp32 master weights
under ZeRO 0, 1 and 2: the fused kernel (on DeepSpeed's fp32 master gradients) follows the torch reference
kernel, and pruned weights stay exactly zero through fine-tuning. Run on a GPU machine with
``TRITON_INTERPRET=0 pytest -m gpu tests/core``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import triton_kernels._multi_tensor as multi_tensor
from sparsetrain.pipeline import run_pipeline
from sparsetrain.pruning.sharded_masks import load_full_masks
from tests.core.conftest import tiny_config
from tests.core.test_triton_path import KERNEL_SETTINGS, TINY_MODEL
from tests.helpers.compare import assert_same_weights, assert_weights_alike_away_from_zero

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(multi_tensor.INTERPRET, reason="run GPU tests with TRITON_INTERPRET=0"),
]

ON_GPU = ("train.device=cuda", "deepspeed.dist_backend=nccl", "regularizer.finetune_l0=true")


def _sparsify_losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row and row.get("phase") == "sparsify"]


def _cuda_launches_seen() -> bool:
    """Whether the Triton launch tables were built for a CUDA device (the compiled kernels ran)."""
    return any(key[0].type == "cuda" for key in multi_tensor._TABLE_CACHE)


def _run_pair(tmp_path: Path, kernels: tuple[str, str], *extra: str) -> dict[str, Path]:
    runs = {}
    for kernel in kernels:
        out = tmp_path / kernel
        run_pipeline(tiny_config(out, *TINY_MODEL, *ON_GPU, *KERNEL_SETTINGS[kernel], *extra))
        runs[kernel] = out
    return runs


def _check_zeros_and_report(run: Path) -> None:
    masks = load_full_masks(run / "weights" / "masks.safetensors")
    final = load_file(str(run / "weights" / "finetune.safetensors"))
    for name, mask in masks.items():
        assert torch.all(final[name][mask == 0] == 0), f"{name}: a pruned weight came back on the GPU"
    report = json.loads((run / "report.json").read_text())
    assert report["sparsity"] >= 0.7 - 1e-6, f"sparsity {report['sparsity']}"
    assert report["world_size"] == 1, f"world_size {report['world_size']}"


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_fp32_triton_matches_autograd_on_gpu(tmp_path: Path, zero_stage: int) -> None:
    multi_tensor._TABLE_CACHE.clear()
    runs = _run_pair(tmp_path, ("triton", "autograd"), f"deepspeed.zero_stage={zero_stage}")
    assert _cuda_launches_seen(), "the Triton kernels did not run on the GPU"
    # The GPU's exp differs from torch's by a few ulp: float-level agreement, not bitwise.
    assert _sparsify_losses(runs["triton"]) == pytest.approx(_sparsify_losses(runs["autograd"]), rel=1e-4)
    for phase in ("sparsify", "finetune"):  # trajectories: compared away from zero (tests/helpers/compare.py)
        assert_weights_alike_away_from_zero(load_file(str(runs["triton"] / "weights" / f"{phase}.safetensors")),
                                            load_file(str(runs["autograd"] / "weights" / f"{phase}.safetensors")),
                                            label=f"gpu fp32 triton vs autograd after {phase}")
    _check_zeros_and_report(runs["triton"])


@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_bf16_master_weights_triton_matches_torch_on_gpu(tmp_path: Path, zero_stage: int) -> None:
    multi_tensor._TABLE_CACHE.clear()
    runs = _run_pair(tmp_path, ("triton", "torch"), f"deepspeed.zero_stage={zero_stage}", "deepspeed.precision=bf16")
    assert _cuda_launches_seen(), "the Triton kernels did not run on the GPU"
    # Both update DeepSpeed's fp32 master gradients; bf16 forward passes round the same way when the masters
    # agree to float precision, so the trajectories stay within bf16 rounding.
    assert _sparsify_losses(runs["triton"]) == pytest.approx(_sparsify_losses(runs["torch"]), rel=1e-2)
    assert_same_weights(load_file(str(runs["triton"] / "weights" / "finetune.safetensors")),
                        load_file(str(runs["torch"] / "weights" / "finetune.safetensors")),
                        atol=2e-2, rtol=2e-2, label="gpu bf16 triton vs torch after finetune")
    for run in runs.values():
        _check_zeros_and_report(run)


def test_diverging_run_on_gpu_names_its_first_bad_step(run_dir: Path) -> None:
    """On one GPU the non-finite record is read only at log/checkpoint boundaries (no host sync per step); the
    error must still name the first bad step, and nothing after the last checkpoint may be logged or saved."""
    from sparsetrain.errors import NonFiniteError

    cfg = tiny_config(run_dir, *ON_GPU, "optim.name=sgd", "optim.lr=10", "train.log_every=7",
                      "train.checkpoint_every=7")
    with pytest.raises(NonFiniteError, match=r"^non-finite \w[\w ]* at sparsify step \d+/44: ") as info:
        run_pipeline(cfg)
    bad = int(str(info.value).split(" step ")[1].split("/")[0])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(row["global_step"] < bad for row in rows), "a row at or after the bad step was logged"
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in rows if "loss" in row)
    state = json.loads((run_dir / "state.json").read_text()) if (run_dir / "state.json").exists() else {}
    assert (state.get("current") or {}).get("step", 0) < bad, "a checkpoint was written at or after the bad step"
    assert not (run_dir / "weights").exists()
