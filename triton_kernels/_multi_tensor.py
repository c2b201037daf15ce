"""Multi-tensor launch machinery shared by the kernels: argument checks, dtype grouping and chunk tables.

Design. A list of tensors of one dtype (on one device) is processed by ONE kernel launch over a *chunk table*:

* a per-tensor table, int64 ``[T, P + 2]``: ``P`` raw ``data_ptr()`` addresses (weight, grad, mask, ...), the
  element count, and an "aligned" flag (1 when all ``P`` byte addresses are multiples of 16 bytes). Kernels
  cast the addresses back with ``.to(tl.pointer_type(...))``, so a tensor may be any contiguous view into a
  larger buffer (e.g. a slice of DeepSpeed's flat fp32 partition): only its own ``data_ptr()`` (which already
  includes the storage offset) and ``numel()`` are used. The flag picks, per tensor at run time, a loop
  compiled with 16-byte alignment hints (vector accesses) or one without (views at odd offsets), so one
  misaligned slice does not slow the whole launch down. A ``PackedMask`` entry stores its *bit address*
  ``8 · bits.data_ptr() + offset`` (element i is bit ``8 · address + offset + i`` of memory, see
  ``triton_kernels.bitmask``); it is read bytewise and takes no part in the aligned flag, so a mask narrowed
  to a segment at any bit does not push the weights onto the unaligned path;
* a per-tensor fp32 scalar (alpha, threshold);
* a chunk table, int64 ``[C, 2]``: (tensor index, first element) for every ``chunk``-element piece of every
  non-empty tensor. Program ``pid`` of the 1-D grid ``(C,)`` processes chunk ``pid``.

Why chunks rather than one program per tensor: tensor sizes span six orders of magnitude (a 64-element
conv to a 100M-element embedding); fixed-size chunks balance the grid and keep every SM busy, and tiny
tensors cost one short program each. Why tables built on the host: the element counts are known there, so
the table is one vectorised ``repeat_interleave`` plus one host-to-device copy, cached by the exact
(pointers, sizes, scalars) key, so a training loop that reuses its parameter and gradient buffers pays
the copy only once. Reductions are written per chunk (or added as integers), so results are deterministic.

CUDA graphs. A call can be captured (``torch.cuda.graph``) once it has run outside capture with the same
tensors: the host tables are kept in pinned memory, and under capture the copy from them is recorded in
the graph (it re-reads them at every replay, so those entries are kept for the life of the process). Replaying
the graph removes the host-side cost of validation and launch, which dominates for short weight lists.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from triton_kernels.bitmask import PackedMask

# Triton decides interpreter mode when a kernel is decorated (at import), so read the flag at the same time.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

ALIGNMENT = 16  # bytes of one vector access; the caching allocator returns 512-byte aligned blocks
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MASK_DTYPES = (torch.bool, torch.uint8)

Tables = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Mask = torch.Tensor | PackedMask  # bool/uint8 tensor (non-zero = kept) or 1 bit per element
# key → (host tables, device tables); keys are (device, stream, content). LRU, for ordinary calls.
_TABLE_CACHE: OrderedDict[tuple, tuple[Tables, Tables]] = OrderedDict()
_TABLE_CACHE_SIZE = 64
# Entries recorded into CUDA graphs: a graph re-reads them at every replay, so they are never evicted.
_CAPTURED_TABLES: dict[tuple, tuple[Tables, Tables]] = {}


@dataclass(frozen=True)
class LaunchConfig:
    """Launch geometry of the multi-tensor kernels.

    Attributes:
        block: elements per vector step of a program (a power of two, at least 8: packed masks are written
            a whole byte per 8 elements).
        chunk: elements per program (a multiple of ``block``); a tensor of ``n`` elements gets
            ``ceil(n / chunk)`` programs.
        num_warps: warps per program on the GPU (ignored by the interpreter).
    """

    block: int = 1024
    chunk: int = 16384
    num_warps: int = 4

    def __post_init__(self) -> None:
        if self.block < 8 or self.block & (self.block - 1):
            raise ValueError(f"LaunchConfig.block: must be a power of two >= 8, got {self.block}")
        if self.chunk < self.block or self.chunk % self.block:
            raise ValueError(f"LaunchConfig.chunk: must be a positive multiple of block={self.block}, got {self.chunk}")


DEFAULT_CONFIG = LaunchConfig()


def triton_unusable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device`` here, or None when they can.

    The interpreter (``TRITON_INTERPRET=1``) reads raw host addresses from the pointer tables, so it needs CPU
    tensors; compiled kernels need CUDA tensors.
    """
    try:
        import triton  # noqa: F401
    except ImportError as exc:  # pragma: no cover - triton is a Linux dependency
        return f"triton is not importable ({exc})"
    if INTERPRET:
        return None if device.type == "cpu" else f"TRITON_INTERPRET=1 needs CPU tensors, got {device}"
    if device.type != "cuda":
        return f"Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU), got {device}"
    return None


def check_runnable(devices: Iterable[torch.device]) -> None:
    """Raises RuntimeError (one line) when Triton cannot run on one of ``devices``; before anything launches.

    Without it a CPU tensor outside the interpreter reaches Triton's launcher and fails with
    ``0 active drivers ([]). There should only be one.``; a CUDA tensor under the interpreter is read as host
    memory. Callers pass the devices of their launch groups (``group_by_dtype``'s keys): no extra pass over the
    tensors, which is most of a plain call's host time.
    """
    for device in set(devices):
        reason = triton_unusable_reason(device)
        if reason is not None:
            raise RuntimeError(f"backend 'triton' cannot run: {reason}")


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """Makes ``device`` current for a launch (Triton launches on the current CUDA device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def check_float_list(name: str, tensors: Sequence[torch.Tensor]) -> None:
    """Raises ValueError unless ``tensors`` is a list of contiguous fp32/bf16/fp16 tensors."""
    if not isinstance(tensors, (list, tuple)):
        raise ValueError(f"{name}: expected a list of tensors, got {type(tensors).__name__}")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}[{i}]: expected a tensor, got {type(t).__name__}")
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name}[{i}]: dtype {t.dtype} not supported (fp32, bf16, fp16)")
        if not t.is_contiguous():
            raise ValueError(f"{name}[{i}]: must be contiguous")


def check_companions(
    name: str,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    dtypes: tuple[torch.dtype, ...] | None,
    packed_ok: bool = False,
) -> None:
    """Raises ValueError unless ``tensors`` pairs up with ``weights``: length, numel, device, contiguity, dtype.

    Args:
        name: argument name used in error messages.
        tensors: companions of ``weights`` (grads, masks).
        weights: the weight list.
        dtypes: allowed dtypes, or None for "same dtype as the weight".
        packed_ok: ``PackedMask`` entries are allowed too (well-formed by construction: numel and device are
            checked).
    """
    _check_pairing(name, tensors, weights)
    # One flat loop, no call per tensor: this is most of a plain call's host time.
    for i, (t, w) in enumerate(zip(tensors, weights, strict=True)):
        if packed_ok and isinstance(t, PackedMask):
            if t.length != w.numel():
                raise ValueError(f"{name}[{i}]: packed mask of {t.length} elements, weights[{i}] numel {w.numel()}")
            if t.device != w.device:
                raise ValueError(f"{name}[{i}]: device {t.device} differs from weights[{i}] device {w.device}")
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}[{i}]: expected a tensor, got {type(t).__name__}")
        if t.numel() != w.numel():
            raise ValueError(f"{name}[{i}]: numel {t.numel()} differs from weights[{i}] numel {w.numel()}")
        if t.device != w.device:
            raise ValueError(f"{name}[{i}]: device {t.device} differs from weights[{i}] device {w.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name}[{i}]: must be contiguous")
        if dtypes is None and t.dtype != w.dtype:
            raise ValueError(f"{name}[{i}]: dtype {t.dtype} differs from weights[{i}] dtype {w.dtype}")
        if dtypes is not None and t.dtype not in dtypes:
            raise ValueError(f"{name}[{i}]: dtype {t.dtype} not supported ({', '.join(map(str, dtypes))})")


def check_masks(masks: Sequence[Mask], weights: Sequence[torch.Tensor]) -> None:
    """Raises ValueError unless ``masks`` pairs up with ``weights``: bool/uint8 tensors or ``PackedMask``s, mixed
    freely (see ``check_companions``)."""
    check_companions("masks", masks, weights, MASK_DTYPES, packed_ok=True)


def _check_pairing(name: str, values: Sequence[object], weights: Sequence[torch.Tensor]) -> None:
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{name}: expected a list of tensors, got {type(values).__name__}")
    if len(values) != len(weights):
        raise ValueError(f"{name}: has {len(values)} tensors, weights has {len(weights)}")


def per_tensor_floats(name: str, value: float | Sequence[float], n: int) -> list[float]:
    """Broadcasts a float to ``n`` floats, or checks that a sequence has ``n`` of them."""
    if isinstance(value, (int, float)):
        return [float(value)] * n
    values = [float(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{name}: has {len(values)} values, weights has {n}")
    return values


def check_strength(name: str, value: float) -> float:
    """``value`` as a float; ValueError (one line naming ``name``) unless it is finite and >= 0.

    A NaN β or l2 turns every gradient into NaN and a negative α pushes weights away from 0: both are mistakes, and
    both backends refuse them with the same line.
    """
    value = float(value)
    if not 0.0 <= value < math.inf:  # False for NaN too
        raise ValueError(f"{name}: must be finite and >= 0, got {value}")
    return value


def _per_tensor_checked(name: str, value: float | Sequence[float], n: int, check: Callable[[str, float], float],
                        all_fine: Callable[[list[float]], bool]) -> list[float]:
    """``per_tensor_floats`` with each value passed through ``check`` (``name[2]: ...`` for a list); ``all_fine`` is a
    fast screen of the whole list (C loops), so the per-value loop that names the first bad value runs only when one
    is bad."""
    if isinstance(value, (int, float)):
        return [check(name, value)] * n
    values = per_tensor_floats(name, value, n)
    if not all_fine(values):
        for i, v in enumerate(values):
            check(f"{name}[{i}]", v)
    return values


def per_tensor_strengths(name: str, value: float | Sequence[float], n: int) -> list[float]:
    """``per_tensor_floats``, each value checked as ``check_strength`` does (``alphas[2]: must be ...`` for a list)."""
    # a NaN or inf makes the sum non-finite
    return _per_tensor_checked(name, value, n, check_strength,
                               lambda values: min(values, default=0.0) >= 0.0 and sum(values) < math.inf)


def check_threshold(name: str, value: float) -> float:
    """``value`` as a float; ValueError (one line naming ``name``) when it is NaN or negative.

    ``|w| > NaN`` keeps nothing and a negative τ keeps every weight, zeros included: both are mistakes, refused by both
    backends with the same line. +inf is allowed (it keeps nothing, on purpose).
    """
    value = float(value)
    if not value >= 0.0:  # True for NaN too
        raise ValueError(f"{name}: must be >= 0 and not NaN, got {value}")
    return value


def per_tensor_thresholds(name: str, value: float | Sequence[float], n: int) -> list[float]:
    """``per_tensor_floats``, each value checked as ``check_threshold`` does (``thresholds[2]: ...`` for a list)."""
    return _per_tensor_checked(name, value, n, check_threshold,
                               lambda values: all(v >= 0.0 for v in values))  # False for a NaN too


GroupKey = tuple[torch.device, torch.dtype, bool]


def group_by_dtype(weights: Sequence[torch.Tensor], masks: Sequence[Mask] | None = None) -> dict[GroupKey, list[int]]:
    """Indices of ``weights`` grouped by (device, dtype, packed mask?), in first-seen order; one launch per group.

    Byte masks (bool/uint8) and bit masks (``PackedMask``) are read by different code, so they split a group.
    """
    groups: dict[GroupKey, list[int]] = {}
    for i, w in enumerate(weights):
        packed = masks is not None and isinstance(masks[i], PackedMask)
        groups.setdefault((w.device, w.dtype, packed), []).append(i)
    return groups


def build_tables(
    columns: Sequence[Sequence[Mask | None]], scalars: Sequence[float], chunk: int, device: torch.device
) -> Tables:
    """Per-tensor and chunk tables for one launch (see the module docstring), cached by their content.

    Args:
        columns: one list per pointer column (e.g. weights, grads, masks), each with one entry per tensor;
            a None entry stores address 0 (the kernel must not read it), a ``PackedMask`` its bit address
            (a column holds packed masks only, or none). Sizes come from ``columns[0]``.
        scalars: one fp32 scalar per tensor.
        chunk: elements per program.
        device: where the tables live.

    Returns:
        ``tensor_table`` int64 ``[T, len(columns) + 2]`` (addresses, numel, aligned flag), ``chunk_table`` int64
        ``[C, 2]`` (tensor index, first element), ``scalars`` fp32 ``[T]``.
    """
    ptrs, byte_addressed = [], []
    for i, col in enumerate(columns):
        kinds = {type(t) for t in col}
        if PackedMask in kinds:
            if len(kinds) > 1:  # a launch reads one mask kind (PACKED is a compile-time flag)
                raise ValueError(f"build_tables: column {i} mixes packed masks with {kinds - {PackedMask}}")
            ptrs.append([t.bits.data_ptr() * 8 + t.offset for t in col])
        else:
            ptrs.append([0 if t is None else t.data_ptr() for t in col])
            byte_addressed.append(i)  # bit addresses of packed masks carry no alignment: they never set the flag
    numels = [t.numel() for t in columns[0]]
    content = (chunk, tuple(map(tuple, ptrs)), tuple(numels), tuple(scalars), tuple(byte_addressed))
    # Per stream: the copy below is ordered on the current stream only, so another stream gets its own tables.
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream, content)
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return _captured_tables(key)
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        _TABLE_CACHE.move_to_end(key)
        return hit[1]
    host = _host_tables(ptrs, [ptrs[i] for i in byte_addressed], numels, scalars, chunk)
    if device.type == "cuda":
        host = tuple(t.pin_memory() for t in host)  # truly asynchronous copies; reusable under graph capture
    tables = tuple(t.to(device, non_blocking=True) for t in host)
    _TABLE_CACHE[key] = (host, tables)
    if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    return tables


def settle_tables(weights: Sequence[torch.Tensor]) -> None:
    """Waits for the table copies of a launch plan being built (no-op on CPU and under graph capture).

    ``build_tables`` copies host tables asynchronously on the current stream; a plan may later run on any
    stream (a side stream, a CUDA graph), so it waits once, when it is built, instead of ordering every call.
    """
    for device in {w.device for w in weights if w.device.type == "cuda"}:
        with torch.cuda.device(device):
            if not torch.cuda.is_current_stream_capturing():
                torch.cuda.current_stream(device).synchronize()


def _captured_tables(key: tuple) -> Tables:
    """Device tables for a call being captured in a CUDA graph: the copy from pinned host tables is recorded."""
    hit = _CAPTURED_TABLES.get(key)
    if hit is not None:
        return hit[1]
    device, _, content = key
    warm = next((entry for k, entry in _TABLE_CACHE.items() if k[0] == device and k[2] == content), None)
    if warm is None:
        raise RuntimeError(
            "triton_kernels: this call is being captured in a CUDA graph but never ran outside capture with these "
            "tensors; run it once before capturing (the usual CUDA-graph warm-up)"
        )
    host = warm[0]
    tables = tuple(t.to(device, non_blocking=True) for t in host)
    _CAPTURED_TABLES[key] = (host, tables)
    return tables


def _host_tables(
    ptrs: list[list[int]], aligned_ptrs: list[list[int]], numels: list[int], scalars: Sequence[float], chunk: int
) -> Tables:
    """The three tables of ``build_tables`` on the host; ``aligned_ptrs`` are the columns that set the flag."""
    sizes = torch.tensor(numels, dtype=torch.int64)
    aligned = torch.tensor(
        [all(col[i] % ALIGNMENT == 0 for col in aligned_ptrs) for i in range(len(numels))], dtype=torch.int64
    )
    tensor_table = torch.stack([torch.tensor(col, dtype=torch.int64) for col in ptrs] + [sizes, aligned], dim=1)
    n_chunks = (sizes + chunk - 1) // chunk
    owner = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int64), n_chunks)
    first_chunk = torch.cumsum(n_chunks, 0) - n_chunks
    start = (torch.arange(owner.numel(), dtype=torch.int64) - first_chunk[owner]) * chunk
    chunk_table = torch.stack([owner, start], dim=1)
    return tensor_table.contiguous(), chunk_table.contiguous(), torch.tensor(scalars, dtype=torch.float32)
