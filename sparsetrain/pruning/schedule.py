"""Gradual magnitude pruning (GMP; Zhu & Gupta 2017, "To prune, or not to prune", arXiv 1710.01878).

From step t0, every Δt optimizer steps for n rounds, the weights are pruned by the configured sparsity rule to

    s_t = s_f + (s_i − s_f) · (1 − (t − t0) / (n·Δt))³        t ∈ {t0, t0 + Δt, …, t0 + n·Δt}

and training continues with the masks fixed in between (pruned weights stay exactly zero, as in fine-tuning).
Steps are counted within the sparsify phase; t0 and t0 + n·Δt are fractions of its length (prune.gradual).
With rule=layer_sparsity every layer follows the schedule towards its own target.
"""

from __future__ import annotations

import torch

from sparsetrain.config.schema import PruneConfig


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

    def masks(self, step: int, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Masks (True = kept) after optimizer step `step`, or None when this step does not prune."""
        from sparsetrain.pruning.criteria import compute_masks

        progress = self.progress(step)
        if progress is None:
            return None
        update = {"sparsity": self.sparsity_at(self.cfg.sparsity, progress)}
        if self.cfg.rule == "layer_sparsity":  # every layer follows the schedule towards its own target
            update["layer_sparsity"] = {n: self.sparsity_at(s, progress) for n, s in self.cfg.layer_sparsity.items()}
        return compute_masks(weights, self.cfg.model_copy(update=update))
