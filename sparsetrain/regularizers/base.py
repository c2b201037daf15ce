"""The gradient-regularizer interface: one place where sparsity terms and masks touch the gradients.

A strategy sees the optimizer's own fp32 tensors (see `sparsetrain.engine.segments`) after gradient reduction
and before the update. `apply_to_gradients` adds the regularizer gradient and multiplies by the mask; the
autograd reference instead contributes `loss_term` to the loss and only masks in `apply_to_gradients`.
"""

from __future__ import annotations

from typing import Any

import torch

from sparsetrain.engine.segments import Segment
from sparsetrain.pruning.sharded_masks import ShardedMasks


class GradientRegularizer:
    """Base strategy: no regularization, masking only."""

    name = "none"

    def __init__(self, kernel: str) -> None:
        self.kernel = kernel  # "triton" | "torch" | "autograd" (already resolved from "auto")

    @property
    def uses_autograd(self) -> bool:
        return self.kernel == "autograd"

    def loss_term(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor | None:
        """Differentiable penalty added to the loss (autograd reference only)."""
        return None

    def apply_to_gradients(self, segments: list[Segment], masks: ShardedMasks | None) -> torch.Tensor:
        """Add the regularizer gradient and apply masks in place; returns this rank's regularizer value."""
        from triton_kernels import get_ops

        weights, grads, mask_views = _views(segments, masks)
        backend = "torch" if self.kernel == "autograd" else self.kernel
        return get_ops(backend).l0_grad_mask_(weights, grads, mask_views, alphas=[0.0] * len(weights), beta=0.0,
                                              l2=0.0)

    def bind(self, params: dict[str, torch.Tensor], partitioned: bool) -> None:
        """Called once the engine exists: the model's (replicated) parameters and whether ZeRO partitions them."""
        del params, partitioned

    def end_step(self) -> None:
        """Called once after every optimizer step (counting windows and similar bookkeeping)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


def _views(segments: list[Segment], masks: ShardedMasks | None
           ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None]:
    """Weight, gradient and mask views of the segments that have a gradient this step."""
    live = [s for s in segments if s.grad() is not None]
    weights = [s.weight() for s in live]
    grads = [s.grad() for s in live]
    mask_views = None if masks is None else [masks.segment_view(s) for s in live]
    return weights, grads, mask_views


def segment_views(segments: list[Segment], masks: ShardedMasks | None
                  ) -> tuple[list[Segment], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor] | None]:
    """Like `_views` but also returns the live segments (for strategies with per-tensor coefficients)."""
    live = [s for s in segments if s.grad() is not None]
    weights, grads, mask_views = _views(live, masks)
    return live, weights, grads, mask_views
