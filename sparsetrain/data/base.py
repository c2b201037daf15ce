"""Data contract shared by all sources."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import Dataset

from sparsetrain.errors import InputError


class DataError(InputError):
    """Bad data on disk or in a built-in generator: one line naming the file/array and what was expected."""


@dataclass(frozen=True)
class DataBundle:
    """Train and test splits plus what the model factory needs to know about them.

    Datasets return (input, target) pairs: input float32 C×H×W (or C×L for 1-D data), target int64 class index
    (classification) or int64 H×W class map (segmentation). Datasets may implement `__getitems__(indices)`
    returning a collated (inputs, targets) pair for fast batched access of in-memory data.
    """

    train: Dataset
    test: Dataset
    in_chans: int
    num_classes: int
    input_shape: tuple[int, ...]  # per-sample shape, e.g. (1, 28, 28)
