"""ZeRO stage 3 from the model's side: parameters whose values live in partitions spread over the ranks.

After `deepspeed.initialize` with stage 3 a model parameter holds no data of its own (`param.numel() == 0`);
rank r keeps elements [r·p, (r+1)·p) of the flattened parameter in `param.ds_tensor` (the training-precision
copy) and in the optimizer's fp32 master (`segments.partition_range`). DeepSpeed gathers whole layers only
inside the module's forward and backward. What sparsetrain needs besides, without gathering the model on every
rank:

- `gather_state_dict`: the fp32 master values of every parameter (and the buffers) on rank 0, one parameter at
  a time (phase hand-off, report, export);
- `set_master_values`: start a phase from exact fp32 weights (under bf16, DeepSpeed builds the masters by
  up-casting its bf16 copies);
- `gathered`: a context in which the listed parameters hold their full values on every rank (what
  `deepspeed.zero.GatheredParameters` does, a no-op for parameters that are not partitioned);
- `WholeWeights`: parameters by name that read whole (gathered one at a time), what the sparsity strategies see.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn

from sparsetrain.engine.segments import partition_range


def is_partitioned(module: nn.Module) -> bool:
    """Whether `module`'s parameters are ZeRO-3 partitions (hold no data outside forward/backward)."""
    return any(hasattr(p, "ds_id") for p in module.parameters())


def master_partition(param: nn.Parameter) -> torch.Tensor:
    """This rank's fp32 master elements of a ZeRO-3 parameter (a view, `partition_range(param)` long)."""
    optimizer = param._z3_optimizer
    group, offset, _ = optimizer.grad_position[optimizer.get_param_id(param)]
    start, stop = partition_range(param)
    return optimizer.fp32_partitioned_groups_flat[group].narrow(0, offset, stop - start)


def _gather_to_rank0(param: nn.Parameter, part: torch.Tensor) -> torch.Tensor | None:
    """The full parameter from every rank's partition `part` (padded to equal length), on rank 0 only."""
    per_rank = int(param.ds_tensor.ds_numel)
    padded = torch.zeros(per_rank, dtype=torch.float32, device=part.device)
    padded[:part.numel()] = part.float()
    world = dist.get_world_size(group=param.ds_process_group)
    rank = dist.get_rank(group=param.ds_process_group)
    chunks = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
    dist.gather(padded, chunks, dst=dist.get_global_rank(param.ds_process_group, 0), group=param.ds_process_group)
    if rank != 0:
        return None
    return torch.cat(chunks)[:int(param.ds_numel)].view(param.ds_shape).cpu()


@torch.no_grad()
def gather_state_dict(module: nn.Module) -> dict[str, torch.Tensor] | None:
    """fp32 state dict of a ZeRO-3 module on rank 0 (None elsewhere); every rank must call it.

    Parameters come from the optimizer's fp32 masters (exact under bf16), gathered one at a time, so no rank
    holds more than one whole parameter besides rank 0's growing result; buffers are replicated and read locally.
    Parameters without a gradient (no master) come from their training-precision partition.
    """
    state: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters():
        part = master_partition(param) if param.requires_grad else param.ds_tensor[:_held(param)]
        full = _gather_to_rank0(param, part)
        if full is not None:
            state[name] = full
    for name, buffer in module.named_buffers():
        state[name] = buffer.detach().float().cpu() if buffer.is_floating_point() else buffer.detach().cpu()
    return state if dist.get_rank() == 0 else None


def _held(param: nn.Parameter) -> int:
    start, stop = partition_range(param)
    return stop - start


@torch.no_grad()
def set_master_values(module: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Write full fp32 `values` (by parameter name) into this rank's masters and training-precision partitions.

    No collective: each rank copies the elements it owns. (DeepSpeed's `safe_set_full_fp32_param` reads past the
    end of a parameter whose size is not a multiple of the world size on the last rank.)
    """
    for name, param in module.named_parameters():
        start, stop = partition_range(param)
        value = values[name].reshape(-1)[start:stop]
        if param.requires_grad:
            master_partition(param).copy_(value)
        param.ds_tensor[:stop - start].copy_(value)


@contextmanager
def gathered(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Inside the block, ZeRO-3 `params` hold their full values on every rank (a collective); others unchanged."""
    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned):
        yield


class WholeWeights(Mapping[str, torch.Tensor]):
    """Parameters by name whose values read whole on every rank: reading a ZeRO-3 parameter gathers a full copy
    (a collective: every rank must read the same names in the same order); others are returned as they are.

    What the sparsity strategies are bound to (`GradientRegularizer.bind`), so they see whole weights without
    knowing about partitions; only one layer is gathered at a time.
    """

    def __init__(self, params: dict[str, nn.Parameter]) -> None:
        self._params = params

    def __getitem__(self, name: str) -> torch.Tensor:
        param = self._params[name]
        if not hasattr(param, "ds_id"):
            return param
        with gathered([param]), torch.no_grad():
            return param.detach().clone()

    def __contains__(self, name: object) -> bool:
        return name in self._params  # no gather

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)
