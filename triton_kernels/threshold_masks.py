"""Multi-tensor magnitude pruning masks ``m = |w| > τ`` with per-tensor kept counts in the same pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from triton_kernels._mask_access import mask_source, store_keep_bits
from triton_kernels._multi_tensor import (
    DEFAULT_CONFIG,
    LaunchConfig,
    build_tables,
    check_float_list,
    check_runnable,
    device_guard,
    group_by_dtype,
    per_tensor_thresholds,
)
from triton_kernels.bitmask import PackedMask, packed_nbytes
from triton_kernels.l0_grad_mask import TL_DTYPES


@triton.jit
def _threshold_block(
    w_ptr, m_ptr, block_start, offs, end, tau, PACKED: tl.constexpr, BLOCK: tl.constexpr, TAIL: tl.constexpr
):
    """One block of ``_threshold_masks_kernel``; returns the per-lane kept flags (0/1, int32)."""
    if TAIL:
        inside = offs < end
        w = tl.load(w_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        keep = (tl.abs(w) > tau) & inside  # `& inside`: a negative τ would keep the padding lanes
    else:
        w = tl.load(w_ptr + offs).to(tl.float32)
        keep = tl.abs(w) > tau
    if PACKED:
        store_keep_bits(m_ptr, block_start, keep, end, BLOCK, TAIL)
    elif TAIL:
        tl.store(m_ptr + offs, keep.to(tl.uint8), mask=inside)
    else:
        tl.store(m_ptr + offs, keep.to(tl.uint8))
    return keep.to(tl.int32)


@triton.jit
def _threshold_chunk(w_ptr, m_ptr, start, end, tau, PACKED: tl.constexpr, BLOCK: tl.constexpr):
    """Elements [start, end) of one tensor: full blocks unchecked, then one bounds-checked tail block.

    Returns the chunk's kept count.
    """
    full_end = start + (end - start) // BLOCK * BLOCK
    kept_acc = tl.zeros([BLOCK], dtype=tl.int32)  # at most CHUNK / BLOCK per lane
    for block_start in range(start, full_end, BLOCK):
        # Chunks start at multiples of CHUNK, so every block starts at a multiple of BLOCK.
        offs = tl.max_contiguous(tl.multiple_of(block_start + tl.arange(0, BLOCK).to(tl.int64), BLOCK), BLOCK)
        kept_acc += _threshold_block(w_ptr, m_ptr, block_start, offs, end, tau, PACKED, BLOCK, TAIL=False)
    if full_end < end:
        offs = tl.max_contiguous(tl.multiple_of(full_end + tl.arange(0, BLOCK).to(tl.int64), BLOCK), BLOCK)
        kept_acc += _threshold_block(w_ptr, m_ptr, full_end, offs, end, tau, PACKED, BLOCK, TAIL=True)
    return tl.sum(kept_acc, axis=0).to(tl.int64)


@triton.jit
def _threshold_masks_kernel(
    # pointers
    tensor_table_ptr,  # int64 [T, 4]: weight address, mask address (out), numel, aligned flag
    chunk_table_ptr,  # int64 [C, 2]: tensor index, first element of the chunk
    tau_ptr,  # fp32 [T]: per-tensor threshold
    count_ptr,  # int64 [T]: out, kept elements per tensor (zero-initialised)
    # meta-parameters
    DTYPE: tl.constexpr,  # element type of the weights of this launch
    PACKED: tl.constexpr,  # write 1 bit per element (the mask address is a bit address, at bit 0 of a byte)
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``m <- |w| > τ`` (compared in fp32) for one chunk; adds the chunk's kept count to its tensor's count.

    Shapes: each tensor is flat [numel]; the program covers elements [start, min(start + CHUNK, numel)).
    Memory traffic: reads w once; writes m once (1 byte per element, or 1 bit when PACKED: every program
    writes whole bytes of its own, as chunks start at multiples of 8 elements); one integer atomic per
    program, so the counts are exact and deterministic.
    """
    pid = tl.program_id(0)
    tensor = tl.load(chunk_table_ptr + 2 * pid)
    start = tl.load(chunk_table_ptr + 2 * pid + 1)  # int64: tensors may pass 2^31 elements
    row = tensor_table_ptr + 4 * tensor
    end = tl.minimum(start + CHUNK, tl.load(row + 2))
    tau = tl.load(tau_ptr + tensor)
    # Each branch loads its own addresses: an alignment hint marks the value itself (see _l0_grad_mask_kernel).
    if tl.load(row + 3) != 0:  # weight (and byte-mask) addresses 16-byte aligned: vector accesses
        w_ptr = tl.multiple_of(tl.load(row).to(tl.pointer_type(DTYPE)), 16)
        m_ptr, _ = mask_source(tl.load(row + 1), ALIGNED=True, PACKED=PACKED)
        kept = _threshold_chunk(w_ptr, m_ptr, start, end, tau, PACKED, BLOCK)
    else:
        w_ptr = tl.load(row).to(tl.pointer_type(DTYPE))
        m_ptr, _ = mask_source(tl.load(row + 1), ALIGNED=False, PACKED=PACKED)
        kept = _threshold_chunk(w_ptr, m_ptr, start, end, tau, PACKED, BLOCK)
    tl.atomic_add(count_ptr + tensor, kept)


def _launch_threshold_masks(
    weights: list[torch.Tensor],
    masks: list[torch.Tensor] | list[PackedMask],
    taus: list[float],
    counts: torch.Tensor,
    config: LaunchConfig,
) -> None:
    """One launch for weights that share a device and dtype; fills ``masks`` and ``counts`` (int64 [len])."""
    columns = [weights, masks]
    tensor_table, chunk_table, tau_table = build_tables(columns, taus, config.chunk, weights[0].device)
    n_chunks = chunk_table.shape[0]
    if n_chunks == 0:
        return
    with device_guard(weights[0].device):
        _threshold_masks_kernel[(n_chunks,)](
            tensor_table,
            chunk_table,
            tau_table,
            counts,
            DTYPE=TL_DTYPES[weights[0].dtype],
            PACKED=isinstance(masks[0], PackedMask),
            CHUNK=config.chunk,
            BLOCK=config.block,
            num_warps=config.num_warps,
        )


def threshold_masks(
    weights: Sequence[torch.Tensor],
    thresholds: float | Sequence[float],
    *,
    packed: bool = False,
    config: LaunchConfig | None = None,
) -> tuple[list[torch.Tensor] | list[PackedMask], torch.Tensor]:
    """Keep-masks ``|w| > τ`` and per-tensor kept counts, one kernel launch per (device, dtype) group.

    Args:
        weights: contiguous fp32/bf16/fp16 tensors.
        thresholds: one global τ, or one τ per tensor, each >= 0 (+inf keeps nothing); compared in fp32 (τ rounded
            to fp32).
        packed: return ``PackedMask``s (1 bit per element, offset 0, written directly by the kernel)
            instead of bool tensors.
        config: launch geometry; the default suits GPUs, tests shrink it for the interpreter.

    Returns:
        Bool masks shaped like the weights (or flat ``PackedMask``s when ``packed``), and an int64 tensor
        ``[len(weights)]`` of kept (non-zero) counts on the weights' device (CPU for an empty list).

    Raises:
        ValueError: one line naming the bad argument, also a NaN or negative threshold (``thresholds[1]: must be
            >= 0 and not NaN, got -0.5``, as the torch reference).
        RuntimeError: Triton cannot run on the weights' device (one line, as ``l0_grad_mask_``); before any launch.
    """
    check_float_list("weights", weights)
    taus = per_tensor_thresholds("thresholds", thresholds, len(weights))
    groups = group_by_dtype(weights)
    check_runnable(device for device, _, _ in groups)  # before anything is allocated or launched
    config = config or DEFAULT_CONFIG
    masks = [_empty_mask(w, packed) for w in weights]
    counts = torch.zeros(len(weights), dtype=torch.int64, device=weights[0].device if weights else "cpu")
    for idx in groups.values():
        device = weights[idx[0]].device
        group_counts = counts if len(groups) == 1 else torch.zeros(len(idx), dtype=torch.int64, device=device)
        _launch_threshold_masks(
            [weights[i] for i in idx], [masks[i] for i in idx], [taus[i] for i in idx], group_counts, config
        )
        if len(groups) > 1:
            counts[idx] = group_counts.to(counts.device)
    return masks, counts


def _empty_mask(weight: torch.Tensor, packed: bool) -> torch.Tensor | PackedMask:
    """Output mask of one weight, to be filled by the kernel: bool like the weight, or packed from bit 0."""
    if not packed:
        return torch.empty_like(weight, dtype=torch.bool)
    n = weight.numel()
    return PackedMask(torch.empty(packed_nbytes(0, n), dtype=torch.uint8, device=weight.device), n, 0)
