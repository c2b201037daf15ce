"""Method 2 end to end on a tiny UNet: filters removed physically, export loads standalone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import sparsetrain
from sparsetrain.cli import main
from sparsetrain.config import load_config
from sparsetrain.config.schema import ModelConfig
from sparsetrain.models.factory import build_model
from sparsetrain.pipeline import Pipeline, run_pipeline
from sparsetrain.structural import interleaved_latency_ms
from tests.method2.test_grad_count import TINY_UNET


@pytest.fixture(scope="module")
def structural(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], dict]:
    """A finished tiny Method 2 run: (out_dir, its overrides, report)."""
    out = tmp_path_factory.mktemp("structural")
    overrides = [*TINY_UNET, f"out_dir={out}", "phases.sparsify.epochs=1", "phases.finetune.epochs=1",
                 "prune.filter_fraction=0.5", "prune.round_to=1", "regularizer.count_window=3",
                 "deepspeed.zero_stage=0", "report.plots=true"]  # kept_filters.png
    return out, overrides, run_pipeline(load_config(None, overrides))


def test_structural_run_exports_a_smaller_loadable_model(structural: tuple[Path, list[str], dict],
                                                         tmp_path: Path) -> None:
    run, overrides, report = structural
    assert report["params"]["pruned"] < report["params"]["dense"] / 2, "expected >2x fewer parameters"
    assert all(row["kept"] <= row["total"] - row["total"] // 2 for row in report["kept_filters"])
    loaded = sparsetrain.load_compressed(run / "export")
    assert sum(p.numel() for p in loaded.parameters()) == report["params"]["pruned"]
    pipeline = Pipeline(load_config(None, overrides))
    try:
        trained = pipeline.model_from("finetune").eval()
    finally:
        pipeline.close()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), trained(x), atol=1e-6), "exported model differs from the trained one"
    assert (run / "kept_filters.png").stat().st_size > 1000
    assert report["latency_ms"]["pruned"] > 0 and report["flops"]["pruned"] < report["flops"]["dense"]
    tmp_path = Path(shutil.copytree(run, tmp_path / "run"))
    shutil.rmtree(tmp_path / "export")  # a run directory without export/ is a checkpoint too: its finetune weights
    from_run = build_model(ModelConfig(name="unet_tiny", checkpoint=str(tmp_path)), 3, 1, (3, 32, 32)).eval()
    with torch.no_grad():
        assert torch.equal(from_run(x), loaded(x)), "model.checkpoint=<run dir> did not load weights/finetune/"


def test_bytes_name_the_smallest_file_of_a_physically_pruned_model(structural: tuple[Path, list[str], dict],
                                                                   capsys: pytest.CaptureFixture) -> None:
    """Removed filters leave no zeros to pack: the plain model.safetensors of the smaller model is its compressed
    size, not "dense", and the bitmask file (a mask bit per weight on top) is only listed."""
    run, _, report = structural
    export, sizes = run / "export", report["bytes"]
    files = {"safetensors": (export / "model.safetensors").stat().st_size,
             "bitmask": (export / "model.bitmask.safetensors").stat().st_size}
    assert files["bitmask"] > files["safetensors"], files  # what made the bitmask size a misleading headline
    assert {k: sizes[k] for k in files} == files, "report bytes are not the export's file sizes"
    assert sizes["compressed"] == files["safetensors"] and sizes["compressed_format"] == "safetensors", sizes
    assert sizes["compressed"] < sizes["dense"] / 2, sizes
    assert sizes["pruned"] == files["safetensors"], "pruned: the smaller model's safetensors file, header included"
    assert sizes["dense"] == (run / "weights" / "sparsify.safetensors").stat().st_size, "dense: the unpruned file"
    assert sparsetrain.load_compressed(export, sizes["compressed_format"]) is not None
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    evaluated = result["bytes"]
    assert {k: evaluated[k] for k in sizes if k != "pruned"} == {k: sizes[k] for k in sizes if k != "pruned"}, \
        (evaluated, sizes)  # dense is the unpruned unet_tiny, not the smaller model's plain file
    params = report["params"]
    assert result["params"] == {"total": params["pruned"], "nonzero": params["nonzero"], "dense": params["dense"],
                                "removed": "filters"}, (result["params"], params)
    assert main(["eval", str(run)]) == 0
    lines = {x.split()[0]: x for x in capsys.readouterr().out.splitlines()[1:]}
    assert lines["bytes"] == (f"bytes        {sizes['dense']:,} dense -> {files['safetensors']:,} compressed (weights "
                              f"file model.safetensors; other weights file: bitmask {files['bitmask']:,})"), lines
    assert lines["params"].startswith(f"params       {params['dense']:,} -> {params['pruned']:,} "
                                      f"({params['dense'] / params['pruned']:.2f}x fewer, filters removed); "), lines
    assert json.loads((run / "report.json").read_text())["format_version"] == 2  # keys added, none renamed


def test_structural_run_before_prune_reports_no_before_after_comparison(tmp_path: Path) -> None:
    """Nothing is removed before the prune phase: no params/FLOPs/latency 'dense -> pruned' lines (they compared
    a model with itself, and back-to-back timing showed 2.35x between the two identical models), and no latency
    table even with deploy.latency=true."""
    overrides = [*TINY_UNET, f"out_dir={tmp_path}", "phases.sparsify.epochs=1", "deepspeed.zero_stage=0",
                 "deploy.latency=true", "deploy.latency_repeats=3", "deploy.latency_batch=2"]
    report = run_pipeline(load_config(None, overrides), ["sparsify"])
    assert "sparsify" in report["phases"] and "prune" not in report["phases"], report["phases"].keys()
    for key in ("flops", "latency", "latency_ms", "param_reduction", "peak_memory_bytes"):
        assert key not in report, f"{key} reported before anything was removed: {report[key]}"


def test_interleaved_latency_gives_one_median_per_model_and_restores_modes() -> None:
    small, large = torch.nn.Linear(8, 8), torch.nn.Sequential(torch.nn.Linear(8, 512), torch.nn.Linear(512, 8))
    large.train()
    small.eval()
    times = interleaved_latency_ms([small, large], (1, 8), rounds=2, runs=2, warmup=1)
    assert len(times) == 2 and all(t > 0 for t in times), times
    assert large.training and not small.training, "training flags not restored"


# Untrained weights straight to prune: the prune phase's outputs in a few seconds.
PRUNE_ONLY = [*TINY_UNET, "phases.sparsify.epochs=0", "phases.finetune.epochs=0", "deepspeed.zero_stage=0"]


def test_prune_logs_the_filters_kept_per_channel_group_as_report_json_lists_them(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """After the prune phase one log block lists each channel group's layers and filters kept / total, then a
    total line; report.json's kept_filters rows name the same layers."""
    capsys.readouterr()
    report = run_pipeline(load_config(None, [*PRUNE_ONLY, f"out_dir={tmp_path}", "prune.filter_fraction=0.5",
                                             "prune.round_to=1"]))
    err = capsys.readouterr().err.splitlines()
    rows = report["kept_filters"]
    assert rows == report["phases"]["prune"]["kept_filters"] == json.loads(
        (tmp_path / "report.json").read_text())["kept_filters"], "kept_filters: one list, report.json's"
    assert [row["layers"] for row in rows][:3] == [["stem.0"], ["stem.3"], ["downs.0.1.0"]], rows
    start = next(i for i, line in enumerate(err) if "[prune] filters kept per channel group" in line)
    assert err[start].endswith("[prune] filters kept per channel group: kept / total (% kept), layers"), err[start]
    block = [line.split() for line in err[start + 1:start + 2 + len(rows)]]
    assert [(int(b[0]), int(b[2]), b[5]) for b in block[:-1]] == [
        (row["kept"], row["total"], row["layers"][0]) for row in rows], block
    kept, total = sum(row["kept"] for row in rows), sum(row["total"] for row in rows)
    assert err[start + 1 + len(rows)] == (f"   {kept} / {total}  50.0 %  total: {len(rows)} of {len(rows)} groups "
                                          "lost filters"), err[start + 1 + len(rows)]
    assert kept == total // 2 and report["params"]["pruned"] < report["params"]["dense"]


def test_the_prune_phase_says_once_what_the_cap_changed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Fresh-user trial: prune.filter_fraction=0.9 was capped at 75 % silently, and rounding the 2 channels left of
    the 8-channel groups up to 8 removed nothing from them; now one line each, also in report.json and, short, in the
    end-of-run table (it did not show them)."""
    capsys.readouterr()
    run_pipeline(load_config(None, [*PRUNE_ONLY, f"out_dir={tmp_path}", "prune.filter_fraction=0.9"]))
    out, err = capsys.readouterr()
    said = [line.partition("[prune] ")[2] for line in err.splitlines() if "[prune] prune." in line]
    notes = json.loads((tmp_path / "report.json").read_text())["phases"]["prune"]["selection_notes"]
    assert said == notes and len(notes) == 2, said
    assert notes[0].startswith("prune.round_to=8: 4 groups of 8 channels keep all 8 (2 rounded up): stem.0, "), notes
    assert notes[1].startswith("prune.max_filter_fraction=0.75 caps filter_fraction 0.9 in "), notes
    table = [line.removeprefix("selection    ") for line in out.splitlines() if line.startswith("selection    ")]
    assert table == [notes[0].replace(", ups.1.conv.3;", ", ...;"), notes[1]], table  # cut at a name, advice kept
    assert all(len(line) <= 150 for line in table), table


def test_a_run_that_removed_no_filter_times_no_latency(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """No filter removed: dense and compressed are one architecture, so neither the quick timing nor the
    deploy.latency table runs (one line says so) and report.json, like the summary, compares no latency."""
    capsys.readouterr()
    report = run_pipeline(load_config(None, [*PRUNE_ONLY, f"out_dir={tmp_path}", "prune.filter_norm_threshold=0",
                                             "deploy.latency=true", "deploy.latency_repeats=3",
                                             "deploy.latency_batch=2"]))
    out, err = capsys.readouterr()
    assert all(row["kept"] == row["total"] for row in report["kept_filters"]), report["kept_filters"]
    saved = json.loads((tmp_path / "report.json").read_text())
    for key in ("latency", "latency_ms"):
        assert key not in report and key not in saved, f"{key} timed two copies of one architecture: {saved.get(key)}"
    assert not (tmp_path / "latency.json").exists() and "[latency]" not in err, "the latency table was timed"
    said = [line for line in err.splitlines() if "latency not timed" in line]
    assert len(said) == 1 and said[0].endswith("[deploy] latency not timed: no filter was removed, so the compressed "
                                               "model is the dense architecture; report.json has no latency"), said
    assert "latency      not compared: no filter was removed" in out, out
    why = saved["phases"]["prune"]["why_nothing_removed"]
    assert why.startswith("no filter's l2 norm relative to its group's strongest is below"), why
    (tmp_path / "latency.json").write_text("{}")  # as a run before nothing-removed runs stopped timing wrote it
    again = run_pipeline(load_config(None, [*PRUNE_ONLY, f"out_dir={tmp_path}", "prune.filter_norm_threshold=0",
                                            "deploy.latency=true", "deploy.latency_repeats=3",
                                            "deploy.latency_batch=2"]))
    assert "latency" not in again and "latency_ms" not in again, again.get("latency_ms")
    out, err = capsys.readouterr()
    assert ("[deploy] latency not timed: report.json has no latency table; latency.json is kept from an earlier "
            "run, not part of this report") in err
    # the re-run runs no phase, so prints no prune warning: the reason itself, once, not a pointer to that warning
    assert "[prune]" not in err and "says why" not in out + err, out + err
    assert (out + err).count(why) == 1 and f"params       {again['params']['dense']:,} (no filter removed: {why})" \
        in out.splitlines(), out



def test_latency_of_an_export_with_filters_removed_is_not_headed_no_weight_pruned(
        structural: tuple[Path, list[str], dict], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Fresh-user trial 15: `sparsetrain bench latency` headed a Method 2 segmentation export whose filters were
    removed `(no weight pruned, finetune phase)` on a run with `params 488,001 -> 122,809`: the heading looked at
    zeroed weights only. Removed filters are compression too: `(structural, finetune phase)`, end to end."""
    run, _, report = structural
    assert report["params"]["pruned"] < report["params"]["dense"]
    capsys.readouterr()
    assert main(["bench", "latency", str(run), "--batch", "2", "--repeats", "3", "--no-memory",
                 "--out", str(tmp_path / "bench")]) == 0
    printed = capsys.readouterr().out
    assert "latency of unet_tiny (structural, finetune phase), input" in printed, printed
    assert "no weight pruned" not in printed, printed
