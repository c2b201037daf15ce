"""Size and cost of a model before/after structural pruning: parameters, FLOPs, weight bytes, peak memory, latency.

What each number measures:
- `params`: unique parameters (tied weights counted once).
- `weight_bytes`: bytes of unique parameters and buffers (BN running stats included), i.e. the weights file.
- `flops`: FLOPs of one forward pass on `input_shape` as counted by `torch.utils.flop_counter.FlopCounterMode`:
  convolutions and matmuls (linears) at 2 FLOPs per multiply-accumulate; norms, activations and adds are not
  counted (they are a small, unpruned fraction for convnets).
- `peak_memory_bytes`: an estimate of CPU peak inference memory: weights plus the largest total size of
  activations alive at once, from a liveness walk over the torch.fx graph (a tensor lives from the node that
  makes it to its last reader, so UNet skips stay alive across the decoder). Views and in-place ops are counted
  as new tensors (an overestimate), scratch memory inside a layer (im2col buffers) and allocator caching are not
  counted. If the model cannot be traced, the largest input+output of any single leaf module is used instead.
- `latency_ms`: median wall time of one forward pass on a zero input of `input_shape` (use batch 1) on the
  model's device, in `torch.inference_mode`, after warm-up runs; sensitive to other load on the machine.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata
from torch.utils.flop_counter import FlopCounterMode

from sparsetrain.structural.trace import trace_model
from sparsetrain.structural.types import StructuralPruningError

__all__ = ["interleaved_latency_ms", "interleaved_times_ms", "profile_model"]


def profile_model(model: nn.Module, input_shape: tuple[int, ...], *, runs: int = 20, warmup: int = 3,
                  latency: bool = True) -> dict[str, Any]:
    """Measure a model (see the module docstring for what each number means).

    Args:
        model: The model; run in eval mode, its training flag is restored afterwards.
        input_shape: Input tensor shape including the batch dimension, e.g. (1, 3, 224, 224).
        runs: Timed forward passes for the latency median.
        warmup: Untimed forward passes first.
        latency: Time the model; False leaves `latency_ms` out (a caller that times models side by side itself,
            `interleaved_latency_ms`, or not at all).

    Returns:
        {"params", "weight_bytes", "flops", "peak_memory_bytes", "latency_ms"}.
    """
    ref = next(iter(model.parameters()), torch.empty(0))
    x = torch.zeros(input_shape, dtype=ref.dtype if ref.is_floating_point() else torch.float32, device=ref.device)
    was_training = model.training
    model.eval()
    try:
        tensors = _unique_tensors(model)
        weight_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        profile = {
            "params": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
            "weight_bytes": weight_bytes,
            "flops": _flops(model, x),
            "peak_memory_bytes": weight_bytes + _peak_activation_bytes(model, x),
        }
        return {**profile, "latency_ms": _latency_ms(model, x, runs, warmup)} if latency else profile
    finally:
        model.train(was_training)


def _unique_tensors(model: nn.Module) -> dict[int, torch.Tensor]:
    tensors = list(model.parameters()) + list(model.buffers())
    return {t.data_ptr() if t.numel() else id(t): t for t in tensors}


def _flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return int(counter.get_total_flops())


def interleaved_latency_ms(models: list[nn.Module], input_shape: tuple[int, ...], *, rounds: int = 5,
                           runs: int = 4, warmup: int = 3) -> list[float]:
    """Median forward time (ms) of each model on a zero input, measured in alternating rounds
    (`interleaved_times_ms`), over its `rounds * runs` timed passes."""
    return [statistics.median(t for r in per_round for t in r)
            for per_round in interleaved_times_ms(models, input_shape, rounds=rounds, runs=runs, warmup=warmup)]


def interleaved_times_ms(models: list[nn.Module], input_shape: tuple[int, ...], *, rounds: int = 5,
                         runs: int = 4, warmup: int = 3) -> list[list[list[float]]]:
    """Forward times (ms) of each model on a zero input, measured in alternating rounds.

    Each model first gets `warmup` untimed passes; then every round times `runs` passes of each model in turn,
    so a slow start or a burst of load on the machine lands on all models alike (back-to-back medians gave
    2.35x between two identical models under load). Models run in eval mode and `torch.inference_mode`; their
    training flags are restored.

    Args:
        models: Models on one device, taking the same input.
        input_shape: Input shape including the batch dimension, e.g. (1, 3, 224, 224).

    Returns:
        Per model, per round, the `runs` times in ms: `rounds` lists of `runs` floats each.
    """
    flags = [m.training for m in models]
    ref = next(iter(models[0].parameters()), torch.empty(0))
    x = torch.zeros(input_shape, dtype=ref.dtype if ref.is_floating_point() else torch.float32, device=ref.device)
    times: list[list[list[float]]] = [[] for _ in models]
    try:
        for m in models:
            m.eval()
            _timed(m, x, warmup)
        for _ in range(rounds):
            for m, t in zip(models, times, strict=True):
                t.append(_timed(m, x, runs))
    finally:
        for m, flag in zip(models, flags, strict=True):
            m.train(flag)
    return times


def _timed(model: nn.Module, x: torch.Tensor, runs: int) -> list[float]:
    """Wall times (ms) of `runs` forward passes (CUDA synchronised around each)."""
    times = []
    with torch.inference_mode():
        for _ in range(runs):
            if x.is_cuda:
                torch.cuda.synchronize(x.device)  # time the kernels, not their launch
            start = time.perf_counter()
            model(x)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            times.append((time.perf_counter() - start) * 1e3)
    return times


def _latency_ms(model: nn.Module, x: torch.Tensor, runs: int, warmup: int) -> float:
    _timed(model, x, warmup)
    return statistics.median(_timed(model, x, runs))


def _bytes(meta: object) -> int:
    if isinstance(meta, TensorMetadata):
        return meta.shape.numel() * torch.empty(0, dtype=meta.dtype).element_size()
    if isinstance(meta, (tuple, list)):
        return sum(_bytes(m) for m in meta)
    return 0


def _peak_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Largest total size of simultaneously alive activations (liveness over the fx graph)."""
    try:
        gm = trace_model(model, x)
    except StructuralPruningError:
        return _peak_leaf_bytes(model, x)
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((pos[u] for u in n.users), default=pos[n]) for n in nodes}
    alive: dict[fx.Node, int] = {}
    peak = 0
    for i, node in enumerate(nodes):
        if node.op not in ("get_attr", "output"):  # parameters are in weight_bytes; output aliases its input
            alive[node] = _bytes(node.meta.get("tensor_meta"))
        peak = max(peak, sum(alive.values()))
        for n in [n for n in alive if last_use[n] <= i]:
            del alive[n]
    return peak


def _peak_leaf_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Fallback: the largest input + output of any leaf module."""
    peak = [x.numel() * x.element_size()]

    def hook(_m: nn.Module, args: tuple, out: object) -> None:
        sizes = [t.numel() * t.element_size() for t in (*args, out) if isinstance(t, torch.Tensor)]
        peak[0] = max(peak[0], sum(sizes))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return peak[0]
