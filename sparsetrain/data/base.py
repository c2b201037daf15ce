"""Data contract shared by all sources."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import Dataset

from sparsetrain.errors import InputError


class DataError(InputError):
    """Bad data on disk or in a built-in generator: one line naming the file/array and what was expected."""


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
    classes: tuple[str, ...] | None = None  # class names in index order, where the data names them


def resize_record(size: list[int], how: str) -> dict[str, Any]:
    """How images were brought to `size` [H, W]: bilinear with antialiasing, the whole image squashed to the size
    (aspect ratio not kept, nothing cropped). `how` names the implementation (PIL through torchvision's Resize,
    or torch's interpolate)."""
    return {"size": list(size), "interpolation": "bilinear", "antialias": True, "mode": "squash", "by": how}


def preprocessing_record(input_shape: tuple[int, ...], raw: str, scale: float,
                         stats: tuple[list[float], list[float]] | None, resize: dict[str, Any] | None = None,
                         color: str | None = None) -> dict[str, Any]:
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
        color: The channels images are brought to first ("RGB": 3, gray files repeated; "L": 1, colour files mixed
            with the ITU-R 601 luma weights of torchvision's Grayscale; 16-bit gray files read as stored, never
            through PIL's convert, which clips them), or None.
    """
    layout = "NCHW" if len(input_shape) == 3 else "NCL" if len(input_shape) == 2 else "N" + "?" * len(input_shape)
    mean, std = stats if stats is not None else (None, None)
    return {"layout": layout, "dtype": "float32", "input_shape": list(input_shape), "raw": raw, "scale": scale,
            "mean": mean, "std": std, "resize": resize, "color": color,
            "formula": "x = (raw * scale - mean[c]) / std[c] for channel c = axis 1 (mean/std null: no "
                       "standardization), float32, layout N×C×H×W"}


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
