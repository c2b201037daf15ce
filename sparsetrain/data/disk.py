"""Users' own classification data on disk: `.npz` arrays and ImageFolder trees."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from sparsetrain.data.base import DataError, DataNotFound
from sparsetrain.data.images import image_dimensions, image_scale, mixed_depths, read_image
from sparsetrain.progress import log

NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics, used for ImageFolder trees
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGEFOLDER_SIZE = 224  # default data.image_size for ImageFolder trees (timm's ImageNet models)
SMALL_IMAGE_FACTOR = 4  # warn when images are upscaled by this factor or more
CLASSES_SHOWN = 5  # class names listed per split when train and test classes differ


def imagefolder_stats(in_chans: int) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) ImageFolder inputs are standardized with: ImageNet's RGB statistics, or for gray
    (in_chans=1) their ITU-R 601 luma mix (the weights of torchvision's Grayscale), an approximation."""
    if in_chans == 3:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    luma = (0.299, 0.587, 0.114)
    return ([sum(w * m for w, m in zip(luma, IMAGENET_MEAN, strict=True))],
            [sum(w * s for w, s in zip(luma, IMAGENET_STD, strict=True))])


def _npz_inputs(name: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:  # N×H×W → N×1×H×W
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"data.path: array {name} must be N×C×H×W or N×H×W, got shape {x.shape}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        raise DataError(f"data.path: array {name} has shape {x.shape}, which looks channels-last (N×H×W×C); "
                        f"sparsetrain reads N×C×H×W: save {name}.transpose(0, 3, 1, 2)")
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


def _read_npz(file: Path) -> dict[str, np.ndarray]:
    """The four NPZ_ARRAYS of the archive np.savez wrote at `file`.

    Raises:
        DataError: one line when `file` is missing, a folder, not an .npz archive, lacks an array or holds
            pickled (object) arrays, which are not loaded.
    """
    if file.is_dir():
        raise DataError(f"data.path: {file} is a folder; data.source=npz reads one .npz file (a folder of IDX files "
                        "is data.source=idx, an ImageFolder tree data.source=imagefolder)")
    if not file.is_file():
        raise DataNotFound(f"data.path: file not found: {file}")
    if not zipfile.is_zipfile(file):  # np.load would try it as a pickle and talk about allow_pickle
        raise DataError(f"data.path: {file} is not an .npz archive (expected the zip file np.savez writes with arrays "
                        f"{', '.join(NPZ_ARRAYS)})")
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in NPZ_ARRAYS if name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        detail = "it holds object arrays; save numeric arrays" if "allow_pickle" in str(err) else str(err)
        raise DataError(f"data.path: {file} is not a readable .npz file ({detail.splitlines()[0]})") from None
    missing = [name for name in NPZ_ARRAYS if name not in arrays]
    if missing:
        raise DataError(f"data.path: {file} lacks array(s) {', '.join(missing)} (needs {', '.join(NPZ_ARRAYS)})")
    return arrays


def load_npz(path: str, num_classes: int | None = None) -> tuple[tuple[np.ndarray, ...], float]:
    """Read x_train, y_train, x_test, y_test from an .npz file and check them.

    Returns:
        The four arrays (inputs float32 N×C×H×W, uint8 scaled to [0, 1]; labels int64) and the scale applied to
        the stored input values (1/255 for uint8, else 1).

    Raises:
        DataError: one line naming data.path and what is wrong (not an .npz, missing array, layout, dtype, labels).
    """
    archive = _read_npz(Path(path))
    scale = 1 / 255 if archive["x_train"].dtype == np.uint8 else 1.0
    x_train = _npz_inputs("x_train", archive["x_train"])
    x_test = _npz_inputs("x_test", archive["x_test"])
    for name, x in (("x_train", x_train), ("x_test", x_test)):
        if len(x) == 0:  # numpy's `zero-size array to reduction operation maximum` when the labels are counted
            raise DataError(f"data.path: array {name} of {path} holds no samples (shape {x.shape}); expected at "
                            f"least one {'training' if name == 'x_train' else 'test'} sample")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"data.path: x_train samples are {x_train.shape[1:]} but x_test samples are {x_test.shape[1:]}")
    y_train = _npz_labels("y_train", archive["y_train"], len(x_train))
    y_test = _npz_labels("y_test", archive["y_test"], len(x_test))
    limit = num_classes or int(y_train.max()) + 1
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        if len(y) and y.max() >= limit:
            bound = " (model.kwargs.num_classes)" if num_classes else ""
            raise DataError(f"data.path: array {name} has label {int(y.max())} out of range [0, {limit}){bound}")
    return (x_train, y_train, x_test, y_test), scale


def _find_split(root: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"data.path: {root} needs one of the subfolders {', '.join(names)} (ImageFolder layout)")


class ImageLoader:
    """ImageFolder's loader: one file as a C × H × W float32 tensor in [0, 1] (`read_image`), read when a batch
    needs it (so a damaged file is found then, as a `DataError` naming it).

    Args:
        first: A file of the tree (the first training image) and its scale: every file must have the same bit depth.
    """

    def __init__(self, first: tuple[Path, float]) -> None:
        self.first = first

    def __call__(self, path: str) -> torch.Tensor:
        pixels, scale = read_image(Path(path))
        if scale != self.first[1]:
            raise mixed_depths(self.first, (Path(path), scale))
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


class MatchChannels:
    """Transform C × H × W images to `in_chans` channels: gray repeated to 3; colour to gray (1) with the ITU-R 601
    luma weights of torchvision's Grayscale."""

    def __init__(self, in_chans: int) -> None:
        self.in_chans = in_chans

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.functional import rgb_to_grayscale

        if image.shape[0] == self.in_chans:
            return image
        return rgb_to_grayscale(image) if self.in_chans == 1 else image.expand(self.in_chans, -1, -1)


def load_imagefolder(path: str, image_size: int, normalize: bool,
                     in_chans: int = 3) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset, float]:
    """ImageFolder trees `path/train/<class>/*` and `path/val|test/<class>/*`, resized to image_size.

    Files are found by torchvision's ImageFolder and decoded by `read_image` (8-bit × 1/255, 16-bit × 1/65535;
    one bit depth in the whole tree), then resized (bilinear, antialiased, on the float pixels) and standardized.

    Args:
        path: The tree's root (`data.path`).
        image_size: Square side images are resized to (`data.image_size`, default `IMAGEFOLDER_SIZE`).
        normalize: Standardize with `imagefolder_stats(in_chans)`.
        in_chans: 3 (RGB, the default; gray files repeated) or 1 (colour files mixed to gray as torchvision's
            Grayscale does).

    Returns:
        The train and test datasets (samples float32 in_chans × image_size × image_size) and the scale of the raw
        pixels (that of the first training image).

    Raises:
        DataError: one line naming data.path / data.in_chans and what is wrong; also, when a batch reads it, a file
            that is damaged or of another bit depth than the first.
    """
    from torchvision import transforms

    root = Path(path)
    if root.is_file():
        raise DataError(f"data.path: {root} is a file; data.source=imagefolder reads a folder with train/ and "
                        "val/ (or test/) subfolders of class folders (one .npz file is data.source=npz)")
    if not root.is_dir():
        raise DataNotFound(f"data.path: folder not found: {root}")
    if in_chans not in (1, 3):
        raise DataError(f"data.in_chans: ImageFolder images are read as RGB (3) or gray (1), got {in_chans}")
    steps = [MatchChannels(in_chans), transforms.Resize((image_size, image_size), antialias=True)]
    if normalize:
        steps.append(transforms.Normalize(*imagefolder_stats(in_chans)))
    transform = transforms.Compose(steps)
    train = _image_folder(_find_split(root, ("train",)), transform)
    test = _image_folder(_find_split(root, ("val", "test")), transform)
    if train.classes != test.classes:
        splits = {f"{Path(data.root).name}/": data.classes for data in (train, test)}
        raise DataError(f"data.path: class folders differ between {' and '.join(splits)}: {class_difference(splits)}")
    first = Path(train.samples[0][0])
    train.loader = test.loader = ImageLoader((first, image_scale(first)))
    _warn_if_upscaled(train, image_size)
    return train, test, train.loader.first[1]


def _image_folder(split: Path, transform: object) -> torch.utils.data.Dataset:
    """torchvision's ImageFolder of one split (its file discovery; the loader is set by `load_imagefolder`).

    Raises:
        DataError: one line naming the split folder, or the first class folder without an image file.
    """
    from torchvision import datasets

    try:
        return datasets.ImageFolder(str(split), transform=transform)
    except (FileNotFoundError, RuntimeError) as err:
        empty = _empty_class_folders(split)
        if empty:
            more = f" (and {len(empty) - 1} more class folders)" if len(empty) > 1 else ""
            raise DataError(f"data.path: class folder {empty[0]}{more} of {split.name}/ holds no image file "
                            f"({', '.join(datasets.folder.IMG_EXTENSIONS)}); every class folder of train/ and "
                            f"{'test' if split.name == 'test' else 'val'}/ needs at least one image: add images or "
                            "remove the folder from both") from None
        raise DataError(f"data.path: {str(err).splitlines()[0]}") from None


def _empty_class_folders(split: Path) -> list[Path]:
    """Class folders of `split` without a file torchvision's ImageFolder would read, in its (sorted) order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    empty = []
    for folder in sorted(p for p in split.iterdir() if p.is_dir()):
        files = (name for _, _, names in os.walk(folder, followlinks=True) for name in names)
        if not any(has_file_allowed_extension(name, IMG_EXTENSIONS) for name in files):
            empty.append(folder)
    return empty


def class_difference(splits: dict[str, list[str]], shown: int = CLASSES_SHOWN) -> str:
    """`only in train/: a, b; only in val/: c` for two splits' class names (up to `shown` names each, `…` only when
    some are left out)."""
    (first, a), (second, b) = splits.items()
    parts = []
    for split, names, other in ((first, a, b), (second, b, a)):
        only = [name for name in names if name not in other]
        if only:
            parts.append(f"only in {split}: {', '.join(only[:shown])}{', …' if len(only) > shown else ''}")
    return "; ".join(parts)


def _warn_if_upscaled(train: torch.utils.data.Dataset, image_size: int) -> None:
    """One warning when the first training image is much smaller than image_size (e.g. 28×28 PNGs → 224)."""
    if not train.samples:
        return
    width, height = image_dimensions(Path(train.samples[0][0]))
    if max(width, height) * SMALL_IMAGE_FACTOR <= image_size:
        log.warning(f"data.image_size: images are {width}×{height} (e.g. {train.samples[0][0]}) but are resized to "
                    f"{image_size}×{image_size} ({image_size / max(width, height):.0f}× larger); set "
                    f"data.image_size={max(width, height)} to keep their size")
