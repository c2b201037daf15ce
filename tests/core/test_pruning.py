"""Pruning rules hit their targets exactly; masks are measured from weights."""

from __future__ import annotations

import pytest
import torch

from sparsetrain.config import ConfigError, load_config
from sparsetrain.config.schema import PruneConfig
from sparsetrain.errors import NonFiniteError
from sparsetrain.pruning.criteria import PruneError, compute_masks


def _weights() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(37, 11, generator=gen), "b.weight": torch.randn(5, 3, 3, 3, generator=gen),
            "c.weight": torch.randn(1, 1, generator=gen)}


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.98])
def test_global_sparsity_exact(sparsity: float) -> None:
    weights = {name: w for name, w in _weights().items() if name != "c.weight"}  # a 1-weight layer would empty
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
    cfg = PruneConfig(rule="layer_sparsity", sparsity=0.7, layer_sparsity={"b.weight": 0.25, "c.weight": 0.4})
    masks = compute_masks(weights, cfg)
    for name, w in weights.items():
        target = {"b.weight": 0.25, "c.weight": 0.4}.get(name, 0.7)
        assert int((~masks[name]).sum()) == round(target * w.numel()), f"{name}: wrong pruned count"


@pytest.mark.parametrize("rule", ["global_threshold", "layer_threshold"])
def test_threshold_rules(rule: str) -> None:
    weights = _weights()
    per_layer = {"layer_thresholds": {"a.weight": 1.0}} if rule == "layer_threshold" else {}  # only it reads them
    cfg = PruneConfig(rule=rule, threshold=0.4, **per_layer)  # c.weight is -0.43: kept
    masks = compute_masks(weights, cfg)
    for name, w in weights.items():
        tau = 1.0 if (rule == "layer_threshold" and name == "a.weight") else 0.4
        assert torch.equal(masks[name], w.abs() > tau), f"{name}: mask differs from |w| > {tau}"


def test_unknown_layer_in_overrides_is_reported() -> None:
    with pytest.raises(ConfigError, match=r"^prune.layer_sparsity.nope.weight: not a prunable layer of this model "
                       r"\(prunable: a.weight, b.weight, c.weight\)$"):
        compute_masks(_weights(), PruneConfig(rule="layer_sparsity", layer_sparsity={"nope.weight": 0.5}))


# ---- no rule may empty a layer; per-layer settings must name real layers (issue 10, fault 3) ----------------------

@pytest.mark.parametrize("cfg, key, what", [
    (PruneConfig(rule="layer_threshold", layer_thresholds={"a.weight": 100}), "prune.layer_thresholds.a.weight",
     "threshold 100"),
    (PruneConfig(rule="global_threshold", threshold=100), "prune.threshold", "threshold 100"),
])
def test_threshold_rule_that_would_empty_a_layer_is_refused(cfg: PruneConfig, key: str, what: str) -> None:
    weights = _weights()
    largest = float(weights["a.weight"].abs().max())
    with pytest.raises(PruneError) as info:
        compute_masks(weights, cfg)
    assert str(info.value) == (f"{key}: {what} would prune all 407 weights of a.weight (its largest |w| is "
                               f"{largest:.3g}); choose a value that keeps some, or a per-layer one"), info.value


@pytest.mark.parametrize("sparsity, layer, size", [(0.1, "d.weight", 16), (0.999, "b.weight", 135)])
def test_global_sparsity_that_would_empty_a_layer_is_refused(sparsity: float, layer: str, size: int) -> None:
    """A global ranking removes a layer whose weights are all small: the same silent cut as a threshold."""
    weights = {**_weights(), "d.weight": 1e-3 * torch.randn(4, 4, generator=torch.Generator().manual_seed(1))}
    with pytest.raises(PruneError, match=rf"^prune.sparsity: target {sparsity} would prune all {size} weights of "
                       rf"{layer} "):
        compute_masks(weights, PruneConfig(rule="global_sparsity", sparsity=sparsity))


def test_layer_sparsity_that_rounds_to_the_whole_layer_is_refused() -> None:
    weights = {"a.weight": torch.randn(37, 11), "e.weight": torch.randn(2, 5)}  # 0.96 of 10 rounds to 10
    with pytest.raises(PruneError, match=r"^prune.layer_sparsity.e.weight: target 0.96 would prune all 10 weights"):
        compute_masks(weights, PruneConfig(rule="layer_sparsity", sparsity=0.5, layer_sparsity={"e.weight": 0.96}))


def test_rules_refuse_non_finite_magnitudes() -> None:
    weights = _weights()
    weights["b.weight"][0, 0, 1, 1] = float("nan")
    for rule in ("global_threshold", "layer_threshold", "global_sparsity", "layer_sparsity"):
        with pytest.raises(NonFiniteError, match=r"^non-finite values in the weights to prune \(b.weight\); "):
            compute_masks(weights, PruneConfig(rule=rule))


@pytest.mark.parametrize("rule, override, expected", [
    ("layer_sparsity", "prune.layer_sparsity={a.weight: 1.0}",
     "prune.layer_sparsity.a.weight: expected a number >= 0 and < 1, got 1.0"),
    ("layer_threshold", "prune.layer_thresholds={a.weight: -0.1}",
     "prune.layer_thresholds.a.weight: expected a number >= 0, got -0.1"),
    ("layer_threshold", "prune.layer_thresholds={a.weight: .nan}",
     "prune.layer_thresholds.a.weight: Input should be a finite number"),
])
def test_per_layer_values_out_of_range_fail_at_config_load(rule: str, override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"prune.rule={rule}", override])
    assert str(info.value).startswith(expected), info.value


@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.5, 0.9, 1.0])
def test_one_ranking_gives_each_sparsitys_global_masks(sparsity: float) -> None:
    """The accuracy curve sorts |w| once (`global_ranking`) and cuts it per sparsity: the same masks as ranking from
    scratch at that sparsity (ties, at 0.5 and 0, broken by position)."""
    from sparsetrain.pruning.criteria import _keep_largest, global_ranking, masks_from_ranking

    torch.manual_seed(0)
    weights = {"a": torch.randn(7, 5).round(decimals=1), "b": torch.randn(13).round(decimals=1), "c": torch.zeros(3)}
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    expected = _keep_largest(flat, int(round(sparsity * flat.numel())))
    masks = masks_from_ranking(weights, global_ranking(weights), sparsity)
    assert torch.equal(torch.cat([m.flatten() for m in masks.values()]), expected), sparsity
    assert all(masks[n].shape == w.shape for n, w in weights.items())
