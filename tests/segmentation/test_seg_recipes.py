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
