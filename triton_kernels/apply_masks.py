"""Multi-tensor in-place weight masking ``w = m ? w : 0`` (re-applied after every optimizer step in fine-tuning)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from triton_kernels._multi_tensor import (
    DEFAULT_CONFIG,
    MASK_DTYPES,
    LaunchConfig,
    build_tables,
    check_companions,
    check_float_list,
    device_guard,
    group_by_dtype,
)
from triton_kernels.l0_grad_mask import TL_DTYPES


@triton.jit
def _mask_block(w_ptr, m_ptr, offs, end, DTYPE: tl.constexpr, TAIL: tl.constexpr):
    """One block of ``_apply_masks_kernel``; only a tensor's last block (TAIL) is bounds-checked."""
    if TAIL:
        inside = offs < end
        w = tl.load(w_ptr + offs, mask=inside, other=0.0)
        m = tl.load(m_ptr + offs, mask=inside, other=0)
    else:
        w = tl.load(w_ptr + offs)
        m = tl.load(m_ptr + offs)
    # A select, like the reference: a pruned weight is exactly 0 whatever it held (NaN * 0 would be NaN).
    w = tl.where(m != 0, w, 0.0).to(DTYPE)
    if TAIL:
        tl.store(w_ptr + offs, w, mask=inside)
    else:
        tl.store(w_ptr + offs, w)


@triton.jit
def _mask_chunk(w_ptr, m_ptr, start, end, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    """Elements [start, end) of one tensor: full blocks unchecked, then one bounds-checked tail block."""
    full_end = start + (end - start) // BLOCK * BLOCK
    for block_start in range(start, full_end, BLOCK):
        # Chunks start at multiples of CHUNK, so every block starts at a multiple of BLOCK.
        offs = tl.max_contiguous(tl.multiple_of(block_start + tl.arange(0, BLOCK).to(tl.int64), BLOCK), BLOCK)
        _mask_block(w_ptr, m_ptr, offs, end, DTYPE, TAIL=False)
    if full_end < end:
        offs = tl.max_contiguous(tl.multiple_of(full_end + tl.arange(0, BLOCK).to(tl.int64), BLOCK), BLOCK)
        _mask_block(w_ptr, m_ptr, offs, end, DTYPE, TAIL=True)


@triton.jit
def _apply_masks_kernel(
    # pointers
    tensor_table_ptr,  # int64 [T, 4]: weight address, mask address, numel, aligned flag
    chunk_table_ptr,  # int64 [C, 2]: tensor index, first element of the chunk
    # meta-parameters
    DTYPE: tl.constexpr,  # element type of the weights of this launch
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``w <- m ? w : 0`` for one chunk of one tensor.

    Shapes: each tensor is flat [numel]; the program covers elements [start, min(start + CHUNK, numel)).
    Memory traffic: reads w, m once; writes w once.
    """
    pid = tl.program_id(0)
    tensor = tl.load(chunk_table_ptr + 2 * pid)
    start = tl.load(chunk_table_ptr + 2 * pid + 1)  # int64: tensors may pass 2^31 elements
    row = tensor_table_ptr + 4 * tensor
    end = tl.minimum(start + CHUNK, tl.load(row + 2))
    # Each branch loads its own addresses: an alignment hint marks the value itself (see _l0_grad_mask_kernel).
    if tl.load(row + 3) != 0:  # both addresses 16-byte aligned: hints allow 16-byte vector accesses
        w_ptr = tl.multiple_of(tl.load(row).to(tl.pointer_type(DTYPE)), 16)
        m_ptr = tl.multiple_of(tl.load(row + 1).to(tl.pointer_type(tl.uint8)), 16)
        _mask_chunk(w_ptr, m_ptr, start, end, DTYPE, BLOCK)
    else:
        w_ptr = tl.load(row).to(tl.pointer_type(DTYPE))
        m_ptr = tl.load(row + 1).to(tl.pointer_type(tl.uint8))
        _mask_chunk(w_ptr, m_ptr, start, end, DTYPE, BLOCK)


def _launch_apply_masks(weights: list[torch.Tensor], masks: list[torch.Tensor], config: LaunchConfig) -> None:
    """One launch for weights that share a device and dtype."""
    columns = [weights, masks]
    tensor_table, chunk_table, _ = build_tables(columns, [0.0] * len(weights), config.chunk, weights[0].device)
    n_chunks = chunk_table.shape[0]
    if n_chunks == 0:
        return
    with device_guard(weights[0].device):
        _apply_masks_kernel[(n_chunks,)](
            tensor_table,
            chunk_table,
            DTYPE=TL_DTYPES[weights[0].dtype],
            CHUNK=config.chunk,
            BLOCK=config.block,
            num_warps=config.num_warps,
        )


def apply_masks_(
    weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], *, config: LaunchConfig | None = None
) -> None:
    """In place ``w = m ? w : 0`` for every tensor (pruned slots exactly 0), one launch per (device, dtype) group.

    Args:
        weights: contiguous fp32/bf16/fp16 tensors (views into a larger buffer are fine).
        masks: one bool or uint8 tensor per weight (non-zero = kept), same numel.
        config: launch geometry; the default suits GPUs, tests shrink it for the interpreter.
    """
    check_float_list("weights", weights)
    check_companions("masks", masks, weights, MASK_DTYPES)
    config = config or DEFAULT_CONFIG
    for idx in group_by_dtype(weights).values():
        _launch_apply_masks([weights[i] for i in idx], [masks[i] for i in idx], config)
