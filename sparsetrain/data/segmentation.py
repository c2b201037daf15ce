"""Segmentation data: synthetic vessels (`seg_synthetic`), image/mask folders (`seg_folder`) and Pascal VOC (`voc`,
read in `sparsetrain.data.voc`).

Both give in-memory tensors: images float32 N × C × S × S, masks int64 N × S × S class maps. `num_classes` in the
returned bundle is the number of logit channels the model needs: 1 for binary masks (targets 0/1, one logit),
K >= 3 for multi-class masks (targets 0..K-1, softmax over K channels).

Folder layout (DRIVE, STARE, CHASE_DB1 once arranged as image / mask folders)::

    path/images/<name>.<ext>      path/masks/<name>[<tag>].<ext>       split by data.test_fraction with the seed
    path/train/images, path/train/masks, path/test/images, path/test/masks    (given split, used as is)
    path/test/images, path/test/masks                                          (test only: `sparsetrain eval`)
    path/classes.txt              optional: the class count on one line, or one class name per line

Mask matching: a mask belongs to an image when its file stem equals the image's stem, or when both stems agree
after removing one trailing tag: image tags `_training`, `_test`; mask tags listed in `MASK_TAGS` (e.g. DRIVE
`21_training.tif` ↔ `21_manual1.gif`, CHASE `Image_01L.jpg` ↔ `Image_01L_1stHO.png`, STARE `im0001.ppm` ↔
`im0001.ah.ppm`). With several candidates the exact stem wins, then the tag listed first in `MASK_TAGS`.

Mask values: binary masks hold 0/255 or 0/1; multi-class masks hold integer labels 0..K-1 (grayscale or
palette PNG). K comes from classes.txt, or else from the largest label (at most `MAX_INFERRED_CLASSES`); one log line
says the count and where it came from. Masks saved as RGB(A) images with three equal channels are read as gray (their
first channel; the log says so once); colour-coded masks (channels that differ) are refused, and so are masks stored
lossily (JPEG, JPEG-compressed TIFF: `_refuse_lossy_mask`), binary ones included.

Ignored pixels: with data.ignore_index (e.g. 255, the void / boundary label of Pascal VOC and Cityscapes) that value
is no class: masks keep it (the task leaves those pixels out of loss and metrics), the class count and the binary
rule look at the other values only (a 0/1/255 mask is binary with void pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sparsetrain.config.schema import DEFAULT_TEST_FRACTION, DataConfig
from sparsetrain.data.base import (
    MEAN_WEIGHTS,
    DataBundle,
    DataError,
    DataNotFound,
    color_record,
    output_names,
    preprocessing_record,
    resize_record,
)
from sparsetrain.data.images import (
    DECODE_ERRORS,
    common_scale,
    full_depth_pixels,
    image_files_raw,
    read_image,
    unreadable,
)
from sparsetrain.data.tensors import InMemoryDataset, Stats, image_mask_tensors, match_channels, standardize
from sparsetrain.data.vessels import make_vessel_images
from sparsetrain.data.voc import VOC_CLASSES
from sparsetrain.progress import log

__all__ = ["IMAGE_EXTENSIONS", "MASK_TAGS", "build_segmentation_data", "load_seg_folder", "load_seg_synthetic"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".ppm")
IMAGE_TAGS = ("_training", "_test")
MASK_TAGS = ("_manual1", "_1stHO", ".ah", "_mask", "_gt", "_label", "_labels", "_seg", "_manual2", "_2ndHO", ".vk")
MAX_INFERRED_CLASSES = 32  # without classes.txt, a larger label is taken for a non-label (e.g. anti-aliased) mask
SYNTHETIC_IMAGE_SIZE = 64


@dataclass(frozen=True)
class SegSplit:
    """One split in memory: images N × C × S × S in [0, 1] and masks N × S × S (raw labels before class mapping)."""

    images: torch.Tensor
    masks: torch.Tensor
    mask_files: tuple[Path, ...]
    rgb_masks: tuple[Path, ...] = ()  # mask files stored as RGB(A) with equal colour channels, read as gray
    scale: tuple[Path, float] | None = None  # the first image file and the scale of every image (`read_image`)
    channels: tuple[int, ...] = ()  # the channel counts of the image files as decoded (1 gray, 3 colour)


def build_segmentation_data(cfg: DataConfig, seed: int, model_classes: int | None = None,
                            stats: Stats | None = None, eval_only: bool = False) -> DataBundle:
    """Build the train/test bundle for `seg_synthetic`, `seg_folder` or `voc`.

    Args:
        cfg: Data section of the run config (source, path, image_size, num_samples, test_fraction, in_chans,
            normalize).
        seed: Seed for generated data and for the train/test split of folders without one.
        model_classes: model.kwargs.num_classes when given: the bundle's `num_classes` (`output_channels`).
        stats: Per-channel (mean, std) to standardize with instead of the training split's (`sparsetrain eval`: the
            model's recorded statistics), or None.
        eval_only: `sparsetrain eval`: a seg_folder holding test/ alone is read (an empty training split).

    Raises:
        DataError: one line naming the file or field at fault (model.kwargs.num_classes below the data's classes).
    """
    if cfg.source == "seg_synthetic":
        train, test, channels, origin = load_seg_synthetic(cfg, seed)
    elif cfg.source == "seg_folder":
        train, test, channels, origin = load_seg_folder(cfg, seed, eval_only, model_classes)
    elif cfg.source == "voc":
        train, test, channels, origin = _load_voc_splits(cfg)
    else:
        raise DataError(f"data.source: {cfg.source!r} is not a segmentation source (seg_synthetic, seg_folder, voc)")
    num_classes = output_channels(model_classes, channels, origin)
    x_train, x_test = match_channels(train.images, cfg.in_chans), match_channels(test.images, cfg.in_chans)
    if cfg.normalize and (len(x_train) or stats is not None):
        x_train, x_test, stats = standardize(x_train, x_test, stats)
    elif cfg.normalize:  # no training split (eval of a checkpoint without a record): the test images' own statistics
        _, x_test, stats = standardize(x_test, x_test)
    else:
        stats = None
    shape = tuple(x_train.shape[1:])
    scale = train.scale[1] if train.scale else 1.0
    folder = cfg.source in ("seg_folder", "voc")  # image files: their scale, size and colour are recorded
    raw = image_files_raw(scale) if folder else "generated images in [0, 1]"
    resize = resize_record(list(shape[1:]), "torch interpolate") if folder and cfg.image_size else None
    color = color_record(tuple(sorted({*train.channels, *test.channels})), shape[0], MEAN_WEIGHTS) if folder else None
    prep = preprocessing_record(shape, raw, scale, stats, resize=resize, color=color)
    names = {"seg_synthetic": ("background", "vessel"), "voc": VOC_CLASSES}.get(cfg.source) \
        or _class_names(Path(cfg.path or ""))
    return DataBundle(InMemoryDataset(x_train, train.masks), InMemoryDataset(x_test, test.masks),
                      in_chans=x_train.shape[1], num_classes=num_classes, input_shape=shape, preprocessing=prep,
                      classes=output_names(names, max(channels, 2), max(num_classes, 2)))


def _load_voc_splits(cfg: DataConfig) -> tuple[SegSplit, SegSplit, int, str]:
    """Pascal VOC's train and val image sets (`sparsetrain.data.voc`) as the train and test splits, 21 classes."""
    from sparsetrain.data.voc import load_voc

    splits = []
    for images, masks, files in load_voc(cfg):
        first = files[0].parent.parent / "JPEGImages" / f"{files[0].stem}.jpg"
        splits.append(SegSplit(images, masks, files, scale=(first, 1 / 255), channels=(3,)))
    return splits[0], splits[1], len(VOC_CLASSES), f"Pascal VOC's labels 0-{len(VOC_CLASSES) - 1}"


def output_channels(requested: int | None, channels: int, origin: str) -> int:
    """The model's logit channels: model.kwargs.num_classes when given (`requested`), else the data's (`channels`,
    1 = binary). Fewer outputs than the data's classes are refused as classification refuses them
    (`check_model_classes`); more are taken, with one log line (those outputs have no pixel to learn from).

    Args:
        requested: model.kwargs.num_classes, or None.
        channels: The data's logit channels: 1 for binary masks (2 classes), else the class count K.
        origin: Where the data's classes come from, for the messages (e.g. `labels 0-18 of the masks in D`).

    Raises:
        DataError: `model.kwargs.num_classes: 10 model outputs for data with 19 classes (...)`.
    """
    from sparsetrain.data import check_model_classes

    classes = max(channels, 2)
    if requested is None or requested == channels:
        return channels
    check_model_classes(requested, classes, origin)
    if requested == 2:  # binary masks: softmax over two outputs instead of one logit
        log.info(f"model.kwargs.num_classes=2: the binary masks ({origin}) are trained as 2 classes (softmax, "
                 "cross-entropy), not as one logit channel (BCE); leave it out for one logit")
    else:
        log.info(f"model.kwargs.num_classes={requested}: {requested} outputs for the data's {classes} classes "
                 f"({origin}); outputs {classes}-{requested - 1} have no pixel of their own, so they are only "
                 "trained to stay low")
    return requested


def load_seg_synthetic(cfg: DataConfig, seed: int) -> tuple[SegSplit, SegSplit, int, str]:
    """Synthetic vessels (binary, 1 logit channel), `cfg.num_samples` images of `cfg.image_size` (default 64)."""
    size = cfg.image_size or SYNTHETIC_IMAGE_SIZE
    try:
        images, masks = make_vessel_images(cfg.num_samples, size, seed)
    except ValueError as err:
        raise DataError(str(err)) from None
    n_test = _num_test(cfg.num_samples, cfg.test_fraction)
    n_train = cfg.num_samples - n_test
    train = SegSplit(images[:n_train], masks[:n_train], ())
    test = SegSplit(images[n_train:], masks[n_train:], ())
    return train, test, 1, "binary synthetic vessel masks"


def load_seg_folder(cfg: DataConfig, seed: int, eval_only: bool = False, model_classes: int | None = None
                    ) -> tuple[SegSplit, SegSplit, int, str]:
    """Read an image/mask folder (see the module docstring), map mask labels to classes, split if needed; a folder
    holding test/ without train/ only with `eval_only` (`sparsetrain eval`: the training split is then empty).
    `model_classes` (model.kwargs.num_classes, or None): binary masks are said to get one logit channel only when
    the model gets one (not with num_classes=2, which `output_channels` then says is trained as 2 softmax classes).

    Returns:
        The train and test splits (masks as class indices), the logit channels of the data (1 = binary) and where
        the class count comes from (for messages); one log line says both.
    """
    root = Path(cfg.path or "")
    if root.is_file():
        raise DataError(f"data.path: {root} is a file; data.source={cfg.source} reads a folder of images/ and masks/ "
                        "(or train/ and test/ folders holding them)")
    if not root.is_dir():
        raise DataNotFound(f"data.path: segmentation folder not found: {root}")
    if (root / "train").is_dir() or (root / "test").is_dir():
        _check_given_split(root, cfg.test_fraction)
    if (root / "test").is_dir() and not (root / "train").is_dir():
        test = _test_only(root, cfg.image_size, eval_only)
        _note_rgb_masks((test,))
        train = replace(test, images=test.images[:0], masks=test.masks[:0], mask_files=(), rgb_masks=())
    elif (root / "train").is_dir() or (root / "test").is_dir():
        train, test = _read_split(root / "train", cfg.image_size), _read_split(root / "test", cfg.image_size)
        _note_rgb_masks((train, test))
        train, test = _align_splits(train, test)
    else:
        whole = _read_split(root, cfg.image_size)
        _note_rgb_masks((whole,))
        train, test = _split(whole, cfg.test_fraction, seed)
    lookup, num_classes, origin = _class_lookup(root, (train, test), cfg.ignore_index)
    train, test = (replace(split, masks=lookup[split.masks]) for split in (train, test))
    one_logit = ", one logit channel" if model_classes in (None, 1) else ""
    count = f"binary: 2 classes{one_logit}" if num_classes == 1 else f"{num_classes} classes"
    log.info(f"data: seg_folder {root}: {count}, from {origin}")
    return train, test, num_classes, origin


def _check_given_split(root: Path, test_fraction: float) -> None:
    """A folder with its own train/ and test/ split reads no data.test_fraction (it splits images/ + masks/ only).

    Raises:
        DataError: data.test_fraction set to another value than the default, which the folder would ignore (e.g.
            `eval RUN data.test_fraction=1.0` scoring test/ alone); one line naming the field and the folder.
    """
    if test_fraction != DEFAULT_TEST_FRACTION:
        raise DataError(f"data.test_fraction: {root} has its own split (train/, test/), whose test split is test/; "
                        f"data.test_fraction (now {test_fraction:g}) splits an images/ + masks/ folder only: leave it "
                        "out")


def _test_only(root: Path, size: int | None, eval_only: bool) -> SegSplit:
    """The test split of a folder holding test/ without train/: eval scores it; `run` needs training data.

    Raises:
        DataError: without `eval_only`, one line naming the missing train/ folder.
    """
    if not eval_only:
        raise DataError(f"data.path: {root} holds test/ but no train/ (train/images, train/masks): `run` needs "
                        "training images; a test-only folder is for `sparsetrain eval`")
    return _read_split(root / "test", size)


# ---------------------------------------------------------------------------------------------- file discovery


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"data.path: folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"data.path: no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return files


def _strip_tag(stem: str, tags: tuple[str, ...]) -> tuple[str, int]:
    """(stem without its trailing tag, priority of that tag); priority len(tags) when no tag matched."""
    for priority, tag in enumerate(tags):
        if stem.endswith(tag) and len(stem) > len(tag):
            return stem[: -len(tag)], priority
    return stem, len(tags)


def _pair_files(image_dir: Path, mask_dir: Path) -> list[tuple[Path, Path]]:
    """Match every image to its mask by stem (exact first, then after removing the tags)."""
    images, masks = _list_images(image_dir), _list_images(mask_dir)
    exact = {m.stem: m for m in masks}
    by_key: dict[str, tuple[int, Path]] = {}
    for mask in masks:
        key, priority = _strip_tag(mask.stem, MASK_TAGS)
        if key not in by_key or priority < by_key[key][0]:
            by_key[key] = (priority, mask)
    pairs = []
    for image in images:
        key = _strip_tag(image.stem, IMAGE_TAGS)[0]
        mask = exact.get(image.stem) or by_key.get(key, by_key.get(image.stem, (0, None)))[1]
        if mask is None:
            raise DataError(f"{image}: no mask in {mask_dir} (expected stem {image.stem!r}, optionally followed "
                            f"by one of {', '.join(MASK_TAGS)})")
        pairs.append((image, mask))
    return pairs


# ---------------------------------------------------------------------------------------------- reading


def _read_mask(path: Path) -> tuple[np.ndarray, bool]:
    """H × W int64 raw label map: palette indices, gray levels, or one channel of a gray-coded colour mask; and
    whether the file was such an RGB(A) image (equal colour channels; a colour-coded mask is refused). 16-bit PNGs
    and colour TIFFs are read at full depth (`full_depth_pixels`: PIL would keep the high byte of colour ones).
    """
    _refuse_lossy_mask(path)
    wide = full_depth_pixels(path, "mask")
    if wide is not None:
        arr = wide[..., 0].astype(np.int64) if wide.shape[-1] == 1 else wide.astype(np.int64)
    else:
        try:
            with Image.open(path) as img:
                if img.mode == "1":
                    return np.asarray(img, dtype=np.int64), False
                arr = np.asarray(img).astype(np.int64)
        except DECODE_ERRORS as err:
            raise unreadable(path, err, "mask") from None
    if arr.ndim == 3:
        colour = arr[..., :3]
        if (colour != colour[..., :1]).any():
            raise DataError(f"{path}: colour mask; save masks as one-channel label images (gray or palette PNG)")
        return colour[..., 0], True
    return arr, False


def _lossy_codec(path: Path) -> str | None:
    """The lossy codec a mask file is stored with (`JPEG`, `JPEG-compressed TIFF`; by its content, whatever its
    name), None for a lossless file or one PIL cannot open (the reader then names what is wrong with it). Reads the
    header only. WebP and JPEG 2000 are not read (`IMAGE_EXTENSIONS`)."""
    try:
        with Image.open(path) as img:
            fmt, info = img.format, img.info
    except DECODE_ERRORS:
        return None
    if fmt in ("JPEG", "MPO"):
        return "JPEG"
    if fmt == "TIFF" and info.get("compression") in ("jpeg", "tiff_jpeg"):
        return "JPEG-compressed TIFF"
    return None


def _refuse_lossy_mask(path: Path) -> None:
    """Refuse a mask stored with a lossy codec: JPEG invents label values at every edge, which become extra classes
    when in range (labels 0-18 gave 27 logit channels) or a bare out-of-range error. Binary 0/255 JPEG masks are
    refused too, not thresholded: they cannot be told from label maps with small labels and a 255 void (both decode
    to values near 0 and near 255), and a wrong guess would train on wrong classes without a word.

    Raises:
        DataError: naming the file and the lossless formats to save it in.
    """
    codec = _lossy_codec(path)
    if codec is not None:
        raise DataError(f"{path}: a {codec} mask: lossy compression changes label values at every edge (new "
                        "classes); save masks in a lossless format (PNG, TIFF without JPEG compression, GIF, BMP), "
                        "binary 0/255 masks thresholded at 128 when converting")


def _read_pair(image_path: Path, mask_path: Path, size: int | None
               ) -> tuple[torch.Tensor, torch.Tensor, bool, float]:
    """Image and mask tensors (`image_mask_tensors`), whether the mask file was RGB (`_read_mask`), and the
    image's scale (`read_image`)."""
    (image, scale), (mask, rgb) = read_image(image_path), _read_mask(mask_path)
    if image.shape[:2] != mask.shape:
        raise DataError(f"{mask_path}: mask is {mask.shape[1]}×{mask.shape[0]} but image {image_path.name} is "
                        f"{image.shape[1]}×{image.shape[0]} (width×height)")
    return (*image_mask_tensors(image, mask, size), rgb, scale)


def _read_split(folder: Path, size: int | None) -> SegSplit:
    """All image/mask pairs of `folder/images` and `folder/masks`, stacked.

    Raises:
        DataError: images of different sizes (without data.image_size) or bit depths (`common_scale`).
    """
    pairs = _pair_files(folder / "images", folder / "masks")
    loaded = [_read_pair(image, mask, size) for image, mask in pairs]
    scale = common_scale([(image, read[3]) for (image, _), read in zip(pairs, loaded, strict=True)])
    shapes = {tuple(y.shape) for _, y, _, _ in loaded}
    if len(shapes) > 1:
        raise DataError(f"data.image_size: images in {folder} differ in size ({', '.join(map(str, sorted(shapes)))}); "
                        "set data.image_size to resize them")
    chans = max(x.shape[0] for x, _, _, _ in loaded)
    images = torch.stack([x.expand(chans, -1, -1) for x, _, _, _ in loaded])  # gray next to colour: repeat the gray
    rgb = tuple(mask for (_, mask), (_, _, was_rgb, _) in zip(pairs, loaded, strict=True) if was_rgb)
    return SegSplit(images.contiguous(), torch.stack([y for _, y, _, _ in loaded]), tuple(mask for _, mask in pairs),
                    rgb, (pairs[0][0], scale), tuple(sorted({x.shape[0] for x, _, _, _ in loaded})))


def _note_rgb_masks(splits: tuple[SegSplit, ...]) -> None:
    """One line when mask files are RGB images (gray labels stored in three equal channels): how they are read."""
    rgb = [path for split in splits for path in split.rgb_masks]
    if rgb:
        total = sum(len(split.mask_files) for split in splits)
        log.info(f"data.path: {len(rgb)} of {total} mask files are RGB images with equal channels (e.g. {rgb[0]}): "
                 "read as gray label images (their first channel); a colour-coded mask would be refused")


def _align_splits(train: SegSplit, test: SegSplit) -> tuple[SegSplit, SegSplit]:
    """Raise unless both splits have the same image size and bit depth; give a gray split colour channels if the other
    has them."""
    if train.masks.shape[1:] != test.masks.shape[1:]:
        raise DataError(f"data.image_size: train images are {tuple(train.masks.shape[1:])} but test images "
                        f"{tuple(test.masks.shape[1:])}; set data.image_size to resize them")
    common_scale([train.scale, test.scale])
    chans = max(train.images.shape[1], test.images.shape[1])
    train, test = (replace(s, images=s.images.expand(-1, chans, -1, -1).contiguous()) for s in (train, test))
    return train, test


# ---------------------------------------------------------------------------------------------- classes, splits


def _declared_classes(root: Path) -> int | None:
    """Class count from root/classes.txt: a single integer, or one class name per non-empty line."""
    path = root / "classes.txt"
    if not path.is_file():
        return None
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    count = int(lines[0]) if len(lines) == 1 and lines[0].isdigit() else len(lines)
    if count < 2:
        raise DataError(f"{path}: need at least 2 classes (background and one foreground), got {count}")
    return count


def _class_names(root: Path) -> tuple[str, ...] | None:
    """Class names in label order: classes.txt's lines when it names them, else background / foreground for a
    binary folder (labels 0 and 1); None when unknown."""
    path = root / "classes.txt"
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    if len(lines) >= 2:
        return tuple(lines)
    return ("background", "foreground") if not lines or lines[0] == "2" else None


def _first_offending(splits: tuple[SegSplit, ...], predicate: Callable[[torch.Tensor], torch.Tensor]
                     ) -> tuple[Path, int]:
    """The first mask file holding a value for which `predicate` (elementwise on values) is true, and that value."""
    for split in splits:
        for mask, path in zip(split.masks, split.mask_files, strict=True):
            values = torch.unique(mask)
            hits = values[predicate(values)]
            if len(hits):
                return path, int(hits[0])
    raise AssertionError("no mask holds the offending value")


def _class_lookup(root: Path, splits: tuple[SegSplit, ...], ignore: int | None = None
                  ) -> tuple[torch.Tensor, int, str]:
    """Table raw mask value → class index, the number of logit channels (1 = binary) and where that count comes
    from (`binary 0/255 masks ...`, `ROOT/classes.txt`, `the largest label ...`). The `ignore` value
    (data.ignore_index) is no class: it maps to itself and counts for neither the binary rule nor the class count.

    Raises:
        DataError: naming the first mask file with a value outside the class range.
    """
    raw = torch.unique(torch.cat([torch.unique(s.masks) for s in splits]))
    if int(raw.min()) < 0:
        path, value = _first_offending(splits, lambda v: v < 0)
        raise DataError(f"{path}: negative mask value {value}")
    labels = raw if ignore is None else raw[raw != ignore]
    if ignore is not None and len(labels) < 2 and len(labels) < len(raw):
        _refuse_single_label(root, ignore, labels.tolist())
    declared = _declared_classes(root)
    lookup = torch.arange(int(raw.max()) + 1)
    if bool(torch.isin(labels, torch.tensor([0, 255])).all()) and declared in (None, 2):
        where = f"{root / 'classes.txt'} (2 classes) and " if declared else ""
        if 255 in labels.tolist():
            lookup[255] = 1  # 0/255 binary masks: 255 is foreground class 1
            return lookup, 1, f"{where}binary 0/255 masks (255 = foreground)"
        return lookup, 1, f"{where}binary masks (only label 0 found)"
    limit = declared or MAX_INFERRED_CLASSES
    if int(labels.max()) >= limit:
        path, value = _first_offending(splits, lambda v: (v >= limit) & (v != (-1 if ignore is None else ignore)))
        reason = (f"{root / 'classes.txt'} declares {declared} classes" if declared
                  else f"labels must be < {MAX_INFERRED_CLASSES} without a classes.txt")
        void = ("; Pascal VOC / Cityscapes mark void pixels 255: set data.ignore_index=255 to leave them out"
                if value == 255 else "")
        raise DataError(f"{path}: mask value {value} outside the class range 0..{limit - 1} ({reason}; binary "
                        f"masks must hold only 0/255 or 0/1){void}")
    num_classes = declared or max(int(labels.max()) + 1, 2)
    origin = (f"{root / 'classes.txt'}" if declared else "binary 0/1 masks" if num_classes == 2 else
              f"the largest mask label {int(labels.max())}; no classes.txt in {root} sets the count")
    return lookup, 1 if num_classes == 2 else num_classes, origin


def _refuse_single_label(root: Path, ignore: int, labels: list[int]) -> None:
    """Raise the one line for masks that data.ignore_index leaves with one class value (or none): every pixel would
    be that class or void, so any model scores 100 % (0/255 binary masks with ignore_index=255: all foreground void).

    Raises:
        DataError: naming data.ignore_index, the label left and what to do.
    """
    left = f"only label {labels[0]}" if labels else "no label"
    if labels == [0] and ignore == 255:
        fix = "these 0/255 masks are binary (255 = foreground); drop data.ignore_index"
    else:
        fix = "a segmentation needs two classes or more; drop data.ignore_index or set it to the masks' void value"
    raise DataError(f"data.ignore_index={ignore} leaves {left} in the masks of {root}: {fix}")


def _num_test(n: int, fraction: float) -> int:
    """Test samples of `n` for data.test_fraction: round(n · fraction), at least 1 and at most n − 1; all `n` for
    1.0 (which only `sparsetrain eval` gets here: `build_data` refuses it for a run)."""
    if fraction >= 1:
        return n
    if n < 2:
        raise DataError(f"data: need at least 2 samples to split into train and test, got {n}")
    return min(max(1, round(n * fraction)), n - 1)


def _split(data: SegSplit, fraction: float, seed: int) -> tuple[SegSplit, SegSplit]:
    """Random train/test split (reproducible from the seed); the test split gets round(n * fraction) images."""
    n = len(data.masks)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    n_test = _num_test(n, fraction)
    parts = []
    for idx in (order[n_test:], order[:n_test]):
        parts.append(replace(data, images=data.images[idx], masks=data.masks[idx], rgb_masks=(),
                             mask_files=tuple(data.mask_files[i] for i in idx.tolist())))
    return parts[0], parts[1]
