"""data.source=voc: a tiny Pascal VOC 2012 tree written by the test (JPEGs of several sizes, palette PNG masks with a
255 border, ImageSets/Segmentation lists) read through torchvision's VOCSegmentation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparsetrain.config import load_config
from sparsetrain.config.schema import DataConfig
from sparsetrain.data import build_data
from sparsetrain.data.base import DataError
from sparsetrain.data.voc import VOC_CLASSES

REPO = Path(__file__).resolve().parents[2]
VOID = 255
SIZES = ((40, 30), (36, 48), (32, 32))  # (width, height): VOC images differ in size


def voc_tree(root: Path, n_train: int = 5, n_val: int = 3) -> Path:
    """root/VOCdevkit/VOC2012 with n_train + n_val images (plus one listed in neither set), masks holding a few of
    the 21 classes as squares inside a 255 border; returns root."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    palette = [v for i in range(256) for v in ((53 * i) % 256, (101 * i) % 256, (197 * i) % 256)]
    ids = [f"2007_{i:06d}" for i in range(n_train + n_val + 1)]
    for i, name in enumerate(ids):
        width, height = SIZES[i % len(SIZES)]
        mask = np.zeros((height, width), np.uint8)
        for label in rng.choice(np.arange(1, 21), 2, replace=False):
            y, x = rng.integers(3, min(width, height) - 11, 2)
            mask[y:y + 8, x:x + 8] = label
        mask[:3], mask[-3:], mask[:, :3], mask[:, -3:] = VOID, VOID, VOID, VOID
        image = (rng.integers(0, 40, (height, width, 3)) + (mask[..., None] % VOID) * 10).astype(np.uint8)
        Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
        png = Image.fromarray(mask, "P")
        png.putpalette(palette)
        png.save(voc / "SegmentationClass" / f"{name}.png")
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (lists / "val.txt").write_text("\n".join(ids[n_train:n_train + n_val]) + "\n")
    return root


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    return voc_tree(tmp_path / "voc")


@pytest.mark.parametrize("where", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_reads_train_and_val_as_the_splits(voc: Path, where: str) -> None:
    cfg = load_config(None, ["task=segmentation", "data.source=voc", f"data.path={voc / where}",
                             "data.image_size=24"]).data
    assert cfg.ignore_index == VOID, "voc's default ignore_index is 255"
    bundle = build_data(cfg, seed=0)
    assert (len(bundle.train), len(bundle.test)) == (5, 3), "train.txt / val.txt are the train / test splits"
    assert bundle.num_classes == 21 and bundle.classes == VOC_CLASSES
    assert bundle.input_shape == (3, 24, 24)
    masks = bundle.train.targets
    assert masks.shape == (5, 24, 24)
    values = set(masks.unique().tolist())
    assert VOID in values and 0 in values and values <= {*range(21), VOID}, values  # nearest: no blended labels
    assert bundle.preprocessing["resize"]["size"] == [24, 24]


@pytest.mark.parametrize("given", [[], ["data.image_size=null"]])
def test_voc_resizes_to_224_when_image_size_is_not_given_and_the_record_says_so(voc: Path, given: list[str]) -> None:
    """VOC images differ in size (SIZES): the run resizes them to 224, so the config and the export's preprocessing
    record say 224 (the record once said no resize: native-size inputs then failed in onnxruntime). null given on the
    command line asks for native sizes, which one in-memory tensor cannot hold: refused in one line."""
    from sparsetrain.config import ConfigError

    overrides = ["task=segmentation", "data.source=voc", f"data.path={voc}", *given]
    if given:
        with pytest.raises(ConfigError) as err:
            load_config(None, overrides)
        message = str(err.value)
        assert "data.image_size: null (native sizes) is not possible for data.source=voc" in message, message
        assert "set data.image_size=224" in message and "\n" not in message, message
        return
    cfg = load_config(None, overrides).data
    assert cfg.image_size == 224, "the stored config says the size the run resized to"
    assert DataConfig(source="voc", path=str(voc), image_size=None).image_size == 224, "null in a stored config too"
    bundle = build_data(cfg, seed=0)
    assert bundle.input_shape == (3, 224, 224)
    assert bundle.preprocessing["resize"]["size"] == [224, 224], bundle.preprocessing


def test_voc_without_ignore_index_refuses_the_void_value_naming_the_field(voc: Path) -> None:
    cfg = DataConfig(source="voc", path=str(voc), image_size=24, ignore_index=None)
    with pytest.raises(DataError, match=r"SegmentationClass/2007_000000.png: mask value 255 outside the class range "
                                        r"0..20 of Pascal VOC; .*set data.ignore_index=255"):
        build_data(cfg, seed=0)


@pytest.mark.parametrize(("remove", "named"), [
    ("VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt", "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"),
    ("VOCdevkit/VOC2012/SegmentationClass", "VOCdevkit/VOC2012/SegmentationClass"),
    ("VOCdevkit", "VOCdevkit/VOC2012"),
])
def test_a_missing_part_is_one_line_naming_the_path_expected(voc: Path, remove: str, named: str) -> None:
    import shutil

    target = voc / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DataError) as err:
        build_data(DataConfig(source="voc", path=str(voc), image_size=24), seed=0)
    message = str(err.value)
    assert message.startswith(f"data.path: {voc / named} not found") and "\n" not in message, message


def test_a_listed_file_that_is_missing_is_named(voc: Path) -> None:
    (voc / "VOCdevkit/VOC2012/JPEGImages/2007_000006.jpg").unlink()
    with pytest.raises(DataError, match=r"2007_000006.jpg: not found \(listed in .*val.txt\)"):
        build_data(DataConfig(source="voc", path=str(voc), image_size=24), seed=0)


def test_schema_lists_voc() -> None:
    result = subprocess.run([sys.executable, "-m", "sparsetrain", "config", "--schema", "data"], capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "voc" in result.stdout.split("data.path")[0] and "data.ignore_index" in result.stdout, result.stdout


def test_method2_on_unet_through_the_cli_on_voc_and_eval_of_the_export_agrees(tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture) -> None:
    """`sparsetrain run` of Method 2 (grad_count sparsify, filter removal, finetune) on unet_tiny over a tiny VOC
    tree, then `sparsetrain eval` of its export: the same Dice as report.json's final phase, on the 21 VOC classes
    with the void border ignored."""
    import json

    from sparsetrain.cli import main

    data, out = voc_tree(tmp_path / "voc", n_train=8, n_val=4), tmp_path / "run"
    assert main(["run", "task=segmentation", "data.source=voc", f"data.path={data}", "data.image_size=32",
                 "model.name=unet_tiny", "train.batch_size=4", "phases.dense.enabled=false",
                 "phases.sparsify.epochs=1", "phases.finetune.epochs=1", "regularizer.name=grad_count",
                 "regularizer.count_window=2", "optim.name=sgd", "optim.lr=0.05", "prune.rule=filters",
                 "prune.filter_fraction=0.5", "prune.round_to=1", "tracking.mode=disabled", "deepspeed.zero_stage=0",
                 "deploy.formats=[]", "deploy.latency=false", f"out_dir={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    final = report["phases"][report["final_phase"]]
    assert report["final_phase"] == "finetune" and report["phases"]["prune"]["params_after"] < \
        report["phases"]["prune"]["params_before"], report["phases"]["prune"]
    assert report["ignore_index"] == VOID, "report.json says which pixels its metrics left out"
    meta = json.loads((out / "export" / "architecture.json").read_text())["meta"]
    assert meta["data"]["ignore_index"] == VOID and meta["data"]["source"] == "voc", meta["data"]
    capsys.readouterr()
    assert main(["eval", str(out / "export"), "deploy.latency_repeats=3", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["data"]["test_samples"] == 4
    for key in ("metric", "iou", "pixel_accuracy", "chance"):
        assert evaluated["metrics"][key] == pytest.approx(final[key], abs=1e-6), (key, evaluated["metrics"], final)
