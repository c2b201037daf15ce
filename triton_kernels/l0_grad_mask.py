"""Fused ℓ0-surrogate + ℓ2 gradient, gradient masking and regularizer value, multi-tensor (Method 1)."""

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
    per_tensor_floats,
)

TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _l0_block(
    w_ptr,
    g_ptr,
    m_ptr,
    offs,
    end,
    pull,
    beta,
    l2,
    DTYPE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    TAIL: tl.constexpr,  # only a tensor's last block is bounds-checked: unmasked accesses vectorize
):
    """One block of ``_l0_grad_mask_kernel``; returns the per-lane (1 - e, w²) for the regularizer value."""
    if TAIL:
        inside = offs < end
        w = tl.load(w_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    else:
        w = tl.load(w_ptr + offs).to(tl.float32)
        g = tl.load(g_ptr + offs).to(tl.float32)
    e = tl.exp(-beta * tl.abs(w))
    sign = tl.where(w > 0, 1.0, 0.0) - tl.where(w < 0, 1.0, 0.0)
    g = g + pull * sign * e + 2.0 * l2 * w
    if HAS_MASK:
        if TAIL:
            m = tl.load(m_ptr + offs, mask=inside, other=0)
        else:
            m = tl.load(m_ptr + offs)
        g = tl.where(m != 0, g, 0.0)  # a select: a pruned slot's gradient is exactly 0 whatever it held
    if TAIL:
        tl.store(g_ptr + offs, g.to(DTYPE), mask=inside)
    else:
        tl.store(g_ptr + offs, g.to(DTYPE))
    # Tail lanes past the end loaded w = 0, so they add 1 - exp(0) = 0 and 0².
    return 1.0 - e, w * w


@triton.jit
def _l0_chunk(
    w_ptr,
    g_ptr,
    m_ptr,
    start,
    end,
    pull,
    beta,
    l2,
    DTYPE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Elements [start, end) of one tensor: full blocks unchecked, then one bounds-checked tail block.

    Returns the chunk's Σ(1 - e) and Σ w².
    """
    full_end = start + (end - start) // BLOCK * BLOCK
    l0_acc = tl.zeros([BLOCK], dtype=tl.float32)
    l2_acc = tl.zeros([BLOCK], dtype=tl.float32)
    for block_start in range(start, full_end, BLOCK):
        # Chunks start at multiples of CHUNK, so every block starts at a multiple of BLOCK.
        offs = tl.max_contiguous(tl.multiple_of(block_start + tl.arange(0, BLOCK).to(tl.int64), BLOCK), BLOCK)
        l0, sq = _l0_block(w_ptr, g_ptr, m_ptr, offs, end, pull, beta, l2, DTYPE, HAS_MASK, TAIL=False)
        l0_acc += l0
        l2_acc += sq
    if full_end < end:
        offs = tl.max_contiguous(tl.multiple_of(full_end + tl.arange(0, BLOCK).to(tl.int64), BLOCK), BLOCK)
        l0, sq = _l0_block(w_ptr, g_ptr, m_ptr, offs, end, pull, beta, l2, DTYPE, HAS_MASK, TAIL=True)
        l0_acc += l0
        l2_acc += sq
    return tl.sum(l0_acc, axis=0), tl.sum(l2_acc, axis=0)


@triton.jit
def _l0_grad_mask_kernel(
    # pointers
    tensor_table_ptr,  # int64 [T, 5]: weight address, grad address, mask address, numel, aligned flag
    chunk_table_ptr,  # int64 [C, 2]: tensor index, first element of the chunk
    alpha_ptr,  # fp32 [T]: per-tensor alpha
    partial_ptr,  # fp32 [C]: out, regularizer value of each chunk
    # scalars
    beta,
    l2,
    # meta-parameters
    DTYPE: tl.constexpr,  # element type of weights and grads of this launch
    HAS_MASK: tl.constexpr,  # masks=None compiles the mask load and multiply away
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Adds the regularizer gradient to g, masks it, and sums the regularizer value, for one chunk.

    For every element of the chunk, with α the tensor's alpha, in fp32:
        e = exp(-β|w|)
        g <- m ? g + α·β·sign(w)·e + 2·l2·w : 0              (sign(0) = 0; m = 1 when HAS_MASK is False)
        partial[pid] = α·Σ(1 - e) + l2·Σ w²
    Shapes: each tensor is flat [numel]; the program covers elements [start, min(start + CHUNK, numel)).
    Memory traffic: reads w, g, m once; writes g once (eager torch makes ~10 passes with temporaries).
    """
    pid = tl.program_id(0)
    tensor = tl.load(chunk_table_ptr + 2 * pid)
    start = tl.load(chunk_table_ptr + 2 * pid + 1)  # int64: tensors may pass 2^31 elements
    row = tensor_table_ptr + 5 * tensor
    end = tl.minimum(start + CHUNK, tl.load(row + 3))
    alpha = tl.load(alpha_ptr + tensor)
    pull = alpha * beta
    # The mask address is 0 and never read when not HAS_MASK. Each branch loads its own addresses: an
    # alignment hint marks the value itself, so a hinted value shared with the other branch would make the
    # misaligned path use 16-byte accesses too.
    if tl.load(row + 4) != 0:  # all three addresses 16-byte aligned: hints allow 16-byte vector accesses
        w_ptr = tl.multiple_of(tl.load(row).to(tl.pointer_type(DTYPE)), 16)
        g_ptr = tl.multiple_of(tl.load(row + 1).to(tl.pointer_type(DTYPE)), 16)
        m_ptr = tl.multiple_of(tl.load(row + 2).to(tl.pointer_type(tl.uint8)), 16)
        l0, sq = _l0_chunk(w_ptr, g_ptr, m_ptr, start, end, pull, beta, l2, DTYPE, HAS_MASK, BLOCK)
    else:
        w_ptr = tl.load(row).to(tl.pointer_type(DTYPE))
        g_ptr = tl.load(row + 1).to(tl.pointer_type(DTYPE))
        m_ptr = tl.load(row + 2).to(tl.pointer_type(tl.uint8))
        l0, sq = _l0_chunk(w_ptr, g_ptr, m_ptr, start, end, pull, beta, l2, DTYPE, HAS_MASK, BLOCK)
    tl.store(partial_ptr + pid, alpha * l0 + l2 * sq)


def _launch_l0_grad_mask(
    weights: list[torch.Tensor],
    grads: list[torch.Tensor],
    masks: list[torch.Tensor] | None,
    alphas: list[float],
    beta: float,
    l2: float,
    config: LaunchConfig,
) -> torch.Tensor:
    """One launch for tensors that share a device and dtype; returns their regularizer value (fp32 scalar)."""
    device, dtype = weights[0].device, weights[0].dtype
    columns = [weights, grads, masks if masks is not None else [None] * len(weights)]
    tensor_table, chunk_table, alpha_table = build_tables(columns, alphas, config.chunk, device)
    n_chunks = chunk_table.shape[0]
    partials = torch.empty(n_chunks, dtype=torch.float32, device=device)
    if n_chunks == 0:
        return partials.sum()
    with device_guard(weights[0].device):
        _l0_grad_mask_kernel[(n_chunks,)](
            tensor_table,
            chunk_table,
            alpha_table,
            partials,
            float(beta),
            float(l2),
            DTYPE=TL_DTYPES[dtype],
            HAS_MASK=masks is not None,
            CHUNK=config.chunk,
            BLOCK=config.block,
            num_warps=config.num_warps,
        )
    return partials.sum()


def l0_grad_mask_(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor] | None,
    *,
    alphas: float | Sequence[float],
    beta: float,
    l2: float,
    config: LaunchConfig | None = None,
) -> torch.Tensor:
    """In place ``g = m ? g + α·β·sign(w)·exp(−β|w|) + 2·l2·w : 0`` for every tensor; returns the regularizer value.

    One kernel launch per (device, dtype) group of tensors; the value ``Σ α·(1 − exp(−β|w|)) + l2·Σ w²`` is
    computed in the same pass and accumulated in fp32.

    Args:
        weights: contiguous fp32/bf16/fp16 tensors (views into a larger buffer are fine).
        grads: one per weight, same dtype and numel; updated in place.
        masks: one bool or uint8 tensor per weight (non-zero = kept), same numel; None for no mask.
        alphas: ℓ0 strength per tensor (or one float for all).
        beta: sharpness β of the surrogate.
        l2: ℓ2 strength.
        config: launch geometry; the default suits GPUs, tests shrink it for the interpreter.

    Returns:
        fp32 scalar tensor on the weights' device (CPU for an empty list).
    """
    check_float_list("weights", weights)
    check_companions("grads", grads, weights, None)
    if masks is not None:
        check_companions("masks", masks, weights, MASK_DTYPES)
    alphas = per_tensor_floats("alphas", alphas, len(weights))
    config = config or DEFAULT_CONFIG
    values = [
        _launch_l0_grad_mask(
            [weights[i] for i in idx],
            [grads[i] for i in idx],
            None if masks is None else [masks[i] for i in idx],
            [alphas[i] for i in idx],
            beta,
            l2,
            config,
        )
        for idx in group_by_dtype(weights).values()
    ]
    if not values:
        return torch.zeros((), dtype=torch.float32)
    device = weights[0].device
    return values[0] if len(values) == 1 else torch.stack([v.to(device) for v in values]).sum()
