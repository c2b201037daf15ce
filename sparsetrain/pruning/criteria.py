"""Unstructured pruning rules: which weights to zero (Method 1 step 2). Each rule returns bool masks.

The paper's exact rule is not known, so four named rules are offered:
    global_threshold  prune |w| <= τ everywhere
    layer_threshold   prune |w| <= τ_l (per-layer overrides, default τ)
    global_sparsity   one threshold chosen so that exactly the target fraction of all weights is pruned
    layer_sparsity    per-layer thresholds so that each layer hits its target fraction exactly
Sparsity targets are met exactly by ranking (ties broken by position), not by a threshold search.

Rules live in a registry, like the regularizers: a rule is one settings class (an `UnstructuredRule` subclass,
`sparsetrain.config.strategies`) and one entry (`register_prune_rule`) with its mask function (whole weights ->
bool masks) and, optionally, a sharded one (`pruning.distributed`, for ZeRO-3 runs with several ranks) and the
setting that decided a layer (for error messages). `compute_masks` looks the rule up; nothing here names rules.

No rule may empty a layer: a layer with every weight pruned cuts the network (accuracy falls to chance), so a rule
that would do it is refused with a one-line `PruneError` naming the layer and the setting that did it. Per-layer
settings must name prunable layers (`check_layer_settings`, run when the pipeline starts, before any training).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sparsetrain.backend import resolve_backend
from sparsetrain.config.loader import ConfigError
from sparsetrain.config.schema import PruneConfig
from sparsetrain.config.strategies import (
    GlobalSparsityConfig,
    GlobalThresholdConfig,
    LayerSparsityConfig,
    LayerThresholdConfig,
    register_prune_rule_settings,
    strategy_key,
)
from sparsetrain.errors import InputError

# weights (name -> tensor), the prune section, the run's backend (None: pick for the weights' device) -> masks
MaskFn = Callable[[dict[str, torch.Tensor], PruneConfig, str | None], dict[str, torch.Tensor]]
# the prune section, a layer name -> (config key, value) that decided the layer's threshold or target
SettingFn = Callable[[PruneConfig, str], tuple[str, float]]


@dataclass(frozen=True)
class MaskRule:
    """An unstructured prune rule in the registry.

    Attributes:
        masks: Masks (True = kept) for whole weights: `masks(weights, cfg, backend)`.
        sharded: The same masks from this rank's shards of the weights, with collectives
            (`pruning.distributed.ShardedFn`); None: the whole weights are used, which needs a single rank.
        setting: The config key and value that decided a layer (named in "would prune every weight" errors);
            None: the error names `prune.rule`.
    """

    masks: MaskFn
    sharded: Callable[..., dict[str, torch.Tensor]] | None = None
    setting: SettingFn | None = None


MASK_RULES: dict[str, MaskRule] = {}


def register_prune_rule(settings: type[PruneConfig], masks: MaskFn, *, sharded: Callable[..., Any] | None = None,
                        setting: SettingFn | None = None) -> None:
    """Add an unstructured prune rule: `prune.rule=<settings' rule>` then loads into `settings` and the prune step
    (and gradual pruning) computes masks with `masks(weights, settings_instance, backend)`.

    Raises:
        ValueError: the rule name is already taken by another settings class.
    """
    register_prune_rule_settings(settings)
    MASK_RULES[strategy_key(settings)] = MaskRule(masks, sharded, setting)


def mask_rule(cfg: PruneConfig) -> MaskRule:
    """The registry entry for `cfg.rule`.

    Raises:
        ConfigError: a structural rule (`filters`) or a rule registered without a mask function.
    """
    if cfg.rule not in MASK_RULES:
        if cfg.rule == "filters":
            raise ConfigError(f"prune.rule: {cfg.rule!r} is structural; use sparsetrain.structural for filter removal")
        raise ConfigError(f"prune.rule: no mask function registered for {cfg.rule!r} (known: {', '.join(MASK_RULES)})")
    return MASK_RULES[cfg.rule]


class PruneError(InputError):
    """A pruning setting that cannot be applied to these weights (e.g. it would prune a whole layer)."""


def _keep_largest(magnitudes: torch.Tensor, num_pruned: int) -> torch.Tensor:
    """Bool mask over a flat tensor keeping all but the `num_pruned` smallest magnitudes."""
    mask = torch.ones_like(magnitudes, dtype=torch.bool)
    if num_pruned > 0:
        mask[torch.argsort(magnitudes, stable=True)[:num_pruned]] = False
    return mask


def check_layer_settings(cfg: PruneConfig, prunable: list[str]) -> None:
    """Per-layer overrides must name prunable weights (known once the model is built, before training).

    Raises:
        ConfigError: one line naming the first unknown key, e.g. `prune.layer_thresholds.fc9.weight: ...`.
    """
    for field in ("layer_thresholds", "layer_sparsity"):
        unknown = [name for name in getattr(cfg, field, {}) if name not in prunable]
        if unknown:
            shown = ", ".join(prunable[:8]) + (f" … ({len(prunable)} in all)" if len(prunable) > 8 else "")
            raise ConfigError(f"prune.{field}.{unknown[0]}: not a prunable layer of this model (prunable: {shown})")


def _threshold_setting(cfg: PruneConfig, name: str) -> tuple[str, float]:
    if name in getattr(cfg, "layer_thresholds", {}):
        return f"prune.layer_thresholds.{name}", cfg.layer_thresholds[name]
    return "prune.threshold", cfg.threshold


def _sparsity_setting(cfg: PruneConfig, name: str) -> tuple[str, float]:
    if name in getattr(cfg, "layer_sparsity", {}):
        return f"prune.layer_sparsity.{name}", cfg.layer_sparsity[name]
    return "prune.sparsity", cfg.sparsity


def empty_layer_error(cfg: PruneConfig, name: str, size: int, largest: float) -> PruneError:
    """The one-line error for a rule that would prune all `size` weights of layer `name` (largest |w| `largest`)."""
    count = f"{size:,} weight" + "s" * (size != 1)
    setting = MASK_RULES[cfg.rule].setting if cfg.rule in MASK_RULES else None
    if setting is None:
        return PruneError(f"prune.rule: {cfg.rule!r} would prune all {count} of {name} (its largest |w| is "
                          f"{largest:.3g}); change its settings so that it keeps some")
    key, value = setting(cfg, name)
    what = "threshold" if "threshold" in key else "target"
    return PruneError(f"{key}: {what} {value:g} would prune all {count} of {name} (its largest |w| is "
                      f"{largest:.3g}); choose a value that keeps some, or a per-layer one")


def refuse_empty_layers(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], cfg: PruneConfig) -> None:
    """Raise `PruneError` when a mask keeps no weight of a (non-empty) layer."""
    for name, mask in masks.items():
        if mask.numel() and not bool(mask.any()):
            raise empty_layer_error(cfg, name, mask.numel(), float(weights[name].detach().abs().max()))


def threshold_masks(weights: dict[str, torch.Tensor], cfg: PruneConfig,
                    backend: str | None = None) -> dict[str, torch.Tensor]:
    """Threshold rules (global or per layer) through the fused threshold kernel's interface, on `backend`
    (the run's resolved one; None: `resolve_backend("auto")` for the weights' device)."""
    from triton_kernels import get_ops

    names = list(weights)
    taus = [getattr(cfg, "layer_thresholds", {}).get(n, cfg.threshold) for n in names]
    device = next(iter(weights.values())).device if weights else torch.device("cpu")
    backend = backend or resolve_backend("auto", device)
    masks, _ = get_ops(backend).threshold_masks(
        [weights[n].detach().contiguous() for n in names], taus)
    return {n: m.view_as(weights[n]) for n, m in zip(names, masks, strict=True)}


def global_sparsity_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One global ranking of |w| over all layers; exactly round(sparsity × total) weights pruned."""
    return masks_from_ranking(weights, global_ranking(weights), sparsity)


def global_ranking(weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Positions of all weights (flattened, concatenated in `weights`' order) by ascending |w|, ties by position
    (a stable sort): the ranking `global_sparsity_masks` prunes from the front of. Sort once, then call
    `masks_from_ranking` per sparsity (an accuracy-vs-sparsity curve) instead of sorting again for each."""
    return torch.argsort(torch.cat([w.detach().abs().flatten().float() for w in weights.values()]), stable=True)


def masks_from_ranking(weights: dict[str, torch.Tensor], ranking: torch.Tensor,
                       sparsity: float) -> dict[str, torch.Tensor]:
    """Masks (True = kept) pruning the first round(sparsity × total) weights of `ranking` (`global_ranking`)."""
    keep = torch.ones(ranking.numel(), dtype=torch.bool, device=ranking.device)
    keep[ranking[:int(round(sparsity * ranking.numel()))]] = False
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = keep[offset:offset + w.numel()].view_as(w)
        offset += w.numel()
    return masks


def layer_sparsity_masks(weights: dict[str, torch.Tensor], cfg: PruneConfig) -> dict[str, torch.Tensor]:
    """Each layer pruned to its own target (prune.layer_sparsity overrides, default prune.sparsity)."""
    masks = {}
    for name, w in weights.items():
        target = cfg.layer_sparsity.get(name, cfg.sparsity)
        masks[name] = _keep_largest(w.detach().abs().flatten().float(), int(round(target * w.numel()))).view_as(w)
    return masks


def compute_masks(weights: dict[str, torch.Tensor], cfg: PruneConfig,
                  backend: str | None = None) -> dict[str, torch.Tensor]:
    """Masks (True = kept) for every prunable weight according to `cfg.rule`'s registered mask function
    (threshold kernels on `backend`).

    Raises:
        ConfigError: a per-layer setting names a layer that is not in `weights`; a structural or unregistered rule.
        NonFiniteError: a weight is NaN or inf (such a magnitude has no rank: it would be kept or pruned at random).
        PruneError: the rule would prune every weight of a layer.
    """
    from sparsetrain.engine.finite import require_finite

    check_layer_settings(cfg, list(weights))
    require_finite(weights, "the weights to prune", "a NaN or inf magnitude cannot be ranked; fix the training "
                   "that produced them (lower the learning rate, enable deepspeed.gradient_clipping)")
    masks = mask_rule(cfg).masks(weights, cfg, backend)
    refuse_empty_layers(weights, masks, cfg)
    return masks


def _global_sparsity(weights: dict[str, torch.Tensor], cfg: PruneConfig, backend: str | None) -> dict:
    return global_sparsity_masks(weights, cfg.sparsity)


def _layer_sparsity(weights: dict[str, torch.Tensor], cfg: PruneConfig, backend: str | None) -> dict:
    return layer_sparsity_masks(weights, cfg)


register_prune_rule(GlobalThresholdConfig, threshold_masks, setting=_threshold_setting)
register_prune_rule(LayerThresholdConfig, threshold_masks, setting=_threshold_setting)
register_prune_rule(GlobalSparsityConfig, _global_sparsity, setting=_sparsity_setting)
register_prune_rule(LayerSparsityConfig, _layer_sparsity, setting=_sparsity_setting)
