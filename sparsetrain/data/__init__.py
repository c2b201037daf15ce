"""Data sources: built-in (digits, mnist1d, synthetic, synthetic vessels) and users' own data on disk."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from sparsetrain.config.schema import PATH_SOURCES, SPLIT_BY_FRACTION, DataConfig, TrainSubsetConfig
from sparsetrain.data.base import (
    LUMA_WEIGHTS,
    DataBundle,
    DataError,
    DataNotFound,
    color_record,
    output_names,
    preprocessing_record,
    resize_record,
)
from sparsetrain.data.builtin import BUILTIN_LOADERS, to_tensors
from sparsetrain.data.disk import IMAGEFOLDER_SIZE, imagefolder_stats, load_imagefolder, load_npz
from sparsetrain.data.idx import read_idx
from sparsetrain.data.images import color_kinds, image_files_raw
from sparsetrain.data.tensors import InMemoryDataset, Stats, match_channels, standardize
from sparsetrain.progress import log

__all__ = ["DataBundle", "DataError", "DataNotFound", "build_data", "subset_indices"]


def subset_indices(num_samples: int, subset: TrainSubsetConfig) -> np.ndarray:
    """Sorted indices of part `subset.part` of a seeded random partition of range(num_samples) into
    `subset.parts` disjoint parts whose sizes differ by at most one."""
    order = np.random.default_rng(subset.seed).permutation(num_samples)
    return np.sort(np.array_split(order, subset.parts)[subset.part])


def check_subset(num_samples: int, subset: TrainSubsetConfig, classes: int, batch_size: int | None) -> None:
    """Refuse a partition whose part `subset.part` holds fewer training samples than one batch (`batch_size`, the
    global train.batch_size; None: nothing trains on it, e.g. eval, and nothing is checked) or than the `classes`
    the training set holds (a part could not hold each of them once): such a part would fail the run later on its
    batch size, after statistics of a sample or two.

    Raises:
        DataError: one line naming data.train_subset.parts and the largest count whose every part is big enough.
    """
    if batch_size is None:
        return
    size = num_samples // subset.parts + (subset.part < num_samples % subset.parts)  # np.array_split's sizes
    needs = {f"train.batch_size {batch_size}": batch_size, f"the {classes} classes of the training set": classes}
    reason, need = max(needs.items(), key=lambda item: item[1])
    if size >= need:
        return
    most = num_samples // need
    lower = f"train.batch_size={num_samples // 2} or less, or " if need == batch_size else ""
    fix = (f"expected at most {most} (each part then holds {need} or more)" if most >= 2 else
           f"even 2 parts cannot hold {need} each: set {lower}leave out data.train_subset")
    raise DataError(f"data.train_subset.parts: {subset.parts} parts of the {num_samples} training samples leave "
                    f"part {subset.part} {size} sample{'s' * (size != 1)}, fewer than {reason}; {fix}")


# Raw values each array source starts from and the factor its loader scales them by (npz: decided by its dtype).
RAW_INPUTS = {
    "digits": ("scikit-learn load_digits().images, values 0-16", 1 / 16),
    "mnist1d": ("mnist1d make_dataset() x / x_test, float", 1.0),
    "synthetic": ("generated float images", 1.0),
    "idx": ("IDX image files, uint8 pixels 0-255", 1 / 255),
}
DIGITS = tuple(str(d) for d in range(10))
UNTRAINED_SHOWN = 5  # labels without a training sample listed in the log line
CLASS_NAMES = {"digits": DIGITS, "mnist1d": DIGITS}  # array sources whose labels are known to name something


def _bundle_from_arrays(arrays: tuple, cfg: DataConfig, num_classes: int | None,
                        raw: tuple[str, float], names: tuple[str, ...] | None = None,
                        batch_size: int | None = None, stats: Stats | None = None) -> DataBundle:
    x_train, y_train, x_test, y_test = arrays
    data_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1  # of the whole set, not the subset
    check_model_classes(num_classes, data_classes, f"labels 0-{data_classes - 1}")
    classes = num_classes or data_classes
    if cfg.train_subset is not None:
        check_subset(len(x_train), cfg.train_subset, len(np.unique(y_train)), batch_size)
        keep = subset_indices(len(x_train), cfg.train_subset)
        x_train, y_train = x_train[keep], y_train[keep]
    x_train, y_train, x_test, y_test = to_tensors((x_train, y_train, x_test, y_test))
    chans = x_train.shape[1]
    x_train, x_test = match_channels(x_train, cfg.in_chans), match_channels(x_test, cfg.in_chans)
    if x_train.shape[1] != chans:
        raw = (raw[0] + (", channels averaged to gray" if x_train.shape[1] == 1 else
                         f", the one channel repeated {x_train.shape[1]} times"), raw[1])
    if cfg.normalize:  # statistics of the training data actually used (the subset), or the model's given ones
        x_train, x_test, stats = standardize(x_train, x_test, stats)
    else:
        stats = None
    _log_untrained_classes(y_train, y_test, classes)
    shape = tuple(x_train.shape[1:])
    return DataBundle(InMemoryDataset(x_train, y_train), InMemoryDataset(x_test, y_test),
                      in_chans=x_train.shape[1], num_classes=classes, input_shape=shape,
                      preprocessing=preprocessing_record(shape, raw[0], raw[1], stats),
                      classes=output_names(names, data_classes, classes), data_classes=data_classes)


def check_model_classes(num_classes: int | None, data_classes: int, what: str) -> None:
    """Raise DataError unless model.kwargs.num_classes (None: not given) gives an output to each of the data's
    `data_classes` classes (`what` says where they come from, e.g. 'labels 0-9'): a label without an output would
    fail the loss mid-run (cross_entropy's 'Target 4 is out of bounds')."""
    if num_classes is not None and num_classes < data_classes:
        raise DataError(f"model.kwargs.num_classes: {num_classes} model outputs for data with {data_classes} classes "
                        f"({what}); expected at least {data_classes}, or leave it out (the class count comes from "
                        "the data)")


def _log_untrained_classes(y_train: torch.Tensor, y_test: torch.Tensor, classes: int) -> None:
    """One line when some of the `classes` labels have no training sample (EMNIST letters: labels 1-26, none 0):
    the model still gets an output for each, which nothing teaches but to stay low; labels are not remapped."""
    absent = (torch.bincount(y_train, minlength=classes) == 0).nonzero().flatten().tolist()
    if not absent:
        return
    in_test = int(torch.isin(y_test, torch.tensor(absent)).sum())
    shown = ", ".join(map(str, absent[:UNTRAINED_SHOWN])) + (", …" if len(absent) > UNTRAINED_SHOWN else "")
    label, output = ((f"label {shown} has", "that output is") if len(absent) == 1 else
                     (f"{len(absent)} labels ({shown}) have", "those outputs are"))
    hint = " (EMNIST letters: labels 1-26, none 0)" if absent == [0] else ""
    log.info(f"data: {classes} classes (labels 0-{classes - 1}, one model output each); {label} no training sample "
             f"({in_test} test samples): labels are used as stored, so {output} never trained to fire{hint}")


GENERATED = ("synthetic", "mnist1d", "seg_synthetic")  # sources that read data.num_samples
SIZE_KEYS = ("train_samples", "test_samples")  # what `data_record` adds: not config fields


def data_record(cfg: dict[str, Any], source: str, train_samples: int, test_samples: int) -> dict[str, Any]:
    """The data section as an export records it (`architecture.json` `meta.data`): the config's fields less those
    the source does not read (`test_fraction` only for sources that split, `num_samples` only for generated ones:
    an npz file has its own split and size), plus the sizes the run really used (`SIZE_KEYS`).

    Args:
        cfg: The resolved data section as a mapping (`config_to_dict(cfg)["data"]`).
        source: `data.source`.
        train_samples: Training samples the run used (after `train_subset`).
        test_samples: Test samples it evaluated on.
    """
    unused = ({"test_fraction"} if source not in SPLIT_BY_FRACTION else set()) | (
        {"num_samples"} if source not in GENERATED else set())
    return {**{k: v for k, v in cfg.items() if k not in unused}, "train_samples": train_samples,
            "test_samples": test_samples}


def build_data(cfg: DataConfig, seed: int, num_classes: int | None = None,
               batch_size: int | None = None, eval_only: bool = False, stats: Stats | None = None) -> DataBundle:
    """Load the configured data set; `num_classes` (from model.kwargs) bounds the labels when given, `batch_size`
    (train.batch_size; None when nothing trains) the size of a `data.train_subset` part (`check_subset`).
    `eval_only` (`sparsetrain eval`): data.test_fraction=1.0 may leave the training split empty (segmentation
    sources: every sample is scored) and a seg_folder may hold test/ alone; otherwise both are refused. `stats`
    (eval: the per-channel mean/std a model was trained with, from its export) standardizes the inputs instead of
    the training split's own statistics when `data.normalize` is set; `imagefolder` keeps its fixed ImageNet
    statistics."""
    if cfg.source in PATH_SOURCES and not cfg.path:
        raise DataNotFound(f"data.path: required for data.source={cfg.source!r}")
    if cfg.test_fraction >= 1 and cfg.source in SPLIT_BY_FRACTION and not eval_only:
        raise DataError(f"data.test_fraction: {cfg.test_fraction:g} leaves no training sample; expected a fraction "
                        "below 1 (the default is 0.2); 1.0 is for `sparsetrain eval`, to score every image of a "
                        "seg_folder")
    if cfg.source in BUILTIN_LOADERS:
        return _bundle_from_arrays(BUILTIN_LOADERS[cfg.source](cfg, seed), cfg, num_classes, RAW_INPUTS[cfg.source],
                                   CLASS_NAMES.get(cfg.source), batch_size, stats)
    if cfg.source == "npz":
        arrays, scale = load_npz(cfg.path, num_classes)
        raw = "x_train / x_test of the .npz as stored (" + ("uint8 pixels 0-255)" if scale != 1 else "float)")
        return _bundle_from_arrays(arrays, cfg, num_classes, (raw, scale), batch_size=batch_size, stats=stats)
    if cfg.source == "idx":
        idx = read_idx(cfg.path, num_classes, cfg.idx_prefix, cfg.transpose)
        raw, scale = RAW_INPUTS["idx"]
        if idx.transposed:  # the export says how the stored images map to the model's inputs
            raw += f", each image of {' and '.join(f.name for f in idx.transposed)} transposed (H and W swapped)"
        return _bundle_from_arrays(idx.arrays, cfg, num_classes, (raw, scale), idx.classes, batch_size, stats)
    if cfg.source == "imagefolder":
        size, chans = cfg.image_size or IMAGEFOLDER_SIZE, cfg.in_chans or 3
        train, test, scale = load_imagefolder(cfg.path, size, cfg.normalize, chans)
        check_model_classes(num_classes, len(train.classes), f"class folders of {cfg.path}")
        kinds = color_kinds([p for p, _ in train.samples])  # what the model is trained on, for eval to compare
        classes = num_classes or len(train.classes)
        names = output_names(tuple(train.classes), len(train.classes), classes)  # torchvision: sorted folder names
        if cfg.train_subset is not None:
            check_subset(len(train), cfg.train_subset, len(train.classes), batch_size)
            train = Subset(train, subset_indices(len(train), cfg.train_subset).tolist())
        stats = imagefolder_stats(chans) if cfg.normalize else None
        # a tree of either bit depth may hold gray and colour files, and not every file is read here
        prep = preprocessing_record((chans, size, size), image_files_raw(scale), scale, stats,
                                    resize=resize_record([size, size], "torch interpolate via torchvision Resize"),
                                    color={**color_record((1, 3), chans, LUMA_WEIGHTS),
                                           "files": kinds})
        return DataBundle(train, test, in_chans=chans, num_classes=classes, input_shape=(chans, size, size),
                          preprocessing=prep, classes=names, data_classes=len(train.classes))
    from sparsetrain.data.segmentation import build_segmentation_data

    return build_segmentation_data(cfg, seed, num_classes, stats, eval_only)
