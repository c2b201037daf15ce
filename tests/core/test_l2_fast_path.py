"""The l2-only gradient path of the torch backend (α = 0: dense phase, fine-tuning) equals the reference kernel."""

from __future__ import annotations

import pytest
import torch

from sparsetrain.regularizers.l0 import L0ExpRegularizer, _l2_and_masks
from triton_kernels import l0_grad_mask_reference_

SIZES = [(1,), (0,), (17, 3), (300, 784), (2**10 + 1,)]


@pytest.mark.parametrize("mask_dtype", [None, torch.bool, torch.uint8])
def test_l2_and_masks_equals_reference(mask_dtype: torch.dtype | None) -> None:
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(s, generator=gen) for s in SIZES]
    grads = [torch.randn(s, generator=gen) for s in SIZES]
    grads[2][0, 0] = grads[2][0, 1] = float("nan")  # a kept NaN gradient stays NaN; a pruned slot becomes exactly 0
    masks = None if mask_dtype is None else [(torch.rand(s, generator=gen) > 0.5).to(mask_dtype) for s in SIZES]
    if masks is not None:
        masks[2][0, 0], masks[2][0, 1] = 1, 0
    ours, ref = [g.clone() for g in grads], [g.clone() for g in grads]
    value = _l2_and_masks(weights, ours, masks, l2=3e-4)
    expected = l0_grad_mask_reference_(weights, ref, masks, alphas=[0.0] * len(SIZES), beta=0.0, l2=3e-4)
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, equal_nan=True, msg=f"grad {i} ({SIZES[i]})")
    assert torch.isnan(ours[2][0, 0]), "a kept NaN gradient was hidden"
    if masks is not None:
        assert ours[2][0, 1].item() == 0.0, f"a pruned NaN gradient became {ours[2][0, 1].item()}, must be exactly 0"
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=0, msg="regularizer value")


def test_regularizer_takes_the_fast_path_only_without_l0() -> None:
    w, g = torch.randn(50, 4), torch.randn(50, 4)
    from sparsetrain.regularizers.base import WeightSlice

    param = torch.nn.Parameter(w.clone())
    for alpha in (0.0, 1e-3):
        param.grad = g.clone()
        piece = WeightSlice("w", param.detach().view(-1), param.grad.view(-1), None, 0, param.numel())
        reg = L0ExpRegularizer("torch", {"w": alpha}, beta=20.0, l2=1e-4)
        reg.apply_to_gradients([piece])
        ref = g.clone()
        l0_grad_mask_reference_([w], [ref], None, alphas=[alpha], beta=20.0, l2=1e-4)
        torch.testing.assert_close(param.grad, ref, rtol=1e-6, atol=1e-9, msg=f"alpha {alpha}")
