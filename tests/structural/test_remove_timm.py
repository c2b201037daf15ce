"""Removing ~30 % of every prunable channel group of timm convnets equals zeroing those channels.

Per model (built once per module): random BN statistics/affines and layer scales (so zeroing really changes
the output), float32, a random 30 % of each prunable
group dropped; then masked vs removed outputs, parameter shapes vs the kept filters, and a
save_pruned_model → load_pruned_model round trip.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict

import pytest
import timm
import torch
from torch import nn

from sparsetrain.structural.graph import build_channel_groups, producer_weights, producer_weights_by_group
from sparsetrain.structural.remove import remove_channels, zero_channels
from sparsetrain.structural.serialize import load_pruned_model, save_pruned_model

CASES = [  # (timm name, create kwargs, input side)
    ("mobilenetv3_small_100", {"num_classes": 10}, 64),
    ("mobilenetv3_large_100", {"num_classes": 10}, 64),
    ("resnet18", {"num_classes": 10}, 64),
    ("resnet50", {"num_classes": 10}, 32),
    ("efficientnet_b0", {"num_classes": 10}, 64),
    ("convnext_tiny", {"num_classes": 10}, 32),
    ("lraspp_mobilenetv3_small_100", {"num_classes": 2}, 64),
    ("unet", {"base_width": 8, "depth": 3, "up_mode": "transpose"}, 32),
    ("unet", {"base_width": 8, "depth": 3, "up_mode": "bilinear", "num_classes": 2}, 32),
]
ATOL = 1e-5  # float32: removal and masking differ only in summation order (observed <= 3e-6)


def randomize(model: nn.Module, seed: int) -> None:
    """Make BN statistics/affines and layer scales non-trivial (timm inits them to identities or 1e-6)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)


def random_drop(groups, fraction: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {grp.id: torch.randperm(grp.num_channels, generator=g)[: max(1, int(fraction * grp.num_channels))]
            for grp in groups if grp.prunable and grp.exact and grp.num_channels > 1}


def expected_shapes(model: nn.Module, groups, drop) -> dict[str, torch.Size]:
    """Each tensor's shape after removal, from the group slices alone."""
    removed = defaultdict(int)  # (qualname, dim) -> positions removed
    by_id = {grp.id: grp for grp in groups}
    for gid, idx in drop.items():
        for s in by_id[gid].producers + by_id[gid].consumers:
            removed[(s.qualname, s.dim)] += len(idx) * s.expand
    shapes = {}
    for name, t in model.state_dict().items():
        shapes[name] = torch.Size(n - removed[(name, d)] for d, n in enumerate(t.shape))
    return shapes


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1].get('up_mode', '')}".rstrip("-"))
def case(request, tmp_path_factory):
    name, kwargs, side = request.param
    if name.startswith(("unet", "lraspp")):
        pytest.importorskip(f"sparsetrain.models.{name.split('_')[0]}")
        import sparsetrain.models  # noqa: F401  (registers unet, lraspp_* with timm)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    randomize(model, seed=1)
    x = torch.randn(2, 3, side, side)
    groups = build_channel_groups(model, x)
    drop = random_drop(groups, 0.3, seed=2)
    masked = copy.deepcopy(model)
    zero_channels(masked, drop, groups=groups)
    pruned = remove_channels(model, drop, groups=groups).eval()
    meta = {"model_name": name, "model_kwargs": kwargs}
    out_dir = save_pruned_model(pruned, tmp_path_factory.mktemp(name), meta=meta)
    with torch.no_grad():
        outs = {k: m(x) for k, m in [("orig", model), ("masked", masked), ("pruned", pruned)]}
    return dict(model=model, groups=groups, drop=drop, pruned=pruned, x=x, outs=outs, out_dir=out_dir)


def test_some_groups_are_prunable(case):
    prunable = [g for g in case["groups"] if g.prunable]
    assert len(prunable) >= 3, f"only {len(prunable)} prunable groups"
    assert case["drop"], "nothing dropped"


def test_zeroing_changes_the_output(case):
    diff = (case["outs"]["masked"] - case["outs"]["orig"]).abs().max().item()
    assert diff > 1e-4, f"masking 30 % of channels changed the output by only {diff}: test is not meaningful"


def test_removal_equals_masking(case):
    diff = (case["outs"]["pruned"] - case["outs"]["masked"]).abs().max().item()
    assert diff <= ATOL, f"removed vs masked model: max abs diff {diff:.3e} > {ATOL}"


def test_pruned_shapes_match_kept_filters(case):
    expected = expected_shapes(case["model"], case["groups"], case["drop"])
    got = {k: t.shape for k, t in case["pruned"].state_dict().items()}
    wrong = {k: (tuple(got[k]), tuple(v)) for k, v in expected.items() if got[k] != v}
    assert not wrong, f"shape (got, expected): {dict(list(wrong.items())[:5])}"
    n_expected = sum(math.prod(expected[k]) for k, _ in case["model"].named_parameters())
    assert sum(p.numel() for p in case["pruned"].parameters()) == n_expected


def test_pruned_model_regroups_consistently(case):
    """Tracing the pruned model finds the same groups, each smaller by the dropped count."""
    before = {g.id: g.num_channels - len(case["drop"].get(g.id, [])) for g in case["groups"]}
    after = {g.id: g.num_channels for g in build_channel_groups(case["pruned"], case["x"])}
    assert after == before


def test_compressed_round_trip(case):
    loaded = load_pruned_model(case["out_dir"])
    assert not loaded.training
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in case["pruned"].parameters())
    with torch.no_grad():
        diff = (loaded(case["x"]) - case["outs"]["pruned"]).abs().max().item()
    assert diff <= 1e-6, f"loaded vs pruned: max abs diff {diff:.3e}"


def test_producer_weights_have_units_first(case):
    weights = producer_weights_by_group(case["model"], case["groups"])
    for group in case["groups"]:
        assert (group.id in weights) == group.prunable
        for name, w in producer_weights(case["model"], group):
            assert w.shape[0] == group.num_channels, f"{group.id}: {name} has shape {tuple(w.shape)}"
