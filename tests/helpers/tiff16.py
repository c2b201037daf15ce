"""16-bit TIFF files for tests, written by tifffile (Pillow writes 16-bit gray TIFFs only)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

PHOTOMETRIC = {1: "minisblack", 2: "minisblack", 3: "rgb", 4: "rgb"}  # channels → colour space (+ 1 alpha sample)


def write_tiff16(path: Path, pixels: np.ndarray, **kwargs: object) -> Path:
    """A real TIFF holding `pixels` (H × W × C, C = 1, 2, 3 or 4: gray, gray + alpha, RGB, RGBA; or H × W) as they are
    (their dtype), gray or RGB with the last sample as unassociated alpha for C = 2 and 4, interleaved unless
    `planarconfig="separate"` is given (then written as C × H × W planes); other keywords go to `tifffile.imwrite`
    (e.g. `compression="zlib"`, `predictor=True`, `photometric=...`)."""
    import tifffile

    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    chans = pixels.shape[-1]
    options = {"photometric": PHOTOMETRIC[chans], "planarconfig": "contig", **kwargs}
    if chans in (2, 4):
        options.setdefault("extrasamples", ["unassalpha"])
    data = pixels.transpose(2, 0, 1) if options["planarconfig"] == "separate" else pixels
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data[..., 0] if chans == 1 and options["planarconfig"] == "contig" else data, **options)
    return path


def set_compression(path: Path, code: int) -> Path:
    """Rewrite the Compression tag of the TIFF's first image (e.g. 5: LZW, 7: JPEG), leaving its data as it is: a
    file whose tags ask for a codec, as a reader sees it before decoding."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["Compression"]
        offset, order = tag.valueoffset, tif.byteorder
    data = bytearray(path.read_bytes())
    data[offset:offset + 2] = struct.pack(f"{order}H", code)
    path.write_bytes(bytes(data))
    return path
