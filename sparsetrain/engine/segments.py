"""Map prunable model parameters onto the tensors DeepSpeed's optimizer actually updates.

DeepSpeed hands a plain torch optimizer either the model parameters themselves (fp32, ZeRO 0) or flat fp32
master partitions (ZeRO 1/2, bf16): each rank's master holds one contiguous slice of a flat buffer that the
model parameters are views into. Under ZeRO 3 the parameters themselves are partitioned: rank r holds elements
[r·p, (r+1)·p) of every flattened parameter (p = ceil(numel / world size), the last partition padded), and the
optimizer steps one sub-group of them at a time on a flat fp32 master (`fp32_partitioned_groups_flat[i]`, the
partitions of the sub-group's parameters back to back, at `grad_position[param_id]`). A `Segment` is the part of
one prunable parameter that lies in this rank's master tensor, so the gradient regularizer and mask work on the
exact fp32 values the optimizer reads and writes, after gradient reduction and before the update, under every
ZeRO stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from sparsetrain.errors import SetupError
from sparsetrain.regularizers.base import WeightSlice

if TYPE_CHECKING:
    from sparsetrain.pruning.sharded_masks import ShardedMasks


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

    @property
    def size(self) -> int:
        """Elements of the whole parameter (under ZeRO 3 the model parameter itself holds none)."""
        return int(getattr(self.param, "ds_numel", self.param.numel()))

    def weight(self) -> torch.Tensor:
        return self.master.detach().view(-1)[self.master_offset:self.master_offset + self.numel]

    def grad(self) -> torch.Tensor | None:
        if self.master.grad is None:
            return None
        return self.master.grad.view(-1)[self.master_offset:self.master_offset + self.numel]


def weight_slices(segments: list[Segment], masks: ShardedMasks | None) -> list[WeightSlice]:
    """The plain views a sparsity strategy works on: the segments that have a gradient this step, with the
    matching part of this rank's packed masks (`ShardedMasks.segment_view`, no copy)."""
    slices = []
    for seg in segments:
        grad = seg.grad()
        if grad is None:
            continue
        mask = None if masks is None else masks.segment_view(seg)
        slices.append(WeightSlice(seg.name, seg.weight(), grad, mask, seg.start, seg.size))
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


def partition_range(param: torch.nn.Parameter) -> tuple[int, int]:
    """Element range [start, stop) of a ZeRO-3 parameter that this rank's partition holds (may be empty)."""
    per_rank = int(param.ds_tensor.ds_numel)
    start = min(dist.get_rank(group=param.ds_process_group) * per_rank, int(param.ds_numel))
    return start, min(start + per_rank, int(param.ds_numel))


def _zero3_segments(wrapper: object, prunable: dict[str, torch.nn.Parameter]) -> list[Segment]:
    """ZeRO 3: the partition of each parameter inside its sub-group's flat fp32 master."""
    segments = []
    for name, param in prunable.items():
        group, offset, _ = wrapper.grad_position[wrapper.get_param_id(param)]
        start, stop = partition_range(param)
        if stop > start:
            segments.append(Segment(name, param, start, stop, wrapper.fp32_partitioned_groups_flat[group], offset))
    return segments


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
    if hasattr(engine.optimizer, "fp32_partitioned_groups_flat"):  # ZeRO stage 3
        segments = _zero3_segments(engine.optimizer, prunable)
        _check_segments(segments, reference)
        return segments
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
        if reference is not None:
            expected = reference[seg.name].reshape(-1)[seg.start:seg.stop]
        elif hasattr(seg.param, "ds_tensor"):  # ZeRO 3: the partition starts at element 0 of ds_tensor
            expected = seg.param.ds_tensor.detach()[:seg.numel]
        else:
            expected = seg.param.detach().reshape(-1)[seg.start:seg.stop]
        expected = expected.to(device=seg.master.device, dtype=torch.float32)
        if not torch.equal(seg.weight().float(), expected):
            raise SetupError(f"deepspeed: master weights of {seg.name} do not match the model parameter; "
                               "the optimizer layout is not the one sparsetrain expects")


def holds_partition(engine: object) -> bool:
    """True when each rank's optimizer holds only a slice of the weights (values must be summed over ranks)."""
    wrapper = engine.optimizer
    return any(hasattr(wrapper, attr) for attr in ("single_partition_of_fp32_groups", "fp32_groups_flat_partition",
                                                      "fp32_partitioned_groups_flat"))
