"""Built-in classification data that needs no download: scikit-learn digits, mnist1d, and a synthetic set."""

from __future__ import annotations

import numpy as np
import torch

from sparsetrain.config.schema import DataConfig
from sparsetrain.data.base import DataError


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Random train/test split (reproducible from `seed`); the test split gets round(len(x) · fraction) samples.

    Raises:
        DataError: `fraction` leaves no training sample (one line naming data.test_fraction), instead of numpy's
            `zero-size array to reduction operation maximum` when the labels are counted.
    """
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = max(1, int(round(fraction * len(x))))
    if n_test >= len(x):
        raise DataError(f"data.test_fraction: {fraction:g} of the {len(x)} samples leaves no training sample; "
                        "expected a smaller fraction that keeps at least one (the default is 0.2)")
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def load_digits_data(cfg: DataConfig, seed: int) -> tuple[np.ndarray, ...]:
    """scikit-learn's 8×8 handwritten digits (1797 images, 10 classes), pixel values scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    return _split(x, digits.target.astype(np.int64), cfg.test_fraction, seed)


def load_mnist1d_data(cfg: DataConfig, seed: int) -> tuple[np.ndarray, ...]:
    """mnist1d: 1-D digit templates (length 40) with shifts, scaling and noise, generated locally."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = max(cfg.num_samples, 100)
    args.seed = seed
    data = make_dataset(args)
    to_x = lambda a: np.asarray(a, dtype=np.float32)[:, None]
    return to_x(data["x"]), np.asarray(data["y"], np.int64), to_x(data["x_test"]), np.asarray(data["y_test"], np.int64)


def load_synthetic_data(cfg: DataConfig, seed: int) -> tuple[np.ndarray, ...]:
    """Ten classes of 1×16×16 images: a class-specific smooth template plus noise and random shifts."""
    rng = np.random.default_rng(seed)
    side, classes = cfg.image_size or 16, 10
    grid = np.linspace(-1, 1, side)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    freqs = rng.uniform(1, 4, size=(classes, 2))
    phases = rng.uniform(0, 2 * np.pi, size=(classes, 2))
    templates = np.sin(freqs[:, :1, None] * np.pi * xx + phases[:, :1, None]) * np.cos(
        freqs[:, 1:, None] * np.pi * yy + phases[:, 1:, None])
    labels = rng.integers(0, classes, size=cfg.num_samples)
    shifts = rng.integers(-2, 3, size=(cfg.num_samples, 2))
    images = np.stack([np.roll(templates[c], tuple(s), axis=(0, 1)) for c, s in zip(labels, shifts, strict=True)])
    images = images + rng.normal(0, 0.8, size=images.shape)
    return _split(images.astype(np.float32)[:, None], labels.astype(np.int64), cfg.test_fraction, seed)


BUILTIN_LOADERS = {"digits": load_digits_data, "mnist1d": load_mnist1d_data, "synthetic": load_synthetic_data}


def to_tensors(arrays: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
    """numpy split arrays → torch tensors (float32 inputs, int64 labels)."""
    x_train, y_train, x_test, y_test = arrays
    return (torch.from_numpy(np.ascontiguousarray(x_train)), torch.from_numpy(y_train),
            torch.from_numpy(np.ascontiguousarray(x_test)), torch.from_numpy(y_test))
