"""Users' own classification data on disk: `.npz` arrays and ImageFolder trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sparsetrain.data.base import DataError

NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _npz_inputs(name: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:  # N×H×W → N×1×H×W
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"data.path: array {name} must be N×C×H×W or N×H×W, got shape {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"data.path: array {name} must be uint8 or float, got {x.dtype}")
    return x.astype(np.float32)


def _npz_labels(name: str, y: np.ndarray, n_inputs: int) -> np.ndarray:
    if y.ndim != 1 or len(y) != n_inputs:
        raise DataError(f"data.path: array {name} must be 1-D with {n_inputs} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"data.path: array {name} must hold integer class labels, got {y.dtype}")
    if len(y) and y.min() < 0:
        raise DataError(f"data.path: array {name} has label {int(y.min())} out of range (labels must be >= 0)")
    return y.astype(np.int64)


def load_npz(path: str, num_classes: int | None = None) -> tuple[np.ndarray, ...]:
    """Read x_train, y_train, x_test, y_test from an .npz file and check them."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data.path: file not found: {file}")
    try:
        archive = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"data.path: {file} is not a readable .npz file ({err})") from None
    missing = [name for name in NPZ_ARRAYS if name not in archive.files]
    if missing:
        raise DataError(f"data.path: {file} lacks array(s) {', '.join(missing)} (needs {', '.join(NPZ_ARRAYS)})")
    x_train = _npz_inputs("x_train", archive["x_train"])
    x_test = _npz_inputs("x_test", archive["x_test"])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"data.path: x_train samples are {x_train.shape[1:]} but x_test samples are {x_test.shape[1:]}")
    y_train = _npz_labels("y_train", archive["y_train"], len(x_train))
    y_test = _npz_labels("y_test", archive["y_test"], len(x_test))
    limit = num_classes or int(y_train.max()) + 1
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        if len(y) and y.max() >= limit:
            raise DataError(f"data.path: array {name} has label {int(y.max())} out of range [0, {limit})")
    return x_train, y_train, x_test, y_test


def _find_split(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"data.path: {root} needs one of the subfolders {', '.join(names)} (ImageFolder layout)")


def load_imagefolder(path: str, image_size: int, normalize: bool) -> tuple[torch.utils.data.Dataset, ...]:
    """ImageFolder trees `path/train/<class>/*` and `path/val|test/<class>/*`, resized to image_size."""
    from torchvision import datasets, transforms

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"data.path: folder not found: {root}")
    steps = [transforms.Resize((image_size, image_size)), transforms.ToTensor()]
    if normalize:
        steps.append(transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    transform = transforms.Compose(steps)
    try:
        train = datasets.ImageFolder(str(_find_split(root, ("train",))), transform=transform)
        test = datasets.ImageFolder(str(_find_split(root, ("val", "test"))), transform=transform)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"data.path: {str(err).splitlines()[0]}") from None
    if train.classes != test.classes:
        raise DataError(f"data.path: train classes {train.classes[:5]}… differ from test classes {test.classes[:5]}…")
    return train, test
