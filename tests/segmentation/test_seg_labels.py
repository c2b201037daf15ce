"""Trial-19 findings on segmentation labels, read from real mask files the tests write: data.ignore_index that
leaves one class, a model with fewer outputs than the data's classes, lossy (JPEG) masks, and eval of a folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparsetrain import cli
from sparsetrain.config.schema import DataConfig
from sparsetrain.data.base import DataError
from sparsetrain.data.segmentation import build_segmentation_data
from sparsetrain.progress import setup_logging
from tests.helpers.cli_checks import one_error_line

TINY_RUN = ["tracking.mode=disabled", "deploy.latency=false", "deploy.formats=[]", "deepspeed.zero_stage=0",
            "model.kwargs.base_width=4", "model.kwargs.depth=2", "train.batch_size=2", "train.eval_batch_size=4",
            "phases.dense.epochs=1", "phases.sparsify.epochs=1", "phases.finetune.epochs=1"]


def write_folder(root: Path, masks: list[np.ndarray], mask_ext: str = ".png", **save: object) -> Path:
    """root/images/NNN.png (random gray-ish RGB) and root/masks/NNN<mask_ext> holding `masks` (uint8 values)."""
    (root / "images").mkdir(parents=True), (root / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, mask in enumerate(masks):
        image = rng.integers(0, 80, (*mask.shape, 3)).astype(np.uint8) + (mask[..., None] > 0).astype(np.uint8) * 90
        Image.fromarray(image).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{i:03d}{mask_ext}", **save)
    return root


def binary_masks(n: int = 8, size: int = 16, value: int = 255) -> list[np.ndarray]:
    """`n` masks with a square of `value` on 0 (DRIVE-like 0/255 vessel masks)."""
    out = []
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[2 + i % 5:9 + i % 5, 3:10] = value
        out.append(mask)
    return out


def label_masks(labels: int, n: int = 8, size: int = 16, void: bool = False) -> list[np.ndarray]:
    """`n` masks holding labels 0..labels-1 in vertical stripes (every mask every label), a 255 border if `void`."""
    out = []
    for i in range(n):
        mask = ((np.arange(size)[None, :] * labels // size + i) % labels * np.ones((size, 1))).astype(np.uint8)
        if void:
            mask[:1], mask[-1:] = 255, 255
        out.append(mask)
    return out


# ---------------------------------------------------------------------------------------------- 1: ignore_index


def test_ignore_index_255_on_0_255_binary_masks_is_refused(tmp_path: Path) -> None:
    """0/255 masks with data.ignore_index=255: every foreground pixel would be void and any model score 100 %."""
    folder = write_folder(tmp_path / "drive", binary_masks())
    with pytest.raises(DataError) as err:
        build_segmentation_data(DataConfig(source="seg_folder", path=str(folder), ignore_index=255), seed=0)
    message = str(err.value)
    assert message.startswith("data.ignore_index=255 leaves only label 0") and "drop data.ignore_index" in message
    assert "binary (255 = foreground)" in message and "\n" not in message, message
    ok = build_segmentation_data(DataConfig(source="seg_folder", path=str(folder)), seed=0)
    assert ok.num_classes == 1, "without ignore_index the same masks are binary"


def test_run_and_dry_run_refuse_ignore_index_on_binary_masks_before_writing(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = write_folder(tmp_path / "drive", binary_masks())
    for dry in ([], ["--dry-run"]):
        out = tmp_path / f"run{len(dry)}"
        code = cli.main(["run", "configs/unet_drive.yaml", f"data.path={folder}", "data.ignore_index=255",
                         "data.image_size=16", f"out_dir={out}", *TINY_RUN, *dry])
        line = one_error_line(capsys)
        assert code == 2 and "data.ignore_index=255 leaves only label 0" in line, (code, line)
        assert not out.exists(), f"{out} written before the refusal"


# ---------------------------------------------------------------------------------------------- 2: model outputs


def city_run(folder: Path, out: Path, *extra: str) -> list[str]:
    """`run` of configs/unet_synthetic.yaml on a Cityscapes-like folder (labels 0-18, 255 void), tiny."""
    return ["run", "configs/unet_synthetic.yaml", "data.source=seg_folder", f"data.path={folder}",
            "data.ignore_index=255", "data.image_size=16", f"out_dir={out}", *TINY_RUN, *extra]


def test_fewer_model_outputs_than_classes_refused_by_dry_run_and_run(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """19 classes, model.kwargs.num_classes=10: refused before anything is written, naming the field and 19."""
    setup_logging(is_main=True)  # to this test's stderr: an earlier run's handler writes to a closed stream
    folder = write_folder(tmp_path / "city", label_masks(19, void=True))
    for dry in (["--dry-run"], []):
        out = tmp_path / f"run{len(dry)}"
        code = cli.main(city_run(folder, out, "model.kwargs.num_classes=10", *dry))
        line = one_error_line(capsys)
        assert code == 2 and "model.kwargs.num_classes: 10 model outputs for data with 19 classes" in line, line
        assert "largest mask label 18" in line, line
        assert not out.exists(), f"{out} written before the refusal"
    with pytest.raises(DataError, match="model.kwargs.num_classes: 1 model outputs for data with 19 classes"):
        build_segmentation_data(DataConfig(source="seg_folder", path=str(folder), ignore_index=255), 0, 1)


def test_more_model_outputs_than_classes_train_with_one_log_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    setup_logging(is_main=True)  # to this test's stderr: an earlier run's handler writes to a closed stream
    folder = write_folder(tmp_path / "city", label_masks(19, void=True))
    out = tmp_path / "run"
    code = cli.main(city_run(folder, out, "model.kwargs.num_classes=21", "phases.dense.enabled=false",
                             "phases.sparsify.epochs=1", "phases.finetune.epochs=0"))
    _, err = capsys.readouterr()
    assert code == 0, err
    said = [line for line in err.splitlines() if "model.kwargs.num_classes=21: 21 outputs for the data's 19" in line]
    assert len(said) == 1, err
    bundle = build_segmentation_data(DataConfig(source="seg_folder", path=str(folder), ignore_index=255), 0)
    assert bundle.num_classes == 19
    binary = write_folder(tmp_path / "drive", binary_masks())
    two = build_segmentation_data(DataConfig(source="seg_folder", path=str(binary)), 0, 2)
    assert two.num_classes == 2, "binary masks with model.kwargs.num_classes=2: two softmax outputs"


# ---------------------------------------------------------------------------------------------- 3: lossy masks


@pytest.mark.parametrize(("masks", "ext", "save"), [
    (label_masks(19), ".jpg", {"quality": 75}),             # labels 0-18: JPEG's edge values were extra classes
    (label_masks(12, void=True), ".jpeg", {"quality": 90}),  # out of range values were refused without a hint
    (binary_masks(), ".jpg", {"quality": 95}),              # binary 0/255: refused too (see _refuse_lossy_mask)
    (label_masks(5), ".tif", {"compression": "jpeg"}),      # a JPEG-compressed TIFF
])
def test_lossy_masks_are_refused_naming_the_file(tmp_path: Path, masks: list[np.ndarray], ext: str,
                                                 save: dict) -> None:
    folder = write_folder(tmp_path / "jpeg", masks, ext, **save)
    with pytest.raises(DataError) as err:
        build_segmentation_data(DataConfig(source="seg_folder", path=str(folder), ignore_index=255), seed=0)
    message = str(err.value)
    assert message.startswith(str(folder / "masks" / f"000{ext}")) and "JPEG" in message, message
    assert "lossless format (PNG, TIFF without JPEG compression, GIF, BMP)" in message and "\n" not in message


def test_a_jpeg_saved_under_a_png_name_is_refused_too(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "named", label_masks(4))
    Image.fromarray(label_masks(4)[0]).save(folder / "masks" / "003.png", format="JPEG")
    with pytest.raises(DataError, match=r"003.png: a JPEG mask: lossy compression"):
        build_segmentation_data(DataConfig(source="seg_folder", path=str(folder)), seed=0)


@pytest.mark.parametrize(("masks", "ext", "classes_txt", "count", "origin"), [
    (label_masks(5), ".gif", None, "5 classes", "from the largest mask label 4; no classes.txt in"),
    (label_masks(5), ".bmp", "6\n", "6 classes", "classes.txt"),
    (binary_masks(), ".bmp", None, "binary: 2 classes, one logit channel", "binary 0/255 masks (255 = foreground)"),
    (binary_masks(), ".gif", None, "binary: 2 classes, one logit channel", "binary 0/1 masks"),  # palette indices
    (binary_masks(value=1), ".png", None, "binary: 2 classes, one logit channel", "binary 0/1 masks"),
])
def test_lossless_masks_are_read_and_the_class_count_is_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, masks: list[np.ndarray], ext: str,
        classes_txt: str | None, count: str, origin: str) -> None:
    folder = write_folder(tmp_path / "lossless", masks, ext)
    if classes_txt:
        (folder / "classes.txt").write_text(classes_txt)
    with caplog.at_level("INFO", logger="sparsetrain"):
        bundle = build_segmentation_data(DataConfig(source="seg_folder", path=str(folder)), seed=0)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data: seg_folder")]
    assert len(said) == 1 and f": {count}, from " in said[0] and origin in said[0], said
    values = set(bundle.train.targets.unique().tolist()) | set(bundle.test.targets.unique().tolist())
    assert values == (set(range(5)) if "largest" in origin or "txt" in origin else {0, 1}), values


def test_binary_masks_trained_as_two_classes_are_not_said_to_get_one_logit(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Trial 20: with model.kwargs.num_classes=2 the data line said `binary: 2 classes, one logit channel` and the
    next line that they are trained as 2 softmax classes. The data line now says the class count alone."""
    folder = write_folder(tmp_path / "binary", binary_masks(value=1), ".png")
    with caplog.at_level("INFO", logger="sparsetrain"):
        bundle = build_segmentation_data(DataConfig(source="seg_folder", path=str(folder)), seed=0, model_classes=2)
    said = [r.getMessage() for r in caplog.records]
    data_line = next(line for line in said if line.startswith("data: seg_folder"))
    assert ": binary: 2 classes, from binary 0/1 masks" in data_line and "logit" not in data_line, data_line
    assert any(line.startswith("model.kwargs.num_classes=2: the binary masks") and "not as one logit channel" in line
               for line in said), said
    assert bundle.num_classes == 2


# ---------------------------------------------------------------------------------------------- 4: eval of a folder


@pytest.fixture(scope="module")
def city_run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A finished tiny run on 10 Cityscapes-like images (labels 0-18, a 255 void border) and its report."""
    root = tmp_path_factory.mktemp("city19")
    folder = write_folder(root / "data", label_masks(19, n=10, void=True))
    out = root / "run"
    code = cli.main(city_run(folder, out, "phases.dense.enabled=false", "phases.finetune.epochs=0"))
    assert code == 0
    return out, json.loads((out / "report.json").read_text())


def test_eval_of_a_folder_scores_the_runs_split_or_every_image_with_the_models_classes(
        tmp_path: Path, city_run_dir: tuple[Path, dict]) -> None:
    """Default: the run's seeded 20 % test split (2 of 10). A test-only folder without class 18 is scored with the
    model's 19 classes (was `outputs (2, 19, 64, 64) do not fit 18 classes`), whole with data.test_fraction=1.0."""
    from sparsetrain.deploy.evaluate import evaluate_target

    out, report = city_run_dir
    own = evaluate_target(out)
    assert own["data"]["test_samples"] == 2, own["data"]
    assert own["metrics"]["metric"] == pytest.approx(report["phases"]["sparsify"]["metric"], abs=1e-6)
    test_only = write_folder(tmp_path / "test_only", label_masks(18, n=5, void=True))  # labels 0-17: no class 18
    split = evaluate_target(out, overrides=[f"data.path={test_only}"])
    assert split["data"]["test_samples"] == 1, "round(5 × 0.2) = 1: the default split, as the run's"
    whole = evaluate_target(out, overrides=[f"data.path={test_only}", "data.test_fraction=1.0"])
    assert whole["data"]["test_samples"] == 5 and 0 <= whole["metrics"]["metric"] <= 100, whole


def test_eval_refuses_masks_with_more_classes_than_the_model(
        tmp_path: Path, city_run_dir: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    out, _ = city_run_dir
    wider = write_folder(tmp_path / "wider", label_masks(21, n=5, void=True))
    code = cli.main(["eval", str(out), f"data.path={wider}", "data.test_fraction=1.0"])
    line = one_error_line(capsys)
    assert code == 2 and f"data.path={wider}) hold 21 classes (labels 0-20)" in line, line
    assert "has 19 output channels" in line, line


def test_run_refuses_test_fraction_1_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = write_folder(tmp_path / "city", label_masks(3, n=5))
    for dry in (["--dry-run"], []):
        out = tmp_path / f"run{len(dry)}"
        code = cli.main(city_run(folder, out, "data.test_fraction=1.0", "data.ignore_index=null", *dry))
        line = one_error_line(capsys)
        assert code == 2 and "data.test_fraction: 1 leaves no training sample" in line and "sparsetrain eval" in line
        assert not out.exists(), f"{out} written before the refusal"


# ---------------------------------------------------------------------------------------------- dry run logging


def test_dry_run_shows_the_data_lines_the_run_logs(tmp_path: Path) -> None:
    """`run --dry-run` did not set up logging, so the seg_folder class-count line (and EMNIST's transposition, the
    train_subset lines) was not shown where a user checks what the run will read; through the real CLI process."""
    folder = write_folder(tmp_path / "city", label_masks(19, void=True))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "sparsetrain", *city_run(folder, out, "model.kwargs.num_classes=19",
                                                                          "--dry-run")],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if "data: seg_folder" in line and "19 classes" in line]
    assert len(said) == 1 and "from the largest mask label 18" in said[0], proc.stderr
    assert "filter plan (prune.rule=filters):" in proc.stdout, proc.stdout  # a Method 2 recipe
    assert not out.exists(), f"the dry run wrote {out}"


@pytest.mark.parametrize("parts", [("train", "test"), ("test",)])
def test_test_fraction_on_a_folder_with_its_own_split_is_refused(tmp_path: Path, parts: tuple[str, ...]) -> None:
    """A folder with train/ and test/ (or test/ alone, for eval) has its own test split: data.test_fraction=1.0 (eval
    of every image) scored test/ alone, without a word. The default 0.2, which every stored config holds, reads."""
    for part in parts:
        write_folder(tmp_path / "drive" / part, binary_masks(n=4))
    cfg = {"source": "seg_folder", "path": str(tmp_path / "drive")}
    with pytest.raises(DataError) as err:
        build_segmentation_data(DataConfig(**cfg, test_fraction=1.0), seed=0, eval_only=True)
    assert str(err.value) == (f"data.test_fraction: {tmp_path / 'drive'} has its own split (train/, test/), whose "
                              "test split is test/; data.test_fraction (now 1) splits an images/ + masks/ folder "
                              "only: leave it out"), err.value
    assert len(build_segmentation_data(DataConfig(**cfg), seed=0, eval_only=True).test) == 4
