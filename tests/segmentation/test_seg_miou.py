"""Multi-class segmentation's primary metric is the field's mean IoU (VOC / Cityscapes protocol), with per-class IoU,
in the phase results, report.json and `sparsetrain eval`; `dice` / `iou` stay the foreground micro-averages.

Fresh-user trial 19: on a 19-class model the tool printed `iou 33.7` where the standard mIoU is 7.85 (micro-averages
over classes 1..K-1, class 0 always left out as background, big classes dominating), and no per-class score anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsetrain.tasks.segmentation import SegmentationTask, constant_miou

NAMES = ("road", "sky", "car", "bike")  # Cityscapes-like: class 0 is a real class (road), not background
SIZE = 16


def class_logits(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """N × K × H × W logits whose argmax is `pred` (N × H × W)."""
    return torch.nn.functional.one_hot(pred, num_classes).permute(0, 3, 1, 2).float() * 5


def finalize(task: SegmentationTask, pred: list[int], target: list[int]) -> dict:
    pred_t, target_t = torch.tensor([[pred]]), torch.tensor([[target]])
    return task.finalize(task.batch_stats(class_logits(pred_t, task.num_classes), target_t))


def test_hand_built_confusion_gives_the_known_per_class_iou_and_miou() -> None:
    # target 0 0 0 1 1 2 2 2, prediction 0 0 1 1 3 2 2 0 (5 classes):
    # class 0: TP 2, FP 1 (pixel 7), FN 1 (pixel 2) -> 2/4 = 50 %
    # class 1: TP 1, FP 1 (pixel 2), FN 1 (pixel 4) -> 1/3
    # class 2: TP 2, FP 0, FN 1 (pixel 7)           -> 2/3
    # class 3: absent from the targets, predicted once: TP 0, FP 1 -> IoU 0, counted in the mean
    # class 4: neither in the targets nor predicted: union empty -> None, left out of the mean
    task = SegmentationTask(5, class_names=("bg", "a", "b", "c", "d"))
    got = finalize(task, [0, 0, 1, 1, 3, 2, 2, 0], [0, 0, 0, 1, 1, 2, 2, 2])
    assert got["per_class_iou"] == pytest.approx({"bg": 50.0, "a": 100 / 3, "b": 200 / 3, "c": 0.0, "d": None})
    assert got["miou"] == got["metric"] == pytest.approx((50 + 100 / 3 + 200 / 3 + 0) / 4)  # 37.5
    # the foreground micro-averages (classes 1..4 summed: TP 3, FP 2, FN 2) keep their meaning
    assert got["iou"] == pytest.approx(300 / 7) and got["dice"] == pytest.approx(60.0), got
    assert got["pixel_accuracy"] == pytest.approx(62.5)
    assert got["chance"] == pytest.approx(100 * 3 / 8 / 3), "best constant: class 0 or 2 (3 of 8 pixels) of 3 present"


@pytest.mark.parametrize("num_classes", [3, 4])
def test_chance_is_the_miou_of_the_best_constant_answer(num_classes: int) -> None:
    gen = torch.Generator().manual_seed(3)
    target = torch.randint(0, num_classes - 1, (2, 5, 7), generator=gen)  # the last class never in the targets
    target[0] = 1  # class 1 the commonest
    task = SegmentationTask(num_classes)
    scores = [task.finalize(task.batch_stats(class_logits(torch.full_like(target, c), num_classes), target))
              for c in range(num_classes)]
    assert scores[0]["chance"] == pytest.approx(max(s["miou"] for s in scores)), [s["miou"] for s in scores]
    assert max(range(num_classes), key=lambda c: scores[c]["miou"]) == 1


def test_miou_is_from_the_whole_sets_confusion_not_a_mean_over_batches() -> None:
    """Per-batch stats summed (as over batches and ranks) give the whole set's mIoU; a class absent from one batch
    does not count as a perfect or a zero score there."""
    task = SegmentationTask(3)
    gen = torch.Generator().manual_seed(4)
    target, pred = torch.randint(0, 3, (4, 6, 6), generator=gen), torch.randint(0, 3, (4, 6, 6), generator=gen)
    target[:2][target[:2] == 2], pred[:2][pred[:2] == 2] = 0, 0  # class 2 in neither of the first two images
    logits = class_logits(pred, 3)
    whole = task.finalize(task.batch_stats(logits, target))
    summed = task.finalize(task.batch_stats(logits[:2], target[:2]) + task.batch_stats(logits[2:], target[2:]))
    assert summed["miou"] == pytest.approx(whole["miou"]) and summed["per_class_iou"] == pytest.approx(
        whole["per_class_iou"])
    first = task.finalize(task.batch_stats(logits[:2], target[:2]))
    assert first["per_class_iou"]["2"] is None, "a class in neither targets nor predictions has no IoU"


def test_names_key_the_per_class_iou_only_when_they_fit_and_no_pixel_counts_as_perfect() -> None:
    assert list(SegmentationTask(3, class_names=("a", "b")).class_keys) == ["0", "1", "2"], "too few names"
    assert list(SegmentationTask(3, class_names=("a", "a", "b")).class_keys) == ["0", "1", "2"], "not unique"
    void = SegmentationTask(3, ignore_index=255)
    got = void.finalize(void.batch_stats(torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 255)))
    assert got["miou"] == 100.0 and got["per_class_iou"] == {"0": None, "1": None, "2": None}, got
    assert constant_miou([0.0, 0.0, 0.0]) == 100.0


@pytest.mark.parametrize("num_classes", [1, 2])
def test_binary_keeps_the_foreground_dice_as_its_metric(num_classes: int) -> None:
    task = SegmentationTask(num_classes)
    target = torch.tensor([[[1, 1, 0], [0, 0, 0]]])
    pred = torch.tensor([[[1, 0, 1], [0, 0, 0]]])
    logits = (pred[:, None].float() * 2 - 1) * 5 if num_classes == 1 else class_logits(pred, 2)
    got = task.finalize(task.batch_stats(logits, target))
    assert got["metric"] == got["dice"] == pytest.approx(50.0) and "miou" not in got and "per_class_iou" not in got


# ------------------------------------------------------------------------------------------ a run and eval of it


def street_folder(root: Path, n: int = 4) -> Path:
    """root/{train,test}/{images,masks}: sky everywhere, two rows of road at the bottom, a 2×2 car; classes.txt
    names road, sky, car, bike (bike in no mask). Per 16×16 image: 220 sky, 32 road, 4 car pixels."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        (root / split / "images").mkdir(parents=True), (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            mask = np.ones((SIZE, SIZE), np.uint8)
            mask[-2:] = 0
            y, x = rng.integers(2, SIZE - 5, 2)
            mask[y:y + 2, x:x + 2] = 2
            image = (mask * 70 + rng.integers(0, 30, mask.shape)).astype(np.uint8)
            Image.fromarray(image).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:03d}.png")
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return root


def sky_checkpoint(path: Path) -> Path:
    """unet_tiny weights that answer sky for every pixel (a sky bias far above what the head's weights add): a model
    that learned only the commonest class, whose micro-averaged IoU looks good and whose mIoU does not."""
    import timm
    from safetensors.torch import save_file

    import sparsetrain.models  # noqa: F401  (registers unet_tiny)

    torch.manual_seed(0)
    state = timm.create_model("unet_tiny", num_classes=len(NAMES), in_chans=1).state_dict()
    state["head.bias"].copy_(torch.tensor([0.0, 1e4, 0.0, 0.0]))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def street_run(tmp: Path) -> tuple[Path, dict]:
    """Method 1 over a street folder under `tmp` (unet_tiny, not the default model nor data): dense evaluates the
    sky-only checkpoint (epochs 0), prune 30 %, finetune evaluates the pruned weights (epochs 0); (run dir, report)."""
    from sparsetrain.config import load_config
    from sparsetrain.pipeline import run_pipeline

    folder, out = street_folder(tmp / "data"), tmp / "run"
    report = run_pipeline(load_config(None, street_overrides(
        folder, out, f"model.checkpoint={sky_checkpoint(tmp / 'sky.safetensors')}", "phases.dense.epochs=0",
        "phases.finetune.epochs=0")))
    return out, report


def street_overrides(folder: Path, out: Path, *extra: str) -> list[str]:
    """Overrides of a tiny Method 1 segmentation run over a street folder: unet_tiny, batch 4, no sparsify phase,
    30 % global pruning, no tracking, deployment formats or latency table; `extra` adds to them (epochs, ...)."""
    return ["task=segmentation", "data.source=seg_folder", f"data.path={folder}", "model.name=unet_tiny",
            "train.batch_size=4", "phases.sparsify.enabled=false", "prune.rule=global_sparsity", "prune.sparsity=0.3",
            "tracking.mode=disabled", "deepspeed.zero_stage=0", "deploy.formats=[]", "deploy.latency=false", *extra,
            f"out_dir={out}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Method 1 over the street folder: dense evaluates the sky-only checkpoint (epochs 0), prune 30 %, finetune
    evaluates the pruned weights (epochs 0)."""
    return street_run(tmp_path_factory.mktemp("miou"))


def test_a_run_reports_miou_and_per_class_iou_where_the_micro_average_is_three_times_higher(run) -> None:
    from sparsetrain.report import format_table

    out, report = run
    dense = json.loads((out / "report.json").read_text())["phases"]["dense"]
    sky = 100 * 220 / 256
    assert dense["per_class_iou"] == pytest.approx({"road": 0.0, "sky": sky, "car": 0.0, "bike": None}), dense
    assert dense["metric"] == dense["miou"] == pytest.approx(sky / 3), "mean over road, sky, car (bike: no union)"
    # micro over classes 1..3, sky's pixels dominating: TP 220 (sky), FP 36 (road and car taken for sky), FN 4 (car)
    assert dense["iou"] == pytest.approx(100 * 220 / 260) and dense["iou"] > 2.9 * dense["miou"], dense
    assert dense["dice"] == pytest.approx(100 * 440 / 480), "the old primary metric: 91.67 for a sky-only model"
    assert dense["chance"] == pytest.approx(dense["miou"]) and "mIoU" in dense["at_chance"], \
        "painting every pixel sky is the best constant answer: the run says the model is at chance"
    assert format_table(report).splitlines()[0] == "phase        mIoU %"


def test_eval_of_the_export_gives_miou_and_per_class_iou(run, capsys: pytest.CaptureFixture) -> None:
    from sparsetrain.cli import main

    out, report = run
    capsys.readouterr()
    assert main(["eval", str(out / "export"), "deploy.latency_repeats=3", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    final = report["phases"]["finetune"]
    assert metrics["miou"] == pytest.approx(final["miou"]) and metrics["metric"] == pytest.approx(final["miou"])
    assert metrics["per_class_iou"] == pytest.approx(final["per_class_iou"]) and list(metrics["per_class_iou"]) == \
        list(NAMES)
    assert main(["eval", str(out / "export"), "deploy.latency_repeats=3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(f"metric       {final['miou']:.4f}  (miou ") and " iou 84.62" in lines[1], lines
    assert lines[2] == "per-class IoU  road 0.00, sky 85.94, car 0.00, bike -", lines


def test_more_model_outputs_than_named_classes_keep_the_names_and_get_placeholders(tmp_path: Path) -> None:
    """Trial 20: classes.txt naming 3 classes with model.kwargs.num_classes=5 lost every name (meta.output.classes
    null, per-class IoU keyed 0..4). The data's names are kept and the outputs past them are named `class 3`,
    `class 4`, in the run's report and the export; classification sources alike."""
    from sparsetrain.config import load_config
    from sparsetrain.config.schema import DataConfig
    from sparsetrain.data import build_data
    from sparsetrain.pipeline import run_pipeline

    folder, out = street_folder(tmp_path / "data"), tmp_path / "run"
    (folder / "classes.txt").write_text("road\nsky\ncar\n")
    expected = ("road", "sky", "car", "class 3", "class 4")
    run_pipeline(load_config(None, street_overrides(folder, out, "model.kwargs.num_classes=5", "phases.dense.epochs=1",
                                                    "phases.finetune.epochs=1", "report.plots=false")))
    final = json.loads((out / "report.json").read_text())["phases"]["finetune"]
    assert tuple(final["per_class_iou"]) == expected, final["per_class_iou"]
    meta = json.loads((out / "export" / "architecture.json").read_text())["meta"]
    assert tuple(meta["output"]["classes"]) == expected, meta["output"]
    digits = build_data(DataConfig(source="digits"), seed=0, num_classes=12).classes
    assert digits is not None and digits[-3:] == ("9", "class 10", "class 11"), digits
