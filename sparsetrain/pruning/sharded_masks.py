"""Keep-masks packed 1 bit per weight and partitioned like the weights: each rank holds only its share.

A rank's masks are `MaskShard`s: for a prunable weight, the element range [start, stop) of its flattened values
that this rank's optimizer partition holds (one `Segment` under ZeRO 1-3, the whole weight under ZeRO 0), packed
1 bit per element (`triton_kernels.PackedMask`, read directly by the fused kernels). Memory per rank is
Σ ceil(share_l / 8) bytes.

On disk a *range file* (safetensors) holds, per weight, the packed bits of one element range (bit order of
`triton_kernels.bitmask`: element i is bit i % 8 of byte i // 8) and the range in the metadata:

    {"masks": {name: {"start": s, "stop": e, "shape": [...]}}, "format": "sparsetrain-packed-masks/1"}

`weights/masks.safetensors` of the prune phase is one such file with whole ranges; a mid-phase checkpoint holds one
per rank (`masks-rank<r>.safetensors`). `read_ranges` cuts any ranges out of any set of these files, so masks
written on N ranks load on M ranks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from triton_kernels import PackedMask

FORMAT = "sparsetrain-packed-masks/1"


@dataclass(frozen=True)
class MaskShard:
    """Keep flags of elements [start, start + mask.length) of the flattened weight `name` (shape `shape`)."""

    name: str
    start: int
    mask: PackedMask
    shape: tuple[int, ...]

    @property
    def stop(self) -> int:
        return self.start + self.mask.length


class ShardedMasks:
    """This rank's share of the keep-masks, by weight name (see the module docstring)."""

    def __init__(self, shards: Iterable[MaskShard]) -> None:
        self.shards = {s.name: s for s in shards}

    def view(self, name: str, start: int, stop: int) -> PackedMask:
        """Keep flags of elements [start, stop) of `name` (a view of the shard's bytes, no copy).

        Raises:
            KeyError: this rank holds no mask of `name`, or not the whole range.
        """
        shard = self.shards[name]
        if start < shard.start or stop > shard.stop:
            raise KeyError(f"masks: {name}[{start}:{stop}] is outside this rank's share [{shard.start}:{shard.stop}]")
        return shard.mask.narrow(start - shard.start, stop - start)

    def segment_view(self, segment: object) -> PackedMask:
        """The mask of a `Segment` (duck-typed: name, start, stop)."""
        return self.view(segment.name, segment.start, segment.stop)

    @property
    def nbytes(self) -> int:
        """Bytes of packed bits this rank holds."""
        return sum(s.mask.nbytes for s in self.shards.values())

    @property
    def numel(self) -> int:
        """Weights whose keep flag this rank holds (its share)."""
        return sum(s.mask.length for s in self.shards.values())

    def kept(self) -> int:
        """Kept weights in this rank's share (no collective)."""
        return int(sum(int(s.mask.count_kept()) for s in self.shards.values()))

    def to(self, device: torch.device | str) -> ShardedMasks:
        return ShardedMasks(MaskShard(s.name, s.start, s.mask.to(device), s.shape) for s in self.shards.values())


def pack_shard(name: str, start: int, keep: torch.Tensor, shape: tuple[int, ...]) -> MaskShard:
    """A shard from flat bool keep flags of elements [start, start + keep.numel())."""
    return MaskShard(name, start, PackedMask.pack(keep.reshape(-1)), tuple(shape))


def shards_for(masks: dict[str, torch.Tensor], segments: Iterable[object]) -> ShardedMasks:
    """The shares of full bool/uint8 masks that `segments` (name, start, stop) cover."""
    return ShardedMasks(pack_shard(s.name, s.start, masks[s.name].reshape(-1)[s.start:s.stop] != 0,
                                   tuple(masks[s.name].shape)) for s in segments)


def write_range_file(path: Path, shards: Iterable[MaskShard]) -> None:
    """Write shards (offset-0 packed bits) to a range file, atomically."""
    from safetensors.torch import save_file

    tensors, ranges = {}, {}
    for shard in shards:
        bits = _offset_zero(shard.mask)
        tensors[shard.name] = bits.bits.detach().cpu().contiguous()
        ranges[shard.name] = {"start": shard.start, "stop": shard.stop, "shape": list(shard.shape)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "masks": json.dumps(ranges)})
    os.replace(tmp, path)


def _offset_zero(mask: PackedMask) -> PackedMask:
    return mask if mask.offset == 0 else PackedMask.pack(mask.unpack())


def file_ranges(path: Path) -> dict[str, dict]:
    """{name: {"start", "stop", "shape"}} of a range file.

    Raises:
        ValueError: the file is not a sparsetrain packed-mask file.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"masks: {path} is not a packed-mask file (format {meta.get('format')!r}, expected {FORMAT})")
    return json.loads(meta["masks"])


def read_ranges(paths: list[Path], wanted: Iterable[tuple[str, int, int]],
                device: torch.device | str = "cpu") -> ShardedMasks:
    """Shards of elements [start, stop) of each wanted weight, cut from the range files `paths`.

    Only the bytes covering each wanted range are read. Raises ValueError when the files do not cover a range.
    """
    from safetensors import safe_open

    ranges = {path: file_ranges(path) for path in paths}
    shards = []
    for name, start, stop in wanted:
        keep = torch.zeros(stop - start, dtype=torch.bool)
        covered = torch.zeros(stop - start, dtype=torch.bool)  # files may overlap (ZeRO 0: every rank wrote all)
        shape = None
        for path, table in ranges.items():
            lo, hi = (max(start, table[name]["start"]), min(stop, table[name]["stop"])) if name in table else (0, 0)
            if lo >= hi:
                continue
            shape = tuple(table[name]["shape"])
            first = lo - table[name]["start"]  # bit of the file's range where [lo, hi) begins
            with safe_open(str(path), framework="pt") as f:
                bits = f.get_slice(name)[first // 8:(first + hi - lo + 7) // 8]
            keep[lo - start:hi - start] = PackedMask(bits.contiguous(), hi - lo, first % 8).unpack()
            covered[lo - start:hi - start] = True
        if not bool(covered.all()):
            raise ValueError(f"masks: {name}[{start}:{stop}] is not covered by {[str(p) for p in paths]}")
        shards.append(pack_shard(name, start, keep.to(device), shape or (stop - start,)))
    return ShardedMasks(shards)


def load_full_masks(path: Path) -> dict[str, torch.Tensor]:
    """Every mask of a whole-range file as a bool tensor shaped like its weight (tests, small tools)."""
    table = file_ranges(path)
    masks = read_ranges([path], [(name, 0, r["stop"]) for name, r in table.items() if r["start"] == 0])
    return {name: s.mask.unpack(s.shape) for name, s in masks.shards.items()}
