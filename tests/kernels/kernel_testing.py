"""Helpers shared by the kernel tests: awkward tensor lists, tolerances and labelled comparisons."""

from __future__ import annotations

import torch

from triton_kernels import LaunchConfig, PackedMask

# Small launch geometry so the interpreter runs several blocks per chunk and several chunks per tensor.
TINY = LaunchConfig(block=32, chunk=128)

# (atol, rtol) per dtype: about one unit in the last place of values of order 1.
# bf16: under TRITON_INTERPRET=1 the kernels' bf16 stores round toward zero (the interpreter's fp32 -> bf16 cast
# drops the low bits), 1 ulp from the reference's round-to-nearest; compiled kernels round to nearest
# (`test_l0_grad_mask.py::test_bf16_results_round_toward_zero_under_the_interpreter_and_to_nearest_compiled`).
TOLERANCES = {
    torch.float32: (1e-6, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}
DTYPES = list(TOLERANCES)

# Element counts: a single element, primes, 2^k ± 1 around block (32) and chunk (128), many tiny tensors,
# one tensor spanning several chunks, zero-size tensors.
SIZE_CASES = {
    "single": [1],
    "awkward": [2, 31, 33, 127, 129, 97, 257],
    "many_tiny": [1, 3, 2, 5, 1, 4, 2, 3, 1, 5] * 3,
    "above_chunk": [1031],
    "with_empty": [0, 5, 0, 13, 0],
}


def flat_views(
    sizes: list[int], dtype: torch.dtype, generator: torch.Generator, scale: float = 1.0
) -> list[torch.Tensor]:
    """Random tensors that are contiguous views into one flat buffer (starting at an odd offset).

    Shapes alternate between 1-D and 2-D so kernels cannot rely on either.
    """
    buffer = (torch.randn(sum(sizes) + 3, generator=generator) * scale).to(dtype)
    views, offset = [], 3
    for n in sizes:
        view = buffer[offset : offset + n]
        views.append(view.view(1, n) if n % 2 else view)
        offset += n
    return views


MASK_KINDS = ["none", "zeros", "ones", "bool", "uint8", "mixed", "packed", "packed_segments", "packed_mixed"]
# Kinds with random keep flags, one of each storage: bytes (bool and uint8), packed from bit 0, packed segments.
RANDOM_MASK_KINDS = ["bool", "uint8", "packed", "packed_segments", "packed_mixed"]


def random_masks(sizes: list[int], kind: str, generator: torch.Generator) -> list[torch.Tensor | PackedMask] | None:
    """Masks of one kind (about half kept where random):

    none; zeros (bool, all pruned); ones (uint8, all kept); bool; uint8; mixed (bool and uint8 alternating);
    packed (``PackedMask.pack`` of each, offset 0); packed_segments (``narrow`` views of one packed buffer, each
    starting at an arbitrary bit, as a ZeRO partition's segments do); packed_mixed (bool, packed segment, uint8
    in turn).
    """
    if kind == "none":
        return None
    if kind == "zeros":
        return [torch.zeros(n, dtype=torch.bool) for n in sizes]
    if kind == "ones":
        return [torch.ones(n, dtype=torch.uint8) for n in sizes]
    masks = [torch.rand(n, generator=generator) > 0.5 for n in sizes]
    if kind == "uint8":
        return [m.to(torch.uint8) for m in masks]
    if kind == "mixed":
        return [m.to(torch.uint8) if i % 2 else m for i, m in enumerate(masks)]
    if kind == "packed":
        return [PackedMask.pack(m) for m in masks]
    segments = packed_segments(masks, generator)
    if kind == "packed_segments":
        return segments
    if kind == "packed_mixed":
        return [[m, segments[i], m.to(torch.uint8)][i % 3] for i, m in enumerate(masks)]
    if kind != "bool":
        raise ValueError(f"random_masks: unknown kind {kind!r}")
    return masks


def packed_segments(masks: list[torch.Tensor], generator: torch.Generator) -> list[PackedMask]:
    """``masks`` as ``narrow`` views of ONE packed buffer, separated by random gaps of 0-12 bits (so each
    starts at an arbitrary bit offset, and bytes at the borders are shared with the neighbours)."""
    gaps = torch.randint(0, 13, (len(masks) + 1,), generator=generator).tolist()
    pieces, starts, position = [], [], 0
    for gap, mask in zip(gaps, masks, strict=False):
        pieces += [torch.rand(gap, generator=generator) > 0.5, mask.reshape(-1)]  # random bits in the gaps
        starts.append(position + gap)
        position += gap + mask.numel()
    buffer = PackedMask.pack(torch.cat(pieces + [torch.ones(gaps[-1], dtype=torch.bool)]))
    return [buffer.narrow(start, m.numel()) for start, m in zip(starts, masks, strict=True)]


def as_mask_kind(keep: torch.Tensor, kind: str) -> torch.Tensor | PackedMask:
    """Given bool keep flags stored as one kind: bool, uint8, packed (offset 0) or packed_segment (a view of a
    larger packed buffer starting at bit 5)."""
    if kind == "bool":
        return keep
    if kind == "uint8":
        return keep.to(torch.uint8)
    if kind == "packed":
        return PackedMask.pack(keep)
    if kind == "packed_segment":
        return PackedMask.pack(
            torch.cat([torch.ones(5, dtype=torch.bool, device=keep.device), keep.reshape(-1)])
        ).narrow(5, keep.numel())
    raise ValueError(f"as_mask_kind: unknown kind {kind!r}")


def keep_of(mask: torch.Tensor | PackedMask) -> torch.Tensor:
    """Flat bool keep flags of a mask of any kind (for assertions)."""
    return mask.unpack() if isinstance(mask, PackedMask) else mask.reshape(-1) != 0


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, label: str) -> None:
    """``torch.testing.assert_close`` (NaN equal to NaN, dtypes must match) with a label and the worst error."""

    def message(default: str) -> str:
        diff = (actual.double() - expected.double()).abs()
        worst = diff.nan_to_num(0).max().item() if diff.numel() else 0.0
        return f"{label}: max |diff| {worst:.3g} (atol {atol}, rtol {rtol})\n{default}"

    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, equal_nan=True, msg=message)


def assert_equal(actual: torch.Tensor, expected: torch.Tensor, label: str) -> None:
    """Exact equality (NaN equal to NaN) with a label and the number of differing elements."""
    same = (
        (actual == expected) | (actual.isnan() & expected.isnan()) if actual.is_floating_point() else actual == expected
    )
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
        f"{label}: {actual.shape}/{actual.dtype} vs {expected.shape}/{expected.dtype}"
    )
    assert bool(same.all()), f"{label}: {int((~same).sum())} of {same.numel()} elements differ"
