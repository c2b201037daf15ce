"""Multi-tensor in-place weight masking ``w *= m`` (re-applied after every optimizer step in fine-tuning)."""

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
    group_by_dtype,
)
from triton_kernels.l0_grad_mask import TL_DTYPES


@triton.jit
def _apply_masks_kernel(
    # pointers
    tensor_table_ptr,  # int64 [T, 3]: weight address, mask address, numel
    chunk_table_ptr,  # int64 [C, 2]: tensor index, first element of the chunk
    # meta-parameters
    DTYPE: tl.constexpr,  # element type of the weights of this launch
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``w <- w · m`` for one chunk of one tensor.

    Shapes: each tensor is flat [numel]; the program covers elements [start, min(start + CHUNK, numel)).
    Memory traffic: reads w, m once; writes w once.
    """
    pid = tl.program_id(0)
    tensor = tl.load(chunk_table_ptr + 2 * pid)
    start = tl.load(chunk_table_ptr + 2 * pid + 1)  # int64: tensors may pass 2^31 elements
    w_ptr = tl.load(tensor_table_ptr + 3 * tensor).to(tl.pointer_type(DTYPE))
    m_ptr = tl.load(tensor_table_ptr + 3 * tensor + 1).to(tl.pointer_type(tl.uint8))
    end = tl.minimum(start + CHUNK, tl.load(tensor_table_ptr + 3 * tensor + 2))
    for block_start in range(start, end, BLOCK):
        offs = block_start + tl.arange(0, BLOCK).to(tl.int64)
        inside = offs < end
        w = tl.load(w_ptr + offs, mask=inside, other=0.0)
        m = tl.load(m_ptr + offs, mask=inside, other=0)
        # A product, not a select, like the reference: NaN/inf weights become NaN, never silently 0.
        tl.store(w_ptr + offs, w * (m != 0).to(DTYPE), mask=inside)


def _launch_apply_masks(weights: list[torch.Tensor], masks: list[torch.Tensor], config: LaunchConfig) -> None:
    """One launch for weights that share a device and dtype."""
    tensor_table, chunk_table, _ = build_tables([weights, masks], [0.0] * len(weights), config.chunk, weights[0].device)
    n_chunks = chunk_table.shape[0]
    if n_chunks == 0:
        return
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
    """In place ``w *= m`` for every tensor, one kernel launch per (device, dtype) group.

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
