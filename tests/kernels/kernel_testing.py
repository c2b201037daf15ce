"""Helpers shared by the kernel tests: awkward tensor lists, tolerances and labelled comparisons."""

from __future__ import annotations

import torch

from triton_kernels import LaunchConfig

# Small launch geometry so the interpreter runs several blocks per chunk and several chunks per tensor.
TINY = LaunchConfig(block=32, chunk=128)

# (atol, rtol) per dtype: about one unit in the last place of values of order 1.
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


def random_masks(sizes: list[int], kind: str, generator: torch.Generator) -> list[torch.Tensor] | None:
    """Masks of one kind: none, zeros, ones, bool (random), uint8 (random), mixed (bool and uint8 alternating)."""
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
    return masks


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
