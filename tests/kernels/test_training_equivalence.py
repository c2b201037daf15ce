"""End to end: a tiny model trained a few steps with the fused kernel, the torch reference and the autograd
penalty in the loss follows the same trajectory (losses and parameters within fp32 tolerance).

The trajectory is well defined only while no weight crosses zero: there the l0 pull changes sign, and which side a
weight lands on can depend on rounding (Adam would also turn rounding-level gradients into lr-sized steps). So the
weights start at least MARGIN from zero and plain SGD moves each by at most lr * (|task grad| + alpha*beta + l2)
per step, far less than MARGIN over the steps taken."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.kernel_testing import TINY, assert_close
from triton_kernels import PackedMask, apply_masks_, l0_grad_mask_, l0_grad_mask_reference_, l0_penalty

ALPHAS, BETA, L2, STEPS, LR, MARGIN = [1e-2, 3e-2], 8.0, 1e-3, 6, 1e-2, 0.1


def _train(
    path: str, finetune: bool, packed: bool = False
) -> tuple[list[float], list[torch.Tensor], list[torch.Tensor] | None]:
    """Task losses per step, final parameters and the bool masks (None unless fine-tuning).

    ``packed``: the fused and reference paths get the same masks packed 1 bit per weight.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(9, 33), torch.nn.Tanh(), torch.nn.Linear(33, 5))
    weights = [model[0].weight, model[2].weight]
    with torch.no_grad():
        for w in weights:
            w.copy_(torch.where(w >= 0, 1.0, -1.0) * w.abs().clamp_min(MARGIN))
    bool_masks = [torch.rand(w.shape) > 0.3 for w in weights] if finetune else None
    masks = [PackedMask.pack(m) for m in bool_masks] if packed and bool_masks else bool_masks
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = torch.randn(16, 9), torch.randint(0, 5, (16,))
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        task_loss = torch.nn.functional.cross_entropy(model(x), y)
        loss = task_loss + l0_penalty(weights, ALPHAS, BETA, L2) if path == "autograd" else task_loss
        loss.backward()
        if path == "autograd" and bool_masks is not None:
            for w, m in zip(weights, bool_masks, strict=True):
                w.grad.masked_fill_(~m, 0.0)
        grads = [w.grad for w in weights]
        if path == "fused":
            l0_grad_mask_(weights, grads, masks, alphas=ALPHAS, beta=BETA, l2=L2, config=TINY)
        elif path == "reference":
            l0_grad_mask_reference_(weights, grads, masks, alphas=ALPHAS, beta=BETA, l2=L2)
        optimizer.step()
        if masks is not None:
            with torch.no_grad():
                apply_masks_(weights, masks, config=TINY)
        losses.append(task_loss.item())
    return losses, [p.detach().clone() for p in model.parameters()], bool_masks


@pytest.mark.parametrize(
    ("finetune", "packed"),
    [(False, False), (True, False), (True, True)],
    ids=["sparsity", "finetune", "finetune_packed"],
)
def test_fused_reference_and_autograd_paths_train_alike(finetune: bool, packed: bool) -> None:
    runs = {path: _train(path, finetune, packed) for path in ("fused", "reference", "autograd")}
    fused_losses, fused_params, masks = runs["fused"]
    for path in ("reference", "autograd"):
        losses, params, _ = runs[path]
        assert_close(torch.tensor(fused_losses), torch.tensor(losses), 1e-5, 1e-4, f"{path} vs fused: task losses")
        for i, (a, b) in enumerate(zip(fused_params, params, strict=True)):
            assert_close(a, b, 1e-5, 1e-4, f"{path} vs fused: parameter {i} after {STEPS} steps (finetune={finetune})")
    kept = [torch.ones_like(p, dtype=torch.bool) for p in fused_params]
    if masks is not None:
        kept[0], kept[2] = masks  # pruned weights jump to 0 by design
    moved = max((a - b)[k].abs().max().item() for a, b, k in zip(fused_params, _initial(), kept, strict=True))
    assert 1e-3 < moved < MARGIN / 2, f"weights moved {moved:.3g}: vacuous, or some may have crossed zero"
    if masks is not None:
        for i, (w, m) in enumerate(zip((fused_params[0], fused_params[2]), masks, strict=True)):
            assert bool((w[~m] == 0).all()), f"fine-tuned weight {i}: pruned weights must stay exactly 0"


def _initial() -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(9, 33), torch.nn.Tanh(), torch.nn.Linear(33, 5))
    with torch.no_grad():
        for w in (model[0].weight, model[2].weight):
            w.copy_(torch.where(w >= 0, 1.0, -1.0) * w.abs().clamp_min(MARGIN))
    return [p.detach().clone() for p in model.parameters()]
