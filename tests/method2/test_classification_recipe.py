"""configs/mobilenetv3_imagefolder.yaml (Method 2 on your ImageFolder and trained timm MobileNetV3) runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsetrain.cli import main
from sparsetrain.config import load_config
from sparsetrain.config.schema import ModelConfig
from sparsetrain.deepspeed_linear import STOCK_LINEAR
from sparsetrain.models.factory import build_model
from tests.helpers.image_tree import write_image_tree

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "mobilenetv3_imagefolder.yaml"


def test_the_recipe_is_method2_with_a_filter_fraction_a_small_mobilenetv3_survives() -> None:
    """Trial 25: there was no Method 2 classification recipe; copying segmentation_base's filter_fraction 0.5 left a
    trained mobilenetv3_small_050 at chance."""
    cfg = load_config(RECIPE, ["data.path=/nowhere"])
    assert (cfg.model.name, cfg.data.source, cfg.regularizer.name, cfg.prune.rule) == (
        "mobilenetv3_small_050", "imagefolder", "grad_count", "filters")
    assert cfg.phases.dense.epochs == 0 and cfg.prune.filter_fraction <= 0.125, cfg.prune


@pytest.mark.parametrize("zero_stage", [0, 3])
def test_the_recipe_runs_from_a_users_checkpoint_on_an_imagefolder(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                   zero_stage: int) -> None:
    # ZeRO 3: DeepSpeed's engine replaces torch.nn.functional.linear process-wide, which torch.fx cannot trace
    # through timm's Linear (MobileNetV3's classifier); the prune phase failed with "cannot trace MobileNetV3"
    tree = write_image_tree(tmp_path / "ds", classes=4, per_class=(8, 4), side=16)
    torch.manual_seed(0)
    ckpt = tmp_path / "mine.pt"
    torch.save(build_model(ModelConfig(name="mobilenetv3_small_050"), 3, 4, (3, 16, 16)).state_dict(), ckpt)
    out = tmp_path / "run"
    code = main(["run", str(RECIPE), f"data.path={tree}", f"model.checkpoint={ckpt}", f"out_dir={out}",
                 "data.image_size=16", "phases.sparsify.epochs=1", "phases.finetune.epochs=1", "tracking.mode=disabled",
                 "deploy.latency=false", "deploy.formats=[onnx]", "report.plots=false",
                 f"deepspeed.zero_stage={zero_stage}"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert torch.nn.functional.linear is STOCK_LINEAR, "the run left DeepSpeed's F.linear in the process"
    report = json.loads((out / "report.json").read_text())
    assert set(report["phases"]) >= {"dense", "sparsify", "prune", "finetune"}, report["phases"]
    assert report["params"]["pruned"] < report["params"]["dense"], report["params"]
    assert "model.checkpoint: loaded 244 tensors" in err, err
    assert (out / "export" / "model.onnx").is_file()
