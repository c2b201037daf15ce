"""Method 2's channel scores from weight shards (`pruning.sharded_filters`) equal the whole-model scores
(`structural.scoring`) and choose the same filters, on 2 real gloo processes.

The models are a narrowed timm resnet18 (batch norms, a residual group whose filters come from several convs), a
1-block vit_tiny (attention heads: units of 64 channels, q/k/v rows at offsets inside one weight) and a shallow
regnetx_002 (grouped convs: a unit is one channel of every group, or a whole group). 2 ranks split
every weight at its middle element, which lies inside a filter row for most layers (e.g. 7 × 27 elements)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sparsetrain.config.schema import PruneConfig
from sparsetrain.pruning.filters import channel_groups, choose_filters
from sparsetrain.pruning.sharded_filters import SHARDED_SCORES, position_sums, sharded_channel_scores
from sparsetrain.structural import build_score
from tests.core.subprocess_runs import free_port

MODELS = {
    "resnet18": (dict(num_classes=5, channels=[8, 16, 16, 24], stem_width=7), (3, 16, 16)),
    "vit_tiny_patch16_224": (dict(num_classes=5, img_size=32, depth=1), (3, 32, 32)),
    "regnetx_002": (dict(num_classes=5), (3, 32, 32)),  # grouped convs (groups of 8)
}
GROUPED_CONV = {"regnetx_002": ("within_groups", "whole_groups")}  # units repeated in every group / whole groups


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(name, **MODELS[name][0])
    with torch.no_grad():  # BN scales of distinct sizes (timm initializes them all to 1)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(-1.0, 1.0)
    return model


def _rank_main(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    for name, (kwargs, shape) in MODELS.items():
        model, path = _model(name), Path(folder) / f"{name}.safetensors"
        if rank == 0:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        dist.barrier()
        with torch.device("meta"):
            structure = timm.create_model(name, **kwargs)
        for grouped_conv in GROUPED_CONV.get(name, ("within_groups",)):
            groups = channel_groups(structure, shape, grouped_conv)
            _compare_scores(model, structure, groups, path, f"rank {rank} {name} {grouped_conv}")
    dist.destroy_process_group()


def _compare_scores(model: torch.nn.Module, structure: torch.nn.Module, groups: list, path: Path, label: str) -> None:
    """Sharded vs whole-model scores of every group, and the filters each chooses, for every sharded score."""
    for score in SHARDED_SCORES:
        sharded, whole, scored = sharded_channel_scores(path, structure, groups, score), build_score(score), 0
        for group in groups:
            expected = whole(model, group) if group.prunable else None
            got = sharded(structure, group)
            assert (got is None) == (expected is None), f"{label} {score} {group.id}: scored on one side only"
            if expected is not None:
                scored += 1
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6,
                                           msg=lambda m, at=f"{label} {score} {group.id}": f"{at}: {m}")
        assert scored, f"{label} {score}: no group scored"  # bn_scale: l2 where no batch norm (vit: every group)
        cfg = PruneConfig(rule="filters", channel_score=score, filter_fraction=0.3, round_to=1)
        assert {k: v.tolist() for k, v in choose_filters(model, groups, cfg, score=sharded).items()} == {
            k: v.tolist() for k, v in choose_filters(model, groups, cfg).items()}, f"{label} {score}: other filters"


def test_two_ranks_score_filters_like_the_whole_model(tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_position_sums_add_up_any_range_of_any_dimension(dim: int) -> None:
    w = torch.randn(5, 3, 7)
    expected = w.double().square().movedim(dim, 0).reshape(w.shape[dim], -1).sum(1)
    parts = sum(position_sums(w.reshape(-1)[lo:hi], lo, w.shape, dim, 2) for lo, hi in ((0, 13), (13, 100), (100, 105)))
    torch.testing.assert_close(parts, expected, msg=lambda m: f"dim {dim}: {m}")


def test_unknown_sharded_score_is_one_line() -> None:
    with pytest.raises(ValueError, match=r"^prune.channel_score: 'grad_count' is not computed from weight shards"):
        sharded_channel_scores(Path("unused"), torch.nn.Linear(2, 2), [], "grad_count")
