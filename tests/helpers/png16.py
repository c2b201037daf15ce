"""16-bit PNG files for tests: Pillow writes 16-bit gray only, and torchvision's `encode_png` takes uint8 only."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels → PNG colour type: gray, gray+alpha, RGB, RGBA


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def write_png16(path: Path, pixels: np.ndarray) -> Path:
    """A real PNG of bit depth 16 holding `pixels` (H × W × C uint16, C = 1, 2, 3 or 4: gray, gray+alpha, RGB, RGBA;
    or H × W), big-endian samples as the PNG standard stores them, no filter, one IDAT chunk."""
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    height, width, chans = pixels.shape
    header = struct.pack(">IIBBBBB", width, height, 16, COLOUR_TYPES[chans], 0, 0, 0)
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))  # filter byte 0 per row
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows))
                     + _chunk(b"IEND", b""))
    return path
