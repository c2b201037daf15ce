"""The segmentation recipes load against the schema, and their data and model fit together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparsetrain.config import load_config
from sparsetrain.data import build_data
from sparsetrain.models.factory import build_model
from sparsetrain.tasks import build_task

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("recipe", ["unet_synthetic", "mobilenetv3_synthetic"])
def test_synthetic_recipe_builds(recipe: str) -> None:
    cfg = load_config(CONFIGS / f"{recipe}.yaml", ["data.num_samples=16"])
    assert cfg.task == "segmentation" and cfg.regularizer.name == "grad_count" and cfg.prune.rule == "filters"
    data = build_data(cfg.data, cfg.seed)
    build_model(cfg.model, data.in_chans, data.num_classes, data.input_shape)  # runs one forward pass
    assert build_task(cfg.task, data.num_classes).name == "segmentation"


def test_drive_recipe_reads_drive_layout(tmp_path: Path) -> None:
    """DRIVE file names (NN_training.tif images, NN_manual1.gif 0/255 masks) in train/ and test/."""
    rng = np.random.default_rng(0)
    for split, numbers in (("training", (21, 22)), ("test", (1, 2))):
        folder = tmp_path / ("train" if split == "training" else "test")
        (folder / "images").mkdir(parents=True)
        (folder / "masks").mkdir()
        for n in numbers:
            Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(
                folder / "images" / f"{n:02d}_{split}.tif")
            Image.fromarray((rng.random((40, 36)) < 0.1).astype(np.uint8) * 255).save(
                folder / "masks" / f"{n:02d}_manual1.gif")
    cfg = load_config(CONFIGS / "unet_drive.yaml", [f"data.path={tmp_path}"])
    data = build_data(cfg.data, cfg.seed)
    assert data.num_classes == 1 and data.input_shape == (3, cfg.data.image_size, cfg.data.image_size)
    assert (len(data.train), len(data.test)) == (2, 2)
    build_model(cfg.model, data.in_chans, data.num_classes, data.input_shape)


SEG_MODELS = "lraspp_mobilenetv3_large_100, lraspp_mobilenetv3_small_100, unet, unet_small, unet_tiny"
MODEL_TASK = [
    (("model.name=unet_tiny", "phases.dense.enabled=true", "phases.dense.epochs=1"),
     "error: model.name: unet_tiny outputs a mask per pixel (segmentation) but data.source=digits gives one class per "
     "image (classification); pick a classifier, or segmentation data (data.source=seg_synthetic|seg_folder|voc)"),
    (("model.name=resnet18", "data.source=seg_synthetic", "task=segmentation", "data.num_samples=16"),
     "error: model.name: resnet18 outputs one class per image (classification) but data.source=seg_synthetic gives a "
     f"mask per pixel (segmentation); pick a segmentation model ({SEG_MODELS}), or classification data "
     "(data.source=digits|mnist1d|synthetic|npz|idx|imagefolder)"),
]


@pytest.mark.parametrize(("overrides", "error"), MODEL_TASK)
@pytest.mark.parametrize("command", [["run"], ["run", "--dry-run"], ["config"]])
def test_a_model_for_the_other_task_is_one_line_before_any_phase(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 command: list[str], overrides: tuple[str, ...],
                                                                 error: str) -> None:
    """Fresh-user trial: unet_tiny on digits ran the dense phase into a traceback from the loss (`only batches of
    spatial targets supported`, exit 1); `run`, `run --dry-run` and `config` now refuse alike (`plan.check_model`)."""
    from sparsetrain.cli import main
    from tests.core.conftest import tiny_overrides

    out = tmp_path / "run"
    capsys.readouterr()
    assert main([*command, *tiny_overrides(out, "tracking.mode=offline", *overrides)]) == 2
    printed, err = capsys.readouterr()
    assert err.strip() == error and printed == "", err
    assert not out.exists(), "the refused run wrote its out_dir"


@pytest.mark.parametrize("recipe", ["unet_synthetic", "mobilenetv3_synthetic", "quickstart"])
def test_the_recipes_models_fit_their_task(recipe: str) -> None:
    from sparsetrain.plan import check_model, data_sizes

    cfg = load_config(CONFIGS / f"{recipe}.yaml", ["data.num_samples=16"])
    check_model(cfg, data_sizes(cfg))


def _bad_seg_folder(root: Path, fault: str) -> Path:
    """A seg_folder of two 12×12 image/mask pairs with one `fault`: a mask of another size than its image, a mask
    value outside the classes (128 in a 0/255 binary folder), or an image without a mask."""
    from tests.segmentation.test_seg_data import disk_mask, write_pair

    write_pair(root, "a", disk_mask(12, 255, 0))
    write_pair(root, "b", disk_mask(12, {"value": 128}.get(fault, 255), 1),
               mask_stem="other" if fault == "no_mask" else None)
    if fault == "size":
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "masks" / "b.png")
    return root


@pytest.mark.parametrize("fault", ["size", "value", "no_mask"])
def test_a_dry_run_refuses_a_bad_segmentation_folder_as_the_run_does(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                     fault: str) -> None:
    """Fresh-user trial 15: `run --dry-run` on a seg_folder that is here and bad exited 0 with `data not read here
    (...); sizes from the config: 3×32×32 inputs, 1000 classes` where the run refuses it in one line, exit 2: the
    dry run reads data that is on this machine and refuses what the run refuses."""
    from sparsetrain.cli import main

    data = _bad_seg_folder(tmp_path / "data", fault)
    command = ["run", str(CONFIGS / "unet_synthetic.yaml"), "data.source=seg_folder", "data.image_size=32",
               f"data.path={data}", "tracking.mode=disabled"]
    capsys.readouterr()
    assert main([*command, f"out_dir={tmp_path / 'run'}"]) == 2
    refused = capsys.readouterr().err.strip()
    assert "\n" not in refused and refused.startswith("error: "), refused
    assert main([*command, "--dry-run"]) == 2
    printed, err = capsys.readouterr()
    assert err.strip() == refused and "data not read here" not in printed, printed + err


def test_a_dry_run_without_the_data_here_plans_a_segmentation_head_not_1000_classes(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Data on the cluster, not here: the dry run still plans from the config, but a segmentation model gets the
    task's outputs (one logit channel for binary masks, or model.kwargs.num_classes), not ImageNet's 1000 classes."""
    from sparsetrain.cli import main

    command = ["run", str(CONFIGS / "unet_synthetic.yaml"), "data.source=seg_folder", "data.image_size=32",
               f"data.path={tmp_path / 'on-the-cluster'}", "--dry-run"]
    capsys.readouterr()
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert (f"data not read here (data.path: segmentation folder not found: {tmp_path / 'on-the-cluster'}); sizes "
            "from the config: 3×32×32 inputs, 1 output channel (binary masks; model.kwargs.num_classes=K for K "
            "classes)") in printed, printed
    assert "1000" not in printed, printed
    assert main([*command, "model.kwargs={base_width: 16, depth: 3, num_classes: 3}"]) == 0
    assert "3×32×32 inputs, 3 classes" in capsys.readouterr().out
