"""Data sources: built-in (digits, mnist1d, synthetic, synthetic vessels) and users' own data on disk."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Subset

from sparsetrain.config.schema import DataConfig, TrainSubsetConfig
from sparsetrain.data.base import DataBundle, DataError
from sparsetrain.data.builtin import BUILTIN_LOADERS, to_tensors
from sparsetrain.data.disk import load_imagefolder, load_npz
from sparsetrain.data.idx import load_idx
from sparsetrain.data.tensors import InMemoryDataset, standardize

__all__ = ["DataBundle", "DataError", "build_data", "subset_indices"]


def subset_indices(num_samples: int, subset: TrainSubsetConfig) -> np.ndarray:
    """Sorted indices of part `subset.part` of a seeded random partition of range(num_samples) into
    `subset.parts` disjoint parts whose sizes differ by at most one."""
    order = np.random.default_rng(subset.seed).permutation(num_samples)
    return np.sort(np.array_split(order, subset.parts)[subset.part])


def _bundle_from_arrays(arrays: tuple, cfg: DataConfig, num_classes: int | None) -> DataBundle:
    x_train, y_train, x_test, y_test = arrays
    if cfg.train_subset is not None:
        keep = subset_indices(len(x_train), cfg.train_subset)
        x_train, y_train = x_train[keep], y_train[keep]
    x_train, y_train, x_test, y_test = to_tensors((x_train, y_train, x_test, y_test))
    if cfg.normalize:  # statistics of the training data actually used (the subset, when one is chosen)
        x_train, x_test = standardize(x_train, x_test)
    classes = num_classes or int(max(y_train.max(), y_test.max())) + 1
    return DataBundle(InMemoryDataset(x_train, y_train), InMemoryDataset(x_test, y_test),
                      in_chans=x_train.shape[1], num_classes=classes, input_shape=tuple(x_train.shape[1:]))


def build_data(cfg: DataConfig, seed: int, num_classes: int | None = None) -> DataBundle:
    """Load the configured data set; `num_classes` (from model.kwargs) bounds the labels when given."""
    if cfg.source in BUILTIN_LOADERS:
        return _bundle_from_arrays(BUILTIN_LOADERS[cfg.source](cfg, seed), cfg, num_classes)
    if cfg.source == "npz":
        return _bundle_from_arrays(load_npz(cfg.path, num_classes), cfg, num_classes)
    if cfg.source == "idx":
        return _bundle_from_arrays(load_idx(cfg.path, num_classes), cfg, num_classes)
    if cfg.source == "imagefolder":
        size = cfg.image_size or 224
        train, test = load_imagefolder(cfg.path, size, cfg.normalize)
        classes = num_classes or len(train.classes)
        if cfg.train_subset is not None:
            train = Subset(train, subset_indices(len(train), cfg.train_subset).tolist())
        return DataBundle(train, test, in_chans=3, num_classes=classes, input_shape=(3, size, size))
    from sparsetrain.data.segmentation import build_segmentation_data

    return build_segmentation_data(cfg, seed)
