"""In-memory tensor data set with batched indexing, plus input standardization."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sparsetrain.data.base import DataError


class InMemoryDataset(Dataset):
    """Inputs and targets held as tensors; `__getitems__` gathers a whole batch in one indexing op."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        if len(inputs) != len(targets):
            raise DataError(f"data: {len(inputs)} inputs but {len(targets)} targets")
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.inputs[idx], self.targets[idx]


Stats = tuple[list[float], list[float]]  # per-channel (mean, std) of the scaled training inputs


def standardize(train: torch.Tensor, test: torch.Tensor, stats: Stats | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, Stats]:
    """Scale both splits with the train split's per-channel mean and std (channel = dim 1), or with `stats` when
    given (`sparsetrain eval`: the statistics the model was trained with, from its export's record).

    Returns:
        The standardized train and test tensors, and the (mean, std) lists per channel that were used (recorded in
        the export so that deployed models can be fed the same inputs).

    Raises:
        DataError: `stats` has another channel count than the inputs.
    """
    if stats is not None:
        if len(stats[0]) != test.shape[1] or len(stats[1]) != test.shape[1]:
            raise DataError(f"data: the model was trained on {len(stats[0])}-channel inputs (its recorded mean/std) "
                            f"but the data has {test.shape[1]} channels; give data of its channels (data.in_chans)")
        view = (1, -1) + (1,) * (test.ndim - 2)
        mean = torch.tensor(stats[0], dtype=test.dtype).view(view)
        std = torch.tensor(stats[1], dtype=test.dtype).view(view)
        return (train - mean) / std, (test - mean) / std, (list(stats[0]), list(stats[1]))
    dims = [d for d in range(train.ndim) if d != 1]
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    stats = (mean.flatten().tolist(), std.flatten().tolist())
    return (train - mean) / std, (test - mean) / std, stats


def match_channels(inputs: torch.Tensor, in_chans: int | None) -> torch.Tensor:
    """Convert N×C×... inputs to `in_chans` channels (`data.in_chans`): colour → gray by averaging the channels,
    gray → the one channel repeated; None or the same count leaves them as they are.

    Raises:
        DataError: any other conversion (e.g. 3 → 2 channels).
    """
    chans = inputs.shape[1]
    if in_chans is None or in_chans == chans:
        return inputs
    if in_chans == 1:
        return inputs.mean(dim=1, keepdim=True)
    if chans == 1:
        return inputs.expand(-1, in_chans, *inputs.shape[2:]).contiguous()
    raise DataError(f"data.in_chans: cannot turn {chans}-channel inputs into {in_chans} channels (only colour → 1 or "
                    "1 → any)")


def image_mask_tensors(image: np.ndarray, mask: np.ndarray, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """An H × W × C float image and an H × W integer mask as tensors: image C × S × S (bilinear, antialiased) and
    mask S × S int64 (nearest), resized to S = `size` when given, else kept at H × W (segmentation sources)."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    y = torch.from_numpy(mask)
    if size is not None and tuple(y.shape) != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        y = F.interpolate(y[None, None].float(), size=(size, size), mode="nearest-exact")[0, 0].long()
    return x, y
