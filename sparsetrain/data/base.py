"""Data contract shared by all sources."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from sparsetrain.errors import InputError


class DataError(InputError):
    """Bad data on disk or in a built-in generator: one line naming the file/array and what was expected."""


class DataNotFound(DataError):
    """The data is not on this machine: `data.path` is not set, or names no file or folder here. A run refuses it
    like any bad data; `run --dry-run` plans from the config's sizes instead (the data may be on the cluster the run
    is planned for), while data that is here is read, and refused when bad, as the run would."""


@dataclass(frozen=True)
class DataBundle:
    """Train and test splits plus what the model factory needs to know about them.

    Datasets return (input, target) pairs: input float32 C×H×W (or C×L for 1-D data), target int64 class index
    (classification) or int64 H×W class map (segmentation). Datasets may implement `__getitems__(indices)`
    returning a collated (inputs, targets) pair for fast batched access of in-memory data.
    """

    train: Dataset
    test: Dataset
    in_chans: int
    num_classes: int
    input_shape: tuple[int, ...]  # per-sample shape, e.g. (1, 28, 28)
    preprocessing: dict[str, Any] = field(default_factory=dict)  # see `preprocessing_record`
    classes: tuple[str, ...] | None = None  # names of the model's outputs in index order, where the data names them
    data_classes: int | None = None  # the data's own class count (num_classes may be more: model.kwargs.num_classes)


def output_names(names: tuple[str, ...] | None, data_classes: int, outputs: int) -> tuple[str, ...] | None:
    """The names of a model's `outputs` outputs (DataBundle.classes): the data's class names, then a placeholder
    `class K` for each output past them when model.kwargs.num_classes asks for more outputs than the data has classes
    (outputs without a pixel or sample of their own keep a name in the export and the per-class metrics).

    Args:
        names: The data's class names in label order, or None when it names none.
        data_classes: The data's class count (binary segmentation: 2).
        outputs: The model's outputs (binary segmentation with one logit: 2, the classes it separates).

    Returns:
        None when `names` is None, names fewer than the data's classes (not a full list) or more than the outputs.
    """
    if not names or len(names) < data_classes or len(names) > outputs:
        return None
    return (*names, *(f"class {index}" for index in range(len(names), outputs)))


def resize_record(size: list[int], how: str) -> dict[str, Any]:
    """How images were brought to `size` [H, W]: bilinear with antialiasing, the whole image squashed to the size
    (aspect ratio not kept, nothing cropped). `how` names the implementation (PIL through torchvision's Resize,
    or torch's interpolate)."""
    return {"size": list(size), "interpolation": "bilinear", "antialias": True, "mode": "squash", "by": how}


def preprocessing_record(input_shape: tuple[int, ...], raw: str, scale: float,
                         stats: tuple[list[float], list[float]] | None, resize: dict[str, Any] | None = None,
                         color: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a model trained on this data expects, recorded in its export (`architecture.json` meta and the ONNX
    metadata): `x = (raw * scale - mean[c]) / std[c]` per channel c (axis 1), float32, batch-first layout.

    Args:
        input_shape: Per-sample shape C×H×W (or C×L for 1-D data).
        raw: What the raw values are (e.g. "uint8 pixels 0-255 as stored in x_test of the .npz").
        scale: Factor applied to the raw values before standardization (1/255 for uint8 pixels, 1/65535 for
            16-bit image files).
        stats: Per-channel (mean, std) of the scaled training inputs (`data.normalize`), or None.
        resize: How images are resized first (`resize_record`: size [H, W], interpolation, antialias, mode), or
            None.
        color: What was done to the image files' channels to get the model's C (`color_record`), or None for data
            that is not image files; an ImageFolder's adds `files`, the kinds its training files are (`gray`,
            `colour`, `gray and colour`, from a sample of their headers: `images.color_kinds`), which eval
            compares with the data it scores.
    """
    layout = "NCHW" if len(input_shape) == 3 else "NCL" if len(input_shape) == 2 else "N" + "?" * len(input_shape)
    mean, std = stats if stats is not None else (None, None)
    return {"layout": layout, "dtype": "float32", "input_shape": list(input_shape), "raw": raw, "scale": scale,
            "mean": mean, "std": std, "resize": resize, "color": color,
            "formula": "x = (raw * scale - mean[c]) / std[c] for channel c = axis 1 (mean/std null: no "
                       "standardization), float32, layout N×C×H×W; raw brought to C channels as `color` says and "
                       "to the size `resize` says (both linear: their order does not matter)"}


# colour (R, G, B) → gray weights: torchvision's Grayscale (ITU-R 601 luma; imagefolder) and `match_channels`' mean
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)
MEAN_WEIGHTS = (1 / 3, 1 / 3, 1 / 3)


def _channel_step(stored: int, chans: int) -> str:
    """What turns a file of `stored` channels (1 gray, 3 colour) into `chans`: `as stored`, `repeated to C channels`
    or `mixed to gray with gray_weights`."""
    if stored == chans:
        return "as stored"
    return f"repeated to {chans} channels" if stored == 1 else "mixed to gray with gray_weights"


def color_record(stored: tuple[int, ...], chans: int, weights: tuple[float, float, float]) -> dict[str, Any]:
    """What was applied to the channels of the image files of one data set, for the export's preprocessing record.

    Args:
        stored: The channel counts the data set's files have after decoding (1 gray, 3 colour: palette and RGBA
            files are converted to RGB, alpha dropped), e.g. (1,) or (1, 3); both when not every file was read.
        chans: C, the model's input channels.
        weights: The R, G, B weights colour files are mixed to gray with when C is 1.

    Returns:
        `{"applied": "<one line>", "gray_weights": [r, g, b] or None}`: `applied` is e.g. `none (3 channels as
        stored)`, `gray repeated to 3 channels`, `colour mixed to gray with gray_weights`, or per file kind when
        the data set holds (or may hold) both, as the rule for any such file (`any gray file repeated to 3
        channels; any colour file as stored`: it says nothing about whether the data holds one); `gray_weights` is
        set only when a colour file is mixed to gray.
    """
    steps = {kind: _channel_step(count, chans) for count, kind in ((1, "gray"), (3, "colour")) if count in stored}
    if set(steps.values()) == {"as stored"}:
        applied = f"none ({chans} channel{'s' * (chans > 1)} as stored)"
    elif len(steps) == 1:
        applied = " ".join(next(iter(steps.items())))
    else:
        applied = "; ".join(f"any {kind} file {step}" for kind, step in steps.items())  # a rule: not every file read
    mixed = chans == 1 and 3 in stored
    return {"applied": applied, "gray_weights": list(weights) if mixed else None}


def output_record(task: str, channels: int, classes: tuple[str, ...] | None) -> dict[str, Any]:
    """What the model's output means, recorded in its export beside the preprocessing: the class names in index
    order (None where the data names none) and how the logits decode to them.

    Args:
        task: "classification" (N×K logits) or "segmentation" (N×K×H×W logits, K = 1 for binary masks).
        channels: K, the number of logit channels (axis 1).
        classes: Class names in index order (two for binary segmentation: background, foreground), or None.
    """
    if task == "segmentation" and channels == 1:
        decode = "N×1×H×W logits: per pixel, logit > 0 (sigmoid > 0.5) is classes[1], else classes[0]"
    elif task == "segmentation":
        decode = "N×K×H×W logits: per pixel, the argmax over axis 1 is the index into classes"
    else:
        decode = "N×K logits: the argmax over axis 1 is the index into classes"
    return {"classes": list(classes) if classes else None, "decode": decode}
