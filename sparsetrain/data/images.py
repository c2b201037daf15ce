"""Image files as float arrays in [0, 1]: the one reader behind ImageFolder trees and seg_folder images.

The scale is decided by the file's bit depth, never by its content: 8-bit files (PIL modes 1, L, P, RGB, RGBA, …)
give raw 0-255 × 1/255; 16-bit files give raw 0-65535 × 1/65535: 16-bit PNGs of any colour type (gray, gray+alpha,
RGB, RGBA) decoded at full depth by torchvision's `decode_png`, 16-bit gray TIFFs by PIL (its `I;16*` modes, and `I`,
which older Pillow and 32-bit TIFFs give). PIL's own `convert("L" | "RGB")` would clip 16-bit gray pixels to 255 (all
white), and PIL opens 16-bit colour PNGs as 8-bit `RGB`/`RGBA` (the low byte dropped). One data set must hold one bit
depth: the export records one scale for every input (`mixed_depths`).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sparsetrain.data.base import DataError

EIGHT_BIT = 1 / 255
SIXTEEN_BIT = 1 / 65535
# What decoders raise on a damaged file: OSError (unidentified, truncated), SyntaxError (broken PNG chunks),
# ValueError (bad header values)
DECODE_ERRORS = (OSError, SyntaxError, ValueError)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pixel_scale(mode: str) -> float:
    """The factor raw pixels of a PIL image of this mode are scaled by into [0, 1]: 1/65535 for 16-bit gray
    (`I;16`, `I;16B`, …, and `I`), else 1/255."""
    return SIXTEEN_BIT if mode.startswith("I;16") or mode == "I" else EIGHT_BIT


def bit_depth(scale: float) -> str:
    """`8-bit` or `16-bit` for a scale `pixel_scale` gives."""
    return "16-bit" if scale == SIXTEEN_BIT else "8-bit"


def raw_pixels(scale: float) -> str:
    """What the raw values are, for the export's preprocessing record, e.g. `8-bit pixels 0-255`."""
    return "16-bit pixels 0-65535" if scale == SIXTEEN_BIT else "8-bit pixels 0-255"


def image_files_raw(scale: float) -> str:
    """The `raw` of the export's preprocessing record for image files of this scale; 16-bit files also say how they
    are read at full depth (PIL's `convert` would clip gray ones to 255, and PIL reads colour PNGs as 8-bit)."""
    if scale == SIXTEEN_BIT:
        return (f"image files, {raw_pixels(scale)} read as stored, at full depth (gray or colour, alpha dropped): PNGs "
                "decoded by torchvision.io.decode_png (PIL reads colour ones as 8-bit), gray TIFFs by PIL (not through "
                "its convert, which clips them to 255)")
    return f"image files decoded by PIL, {raw_pixels(scale)}"


def unreadable(path: Path, err: BaseException, what: str = "image") -> DataError:
    """The one-line error for a file PIL cannot decode: `<path>: <what> file is corrupt or not an image (…)`."""
    if isinstance(err, UnidentifiedImageError):
        return DataError(f"{path}: not a readable {what} file (PIL cannot identify its format: corrupt, or not an "
                         "image); replace or remove it")
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return DataError(f"{path}: cannot read {what} file ({detail}); replace or remove it")


def _is_16bit_png(path: Path) -> bool:
    """Whether the file is a PNG of bit depth 16 (its IHDR header: any colour type), from its first 26 bytes."""
    with open(path, "rb") as file:
        head = file.read(26)
    return len(head) == 26 and head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR" and head[24] == 16


def _png16_pixels(path: Path) -> np.ndarray:
    """H × W × C raw pixels 0-65535 of a 16-bit PNG (C = 1 gray, 3 colour; alpha dropped), by torchvision's decoder
    (PIL would give 8-bit RGB for colour ones).

    Raises:
        OSError, SyntaxError: PIL's, for a corrupt or truncated file (`read_image` makes them `unreadable`).
        DataError: `unreadable`, when libpng refuses a file PIL accepted.
    """
    from torchvision.io import ImageReadMode, decode_png, read_file

    # libpng's errors while reading rows (a chunk CRC, the zlib stream, a row filter) crash decode_png (segfault, not
    # an exception), so PIL checks the file first: verify() the CRCs, load() the stream (a second decode, at 8 bits)
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        img.load()
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its image io for TorchCodec (not a dependency)
            warnings.simplefilter("ignore", DeprecationWarning)
            pixels = decode_png(read_file(str(path)), ImageReadMode.UNCHANGED)  # C × H × W uint16
    except RuntimeError as err:  # torchvision prefixes its C++ function, file and line: not the user's business
        raise unreadable(path, RuntimeError(re.sub(r"^.*?\.cpp:\d+, ", "", str(err)))) from None
    if pixels.shape[0] in (2, 4):
        pixels = pixels[:-1]
    return pixels.permute(1, 2, 0).numpy().astype(np.int32)


def _pixels(img: Image.Image, path: Path) -> np.ndarray:
    """H × W × C raw pixels (C = 1 gray, 3 colour) as PIL decodes them: uint8, or 0-65535 for 16-bit gray."""
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
        `raw * scale` (the export's formula), and that scale: 1/255 (8-bit) or 1/65535 (16-bit: PNGs of any colour
        type, gray TIFFs).

    Raises:
        DataError: one line naming the file: not an image, corrupt or truncated, or 32-bit (integer or float) pixel
            values.
    """
    try:
        if _is_16bit_png(path):
            return (_png16_pixels(path) * SIXTEEN_BIT).astype(np.float32), SIXTEEN_BIT
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
        if _is_16bit_png(path):
            return SIXTEEN_BIT
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
