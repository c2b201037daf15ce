"""In-memory tensor data set with batched indexing, plus input standardization."""

from __future__ import annotations

import torch
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


def standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale both splits with the train split's per-channel mean and std (channel = dim 1)."""
    dims = [d for d in range(train.ndim) if d != 1]
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std
