"""Gradual magnitude pruning (Zhu & Gupta 2017) as prune.schedule=gradual: the schedule, masks during the phase,
exact resume, equal masks on 2 ranks under ZeRO 2 (ZeRO 3: tests/core/test_zero3.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsetrain.config import ConfigError, load_config
from sparsetrain.config.schema import PruneConfig
from sparsetrain.pipeline import run_pipeline
from sparsetrain.pruning.schedule import GradualPruning
from tests.core.conftest import tiny_config, tiny_overrides
from tests.core.subprocess_runs import kill_at_checkpoint, run_cli
from tests.core.test_pipeline import assert_same_weights

GMP = ("prune.schedule=gradual", "regularizer={name: l2}", "prune.gradual.every_steps=5", "prune.gradual.end=0.5")


def test_cubic_schedule_steps_and_values() -> None:
    cfg = PruneConfig(rule="global_sparsity", sparsity=0.9, schedule="gradual",
                      gradual={"initial_sparsity": 0.1, "start": 0.1, "end": 0.6, "every_steps": 10})
    pruner = GradualPruning(cfg, total_steps=200)
    steps = [t for t in range(201) if pruner.progress(t) is not None]
    assert steps == list(range(20, 121, 10)), f"pruning steps {steps}: expected t0=20, every 10, until 120"
    values = [pruner.sparsity_at(0.9, pruner.progress(t)) for t in steps]
    assert values[0] == pytest.approx(0.1) and values[-1] == pytest.approx(0.9), f"s_i / s_f: {values}"
    t = 50  # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3
    assert pruner.sparsity_at(0.9, pruner.progress(t)) == pytest.approx(0.9 - 0.8 * (1 - 30 / 100) ** 3)
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), "sparsity must grow at every step"


def test_masks_follow_the_schedule_per_layer() -> None:
    cfg = PruneConfig(rule="layer_sparsity", sparsity=0.5, layer_sparsity={"b": 0.8}, schedule="gradual",
                      gradual={"every_steps": 1, "end": 1.0})
    pruner = GradualPruning(cfg, total_steps=4)
    weights = {"a": torch.randn(50, 20), "b": torch.randn(100)}
    masks = pruner.masks(2, weights)  # progress 0.5: s = s_f (1 - 0.5^3)
    assert (~masks["a"]).sum() == round(0.5 * 0.875 * 1000) and (~masks["b"]).sum() == round(0.8 * 0.875 * 100)
    assert pruner.masks(0, weights) is not None and pruner.masks(5, weights) is None, "steps outside [t0, t_end]"


def test_gradual_needs_a_sparsity_rule() -> None:
    with pytest.raises(ConfigError, match=r"^prune.schedule: gradual needs a target-sparsity rule"):
        load_config(None, ["prune.schedule=gradual", "prune.rule=global_threshold"])
    with pytest.raises(ConfigError, match=r"^prune.gradual: end 0.2 must be after start 0.3"):
        load_config(None, ["prune.gradual.start=0.3", "prune.gradual.end=0.2"])


def _sparsity(weights: dict[str, torch.Tensor]) -> float:
    kernels = [w for w in weights.values() if w.ndim > 1]
    return 1 - sum(int(torch.count_nonzero(w)) for w in kernels) / sum(w.numel() for w in kernels)


def test_gradual_run_reaches_the_target_during_sparsify(run_dir: Path) -> None:
    report = run_pipeline(tiny_config(run_dir, *GMP, "tracking.mode=offline"))
    after_sparsify = load_file(str(run_dir / "weights" / "sparsify.safetensors"))
    assert _sparsity(after_sparsify) == pytest.approx(0.8, abs=1e-6), "GMP did not reach prune.sparsity in sparsify"
    phases = report["phases"]
    assert phases["prune"]["metric"] == phases["sparsify"]["metric"], "the prune phase changed a GMP model"
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sparsity = [m["sparsity"] for m in logged if m.get("phase") == "sparsify" and "sparsity" in m]
    assert sparsity == sorted(sparsity) and sparsity[-1] == pytest.approx(0.8, abs=1e-4), f"logged {sparsity}"
    assert 0 < sparsity[0] < 0.8, f"the first logged window should be mid-schedule: {sparsity}"


def test_gradual_run_resumes_exactly(tmp_path: Path) -> None:
    # Masks change at steps 0, 20, ..., 100, 119 of 132; a resume at checkpoint 21, 28, 35 or 42 trains 5-19 steps
    # before the next change, with the restored masks only: without them, pruned weights would train again.
    extra = (*GMP, "phases.sparsify.epochs=6", "train.checkpoint_every=7", "prune.gradual.every_steps=20",
             "prune.gradual.end=0.9")
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    kill_at_checkpoint(tiny_overrides(interrupted, *extra), interrupted, 21, phase="sparsify")
    tag = json.loads((interrupted / "state.json").read_text())["current"]["tag"]
    assert list((interrupted / "checkpoints" / tag).glob("masks-rank*.safetensors")), \
        "the checkpoint of a gradual phase lacks its masks"
    assert run_cli(tiny_overrides(interrupted, *extra)).returncode == 0
    run_pipeline(tiny_config(reference, *extra))  # the uninterrupted run: in this process (no start-up to pay)
    for phase in ("sparsify", "finetune"):
        assert_same_weights(load_file(str(reference / "weights" / f"{phase}.safetensors")),
                            load_file(str(interrupted / "weights" / f"{phase}.safetensors")), atol=1e-6, rtol=1e-6,
                            label=f"{phase}: resumed vs uninterrupted GMP run")


def test_two_ranks_zero2_choose_the_masks_of_one_rank(tmp_path: Path) -> None:
    sgd = ("optim.name=sgd", "optim.lr=0.05")  # float-precision agreement between 1 and 2 ranks (test_distributed)
    runs = {"np1": (1, "deepspeed.zero_stage=0"), "np2": (2, "deepspeed.zero_stage=2")}
    for name, (nproc, zero) in runs.items():
        result = run_cli(tiny_overrides(tmp_path / name, *GMP, *sgd, zero), nproc=nproc)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    one, two = (load_file(str(tmp_path / name / "weights" / "sparsify.safetensors")) for name in runs)
    for name in one:
        if one[name].ndim > 1:
            assert torch.equal(one[name] == 0, two[name] == 0), f"{name}: 2 ranks under ZeRO 2 pruned other weights"
    assert_same_weights(one, two, atol=1e-5, rtol=1e-4, label="GMP sparsify, 1 rank vs 2 ranks ZeRO 2")


def test_gradual_and_the_gmp_baseline_load_under_zero3(tmp_path: Path) -> None:
    # ZeRO 3 chooses gradual masks from the partitions (tests/core/test_zero3.py runs it against ZeRO 0): neither a
    # gradual schedule nor the gmp baseline, whose sub-run prunes gradually with the main run's ZeRO stage, is refused
    cfg = tiny_config(tmp_path, "deepspeed.zero_stage=3", *GMP)
    assert cfg.deepspeed.zero_stage == 3 and cfg.prune.schedule == "gradual"
    from sparsetrain.baselines import baseline_config

    main = tiny_config(tmp_path, "deepspeed.zero_stage=3", "baselines=[gmp]")
    sub = baseline_config(main, "gmp", 0.7)
    assert (sub.deepspeed.zero_stage, sub.prune.schedule, sub.prune.sparsity) == (3, "gradual", 0.7)


@pytest.mark.parametrize("rule", [{"rule": "global_sparsity", "sparsity": 0.8},
                                  {"rule": "layer_sparsity", "sparsity": 0.6, "layer_sparsity": {"b": 0.9}}])
def test_masks_from_shards_equal_masks_from_whole_weights(rule: dict) -> None:
    # ZeRO 3's path (GradualPruning.shard_masks; multi-rank in tests/core/test_zero3.py) on one rank's whole weights
    from sparsetrain.pruning.distributed import WeightShard

    gen = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(7, 5, generator=gen), "b": torch.randn(3, 3, 4, generator=gen)}
    weights["a"][2] = 0.5  # ties at the threshold
    pruner = GradualPruning(PruneConfig(**rule, schedule="gradual", gradual={"every_steps": 3, "end": 0.5}), 40)
    sizes = {n: w.numel() for n, w in weights.items()}
    for step in (3, 9, 20):
        expected = pruner.masks(step, weights)
        shards = [WeightShard(n, 0, w.reshape(-1), w.numel(), tuple(w.shape)) for n, w in weights.items()]
        got = pruner.shard_masks(step, shards, list(weights), sizes)
        for name, w in weights.items():
            assert torch.equal(got.shards[name].mask.unpack(w.shape), expected[name]), f"step {step}: {name}"
    assert pruner.shard_masks(4, shards, list(weights), sizes) is None, "step 4 is no pruning step"
