"""Pruning rules hit their targets exactly; masks are measured from weights."""

from __future__ import annotations

import pytest
import torch

from sparsetrain.config.schema import PruneConfig
from sparsetrain.errors import NonFiniteError
from sparsetrain.pruning.criteria import compute_masks


def _weights() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(37, 11, generator=gen), "b.weight": torch.randn(5, 3, 3, 3, generator=gen),
            "c.weight": torch.randn(1, 1, generator=gen)}


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98, 0.999])
def test_global_sparsity_exact(sparsity: float) -> None:
    weights = _weights()
    masks = compute_masks(weights, PruneConfig(rule="global_sparsity", sparsity=sparsity))
    total = sum(w.numel() for w in weights.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(sparsity * total), f"pruned {pruned} of {total}, target {sparsity}"
    kept_min = min(w[m].abs().min() for w, m in zip(weights.values(), masks.values(), strict=True) if m.any())
    pruned_max = max((w[~m].abs().max() for w, m in zip(weights.values(), masks.values(), strict=True) if (~m).any()),
                     default=torch.tensor(0.0))
    assert pruned_max <= kept_min, "a pruned weight is larger than a kept one"


def test_layer_sparsity_exact_per_layer() -> None:
    weights = _weights()
    cfg = PruneConfig(rule="layer_sparsity", sparsity=0.7, layer_sparsity={"b.weight": 0.25})
    masks = compute_masks(weights, cfg)
    for name, w in weights.items():
        target = 0.25 if name == "b.weight" else 0.7
        assert int((~masks[name]).sum()) == round(target * w.numel()), f"{name}: wrong pruned count"


@pytest.mark.parametrize("rule", ["global_threshold", "layer_threshold"])
def test_threshold_rules(rule: str) -> None:
    weights = _weights()
    cfg = PruneConfig(rule=rule, threshold=0.5, layer_thresholds={"a.weight": 1.0})
    masks = compute_masks(weights, cfg)
    for name, w in weights.items():
        tau = 1.0 if (rule == "layer_threshold" and name == "a.weight") else 0.5
        assert torch.equal(masks[name], w.abs() > tau), f"{name}: mask differs from |w| > {tau}"


def test_unknown_layer_in_overrides_is_reported() -> None:
    with pytest.raises(ValueError, match=r"prune.layer_sparsity: unknown layer\(s\) nope.weight"):
        compute_masks(_weights(), PruneConfig(rule="layer_sparsity", layer_sparsity={"nope.weight": 0.5}))


def test_rules_refuse_non_finite_magnitudes() -> None:
    weights = _weights()
    weights["b.weight"][0, 0, 1, 1] = float("nan")
    for rule in ("global_threshold", "layer_threshold", "global_sparsity", "layer_sparsity"):
        with pytest.raises(NonFiniteError, match=r"^non-finite values in the weights to prune \(b.weight\); "):
            compute_masks(weights, PruneConfig(rule=rule))
