"""Fused apply_masks_ and threshold_masks vs the torch reference: awkward sizes, dtypes, mask kinds (bytes and
packed bits, read and written), non-finite weights in pruned slots, errors."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.kernel_testing import (
    DTYPES,
    MASK_KINDS,
    SIZE_CASES,
    TINY,
    as_mask_kind,
    assert_equal,
    flat_views,
    keep_of,
    random_masks,
)
from triton_kernels import (
    PackedMask,
    apply_masks_,
    apply_masks_reference_,
    threshold_masks,
    threshold_masks_reference,
)


@pytest.mark.parametrize("mask_kind", ["mixed", "packed_mixed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(SIZE_CASES))
def test_apply_masks_matches_reference(case: str, dtype: torch.dtype, mask_kind: str) -> None:
    sizes = SIZE_CASES[case]
    gen = torch.Generator().manual_seed(10)
    weights = flat_views(sizes, dtype, gen)
    masks = random_masks(sizes, mask_kind, gen)
    expected = [w.clone() for w in weights]
    apply_masks_(weights, masks, config=TINY)
    apply_masks_reference_(expected, masks)
    for i, (w, e, m) in enumerate(zip(weights, expected, masks, strict=True)):
        assert_equal(w, e, f"{case}/{dtype}/{mask_kind} weights[{i}] (numel {w.numel()}, mask {m!r:.40})")


@pytest.mark.parametrize("mask_kind", [k for k in MASK_KINDS if k != "none"])
def test_apply_masks_kinds(mask_kind: str) -> None:
    sizes = SIZE_CASES["awkward"]
    gen = torch.Generator().manual_seed(11)
    weights = flat_views(sizes, torch.float32, gen)
    masks = random_masks(sizes, mask_kind, gen)
    expected = [w.clone() for w in weights]
    apply_masks_(weights, masks, config=TINY)
    apply_masks_reference_(expected, masks)
    for i, (w, e) in enumerate(zip(weights, expected, strict=True)):
        assert_equal(w, e, f"{mask_kind} weights[{i}]")
        keep = keep_of(masks[i])
        assert bool((w.reshape(-1)[~keep] == 0).all()), f"{mask_kind} weights[{i}]: pruned weights not 0"
        assert_equal(w.reshape(-1)[keep], e.reshape(-1)[keep], f"{mask_kind} weights[{i}]: kept weights changed")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mask_kind", ["bool", "uint8", "packed", "packed_segment"])
def test_apply_masks_pruned_slots_exactly_zero_whatever_they_held(mask_kind: str, dtype: torch.dtype, backend: str):
    """A select, not w * m: NaN/±inf in pruned slots become exactly 0, kept ones stay as they are."""
    weights = flat_views([37], dtype, torch.Generator().manual_seed(15))
    keep = torch.ones(37, dtype=torch.bool)
    keep[[0, 8, 9, 36]] = False
    w = weights[0].view(-1)
    non_finite = [float("nan"), float("nan"), float("inf"), -float("inf"), -float("inf"), float("nan")]
    w[[0, 1, 8, 9, 20, 36]] = torch.tensor(non_finite).to(dtype)
    before = w.clone()
    op = apply_masks_ if backend == "triton" else apply_masks_reference_
    op(weights, [as_mask_kind(keep, mask_kind)], config=TINY)
    label = f"{backend}/{dtype}/{mask_kind}"
    for slot in (0, 8, 9, 36):
        assert w[slot].item() == 0.0, f"{label}: pruned slot {slot} holds {w[slot].item()}, must be exactly 0"
    assert_equal(w[keep], before[keep], f"{label}: kept slots (NaN at 1, -inf at 20) must stay as they were")


def test_torch_apply_masks_is_a_select() -> None:
    """`sparsetrain.pruning.masks.apply_masks` (the prune phase's masking) also zeroes NaN/inf in pruned slots."""
    from sparsetrain.pruning.masks import apply_masks

    w = torch.nn.Parameter(torch.tensor([[float("nan"), float("inf")], [-float("inf"), 2.0]]))
    apply_masks({"w": w}, {"w": torch.tensor([[False, False], [False, True]])})
    assert w.detach().tolist() == [[0.0, 0.0], [0.0, 2.0]], w


def test_apply_masks_empty() -> None:
    apply_masks_([], [], config=TINY)
    w = [torch.empty(0), torch.ones(3), torch.ones(0, 2), torch.ones(11)]
    masks = [
        torch.empty(0, dtype=torch.bool),
        torch.tensor([1, 0, 1], dtype=torch.uint8),
        PackedMask.pack(torch.ones(4, dtype=torch.bool)).narrow(2, 0),
        PackedMask.pack(torch.arange(20) % 3 == 0).narrow(7, 11),
    ]
    apply_masks_(w, masks, config=TINY)
    assert w[1].tolist() == [1.0, 0.0, 1.0], f"after empty + 3-element list: {w[1].tolist()}"
    expected = [float(i % 3 == 0) for i in range(7, 18)]
    assert w[3].tolist() == expected, f"11 elements from bit 7 of a packed mask: {w[3].tolist()}"


@pytest.mark.parametrize("packed", [False, True], ids=["bool", "packed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(SIZE_CASES))
def test_threshold_masks_matches_reference(case: str, dtype: torch.dtype, packed: bool) -> None:
    sizes = SIZE_CASES[case]
    gen = torch.Generator().manual_seed(12)
    weights = flat_views(sizes, dtype, gen)
    taus = [0.1 * (i % 7) for i in range(len(sizes))]
    for thresholds, label in [(0.3, "global"), (taus, "per-tensor")]:
        masks, counts = threshold_masks(weights, thresholds, packed=packed, config=TINY)
        ref_masks, ref_counts = threshold_masks_reference(weights, thresholds, packed=packed)
        for i, (m, r) in enumerate(zip(masks, ref_masks, strict=True)):
            label_i = f"{case}/{dtype}/{label}/packed={packed} masks[{i}] (numel {weights[i].numel()})"
            if packed:  # whole bytes, padding bits included (the kernel must write them 0)
                assert (m.length, m.offset) == (r.length, 0), f"{label_i}: {m!r} vs {r!r}"
                assert_equal(m.bits, r.bits, label_i)
            else:
                assert_equal(m, r, label_i)
        assert_equal(counts, ref_counts, f"{case}/{dtype}/{label}/packed={packed} kept counts")


@pytest.mark.parametrize("packed", [False, True], ids=["bool", "packed"])
def test_threshold_masks_edge_thresholds(packed: bool) -> None:
    weights = [torch.tensor([0.0, -0.5, 0.5, 0.25, float("nan")]), torch.randn(300)]
    masks, counts = threshold_masks(weights, [0.0, 0.5], packed=packed, config=TINY)
    assert keep_of(masks[0]).tolist() == [False, True, True, True, False], f"τ=0 keeps non-zeros but NaN: {masks[0]}"
    assert counts[0].item() == 3, f"τ=0 count: {counts[0].item()} (padding lanes must not count)"
    if packed:
        assert masks[0].bits.tolist() == [0b01110], f"τ=0: padding bits must stay 0: {masks[0].bits.tolist()}"
    assert counts[1].item() == int((weights[1].abs() > 0.5).sum()), "strict > at τ=0.5"
    masks, counts = threshold_masks(weights, float("inf"), packed=packed, config=TINY)
    assert counts.tolist() == [0, 0], f"τ=+inf keeps nothing: {counts.tolist()}"
    masks, counts = threshold_masks([torch.empty(0)], 0.1, packed=packed, config=TINY)
    assert masks[0].numel() == 0 and counts.tolist() == [0], f"zero-size: {masks}, {counts}"
    masks, counts = threshold_masks([], 0.1, packed=packed, config=TINY)
    assert masks == [] and counts.dtype == torch.int64 and counts.numel() == 0, f"empty list: {masks}, {counts}"


BAD_THRESHOLDS = [
    (float("nan"), "thresholds: must be >= 0 and not NaN, got nan"),
    (-1e-3, "thresholds: must be >= 0 and not NaN, got -0.001"),
    ([0.1, -0.5], r"thresholds\[1\]: must be >= 0 and not NaN, got -0.5"),
    ([float("nan"), 0.1], r"thresholds\[0\]: must be >= 0 and not NaN, got nan"),
]


@pytest.mark.parametrize("fn", [threshold_masks, threshold_masks_reference], ids=["triton", "torch"])
@pytest.mark.parametrize(("bad", "match"), BAD_THRESHOLDS)
def test_nan_or_negative_thresholds_are_refused_by_both_backends(fn: object, bad: object, match: str) -> None:
    """Stop 12 tail: a NaN τ kept nothing and a negative τ kept every weight, silently; both backends now refuse them
    in the one line the strengths use."""
    with pytest.raises(ValueError, match=f"^{match}$"):
        fn([torch.randn(7), torch.randn(3)], bad, config=TINY)


def test_threshold_masks_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="thresholds: has 1 values"):
        threshold_masks([torch.ones(3), torch.ones(2)], [0.1], config=TINY)
    with pytest.raises(ValueError, match=r"weights\[0\]: must be contiguous"):
        threshold_masks([torch.ones(4, 3).t()], 0.1, config=TINY)
    with pytest.raises(ValueError, match=r"masks\[0\]: numel"):
        apply_masks_([torch.ones(3)], [torch.ones(4, dtype=torch.bool)], config=TINY)
    with pytest.raises(ValueError, match=r"masks\[1\]: packed mask of 4 elements, weights\[1\] numel 3"):
        apply_masks_([torch.ones(4), torch.ones(3)], [PackedMask.pack(torch.ones(4))] * 2, config=TINY)
    with pytest.raises(ValueError, match=r"masks\[0\]: expected a tensor, got int"):
        apply_masks_([torch.ones(4)], [1], config=TINY)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("packed", [False, True], ids=["bool", "packed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_masks_match_reference(dtype: torch.dtype, packed: bool) -> None:
    import triton_kernels._multi_tensor as mt

    if mt.INTERPRET:
        pytest.skip("run GPU tests with TRITON_INTERPRET=0")
    gen = torch.Generator().manual_seed(13)
    sizes = [1, 3, 4097, 65537, 1_000_003, 2**20 + 1, 0] + [7] * 50
    weights = [w.cuda() for w in flat_views(sizes, dtype, gen)]
    masks, counts = threshold_masks(weights, 0.7, packed=packed)
    ref_masks, ref_counts = threshold_masks_reference(weights, 0.7, packed=packed)
    assert_equal(counts, ref_counts, f"gpu {dtype} packed={packed} kept counts")
    for i, (m, r) in enumerate(zip(masks, ref_masks, strict=True)):
        assert_equal(m.bits if packed else m, r.bits if packed else r, f"gpu {dtype} packed={packed} masks[{i}]")
    if packed:  # read them back as segments at odd bit offsets, as a ZeRO partition would
        masks = [m.narrow(1, m.length - 1) if m.length > 1 else m for m in masks]
        weights = [w.view(-1)[1:] if w.numel() > 1 else w for w in weights]
    expected = [w.clone() for w in weights]
    apply_masks_(weights, masks)
    apply_masks_reference_(expected, masks)
    for i, (w, e) in enumerate(zip(weights, expected, strict=True)):
        assert_equal(w, e, f"gpu {dtype} packed={packed} weights[{i}]")


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
