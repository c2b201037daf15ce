"""Comparisons of trained weights that stay well defined across machines.

The l0 pull alpha*beta*sign(w) makes training chaotic at w = 0: two runs whose gradients differ only by rounding
(another summation order: autograd vs hook, 1 vs 2 ranks, another CPU) can send a weight that sits at zero to
different sides, after which that weight differs by lr*alpha*beta per flip. Weights that stay away from zero are
well defined: a real difference in the regularizer or the gradient path moves them by orders of magnitude more.
"""

from __future__ import annotations

import torch


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float, rtol: float,
                        label: str) -> None:
    """Every tensor equal within tolerance (use where no weight can cross zero, e.g. after one step)."""
    assert a.keys() == b.keys(), f"{label}: different tensors"
    for name in a:
        diff = (a[name].float() - b[name].float()).abs().max().item()
        assert torch.allclose(a[name].float(), b[name].float(), atol=atol, rtol=rtol), \
            f"{label}: {name} differs (max abs diff {diff:.3g})"


def assert_weights_alike_away_from_zero(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], label: str,
                                        margin: float = 0.02, atol: float = 3e-4, min_fraction: float = 0.3) -> None:
    """Weights with |w| >= margin in both runs agree within atol; at least `min_fraction` of the weights that
    are non-zero in either run (pruned ones are exactly zero) are compared."""
    assert a.keys() == b.keys(), f"{label}: different tensors"
    compared = total = 0
    for name in a:
        x, y = a[name].float(), b[name].float()
        far = (x.abs() >= margin) & (y.abs() >= margin)
        compared, total = compared + int(far.sum()), total + int(((x != 0) | (y != 0)).sum())
        diff = (x - y)[far].abs().max().item() if far.any() else 0.0
        assert diff <= atol, f"{label}: {name} weights away from zero differ by {diff:.3g}"
    assert compared >= min_fraction * total, f"{label}: only {compared} of {total} weights compared"
