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


def preprocessing_record(input_shape: tuple[int, ...], raw: str, scale: float,
                         stats: tuple[list[float], list[float]] | None, resize: list[int] | None = None,
                         color: str | None = None) -> dict[str, Any]:
    """What a model trained on this data expects, recorded in its export (`architecture.json` meta and the ONNX
    metadata): `x = (raw * scale - mean[c]) / std[c]` per channel c (axis 1), float32, batch-first layout.

    Args:
        input_shape: Per-sample shape C×H×W (or C×L for 1-D data).
        raw: What the raw values are (e.g. "uint8 pixels 0-255 as stored in x_test of the .npz").
        scale: Factor applied to the raw values before standardization (1/255 for uint8 pixels).
        stats: Per-channel (mean, std) of the scaled training inputs (`data.normalize`), or None.
        resize: [H, W] images are resized to first (torchvision Resize, bilinear), or None.
        color: PIL mode images are converted to first ("RGB" or "L"), or None.
    """
    layout = "NCHW" if len(input_shape) == 3 else "NCL" if len(input_shape) == 2 else "N" + "?" * len(input_shape)
    mean, std = stats if stats is not None else (None, None)
    return {"layout": layout, "dtype": "float32", "input_shape": list(input_shape), "raw": raw, "scale": scale,
            "mean": mean, "std": std, "resize": resize, "color": color,
            "formula": "x = (raw * scale - mean[c]) / std[c] for channel c = axis 1 (mean/std null: no "
                       "standardization), float32, layout N×C×H×W"}
