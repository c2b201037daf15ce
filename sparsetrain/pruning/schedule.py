"""Gradual magnitude pruning (GMP; Zhu & Gupta 2017, "To prune, or not to prune", arXiv 1710.01878).

From step t0, every Δt optimizer steps for n rounds, the weights are pruned by the configured sparsity rule to

    s_t = s_f + (s_i − s_f) · (1 − (t − t0) / (n·Δt))³        t ∈ {t0, t0 + Δt, …, t0 + n·Δt}

and training continues with the masks fixed in between (pruned weights stay exactly zero, as in fine-tuning).
Steps are counted within the sparsify phase; t0 and t0 + n·Δt are fractions of its length (prune.gradual).
With rule=layer_sparsity every layer follows the schedule towards its own target. Under ZeRO stage 3 the masks
of each rank's partition are chosen from the partitions with collective reductions (`shard_masks`), with the
same exact targets and tie order as from whole weights (`masks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sparsetrain.config.schema import PruneConfig

if TYPE_CHECKING:
    from sparsetrain.pruning.distributed import WeightShard
    from sparsetrain.pruning.sharded_masks import ShardedMasks


class GradualPruning:
    """Which sparsity to prune to after a given optimizer step, and the masks for it.

    Args:
        cfg: prune section (rule global_sparsity or layer_sparsity, sparsity s_f, gradual: s_i, start, end, Δt).
        total_steps: optimizer steps of the phase the schedule runs in.
    """

    def __init__(self, cfg: PruneConfig, total_steps: int) -> None:
        self.cfg = cfg
        self.t0 = round(cfg.gradual.start * total_steps)
        self.t_end = max(self.t0 + 1, round(cfg.gradual.end * total_steps))

    def progress(self, step: int) -> float | None:
        """(t − t0) / (n·Δt) clipped to [0, 1] when `step` (optimizer steps done) is a pruning step, else None."""
        every = self.cfg.gradual.every_steps
        if step < self.t0 or step > self.t_end or ((step - self.t0) % every and step != self.t_end):
            return None
        return (step - self.t0) / (self.t_end - self.t0)

    def sparsity_at(self, final: float, progress: float) -> float:
        """s_t for a final sparsity s_f at a schedule progress in [0, 1]."""
        initial = self.cfg.gradual.initial_sparsity
        return final + (initial - final) * (1.0 - progress) ** 3

    def target(self, step: int) -> PruneConfig | None:
        """The prune settings to apply after optimizer step `step` (sparsity s_t; per-layer targets too), or None
        when this step does not prune."""
        progress = self.progress(step)
        if progress is None:
            return None
        update = {"sparsity": self.sparsity_at(self.cfg.sparsity, progress)}
        if self.cfg.rule == "layer_sparsity":  # every layer follows the schedule towards its own target
            update["layer_sparsity"] = {n: self.sparsity_at(s, progress) for n, s in self.cfg.layer_sparsity.items()}
        return self.cfg.model_copy(update=update)

    def masks(self, step: int, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Masks (True = kept) after optimizer step `step`, or None when this step does not prune."""
        from sparsetrain.pruning.criteria import compute_masks

        target = self.target(step)
        return None if target is None else compute_masks(weights, target)

    def shard_masks(self, step: int, shards: list[WeightShard], names: list[str], sizes: dict[str, int]
                    ) -> ShardedMasks | None:
        """The masks of this rank's `shards` after optimizer step `step` (None when it does not prune): the masks of
        `masks` for the whole weights, found from the shards with collective reductions (`pruning.distributed`;
        every rank must call it at the same steps). What ZeRO stage 3, where no rank holds a whole weight, uses.

        Args:
            shards: this rank's element ranges of the prunable weights (fp32 master partitions).
            names: every prunable weight in model order (the same on every rank).
            sizes: elements of every prunable weight.

        Raises:
            ValueError: a non-finite weight; PruneError: the target would empty a layer.
        """
        from sparsetrain.pruning.distributed import refuse_empty_layers
        from sparsetrain.pruning.distributed import shard_masks as masks_of_shards

        target = self.target(step)
        if target is None:
            return None
        masks = masks_of_shards(shards, names, sizes, target)
        refuse_empty_layers(masks, shards, names, sizes, target)
        return masks
