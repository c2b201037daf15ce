"""MNIST-family data in its original IDX layout (MNIST, Fashion-MNIST, KMNIST, EMNIST), read by torchvision.

A folder holds the four files, each optionally gzip-compressed (`.gz`)::

    train-images-idx3-ubyte   train-labels-idx1-ubyte   t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte

EMNIST's files carry a prefix and call the test split `test` (`emnist-balanced-test-images-idx3-ubyte.gz`):
both are accepted. Its download unpacks every split into one folder; `data.idx_prefix` (e.g. `emnist-letters`)
picks one. EMNIST stores each image transposed (H and W swapped; torchvision's EMNIST class leaves that to the
user), so by default (`data.transpose=auto`) images of files named `emnist-*` are transposed back on read: the
model, and so the exported one, sees upright characters. The split's `<prefix>-mapping.txt` (one line per label:
the label, then the ASCII code of each character it stands for: `0 48`, letters' `1 65 97`), when the folder holds
it, names the classes: the characters of each line (`0`, `Aa`), `N/A` for a label without a line (letters' 0, as
torchvision's EMNIST names it). Parsing is torchvision's own
(`torchvision.datasets.mnist.read_image_file` / `read_label_file`); those readers open plain files only, so `.gz`
files are first decompressed into a temporary folder with torchvision's `extract_archive`.

Real Fashion-MNIST (60,000 / 10,000): `apt-get install dataset-fashion-mnist` puts it under
`/usr/share/datasets/fashion-mnist` (`make data`).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sparsetrain.data.base import DataError, DataNotFound
from sparsetrain.progress import log

IDX_FILES = {"x_train": ("train", "images-idx3"), "y_train": ("train", "labels-idx1"),
             "x_test": ("t10k", "images-idx3"), "y_test": ("t10k", "labels-idx1")}
SPLIT_ALIASES = {"train": ("train",), "t10k": ("t10k", "test")}  # EMNIST names its test files "test"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
EMNIST_PREFIX = "emnist-"  # EMNIST's files, whose images are stored transposed
UNMAPPED = "N/A"  # the name of a label its EMNIST mapping file has no line for (torchvision's EMNIST says so too)
Transpose = bool | Literal["auto"]


@dataclass(frozen=True)
class IdxData:
    """What `read_idx` read: the four arrays, the files they came from, the image files it transposed, and the class
    names of an EMNIST split with its mapping file."""

    arrays: tuple[np.ndarray, ...]  # x_train, y_train, x_test, y_test (images float32 N×1×H×W in [0, 1])
    files: dict[str, Path]  # by array name
    transposed: tuple[Path, ...]  # image files whose images were transposed (H and W swapped) on read
    classes: tuple[str, ...] | None = None  # class names by label (EMNIST's mapping file), or None


def _pattern(split: str, content: str, prefix: str | None) -> re.Pattern[str]:
    """`<prefix>-<split>-<content>-ubyte[.gz]`: any prefix or none (None), exactly `prefix` ("": none); group
    `prefix` holds the file's prefix."""
    aliases = "|".join(SPLIT_ALIASES[split])
    head = "(?:(?P<prefix>.+)-)?" if prefix is None else f"(?P<prefix>{re.escape(prefix)})-" if prefix else ""
    return re.compile(rf"^{head}(?:{aliases})-{content}-ubyte(?:\.gz)?$")


def _matches(root: Path, split: str, content: str, prefix: str | None = None) -> list[Path]:
    """The files `[<prefix>-]<split>-<content>-ubyte[.gz]` in `root`, sorted (`prefix` as in `_pattern`)."""
    pattern = _pattern(split, content, prefix)
    return sorted(p for p in root.iterdir() if p.is_file() and pattern.match(p.name))


def _prefixes(paths: list[Path], split: str, content: str) -> list[str]:
    """The distinct prefixes of `paths` (all matching `split`/`content`), sorted; "" for an unprefixed file."""
    pattern = _pattern(split, content, None)
    return sorted({pattern.match(p.name)["prefix"] or "" for p in paths})


def _shown(prefixes: list[str]) -> str:
    return ", ".join(p or "'' (no prefix)" for p in prefixes)


def find_idx_files(root: Path, prefix: str | None = None) -> dict[str, Path]:
    """The four IDX files of `root` by array name (`x_train`, ...), those named `<prefix>-...` when `prefix` is
    given ("" = unprefixed files only).

    Raises:
        DataError: a file is absent (naming every absent one, and the prefixes the folder holds when `prefix`
            matches none), or several files fit one slot (naming the prefixes to choose from with
            data.idx_prefix, or the files when they differ only in compression).
    """
    found = {key: _matches(root, split, content, prefix) for key, (split, content) in IDX_FILES.items()}
    head = f"{prefix}-" if prefix else ""
    missing = [f"{head}{split}-{content}-ubyte[.gz]" for key, (split, content) in IDX_FILES.items() if not found[key]]
    if missing:
        held = _prefixes(_matches(root, "train", "images-idx3"), "train", "images-idx3")
        if prefix is not None and len(missing) == len(IDX_FILES) and held:
            raise DataError(f"data.idx_prefix: {root} holds no {head + '*' if head else 'unprefixed'} IDX files; set "
                            f"data.idx_prefix to one of {_shown(held)}")
        raise DataError(f"data.path: {root} lacks {', '.join(missing)} (an IDX folder holds "
                        f"{', '.join(f'{head}{s}-{c}-ubyte' for s, c in IDX_FILES.values())})")
    for key, paths in found.items():
        if len(paths) > 1:
            split, content = IDX_FILES[key]
            prefixes = _prefixes(paths, split, content)
            if len(prefixes) > 1:
                raise DataError(f"data.path: {root} holds several {split}-{content} files: set data.idx_prefix to "
                                f"one of {_shown(prefixes)}")
            raise DataError(f"data.path: {root} holds several {split}-{content} files: "
                            f"{', '.join(p.name for p in paths)} (keep one)")
    return {key: paths[0] for key, paths in found.items()}


def _read(path: Path, scratch: Path, kind: str) -> np.ndarray:
    """One IDX file through torchvision's reader (`kind` = "images" or "labels")."""
    from torchvision.datasets.mnist import read_image_file, read_label_file
    from torchvision.datasets.utils import extract_archive

    reader = read_image_file if kind == "images" else read_label_file
    try:
        plain = extract_archive(str(path), str(scratch)) if path.suffix == ".gz" else str(path)  # → the plain file
        return reader(plain).numpy()
    except (AssertionError, TypeError, ValueError, RuntimeError, OSError, EOFError, IndexError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"data.path: {path} is not a readable IDX {kind} file ({detail})") from None


def _to_inputs(images: np.ndarray) -> np.ndarray:
    """uint8 N×H×W → float32 N×1×H×W in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[:, None]


def _check_split(files: dict[str, Path], arrays: dict[str, np.ndarray], split: str, num_classes: int | None) -> None:
    images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if len(images) != len(labels):
        raise DataError(f"data.path: {files[f'x_{split}']} holds {len(images)} images but "
                        f"{files[f'y_{split}'].name} holds {len(labels)} labels")
    if num_classes is not None and len(labels) and labels.max() >= num_classes:
        raise DataError(f"data.path: {files[f'y_{split}']} has label {int(labels.max())} out of range "
                        f"[0, {num_classes}) (model.kwargs.num_classes)")


def _check_folder(root: Path) -> None:
    """DataError when `root` is a file (naming the folder and prefix to set when it is an IDX file) or absent."""
    if root.is_file():
        names = ", ".join(f"{split}-{content}-ubyte[.gz]" for split, content in IDX_FILES.values())
        example = f", e.g. {root.parent}" if _matches(root.parent, "train", "images-idx3") else ""
        prefix = next((m["prefix"] for split, content in IDX_FILES.values()
                       if (m := _pattern(split, content, None).match(root.name)) and m["prefix"]), None)
        if example and prefix:
            example += f" with data.idx_prefix={prefix}"
        raise DataError(f"data.path: {root} is a file; data.source=idx reads the folder holding the four IDX files "
                        f"({names}); set data.path to that folder{example}")
    if not root.is_dir():
        raise DataNotFound(f"data.path: IDX folder not found: {root}")


def _transposes(file: Path, transpose: Transpose) -> bool:
    """Whether images of `file` are transposed on read: `transpose` itself, or for auto whether it is EMNIST's."""
    return file.name.startswith(EMNIST_PREFIX) if transpose == "auto" else bool(transpose)


def _mapping_line(mapping: Path, number: int, line: str) -> tuple[int, str]:
    """(label, name) of line `number` of an EMNIST mapping file: `<label> <ASCII code> [<ASCII code> ...]`.

    Raises:
        DataError: one line naming the file and line when it is not a label and ASCII codes (0-127).
    """
    fields = line.split()
    if len(fields) < 2 or not all(f.isascii() and f.isdigit() for f in fields) or any(int(f) > 127 for f in fields[1:]):
        raise DataError(f"data.path: {mapping} line {number}: expected a label and the ASCII code of its character "
                        f"(e.g. '0 48', or '1 65 97' for 'Aa'), got {line.strip()!r}")
    return int(fields[0]), "".join(chr(int(code)) for code in fields[1:])


def emnist_classes(train_images: Path) -> tuple[str, ...] | None:
    """Class names by label from the EMNIST mapping file of the split `train_images` belongs to
    (`<dir>/emnist-<split>-mapping.txt`): the characters of each label's line, `UNMAPPED` for labels 0..max without
    one; None when the file is not an EMNIST one or the folder holds no mapping file.

    Raises:
        DataError: one line naming the mapping file and line: not `<label> <ASCII code>...`, or a label given twice.
    """
    match = _pattern("train", "images-idx3", None).match(train_images.name)
    prefix = match["prefix"] if match else None
    mapping = train_images.parent / f"{prefix}-mapping.txt"
    if not prefix or not prefix.startswith(EMNIST_PREFIX) or not mapping.is_file():
        return None
    names: dict[int, str] = {}
    for number, line in enumerate(mapping.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        label, name = _mapping_line(mapping, number, line)
        if label in names:
            raise DataError(f"data.path: {mapping} line {number}: label {label} given twice")
        names[label] = name
    return tuple(names.get(label, UNMAPPED) for label in range(max(names) + 1)) if names else None


def _log_orientation(files: dict[str, Path], transposed: tuple[Path, ...], transpose: Transpose) -> None:
    """One line when images are transposed, or when EMNIST's are kept as stored (transpose=false)."""
    images = (files["x_train"], files["x_test"])
    names = " and ".join(f.name for f in transposed)
    if transposed and transpose == "auto":
        log.info(f"data.transpose=auto: EMNIST stores its images transposed; those of {names} are transposed back "
                 "(H and W swapped) on read, so the model sees them upright (data.transpose=false keeps them as "
                 "stored)")
    elif transposed:
        log.info(f"data.transpose=true: the images of {names} are transposed (H and W swapped) on read")
    elif any(f.name.startswith(EMNIST_PREFIX) for f in images):
        log.info("data.transpose=false: EMNIST images are used as stored, transposed (H and W swapped): a model "
                 "trained on them expects transposed inputs")


def read_idx(path: str | None, num_classes: int | None = None, prefix: str | None = None,
             transpose: Transpose = "auto") -> IdxData:
    """Read an IDX folder: images float32 N×1×H×W in [0, 1] (N×1×W×H for transposed files), labels int64 N.

    Args:
        path: The folder (`data.path`).
        num_classes: Labels must be below it (model.kwargs.num_classes), or None.
        prefix: Read the files named `<prefix>-...` (`data.idx_prefix`, e.g. "emnist-letters"; "" = unprefixed);
            None = the only file of each kind, whatever its prefix.
        transpose: Swap H and W of each image (`data.transpose`): True, False, or "auto" = for files named
            `emnist-*` (EMNIST stores its images transposed).

    Raises:
        DataError: the folder or one of its four files is missing, ambiguous or unreadable, an image file and its
            label file hold different numbers of samples, a label is >= num_classes, train and test images
            differ in size, or the EMNIST split's mapping file is malformed (one line naming data.path or
            data.idx_prefix and the file).
    """
    root = Path(str(path))
    _check_folder(root)
    files = find_idx_files(root, None if prefix is None else prefix.rstrip("-"))
    with tempfile.TemporaryDirectory(prefix="sparsetrain-idx-") as scratch:
        arrays = {key: _read(file, Path(scratch), "images" if key.startswith("x") else "labels")
                  for key, file in files.items()}
    transposed = tuple(files[key] for key in ("x_train", "x_test") if _transposes(files[key], transpose))
    for key in ("x_train", "x_test"):
        if files[key] in transposed:
            arrays[key] = np.ascontiguousarray(arrays[key].transpose(0, 2, 1))
    for split in ("train", "test"):
        _check_split(files, arrays, split, num_classes)
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"data.path: {files['x_train'].name} images are {arrays['x_train'].shape[1:]} but "
                        f"{files['x_test'].name} images are {arrays['x_test'].shape[1:]}")
    _log_orientation(files, transposed, transpose)
    return IdxData((_to_inputs(arrays["x_train"]), arrays["y_train"], _to_inputs(arrays["x_test"]), arrays["y_test"]),
                   files, transposed, emnist_classes(files["x_train"]))

