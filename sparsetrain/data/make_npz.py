"""Write a built-in data set as an MNIST-style `.npz` (uint8 N×H×W images, int64 labels).

    python -m sparsetrain.data.make_npz digits data/digits28.npz --size 28

Digits are 8×8; `--size 28` resamples them bilinearly to MNIST's 28×28 layout, so the LeNet recipes run on
the same input size as MNIST. Users with real MNIST write the same four arrays from their own copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sparsetrain.argtypes import CommandParser
from sparsetrain.config.schema import DataConfig
from sparsetrain.data.builtin import BUILTIN_LOADERS


def to_uint8_images(x: np.ndarray, size: int | None) -> np.ndarray:
    images = torch.from_numpy(x).float()
    if size is not None and images.ndim == 4:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    low, high = images.amin(), images.amax()
    scaled = ((images - low) / (high - low).clamp_min(1e-12) * 255).round().to(torch.uint8).numpy()
    return scaled[:, 0] if scaled.shape[1] == 1 else scaled


def main(argv: list[str] | None = None) -> None:
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", choices=sorted(BUILTIN_LOADERS))
    parser.add_argument("output", type=Path)
    parser.add_argument("--size", type=int, default=None, help="resample square images to this size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    x_train, y_train, x_test, y_test = BUILTIN_LOADERS[args.source](DataConfig(source=args.source), args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, x_train=to_uint8_images(x_train, args.size), y_train=y_train,
                        x_test=to_uint8_images(x_test, args.size), y_test=y_test)
    print(f"wrote {args.output}: {len(x_train)} train / {len(x_test)} test samples")


if __name__ == "__main__":
    main()
