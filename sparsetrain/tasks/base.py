"""The Task interface: loss, per-batch metric sums (all-reduced across ranks), and final metrics."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Task(Protocol):
    """What the trainer needs from a task (classification, segmentation).

    Metrics are computed from sums so that data-parallel ranks can all-reduce them: `batch_stats` returns
    a fixed-length float64 vector of sums for one batch, `finalize` turns the summed vector into metrics.
    `finalize` must return the key "metric": the task's primary metric in percent (higher is better); its other
    values are numbers, or plain JSON data (segmentation's `per_class_iou`, a mapping), which the logs and W&B skip.
    """

    name: str

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch."""
        ...

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sums for one batch as a 1-D float64 tensor (same length for every batch)."""
        ...

    def finalize(self, stats: torch.Tensor) -> dict[str, Any]:
        """Metrics from the summed stats; includes "metric"."""
        ...
