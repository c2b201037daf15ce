"""ZeRO stage 3 with 2 real processes (gloo): sparsify -> prune -> fine-tune on timm models equals ZeRO 0.

Under ZeRO 3 each rank holds only its partition of every weight: the regularizer and the packed masks act on
that partition (`engine.segments`), the target sparsity is found from the shards (`pruning.distributed`) and the
phase weights are gathered on rank 0 one parameter at a time (`engine.zero3`); gradual pruning updates masks from the
partitions, and Method 2's filter norms are summed from each rank's share of the weights. The models are timm's resnet18
(narrowed: channels 16-128) and vit_tiny_patch16_224 (2 blocks) on 16x16 / 32x32 synthetic images, so that a test
stays short on 2 CPU cores; the ZeRO-3 code paths do not depend on width or depth.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsetrain.config.schema import PruneConfig
from sparsetrain.pruning.sharded_masks import load_full_masks
from sparsetrain.pruning.sharded_prune import even_range
from tests.core.conftest import tiny_overrides
from tests.core.subprocess_runs import kill_at_checkpoint, run_cli, run_with_snapshots
from tests.helpers.compare import assert_same_weights, assert_weights_alike_away_from_zero

BASE = [
    "data.source=synthetic", "data.num_samples=64", "data.test_fraction=0.25", "train.batch_size=16",
    "train.eval_batch_size=16", "train.log_every=1", "train.checkpoint_every=100", "phases.dense.enabled=false",
    "phases.sparsify.epochs=2", "phases.finetune.epochs=1", "regularizer.alpha0=2e-4", "regularizer.beta=20",
    "prune.rule=global_sparsity", "prune.sparsity=0.8", "tracking.mode=disabled", "train.threads=1",
    "deploy.formats=[]", "deploy.latency=false", "optim.name=sgd", "optim.lr=0.05",
    "deepspeed.param_persistence_threshold=0",  # every parameter partitioned (none kept whole on each rank)
]
MODELS = {
    "resnet18": ["model.name=resnet18", "data.image_size=16", "model.kwargs={channels: [16, 32, 64, 128], "
                 "stem_width: 16}"],
    "vit_tiny": ["model.name=vit_tiny_patch16_224", "data.image_size=32", "data.in_chans=3", "model.kwargs.depth=2"],
}
PHASES = ("sparsify", "prune", "finetune")


def _overrides(out: Path, model: str, *extra: str) -> list[str]:
    return [*BASE, *MODELS[model], f"out_dir={out}", *extra]


def _run(out: Path, model: str, nproc: int, *extra: str, expect_in_log: str = "") -> dict:
    proc = run_cli(_overrides(out, model, *extra), nproc=nproc)
    assert proc.returncode == 0, f"{out.name}: run failed:\n{proc.stderr[-3000:]}"
    assert expect_in_log in proc.stdout + proc.stderr, f"{out.name}: the log does not say {expect_in_log!r}"
    return json.loads((out / "report.json").read_text())


def _weights(out: Path, phase: str) -> dict[str, torch.Tensor]:
    return load_file(str(out / "weights" / f"{phase}.safetensors"))


@pytest.mark.parametrize("model", list(MODELS))
def test_zero3_equals_zero0_with_exact_sparsity_and_packed_mask_shares(tmp_path: Path, model: str) -> None:
    reports = {z: _run(tmp_path / f"zero{z}", model, 2, f"deepspeed.zero_stage={z}") for z in (0, 3)}
    for phase in PHASES:  # 2 ranks sum 2 gradients in either order: only reduction-order rounding may differ
        assert_same_weights(_weights(tmp_path / "zero0", phase), _weights(tmp_path / "zero3", phase), atol=1e-5,
                            rtol=1e-5, label=f"{model} {phase}: ZeRO 3 vs ZeRO 0")
    masks = load_full_masks(tmp_path / "zero3" / "weights" / "masks.safetensors")
    zero0_masks = load_full_masks(tmp_path / "zero0" / "weights" / "masks.safetensors")
    assert all(torch.equal(masks[n], zero0_masks[n]) for n in masks), f"{model}: ZeRO 3 chose other masks"
    final = _weights(tmp_path / "zero3", "finetune")
    for name, keep in masks.items():
        assert bool((final[name][~keep] == 0).all()), f"{model}: {name} has a pruned weight that is not exactly 0"
    total = sum(m.numel() for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(0.8 * total), f"{model}: {pruned} of {total} pruned, target {round(0.8 * total)}"
    # each rank holds its partition of every mask, 1 bit per weight: ceil(share / 8) bytes per layer
    memory = reports[3]["mask_memory"]
    for rank in range(2):
        shares = [even_range(m.numel(), 2, rank) for m in masks.values()]
        assert memory["weights_per_rank"][rank] == sum(hi - lo for lo, hi in shares), f"rank {rank} share"
        assert memory["bytes_per_rank"][rank] == sum(-(-(hi - lo) // 8) for lo, hi in shares), f"rank {rank} bytes"
    assert sum(memory["weights_per_rank"]) == total, "the ranks' mask shares do not add up to the model"
    assert reports[0]["mask_memory"]["weights_per_rank"] == [total, total], "ZeRO 0 holds whole masks"


def _adam(zero_stage: int) -> tuple[str, ...]:
    """The settings of the resume tests' vit_tiny runs (Adam, a checkpoint every 2 steps, 6 fine-tuning steps)."""
    return (f"deepspeed.zero_stage={zero_stage}", "optim.name=adam", "optim.lr=1e-3", "train.checkpoint_every=2",
            "phases.finetune.epochs=2")


# Where the resume tests' runs were killed (phase, checkpoint step), by ZeRO stage: the uninterrupted reference run
# of the stage leaves a copy of its out_dir there (`run_with_snapshots`), which those tests resume.
KILLED_AT = {2: {"sparsify": 2}, 3: {"sparsify": 2, "finetune": 2}}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """out_dir of the uninterrupted 2-rank vit_tiny run with `_adam(zero_stage)`, the reference of every resume
    test of that stage: trained on first use, once per module. Beside it, `killed-<phase>`: the out_dir as a kill at
    that phase's checkpoint (`KILLED_AT`) leaves it, the start of that stage's resume tests (`_killed`)."""
    runs: dict[int, Path] = {}

    def reference(zero_stage: int) -> Path:
        if zero_stage not in runs:
            out = tmp_path_factory.mktemp(f"uninterrupted-zero{zero_stage}") / "run"
            snapshots = [(out.parent / f"killed-{phase}", phase, step)
                         for phase, step in KILLED_AT[zero_stage].items()]
            proc = run_with_snapshots(_overrides(out, "vit_tiny", *_adam(zero_stage)), out, snapshots, nproc=2)
            assert proc.returncode == 0, f"{out.name}: run failed:\n{proc.stderr[-3000:]}"
            runs[zero_stage] = out
        return runs[zero_stage]

    return reference


def _killed(uninterrupted: Callable[[int], Path], zero_stage: int, phase: str, out: Path) -> Path:
    """`out`: a copy of the stage's reference run as killed at its `phase` checkpoint (`KILLED_AT`), to resume."""
    shutil.copytree(uninterrupted(zero_stage).parent / f"killed-{phase}", out)
    return out


def test_zero3_resume_after_kill_equals_uninterrupted(tmp_path: Path, uninterrupted: Callable[[int], Path]) -> None:
    # adam: the optimizer state (exp_avg, exp_avg_sq partitions) must come back too; killed mid-way in finetune,
    # so the packed masks come back from the checkpoint's per-rank files (elastic resume below kills in sparsify)
    extra = _adam(3)
    interrupted = _killed(uninterrupted, 3, "finetune", tmp_path / "interrupted")
    _run(interrupted, "vit_tiny", 2, *extra, expect_in_log="resuming from checkpoint finetune-step0000002")
    reference = uninterrupted(3)
    for phase in PHASES:
        assert_same_weights(_weights(reference, phase), _weights(interrupted, phase), atol=0, rtol=0,
                            label=f"{phase}: resumed vs uninterrupted ZeRO-3 run")


# ZeRO 1 and 2 share DeepSpeed's optimizer (stage_1_and_2.DeepSpeedZeroOptimizer), its checkpoint layout and
# ds_to_universal (they differ in when gradients are reduced), and sparsetrain treats them alike (only stage 3
# has code of its own): the elastic resume of stage 2 stands for both. ZeRO 1 trains in test_pipeline.py.
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_elastic_resume_2_to_1_to_2_ranks_equals_uninterrupted(tmp_path: Path, zero_stage: int,
                                                              uninterrupted: Callable[[int], Path]) -> None:
    # killed on 2 ranks in sparsify (the reference run's copy at that checkpoint), resumed on 1 and killed in
    # finetune, resumed on 2: DeepSpeed's universal checkpoint reshards weights and Adam's state, the packed masks
    # are cut from the per-rank range files
    extra = _adam(zero_stage)
    elastic = _killed(uninterrupted, zero_stage, "sparsify", tmp_path / "elastic")  # on 2 ranks
    kill_at_checkpoint(_overrides(elastic, "vit_tiny", *extra), elastic, 2, phase="finetune", nproc=1)
    _run(elastic, "vit_tiny", 2, *extra, expect_in_log="written by 1 rank, on 2 ranks")
    reference = uninterrupted(zero_stage)
    state = json.loads((elastic / "state.json").read_text())
    assert state["current"] is None and "finetune" in state["completed"], state
    # 1 and 2 ranks sum gradients in another order, which Adam's normalisation amplifies to ~2e-4 here; a resume
    # that dropped Adam's state differs by ~7e-3 after sparsify, one that re-ran or skipped a step by more
    assert_same_weights(_weights(reference, "sparsify"), _weights(elastic, "sparsify"), atol=1e-3, rtol=0,
                        label=f"ZeRO {zero_stage} sparsify: elastic resume vs uninterrupted")
    assert_weights_alike_away_from_zero(_weights(reference, "finetune"), _weights(elastic, "finetune"),
                                        label=f"ZeRO {zero_stage} finetune: elastic resume vs uninterrupted",
                                        atol=1e-3)
    masks = load_full_masks(elastic / "weights" / "masks.safetensors")
    final = _weights(elastic, "finetune")
    assert all(bool((final[n][~keep] == 0).all()) for n, keep in masks.items()), "a pruned weight came back"


def test_elastic_resume_keeps_the_regularizer_state(tmp_path: Path) -> None:
    # Method 2's gradient counts (all-reduced from each rank's partition, saved in checkpoints) after a ZeRO-3 run
    # killed on 2 ranks and resumed on 1 equal those of an uninterrupted 2-rank run
    net = ["data.source=synthetic", "data.num_samples=400", "model.name=lenet5", "train.batch_size=32",
           "phases.dense.enabled=false", "phases.sparsify.epochs=3", "regularizer.name=grad_count",
           "regularizer.count_window=1000", "regularizer.count_tau=1.0", "optim.name=adam", "optim.lr=1e-3",
           "prune.rule=filters", "train.checkpoint_every=8", "train.log_every=4", "tracking.mode=disabled",
           "deepspeed.zero_stage=3", "train.threads=1", "--phase", "sparsify"]
    reference, elastic = tmp_path / "reference", tmp_path / "elastic"
    # the uninterrupted run leaves `elastic`: its out_dir as killed at the step-16 checkpoint
    assert run_with_snapshots([*net, f"out_dir={reference}"], reference, [(elastic, None, 16)],
                              nproc=2).returncode == 0
    proc = run_cli([*net, f"out_dir={elastic}"], nproc=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "written by 2 ranks, on 1 rank\n" in proc.stdout + proc.stderr, "the run did not resume elastically"
    # torch deprecates the collectives DeepSpeed's ZeRO 3 calls on every step; a warning is said at most once
    warned = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert len(warned) == len(set(warned)) and "all_gather_into_tensor" not in proc.stderr, "\n".join(warned)
    states = [torch.load(out / "weights" / "sparsify_regularizer.pt", weights_only=True)
              for out in (reference, elastic)]
    assert sum(float(c.sum()) for c in states[0]["counts"].values()) > 0, "nothing was counted: a vacuous test"
    for key in ("counts", "ratio", "redundant"):
        for name, value in states[0][key].items():
            assert torch.equal(value, states[1][key][name]), f"{key} of {name} differs after the elastic resume"


def test_grad_count_redundancy_reads_whole_weights_under_zero3(tmp_path: Path) -> None:
    # Method 2's cosine test compares whole filters at each window end: under ZeRO 3 the strategy reads each weight
    # through the engine's WholeWeights (one layer gathered at a time), and marks the same filters as ZeRO 0 does
    net = ["data.source=synthetic", "data.num_samples=128", "model.name=lenet5", "train.batch_size=32",
           "phases.dense.enabled=false", "phases.sparsify.epochs=2", "regularizer.name=grad_count",
           "regularizer.count_window=2", "regularizer.redundancy_rho=0.05", "optim.name=sgd", "optim.lr=0.05",
           "prune.rule=filters", "tracking.mode=disabled", "train.threads=1", "deploy.formats=[]",
           "deploy.latency=false", "--phase", "sparsify"]
    states = []
    for stage in (0, 3):
        out = tmp_path / f"zero{stage}"
        proc = run_cli([*net, f"deepspeed.zero_stage={stage}", f"out_dir={out}"], nproc=2)
        assert proc.returncode == 0, f"ZeRO {stage}: run failed:\n{proc.stderr[-3000:]}"
        states.append(torch.load(out / "weights" / "sparsify_regularizer.pt", weights_only=True))
    assert sum(int(m.sum()) for m in states[1]["redundant"].values()) > 0, "no filter marked: a vacuous test"
    for key in ("ratio", "redundant"):
        for name, value in states[0][key].items():
            assert torch.equal(value, states[1][key][name]), f"{key} of {name}: ZeRO 3 differs from ZeRO 0"


def test_zero3_method2_filter_choice_from_shards_equals_zero0_and_the_whole_model(tmp_path: Path) -> None:
    # Method 2: filter norms come from each rank's share of the sparsify weights (partial row sums all-reduced),
    # rank 0 removes the chosen filters; ZeRO 3 and ZeRO 0 give the same smaller model, and the choice is the one
    # the whole-model scores (structural.scoring.L2Norm) make
    import timm

    from sparsetrain.pruning.filters import remove_filters
    from sparsetrain.structural.serialize import ARCH_FILE, load_pruned_model

    method2 = "prune={rule: filters, filter_fraction: 0.5}"
    outs = {z: tmp_path / f"zero{z}" for z in (0, 3)}
    for z, out in outs.items():
        proc = run_cli([o for o in _overrides(out, "resnet18", f"deepspeed.zero_stage={z}") if not
                        o.startswith("prune.")] + [method2, "phases.sparsify.epochs=1"], nproc=2)
        assert proc.returncode == 0, f"ZeRO {z}: run failed:\n{proc.stderr[-3000:]}"
    assert_same_weights(_weights(outs[0], "sparsify"), _weights(outs[3], "sparsify"), atol=1e-5, rtol=1e-5,
                        label="Method 2 sparsify: ZeRO 3 vs ZeRO 0")
    final = {}
    for phase in ("prune", "finetune"):
        models = {z: load_pruned_model(out / "weights" / phase).state_dict() for z, out in outs.items()}
        assert {k: v.shape for k, v in models[0].items()} == {k: v.shape for k, v in models[3].items()}, phase
        assert_same_weights(models[0], models[3], atol=1e-5, rtol=1e-5, label=f"Method 2 {phase}: ZeRO 3 vs 0")
        final[phase] = models[3]
    arch = json.loads((outs[3] / "weights" / "prune" / ARCH_FILE).read_text())
    model = timm.create_model(arch["model_name"], **arch["model_kwargs"])
    model.load_state_dict(_weights(outs[3], "sparsify"))
    shape = (arch["model_kwargs"]["in_chans"], 16, 16)
    reference, _, _ = remove_filters(model, shape, PruneConfig(rule="filters", filter_fraction=0.5))
    assert_same_weights(reference.state_dict(), final["prune"], atol=0, rtol=0,
                        label="Method 2 prune: sharded filter choice vs the whole model's")
    removed = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in reference.parameters())
    assert removed > 0.5 * sum(p.numel() for p in model.parameters()), "no filters removed: a vacuous test"


def test_zero3_gmp_baseline_prunes_gradually_from_shards_like_zero0(tmp_path: Path) -> None:
    # the gmp baseline (prune.schedule=gradual) under ZeRO 3: each mask update chooses the exact target from the
    # ranks' fp32 partitions (radix select over all-reduced histograms) and zeroes the newly pruned weights there;
    # LeNet-300-100 with the default persistence threshold keeps fc2/fc3 whole on every rank (re-gathered after a
    # mask update) and partitions fc1
    extra = ("baselines=[gmp]", "prune.gradual.every_steps=5", "optim.name=sgd", "optim.lr=0.05")
    outs = {z: tmp_path / f"zero{z}" for z in (0, 3)}
    for z, out in outs.items():
        proc = run_cli(tiny_overrides(out, *extra, f"deepspeed.zero_stage={z}"), nproc=2)
        assert proc.returncode == 0, f"ZeRO {z}: run failed:\n{proc.stderr[-3000:]}"
    for phase in ("sparsify", "finetune"):
        zero0, zero3 = (load_file(str(out / "baselines" / "gmp" / "weights" / f"{phase}.safetensors"))
                        for out in outs.values())
        assert_same_weights(zero0, zero3, atol=1e-5, rtol=1e-5, label=f"gmp {phase}: ZeRO 3 vs ZeRO 0")
        kernels = [n for n, w in zero3.items() if w.ndim > 1]
        assert all(torch.equal(zero0[n] == 0, zero3[n] == 0) for n in kernels), f"gmp {phase}: other weights pruned"
        total = sum(zero3[n].numel() for n in kernels)
        assert sum(int((zero3[n] == 0).sum()) for n in kernels) == round(0.8 * total), f"gmp {phase}: inexact target"
