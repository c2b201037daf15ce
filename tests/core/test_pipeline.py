"""End-to-end pipeline behaviour on tiny runs (single process, real DeepSpeed engines)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsetrain.deploy.bitmask import BITMASK_FILE, load_sparse
from sparsetrain.pipeline import run_pipeline
from sparsetrain.pruning.sharded_masks import load_full_masks
from tests.core.conftest import tiny_config
from tests.helpers.compare import assert_same_weights, assert_weights_alike_away_from_zero
from tests.helpers.wandb_log import read_runs


def _weights(run: Path, phase: str) -> dict[str, torch.Tensor]:
    return load_file(str(run / "weights" / f"{phase}.safetensors"))


# Why the two gradient paths are compared the way they are: a weight sitting at zero takes the sign of the l0 pull
# (alpha*beta*sign(w)) from rounding-level differences, so once training runs, the paths drift by lr*alpha*beta per
# sign flip, and the flips depend on the machine's float rounding. What is well defined is (1) one step from the
# same state, where every weight has the same sign on both paths, and (2) over many steps, the losses and the
# weights that stay away from zero. SGD: Adam divides by sqrt(v) and turns any difference into lr-sized steps.
SGD_STEP = ("optim.name=sgd", "optim.lr=0.05")


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_one_step_of_the_gradient_hook_equals_autograd_reference(tmp_path: Path, zero_stage: int) -> None:
    one_step = (f"deepspeed.zero_stage={zero_stage}", "phases.sparsify.epochs=0.02", *SGD_STEP)  # 22 steps/epoch
    runs = {"hook": "regularizer.backend=torch", "autograd": "regularizer.gradient_path=autograd",
            "no_l0": "regularizer.alpha0=0"}
    for name, kernel in runs.items():
        run_pipeline(tiny_config(tmp_path / name, kernel, *one_step), ["sparsify"])
    hook, ref, no_l0 = (_weights(tmp_path / name, "sparsify") for name in runs)
    initial = _initial_fc1(tmp_path)
    near_zero = int((initial.abs() < 1e-3).sum())
    assert near_zero > 50, f"only {near_zero} fc1 weights start near zero; the sign cases would go untested"
    assert_same_weights(hook, ref, atol=1e-6, rtol=0, label="hook vs autograd after one step")
    l0_effect = (hook["fc1.weight"] - no_l0["fc1.weight"]).abs().max().item()
    assert l0_effect > 100 * 1e-6, f"the l0 term moved fc1 by only {l0_effect:.2g}: the comparison could not fail"


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_gradient_hook_trains_like_autograd_reference(tmp_path: Path, zero_stage: int) -> None:
    extra = (f"deepspeed.zero_stage={zero_stage}", "phases.sparsify.epochs=2", *SGD_STEP)
    run_pipeline(tiny_config(tmp_path / "hook", "regularizer.backend=torch", *extra, "tracking.mode=offline"),
                 ["sparsify"])
    run_pipeline(tiny_config(tmp_path / "autograd", "regularizer.gradient_path=autograd", *extra), ["sparsify"])
    hook, ref = _weights(tmp_path / "hook", "sparsify"), _weights(tmp_path / "autograd", "sparsify")
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
               if "loss" in json.loads(line)] for run in ("hook", "autograd")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3), "logged losses differ between the two paths"
    # A missing or mis-scaled l0 term moves fc1's weights near |w| = 0.02 by ~6e-3 over these 44 steps.
    assert_weights_alike_away_from_zero(hook, ref, "hook vs autograd after 44 steps")
    moved = (hook["fc1.weight"] - _initial_fc1(tmp_path)).abs().max()
    assert moved > 1e-3, "training did not change the weights; the comparison would be vacuous"


def _initial_fc1(tmp_path: Path) -> torch.Tensor:
    from sparsetrain.models.factory import build_model

    cfg = tiny_config(tmp_path / "unused")
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, 1, 10, (1, 8, 8)).fc1.weight.detach()


@pytest.mark.parametrize("extra", [("deepspeed.zero_stage=0",), ("deepspeed.zero_stage=2",),
                                   ("deepspeed.zero_stage=1", "deepspeed.precision=bf16")])
def test_pruned_weights_stay_zero_through_finetuning(run_dir: Path, extra: tuple[str, ...]) -> None:
    report = run_pipeline(tiny_config(run_dir, *extra, "phases.finetune.epochs=2", "regularizer.finetune_l0=true"))
    masks = load_full_masks(run_dir / "weights" / "masks.safetensors")
    pruned, final = _weights(run_dir, "prune"), _weights(run_dir, "finetune")
    for name, mask in masks.items():
        assert torch.all(final[name][mask == 0] == 0), f"{name}: a pruned weight was revived during fine-tuning"
        kept_changed = (final[name][mask == 1] != pruned[name][mask == 1]).float().mean()
        assert kept_changed > 0.5, f"{name}: kept weights did not train ({kept_changed:.2f} changed)"
    assert report["sparsity"] >= 0.8, f"final sparsity {report['sparsity']} below the 0.8 target"


def test_report_contents_and_compressed_file(run_dir: Path) -> None:
    report = run_pipeline(tiny_config(run_dir, "phases.dense.enabled=true", "phases.dense.epochs=1",
                                      "report.plots=true"))
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report)), "report.json differs from the returned report"
    assert report["format_version"] == 2 and report["final_phase"] == "finetune", report
    assert list(report["phases"]) == ["dense", "sparsify", "prune", "finetune"], "phases not keyed by name in order"
    state = json.loads((run_dir / "state.json").read_text())["completed"]
    for phase, result in report["phases"].items():
        assert 0.0 <= result["metric"] <= 100.0, f"{phase}.metric missing or out of range"
        assert result == {k: v for k, v in state[phase].items() if k != "wall_time_s"}, f"{phase}: not state.json's"
    layers = report["layers"]
    assert [layer["name"] for layer in layers] == ["fc1.weight", "fc2.weight", "head.weight"]
    final = _weights(run_dir, "finetune")
    nonzero = sum(int(torch.count_nonzero(final[layer["name"]])) for layer in layers)
    assert nonzero == sum(layer["nonzero"] for layer in layers), "per-layer non-zero counts not from the weights"
    assert report["sparsity"] == pytest.approx(1 - nonzero / sum(layer["total"] for layer in layers))
    assert report["compression_ratio"] == pytest.approx(report["params"]["total"] / report["params"]["nonzero"])
    assert report["params"]["total"] == sum(t.numel() for t in final.values()), "params.total is not the param count"
    assert report["world_size"] == 1 and set(report["wall_time_s"]) == {"dense", "sparsify", "prune", "finetune"}
    compressed = run_dir / "export" / BITMASK_FILE
    assert report["bytes"]["compressed"] == compressed.stat().st_size < report["bytes"]["dense"]
    assert report["bytes"]["dense"] == (run_dir / "weights" / "dense.safetensors").stat().st_size, \
        "bytes.dense is the dense model's safetensors file size, header included"
    restored = load_sparse(compressed)
    for name, tensor in final.items():
        assert torch.equal(restored[name], tensor), f"{name}: compressed file does not restore the weights"
    for plot in ("layer_sparsity.png", "weight_hist.png"):
        assert (run_dir / plot).stat().st_size > 1000, f"{plot} missing"


def test_report_plots_false_draws_no_png_and_names_earlier_ones(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    """report.plots=false (the tiny test configs' setting): no PNG in the run folder, one line saying so; a re-run
    with plots on draws them, and a later one with plots off names them as kept, not part of its report."""
    run_pipeline(tiny_config(run_dir))
    assert not list(run_dir.rglob("*.png")), sorted(run_dir.rglob("*.png"))
    said = [line for line in capsys.readouterr().err.splitlines() if "[report] report.plots=false" in line]
    assert len(said) == 1 and said[0].endswith("no plots drawn (report.json holds their numbers; report.plots=true "
                                               "draws them)"), said
    run_pipeline(tiny_config(run_dir, "report.plots=true"))  # report.* may change on a re-run
    drawn = sorted(p.name for p in run_dir.glob("*.png"))
    assert drawn == ["accuracy_vs_sparsity.png", "layer_sparsity.png", "weight_hist.png"], drawn
    capsys.readouterr()
    run_pipeline(tiny_config(run_dir))
    assert sorted(p.name for p in run_dir.glob("*.png")) == drawn, "a setting that skips drawing deleted a plot"
    assert ("report.plots=false: no plots drawn (report.json holds their numbers; report.plots=true draws them); "
            "layer_sparsity.png, weight_hist.png, accuracy_vs_sparsity.png are kept from an earlier run, not part "
            "of this report") in capsys.readouterr().err


@pytest.mark.parametrize(("phase", "start"), [("sparsify", "dense"), ("finetune", "prune")])
def test_a_phase_of_zero_epochs_hands_its_starting_weights_on_unchanged(run_dir: Path, phase: str, start: str,
                                                                        capsys: pytest.CaptureFixture) -> None:
    report = run_pipeline(tiny_config(run_dir, "phases.dense.enabled=true", "phases.dense.epochs=0",
                                      f"phases.{phase}.epochs=0", "prune.sparsity=0.3"))  # dense: initial weights
    before, after = _weights(run_dir, start), _weights(run_dir, phase)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before), \
        f"{phase} of 0 epochs changed the weights it started from"
    assert report["phases"][phase]["steps"] == 0, report["phases"][phase]
    said = "the untrained initial weights are handed on" in capsys.readouterr().err
    assert said == (phase == "sparsify"), "sparsify of 0 epochs without model.checkpoint must say what it hands on"


def test_wandb_offline_run_holds_logged_metrics(run_dir: Path) -> None:
    run_pipeline(tiny_config(run_dir, "tracking.mode=offline"))
    runs = read_runs(run_dir)
    assert len(runs) == 1, f"expected one offline W&B run, found {len(runs)}"
    assert runs[0]["run_id"] == (run_dir / "wandb_run_id.txt").read_text().strip()
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_lines = [m for m in logged if "loss" in m and "event" not in m]
    wandb_steps = {h["_step"]: h for h in runs[0]["history"]}
    for line in train_lines:
        entry = wandb_steps.get(line["global_step"])
        assert entry is not None, f"W&B lacks step {line['global_step']}"
        assert entry["loss"] == pytest.approx(line["loss"]), f"W&B loss differs at step {line['global_step']}"
    assert any("finetune/metric" in h for h in runs[0]["history"]), "final metric not logged to W&B"
    for line in train_lines:  # throughput of every logged window, in metrics.jsonl and W&B
        entry = wandb_steps[line["global_step"]]
        for key in ("samples_per_s", "step_time_ms", "cpu_time_ms"):
            assert line[key] > 0 and entry[key] == pytest.approx(line[key]), f"{key} at step {line['global_step']}"
        assert line["samples_per_s"] == pytest.approx(64e3 / line["step_time_ms"]), "samples/s != batch / step time"


@pytest.mark.parametrize("flush", [True, False])
def test_flush_denormal_switch(flush: bool) -> None:
    from sparsetrain.config.schema import TrainConfig
    from sparsetrain.pipeline import configure_cpu

    assert TrainConfig().flush_denormal, "flushing subnormals must be on by default"
    try:
        configure_cpu(TrainConfig(flush_denormal=flush))
        subnormal = torch.full((8,), 1e-39)  # below float32's smallest normal, 1.18e-38
        product = float((subnormal * 1.0)[0])
    finally:
        torch.set_flush_denormal(True)
    assert (product == 0.0) == flush, f"flush_denormal={flush}: 1e-39 * 1 gave {product}"


def test_bf16_batchnorm_model_runs_on_cpu(run_dir: Path) -> None:
    """DeepSpeed bf16 casts parameters only; batch norm needs its running statistics cast too.

    64×64 synthetic images, not the 8×8 digits: when test_resnet's last stage sees 1×1 feature maps (inputs up to
    32×32), torch's CPU bf16 convolution returns NaN weight gradients in about half of the steps (torch 2.14.1,
    oneDNN 3.12; reproduced without DeepSpeed). DeepSpeed skipped those steps silently; sparsetrain now stops.
    """
    cfg = tiny_config(run_dir, "model.name=test_resnet", "deepspeed.precision=bf16", "deepspeed.zero_stage=2",
                      "data.source=synthetic", "data.image_size=64", "phases.sparsify.epochs=0.3",
                      "phases.finetune.epochs=0.2")
    run_pipeline(cfg)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["sparsity"] >= 0.8 - 1e-6, f"sparsity {report['sparsity']}"
    assert 0.0 <= report["phases"]["finetune"]["metric"] <= 100.0, f"metric {report['phases']['finetune']}"


def test_the_start_line_and_report_say_how_the_run_trains(run_dir: Path, capfd: pytest.CaptureFixture) -> None:
    """Trial 16: bf16, ZeRO-Offload and gradient checkpointing were in effect but only config.yaml said so; now the
    run's start line and report.json's header do too."""
    report = run_pipeline(tiny_config(run_dir, "model.name=test_resnet", "deepspeed.precision=bf16",
                                      "deepspeed.zero_stage=2", "deepspeed.offload_optimizer=cpu",
                                      "train.grad_checkpointing=true", "data.source=synthetic", "data.image_size=64",
                                      "phases.sparsify.epochs=0.2", "phases.finetune.epochs=0.1"))
    said = [line.split(" ", 1)[1] for line in capfd.readouterr().err.splitlines() if " training: " in line]
    assert said == ["training: 1 rank on cpu, ZeRO 2, bf16 (fp32 masters), optimizer state offloaded to cpu "
                    "(ZeRO-Offload), gradient checkpointing"], said
    header = {key: report[key] for key in ("world_size", "zero_stage", "precision", "offload_optimizer",
                                           "grad_checkpointing")}
    assert header == {"world_size": 1, "zero_stage": 2, "precision": "bf16", "offload_optimizer": "cpu",
                      "grad_checkpointing": True}
    assert json.loads((run_dir / "report.json").read_text())["offload_optimizer"] == "cpu"
