"""timm LeViT (rules/levit.py): LinearNorm channels (MLP hidden width, residual stream) and whole attention heads
of `Attention` / `AttentionDownsample` are removed exactly (removed == masked to 1e-5 in fp32), the blocks'
head counts shrink, and the pruned model round-trips through the export."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from sparsetrain.structural import L2Norm, build_channel_groups, fold_constant_channels, remove_channels, zero_channels
from tests.structural.test_rules import ATOL, prune_and_compare, round_trip, timm_model

# levit_128s's layout (stem16, 3 stages, attention-downsample between them) at CI size: 4x4 tokens, 1 block a stage
NAME = "levit_128s"
KWARGS = {"num_classes": 10, "img_size": 64, "embed_dim": (32, 48, 64), "key_dim": 8, "num_heads": (4, 6, 8),
          "depth": (1, 1, 1)}
KD = 8  # key_dim; value dims: attn_ratio 2 in the blocks (16), 4 in the downsampling attention (32)


@pytest.fixture(scope="module")
def levit():
    model, x = timm_model(NAME, **KWARGS), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)  # fills the eval-mode caches of gathered attention biases, which removal must clear
    return model, x, {g.id: g for g in build_channel_groups(model, x)}


def remove_weakest(model: nn.Module, x: torch.Tensor, groups: dict, ids: list[str], fraction: float = 0.3):
    """Drop the weakest `fraction` (L2) of the named groups only; return (drop, pruned, removed-vs-masked)."""
    scores = {i: L2Norm()(model, groups[i]) for i in ids}
    drop = {i: scores[i].argsort()[: max(1, int(fraction * groups[i].num_channels))] for i in ids}
    masked = copy.deepcopy(model)
    zero_channels(masked, drop, groups=list(groups.values()))
    pruned = remove_channels(model, drop, groups=list(groups.values()))  # in eval mode; .eval() would hide a stale
    # attention-bias cache (Attention.train clears it)
    with torch.no_grad():
        assert (masked(x) - model(x)).abs().max() > 1e-4, "masking changed nothing: the comparison is not meaningful"
        return drop, pruned, (pruned(x) - masked(x)).abs().max().item()


def test_linear_norm_mlp_hidden_and_residual_stream(levit, tmp_path):
    model, x, groups = levit
    hidden, stream = "stages.1.blocks.0.mlp.ln1.linear", "stages.1.downsample.attn_downsample.proj.ln.linear"
    assert groups[hidden].exact and {s.module for s in groups[hidden].consumers} == {"stages.1.blocks.0.mlp.ln2.linear"}
    assert ("stages.1.blocks.0.mlp.ln1.bn", "running_var", "stat") in {
        (s.module, s.param, s.kind) for s in groups[hidden].producers}, "BatchNorm1d over tokens: per channel"
    assert groups[stream].exact and "stages.1.blocks.0.mlp.ln2.bn" in {s.module for s in groups[stream].producers}
    ids = [g for g in groups if g.endswith("mlp.ln1.linear")] + ["stem.conv4.linear", stream]
    drop, pruned, diff = remove_weakest(model, x, groups, ids)
    assert diff <= ATOL, f"removed vs masked: {diff:.3e}"
    mlp, cut = pruned.stages[1].blocks[0].mlp, len(drop[hidden])
    assert (mlp.ln1.linear.out_features, mlp.ln1.bn.num_features, mlp.ln2.linear.in_features) == (96 - cut,) * 3
    assert mlp.ln2.bn.num_features == mlp.ln2.linear.out_features == 48 - len(drop[stream])
    assert round_trip(pruned, x, tmp_path, NAME, KWARGS) <= 1e-6


def test_attention_heads_with_their_biases(levit, tmp_path):
    model, x, groups = levit
    attn, down = "stages.0.blocks.0.attn", "stages.1.downsample.attn_downsample"
    heads, down_heads = groups[f"{attn}.qkv.linear"], groups[f"{down}.kv.linear"]
    assert (heads.num_channels, down_heads.num_channels, heads.exact, down_heads.exact) == (4, 4, True, True)
    widths = {(s.module, s.param): s.expand for s in heads.producers + heads.consumers}
    assert widths[(f"{attn}.qkv.linear", "weight")] == widths[(f"{attn}.qkv.bn", "weight")] == 2 * KD + 16
    assert widths[(attn, "attention_biases")] == 1 and widths[(f"{attn}.proj.ln.linear", "weight")] == 16
    down_widths = {(s.module, s.param): s.expand for s in down_heads.producers + down_heads.consumers}
    assert (down_widths[(f"{down}.kv.bn", "bias")], down_widths[(f"{down}.q.ln.bn", "bias")]) == (KD + 32, KD)
    ids = [g for g in groups if g.endswith(("qkv.linear", "kv.linear"))]
    drop, pruned, diff = remove_weakest(model, x, groups, ids)
    assert diff <= ATOL, f"removed vs masked: {diff:.3e}"
    for name, old_heads, vd in ((attn, 4, 16), (down, 4, 32), ("stages.2.blocks.0.attn", 8, 16)):
        block = pruned.get_submodule(name)
        kept = old_heads - len(drop[f"{name}.{'kv' if 'down' in name else 'qkv'}.linear"])
        assert (block.num_heads, block.attention_biases.shape[0], block.key_attn_dim, block.val_attn_dim,
                block.proj.ln.linear.in_features) == (kept, kept, KD * kept, vd * kept, vd * kept), name
    assert round_trip(pruned, x, tmp_path, NAME, KWARGS) <= 1e-6


def test_whole_levit_is_prunable_and_exact():
    model, x = timm_model(NAME, **KWARGS), torch.randn(2, 3, 64, 64)
    groups, drop, pruned, diff = prune_and_compare(model, x)
    assert diff <= ATOL, f"removed vs masked: {diff:.3e}"
    blocked = [g.id for g in groups.values() if not g.prunable and g.num_channels > 1 and g.id != "input:x"]
    assert blocked == ["head.linear"], f"only the classifier is kept: {blocked}"
    kept = sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in model.parameters())
    assert kept < 0.6, f"params kept {kept:.2f}"


def test_fold_of_zeroed_heads_and_channels_keeps_the_function():
    """Method 2: units whose filters are zero still output their BN shift (a head then outputs softmax-weighted
    constant v); folding that into the consumers' biases, then removing, keeps the function exactly."""
    model, x = timm_model(NAME, **KWARGS), torch.randn(2, 3, 64, 64)
    groups = build_channel_groups(model, x)
    drop = {g.id: torch.tensor([1]) for g in groups  # stem convs are zero-padded: their folds are approximate
            if g.prunable and g.num_channels > 2 and not g.id.startswith("stem.")}
    assert {"stages.0.blocks.0.attn.qkv.linear", "stages.2.downsample.attn_downsample.kv.linear"} <= drop.keys()
    with torch.no_grad():
        for g in groups:
            for s in g.producers if g.id in drop else ():
                if s.kind == "filter":
                    getattr(model.get_submodule(s.module), s.param).index_fill_(s.dim, s.index(drop[g.id]), 0)
        before = model(x)
    report = fold_constant_channels(model, groups, drop, x)
    assert sum(report.exact.values()) == len(drop) and not report.approximate and not report.unfolded
    pruned = remove_channels(model, drop, groups=groups)
    with torch.no_grad():
        diff = (pruned(x) - before).abs().max().item()
    assert diff <= ATOL, f"folded + removed vs filters zeroed: {diff:.3e}"


def test_export_gathers_the_attention_biases_in_the_graph_without_timms_cache(levit):
    """timm's eval-mode cache of the gathered attention biases is a plain dict attribute: torch.export warned that
    it was assigned during export. The LeViT rule has the blocks gather from `attention_biases` in the graph while
    traced (`LayerRule.for_export`), then restores their eval mode with an empty cache."""
    from sparsetrain.deploy.program import trace

    model, x = copy.deepcopy(levit[0]), levit[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        program, dynamic = trace(model, x)
    assert not [str(w.message)[:120] for w in caught if "attention_bias_cache" in str(w.message)]
    blocks = [m for m in model.modules() if hasattr(m, "attention_bias_cache")]
    assert len(blocks) == 5 and not any(m.training or m.attention_bias_cache for m in blocks)
    biases = {name for name in program.graph_signature.parameters if name.endswith("attention_biases")}
    assert len(biases) == 5, "the biases must stay parameters of the program"
    assert all(name.endswith("attention_bias_idxs") for name in program.constants), list(program.constants)
    y = torch.randn(3, 3, 64, 64)  # another batch size: the dynamic batch dimension
    with torch.no_grad():
        for inputs in (x, y):
            assert (program.module()(inputs) - model(inputs)).abs().max().item() <= 1e-5
    assert dynamic
