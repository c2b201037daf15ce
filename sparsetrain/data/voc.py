"""Pascal VOC 2012 segmentation (`data.source=voc`), read by torchvision's `VOCSegmentation` (download=False).

Layout, as the VOCtrainval_11-May-2012 archive unpacks::

    ROOT/VOCdevkit/VOC2012/JPEGImages/<id>.jpg
                           SegmentationClass/<id>.png            palette PNGs: indices 0..20, 255 void / boundary
                           ImageSets/Segmentation/train.txt      the train split (1,464 ids in VOC 2012)
                           ImageSets/Segmentation/val.txt        the test split (1,449 ids)

`data.path` is ROOT (torchvision's root, the folder holding VOCdevkit), the VOCdevkit folder, or its VOC2012 folder.
Images are resized to data.image_size (default `VOC_IMAGE_SIZE`; bilinear, antialiased; masks nearest), so the
whole set is held in memory as float32 (1,464 + 1,449 images at 224² ≈ 1.8 GB). 21 classes (`VOC_CLASSES`); void
pixels hold 255, which data.ignore_index (255 by default for this source) leaves out of loss and metrics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sparsetrain.config.schema import VOC_IMAGE_SIZE, DataConfig
from sparsetrain.data.base import DataError, DataNotFound
from sparsetrain.data.tensors import image_mask_tensors

__all__ = ["VOC_CLASSES", "VOC_IMAGE_SIZE", "load_voc"]

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
VOC_SPLITS = (("train", "train"), ("test", "val"))  # (our split, VOC image set)
YEAR = "2012"


def voc_root(path: Path) -> Path:
    """torchvision's root (the folder holding VOCdevkit/VOC2012) for `data.path`.

    Raises:
        DataNotFound: `path` is not here.
        DataError: one line naming the folder or list file expected where it is missing.
    """
    if not path.exists():
        raise DataNotFound(f"data.path: Pascal VOC folder not found: {path}")
    if path.name == f"VOC{YEAR}":
        if path.parent.name != "VOCdevkit":
            raise DataError(f"data.path: {path} must sit in a folder named VOCdevkit (torchvision's layout "
                            f"ROOT/VOCdevkit/VOC{YEAR}); give ROOT, the folder holding VOCdevkit")
        root = path.parent.parent
    else:
        root = path.parent if path.name == "VOCdevkit" else path
    voc = root / "VOCdevkit" / f"VOC{YEAR}"
    expected = [voc, voc / "JPEGImages", voc / "SegmentationClass",
                *(voc / "ImageSets" / "Segmentation" / f"{name}.txt" for _, name in VOC_SPLITS)]
    for needed in expected:
        if not needed.exists():
            raise DataError(f"data.path: {needed} not found; data.source=voc reads ROOT/VOCdevkit/VOC{YEAR} "
                            "(JPEGImages/, SegmentationClass/, ImageSets/Segmentation/train.txt and val.txt) with "
                            "data.path ROOT, ROOT/VOCdevkit or that VOC2012 folder")
    return root


def _read_set(root: Path, image_set: str, size: int) -> tuple[torch.Tensor, torch.Tensor, tuple[Path, ...]]:
    """Images N × 3 × size × size in [0, 1], raw masks N × size × size (palette indices) and the mask files of one
    VOC image set."""
    from torchvision.datasets import VOCSegmentation


    data = VOCSegmentation(str(root), year=YEAR, image_set=image_set, download=False)
    listed = root / "VOCdevkit" / f"VOC{YEAR}" / "ImageSets" / "Segmentation" / f"{image_set}.txt"
    if not data.images:
        raise DataError(f"{listed}: lists no image")
    for file in (*data.images, *data.targets):
        if not Path(file).is_file():
            raise DataError(f"{file}: not found (listed in {listed})")
    images, masks = [], []
    for index in range(len(data)):
        try:
            image, target = data[index]
        except (OSError, SyntaxError, ValueError) as err:
            raise DataError(f"{data.images[index]} / {data.targets[index]}: not readable ({err})") from None
        if target.mode not in ("P", "L"):
            raise DataError(f"{data.targets[index]}: a {target.mode} image; VOC masks are palette (P) PNGs")
        x, y = image_mask_tensors(np.asarray(image, dtype=np.float32) / 255, np.asarray(target).astype(np.int64), size)
        images.append(x)
        masks.append(y)
    return torch.stack(images), torch.stack(masks), tuple(Path(t) for t in data.targets)


def load_voc(cfg: DataConfig) -> tuple[tuple, tuple]:
    """(images, masks, mask files) of the train (VOC train) and test (VOC val) splits, masks checked to hold class
    indices 0..20 or data.ignore_index.

    Raises:
        DataError / DataNotFound: one line naming the path expected, or the mask file holding another value.
    """
    root = voc_root(Path(cfg.path or ""))
    size = cfg.image_size or VOC_IMAGE_SIZE
    splits = tuple(_read_set(root, image_set, size) for _, image_set in VOC_SPLITS)
    for _, masks, files in splits:
        _check_labels(masks, files, cfg.ignore_index)
    return splits


def _check_labels(masks: torch.Tensor, files: tuple[Path, ...], ignore: int | None) -> None:
    """Raise DataError naming the first mask file with a value neither a VOC class nor `ignore`."""
    allowed = torch.tensor([*range(len(VOC_CLASSES)), *([] if ignore is None else [ignore])])
    for mask, path in zip(masks, files, strict=True):
        values = torch.unique(mask)
        bad = values[~torch.isin(values, allowed)]
        if len(bad):
            value = int(bad[0])
            hint = ("; Pascal VOC marks void pixels 255: set data.ignore_index=255 (this source's default) to leave "
                    "them out" if value == 255 else "")
            raise DataError(f"{path}: mask value {value} outside the class range 0..{len(VOC_CLASSES) - 1} of "
                            f"Pascal VOC{hint}")
