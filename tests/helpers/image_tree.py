"""Small ImageFolder trees of real PNG files, whose classes a tiny CNN can tell apart (a pattern per class)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PATTERNS = ("hstripes", "vstripes", "checker", "disk")


def _pattern(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """One side×side×3 uint8 image of `kind` (a PATTERNS name), randomly shifted, coloured and noised."""
    y, x = np.mgrid[:side, :side] + rng.integers(0, 4, 2)[:, None, None]
    mask = {"hstripes": y // 2 % 2, "vstripes": x // 2 % 2, "checker": (x // 3 + y // 3) % 2,
            "disk": ((x - side / 2) ** 2 + (y - side / 2) ** 2 < (side / 3) ** 2)}[kind].astype(np.float32)
    colour = rng.uniform(0.5, 1.0, 3)
    image = mask[..., None] * colour * 255 + rng.normal(0, 20, (side, side, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_image_tree(root: Path, classes: int = 4, per_class: tuple[int, int] = (8, 4), side: int = 16,
                     gray: bool = False, seed: int = 0) -> Path:
    """root/train/<class>/<i>.png and root/val/<class>/<i>.png: `per_class` (train, val) images of each of the first
    `classes` PATTERNS; `gray` saves them as 1-channel (L) PNGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class, strict=True):
        for kind in PATTERNS[:classes]:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = Image.fromarray(_pattern(kind, side, rng))
                (image.convert("L") if gray else image).save(folder / f"{i}.png")
    return root
