"""Map prunable model parameters onto the tensors DeepSpeed's optimizer actually updates.

DeepSpeed hands a plain torch optimizer either the model parameters themselves (fp32, ZeRO 0) or flat fp32
master partitions (ZeRO 1/2, bf16): each rank's master holds one contiguous slice of a flat buffer that the
model parameters are views into. A `Segment` is the part of one prunable parameter that lies in this rank's
master tensor, so the gradient regularizer and mask work on the exact fp32 values the optimizer reads and
writes, after gradient reduction and before the update, under every ZeRO stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from sparsetrain.errors import SetupError
from sparsetrain.regularizers.base import WeightSlice


@dataclass
class Segment:
    name: str
    param: torch.nn.Parameter  # the model parameter (possibly low precision)
    start: int  # element range [start, stop) of the flattened parameter held here
    stop: int
    master: torch.Tensor  # the optimizer's tensor holding these elements
    master_offset: int  # where `start` sits inside master.view(-1)

    @property
    def numel(self) -> int:
        return self.stop - self.start

    def weight(self) -> torch.Tensor:
        return self.master.detach().view(-1)[self.master_offset:self.master_offset + self.numel]

    def grad(self) -> torch.Tensor | None:
        if self.master.grad is None:
            return None
        return self.master.grad.view(-1)[self.master_offset:self.master_offset + self.numel]


def weight_slices(segments: list[Segment], masks: dict[str, torch.Tensor] | None) -> list[WeightSlice]:
    """The plain views a sparsity strategy works on: the segments that have a gradient this step, with the
    matching part of their masks."""
    slices = []
    for seg in segments:
        grad = seg.grad()
        if grad is None:
            continue
        mask = None if masks is None else masks[seg.name].view(-1)[seg.start:seg.stop]
        slices.append(WeightSlice(seg.name, seg.weight(), grad, mask, seg.start, seg.param.numel()))
    return slices


def _flat_layouts(wrapper: object) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """(low-precision flat buffer, fp32 master, start of the master inside the flat buffer) per param group."""
    if hasattr(wrapper, "single_partition_of_fp32_groups"):  # ZeRO stage 1/2
        return [(flat, master, dist.get_rank(group=wrapper.real_dp_process_group[i]) * wrapper.partition_size[i])
                for i, (flat, master) in enumerate(zip(wrapper.bit16_groups_flat,
                                                       wrapper.single_partition_of_fp32_groups, strict=True))]
    if hasattr(wrapper, "fp32_groups_flat_partition"):  # BF16_Optimizer
        pairs = zip(wrapper.bf16_groups_flat, wrapper.fp32_groups_flat_partition, strict=True)
        return [(flat, master, dist.get_rank(group=wrapper.real_dp_process_group[i]) * master.numel())
                for i, (flat, master) in enumerate(pairs)]
    if hasattr(wrapper, "fp32_groups_flat"):  # FP16_Optimizer used for bf16 without ZeRO
        pairs = zip(wrapper.fp16_groups_flat, wrapper.fp32_groups_flat, strict=True)
        return [(flat, master, 0) for flat, master in pairs]
    raise SetupError(f"deepspeed: unsupported optimizer wrapper {type(wrapper).__name__} for masks/regularizer")


def _segment_in_layout(name: str, param: torch.nn.Parameter,
                       layout: tuple[torch.Tensor, torch.Tensor, int]) -> Segment | None:
    flat, master, master_start = layout
    offset, rem = divmod(param.data_ptr() - flat.data_ptr(), param.element_size())
    if rem or offset < 0 or offset + param.numel() > flat.numel():
        return None
    lo, hi = max(offset, master_start), min(offset + param.numel(), master_start + master.numel())
    if lo >= hi:
        return Segment(name, param, 0, 0, master, 0)  # parameter lives in this flat buffer, on other ranks
    return Segment(name, param, lo - offset, hi - offset, master, lo - master_start)


def per_param_masters(wrapper: object) -> dict[int, torch.Tensor] | None:
    """FP16_UnfusedOptimizer (bf16 without ZeRO, client optimizer): one fp32 copy per model parameter, by the
    parameter's id; None for other wrappers."""
    if not (hasattr(wrapper, "fp32_groups") and hasattr(wrapper, "fp16_groups")) or hasattr(wrapper,
                                                                                           "fp32_groups_flat"):
        return None
    return {id(low): master for lows, masters in zip(wrapper.fp16_groups, wrapper.fp32_groups, strict=True)
            for low, master in zip(lows, masters, strict=True)}


def build_segments(engine: object, prunable: dict[str, torch.nn.Parameter],
                   reference: dict[str, torch.Tensor] | None = None) -> list[Segment]:
    """Segments of every prunable parameter held by this rank (empty-range segments are dropped).

    Args:
        engine: a DeepSpeed engine.
        prunable: the prunable parameters of `engine.module`, by name.
        reference: the values the masters must hold (fp32 start weights under bf16); default: the parameters.

    Raises:
        SetupError: the optimizer's layout is not one sparsetrain knows, or a master slice does not hold its
            parameter's values.
    """
    basic_params = {id(p) for group in engine.basic_optimizer.param_groups for p in group["params"]}
    if all(id(p) in basic_params for p in prunable.values()):
        return [Segment(n, p, 0, p.numel(), p, 0) for n, p in prunable.items()]
    masters = per_param_masters(engine.optimizer)
    if masters is not None:
        segments = [Segment(n, p, 0, p.numel(), masters[id(p)], 0) for n, p in prunable.items()]
        _check_segments(segments, reference)
        return segments
    layouts = _flat_layouts(engine.optimizer)
    segments = []
    for name, param in prunable.items():
        found = [s for s in (_segment_in_layout(name, param, lay) for lay in layouts) if s is not None]
        if not found:
            raise SetupError(f"deepspeed: parameter {name} is not in any optimizer flat buffer")
        segments.extend(s for s in found[:1] if s.numel > 0)
    _check_segments(segments, reference)
    return segments


def _check_segments(segments: list[Segment], reference: dict[str, torch.Tensor] | None) -> None:
    """The master slice must hold the parameter's values: guards against a DeepSpeed layout change."""
    for seg in segments:
        full = reference[seg.name] if reference is not None else seg.param.detach()
        expected = full.reshape(-1)[seg.start:seg.stop].to(device=seg.master.device, dtype=torch.float32)
        if not torch.equal(seg.weight().float(), expected):
            raise SetupError(f"deepspeed: master weights of {seg.name} do not match the model parameter; "
                               "the optimizer layout is not the one sparsetrain expects")


def holds_partition(engine: object) -> bool:
    """True when each rank's optimizer holds only a slice of the weights (values must be summed over ranks)."""
    wrapper = engine.optimizer
    return hasattr(wrapper, "single_partition_of_fp32_groups") or hasattr(wrapper, "fp32_groups_flat_partition")
