"""`sparsetrain eval` stops on NaN/inf as `run` does (trial 17): exit 4 and one line naming what was non-finite,
never a measurement printed with `loss nan` and exit 0."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsetrain.cli import main
from sparsetrain.config.schema import DataConfig
from sparsetrain.data.builtin import load_digits_data
from sparsetrain.pipeline import run_pipeline
from tests.core.conftest import tiny_config
from tests.helpers.cli_checks import one_error_line


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny digits run (one epoch per phase) with its export."""
    out = tmp_path_factory.mktemp("run")
    run_pipeline(tiny_config(out, "phases.sparsify.epochs=1", "report.accuracy_curve=false"))
    return out


def test_eval_on_test_data_holding_a_nan_stops_like_run(run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Before: exit 0 and `metric 81.8640 (accuracy 81.86, loss nan, ...)`; run stops on the same data with exit 4."""
    x_train, y_train, x_test, y_test = load_digits_data(DataConfig(source="digits"), 0)
    x_test = x_test.copy()
    x_test[0, 0, 3, 3] = np.nan
    data = tmp_path / "nan_test.npz"
    np.savez(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    assert main(["eval", str(run), "data.source=npz", f"data.path={data}"]) == 4
    err = one_error_line(capsys)
    assert err == (f"error: non-finite eval result(s) loss (evaluation on the test split); check the test data "
                   f"(data.source=npz, data.path={data}) for NaN or inf"), err


def test_eval_of_weights_holding_a_nan_names_the_file_and_tensor(run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """Before: exit 0 and `metric 7.8...` (every output NaN) for an export whose model.safetensors holds a NaN."""
    export = tmp_path / "export"
    shutil.copytree(run / "export", export)
    weights = export / "model.safetensors"
    state = load_file(weights)
    state["fc2.weight"][1, 2] = float("nan")
    save_file(state, weights, metadata={"format": "pt"})
    assert main(["eval", str(export), "--format", "safetensors"]) == 4
    err = one_error_line(capsys)
    assert err.startswith(f"error: non-finite values in the weights of {weights} (fc2.weight); "), err

    checkpoint = tmp_path / "nan.pth"
    torch.save({"model": state}, checkpoint)
    assert main(["eval", str(checkpoint), "model.name=lenet300_100", "data.source=digits"]) == 4
    err = one_error_line(capsys)
    assert err.startswith(f"error: non-finite values in the weights of {checkpoint} (fc2.weight); "), err
