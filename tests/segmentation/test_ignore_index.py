"""data.ignore_index: void pixels (Pascal VOC / Cityscapes 255) left out of the loss, the metrics and the class count,
read from real palette PNGs with a 255 border, and a tiny Method 2 run on them whose export `eval` scores the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsetrain.config import load_config
from sparsetrain.config.schema import DataConfig
from sparsetrain.data.base import DataError
from sparsetrain.data.segmentation import build_segmentation_data
from sparsetrain.deploy.evaluate import evaluate_target
from sparsetrain.pipeline import run_pipeline
from sparsetrain.tasks.segmentation import SegmentationTask

VOID = 255


def void_border(target: torch.Tensor, width: int = 2) -> torch.Tensor:
    """`target` (N × H × W) with a border of `width` pixels set to VOID."""
    out = target.clone()
    out[:, :width], out[:, -width:], out[:, :, :width], out[:, :, -width:] = VOID, VOID, VOID, VOID
    return out


def inner(t: torch.Tensor, width: int = 2) -> torch.Tensor:
    """The last two dims of `t` without their border of `width`."""
    return t[..., width:-width, width:-width]


@pytest.mark.parametrize("num_classes", [1, 3])
def test_ignored_pixels_count_as_if_cropped_away(num_classes: int) -> None:
    """Loss terms and every metric on an image with a void border equal those on the image cropped to its inside,
    whatever the model predicts on the border; its gradient there is zero."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, num_classes, 12, 10, generator=gen, requires_grad=True)
    target = torch.randint(0, max(num_classes, 2), (2, 12, 10), generator=gen)
    task, plain = SegmentationTask(num_classes, ignore_index=VOID), SegmentationTask(num_classes)
    voided = void_border(target)
    got, want = task.loss_terms(logits, voided), plain.loss_terms(inner(logits), inner(target))
    for name, a, b in zip(("pixel loss", "dice loss"), got, want, strict=True):
        torch.testing.assert_close(a, b, msg=f"{name}: ignored border {a} != cropped {b}")
    task.loss(logits, voided).backward()
    border = logits.grad.clone()
    border[..., 2:-2, 2:-2] = 0
    assert not border.any(), "ignored pixels got a gradient"
    other = logits.detach().clone()
    other[..., :2, :] = -other[..., :2, :] * 7  # other predictions on the void border
    metrics = task.finalize(task.batch_stats(other, voided))
    cropped = plain.finalize(plain.batch_stats(inner(logits.detach()), inner(target)))
    assert metrics.pop("per_class_iou", None) == pytest.approx(cropped.pop("per_class_iou", None)), \
        "per-class IoU with a void border differs from that of the cropped image"
    assert metrics == pytest.approx(cropped), "metrics with a void border differ from those of the cropped image"
    as_class = plain.finalize(plain.batch_stats(other, torch.where(voided == VOID, 1, voided)))
    assert as_class["metric"] != pytest.approx(metrics["metric"]), "border pixels as a class should change the Dice"


def test_all_pixels_ignored_gives_a_finite_loss() -> None:
    task = SegmentationTask(3, ignore_index=VOID)
    pixel, dice = task.loss_terms(torch.randn(1, 3, 4, 4), torch.full((1, 4, 4), VOID))
    assert torch.isfinite(pixel) and torch.isfinite(dice), (pixel, dice)


# ---------------------------------------------------------------------------------------------- folders on disk


def palette_folder(root: Path, labels: int, n: int = 6, size: int = 24) -> Path:
    """root/images/*.jpg and root/masks/*.png (palette PNGs, labels 0..labels-1, a void border of 255)."""
    (root / "images").mkdir(parents=True), (root / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    palette = [v for i in range(256) for v in ((37 * i) % 256, (91 * i) % 256, (13 * i) % 256)]
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        for label in range(1, labels):
            y, x = rng.integers(3, size - 9, 2)
            mask[y:y + 6, x:x + 6] = label
        mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = VOID, VOID, VOID, VOID
        image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8) + (mask[..., None] % VOID * 60).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:03d}.jpg", quality=95)
        png = Image.fromarray(mask, "P")
        png.putpalette(palette)
        png.save(root / "masks" / f"{i:03d}.png")
    return root


def test_a_void_border_without_ignore_index_is_refused_naming_the_field(tmp_path: Path) -> None:
    folder = palette_folder(tmp_path, labels=3)
    with pytest.raises(DataError) as err:
        build_segmentation_data(DataConfig(source="seg_folder", path=str(folder)), seed=0)
    message = str(err.value)
    assert "mask value 255 outside the class range" in message and "data.ignore_index=255" in message, message
    assert "\n" not in message


@pytest.mark.parametrize(("labels", "logits"), [(3, 3), (2, 1)])
def test_ignore_index_leaves_void_out_of_the_class_count(tmp_path: Path, labels: int, logits: int) -> None:
    """Palette masks 0..K-1 with a 255 border: K classes (0/1/255: binary, one logit), the border kept as 255."""
    folder = palette_folder(tmp_path, labels=labels)
    bundle = build_segmentation_data(DataConfig(source="seg_folder", path=str(folder), ignore_index=VOID), seed=0)
    assert bundle.num_classes == logits
    masks = bundle.train.targets
    assert set(masks.unique().tolist()) == {*range(labels), VOID}
    assert (masks[:, :2] == VOID).all() and (masks[:, 2:-2, 2:-2] != VOID).all()


def test_a_value_neither_class_nor_ignored_is_still_refused(tmp_path: Path) -> None:
    folder = palette_folder(tmp_path, labels=3)
    mask = np.array(Image.open(folder / "masks" / "002.png"))
    mask[5, 5] = 200
    png = Image.fromarray(mask, "P")
    png.putpalette(Image.open(folder / "masks" / "001.png").getpalette())
    png.save(folder / "masks" / "002.png")
    with pytest.raises(DataError, match=r"002.png: mask value 200 outside the class range 0..31") as err:
        build_segmentation_data(DataConfig(source="seg_folder", path=str(folder), ignore_index=VOID), seed=0)
    assert "ignore_index" not in str(err.value)


def test_ignore_index_is_refused_for_classification_data() -> None:
    with pytest.raises(Exception, match="data.ignore_index: read by segmentation sources only"):
        load_config(None, ["data.ignore_index=255"])


def test_method2_runs_on_void_masks_and_eval_of_the_export_scores_the_same(tmp_path: Path) -> None:
    """grad_count sparsify + filter removal + finetune on palette masks with a void border; `eval` of the export
    (config.yaml out of the way: the export's own record) reads ignore_index back and gives the report's metric."""
    folder = palette_folder(tmp_path / "data", labels=3, n=10, size=32)
    out = tmp_path / "run"
    overrides = ["task=segmentation", "data.source=seg_folder", f"data.path={folder}", "data.ignore_index=255",
                 "model.name=unet_tiny", "train.batch_size=4", "phases.dense.enabled=false",
                 "phases.sparsify.epochs=1", "phases.finetune.epochs=1", "regularizer.name=grad_count",
                 "regularizer.count_window=2", "optim.name=sgd", "optim.lr=0.05", "prune.rule=filters",
                 "prune.filter_fraction=0.5", "prune.round_to=1", "tracking.mode=disabled", "deepspeed.zero_stage=0",
                 "deploy.formats=[]", "deploy.latency=false", f"out_dir={out}"]
    report = run_pipeline(load_config(None, overrides))
    final = report["phases"]["finetune"]["metric"]
    (out / "config.yaml").rename(out / "config.yaml.away")
    evaluated = evaluate_target(out / "export", overrides=["deploy.latency_repeats=3"])
    assert evaluated["metrics"]["metric"] == pytest.approx(final, abs=1e-6), (evaluated["metrics"], final)
    with pytest.raises(DataError, match="data.ignore_index=255"):  # the recorded value is what made it read
        evaluate_target(out / "export", overrides=["data.ignore_index=null"])
