"""Pruning rules computed from shards with collective reductions equal the whole-tensor rules (criteria.py), and
packed masks written by N ranks read back by any element ranges.

The multi-rank case runs 3 real processes (gloo): 3 does not divide the layer sizes, so shards start inside
bytes and layers, and ties at the threshold straddle rank boundaries."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sparsetrain.config.schema import PruneConfig
from sparsetrain.pruning.criteria import compute_masks
from sparsetrain.pruning.distributed import WeightShard, shard_masks
from sparsetrain.pruning.sharded_masks import MaskShard, ShardedMasks, load_full_masks, read_ranges, write_range_file
from sparsetrain.pruning.sharded_prune import even_range, prune_shards, write_masks_file
from tests.core.subprocess_runs import free_port
from triton_kernels import PackedMask

# 0.15 and 0.2 put the global k-th smallest |w| inside the ties of "e" (after 8 smaller weights), 0.5 of layer
# "e" inside its own: the ties to prune straddle rank boundaries.
RULES = [PruneConfig(rule="global_sparsity", sparsity=s) for s in (0.0, 0.15, 0.2, 0.3, 0.6, 0.77)] + [
    PruneConfig(rule="layer_sparsity", sparsity=0.4, layer_sparsity={"b": 0.7, "d": 0.0, "e": 0.5}),
    PruneConfig(rule="global_threshold", threshold=0.5),
    PruneConfig(rule="layer_threshold", threshold=0.3, layer_thresholds={"a": 0.5}),
]


def _weights() -> dict[str, torch.Tensor]:
    """Awkward sizes (prime, 2^k+1, a single element) and many exact ties (0.5, 0.0, -0.25/0.25, 18 × 0.1)."""
    gen = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(7, 5, generator=gen), "b": torch.randn(17, generator=gen),
         "c": torch.randn(3, 3, 2, generator=gen), "d": torch.randn(1, 1, generator=gen)}
    w["a"][0, :3], w["a"][4, 1:] = 0.5, -0.25
    w["b"][:4], w["b"][9:12] = 0.5, 0.25
    w["c"].view(-1)[5:9] = 0.0
    w["d"][0, 0] = 3.0  # a rule may not empty a layer (refused), so the single weight is a large one
    w["e"] = torch.full((2, 11), 0.1)
    w["e"].view(-1)[18:] = 2.0
    return w


def _whole(weights: dict[str, torch.Tensor]) -> list[WeightShard]:
    return [WeightShard(n, 0, w.reshape(-1), w.numel(), tuple(w.shape)) for n, w in weights.items()]


def _rule_id(cfg: PruneConfig) -> str:
    return f"{cfg.rule}-{getattr(cfg, 'sparsity', '')}-{getattr(cfg, 'threshold', '')}"  # the settings it has


@pytest.mark.parametrize("cfg", RULES, ids=_rule_id)
def test_one_shard_equals_whole_tensor_rules(cfg: PruneConfig) -> None:
    weights = _weights()
    expected = compute_masks(weights, cfg)
    masks = shard_masks(_whole(weights), list(weights), {n: w.numel() for n, w in weights.items()}, cfg)
    for name, w in weights.items():
        got = masks.shards[name].mask.unpack(w.shape)
        assert torch.equal(got, expected[name]), f"{cfg.rule}: {name} differs from criteria.py\n{got}\n{expected[name]}"


def _rank_main(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from safetensors.torch import save_file

    weights = _weights()
    source = Path(folder) / "weights.safetensors"
    if rank == 0:
        save_file({n: w.contiguous() for n, w in weights.items()}, str(source))
    dist.barrier()
    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    for i, cfg in enumerate(RULES):
        masks = prune_shards(source, shapes, cfg, torch.device("cpu"))
        for name, shard in masks.shards.items():
            assert (shard.start, shard.stop) == even_range(weights[name].numel(), world, rank)
        write_range_file(Path(folder) / f"rule{i}-rank{rank}.safetensors", masks.shards.values())
        write_masks_file(masks, shapes, Path(folder) / f"rule{i}-full.safetensors")
        dist.barrier()
    dist.destroy_process_group()


def test_three_ranks_equal_whole_tensor_rules_and_masks_reshard(tmp_path: Path) -> None:
    weights = _weights()
    mp.spawn(_rank_main, args=(3, free_port(), str(tmp_path)), nprocs=3, join=True)
    for i, cfg in enumerate(RULES):
        expected = compute_masks(weights, cfg)
        full = load_full_masks(tmp_path / f"rule{i}-full.safetensors")
        for name in weights:
            assert torch.equal(full[name], expected[name]), f"3 ranks, {cfg.rule} rule {i}: {name} differs"
        if "sparsity" in cfg.rule:
            pruned = sum(int((~m).sum()) for m in full.values())
            if cfg.rule == "global_sparsity":
                assert pruned == round(cfg.sparsity * sum(w.numel() for w in weights.values())), "inexact target"
        # masks written by 3 ranks, read back as 2 other ranks' shares (ranges starting inside bytes)
        files = sorted(tmp_path.glob(f"rule{i}-rank*.safetensors"))
        for rank in range(2):
            wanted = [(n, *even_range(w.numel(), 2, rank)) for n, w in weights.items()]
            shares = read_ranges(files, [r for r in wanted if r[2] > r[1]])
            for name, start, stop in wanted:
                if stop > start:
                    got = shares.shards[name].mask.unpack()
                    assert torch.equal(got, expected[name].reshape(-1)[start:stop]), f"resharded {name}[{start}:{stop}]"


def test_range_files_cut_any_range_and_use_share_over_8_bytes(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    keep = torch.rand(1001, generator=gen) > 0.4
    parts = [(0, 333), (333, 667), (667, 1001)]
    for r, (lo, hi) in enumerate(parts):
        shard = MaskShard("w", lo, PackedMask.pack(keep[lo:hi]), (7, 11, 13))
        write_range_file(tmp_path / f"rank{r}.safetensors", [shard])
    files = sorted(tmp_path.glob("rank*.safetensors"))
    for lo, hi in [(0, 1001), (1, 2), (330, 670), (5, 997), (666, 668), (1000, 1001)]:
        masks = read_ranges(files, [("w", lo, hi)])
        assert torch.equal(masks.shards["w"].mask.unpack(), keep[lo:hi]), f"range [{lo}, {hi})"
        assert masks.nbytes == -(-(hi - lo) // 8), f"[{lo}, {hi}): {masks.nbytes} bytes, expected ceil(n / 8)"
    with pytest.raises(ValueError, match=r"w\[0:1002\] is not covered"):
        read_ranges(files, [("w", 0, 1002)])


def test_segment_views_narrow_without_copy() -> None:
    keep = torch.arange(100) % 3 != 0
    masks = ShardedMasks([MaskShard("w", 20, PackedMask.pack(keep[20:90]), (100,))])
    view = masks.view("w", 37, 61)
    assert torch.equal(view.unpack(), keep[37:61]), "narrowed view"
    assert view.bits.data_ptr() >= masks.shards["w"].mask.bits.data_ptr(), "a view shares the shard's bytes"
    with pytest.raises(KeyError, match="outside this rank's share"):
        masks.view("w", 10, 30)
