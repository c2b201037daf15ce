"""The export records the input preprocessing the model expects: raw test images preprocessed with nothing but the
recorded metadata and run in onnxruntime reproduce the run's reported accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import sparsetrain
from sparsetrain.config import load_config
from sparsetrain.pipeline import run_pipeline
from sparsetrain.report import final_metric

FAST = ["tracking.mode=disabled", "train.threads=1", "phases.dense.enabled=false", "deploy.latency=false",
        "deploy.formats=[onnx]", "phases.sparsify.epochs=1", "phases.finetune.epochs=0.5",
        "prune={rule: global_sparsity, sparsity: 0.5}", "report.plots=false"]


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn digits as uint8 pixels 0-255 in an .npz (N×H×W), split 1400 / 397."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 255 / 16).round().astype(np.uint8)
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x_train=images[:1400], y_train=digits.target[:1400], x_test=images[1400:],
             y_test=digits.target[1400:])
    return path


README = Path(__file__).resolve().parents[2] / "README.md"


def readme_onnx_predictions(onnx_file: Path, x_test: np.ndarray) -> np.ndarray:
    """Run the README's onnxruntime block ("Input preprocessing of an export") as shown, on `onnx_file` for its
    `D/export/model.onnx`, and return its `predictions`."""
    import textwrap

    section = README.read_text().split("With onnxruntime alone", 1)[1]
    block = textwrap.dedent(section.split("```python", 1)[1].split("```", 1)[0])
    assert '"D/export/model.onnx"' in block, block
    scope = {"x_test": x_test}
    exec(block.replace('"D/export/model.onnx"', repr(str(onnx_file))), scope)  # noqa: S102  (the README's own code)
    return scope["predictions"]


def test_onnx_with_recorded_preprocessing_reproduces_the_metric(digits_npz: Path, tmp_path: Path) -> None:
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml",
                      [*FAST, "data.source=npz", f"data.path={digits_npz}", f"out_dir={tmp_path}"])
    report = run_pipeline(cfg)
    folder = tmp_path / "export"
    prep = json.loads((folder / "architecture.json").read_text())["meta"]["preprocessing"]
    assert prep["layout"] == "NCHW" and prep["dtype"] == "float32" and prep["input_shape"] == [1, 8, 8]
    assert prep["scale"] == pytest.approx(1 / 255) and len(prep["mean"]) == len(prep["std"]) == 1
    # what a user does with only the export: the README's onnxruntime example
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["sparsetrain.preprocessing"])
    assert meta == prep, "ONNX metadata and architecture.json disagree"
    output = json.loads(session.get_modelmeta().custom_metadata_map["sparsetrain.output"])
    assert output["classes"] is None and "argmax" in output["decode"], "an npz names no classes"
    raw = np.load(digits_npz)
    x = raw["x_test"][:, None].astype(np.float32) * meta["scale"]
    x = (x - np.array(meta["mean"], np.float32)[:, None, None]) / np.array(meta["std"], np.float32)[:, None, None]
    logits = session.run(None, {session.get_inputs()[0].name: x.astype(meta["dtype"])})[0]
    accuracy = 100 * float((logits.argmax(1) == raw["y_test"]).mean())
    assert (readme_onnx_predictions(folder / "model.onnx", raw["x_test"]) == logits.argmax(1)).all()
    phase, reported = final_metric(report)
    assert phase == "finetune" and json.loads((folder / "architecture.json").read_text())["meta"]["metric"] == reported
    assert abs(accuracy - reported) <= 100 / len(raw["y_test"]), f"onnxruntime {accuracy} vs run's {reported}"
    assert sparsetrain.load_compressed(folder, "onnx").preprocessing == prep
    assert sparsetrain.load_compressed(folder).preprocessing == prep
    assert sparsetrain.load_compressed(folder).output == output, "load_compressed says what the output means"
    (folder / "architecture.json").rename(folder / "moved.json")  # the ONNX file alone still carries both records
    try:
        assert sparsetrain.load_compressed(folder, "onnx").output == output
    finally:
        (folder / "moved.json").rename(folder / "architecture.json")


def test_the_readme_onnx_block_runs_on_an_export_that_was_not_normalized(digits_npz: Path, tmp_path: Path) -> None:
    """Fresh-user trial 15: with `data.normalize=false` the export's mean/std are null (as the README says) and the
    README's onnxruntime block raised `TypeError: unsupported operand type(s) for -: 'float' and 'NoneType'`. As
    shown, it reproduces the run's accuracy."""
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml",
                      [*FAST, "data.source=npz", f"data.path={digits_npz}", "data.normalize=false",
                       f"out_dir={tmp_path}"])
    report = run_pipeline(cfg)
    prep = json.loads((tmp_path / "export" / "architecture.json").read_text())["meta"]["preprocessing"]
    assert prep["mean"] is None and prep["std"] is None, prep
    raw = np.load(digits_npz)
    accuracy = 100 * float((readme_onnx_predictions(tmp_path / "export" / "model.onnx", raw["x_test"])
                            == raw["y_test"]).mean())
    assert abs(accuracy - final_metric(report)[1]) <= 100 / len(raw["y_test"]), accuracy


def test_16bit_seg_folder_export_records_the_scale_training_used(tmp_path: Path) -> None:
    """16-bit images are scaled by 1/65535 in training; the export said 1/255 (inputs 257× too large when deployed).
    The raw file preprocessed with nothing but the recorded numbers must give the training tensor."""
    from PIL import Image

    from sparsetrain.data import build_data

    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 2)):
        for folder in ("images", "masks"):
            (tmp_path / "data" / split / folder).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(1_000, 50_000, (16, 16)).astype(np.uint16)).save(
                tmp_path / "data" / split / "images" / f"{i}.png")
            Image.fromarray((rng.random((16, 16)) < 0.3).astype(np.uint8) * 255).save(
                tmp_path / "data" / split / "masks" / f"{i}.png")
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "segmentation_base.yaml",
                      [*FAST[:6], "model.name=unet_tiny", "data.source=seg_folder", f"data.path={tmp_path / 'data'}",
                       "data.image_size=null", "train.batch_size=4", f"out_dir={tmp_path / 'run'}"])
    run_pipeline(cfg)
    prep = json.loads((tmp_path / "run" / "export" / "architecture.json").read_text())["meta"]["preprocessing"]
    session = ort.InferenceSession(str(tmp_path / "run" / "export" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["sparsetrain.preprocessing"]) == prep
    assert prep["scale"] == pytest.approx(1 / 65535) and prep["input_shape"] == [1, 16, 16], prep
    assert prep["color"] == {"applied": "none (1 channel as stored)", "gray_weights": None}, "the export says so"
    raw = np.stack([np.asarray(Image.open(tmp_path / "data" / "train" / "images" / f"{i}.png")) for i in range(8)])
    x = (raw[:, None] * prep["scale"] - np.reshape(prep["mean"], (1, -1, 1, 1))) / np.reshape(prep["std"],
                                                                                             (1, -1, 1, 1))
    trained_on = build_data(cfg.data, cfg.seed).train.inputs
    np.testing.assert_allclose(x.astype(prep["dtype"]), trained_on.numpy(), atol=1e-5,
                               err_msg="raw files preprocessed with the recorded numbers differ from the training set")


def _preprocess(path: Path, prep: dict) -> np.ndarray:
    """What a user writes from the record alone: one raw file → the model's C×H×W input (no resize: the files are
    already the recorded size)."""
    from PIL import Image

    raw = np.asarray(Image.open(path))
    raw = (raw[..., None] if raw.ndim == 2 else raw[..., :3]).astype(np.float64)
    x = raw * prep["scale"]
    chans = prep["input_shape"][0]
    if x.shape[-1] == 1 and chans > 1:
        x = np.repeat(x, chans, axis=-1)
    elif x.shape[-1] == 3 and chans == 1:
        x = x @ np.array(prep["color"]["gray_weights"])[:, None]
    if prep["mean"] is not None:
        x = (x - np.array(prep["mean"])) / np.array(prep["std"])
    return x.transpose(2, 0, 1).astype(prep["dtype"])


def _write_pngs(folder: Path, count: int, kind: str, rng: np.random.Generator) -> list[Path]:
    """`count` real 12×12 PNG files of `kind` (rgb, gray8, gray16) in `folder`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    shape, high, dtype = {"rgb": ((12, 12, 3), 256, np.uint8), "gray8": ((12, 12), 256, np.uint8),
                          "gray16": ((12, 12), 65536, np.uint16)}[kind]
    paths = [folder / f"{i}.png" for i in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, high, shape).astype(dtype)).save(path)
    return paths


@pytest.mark.parametrize(("kind", "in_chans", "applied", "weights"), [
    ("rgb", 3, "none (3 channels as stored)", None),
    ("rgb", 1, "colour mixed to gray with gray_weights", [1 / 3] * 3),
    ("gray8", 3, "gray repeated to 3 channels", None),
    ("gray16", None, "none (1 channel as stored)", None),
])
def test_seg_folder_record_says_which_channel_conversion_was_applied(
        tmp_path: Path, kind: str, in_chans: int | None, applied: str, weights: list[float] | None) -> None:
    """The record named both conversions ("colour averaged to gray / gray repeated") and none was applied to RGB
    files with in_chans 3; it must name the one applied, and the file preprocessed from the record alone must give
    the loader's input."""
    from PIL import Image

    from sparsetrain.config.schema import DataConfig
    from sparsetrain.data import build_data

    rng = np.random.default_rng(0)
    images = {}
    for split, count in (("train", 4), ("test", 2)):
        images[split] = _write_pngs(tmp_path / split / "images", count, kind, rng)
        (tmp_path / split / "masks").mkdir()
        for path in images[split]:
            Image.fromarray((rng.random((12, 12)) < 0.3).astype(np.uint8) * 255).save(tmp_path / split / "masks" /
                                                                                       path.name)
    bundle = build_data(DataConfig(source="seg_folder", path=str(tmp_path), in_chans=in_chans), 0)
    prep = bundle.preprocessing
    assert prep["color"] == {"applied": applied, "gray_weights": weights}, prep["color"]
    assert "/" not in prep["raw"] and "resized" not in prep["raw"] and prep["resize"] is None, prep["raw"]
    assert ("read as stored" in prep["raw"]) == (kind == "gray16"), prep["raw"]
    for i, path in enumerate(images["train"]):
        np.testing.assert_allclose(_preprocess(path, prep), bundle.train[i][0].numpy(), atol=1e-5)


@pytest.mark.parametrize(("kind", "in_chans", "applied", "weights"), [
    ("gray16", None, "any gray file repeated to 3 channels; any colour file as stored", None),  # 16-bit PNG: any kind
    ("gray16", 1, "any gray file as stored; any colour file mixed to gray with gray_weights", [0.2989, 0.587, 0.114]),
    ("rgb", None, "any gray file repeated to 3 channels; any colour file as stored", None),
    ("rgb", 1, "any gray file as stored; any colour file mixed to gray with gray_weights", [0.2989, 0.587, 0.114]),
])
def test_imagefolder_record_says_which_channel_conversion_was_applied(
        tmp_path: Path, kind: str, in_chans: int | None, applied: str, weights: list[float] | None) -> None:
    """A 16-bit gray tree said `color: RGB` without saying that the gray channel is repeated to 3; an 8-bit tree's
    raw said "read as stored: PIL's convert would clip 16-bit pixels", which is about 16-bit files only."""
    from sparsetrain.config.schema import DataConfig
    from sparsetrain.data import build_data

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            _write_pngs(tmp_path / split / label, 2, kind, rng)
    bundle = build_data(DataConfig(source="imagefolder", path=str(tmp_path), image_size=12, in_chans=in_chans), 0)
    prep = bundle.preprocessing
    files = "colour" if kind == "rgb" else "gray"  # the kind of the training files, from their headers
    assert prep["color"] == {"applied": applied, "gray_weights": weights, "files": files}, prep["color"]
    assert ("read as stored" in prep["raw"]) == ("clip" in prep["raw"]) == (kind == "gray16"), prep["raw"]
    for i, (path, _) in enumerate(bundle.train.samples):
        np.testing.assert_allclose(_preprocess(Path(path), prep), bundle.train[i][0].numpy(), atol=1e-5)


def test_the_export_records_the_data_the_run_used_not_settings_its_source_ignores(digits_npz: Path,
                                                                                 tmp_path: Path) -> None:
    """Trial 18: architecture.json `meta.data` recorded `test_fraction 0.2` and `num_samples 2000` for an npz run,
    which uses neither (the file has its own split). It now records the train / test sizes the run used, and
    test_fraction / num_samples only for sources that read them; eval of the export alone still rebuilds the data."""
    import shutil

    from sparsetrain.deploy.evaluate import evaluate_target

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml",
                      [*FAST, "data.source=npz", f"data.path={digits_npz}", f"out_dir={tmp_path / 'run'}"])
    run_pipeline(cfg)
    data = json.loads((tmp_path / "run" / "export" / "architecture.json").read_text())["meta"]["data"]
    assert "test_fraction" not in data and "num_samples" not in data, data
    assert (data["source"], data["train_samples"], data["test_samples"]) == ("npz", 1400, 397), data
    alone = shutil.copytree(tmp_path / "run" / "export", tmp_path / "alone" / "export")  # no config.yaml beside it
    assert evaluate_target(alone)["data"]["test_samples"] == 397
    from sparsetrain.data import data_record

    digits = data_record({"source": "digits", "test_fraction": 0.2, "num_samples": 2000}, "digits", 1437, 360)
    assert digits == {"source": "digits", "test_fraction": 0.2, "train_samples": 1437, "test_samples": 360}
    generated = data_record({"test_fraction": 0.2, "num_samples": 500}, "synthetic", 400, 100)
    assert generated["num_samples"] == 500 and generated["test_fraction"] == 0.2
