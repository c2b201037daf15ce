"""Keep-masks packed 1 bit per weight: the ``PackedMask`` type and its torch pack/unpack helpers.

Bit order (the one convention of sparsetrain, read directly by the fused kernels): bit ``p`` of a uint8 tensor
is bit ``p % 8`` (least significant first) of byte ``p // 8`` — numpy's ``packbits(..., bitorder="little")``.
Element ``i`` of a ``PackedMask`` is bit ``offset + i`` of its ``bits``; a set bit means *kept*, a clear bit
*pruned*. The bit offset lets a mask describe an element range that starts inside a byte, e.g. the segment
``[start, stop)`` of a parameter that one rank's ZeRO optimizer partition holds: ``mask.narrow(start, stop -
start)`` is a view of the same bytes (no unpacking, no copy). Bits of the first and last byte outside the
range belong to the neighbours and are never read as part of this mask.

Pure torch (no Triton): usable everywhere in sparsetrain (checkpoints, export, the CPU fallback).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_SHIFTS = torch.arange(8, dtype=torch.uint8)  # bit k of a byte holds element 8·j + k


def packed_nbytes(offset: int, numel: int) -> int:
    """Bytes that hold ``numel`` bits starting at bit ``offset`` of the first byte (0 for no elements)."""
    return (offset + numel + 7) // 8 if numel else 0


@dataclass(frozen=True, eq=False)
class PackedMask:
    """A flat keep-mask of ``length`` elements stored 1 bit per element (see the module docstring for bit order).

    Build one with ``PackedMask.pack(mask)``; ``unpack()`` gives the bool mask back. The fused kernels
    (``l0_grad_mask_``, ``apply_masks_``) accept it wherever they accept a bool/uint8 mask of the same numel.

    Attributes:
        bits: uint8 ``[packed_nbytes(offset, length)]``, 1-D and contiguous (the kernels read its raw bytes);
            byte 0 holds element 0. May be a view into a larger packed buffer.
        length: number of elements (the weight's numel).
        offset: bit of ``bits[0]`` that holds element 0, in [0, 8); 0 when ``length`` is 0.

    Raises:
        ValueError: on a malformed combination (wrong dtype, shape, byte count or offset), naming the field.
    """

    bits: torch.Tensor
    length: int
    offset: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.bits, torch.Tensor) or self.bits.dtype != torch.uint8 or self.bits.dim() != 1:
            raise ValueError(f"PackedMask.bits: expected a 1-D uint8 tensor, got {_describe(self.bits)}")
        if not self.bits.is_contiguous():
            raise ValueError("PackedMask.bits: must be contiguous")
        if self.length < 0:
            raise ValueError(f"PackedMask.length: must be >= 0, got {self.length}")
        if not 0 <= self.offset < 8 or (self.length == 0 and self.offset):
            raise ValueError(f"PackedMask.offset: must be in [0, 8) (0 for an empty mask), got {self.offset}")
        expected = packed_nbytes(self.offset, self.length)
        if self.bits.numel() != expected:
            raise ValueError(
                f"PackedMask.bits: {self.length} elements at bit offset {self.offset} need {expected} bytes, "
                f"got {self.bits.numel()}"
            )

    @classmethod
    def pack(cls, mask: torch.Tensor) -> PackedMask:
        """Packs a bool/integer mask of any shape (non-zero = kept), flattened in row-major order.

        Returns a mask with offset 0 on ``mask``'s device, ``ceil(numel / 8)`` bytes; padding bits are 0.
        """
        flat = mask.reshape(-1) != 0
        n = flat.numel()
        padded = torch.zeros(packed_nbytes(0, n) * 8, dtype=torch.uint8, device=mask.device)
        padded[:n] = flat
        weights = torch.bitwise_left_shift(torch.ones(8, dtype=torch.uint8), _SHIFTS).to(mask.device)
        bits = (padded.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)  # disjoint bits: the sum is an OR
        return cls(bits, n, 0)

    def unpack(self, shape: torch.Size | tuple[int, ...] | None = None) -> torch.Tensor:
        """The bool keep-mask (True = kept), flat ``[length]`` or reshaped to ``shape``, on ``bits``' device."""
        expanded = (self.bits.unsqueeze(1) >> _SHIFTS.to(self.bits.device)) & 1
        flat = expanded.reshape(-1)[self.offset : self.offset + self.length].bool()
        return flat if shape is None else flat.view(shape)

    def narrow(self, start: int, length: int) -> PackedMask:
        """Elements ``[start, start + length)`` as a ``PackedMask`` viewing the same bytes (no copy, no unpack).

        Raises:
            ValueError: the range is not inside ``[0, self.length]``.
        """
        if start < 0 or length < 0 or start + length > self.length:
            raise ValueError(f"PackedMask.narrow: range [{start}, {start + length}) outside [0, {self.length})")
        if length == 0:
            return PackedMask(self.bits[:0], 0, 0)
        first_bit = self.offset + start
        first_byte, offset = divmod(first_bit, 8)
        return PackedMask(self.bits[first_byte : first_byte + packed_nbytes(offset, length)], length, offset)

    def numel(self) -> int:
        """Number of elements (as ``torch.Tensor.numel``, so generic code can size either kind of mask)."""
        return self.length

    @property
    def device(self) -> torch.device:
        return self.bits.device

    @property
    def nbytes(self) -> int:
        """Bytes of ``bits`` (the memory this mask holds): ``ceil((offset + length) / 8)``."""
        return self.bits.numel()

    def to(self, device: torch.device | str) -> PackedMask:
        """The same mask on ``device`` (shares ``bits`` when it is already there)."""
        return PackedMask(self.bits.to(device), self.length, self.offset)

    def count_kept(self) -> torch.Tensor:
        """Number of kept elements, an int64 scalar tensor on ``bits``' device (a popcount of the bytes)."""
        if self.length == 0:
            return torch.zeros((), dtype=torch.int64, device=self.device)
        # All set bits, less those of the first and last byte that lie outside the range (the neighbours').
        below = self.bits[:1] & ((1 << self.offset) - 1)
        end = (self.offset + self.length) % 8
        above = self.bits[-1:] >> end if end else self.bits[:0]
        return _popcount(self.bits) - _popcount(below) - _popcount(above)

    def __repr__(self) -> str:
        return f"PackedMask(length={self.length}, offset={self.offset}, nbytes={self.nbytes}, device={self.device})"


def _popcount(bits: torch.Tensor) -> torch.Tensor:
    """Set bits of a uint8 tensor, int64 scalar."""
    return ((bits.unsqueeze(1) >> _SHIFTS.to(bits.device)) & 1).sum(dtype=torch.int64)


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dim()}-D {value.dtype} tensor"
    return type(value).__name__


def keep_flags(mask: torch.Tensor | PackedMask) -> torch.Tensor:
    """Flat bool keep flags of a bool/uint8 mask (non-zero = kept) or of a ``PackedMask``."""
    if isinstance(mask, PackedMask):
        return mask.unpack()
    return mask.reshape(-1) != 0
