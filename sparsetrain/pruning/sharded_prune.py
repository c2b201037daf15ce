"""The prune phase on shards: each rank reads its share of every prunable weight from the phase weights file,
the rule runs with collective reductions (`pruning.distributed`), and rank 0 writes the results layer by layer.

Shares follow ZeRO-3's partitioning (`even_range`: rank r gets elements [r·p, (r+1)·p), p = ceil(n / ranks)),
so no rank ever holds a whole weight it does not own, and the result does not depend on the number of ranks.
Rank 0 gathers the packed keep flags one layer at a time (1/32 of the layer's fp32 bytes) to write
`weights/masks.safetensors` (a packed range file, `pruning.sharded_masks`) and the pruned weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from sparsetrain.config.schema import PruneConfig
from sparsetrain.pruning.distributed import WeightShard, refuse_empty_layers, shard_masks
from sparsetrain.pruning.sharded_masks import MaskShard, ShardedMasks, pack_shard, read_ranges, write_range_file
from triton_kernels import PackedMask


def even_range(size: int, world: int, rank: int) -> tuple[int, int]:
    """Elements [start, stop) of a weight of `size` elements that `rank` of `world` holds (ZeRO-3's split)."""
    per_rank = -(-size // world)
    start = min(rank * per_rank, size)
    return start, min(start + per_rank, size)


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def read_shard(path: Path, name: str, start: int, stop: int) -> torch.Tensor:
    """Elements [start, stop) of the flattened tensor `name` in a safetensors file, reading only the rows
    (first-dimension slices) that hold them."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        view = f.get_slice(name)
        shape = view.get_shape()
        row = max(1, int(torch.Size(shape[1:]).numel())) if len(shape) > 1 else 1
        first, last = start // row, -(-stop // row)
        rows = view[first:last] if shape else f.get_tensor(name)
    return rows.reshape(-1)[start - first * row:stop - first * row]


def read_weight_shards(path: Path, shapes: dict[str, tuple[int, ...]], device: torch.device) -> list[WeightShard]:
    """This rank's share (`even_range`) of every weight in `shapes`, as fp32 on `device`."""
    rank, world = _rank_world()
    shards = []
    for name, shape in shapes.items():
        size = int(torch.Size(shape).numel())
        start, stop = even_range(size, world, rank)
        if stop > start:
            values = read_shard(path, name, start, stop).to(device=device, dtype=torch.float32)
            shards.append(WeightShard(name, start, values, size, tuple(shape)))
    return shards


def prune_shards(path: Path, shapes: dict[str, tuple[int, ...]], cfg: PruneConfig,
                 device: torch.device) -> ShardedMasks:
    """Masks of this rank's share of the weights in `path` under `cfg` (a collective; exact targets)."""
    names = list(shapes)
    sizes = {n: int(torch.Size(s).numel()) for n, s in shapes.items()}
    shards = read_weight_shards(path, shapes, device)
    masks = shard_masks(shards, names, sizes, cfg)
    refuse_empty_layers(masks, shards, names, sizes, cfg)
    return masks


def _gather_layer(shard: MaskShard | None, size: int) -> torch.Tensor | None:
    """The full bool keep flags of one layer on rank 0 (None elsewhere), from every rank's shard."""
    rank, world = _rank_world()
    if world == 1:
        return shard.mask.unpack() if shard is not None else None
    per_rank = -(-size // world)
    nbytes = -(-per_rank // 8)
    mine = torch.zeros(16 + nbytes, dtype=torch.uint8)  # start and length as int64, then the packed bits
    if shard is not None:
        bits = PackedMask.pack(shard.mask.unpack()).bits.cpu()
        mine[16:16 + bits.numel()] = bits
        mine[:16].view(torch.int64).copy_(torch.tensor([shard.start, shard.mask.length]))
    chunks = [torch.empty_like(mine) for _ in range(world)] if rank == 0 else None
    dist.gather(mine, chunks, dst=0)
    if rank != 0:
        return None
    keep = torch.zeros(size, dtype=torch.bool)
    for chunk in chunks:
        start, length = chunk[:16].view(torch.int64).tolist()
        if length:
            keep[start:start + length] = PackedMask(chunk[16:16 + -(-length // 8)].clone(), length, 0).unpack()
    return keep


def write_masks_file(masks: ShardedMasks, shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """Rank 0 writes the whole-range packed mask file, gathering one layer at a time (all ranks call)."""
    rank, _ = _rank_world()
    full = []
    for name, shape in shapes.items():
        keep = _gather_layer(masks.shards.get(name), int(torch.Size(shape).numel()))
        if rank == 0:
            full.append(pack_shard(name, 0, keep, tuple(shape)))
    if rank == 0:
        write_range_file(path, full)


def write_pruned_weights(source: Path, masks_file: Path, target: Path) -> None:
    """Rank 0: the weights of `source` with the pruned entries of `masks_file` set to exactly 0, one layer at a
    time, written to `target` (other tensors copied unchanged)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from sparsetrain.pruning.sharded_masks import file_ranges

    ranges = file_ranges(masks_file)
    state = {}
    with safe_open(str(source), framework="pt") as f:
        for name in f.keys():
            tensor = f.get_tensor(name)
            if name in ranges:
                keep = read_ranges([masks_file], [(name, 0, tensor.numel())]).shards[name].mask.unpack(tensor.shape)
                tensor = torch.where(keep, tensor, torch.zeros((), dtype=tensor.dtype))
            state[name] = tensor.contiguous()
    tmp = target.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(target)
