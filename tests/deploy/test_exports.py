"""Deployment exports of the three demo recipes (shrunk to a few steps): ONNX and torch.export programs load in
onnxruntime / torch.export.load and match torch; load_compressed reads every format; a program runs without
sparsetrain."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import sparsetrain
from sparsetrain.config import load_config
from sparsetrain.deploy.loading import FORMAT_ORDER
from sparsetrain.pipeline import run_pipeline
from tests.core.test_report_text import latency_line

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAST = ["tracking.mode=disabled", "train.threads=1", "phases.dense.enabled=false", "deploy.latency=false",
        "report.plots=false"]
RECIPES = {
    "quickstart": ["phases.sparsify.epochs=1", "phases.finetune.epochs=0.5",
                   "prune={rule: global_sparsity, sparsity: 0.8}"],
    "unet_synthetic": ["data.num_samples=40", "data.image_size=32", "phases.sparsify.epochs=0.5",
                       "phases.finetune.epochs=0.5", "regularizer.count_window=2"],
    "mobilenetv3_synthetic": ["data.num_samples=24", "data.image_size=64", "phases.sparsify.epochs=0.5",
                              "phases.finetune.epochs=0.5", "regularizer.count_window=2", "train.batch_size=8"],
}

# the output's class names in index order: digits' labels; background/vessel of the binary vessel masks (one logit)
EXPECTED_CLASSES = {"quickstart": [str(d) for d in range(10)], "unet_synthetic": ["background", "vessel"],
                    "mobilenetv3_synthetic": ["background", "vessel"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Each recipe run once for the whole module; results are shared by the tests below."""
    done = {}
    for name, overrides in RECIPES.items():
        out = tmp_path_factory.mktemp(name)
        cfg = load_config(CONFIGS / f"{name}.yaml", [*FAST, *overrides, f"out_dir={out}"])
        done[name] = (out, run_pipeline(cfg))
    return done


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_onnx_and_program_match_torch(runs: dict, recipe: str) -> None:
    out, report = runs[recipe]
    folder = out / "export"
    manifest = json.loads((folder / "manifest.json").read_text())
    for fmt in ("onnx", "torch_export"):
        entry = report["export"][fmt]
        assert entry["ok"] and entry["max_abs_diff"] <= 1e-4, f"{recipe} {fmt}: {entry}"
        assert manifest["formats"][fmt] == entry, f"{recipe} {fmt}: report and manifest differ"
    assert report["export"]["onnx"]["opset"] >= 17
    model = sparsetrain.load_compressed(folder, "safetensors")
    x = torch.randn(3, *manifest["input_shape"])  # batch 3: not the batch the files were traced with
    with torch.no_grad():
        expected = model(x)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == session.get_outputs()[0].shape[0] == "batch", session.get_inputs()
    output = json.loads(session.get_modelmeta().custom_metadata_map["sparsetrain.output"])
    assert output == json.loads((folder / "architecture.json").read_text())["meta"]["output"], recipe
    assert output["classes"] == EXPECTED_CLASSES[recipe], output
    assert ("argmax" if recipe == "quickstart" else "logit > 0") in output["decode"], output
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    program_out = torch.export.load(str(folder / "model.pt2")).module()(x)
    assert np.abs(onnx_out - expected.numpy()).max() <= 1e-4, f"{recipe}: onnxruntime differs from torch"
    assert (program_out - expected).abs().max() <= 1e-4, f"{recipe}: torch.export program differs from torch"


def test_unstructured_onnx_holds_the_exact_zeros(runs: dict) -> None:
    _, report = runs["quickstart"]
    onnx = report["export"]["onnx"]
    pruned_zeros = sum(layer["total"] - layer["nonzero"] for layer in report["layers"])
    assert onnx["pruned_zeros_kept"] and onnx["weight_zeros"] >= pruned_zeros > 0
    assert onnx["weight_elements"] == report["params"]["total"], "unstructured graph should stay dense-shaped"


@pytest.mark.parametrize("recipe", ["unet_synthetic", "mobilenetv3_synthetic"])
def test_structural_onnx_is_the_smaller_graph(runs: dict, recipe: str) -> None:
    _, report = runs[recipe]
    assert report["params"]["pruned"] < report["params"]["dense"]
    assert report["export"]["onnx"]["weight_elements"] < report["params"]["dense"], f"{recipe}: ONNX not smaller"
    # deploy.latency=false here: the summary's latency line says its numbers are not the full table's
    dense, pruned, speedup, how = latency_line(report)
    assert speedup == pytest.approx(dense / pruned, rel=0.05) and "interleaved rounds" in how, how


def test_load_compressed_reads_every_format_and_says_which(runs: dict, tmp_path: Path) -> None:
    folder = runs["quickstart"][0] / "export"
    x = torch.randn(4, *json.loads((folder / "manifest.json").read_text())["input_shape"])
    reference = sparsetrain.load_compressed(folder)
    assert reference.export_format == "safetensors", "auto should prefer the torch model"
    with torch.no_grad():
        expected = reference(x)
        for fmt in FORMAT_ORDER:
            model = sparsetrain.load_compressed(folder, fmt)
            assert model.export_format == fmt
            assert (model(x) - expected).abs().max() <= 1e-5, f"{fmt} differs"
    only_onnx = tmp_path / "only_onnx"
    only_onnx.mkdir()
    shutil.copy(folder / "model.onnx", only_onnx)
    assert sparsetrain.load_compressed(only_onnx).export_format == "onnx"
    assert sparsetrain.load_compressed(folder / "model.pt2").export_format == "torch_export"
    assert sparsetrain.load_compressed(runs["quickstart"][0]).export_format == "safetensors"  # the run directory
    with pytest.raises(ValueError, match="load_compressed: .* holds no 'torch_export' model"):
        sparsetrain.load_compressed(only_onnx, "torch_export")


def test_exported_files_run_without_sparsetrain(runs: dict, tmp_path: Path) -> None:
    folder = runs["unet_synthetic"][0] / "export"
    x = torch.randn(2, *json.loads((folder / "manifest.json").read_text())["input_shape"])
    with torch.no_grad():
        np.save(tmp_path / "x.npy", x.numpy())
        np.save(tmp_path / "y.npy", sparsetrain.load_compressed(folder)(x).numpy())
    script = (
        "import sys, numpy as np, torch, onnxruntime as ort\n"
        f"x, y = np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'y.npy')!r})\n"
        f"program = torch.export.load({str(folder / 'model.pt2')!r}).module()\n"
        "a = program(torch.from_numpy(x)).detach().numpy()\n"
        f"s = ort.InferenceSession({str(folder / 'model.onnx')!r}, providers=['CPUExecutionProvider'])\n"
        "b = s.run(None, {s.get_inputs()[0].name: x})[0]\n"
        "assert not any(m.split('.')[0] == 'sparsetrain' for m in sys.modules), 'sparsetrain was imported'\n"
        "print(float(np.abs(a - y).max()), float(np.abs(b - y).max()))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    program_diff, onnx_diff = (float(v) for v in done.stdout.split())
    assert program_diff <= 1e-4 and onnx_diff <= 1e-4


def test_export_command_rewrites_every_format(runs: dict) -> None:
    from sparsetrain.cli import main

    out = runs["quickstart"][0]  # last test of the module: it rewrites this run's export
    (out / "export" / "model.onnx").unlink()
    (out / "export" / "model.bitmask.safetensors").unlink()
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("sparsetrain").addHandler(handler)  # basicConfig(force=True) replaces root handlers only
    try:
        assert main(["export", str(out)]) == 0
    finally:
        logging.getLogger("sparsetrain").removeHandler(handler)
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    said = [line for line in lines if line.startswith("[export] ")]
    for fmt, name in (("safetensors", "model.safetensors"), ("bitmask", "model.bitmask.safetensors")):
        size = (out / "export" / name).stat().st_size  # the weights file alone, as report.json and eval count it
        assert f"[export] {fmt}: architecture.json + {name}; weights file {name} {size:,} B" in said, said
    for fmt in ("onnx", "torch_export"):
        done = [line for line in said if line.startswith(f"[export] {fmt}: ") and "max abs diff" in line]
        assert len(done) == 1 and "(ok, tolerance" in done[0], said
    umask = os.umask(0)
    os.umask(umask)
    modes = {str(p): stat.S_IMODE(p.stat().st_mode) for p in (out / "export").rglob("*") if p.is_file()}
    assert any(p.parent.name == "compact" for p in map(Path, modes)), "a Method 1 export at 80 % has dead units"
    assert set(modes.values()) == {0o666 & ~umask}, f"export file modes differ: {modes}"
    assert (out / "export" / "model.onnx").is_file() and manifest["formats"]["onnx"]["ok"]
    assert (out / "export" / "model.bitmask.safetensors").stat().st_size == manifest["formats"]["bitmask"]["bytes"] - \
        (out / "export" / "architecture.json").stat().st_size == manifest["formats"]["bitmask"]["weights_bytes"]
