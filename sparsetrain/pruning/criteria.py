"""Unstructured pruning rules: which weights to zero (Method 1 step 2). Each rule returns bool masks.

The paper's exact rule is not known, so four named rules are offered:
    global_threshold  prune |w| <= τ everywhere
    layer_threshold   prune |w| <= τ_l (per-layer overrides, default τ)
    global_sparsity   one threshold chosen so that exactly the target fraction of all weights is pruned
    layer_sparsity    per-layer thresholds so that each layer hits its target fraction exactly
Sparsity targets are met exactly by ranking (ties broken by position), not by a threshold search.
"""

from __future__ import annotations

import torch

from sparsetrain.config.schema import PruneConfig


def _keep_largest(magnitudes: torch.Tensor, num_pruned: int) -> torch.Tensor:
    """Bool mask over a flat tensor keeping all but the `num_pruned` smallest magnitudes."""
    mask = torch.ones_like(magnitudes, dtype=torch.bool)
    if num_pruned > 0:
        mask[torch.argsort(magnitudes, stable=True)[:num_pruned]] = False
    return mask


def _check_layers(names: dict[str, float], weights: dict[str, torch.Tensor], field: str) -> None:
    unknown = sorted(set(names) - set(weights))
    if unknown:
        raise ValueError(f"prune.{field}: unknown layer(s) {', '.join(unknown)}; prunable: {', '.join(weights)}")


def threshold_masks(weights: dict[str, torch.Tensor], cfg: PruneConfig) -> dict[str, torch.Tensor]:
    """Threshold rules (global or per layer) through the fused threshold kernel's interface."""
    from triton_kernels import get_ops

    _check_layers(cfg.layer_thresholds, weights, "layer_thresholds")
    names = list(weights)
    taus = [cfg.layer_thresholds.get(n, cfg.threshold) if cfg.rule == "layer_threshold" else cfg.threshold
            for n in names]
    device = next(iter(weights.values())).device if weights else torch.device("cpu")
    masks, _ = get_ops("auto" if device.type == "cuda" else "torch").threshold_masks(
        [weights[n].detach().contiguous() for n in names], taus)
    return {n: m.view_as(weights[n]) for n, m in zip(names, masks, strict=True)}


def global_sparsity_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One global ranking of |w| over all layers; exactly round(sparsity × total) weights pruned."""
    flat = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
    keep = _keep_largest(flat, int(round(sparsity * flat.numel())))
    masks, offset = {}, 0
    for name, w in weights.items():
        masks[name] = keep[offset:offset + w.numel()].view_as(w)
        offset += w.numel()
    return masks


def layer_sparsity_masks(weights: dict[str, torch.Tensor], cfg: PruneConfig) -> dict[str, torch.Tensor]:
    """Each layer pruned to its own target (prune.layer_sparsity overrides, default prune.sparsity)."""
    _check_layers(cfg.layer_sparsity, weights, "layer_sparsity")
    masks = {}
    for name, w in weights.items():
        target = cfg.layer_sparsity.get(name, cfg.sparsity)
        if not 0.0 <= target < 1.0:
            raise ValueError(f"prune.layer_sparsity.{name}: {target} is outside [0, 1)")
        masks[name] = _keep_largest(w.detach().abs().flatten().float(), int(round(target * w.numel()))).view_as(w)
    return masks


def compute_masks(weights: dict[str, torch.Tensor], cfg: PruneConfig) -> dict[str, torch.Tensor]:
    """Masks (True = kept) for every prunable weight according to `cfg.rule`.

    Raises:
        NonFiniteError: a weight is NaN or inf (such a magnitude has no rank: it would be kept or pruned at random).
    """
    from sparsetrain.engine.finite import require_finite

    require_finite(weights, "the weights to prune", "a NaN or inf magnitude cannot be ranked; fix the training "
                   "that produced them (lower the learning rate, enable deepspeed.gradient_clipping)")
    if cfg.rule in ("global_threshold", "layer_threshold"):
        return threshold_masks(weights, cfg)
    if cfg.rule == "global_sparsity":
        return global_sparsity_masks(weights, cfg.sparsity)
    if cfg.rule == "layer_sparsity":
        return layer_sparsity_masks(weights, cfg)
    raise ValueError(f"prune.rule: {cfg.rule!r} is structural; use sparsetrain.structural for filter removal")
