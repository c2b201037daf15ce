"""Multi-tensor in-place weight masking ``w = m ? w : 0`` (re-applied after every optimizer step in fine-tuning)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from triton_kernels._mask_access import load_keep, mask_source
from triton_kernels._multi_tensor import (
    DEFAULT_CONFIG,
    LaunchConfig,
    Mask,
    Tables,
    build_tables,
    check_float_list,
    check_masks,
    check_runnable,
    device_guard,
    group_by_dtype,
    settle_tables,
)
from triton_kernels.l0_grad_mask import TL_DTYPES
from triton_kernels.plan import LaunchPlan


@triton.jit
def _mask_block(
    w_ptr,
    m_ptr,
    m_bit,
    block_start,
    offs,
    end,
    DTYPE: tl.constexpr,
    PACKED: tl.constexpr,
    BLOCK: tl.constexpr,
    TAIL: tl.constexpr,  # only a tensor's last block is bounds-checked: unmasked accesses vectorize
):
    """One block of ``_apply_masks_kernel``; only a tensor's last block (TAIL) is bounds-checked."""
    if TAIL:
        inside = offs < end
        w = tl.load(w_ptr + offs, mask=inside, other=0.0)
    else:
        w = tl.load(w_ptr + offs)
    # A select, not a product: a pruned weight becomes exactly 0 whatever it held (NaN, inf).
    w = tl.where(load_keep(m_ptr, m_bit, block_start, offs, end, PACKED, BLOCK, TAIL), w, 0.0).to(DTYPE)
    if TAIL:
        tl.store(w_ptr + offs, w, mask=inside)
    else:
        tl.store(w_ptr + offs, w)


@triton.jit
def _mask_chunk(w_ptr, m_ptr, m_bit, start, end, DTYPE: tl.constexpr, PACKED: tl.constexpr, BLOCK: tl.constexpr):
    """Elements [start, end) of one tensor: full blocks unchecked, then one bounds-checked tail block."""
    full_end = start + (end - start) // BLOCK * BLOCK
    for block_start in range(start, full_end, BLOCK):
        # Chunks start at multiples of CHUNK, so every block starts at a multiple of BLOCK.
        offs = tl.max_contiguous(tl.multiple_of(block_start + tl.arange(0, BLOCK).to(tl.int64), BLOCK), BLOCK)
        _mask_block(w_ptr, m_ptr, m_bit, block_start, offs, end, DTYPE, PACKED, BLOCK, TAIL=False)
    if full_end < end:
        offs = tl.max_contiguous(tl.multiple_of(full_end + tl.arange(0, BLOCK).to(tl.int64), BLOCK), BLOCK)
        _mask_block(w_ptr, m_ptr, m_bit, full_end, offs, end, DTYPE, PACKED, BLOCK, TAIL=True)


@triton.jit
def _apply_masks_kernel(
    # pointers
    tensor_table_ptr,  # int64 [T, 4]: weight address, mask address, numel, aligned flag
    chunk_table_ptr,  # int64 [C, 2]: tensor index, first element of the chunk
    # meta-parameters
    DTYPE: tl.constexpr,  # element type of the weights of this launch
    PACKED: tl.constexpr,  # masks of this launch are 1 bit per element (the mask address is a bit address)
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``w <- m ? w : 0`` for one chunk of one tensor.

    Shapes: each tensor is flat [numel]; the program covers elements [start, min(start + CHUNK, numel)).
    Memory traffic: reads w and m once (m: 1 byte per element, or 1 bit when PACKED); writes w once.
    """
    pid = tl.program_id(0)
    tensor = tl.load(chunk_table_ptr + 2 * pid)
    start = tl.load(chunk_table_ptr + 2 * pid + 1)  # int64: tensors may pass 2^31 elements
    row = tensor_table_ptr + 4 * tensor
    end = tl.minimum(start + CHUNK, tl.load(row + 2))
    # Each branch loads its own addresses: an alignment hint marks the value itself (see _l0_grad_mask_kernel).
    if tl.load(row + 3) != 0:  # weight (and byte-mask) addresses 16-byte aligned: vector accesses
        w_ptr = tl.multiple_of(tl.load(row).to(tl.pointer_type(DTYPE)), 16)
        m_ptr, m_bit = mask_source(tl.load(row + 1), ALIGNED=True, PACKED=PACKED)
        _mask_chunk(w_ptr, m_ptr, m_bit, start, end, DTYPE, PACKED, BLOCK)
    else:
        w_ptr = tl.load(row).to(tl.pointer_type(DTYPE))
        m_ptr, m_bit = mask_source(tl.load(row + 1), ALIGNED=False, PACKED=PACKED)
        _mask_chunk(w_ptr, m_ptr, m_bit, start, end, DTYPE, PACKED, BLOCK)


@dataclass(frozen=True)
class _Launch:
    """One kernel launch, prepared: the tables of a (device, dtype, mask kind) group of tensors."""

    device: torch.device
    dtype: torch.dtype
    tables: Tables
    packed: bool


def _prepare(weights: Sequence[torch.Tensor], masks: Sequence[Mask], config: LaunchConfig) -> list[_Launch]:
    """Launch tables per (device, dtype, mask kind) group of validated arguments (cached by content)."""
    launches = []
    groups = group_by_dtype(weights, masks)
    check_runnable(device for device, _, _ in groups)  # before any table is built or kernel launched
    for (device, dtype, packed), idx in groups.items():
        columns = [[weights[i] for i in idx], [masks[i] for i in idx]]
        launches.append(_Launch(device, dtype, build_tables(columns, [0.0] * len(idx), config.chunk, device), packed))
    return launches


def _run(launches: list[_Launch], config: LaunchConfig) -> None:
    for launch in launches:
        tensor_table, chunk_table, _ = launch.tables
        n_chunks = chunk_table.shape[0]
        if n_chunks == 0:
            continue
        with device_guard(launch.device):
            _apply_masks_kernel[(n_chunks,)](
                tensor_table,
                chunk_table,
                DTYPE=TL_DTYPES[launch.dtype],
                PACKED=launch.packed,
                CHUNK=config.chunk,
                BLOCK=config.block,
                num_warps=config.num_warps,
            )


def apply_masks_(weights: Sequence[torch.Tensor], masks: Sequence[Mask], *, config: LaunchConfig | None = None) -> None:
    """In place ``w = m ? w : 0`` for every tensor, one kernel launch per (device, dtype, mask kind) group.

    Masking is a select: a pruned weight becomes exactly 0, even NaN or inf; kept weights are untouched.

    Args:
        weights: contiguous fp32/bf16/fp16 tensors (views into a larger buffer are fine).
        masks: one per weight, same numel: a bool or uint8 tensor (non-zero = kept) or a ``PackedMask``
            (1 bit per element, possibly narrowed to a segment); kinds may be mixed.
        config: launch geometry; the default suits GPUs, tests shrink it for the interpreter.

    Raises:
        ValueError: one line naming the bad argument (``masks[2]: numel ...``).
        RuntimeError: Triton cannot run on the weights' device (one line, as ``l0_grad_mask_``); before any launch.
    """
    check_float_list("weights", weights)
    check_masks(masks, weights)
    config = config or DEFAULT_CONFIG
    _run(_prepare(weights, masks, config), config)


def plan_apply_masks_(
    weights: Sequence[torch.Tensor], masks: Sequence[Mask], *, config: LaunchConfig | None = None
) -> LaunchPlan[None]:
    """``apply_masks_`` on these tensors, validated and tabled once: ``plan()`` repeats the call.

    See ``plan_l0_grad_mask_`` for what a plan skips and when to rebuild it.

    Raises:
        ValueError, RuntimeError: as ``apply_masks_``, at plan time.
    """
    check_float_list("weights", weights)
    check_masks(masks, weights)
    config = config or DEFAULT_CONFIG
    launches = _prepare(weights, masks, config)
    settle_tables(weights)
    return LaunchPlan(lambda: _run(launches, config), [weights, masks], "apply_masks_")
