"""Gradient counting: unit behaviour, agreement across ranks, survival across kill-and-resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sparsetrain.config.strategies import GradCountConfig
from sparsetrain.regularizers.base import WeightSlice
from sparsetrain.regularizers.grad_count import GradCountRegularizer, redundant_filters
from tests.core.subprocess_runs import kill_at_checkpoint, run_cli


def _slice(param: torch.nn.Parameter, start: int, stop: int) -> WeightSlice:
    return WeightSlice("w", param.detach().view(-1)[start:stop], param.grad.view(-1)[start:stop], None, start,
                       param.numel())


def test_counts_pull_and_partition_independence() -> None:
    cfg = GradCountConfig(count_tau=1.0, count_window=2, lambda_s=0.1, alpha2=0.0,
                            redundancy="none")
    weight = torch.nn.Parameter(torch.randn(4, 6))
    grads = torch.tensor([[1.0] * 6, [0.9] * 6, [0.01] * 6, [0.0] * 6])  # filters 0, 1 active; 2, 3 not
    reg = GradCountRegularizer("torch", cfg, {"w": (4, 6)})
    for _ in range(2):
        weight.grad = grads.clone()
        reg.apply_to_gradients([_slice(weight, 0, 24)])
        reg.end_step()
    assert reg.ratio["w"].tolist() == [1.0, 1.0, 0.0, 0.0], "count ratios per filter"
    assert reg.strength("w").tolist() == pytest.approx([0.0, 0.0, 0.1, 0.1]), "pull = lambda_s * (1 - ratio)"
    weight.grad = torch.zeros(4, 6)
    reg.apply_to_gradients([_slice(weight, 0, 24)])
    pulled = weight.grad.clone()
    expected = 0.1 * weight.detach() / weight.detach().norm(dim=1, keepdim=True)
    assert torch.allclose(pulled[2:], expected[2:]) and torch.all(pulled[:2] == 0), "group-lasso pull"


def test_redundant_filters_marks_the_weaker_of_similar_pairs() -> None:
    base = torch.randn(8)
    weight = torch.stack([base, 0.5 * base, torch.randn(8), -base])
    marked = redundant_filters(weight, torch.tensor([3.0, 3.0, 1.0, 0.0]), rho=0.99)
    assert marked.tolist() == [False, True, False, False], "only the weaker copy (same count, smaller norm)"


TINY_UNET = ["task=segmentation", "data.source=seg_synthetic", "model.name=unet_tiny", "data.image_size=32",
             "data.num_samples=80", "train.batch_size=8", "phases.dense.enabled=false", "phases.sparsify.epochs=4",
             "regularizer.name=grad_count", "regularizer.count_window=1000", "regularizer.count_tau=1.0",
             "optim.name=sgd", "optim.lr=0.05", "prune.rule=filters", "train.checkpoint_every=8",
             "train.log_every=4", "tracking.mode=disabled", "deepspeed.zero_stage=2",
             "deploy.formats=[]", "deploy.latency=false", "report.plots=false"]  # a test that reads a PNG: true


def _counts(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "weights" / "sparsify_regularizer.pt", weights_only=True)["counts"]


def _kill_after_step(overrides: list[str], out: Path, step: int) -> None:
    kill_at_checkpoint(overrides + ["--phase", "sparsify"], out, step)


# Counting is exact across ranks when gradients are; BatchNorm normalizes per rank (SyncBatchNorm is GPU-only in
# torch), so the rank-agreement check uses a model without batch-coupled layers: LeNet-5 with the same strategy.
CONV_NET = ["data.source=synthetic", "data.num_samples=400", "model.name=lenet5", "train.batch_size=32",
            "phases.dense.enabled=false", "phases.sparsify.epochs=3", "regularizer.name=grad_count",
            "regularizer.count_window=1000", "regularizer.count_tau=1.0", "optim.name=sgd", "optim.lr=0.05",
            "prune.rule=filters", "train.checkpoint_every=8", "train.log_every=4", "tracking.mode=disabled",
            "deepspeed.zero_stage=2", "report.plots=false"]


def _run_here(overrides: list[str], capsys: pytest.CaptureFixture) -> None:
    """`sparsetrain run` of the sparsify phase in this process (one rank): a process start fewer than `run_cli`."""
    from sparsetrain.cli import main

    code = main(["run", *overrides, "--phase", "sparsify"])
    assert code == 0, capsys.readouterr().err[-3000:]


def test_counts_equal_for_one_and_two_ranks_and_after_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The 2-rank run (torchrun) and the killed one run in processes of their own; the 1-rank runs (uninterrupted,
    and the resume of the killed one) in this process."""
    runs = {}
    _run_here([*CONV_NET, f"out_dir={tmp_path / 'np1'}"], capsys)
    runs[1] = _counts(tmp_path / "np1")
    result = run_cli([*CONV_NET, f"out_dir={tmp_path / 'np2'}", "--phase", "sparsify"], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    runs[2] = _counts(tmp_path / "np2")
    resumed = tmp_path / "resumed"
    _kill_after_step([*CONV_NET, f"out_dir={resumed}"], resumed, 16)
    _run_here([*CONV_NET, f"out_dir={resumed}"], capsys)
    runs["resumed"] = _counts(resumed)
    assert sum(float(c.sum()) for c in runs[1].values()) > 0, "nothing was counted; the test would be vacuous"
    for name, counts in runs[1].items():
        assert torch.equal(counts, runs[2][name]), f"{name}: counts differ between 1 and 2 ranks"
        assert torch.equal(counts, runs["resumed"][name]), f"{name}: counts differ after kill and resume"
