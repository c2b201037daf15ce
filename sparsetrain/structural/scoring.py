"""Channel scores: how much each unit of a channel group matters (higher = keep). Selection is separate
(`selection.py`), as in Torch-Pruning's `importance.py` vs its pruner.

Each score is a callable `score(model, group) -> tensor [units] | None` (None: nothing to score, the group is left
alone). Units that are blocks of channels (grouped conv groups, attention heads) are scored over the whole block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from sparsetrain.structural.graph import producer_weights
from sparsetrain.structural.types import ChannelGroup, ChannelSlice

__all__ = ["SCORES", "BNScale", "ChannelScore", "CountRatio", "L1Norm", "L2Norm", "batch_norm_scales", "build_score"]


class ChannelScore:
    """Base class: one float per unit of a group, on the CPU."""

    name: ClassVar[str] = ""

    def __call__(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor | None:
        raise NotImplementedError


def _filters(model: nn.Module, group: ChannelGroup) -> list[torch.Tensor]:
    return [v.detach().float().flatten(1) for _, v in producer_weights(model, group)]


class L2Norm(ChannelScore):
    """Joint L2 norm of a unit's filters over all the group's filter producers: sqrt(Σ_layers Σ w²).

    Torch-Pruning's `GroupMagnitudeImportance(p=2)` up to its per-layer normalization; the filter-norm criterion of
    Method 2's removal step.
    """

    name = "l2"

    def __call__(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor | None:
        views = _filters(model, group)
        return torch.stack([v.square().sum(1) for v in views]).sum(0).sqrt().cpu() if views else None


class L1Norm(ChannelScore):
    """Sum of |w| over a unit's filters (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017)."""

    name = "l1"

    def __call__(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor | None:
        views = _filters(model, group)
        return torch.stack([v.abs().sum(1) for v in views]).sum(0).cpu() if views else None


def batch_norm_scales(model: nn.Module, group: ChannelGroup) -> list[ChannelSlice]:
    """The producer slices of `group` that are batch-norm scales (γ), in graph order; [] when no batch norm scales
    the group (e.g. a squeeze-excite reduction, a transformer's heads and MLP)."""
    return [s for s in group.producers if s.kind == "norm" and s.param == "weight"
            and isinstance(model.get_submodule(s.module), nn.modules.batchnorm._BatchNorm)]


class BNScale(ChannelScore):
    """|γ| of the batch norms that scale the group, summed (Liu et al., "Network Slimming", ICCV 2017).

    Groups without a batch-norm scale (`batch_norm_scales` is []) are scored by `L2Norm` instead: each group is
    ranked within itself, so the two scores never compete.
    """

    name = "bn_scale"

    def __call__(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor | None:
        scales = [model.get_submodule(s.module).weight.detach().float()[s.index(torch.arange(group.num_channels))]
                  .abs().view(group.num_channels, s.width).sum(1) for s in batch_norm_scales(model, group)]
        return torch.stack(scales).sum(0).cpu() if scales else L2Norm()(model, group)


class CountRatio(ChannelScore):
    """Method 2's gradient count ratio, averaged over the group's filter producers that were counted.

    Args:
        ratios: Weight name -> per-filter fraction of steps in which the filter's mean |gradient| exceeded
            τ × its layer's mean (`GradCountRegularizer.ratio`, saved in `weights/sparsify_regularizer.pt`).
    """

    name = "grad_count"

    def __init__(self, ratios: Mapping[str, torch.Tensor]) -> None:
        self.ratios = ratios

    def __call__(self, model: nn.Module, group: ChannelGroup) -> torch.Tensor | None:
        rows = [self.ratios[name].float().cpu() for name, view in producer_weights(model, group)
                if name in self.ratios and self.ratios[name].numel() == view.shape[0]]
        return torch.stack(rows).mean(0) if rows else None


SCORES: dict[str, type[ChannelScore]] = {cls.name: cls for cls in (L2Norm, L1Norm, BNScale)}


def build_score(name: str, ratios: Mapping[str, torch.Tensor] | None = None) -> ChannelScore:
    """The score called `name` ("l2", "l1", "bn_scale", or "grad_count" with the count `ratios`).

    Raises:
        ValueError: Unknown name, or "grad_count" without ratios.
    """
    if name == CountRatio.name:
        if ratios is None:
            raise ValueError("prune.channel_score: 'grad_count' needs the gradient counts of a grad_count "
                             "sparsify phase")
        return CountRatio(ratios)
    if name not in SCORES:
        raise ValueError(f"prune.channel_score: unknown score {name!r}; expected one of "
                         f"{', '.join([*SCORES, CountRatio.name])}")
    return SCORES[name]()
