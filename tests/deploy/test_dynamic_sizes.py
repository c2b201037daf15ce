"""Segmentation exports take every input size their architecture allows: a UNet run at 32 x 32 exports model.onnx
and model.pt2 with dynamic height and width (sides a multiple of 2**depth), which onnxruntime and torch.export run
at 48 x 64 as the torch model does; eval feeds another size to the ONNX file and refuses one outside the constraint
in one line; a model whose weights fix its size is exported at the training size and says so."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from timm.models import register_model
from torch import nn

import sparsetrain
from sparsetrain.config import load_config
from sparsetrain.pipeline import run_pipeline

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# unet_synthetic's UNet (depth 3: sides a multiple of 8) for one epoch per phase on 40 generated 32 x 32 images
TINY_UNET = ["tracking.mode=disabled", "train.threads=1", "phases.dense.enabled=false", "deploy.latency=false",
             "report.plots=false", "data.num_samples=40", "data.image_size=32", "phases.sparsify.epochs=1",
             "phases.finetune.epochs=1", "regularizer.count_window=2"]


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dynamic_sizes")
    run_pipeline(load_config(CONFIGS / "unet_synthetic.yaml", [*TINY_UNET, f"out_dir={out}"]))
    return out


def test_segmentation_export_runs_at_a_size_it_was_not_traced_at(unet_run: Path) -> None:
    folder = unet_run / "export"
    manifest = json.loads((folder / "manifest.json").read_text())
    sizes = manifest["input_sizes"]
    assert sizes["dynamic"] == ["batch", "height", "width"] and sizes["fixed_because"] is None, sizes
    for axis in ("height", "width"):
        assert sizes[axis]["multiple_of"] == 8 and sizes[axis]["offset"] == 0, f"UNet depth 3: {sizes[axis]}"
        assert sizes[axis]["min"] <= 32 and sizes[axis]["max"] >= 2048, f"{axis}: training size to Cityscapes"
    for fmt in ("onnx", "torch_export"):
        entry = manifest["formats"][fmt]
        assert entry["ok"] and entry["dynamic_size"], f"{fmt}: {entry}"
        assert [v["size"] for v in entry["verified_sizes"]] == [[32, 32], [48, 64]], f"{fmt}: {entry}"
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    channels = manifest["input_shape"][0]
    assert session.get_inputs()[0].shape == ["batch", channels, "height", "width"], session.get_inputs()[0].shape
    assert session.get_outputs()[0].shape[2:] == ["height", "width"], session.get_outputs()[0].shape
    assert json.loads(session.get_modelmeta().custom_metadata_map["sparsetrain.input_sizes"]) == sizes
    x = torch.randn(3, channels, 48, 64)  # larger, non-square, another batch: none of them traced
    with torch.no_grad():
        expected = sparsetrain.load_compressed(folder, "safetensors")(x)
    assert expected.shape[-2:] == (48, 64)
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(onnx_out - expected.numpy()).max() <= 1e-4, "onnxruntime at 48x64 differs from torch"
    program_out = torch.export.load(str(folder / "model.pt2")).module()(x)
    assert (program_out - expected).abs().max() <= 1e-4, "torch.export program at 48x64 differs from torch"


def test_eval_feeds_the_onnx_file_another_size_and_refuses_one_outside_the_constraint(
        unet_run: Path, capsys: pytest.CaptureFixture) -> None:
    from sparsetrain.cli import main

    onnx_file = str(unet_run / "export" / "model.onnx")
    capsys.readouterr()
    assert main(["eval", onnx_file, "data.image_size=48", "deploy.latency=false", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "onnx" and result["data"]["input_shape"][1:] == [48, 48], result["data"]
    assert np.isfinite(result["metrics"]["metric"]), result["metrics"]
    assert main(["eval", onnx_file, "data.image_size=36", "deploy.latency=false"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "36×36" in err[0] and "a multiple of 8" in err[0] and "data.image_size=40" in err[0], \
        err


class FixedGrid(nn.Module):
    """A per-pixel model whose weights fix its input size: every output pixel mixes all 16 x 16 input pixels."""

    def __init__(self, num_classes: int = 1, in_chans: int = 1, side: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, num_classes, 3, padding=1)
        self.mix = nn.Linear(side * side, side * side)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.mix(y.flatten(2)).view_as(y)


@register_model
def fixed_grid_test_seg(pretrained: bool = False, **kwargs: Any) -> FixedGrid:
    return FixedGrid(kwargs.get("num_classes", 1), kwargs.get("in_chans", 1))  # timm adds pretrained_cfg


def test_a_model_that_does_not_trace_with_dynamic_sides_is_exported_at_its_training_size(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from sparsetrain.deploy.folder import write_export

    meta = {"model_name": "fixed_grid_test_seg", "model_kwargs": {}, "task": "segmentation"}
    with caplog.at_level(logging.INFO, logger="sparsetrain"):
        manifest = write_export(FixedGrid().eval(), tmp_path, meta=meta, example=torch.randn(2, 1, 16, 16))
    sizes = manifest["input_sizes"]
    assert sizes["dynamic"] == ["batch"] and sizes["height"] == sizes["width"] == {"fixed": 16}, sizes
    assert sizes["fixed_because"], "the record says why H and W are fixed"
    for fmt in ("onnx", "torch_export"):
        entry = manifest["formats"][fmt]
        assert entry["ok"] and not entry["dynamic_size"] and entry["dynamic_batch"], f"{fmt}: {entry}"
        assert [v["size"] for v in entry["verified_sizes"]] == [[16, 16]], entry
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("take only 16×16 inputs" in w and sizes["fixed_because"] in w for w in warnings), warnings
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 1, 16, 16], session.get_inputs()[0].shape
