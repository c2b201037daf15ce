"""Image files as float arrays in [0, 1]: the one reader behind ImageFolder trees and seg_folder images.

The scale is decided by the file's bit depth, never by its content: 8-bit files (PIL modes 1, L, P, RGB, RGBA, …)
give raw 0-255 × 1/255; 16-bit gray files (PIL's `I;16*` modes, and `I`, which older Pillow and 32-bit TIFFs give)
give raw 0-65535 × 1/65535. PIL's own `convert("L" | "RGB")` would clip 16-bit pixels to 255 (all white). One data
set must hold one bit depth: the export records one scale for every input (`mixed_depths`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sparsetrain.data.base import DataError

EIGHT_BIT = 1 / 255
SIXTEEN_BIT = 1 / 65535
# What decoders raise on a damaged file: OSError (unidentified, truncated), SyntaxError (broken PNG chunks),
# ValueError (bad header values)
DECODE_ERRORS = (OSError, SyntaxError, ValueError)


def pixel_scale(mode: str) -> float:
    """The factor raw pixels of a PIL image of this mode are scaled by into [0, 1]: 1/65535 for 16-bit gray
    (`I;16`, `I;16B`, …, and `I`), else 1/255."""
    return SIXTEEN_BIT if mode.startswith("I;16") or mode == "I" else EIGHT_BIT


def bit_depth(scale: float) -> str:
    """`8-bit` or `16-bit` for a scale `pixel_scale` gives."""
    return "16-bit" if scale == SIXTEEN_BIT else "8-bit"


def raw_pixels(scale: float) -> str:
    """What the raw values are, for the export's preprocessing record, e.g. `8-bit pixels 0-255`."""
    return "16-bit gray pixels 0-65535" if scale == SIXTEEN_BIT else "8-bit pixels 0-255"


def image_files_raw(scale: float) -> str:
    """The `raw` of the export's preprocessing record for image files of this scale; 16-bit files also say that they
    are read as stored (PIL's `convert` would clip them to 255)."""
    clip = ", read as stored (not through PIL's convert, which clips them to 255)" if scale == SIXTEEN_BIT else ""
    return f"image files decoded by PIL, {raw_pixels(scale)}{clip}"


def unreadable(path: Path, err: BaseException, what: str = "image") -> DataError:
    """The one-line error for a file PIL cannot decode: `<path>: <what> file is corrupt or not an image (…)`."""
    if isinstance(err, UnidentifiedImageError):
        return DataError(f"{path}: not a readable {what} file (PIL cannot identify its format: corrupt, or not an "
                         "image); replace or remove it")
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return DataError(f"{path}: cannot read {what} file ({detail}); replace or remove it")


def _pixels(img: Image.Image, path: Path) -> np.ndarray:
    """H × W × C raw pixels (C = 1 gray, 3 colour) as stored: uint8, or 0-65535 for 16-bit gray."""
    if img.mode.startswith("I;16"):
        return np.asarray(img)[..., None]
    if img.mode == "I":
        pixels = np.asarray(img)
        if pixels.size and (int(pixels.min()) < 0 or int(pixels.max()) > 65535):
            raise DataError(f"{path}: 32-bit integer pixels {int(pixels.min())}..{int(pixels.max())}; sparsetrain "
                            "reads 8-bit and 16-bit images (0-65535)")
        return pixels[..., None]
    if img.mode == "F":  # PIL's 8-bit conversion would clip floats (values in [0, 1] become 0 or 1: a black image)
        raise DataError(f"{path}: 32-bit float pixels (PIL mode F); sparsetrain reads 8-bit and 16-bit images: save "
                        "them as 16-bit PNG or TIFF (e.g. round(x * 65535) for values in [0, 1])")
    if img.mode in ("1", "L", "LA"):
        return np.asarray(img.convert("L"))[..., None]
    return np.asarray(img.convert("RGB"))


def read_image(path: Path) -> tuple[np.ndarray, float]:
    """Decode one image file into [0, 1].

    Returns:
        H × W × C float32 pixels in [0, 1] (C = 1 for gray, 3 for colour; alpha dropped), computed as
        `raw * scale` (the export's formula), and that scale: 1/255 (8-bit) or 1/65535 (16-bit gray).

    Raises:
        DataError: one line naming the file: not an image, corrupt or truncated, or 32-bit (integer or float) pixel
            values.
    """
    try:
        with Image.open(path) as img:
            raw, scale = _pixels(img, path), pixel_scale(img.mode)
    except DataError:
        raise
    except DECODE_ERRORS as err:
        raise unreadable(path, err) from None
    return (raw * scale).astype(np.float32), scale


def image_scale(path: Path) -> float:
    """The scale `read_image` uses for this file, from its header alone (nothing decoded).

    Raises:
        DataError: one line naming the file when PIL cannot identify it.
    """
    try:
        with Image.open(path) as img:
            return pixel_scale(img.mode)
    except DECODE_ERRORS as err:
        raise unreadable(path, err) from None


def mixed_depths(first: tuple[Path, float], other: tuple[Path, float]) -> DataError:
    """The one-line refusal of a data set that mixes bit depths, naming a file of each."""
    return DataError(f"data.path: {other[0]} is a {bit_depth(other[1])} image but {first[0]} is "
                     f"{bit_depth(first[1])}; save all images with one bit depth (the export records one input scale, "
                     f"1/255 or 1/65535, for every image)")


def common_scale(reads: list[tuple[Path, float]]) -> float:
    """The one scale of all (file, scale) pairs.

    Raises:
        DataError: `mixed_depths`, naming the first file and the first that differs from it.
    """
    first = reads[0]
    for other in reads[1:]:
        if other[1] != first[1]:
            raise mixed_depths(first, other)
    return first[1]
