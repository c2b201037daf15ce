"""`sparsetrain eval` scales the test inputs with the mean/std the model was trained with (its export's record), not
with the eval data's own training split: other data (`data.path=OTHER`, `data.test_fraction=1.0`) was fed inputs
scaled differently from training, a silent wrong accuracy (fix21)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sparsetrain.cli import main
from sparsetrain.config.schema import DataConfig
from sparsetrain.data.builtin import load_digits_data
from sparsetrain.pipeline import run_pipeline
from tests.core.conftest import tiny_config
from tests.core.subprocess_runs import run_command


def _eval(capsys: pytest.CaptureFixture, *args: str) -> dict:
    capsys.readouterr()
    assert main(["eval", *args, "deploy.latency=false", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def npz_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny run on digits saved as an npz (one epoch per phase), its npz, and OTHER.npz: x_train * 0.3 + 0.5 (other
    statistics), the original x_test and labels."""
    tmp = tmp_path_factory.mktemp("eval_stats")
    x_train, y_train, x_test, y_test = load_digits_data(DataConfig(source="digits"), 0)
    own, other = tmp / "digits.npz", tmp / "OTHER.npz"
    np.savez(own, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    np.savez(other, x_train=x_train * 0.3 + 0.5, y_train=y_train, x_test=x_test, y_test=y_test)
    out = tmp / "run"
    run_pipeline(tiny_config(out, "data.source=npz", f"data.path={own}", "phases.sparsify.epochs=1",
                             "report.accuracy_curve=false"))
    return out, own, other


def test_eval_on_other_data_uses_the_models_training_statistics(npz_run, capsys: pytest.CaptureFixture) -> None:
    """Same test images in OTHER.npz, other training split: the metrics are exactly the run's own eval's. Before:
    OTHER's x_train statistics scaled the test inputs (checked: another accuracy and loss)."""
    run, _, other = npz_run
    own = _eval(capsys, str(run))
    assert own["inputs"]["by"] == "recorded" and own["inputs"]["recorded_in"] == str(run / "export"), own["inputs"]
    for target in (run, run / "export"):
        result = _eval(capsys, str(target), f"data.path={other}")
        assert result["metrics"] == own["metrics"], (target, result["metrics"], own["metrics"])
        assert result["inputs"]["mean"] == own["inputs"]["mean"] and result["inputs"]["std"] == own["inputs"]["std"]
    capsys.readouterr()
    assert main(["eval", str(run), f"data.path={other}", "deploy.latency=false"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[2].startswith(f"inputs       standardized with the run's recorded mean/std ({run / 'export'}): "
                                 "mean "), printed


def test_a_weights_file_in_a_run_uses_its_runs_export_record(npz_run, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """A checkpoint file in the run takes the run's export's statistics; the same file outside any run has no record
    and is standardized with its data's training split as before (so on OTHER.npz it scores otherwise)."""
    run, _, other = npz_run
    weights = sorted((run / "weights").glob("*.safetensors"))[-1]
    config = str(run / "config.yaml")
    own = _eval(capsys, str(weights), config)
    result = _eval(capsys, str(weights), config, f"data.path={other}")
    assert result["inputs"]["by"] == "recorded" and result["metrics"] == own["metrics"], (result, own)
    loose = tmp_path / weights.name
    shutil.copy(weights, loose)
    alone = _eval(capsys, str(loose), config, f"data.path={other}")
    assert alone["inputs"]["by"] == "data" and alone["inputs"]["recorded_in"] is None, alone["inputs"]
    assert alone["inputs"]["mean"] != own["inputs"]["mean"], "OTHER's own training statistics"


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A unet_tiny run of one epoch per phase on a street folder (train/ and test/, the training images brighter and
    of lower contrast), and a flat folder of its test split alone (images/, masks/, classes.txt): whole-folder
    eval's data, whose own statistics are not the training images'."""
    from sparsetrain.config import load_config
    from tests.segmentation.test_seg_miou import street_folder, street_overrides

    tmp = tmp_path_factory.mktemp("eval_stats_seg")
    folder, out, flat = street_folder(tmp / "data"), tmp / "run", tmp / "flat"
    for path in (folder / "train" / "images").iterdir():  # training images brighter than the test ones
        Image.fromarray(np.asarray(Image.open(path)) // 2 + 60).save(path)
    run_pipeline(load_config(None, street_overrides(folder, out, "phases.dense.epochs=1", "phases.finetune.epochs=1",
                                                    "deploy.compact=false", "report.accuracy_curve=false")))
    for kind in ("images", "masks"):
        shutil.copytree(folder / "test" / kind, flat / kind)
    shutil.copy(folder / "classes.txt", flat / "classes.txt")
    return out, flat


def test_whole_folder_eval_uses_the_models_training_statistics(seg_run, capsys: pytest.CaptureFixture) -> None:
    """data.test_fraction=1.0 on a folder holding the run's test images: the run's own eval's metrics. Before: the
    test images' own statistics scaled them (checked: another loss)."""
    run, flat = seg_run
    own = _eval(capsys, str(run))
    whole = _eval(capsys, str(run), f"data.path={flat}", "data.test_fraction=1.0")
    assert whole["data"]["test_samples"] == own["data"]["test_samples"] == 4, whole["data"]
    assert whole["inputs"]["by"] == "recorded", whole["inputs"]
    # the same images in another order (the seeded split of a whole folder): sums differ in the last float bit
    scores, per_class = (dict(whole["metrics"]), dict(own["metrics"])), "per_class_iou"
    assert scores[0].pop(per_class) == scores[1].pop(per_class)
    assert scores[0] == pytest.approx(scores[1], rel=1e-6), scores


def test_imagefolder_keeps_its_fixed_imagenet_statistics(tmp_path: Path) -> None:
    """Statistics handed to build_data (eval's recorded ones) do not replace imagefolder's fixed ImageNet mean/std,
    which its runs record: such exports are evaluated as before."""
    from sparsetrain.data import build_data
    from sparsetrain.data.disk import IMAGENET_MEAN, IMAGENET_STD

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3)).astype(np.uint8)).save(
                    tmp_path / split / label / f"{i}.png")
    cfg = DataConfig(source="imagefolder", path=str(tmp_path), image_size=12)
    plain, given = build_data(cfg, 0), build_data(cfg, 0, stats=([0.9] * 3, [9.0] * 3))
    assert given.preprocessing["mean"] == plain.preprocessing["mean"] == list(IMAGENET_MEAN)
    assert given.preprocessing["std"] == list(IMAGENET_STD)
    assert (given.test[0][0] == plain.test[0][0]).all()


def test_eval_reads_a_seg_folder_holding_test_alone(seg_run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A seg_folder with test/images and test/masks but no train/: eval scores it (the run's own metrics: the same
    test images, scaled with the recorded statistics); `run` refuses it in one line. Before: eval failed with
    `data.path: folder not found: .../train/images`."""
    from tests.helpers.cli_checks import one_error_line

    run, flat = seg_run
    test_only = tmp_path / "test_only"
    for kind in ("images", "masks"):
        shutil.copytree(flat / kind, test_only / "test" / kind)
    shutil.copy(flat / "classes.txt", test_only / "classes.txt")
    own = _eval(capsys, str(run))
    alone = _eval(capsys, str(run), f"data.path={test_only}")
    assert alone["data"]["test_samples"] == 4 and alone["inputs"]["by"] == "recorded", alone
    assert alone["metrics"] == own["metrics"], (alone["metrics"], own["metrics"])
    assert main(["run", "task=segmentation", "data.source=seg_folder", f"data.path={test_only}",
                 "model.name=unet_tiny", "tracking.mode=disabled", f"out_dir={tmp_path / 'out'}"]) == 2
    assert one_error_line(capsys) == (f"error: data.path: {test_only} holds test/ but no train/ (train/images, "
                                      "train/masks): `run` needs training images; a test-only folder is for "
                                      "`sparsetrain eval`")



def test_a_deepspeed_checkpoint_folder_in_a_run_uses_its_runs_export_record(npz_run,
                                                                          capsys: pytest.CaptureFixture) -> None:
    """`sparsetrain eval RUN/checkpoints` (DeepSpeed's folder, `latest` names the tag) or one tag folder of it took no
    record (`checkpoint_run` was None for every folder), so OTHER's own training statistics scaled the inputs; it
    takes the run's export's record, as a weights file in the run does. The folder is written by a real one-rank
    DeepSpeed engine (ZeRO 0, as the run's own) holding the run's final weights (a finished run keeps no
    checkpoints): on OTHER.npz it scores exactly what the run's own eval does."""
    run, _, other = npz_run
    state = run.parent / "finetune.pt"
    torch.save({"state_dict": load_file(str(run / "weights" / "finetune.safetensors"))}, state)
    folder = run / "checkpoints"
    proc = run_command([sys.executable, "-m", "tests.helpers.zero_checkpoint", str(state), str(folder), "0",
                        "finetune-step0000001"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    try:
        own = _eval(capsys, str(run))
        for target in (folder, folder / "finetune-step0000001"):
            result = _eval(capsys, str(target), str(run / "config.yaml"), f"data.path={other}")
            assert result["inputs"]["by"] == "recorded", (target, result["inputs"])
            assert result["inputs"]["recorded_in"] == str(run / "export"), (target, result["inputs"])
            assert result["metrics"] == own["metrics"], (target, result["metrics"], own["metrics"])
    finally:  # the module's run, as the other tests read it
        shutil.rmtree(folder)
