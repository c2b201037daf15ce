"""The interface of a sparsity strategy: how its penalty touches the gradients.

A strategy sees plain views, never the engine: for every prunable weight the part this rank's optimizer updates
(`WeightSlice`: name, flat fp32 weight / gradient / mask views), after gradient reduction and before the update,
and, when those views are partitions over ranks (ZeRO 1-3), a `reduce` function that sums a tensor over ranks in
place. `apply_to_gradients` adds the penalty gradient and multiplies by the mask; with `gradient_path="autograd"`
the penalty instead enters the loss through `loss_term` and `apply_to_gradients` only masks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from triton_kernels import PackedMask

Reduce = Callable[[torch.Tensor], Any]  # sums a tensor over ranks, in place


@dataclass(frozen=True)
class WeightSlice:
    """The part of one prunable weight that this rank's optimizer updates, as flat views of its own tensors.

    Attributes:
        name: parameter name in the model (e.g. "fc1.weight").
        weight: 1-D view of the values the optimizer updates (fp32 masters under bf16), elements [start, start+n).
        grad: 1-D view of the reduced gradient of the same elements; strategies change it in place.
        mask: keep flags of the same elements, packed 1 bit per weight (`triton_kernels.PackedMask`, a view of this
            rank's share of the masks; the kernels read it directly, `triton_kernels.bitmask.keep_flags` unpacks it
            to bool), None when the phase has no masks.
        start: index of weight[0] in the flattened parameter.
        size: number of elements of the whole parameter (all ranks).
    """

    name: str
    weight: torch.Tensor
    grad: torch.Tensor
    mask: PackedMask | None
    start: int
    size: int


def columns(slices: list[WeightSlice]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[PackedMask] | None]:
    """Weight, gradient and mask views as the parallel lists the multi-tensor kernels take."""
    masks = None if not slices or slices[0].mask is None else [s.mask for s in slices]
    return [s.weight for s in slices], [s.grad for s in slices], masks


class GradientRegularizer:
    """Base strategy: no penalty, masking only.

    Args:
        backend: "triton" or "torch" (resolved once per run, `sparsetrain.backend.resolve_backend`).
        gradient_path: "hook" (penalty gradient added in `apply_to_gradients`) or "autograd" (`loss_term`).
    """

    name = "none"

    def __init__(self, backend: str, gradient_path: str = "hook") -> None:
        self.backend, self.gradient_path = backend, gradient_path

    @property
    def uses_autograd(self) -> bool:
        return self.gradient_path == "autograd"

    def loss_term(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor | None:
        """Differentiable penalty added to the loss (gradient_path="autograd" only)."""
        return None

    def apply_to_gradients(self, slices: list[WeightSlice]) -> torch.Tensor:
        """Add the penalty gradient and apply masks in place; returns this rank's penalty value (0-dim)."""
        from triton_kernels import get_ops

        weights, grads, masks = columns(slices)
        return get_ops(self.backend).l0_grad_mask_(weights, grads, masks, alphas=[0.0] * len(weights), beta=0.0,
                                                   l2=0.0)

    def bind(self, params: Mapping[str, torch.Tensor], reduce: Reduce | None) -> None:
        """Called once the engine exists: the model's prunable weights by name, whole on every rank (replicated
        under ZeRO <= 2; under ZeRO 3 reading a weight gathers a full copy, a collective, so every rank reads the
        same weights in the same order), and the sum over ranks when the slices are partitions (None when every
        rank holds whole weights)."""
        del params, reduce

    def end_step(self) -> None:
        """Called once after every optimizer step (counting windows and similar bookkeeping)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
