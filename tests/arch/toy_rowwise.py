"""A toy unstructured prune rule added from outside the package: one module, one settings class, one registry
entry (`register_prune_rule`).

Row-wise magnitude pruning: in every output row (filter) of every prunable weight, the `fraction` smallest |w|
are pruned (round(fraction · row length), ties by position), so each row keeps the same count.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from sparsetrain.config.strategies import UnstructuredRule
from sparsetrain.pruning.criteria import register_prune_rule


class ToyRowwiseConfig(UnstructuredRule):
    rule: Literal["toy_rowwise"] = Field("toy_rowwise", description="Prune the smallest |w| of every row (test rule).")
    fraction: float = Field(0.5, ge=0, lt=1, description="Fraction of each row's weights pruned.")


def rowwise_masks(weights: dict[str, torch.Tensor], cfg: ToyRowwiseConfig, backend: str | None
                  ) -> dict[str, torch.Tensor]:
    masks = {}
    for name, w in weights.items():
        rows = w.detach().abs().float().reshape(w.shape[0], -1)
        pruned = int(round(cfg.fraction * rows.shape[1]))
        order = torch.argsort(rows, dim=1, stable=True)[:, :pruned]
        masks[name] = torch.ones_like(rows, dtype=torch.bool).scatter_(1, order, False).view_as(w)
    return masks


register_prune_rule(ToyRowwiseConfig, rowwise_masks)
