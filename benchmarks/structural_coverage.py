"""Structural-pruning coverage: sparsetrain vs Torch-Pruning on timm models, side by side.

Protocol (the same for both tools, on the same randomly initialized weights with randomized BN statistics):
L2-magnitude channel scores, 30 % of the channels of every prunable group removed (floor, at least one channel
kept), the classifier's outputs kept, no rounding of channel counts. Per model and tool we record whether it
runs, the fraction of parameters kept, and whether removal is *exact*: the pruned model's output equals that of
the unpruned model with the same channels zeroed (masked), to `ATOL` relative to the output's scale, in float64.

Torch-Pruning (`pip install torch-pruning==1.6.1`; not a sparsetrain dependency) is run through its public API:
`MetaPruner(importance=MagnitudeImportance(p=2), pruning_ratio=0.3, ignored_layers=[classifier])`, with
`num_heads` of timm attention layers (its ViT recipe: head dims pruned, heads kept). Its masked reference zeroes
the output-side slices of every layer that the groups prune along their output channels. When the package is
not installed its columns read "not installed".

Each (model, tool) runs in its own subprocess with a time limit, so one crash or hang costs one cell.

    python -m benchmarks.structural_coverage                      # all models, table on stdout
    python -m benchmarks.structural_coverage --models resnet18 vgg11_bn --markdown
    python -m benchmarks.structural_coverage --merge a.json b.json --markdown   # one table from several runs
    python -m benchmarks.structural_coverage --models ghostnet_100 --layers     # channels per layer, both tools
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import RESULTS_DIR
from sparsetrain.argtypes import CommandParser

MODELS = [  # 34 timm models: the families the issue names, then common timm families
    "resnet18", "resnet34", "resnet50", "resnext50_32x4d", "seresnet50", "res2net50_26w_4s", "regnetx_002",
    "regnety_002", "ghostnet_100", "convnext_tiny", "vgg11_bn", "vit_tiny_patch16_224", "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224", "dpn68", "mobilevit_xxs", "levit_128s", "mobilenetv2_100",
    "mobilenetv3_small_100", "mobilenetv3_large_100", "efficientnet_b0", "efficientnet_lite0", "mnasnet_100",
    "mixnet_s", "tinynet_a", "lcnet_050", "rexnet_100", "densenet121", "dla34", "cspresnet50", "hrnet_w18_small",
    "inception_v3", "ese_vovnet19b_dw", "poolformer_s12",
]
FRACTION = 0.3
ATOL = 1e-9  # relative, in float64
TOOLS = ("sparsetrain", "sparsetrain_inexact", "torch_pruning")


def make_model(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The timm model (10 classes, seeded, randomized BN) and a 2-image input of the smallest usual size."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    cfg = model.pretrained_cfg
    side = cfg["input_size"][-1] if cfg.get("fixed_input_size") else 96 if name.startswith("inception") else 64
    return model, torch.randn(2, 3, side, side, generator=g)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _max_diff(pruned: nn.Module, masked: nn.Module, x: torch.Tensor) -> float:
    """Max |pruned - masked| relative to max |masked|, in float64 (so rounding cannot pass for inexactness)."""
    with torch.no_grad():
        ref = masked.double()(x.double())
        return ((pruned.double()(x.double()) - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


# ----- sparsetrain ---------------------------------------------------------------------------------------------


def prune_sparsetrain(name: str, allow_inexact: bool) -> tuple[nn.Module, nn.Module, nn.Module, torch.Tensor, list,
                                                               dict]:
    """(model, masked reference, pruned model, input, channel groups, dropped units) under the protocol."""
    from sparsetrain.structural import (
        ChannelSelection,
        L2Norm,
        build_channel_groups,
        remove_channels,
        select_channels,
        zero_channels,
    )

    model, x = make_model(name)
    groups = build_channel_groups(model, x)
    selection = ChannelSelection(fraction=FRACTION, max_fraction=0.99, round_to=1, allow_inexact=allow_inexact)
    drop = select_channels(model, groups, L2Norm(), selection)
    masked = copy.deepcopy(model)
    zero_channels(masked, drop, groups=groups, allow_inexact=allow_inexact)
    pruned = remove_channels(model, drop, groups=groups, allow_inexact=allow_inexact)
    return model, masked, pruned, x, groups, drop


def run_sparsetrain(name: str, allow_inexact: bool) -> dict:
    model, masked, pruned, x, groups, drop = prune_sparsetrain(name, allow_inexact)
    by_id = {g.id: g for g in groups}
    inexact = sorted({r.split(" ")[0] for gid in drop for r in by_id[gid].inexact})  # the layer types
    return {"params": n_params(model), "params_after": n_params(pruned), "diff": _max_diff(pruned, masked, x),
            "max_layer_cut": _max_layer_cut(model, pruned), "inexact_rules": inexact[:3], "groups": len(groups),
            "pruned_groups": len(drop)}


def _max_layer_cut(model: nn.Module, pruned: nn.Module) -> float:
    """Largest fraction of output channels removed from any conv/linear (the protocol asks for 30 %)."""
    after = dict(pruned.named_modules())
    cuts = [1 - after[n].weight.shape[0] / m.weight.shape[0] for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and n in after and after[n].weight.shape[0] > 0]
    return max(cuts, default=0.0)


# ----- Torch-Pruning -------------------------------------------------------------------------------------------


def _tp_attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """qkv Linear -> number of heads, for timm attention layers (Torch-Pruning's ViT recipe)."""
    return {m.qkv: m.num_heads for m in model.modules()
            if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)}


def _tp_fix_attention(model: nn.Module) -> None:
    """After head-dim pruning, timm attention reshapes with stale sizes: recompute them from the qkv layer."""
    for m in model.modules():
        if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int):
            if hasattr(m, "head_dim"):
                m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            if hasattr(m, "attn_dim"):
                m.attn_dim = m.num_heads * m.head_dim


class _MaskedReference:
    """Zeroes, in a copy of the unpruned model, the output-side slices each Torch-Pruning group removes.

    Torch-Pruning gives a group's indices in the *current* coordinates of each layer (a layer read through a
    concatenation can be pruned by several groups, one after the other), so the original positions still present
    are tracked per tensor.
    """

    def __init__(self, model: nn.Module) -> None:
        self.masked = copy.deepcopy(model)
        self.names = {id(m): n for n, m in model.named_modules()} | {id(p): n for n, p in model.named_parameters()}
        self.remaining: dict[tuple[str, int], torch.Tensor] = {}

    def _original(self, key: tuple[str, int], size: int, idx: torch.Tensor) -> torch.Tensor:
        left = self.remaining.setdefault(key, torch.arange(size))
        keep = torch.ones(len(left), dtype=torch.bool)
        keep[idx] = False
        self.remaining[key] = left[keep]
        return left[idx]

    def _zero(self, name: str, attr: str, tensor: torch.Tensor, dim: int, idx: torch.Tensor) -> None:
        dim = dim % tensor.ndim
        tensor.data.index_fill_(dim, self._original((f"{name}.{attr}", dim), tensor.shape[dim], idx), 0)

    def apply(self, group, graph) -> None:
        import torch_pruning as tp

        for dep, idxs in group:
            if not graph.is_out_channel_pruning_fn(dep.handler):
                continue
            target = dep.target.module
            name = self.names.get(id(target))
            if name is None:
                continue
            idx = torch.as_tensor(tp._helpers.to_plain_idxs(idxs), dtype=torch.long)
            if isinstance(target, nn.Parameter):
                owner, _, attr = name.rpartition(".")
                dim = getattr(getattr(dep.handler, "__self__", None), "pruning_dim", 0)
                self._zero(owner, attr, getattr(self.masked.get_submodule(owner), attr), dim, idx)
                continue
            module = self.masked.get_submodule(name)
            for attr in ("weight", "bias"):
                tensor = getattr(module, attr, None)
                if not isinstance(tensor, torch.Tensor) or tensor.ndim == 0:
                    continue
                dim = 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) and attr == "weight" else 0
                self._zero(name, attr, tensor, -1 if isinstance(module, nn.LayerNorm) else dim, idx)


def prune_torch_pruning(name: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """(masked reference, pruned model, input): Torch-Pruning's protocol run; the model is pruned in place."""
    import torch_pruning as tp

    model, x = make_model(name)
    reference = _MaskedReference(model)
    heads = _tp_attention_heads(model)
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=FRACTION, ignored_layers=[model.get_classifier()], num_heads=heads,
                                  global_pruning=False)
    for group in pruner.step(interactive=True):
        reference.apply(group, pruner.DG)
        group.prune()
    _tp_fix_attention(model)
    return reference.masked, model, x


def run_torch_pruning(name: str) -> dict:
    masked, pruned, x = prune_torch_pruning(name)
    return {"params": n_params(masked), "params_after": n_params(pruned), "diff": _max_diff(pruned, masked, x),
            "max_layer_cut": _max_layer_cut(masked, pruned)}


def layer_widths(name: str) -> str:
    """Output channels of every conv/linear before and after each tool, with the fraction each removed."""
    model, _, ours, _, _, _ = prune_sparsetrain(name, allow_inexact=False)
    _, theirs, _ = prune_torch_pruning(name)
    after = [dict(m.named_modules()) for m in (ours, theirs)]
    rows, cuts = [f"{'layer':44s} {'before':>6s} {'ours':>6s} {'TP':>6s} {'cut ours':>8s} {'cut TP':>7s}"], []
    for n, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            widths = [a[n].weight.shape[0] for a in after]
            cuts.append([1 - w / m.weight.shape[0] for w in widths])
            rows.append(f"{n:44s} {m.weight.shape[0]:6d} {widths[0]:6d} {widths[1]:6d} {cuts[-1][0]:8.1%} "
                        f"{cuts[-1][1]:7.1%}")
    mean = [sum(c[i] for c in cuts) / len(cuts) for i in range(2)]
    over = [sum(c[i] > 0.4 for c in cuts) for i in range(2)]
    rows.append(f"{name}: mean cut per layer ours {mean[0]:.1%}, Torch-Pruning {mean[1]:.1%}; layers cut over 40 %: "
                f"ours {over[0]}, Torch-Pruning {over[1]} of {len(cuts)}; params kept ours "
                f"{n_params(ours) / n_params(model):.3f}, Torch-Pruning {n_params(theirs) / n_params(model):.3f}")
    return "\n".join(rows)


# ----- driver ----------------------------------------------------------------------------------------------------


def run_one(name: str, tool: str) -> dict:
    start = time.perf_counter()
    try:
        if tool == "torch_pruning":
            out = run_torch_pruning(name)
        else:
            out = run_sparsetrain(name, allow_inexact=tool == "sparsetrain_inexact")
        out["kept"] = out["params_after"] / out["params"]
        out["exact"] = bool(out["diff"] <= ATOL)
    except Exception as err:  # a tool failing on a model is a result, not a crash of the benchmark
        out = {"error": f"{type(err).__name__}: {err}"[:300]}
    out["seconds"] = time.perf_counter() - start
    return out


def _run_isolated(name: str, tool: str, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.structural_coverage", "--one", name, tool, "--fraction", str(FRACTION)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def _cell(r: dict | None) -> str:
    if r is None:
        return "not installed"
    if r.get("error") == "not run":
        return "not run"
    if "error" in r:
        return "fails"
    exact = "exact" if r["exact"] else f"inexact ({r['diff']:.1e})"
    return f"{r['kept']:.2f} {exact}"


def table(results: dict[str, dict[str, dict | None]], markdown: bool) -> str:
    head = ["model", "sparsetrain (exact rules)", "sparsetrain (allow_inexact)", "Torch-Pruning 1.6.1"]
    rows = [[name, *(_cell(results[name].get(t)) for t in TOOLS)] for name in results]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows])


def summary(results: dict[str, dict[str, dict | None]]) -> str:
    lines = []
    for tool in TOOLS:
        rs = [r.get(tool) for r in results.values() if r.get(tool, {}) != {"error": "not run"}]
        if any(r is None for r in rs):
            lines.append(f"{tool}: not installed")
            continue
        ok = [r for r in rs if "error" not in r]
        lines.append(f"{tool}: runs on {len(ok)}/{len(rs)}, exact on {sum(r['exact'] for r in ok)}, "
                     f"mean params kept {sum(r['kept'] for r in ok) / max(len(ok), 1):.3f}")
    return "\n".join(lines)


def main() -> None:
    global FRACTION
    parser = CommandParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--tools", nargs="*", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per model and tool")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "TOOL"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "structural_coverage.json")
    parser.add_argument("--merge", nargs="+", type=Path, help="print one table from earlier --out files")
    parser.add_argument("--layers", action="store_true",
                        help="per conv/linear output channels of --models after each tool (needs torch-pruning)")
    parser.add_argument("--fraction", type=float, default=FRACTION,
                        help="fraction of every prunable group removed by both tools (the protocol: 0.3)")
    args = parser.parse_args()
    if not 0 < args.fraction < 1:
        parser.error(f"--fraction: expected a number between 0 and 1, got {args.fraction}")
    FRACTION = args.fraction
    torch.set_num_threads(1)
    if args.layers:
        print("\n\n".join(layer_widths(name) for name in args.models))
        return
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return
    if args.merge:
        merged = {name: r for path in args.merge for name, r in json.loads(path.read_text())["results"].items()}
        merged = dict(sorted(merged.items(), key=lambda kv: MODELS.index(kv[0]) if kv[0] in MODELS else len(MODELS)))
        print(table(merged, args.markdown))
        print(summary(merged))
        return
    have_tp = importlib.util.find_spec("torch_pruning") is not None
    results: dict[str, dict[str, dict | None]] = {}
    jobs = [(m, t) for m in args.models for t in args.tools]
    start = time.perf_counter()
    for i, (name, tool) in enumerate(jobs):
        r = None if tool == "torch_pruning" and not have_tp else _run_isolated(name, tool, args.timeout)
        results.setdefault(name, {t: {"error": "not run"} for t in TOOLS})[tool] = r
        done = time.perf_counter() - start
        eta = done / (i + 1) * (len(jobs) - i - 1)
        print(f"[{i + 1}/{len(jobs)}] {name} {tool}: {_cell(r)}"
              f"{' ' + r['error'] if r and 'error' in r else ''} (elapsed {done:.0f} s, ETA {eta:.0f} s)",
              file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    versions = {"torch": torch.__version__, "torch_pruning": importlib.metadata.version("torch-pruning")
                if have_tp else None}
    args.out.write_text(json.dumps({"fraction": FRACTION, "atol": ATOL, **versions, "results": results},
                                   indent=1) + "\n")
    print(table(results, args.markdown))
    print(summary(results))


if __name__ == "__main__":
    main()
