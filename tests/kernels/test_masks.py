"""Fused apply_masks_ and threshold_masks vs the torch reference: awkward sizes, dtypes, mask kinds, errors."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.kernel_testing import DTYPES, SIZE_CASES, TINY, assert_equal, flat_views, random_masks
from triton_kernels import apply_masks_, apply_masks_reference_, threshold_masks, threshold_masks_reference


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(SIZE_CASES))
def test_apply_masks_matches_reference(case: str, dtype: torch.dtype) -> None:
    sizes = SIZE_CASES[case]
    gen = torch.Generator().manual_seed(10)
    weights = flat_views(sizes, dtype, gen)
    masks = random_masks(sizes, "mixed", gen)
    expected = [w.clone() for w in weights]
    apply_masks_(weights, masks, config=TINY)
    apply_masks_reference_(expected, masks)
    for i, (w, e) in enumerate(zip(weights, expected, strict=True)):
        assert_equal(w, e, f"{case}/{dtype} weights[{i}] (numel {w.numel()})")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", ["zeros", "ones", "bool", "uint8"])
def test_apply_masks_pruned_slots_exactly_zero_whatever_they_held(mask_kind: str, dtype: torch.dtype) -> None:
    """A select, not w * m: NaN/±inf in pruned slots become exactly 0, kept ones stay as they are."""
    sizes = SIZE_CASES["awkward"]
    gen = torch.Generator().manual_seed(11)
    weights = flat_views(sizes, dtype, gen)
    for w in weights[1:4]:
        w.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=dtype)
    masks = random_masks(sizes, mask_kind, gen)
    before = [w.clone() for w in weights]
    expected = [w.clone() for w in weights]
    apply_masks_(weights, masks, config=TINY)
    apply_masks_reference_(expected, masks)
    for i, (w, e, b, m) in enumerate(zip(weights, expected, before, masks, strict=True)):
        assert_equal(w, e, f"{mask_kind}/{dtype} weights[{i}]")
        kept = m.reshape(-1) != 0
        pruned = w.reshape(-1)[~kept]
        assert bool((pruned == 0).all()), f"{mask_kind}/{dtype} weights[{i}]: {int((pruned != 0).sum())} pruned not 0"
        assert_equal(w.reshape(-1)[kept], b.reshape(-1)[kept], f"{mask_kind}/{dtype} weights[{i}] kept slots")


def test_torch_apply_masks_is_a_select() -> None:
    """`sparsetrain.pruning.masks.apply_masks` (the prune phase's masking) also zeroes NaN/inf in pruned slots."""
    from sparsetrain.pruning.masks import apply_masks

    w = torch.nn.Parameter(torch.tensor([[float("nan"), float("inf")], [-float("inf"), 2.0]]))
    apply_masks({"w": w}, {"w": torch.tensor([[False, False], [False, True]])})
    assert w.detach().tolist() == [[0.0, 0.0], [0.0, 2.0]], w


def test_apply_masks_empty() -> None:
    apply_masks_([], [], config=TINY)
    w = [torch.empty(0), torch.ones(3)]
    apply_masks_(w, [torch.empty(0, dtype=torch.bool), torch.tensor([1, 0, 1], dtype=torch.uint8)], config=TINY)
    assert w[1].tolist() == [1.0, 0.0, 1.0], f"after empty + 3-element list: {w[1].tolist()}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(SIZE_CASES))
def test_threshold_masks_matches_reference(case: str, dtype: torch.dtype) -> None:
    sizes = SIZE_CASES[case]
    gen = torch.Generator().manual_seed(12)
    weights = flat_views(sizes, dtype, gen)
    taus = [0.1 * (i % 7) for i in range(len(sizes))]
    for thresholds, label in [(0.3, "global"), (taus, "per-tensor")]:
        masks, counts = threshold_masks(weights, thresholds, config=TINY)
        ref_masks, ref_counts = threshold_masks_reference(weights, thresholds)
        for i, (m, r) in enumerate(zip(masks, ref_masks, strict=True)):
            assert_equal(m, r, f"{case}/{dtype}/{label} masks[{i}] (numel {m.numel()})")
        assert_equal(counts, ref_counts, f"{case}/{dtype}/{label} kept counts")


def test_threshold_masks_edge_thresholds() -> None:
    weights = [torch.tensor([0.0, -0.5, 0.5, 0.25, float("nan")]), torch.randn(300)]
    masks, counts = threshold_masks(weights, [-1.0, 0.5], config=TINY)
    assert masks[0].tolist() == [True, True, True, True, False], f"τ=-1 keeps all but NaN: {masks[0].tolist()}"
    assert counts[0].item() == 4, f"τ=-1 count: {counts[0].item()} (padding lanes must not count)"
    assert counts[1].item() == int((weights[1].abs() > 0.5).sum()), "strict > at τ=0.5"
    masks, counts = threshold_masks([torch.empty(0)], 0.1, config=TINY)
    assert masks[0].shape == (0,) and counts.tolist() == [0], f"zero-size: {masks}, {counts}"
    masks, counts = threshold_masks([], 0.1, config=TINY)
    assert masks == [] and counts.dtype == torch.int64 and counts.numel() == 0, f"empty list: {masks}, {counts}"


def test_threshold_masks_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="thresholds: has 1 values"):
        threshold_masks([torch.ones(3), torch.ones(2)], [0.1], config=TINY)
    with pytest.raises(ValueError, match=r"weights\[0\]: must be contiguous"):
        threshold_masks([torch.ones(4, 3).t()], 0.1, config=TINY)
    with pytest.raises(ValueError, match=r"masks\[0\]: numel"):
        apply_masks_([torch.ones(3)], [torch.ones(4, dtype=torch.bool)], config=TINY)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_masks_match_reference(dtype: torch.dtype) -> None:
    import triton_kernels._multi_tensor as mt

    if mt.INTERPRET:
        pytest.skip("run GPU tests with TRITON_INTERPRET=0")
    gen = torch.Generator().manual_seed(13)
    sizes = [1, 3, 4097, 65537, 1_000_003, 2**20 + 1, 0] + [7] * 50
    weights = [w.cuda() for w in flat_views(sizes, dtype, gen)]
    masks, counts = threshold_masks(weights, 0.7)
    ref_masks, ref_counts = threshold_masks_reference(weights, 0.7)
    assert_equal(counts, ref_counts, f"gpu {dtype} kept counts")
    for i, (m, r) in enumerate(zip(masks, ref_masks, strict=True)):
        assert_equal(m, r, f"gpu {dtype} masks[{i}]")
    expected = [w.clone() for w in weights]
    apply_masks_(weights, masks)
    apply_masks_reference_(expected, masks)
    for i, (w, e) in enumerate(zip(weights, expected, strict=True)):
        assert_equal(w, e, f"gpu {dtype} weights[{i}]")


def test_mixed_dtypes_one_call() -> None:
    gen = torch.Generator().manual_seed(14)
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float32, torch.bfloat16]
    weights = [flat_views([n], dt, gen)[0] for n, dt in zip([5, 130, 1, 64, 33], dtypes, strict=True)]
    masks, counts = threshold_masks(weights, [0.1, 0.5, 0.0, 1.0, 0.2], config=TINY)
    ref_masks, ref_counts = threshold_masks_reference(weights, [0.1, 0.5, 0.0, 1.0, 0.2])
    assert_equal(counts, ref_counts, "mixed dtypes: kept counts in input order")
    expected = [w.clone() for w in weights]
    apply_masks_(weights, masks, config=TINY)
    apply_masks_reference_(expected, ref_masks)
    for i, (m, r, w, e) in enumerate(zip(masks, ref_masks, weights, expected, strict=True)):
        assert_equal(m, r, f"mixed dtypes masks[{i}]")
        assert_equal(w, e, f"mixed dtypes masked weights[{i}]")
