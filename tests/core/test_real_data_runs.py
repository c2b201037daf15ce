"""`sparsetrain run` of the MNIST recipes on real MNIST-format files: IDX folder and .npz, as a user runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparsetrain.data.idx import read_idx
from tests.core.subprocess_runs import REPO, run_cli

# A smoke run of the recipe: 1/20 of the data and a few hundred steps. Its 98.2 % target needs the full schedule (after
# ~100 steps fc1 still holds the smallest weights and a global cut would empty it), so the smoke run prunes to 90 %.
SHORT = ["phases.dense.epochs=0.3", "phases.sparsify.epochs=0.6", "phases.finetune.epochs=0.3", "prune.sparsity=0.9",
         "data.train_subset.parts=20", "tracking.mode=disabled", "train.threads=1", "train.log_every=10"]


def _write_npz(idx_dir: Path, path: Path) -> Path:
    """The same real images in the README's .npz layout (uint8 N×28×28, int64 labels)."""
    x_train, y_train, x_test, y_test = read_idx(str(idx_dir)).arrays
    to_uint8 = lambda x: np.round(x[:, 0] * 255).astype(np.uint8)  # noqa: E731
    np.savez_compressed(path, x_train=to_uint8(x_train), y_train=y_train, x_test=to_uint8(x_test), y_test=y_test)
    return path


@pytest.mark.parametrize("layout", ["idx", "npz"])
def test_lenet300_mnist_recipe_runs_on_real_files(tmp_path: Path, fashion_mnist: Path, layout: str,
                                                  capfd: pytest.CaptureFixture) -> None:
    # the recipe with its baselines and exports on the IDX folder; the .npz run checks the other reader. Without the
    # latency table (~30 s of fresh processes, none reading the data): a run's table is tests/deploy/test_compact.py's
    # and test_eval_latency.py's
    data = [f"data.path={fashion_mnist}", "data.source=idx", "deploy.latency=false"] if layout == "idx" else \
        [f"data.path={_write_npz(fashion_mnist, tmp_path / 'real.npz')}", "baselines=[]", "deploy.latency=false"]
    out = tmp_path / "run"
    code, printed = _main_here(["run", "configs/lenet300_mnist.yaml", *data, f"out_dir={out}", *SHORT], capfd)
    assert code == 0, printed.err[-3000:]
    report = json.loads((out / "report.json").read_text())
    final = report["phases"]["finetune"]
    assert final["metric"] > 50.0, f"fine-tuned accuracy {final} on real data"
    assert "finetune " in printed.out, "the result table was not printed"


def _main_here(argv: list[str], capfd: pytest.CaptureFixture) -> tuple[int, Any]:
    """(exit code, captured stdout/stderr) of the CLI's `main` in this process, run from the repository root as
    `run_cli` runs it (the recipes' paths are relative to it): what `python -m sparsetrain` calls before exiting with
    the code; a process of its own would only add its ~5 s of imports."""
    from sparsetrain.cli import main

    capfd.readouterr()
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        code = main(argv)
    finally:
        os.chdir(cwd)
    return code, capfd.readouterr()


def _idx_run_error(folder: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> str:
    """The last stderr line of `sparsetrain run` on the IDX folder `folder`, which must fail as bad input (exit 2)."""
    code, printed = _main_here(["run", "configs/lenet300_mnist.yaml", "data.source=idx", f"data.path={folder}",
                                f"out_dir={tmp_path / 'run'}", "tracking.mode=disabled"], capfd)
    assert code == 2, printed.err[-2000:]
    return printed.err.strip().splitlines()[-1]


def test_missing_idx_file_is_a_one_line_cli_error(tmp_path: Path, fashion_mnist: Path,
                                                  capfd: pytest.CaptureFixture) -> None:
    folder = tmp_path / "idx"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (folder / name).symlink_to(fashion_mnist / name)
    assert _idx_run_error(folder, tmp_path, capfd) == \
        f"error: data.path: {folder} lacks t10k-labels-idx1-ubyte[.gz] (an IDX folder holds train-images-idx3-ubyte, " \
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)"


def test_mismatched_idx_counts_are_a_one_line_cli_error(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    from tests.core.test_idx_data import make_folder, write_idx

    folder = tmp_path / "idx"
    make_folder(folder, n_train=30, n_test=10, side=28)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(9))  # 10 test images, 9 labels
    assert _idx_run_error(folder, tmp_path, capfd) == \
        f"error: data.path: {folder / 't10k-images-idx3-ubyte.gz'} holds 10 images but " \
        "t10k-labels-idx1-ubyte.gz holds 9 labels"


def test_emnist_download_folder_cli_run(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """A folder holding two EMNIST splits, as the download unpacks them: the run names data.idx_prefix; with it, it
    trains on upright (transposed-back) letters labelled 1..26 and says so, and the export records the transpose."""
    from tests.core.test_idx_data import make_folder, write_idx

    folder = tmp_path / "emnist"
    make_folder(folder, prefix="emnist-balanced-", test_name="test", n_train=47, side=28)
    make_folder(folder, prefix="emnist-letters-", test_name="test", n_train=52, n_test=26, side=28)
    for split, n in (("train", 52), ("test", 26)):
        write_idx(folder / f"emnist-letters-{split}-labels-idx1-ubyte.gz", np.arange(n) % 26 + 1)
    assert _idx_run_error(folder, tmp_path, capfd) == f"error: data.path: {folder} holds several train-images-idx3 " \
        "files: set data.idx_prefix to one of emnist-balanced, emnist-letters"
    out = tmp_path / "letters"
    result = run_cli(["configs/quickstart.yaml", "data.source=idx", f"data.path={folder}", f"out_dir={out}",
                      "data.idx_prefix=emnist-letters", "phases.dense.epochs=1", "phases.sparsify.epochs=1",
                      "phases.finetune.epochs=1", "tracking.mode=disabled", "train.threads=1", "deploy.latency=false",
                      "train.batch_size=16"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data.transpose=auto: EMNIST stores its images transposed; those of emnist-letters-train-images-idx3-" \
        "ubyte.gz and emnist-letters-test-images-idx3-ubyte.gz are transposed back" in result.stderr, result.stderr
    assert "data: 27 classes (labels 0-26, one model output each); label 0 has no training sample (0 test samples)" \
        in result.stderr, result.stderr
    meta = json.loads((out / "export" / "architecture.json").read_text())["meta"]
    assert meta["preprocessing"]["raw"].endswith("each image of emnist-letters-train-images-idx3-ubyte.gz and "
                                                 "emnist-letters-test-images-idx3-ubyte.gz transposed (H and W "
                                                 "swapped)"), meta["preprocessing"]
    assert meta["output"]["classes"] is None and meta["preprocessing"]["input_shape"] == [1, 28, 28], meta
