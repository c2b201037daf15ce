"""Image files as float arrays in [0, 1]: the one reader behind ImageFolder trees and seg_folder images.

The scale is decided by the file's bit depth, never by its content: 8-bit files (PIL modes 1, L, P, RGB, RGBA, …)
give raw 0-255 × 1/255; 16-bit files give raw 0-65535 × 1/65535, alpha dropped. Who decodes what:

- 16-bit PNGs (read from their IHDR header): colour ones (RGB, RGBA, gray + alpha) by torchvision's `decode_png`,
  gray ones by PIL (its `I;16` mode keeps the 16 bits). PIL opens 16-bit colour PNGs as 8-bit `RGB`/`RGBA` (the low
  byte dropped). libpng dies of a segfault on a damaged file inside `decode_png`, so PIL checks a colour file first
  (`verify()` the CRCs, `load()` the stream): three passes over a colour file, one read of it from disk.
- TIFFs with several samples per pixel of more than 8 bits (16-bit RGB, RGBA, gray + alpha, interleaved or planar;
  what microscopy and satellite tools export) by tifffile, which PIL opens as 8-bit or not at all; so are 16-bit
  min-is-white gray TIFFs, inverted (0 = black) as PIL inverts 8-bit ones but not 16-bit ones. Their flavours
  tifffile cannot read (a codec it lacks without the optional imagecodecs package, e.g. LZW or JPEG; float or signed
  samples; a colour space other than gray / RGB; more samples than colour + alpha) are refused in one line naming
  the file, never read at 8 bits.
- Every other file by PIL: 8-bit files (through its `convert("L" | "RGB")`), 16-bit gray TIFFs (its `I;16*` modes, and
  `I`, which older Pillow and 32-bit integer TIFFs holding 0-65535 give), never through `convert`, which clips 16-bit
  gray to 255 (all white). 32-bit float images (mode F) are refused.

A TIFF holds one image: several full-resolution pages (a z-stack, a time series) are refused in one line naming the
file and the page count, where PIL would read the first page silently; reduced-resolution pages (a pyramid's levels,
a thumbnail) are views of the first and do not count.

Segmentation masks go through `full_depth_pixels` too (a 16-bit colour mask cut to its high byte by PIL would lose
its labels). The depth (`image_scale`) comes from the header alone: a PNG's first 26 bytes, a TIFF's tags, PIL's
mode (PIL decodes nothing on open). One data set must hold one bit depth: the export records one scale for every input
(`mixed_depths`).
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from sparsetrain.data.base import DataError

if TYPE_CHECKING:
    from tifffile import TiffFile, TiffPage

EIGHT_BIT = 1 / 255
SIXTEEN_BIT = 1 / 65535
# What decoders raise on a damaged file: OSError (unidentified, truncated), SyntaxError (broken PNG chunks),
# ValueError (bad header values)
DECODE_ERRORS = (OSError, SyntaxError, ValueError)
# What tifffile raises on a damaged TIFF: ValueError (its TiffFileError, short reads), IndexError, KeyError and
# struct.error (a broken directory of tags), ImportError (a codec module Python lacks, e.g. zstd before 3.14)
TIFF_ERRORS = (OSError, ValueError, IndexError, KeyError, struct.error, ImportError)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # little / big endian, classic / BigTIFF
HEADER_BYTES = 26  # a PNG's signature and IHDR up to its colour type


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
    """The `raw` of the export's preprocessing record for image files of this scale; 16-bit files also say what
    decoded them at full depth (PIL's `convert` would clip gray ones to 255, and PIL reads colour ones as 8-bit)."""
    if scale == SIXTEEN_BIT:
        return (f"image files, {raw_pixels(scale)} read as stored, at full depth (gray or colour, alpha dropped): "
                "colour PNGs decoded by torchvision.io.decode_png, colour TIFFs by tifffile (PIL reads both as 8-bit), "
                "gray PNGs and TIFFs by PIL (not through its convert, which clips them to 255)")
    return f"image files decoded by PIL, {raw_pixels(scale)}"


def unreadable(path: Path, err: BaseException, what: str = "image") -> DataError:
    """The one-line error for a file PIL cannot decode: `<path>: <what> file is corrupt or not an image (…)`."""
    if isinstance(err, UnidentifiedImageError):
        return DataError(f"{path}: not a readable {what} file (PIL cannot identify its format: corrupt, or not an "
                         "image); replace or remove it")
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return DataError(f"{path}: cannot read {what} file ({detail}); replace or remove it")


def _head(path: Path) -> bytes:
    """The file's first `HEADER_BYTES` bytes (fewer for a shorter file)."""
    with open(path, "rb") as file:
        return file.read(HEADER_BYTES)


def _is_16bit_png(head: bytes) -> bool:
    """Whether a file starting with `head` (`_head`) is a PNG of bit depth 16 (its IHDR header: any colour type)."""
    return (len(head) == HEADER_BYTES and head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR"
            and head[24] == 16)


def _png16_pixels(path: Path, what: str) -> np.ndarray:
    """H × W × C raw pixels 0-65535 of a 16-bit PNG (C = 1 gray, 3 colour; alpha dropped): gray ones by PIL, colour
    ones by torchvision's decoder (PIL would give 8-bit RGB). The file is read from disk once.

    Raises:
        OSError, SyntaxError: PIL's, for a corrupt or truncated file (the caller makes them `unreadable`).
        DataError: `unreadable`, when libpng refuses a file PIL accepted.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_png

    data = path.read_bytes()
    # libpng's errors while reading rows (a chunk CRC, the zlib stream, a row filter, too little data) crash
    # decode_png (segfault, not an exception), so PIL checks the file first: verify() the CRCs, load() the stream
    with Image.open(io.BytesIO(data)) as img:
        img.verify()
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if pixel_scale(img.mode) == SIXTEEN_BIT:  # gray: PIL kept the 16 bits, no second decode
            return _pixels(img, path)
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its image io for TorchCodec (not a dependency)
            warnings.simplefilter("ignore", DeprecationWarning)
            pixels = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.UNCHANGED)
    except RuntimeError as err:  # torchvision prefixes its C++ function, file and line: not the user's business
        raise unreadable(path, RuntimeError(re.sub(r"^.*?\.cpp:\d+, ", "", str(err))), what) from None
    if pixels.shape[0] in (2, 4):
        pixels = pixels[:-1]
    return pixels.permute(1, 2, 0).numpy().astype(np.int32)


def _tifffile_colours(page: TiffPage, path: Path) -> int | None:
    """For a TIFF page PIL reads below its depth, not at all, or wrong (several samples per pixel of more than 8 bits;
    16-bit min-is-white gray, which PIL does not invert as it does 8-bit ones), the colour samples tifffile's pixels
    keep (1 gray, 3 RGB; one more, alpha or unspecified, is dropped), from its tags alone; None for the pages PIL
    reads at full depth (8-bit, 16-bit min-is-black gray).

    Raises:
        DataError: one line naming the file and what is expected, for a flavour tifffile cannot read or sparsetrain
            does not take: a codec tifffile lacks, samples other than 16-bit unsigned, a colour space other than gray
            and RGB, more samples than colour + alpha, or a page that is not one 2-D image.
    """
    from tifffile import PHOTOMETRIC, SAMPLEFORMAT, TIFF

    bits, samples = page.bitspersample, page.samplesperpixel
    if bits <= 8 or (samples < 2 and page.photometric != PHOTOMETRIC.MINISWHITE):
        return None
    if page.sampleformat != SAMPLEFORMAT.UINT or bits != 16:
        kind = {SAMPLEFORMAT.INT: "signed integer", SAMPLEFORMAT.IEEEFP: "float"}.get(page.sampleformat, "integer")
        raise DataError(f"{path}: TIFF of {bits}-bit {kind} samples ({samples} per pixel); sparsetrain reads 8-bit "
                        "and 16-bit unsigned images: save it as a 16-bit PNG or TIFF (e.g. round(x * 65535) for "
                        "values in [0, 1])")
    colours = {PHOTOMETRIC.MINISBLACK: 1, PHOTOMETRIC.MINISWHITE: 1, PHOTOMETRIC.RGB: 3}.get(page.photometric)
    if colours is None:
        space = getattr(page.photometric, "name", page.photometric)
        raise DataError(f"{path}: 16-bit TIFF in the {space} colour space; sparsetrain reads gray and RGB images: "
                        "save it as RGB")
    if samples > colours + 1 or page.axes not in ("YX", "YXS", "SYX"):
        raise DataError(f"{path}: 16-bit TIFF of shape {page.shape} (axes {page.axes}, {samples} samples per pixel); "
                        f"sparsetrain reads one gray or RGB image per file, optionally with an alpha sample")
    for table, code in ((TIFF.DECOMPRESSORS, page.compression), (TIFF.UNPREDICTORS, page.predictor)):
        try:
            table[code]
        except KeyError:
            raise DataError(f"{path}: 16-bit TIFF stored with {getattr(code, 'name', code)}, which tifffile decodes "
                            "only with the imagecodecs package: pip install imagecodecs, or save it uncompressed or "
                            "with deflate (zlib) compression") from None
    return colours


def _first_page(tif: TiffFile, path: Path) -> TiffPage:
    """The TIFF's one image (PIL reads the first page too).

    Pages marked reduced-resolution (NewSubfileType bit 0: a pyramid's levels, a thumbnail) are views of that image
    and are not counted; several full-resolution pages (a z-stack, a time series, channels as pages) have no one
    meaning as a sample, and PIL and torchvision would take the first silently.

    Raises:
        DataError: one line naming the file and its page count when it holds more than one image.
        ValueError: the file holds no image.
    """
    if not len(tif.pages):
        raise ValueError("no image in the TIFF file")
    pages = sum(not page.is_reduced for page in tif.pages)
    if pages > 1:
        raise DataError(f"{path}: multi-page TIFF ({pages} full-resolution pages); sparsetrain reads one image per "
                        "file, where PIL and torchvision would take the first page only: save each page you mean as "
                        "a file of its own (tifffile.imread(path, key=k) reads page k)")
    return tif.pages[0]


def _tiff16_pixels(path: Path, what: str, decode: bool = True) -> np.ndarray | None:
    """H × W × C raw pixels 0-65535 (C = 1 gray, 3 colour; alpha dropped; min-is-white gray inverted, 0 = black) of
    the first image of a TIFF that `_tifffile_colours` gives to tifffile; None for the TIFFs PIL reads. With
    decode=False, an empty 0 × 0 × C array from the tags alone.

    Raises:
        DataError: `_tifffile_colours`'s refusals; `unreadable` for a damaged file.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = _first_page(tif, path)
            colours = _tifffile_colours(page, path)
            if colours is None:
                return None
            if not decode:
                return np.empty((0, 0, colours), np.int32)
            axes, inverted, pixels = page.axes, page.photometric == tifffile.PHOTOMETRIC.MINISWHITE, page.asarray()
    except DataError:
        raise
    except TIFF_ERRORS as err:
        raise unreadable(path, err, what) from None
    if axes == "SYX":  # planar configuration: one plane per sample
        pixels = pixels.transpose(1, 2, 0)
    pixels = pixels.reshape(*pixels.shape[:2], -1)[..., :colours].astype(np.int32)
    return 65535 - pixels if inverted else pixels


def full_depth_pixels(path: Path, what: str = "image") -> np.ndarray | None:
    """H × W × C raw pixels 0-65535 (C = 1 gray, 3 colour; alpha dropped) of a file PIL would read below its bit
    depth or not at all: a 16-bit PNG, or a TIFF of several 16-bit samples per pixel. None for any other file.

    Raises:
        DataError: one line naming the file: damaged, or a TIFF flavour that cannot be read (`_tifffile_colours`).
    """
    try:
        head = _head(path)
        if _is_16bit_png(head):
            return _png16_pixels(path, what)
    except DataError:
        raise
    except DECODE_ERRORS as err:
        raise unreadable(path, err, what) from None
    return _tiff16_pixels(path, what) if head.startswith(TIFF_SIGNATURES) else None


def _pixels(img: Image.Image, path: Path) -> np.ndarray:
    """H × W × C raw pixels (C = 1 gray, 3 colour) as PIL decodes them: uint8, or 0-65535 for 16-bit gray."""
    if img.mode.startswith("I;16"):
        return np.asarray(img).astype(np.int32)[..., None]
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
    """Decode one image file into [0, 1] (the decoders: see the module docstring).

    Returns:
        H × W × C float32 pixels in [0, 1] (C = 1 for gray, 3 for colour; alpha dropped), computed as
        `raw * scale` (the export's formula), and that scale: 1/255 (8-bit) or 1/65535 (16-bit: PNGs of any colour
        type, gray and colour TIFFs).

    Raises:
        DataError: one line naming the file: not an image, corrupt or truncated, 32-bit (integer or float) pixel
            values, or a TIFF flavour that cannot be read.
    """
    raw = full_depth_pixels(path)
    if raw is not None:
        return (raw * SIXTEEN_BIT).astype(np.float32), SIXTEEN_BIT
    try:
        with Image.open(path) as img:
            raw, scale = _pixels(img, path), pixel_scale(img.mode)
    except DataError:
        raise
    except DECODE_ERRORS as err:
        raise unreadable(path, err) from None
    return (raw * scale).astype(np.float32), scale


def image_scale(path: Path) -> float:
    """The scale `read_image` uses for this file, from its header alone (nothing decoded): a PNG's IHDR, a TIFF's
    tags, PIL's mode.

    Raises:
        DataError: one line naming the file when PIL cannot identify it, or a TIFF flavour that cannot be read.
    """
    try:
        head = _head(path)
        if _is_16bit_png(head):
            return SIXTEEN_BIT
        if head.startswith(TIFF_SIGNATURES) and _tiff16_pixels(path, "image", decode=False) is not None:
            return SIXTEEN_BIT
        with Image.open(path) as img:
            return pixel_scale(img.mode)
    except DataError:  # a ValueError, like PIL's
        raise
    except DECODE_ERRORS as err:
        raise unreadable(path, err) from None


COLOR_SAMPLE = 64  # files of a split whose headers `color_kinds` reads, spread over its (class-sorted) file list
_GRAY_MODES = ("1", "L", "LA", "I", "F")  # PIL modes read as one channel (and I;16*)


def color_kinds(paths: list[str | Path], sample: int = COLOR_SAMPLE) -> str | None:
    """Whether image files are gray, colour or both, from the headers (PIL's mode) of up to `sample` of them spread
    evenly over `paths` (every class of an ImageFolder's sorted list): `gray`, `colour`, `gray and colour`, or None
    when none could be identified (not every file is read: a few gray files among many colour ones may be missed).
    """
    kinds = set()
    for path in paths[::max(1, len(paths) // max(sample, 1))][:sample]:
        try:
            with Image.open(path) as img:
                kinds.add("gray" if img.mode in _GRAY_MODES or img.mode.startswith("I;16") else "colour")
        except DECODE_ERRORS:  # a TIFF PIL cannot open, a damaged file: the loader names it when read
            continue
    return " and ".join(sorted(kinds)) or None


def image_dimensions(path: Path) -> tuple[int, int]:
    """(width, height) of the image, from its header alone: a PNG's IHDR, a TIFF's tags (tifffile: PIL cannot open
    some 16-bit ones), else PIL's.

    Raises:
        DataError: one line naming the file when it cannot be identified.
    """
    try:
        head = _head(path)
        if len(head) == HEADER_BYTES and head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR":
            width, height = struct.unpack(">II", head[16:24])
            return width, height
        if head.startswith(TIFF_SIGNATURES):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = _first_page(tif, path)
                return page.imagewidth, page.imagelength
        with Image.open(path) as img:
            return img.size
    except DataError:  # a ValueError, like tifffile's
        raise
    except (*DECODE_ERRORS, *TIFF_ERRORS) as err:
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
