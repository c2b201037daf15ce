"""Triton helpers shared by the kernels: reading keep-masks (1 byte or 1 bit per element) and writing bits.

A mask's table entry (see ``_multi_tensor.build_tables``) is a byte address for bool/uint8 masks and a bit
address ``8 · address + offset`` for a ``PackedMask``; element i of a packed mask is then bit
``(offset + i) % 8`` of byte ``(offset + i) // 8`` (the bit order of ``triton_kernels.bitmask``). Packed
masks are read bytewise, one byte per 8 elements of DRAM traffic: the eight lanes that share a byte hit the
same cache sector, so the load instructions grow but memory traffic for the mask drops 8x.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def mask_source(entry, ALIGNED: tl.constexpr, PACKED: tl.constexpr):
    """(uint8 pointer, bit offset) of a mask from its table entry.

    ALIGNED adds the 16-byte alignment hint to a byte mask's pointer (the caller checked the address);
    a packed mask gets none (its bytes are read one per lane, and a narrowed mask starts at any byte).
    """
    if PACKED:
        ptr = (entry >> 3).to(tl.pointer_type(tl.uint8))
        bit = entry & 7
    else:
        ptr = entry.to(tl.pointer_type(tl.uint8))
        if ALIGNED:
            ptr = tl.multiple_of(ptr, 16)
        bit = 0  # byte masks have no bit offset
    return ptr, bit


@triton.jit
def load_keep(m_ptr, m_bit, block_start, offs, end, PACKED: tl.constexpr, BLOCK: tl.constexpr, TAIL: tl.constexpr):
    """Keep flags (int1) of elements ``offs = block_start + [0, BLOCK)`` of one mask; TAIL bounds-checks ``end``.

    Byte masks: ``m[offs] != 0``. Packed masks: bit ``p & 7`` of byte ``p >> 3`` with ``p = m_bit + offs``,
    computed as the block's first byte (``block_start`` is a multiple of 8) plus int32 lane offsets, which
    keeps per-lane address arithmetic narrow. Lanes past ``end`` read as pruned.
    """
    if PACKED:
        pos = m_bit.to(tl.int32) + tl.arange(0, BLOCK)  # bit position relative to the block's first byte
        byte_ptr = m_ptr + block_start // 8 + (pos >> 3)
        if TAIL:
            byte = tl.load(byte_ptr, mask=offs < end, other=0)
        else:
            byte = tl.load(byte_ptr)
        return ((byte.to(tl.int32) >> (pos & 7)) & 1) != 0
    else:
        if TAIL:
            m = tl.load(m_ptr + offs, mask=offs < end, other=0)
        else:
            m = tl.load(m_ptr + offs)
        return m != 0


@triton.jit
def store_keep_bits(m_ptr, block_start, keep, end, BLOCK: tl.constexpr, TAIL: tl.constexpr):
    """Packs the BLOCK keep flags of elements [block_start, block_start + BLOCK) into BLOCK // 8 bytes.

    ``block_start`` is a multiple of 8 and the mask starts at bit 0 of ``m_ptr``'s byte, so every byte
    belongs to this block alone (no read-modify-write, no races between programs). ``keep`` must be 0 past
    ``end``; TAIL stores only the bytes that hold elements below ``end``.
    """
    bit_values = tl.reshape(keep.to(tl.int32), [BLOCK // 8, 8]) << tl.arange(0, 8)[None, :]
    packed = tl.sum(bit_values, axis=1).to(tl.uint8)  # disjoint bits: the sum is an OR
    byte_offs = block_start // 8 + tl.arange(0, BLOCK // 8).to(tl.int64)
    if TAIL:
        tl.store(m_ptr + byte_offs, packed, mask=byte_offs * 8 < end)
    else:
        tl.store(m_ptr + byte_offs, packed)
