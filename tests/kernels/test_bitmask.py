"""PackedMask: bit order against numpy's packbits, pack/unpack round trips, cheap narrowing to segments, popcount,
and one-line errors for malformed masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from triton_kernels import LaunchConfig, PackedMask, packed_nbytes
from triton_kernels.bitmask import keep_flags

SIZES = [0, 1, 7, 8, 9, 31, 33, 127, 129, 257]


def _random_keep(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) > 0.5


@pytest.mark.parametrize("n", SIZES)
def test_pack_matches_numpy_little_bit_order(n: int) -> None:
    """Bit i of the mask is bit i % 8 of byte i // 8 (numpy's bitorder="little"); padding bits are 0."""
    keep = _random_keep(n, seed=n)
    packed = PackedMask.pack(keep)
    expected = np.packbits(keep.numpy(), bitorder="little")
    assert packed.bits.tolist() == expected.tolist(), f"n={n}: bytes {packed.bits.tolist()} vs numpy {expected}"
    assert (packed.length, packed.offset, packed.nbytes) == (n, 0, (n + 7) // 8), f"n={n}: {packed!r}"


def test_pack_reads_any_non_zero_as_kept_and_any_shape() -> None:
    mask = torch.tensor([[0, 3, 255], [1, 0, 0]], dtype=torch.uint8)
    packed = PackedMask.pack(mask)
    assert packed.bits.tolist() == [0b001110], f"uint8 2x3 mask packed to {packed.bits.tolist()}"
    assert packed.unpack((2, 3)).tolist() == [[False, True, True], [True, False, False]], "unpack to a shape"
    assert PackedMask.pack(torch.tensor([True, False, True])).bits.tolist() == [0b101], "bool mask"


@pytest.mark.parametrize("n", SIZES)
def test_unpack_round_trip(n: int) -> None:
    keep = _random_keep(n, seed=100 + n)
    unpacked = PackedMask.pack(keep).unpack()
    assert unpacked.dtype == torch.bool and torch.equal(unpacked, keep), f"n={n}: round trip differs"


def test_narrow_every_range_is_a_view_with_the_right_bits() -> None:
    keep = _random_keep(37, seed=1)
    packed = PackedMask.pack(keep)
    storage = packed.bits.untyped_storage().data_ptr()
    for start in range(38):
        for length in range(38 - start):
            part = packed.narrow(start, length)
            label = f"narrow({start}, {length}) = {part!r}"
            assert torch.equal(part.unpack(), keep[start : start + length]), f"{label}: bits differ"
            assert part.nbytes == packed_nbytes(part.offset, length), f"{label}: not tight"
            assert length == 0 or part.bits.untyped_storage().data_ptr() == storage, f"{label}: copied"
            assert length == 0 or part.offset == (start % 8), f"{label}: offset"


def test_nested_narrow_equals_direct_narrow() -> None:
    keep = _random_keep(300, seed=2)
    packed = PackedMask.pack(keep)
    outer = packed.narrow(13, 250)  # offset 5
    for start, length in [(0, 250), (3, 1), (3, 8), (4, 9), (100, 150), (249, 1)]:
        inner = outer.narrow(start, length)
        direct = packed.narrow(13 + start, length)
        assert (inner.offset, inner.length) == (direct.offset, direct.length), f"({start}, {length}): {inner!r}"
        assert inner.bits.data_ptr() == direct.bits.data_ptr(), f"({start}, {length}): different first byte"
        assert torch.equal(inner.unpack(), keep[13 + start : 13 + start + length]), f"({start}, {length}): bits"


def test_count_kept_ignores_neighbours_bits() -> None:
    keep = _random_keep(45, seed=3)
    packed = PackedMask.pack(keep)
    for start in range(46):
        for length in range(46 - start):
            count = packed.narrow(start, length).count_kept()
            expected = int(keep[start : start + length].sum())
            assert count.dtype == torch.int64 and count.item() == expected, f"[{start}, {start + length}): {count}"
    all_kept = PackedMask.pack(torch.ones(24, dtype=torch.bool))
    assert all_kept.narrow(3, 10).count_kept().item() == 10, "all-kept buffer narrowed to 10"


def test_memory_is_one_bit_per_element() -> None:
    packed = PackedMask.pack(torch.ones(1000, 1001, dtype=torch.bool))
    assert packed.nbytes == 125_125 and packed.numel() == 1_001_000, f"{packed!r}"


def test_to_and_keep_flags() -> None:
    packed = PackedMask.pack(torch.tensor([1, 0, 1, 1, 0], dtype=torch.uint8)).narrow(1, 4)
    moved = packed.to("cpu")
    assert moved.device == torch.device("cpu") and torch.equal(moved.unpack(), packed.unpack()), "to(cpu)"
    assert keep_flags(packed).tolist() == [False, True, True, False], "keep_flags of a packed mask"
    assert keep_flags(torch.tensor([[2, 0]], dtype=torch.uint8)).tolist() == [True, False], "keep_flags of uint8"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: PackedMask(torch.zeros(2, dtype=torch.int32), 16), r"PackedMask.bits: expected a 1-D uint8 tensor"),
        (lambda: PackedMask(torch.zeros(2, 1, dtype=torch.uint8), 16), r"PackedMask.bits: expected a 1-D uint8"),
        (lambda: PackedMask(torch.zeros(4, dtype=torch.uint8)[::2], 16), r"PackedMask.bits: must be contiguous"),
        (lambda: PackedMask(torch.zeros(2, dtype=torch.uint8), 17), r"PackedMask.bits: 17 elements .* need 3 bytes"),
        (lambda: PackedMask(torch.zeros(2, dtype=torch.uint8), 9, 8), r"PackedMask.offset: must be in \[0, 8\)"),
        (
            lambda: PackedMask(torch.zeros(0, dtype=torch.uint8), 0, 3),
            r"PackedMask.offset: .*empty mask\), got 3",
        ),
        (lambda: PackedMask(torch.zeros(0, dtype=torch.uint8), -1), r"PackedMask.length: must be >= 0"),
        (lambda: PackedMask.pack(torch.ones(10)).narrow(4, 7), r"PackedMask.narrow: range \[4, 11\) outside"),
        (lambda: PackedMask.pack(torch.ones(10)).narrow(-1, 2), r"PackedMask.narrow: range \[-1, 1\) outside"),
        (lambda: LaunchConfig(block=4, chunk=16), r"LaunchConfig.block: must be a power of two >= 8"),
    ],
)
def test_rejects_malformed(make, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        make()
    assert "\n" not in str(info.value), f"error must be one line: {info.value!r}"
