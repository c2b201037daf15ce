"""Fused ℓ0-surrogate + ℓ2 gradient, gradient masking and regularizer value, multi-tensor (Method 1)."""

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
    check_companions,
    check_float_list,
    check_masks,
    check_runnable,
    check_strength,
    device_guard,
    group_by_dtype,
    per_tensor_strengths,
    settle_tables,
)
from triton_kernels.plan import LaunchPlan

TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _l0_block(
    w_ptr,
    g_ptr,
    m_ptr,
    m_bit,
    block_start,
    offs,
    end,
    pull,
    beta,
    l2,
    DTYPE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    PACKED: tl.constexpr,
    BLOCK: tl.constexpr,
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
        # A select, not a product: a pruned gradient becomes exactly 0 whatever it held (NaN, inf).
        g = tl.where(load_keep(m_ptr, m_bit, block_start, offs, end, PACKED, BLOCK, TAIL), g, 0.0)
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
    m_bit,
    start,
    end,
    pull,
    beta,
    l2,
    DTYPE: tl.constexpr,
    HAS_MASK: tl.constexpr,
    PACKED: tl.constexpr,
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
        l0, sq = _l0_block(
            w_ptr, g_ptr, m_ptr, m_bit, block_start, offs, end, pull, beta, l2, DTYPE, HAS_MASK, PACKED, BLOCK, False
        )
        l0_acc += l0
        l2_acc += sq
    if full_end < end:
        offs = tl.max_contiguous(tl.multiple_of(full_end + tl.arange(0, BLOCK).to(tl.int64), BLOCK), BLOCK)
        l0, sq = _l0_block(
            w_ptr, g_ptr, m_ptr, m_bit, full_end, offs, end, pull, beta, l2, DTYPE, HAS_MASK, PACKED, BLOCK, True
        )
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
    HAS_MASK: tl.constexpr,  # masks=None compiles the mask load and select away
    PACKED: tl.constexpr,  # masks of this launch are 1 bit per element (the mask address is a bit address)
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Adds the regularizer gradient to g, masks it, and sums the regularizer value, for one chunk.

    For every element of the chunk, with α the tensor's alpha, in fp32:
        e = exp(-β|w|)
        g <- m ? g + α·β·sign(w)·e + 2·l2·w : 0          (sign(0) = 0; m = 1 when HAS_MASK is False)
        partial[pid] = α·Σ(1 - e) + l2·Σ w²
    Shapes: each tensor is flat [numel]; the program covers elements [start, min(start + CHUNK, numel)).
    Memory traffic: reads w, g and m once (m: 1 byte per element, or 1 bit when PACKED); writes g once
    (eager torch makes ~10 passes with temporaries).
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
    if tl.load(row + 4) != 0:  # weight, grad (and byte-mask) addresses 16-byte aligned: vector accesses
        w_ptr = tl.multiple_of(tl.load(row).to(tl.pointer_type(DTYPE)), 16)
        g_ptr = tl.multiple_of(tl.load(row + 1).to(tl.pointer_type(DTYPE)), 16)
        m_ptr, m_bit = mask_source(tl.load(row + 2), ALIGNED=True, PACKED=PACKED)
        l0, sq = _l0_chunk(w_ptr, g_ptr, m_ptr, m_bit, start, end, pull, beta, l2, DTYPE, HAS_MASK, PACKED, BLOCK)
    else:
        w_ptr = tl.load(row).to(tl.pointer_type(DTYPE))
        g_ptr = tl.load(row + 1).to(tl.pointer_type(DTYPE))
        m_ptr, m_bit = mask_source(tl.load(row + 2), ALIGNED=False, PACKED=PACKED)
        l0, sq = _l0_chunk(w_ptr, g_ptr, m_ptr, m_bit, start, end, pull, beta, l2, DTYPE, HAS_MASK, PACKED, BLOCK)
    tl.store(partial_ptr + pid, alpha * l0 + l2 * sq)


@dataclass(frozen=True)
class _Launch:
    """One kernel launch, prepared: the tables of a (device, dtype, mask kind) group of tensors."""

    device: torch.device
    dtype: torch.dtype
    tables: Tables
    has_mask: bool
    packed: bool


def _prepare(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    masks: Sequence[Mask] | None,
    alphas: list[float],
    config: LaunchConfig,
) -> list[_Launch]:
    """Launch tables per (device, dtype, mask kind) group of validated arguments (cached by content)."""
    launches = []
    groups = group_by_dtype(weights, masks)
    check_runnable(device for device, _, _ in groups)  # before any table is built or kernel launched
    for (device, dtype, packed), idx in groups.items():
        group_masks = [None if masks is None else masks[i] for i in idx]
        columns = [[weights[i] for i in idx], [grads[i] for i in idx], group_masks]
        tables = build_tables(columns, [alphas[i] for i in idx], config.chunk, device)
        launches.append(_Launch(device, dtype, tables, masks is not None, packed))
    return launches


def _run(launches: list[_Launch], beta: float, l2: float, config: LaunchConfig) -> torch.Tensor:
    """Runs prepared launches; returns the regularizer value (fp32 scalar, CPU for no launches)."""
    values = []
    for launch in launches:
        tensor_table, chunk_table, alpha_table = launch.tables
        n_chunks = chunk_table.shape[0]
        partials = torch.empty(n_chunks, dtype=torch.float32, device=launch.device)
        if n_chunks:
            with device_guard(launch.device):
                _l0_grad_mask_kernel[(n_chunks,)](
                    tensor_table,
                    chunk_table,
                    alpha_table,
                    partials,
                    float(beta),
                    float(l2),
                    DTYPE=TL_DTYPES[launch.dtype],
                    HAS_MASK=launch.has_mask,
                    PACKED=launch.packed,
                    CHUNK=config.chunk,
                    BLOCK=config.block,
                    num_warps=config.num_warps,
                )
        values.append(partials.sum())
    if not values:
        return torch.zeros((), dtype=torch.float32)
    device = launches[0].device
    return values[0] if len(values) == 1 else torch.stack([v.to(device) for v in values]).sum()


def _checked(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    masks: Sequence[Mask] | None,
    alphas: float | Sequence[float],
    beta: float,
    l2: float,
) -> tuple[list[float], float, float]:
    """Validates the arguments of ``l0_grad_mask_`` (ValueError naming the argument); returns per-tensor alphas, beta
    and l2 as floats. The device is checked per launch group (``_prepare``)."""
    check_float_list("weights", weights)
    check_companions("grads", grads, weights, None)
    if masks is not None:
        check_masks(masks, weights)
    alphas = per_tensor_strengths("alphas", alphas, len(weights))
    beta, l2 = check_strength("beta", beta), check_strength("l2", l2)
    return alphas, beta, l2


def l0_grad_mask_(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    masks: Sequence[Mask] | None,
    *,
    alphas: float | Sequence[float],
    beta: float,
    l2: float,
    config: LaunchConfig | None = None,
) -> torch.Tensor:
    """In place ``g = m ? g + α·β·sign(w)·exp(−β|w|) + 2·l2·w : 0`` for every tensor; returns the regularizer value.

    One kernel launch per (device, dtype, mask kind) group of tensors; the value
    ``Σ α·(1 − exp(−β|w|)) + l2·Σ w²`` (over all weights, kept or not) is computed in the same pass and
    accumulated in fp32. Masking is a select: a pruned gradient becomes exactly 0, even NaN or inf.

    Args:
        weights: contiguous fp32/bf16/fp16 tensors (views into a larger buffer are fine).
        grads: one per weight, same dtype and numel; updated in place.
        masks: one per weight, same numel: a bool or uint8 tensor (non-zero = kept) or a ``PackedMask``
            (1 bit per element, e.g. ``PackedMask.pack(m)`` or a segment ``packed.narrow(start, n)``);
            kinds may be mixed. None for no mask.
        alphas: ℓ0 strength per tensor (or one float for all).
        beta: sharpness β of the surrogate.
        l2: ℓ2 strength.
        config: launch geometry; the default suits GPUs, tests shrink it for the interpreter.

    Returns:
        fp32 scalar tensor on the weights' device (CPU for an empty list).

    Raises:
        ValueError: one line naming the bad argument (``grads[3]: numel ...``; ``beta: must be finite and >= 0, got
            nan``: alphas, beta and l2 must be finite and >= 0).
        RuntimeError: Triton cannot run on the weights' device, one line (``backend 'triton' cannot run: Triton kernels
            need CUDA tensors (or TRITON_INTERPRET=1 for CPU), got cpu``); checked before anything is launched.
    """
    alphas, beta, l2 = _checked(weights, grads, masks, alphas, beta, l2)
    config = config or DEFAULT_CONFIG
    return _run(_prepare(weights, grads, masks, alphas, config), beta, l2, config)


def plan_l0_grad_mask_(
    weights: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    masks: Sequence[Mask] | None,
    *,
    alphas: float | Sequence[float],
    beta: float,
    l2: float,
    config: LaunchConfig | None = None,
) -> LaunchPlan:
    """``l0_grad_mask_`` on these tensors, validated and tabled once: ``plan()`` repeats the call.

    Arguments as for ``l0_grad_mask_``. Each ``plan()`` only launches the kernels (no argument checks, no
    table look-up), so a training loop that reuses its weight, gradient and mask buffers pays the host
    cost of validation once. The plan acts on the memory the tensors held when it was built (it keeps
    that memory alive): build a new one when a buffer is reallocated.

    Raises:
        ValueError, RuntimeError: as ``l0_grad_mask_``, at plan time.
    """
    alphas, beta, l2 = _checked(weights, grads, masks, alphas, beta, l2)
    config = config or DEFAULT_CONFIG
    launches = _prepare(weights, grads, masks, alphas, config)
    settle_tables(weights)
    return LaunchPlan(lambda: _run(launches, beta, l2, config), [weights, grads, masks or []], "l0_grad_mask_")
