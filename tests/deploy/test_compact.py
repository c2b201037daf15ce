"""A Method 1 run at high sparsity writes export/compact/: its dead units removed, smaller than the masked model,
verified, listed in report.json and the manifest, loadable by load_compressed, and timed in the run's latency table
beside the dense and masked models (the report's latency headline is its speed-up); deploy.compact=false (or an
export without dead units) writes none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import sparsetrain
from sparsetrain.deploy.folder import write_export
from sparsetrain.pipeline import run_pipeline
from tests.core.conftest import tiny_config

COMPACT_RUN = ("deploy.compact=true", "prune={rule: layer_sparsity, sparsity: 0.97}", "phases.sparsify.epochs=1",
               "phases.finetune.epochs=0.5", "deploy.latency=true", "deploy.latency_repeats=3",
               "deploy.latency_batch=2", "report.plots=true")  # latency.png


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("compact") / "run"
    report = run_pipeline(tiny_config(out, *COMPACT_RUN))
    return out, report


def test_compact_export_is_written_verified_and_reported(run: tuple[Path, dict]) -> None:
    out, report = run
    entry = report["export"]["compact"]
    manifest = json.loads((out / "export" / "manifest.json").read_text())
    assert manifest["formats"]["compact"] == entry
    assert entry["files"] == ["compact/architecture.json", "compact/model.safetensors"]
    assert entry["bytes"] == sum((out / "export" / f).stat().st_size for f in entry["files"])
    assert entry["weights_bytes"] == (out / "export" / "compact" / "model.safetensors").stat().st_size
    assert entry["ok"] and entry["max_abs_diff"] <= entry["tolerance"]
    assert sum(entry["units_removed"].values()) > 0
    assert entry["params"] < entry["masked_params"] and entry["nonzero_params"] <= entry["masked_nonzero_params"]


def test_compact_model_loads_and_matches_the_masked_model(run: tuple[Path, dict]) -> None:
    out, report = run
    entry = report["export"]["compact"]
    compact = sparsetrain.load_compressed(out, "compact")
    masked = sparsetrain.load_compressed(out, "safetensors")
    assert compact.export_format == "compact" and compact.preprocessing == masked.preprocessing
    assert sum(p.numel() for p in compact.parameters()) == entry["params"]
    assert compact.fc1.out_features == 300 - entry["units_removed"].get("fc1", 0)
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        assert (compact(x) - masked(x)).abs().max() <= 1e-5
    same = sparsetrain.load_compressed(out / "export" / "compact")  # the folder itself loads too
    assert sum(p.numel() for p in same.parameters()) == entry["params"]
    with pytest.raises(ValueError, match=r"holds no 'compakt' model \(it has \[.*'compact'\]; did you mean 'compact'"):
        sparsetrain.load_compressed(out, "compakt")


def test_eval_of_the_compact_format_reports_the_compact_model(run: tuple[Path, dict]) -> None:
    """Labelled "compact" whether asked for by format or by folder (it used to be "safetensors" for
    `eval RUN/export/compact`); parameters from the masked architecture's count down to the compact one's; bytes of
    the one weights file compact/ holds (no bitmask file there), the size the manifest records for it."""
    from sparsetrain.deploy.evaluate import evaluate_target, format_evaluation

    out, report = run
    entry = report["export"]["compact"]
    for target, fmt in ((out, "compact"), (out / "export" / "compact", "auto")):
        result = evaluate_target(target, format=fmt)
        assert result["format"] == "compact", (target, fmt, result["format"])
        assert format_evaluation(result).startswith(f"{target} (compact, lenet300_100) on digits"), (target, fmt)
        assert result["params"] == {"total": entry["params"], "nonzero": entry["nonzero_params"],
                                    "dense": entry["masked_params"], "removed": "dead units"}, (target, fmt)
        sizes = result["bytes"]
        assert sizes["dense"] == report["bytes"]["dense"], "dense must be the unpruned architecture"
        assert "bitmask" not in sizes, f"compact/ holds no bitmask file: {sizes}"
        assert sizes["safetensors"] == sizes["compressed"] == entry["weights_bytes"], (sizes, entry)
        assert sizes["compressed_file"] == "compact/model.safetensors", sizes
        lines = {x.split()[0]: x for x in format_evaluation(result).splitlines()[1:]}
        assert lines["bytes"] == (f"bytes        {sizes['dense']:,} dense -> {sizes['compressed']:,} compressed "
                                  "(weights file compact/model.safetensors)"), lines
        assert lines["params"].startswith(f"params       {entry['masked_params']:,} -> {entry['params']:,} ("), lines


def test_bench_latency_names_a_compact_table_after_its_run(run: tuple[Path, dict]) -> None:
    from sparsetrain.deploy.latency_report import bench_stem

    out, _ = run
    assert bench_stem(out / "export" / "compact") == f"latency-{out.name}-compact"
    assert bench_stem(out / "export") == bench_stem(out) == f"latency-{out.name}"


def test_compact_off_writes_none_and_removes_an_earlier_one(run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = run
    folder = tmp_path / "export"
    shutil.copytree(out / "export", folder)
    masked = sparsetrain.load_compressed(folder, "safetensors")
    meta = json.loads((folder / "architecture.json").read_text())
    meta = {"model_name": meta["model_name"], "model_kwargs": meta["model_kwargs"], **meta["meta"]}
    manifest = write_export(masked, folder, meta=meta, example=torch.randn(2, 1, 8, 8), formats=[], compact=False)
    assert "compact" not in manifest["formats"] and not (folder / "compact").exists()
    with pytest.raises(ValueError, match="has no compact model: this export was written with deploy.compact=false"):
        sparsetrain.load_compressed(folder, "compact")


def test_a_compact_model_that_failed_its_verification_is_not_timed(run: tuple[Path, dict], tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """One test (`loading.verified_compact`) decides whether export/ holds a compact model to time: the models a
    run's latency table must have timed (`held_models`, besides dense) and the ones `bench latency` times, which
    warns when compact/ was written but failed its verification."""
    from sparsetrain.deploy.latency import _verified_compact
    from sparsetrain.deploy.loading import read_manifest, verified_compact
    from sparsetrain.deploy.run import held_models

    out, report = run
    assert verified_compact(read_manifest(out / "export")) == report["export"]["compact"]
    assert held_models({"formats": report["export"]}) == ["compressed", "compact"]
    folder = Path(shutil.copytree(out / "export", tmp_path / "export"))
    masked = sparsetrain.load_compressed(folder, "safetensors")
    meta = json.loads((folder / "architecture.json").read_text())
    meta = {"model_name": meta["model_name"], "model_kwargs": meta["model_kwargs"], **meta["meta"]}
    manifest = write_export(masked, folder, meta=meta, example=torch.randn(2, 1, 8, 8), formats=[], compact=True,
                            tolerance=-1.0)  # no difference passes
    assert manifest["formats"]["compact"]["ok"] is False and (folder / "compact").is_dir()
    assert verified_compact(manifest) is None and held_models(manifest) == ["compressed"]
    with caplog.at_level("WARNING"):
        assert _verified_compact(folder) is None
    assert f"[latency] {folder}/compact/ failed its verification (max abs diff " in caplog.text, caplog.text
    assert verified_compact(read_manifest(tmp_path)) is None  # no manifest at all


def test_rerun_re_exports_when_the_compact_model_is_missing(run: tuple[Path, dict], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out, report = run
    copy = Path(shutil.copytree(out, tmp_path / "copy"))
    (copy / "export" / "compact" / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"compact is incomplete: model.safetensors is missing; re-export the run"):
        sparsetrain.load_compressed(copy, "compact")
    capsys.readouterr()
    again = run_pipeline(tiny_config(copy, *COMPACT_RUN, "deploy.latency=false"))
    err = capsys.readouterr().err
    assert "[deploy] re-exporting: export/compact/model.safetensors is missing" in err
    assert f"time it beside the dense and masked models with `sparsetrain bench latency {copy}`" in err, \
        "no latency table: the run should point to the compact model"
    assert ("[deploy] deploy.latency=false: report.json has no latency table; latency.json and latency.png are kept "
            "from an earlier run, not part of this report") in err, err
    assert "latency" not in again and "latency_ms" not in again
    assert (copy / "latency.json").is_file() and (copy / "latency.png").is_file(), "an earlier table was removed"
    assert again["export"]["compact"]["units_removed"] == report["export"]["compact"]["units_removed"]
    assert (copy / "export" / "compact" / "model.safetensors").is_file()

    # the re-timing below leaves out peak memory (6 fresh processes; the module's run measures it): the old table
    # is one timed so too, so that the models are the one setting it differs in
    table = json.loads((copy / "latency.json").read_text())
    old = {**table, "rows": [{**{k: v for k, v in r.items() if "compact" not in k},
                              "peak_memory_bytes": {"dense": None, "compressed": None}} for r in table["rows"]]}
    del old["timed"]  # as written before the compact model was timed
    (copy / "latency.json").write_text(json.dumps(old))
    (copy / "export" / "compact" / "model.safetensors").unlink()
    no_memory = (*COMPACT_RUN, "deploy.latency_memory=false")
    again = run_pipeline(tiny_config(copy, *no_memory))  # re-exports, then says why it re-times
    err = capsys.readouterr().err
    assert "[deploy] re-exporting: export/compact/model.safetensors is missing\n" in err, err
    assert "[deploy] re-timing: export/ was written anew; latency.json was timed with models compressed (export/ " \
        "holds: compressed, compact)\n" in err, err  # as export's stale-table line: dense is never in export/
    assert "bench latency" not in err, "the table times the compact model: the pointer adds nothing"
    assert list(again["latency"]["timed"]) == ["dense", "compressed", "compact"]
    assert again["latency_ms"]["model"] == "compact"

    third = run_pipeline(tiny_config(copy, *no_memory))  # latency.json (with compact) is kept
    assert "latency.json was timed with these deploy settings on this export: not timed again" in \
        capsys.readouterr().err
    assert third["latency"] == again["latency"]


def test_run_times_the_compact_model_in_the_same_rounds(run: tuple[Path, dict]) -> None:
    """latency.json names the three models timed; every row holds the compact model's times (as many as dense's,
    paired round by round), speed-ups, peak memory and slowest layers; storage gives its weights file."""
    out, report = run
    entry, table = report["export"]["compact"], report["latency"]
    assert json.loads((out / "latency.json").read_text()) == json.loads(json.dumps(table))
    assert list(table["timed"]) == ["dense", "compressed", "compact"], table["timed"]
    assert table["timed"]["compact"].startswith("export/compact/model.safetensors"), table["timed"]
    assert {(r["runtime"], r["batch"]) for r in table["rows"]} >= {("torch", 1), ("torch", 2), ("onnxruntime", 1)}
    for row in table["rows"]:
        assert row["compact_ms"]["runs"] == row["dense_ms"]["runs"] == row["compressed_ms"]["runs"] == 3, row
        assert 0 < row["compact_ms"]["p20"] <= row["compact_ms"]["median"] <= row["compact_ms"]["p80"], row
        assert row["speedup_compact"] == pytest.approx(row["dense_ms"]["p20"] / row["compact_ms"]["p20"]), row
        assert row["speedup_compact_paired"] > 0 and row["speedup_compact_median"] > 0, row
        # measured in its own process (an int, not None); the growth of the peak resident set can be 0 bytes for a
        # model of a few kB whose pages were already resident (seen once in CI at batch 1)
        assert isinstance(row["peak_memory_bytes"]["compact"], int) and row["peak_memory_bytes"]["compact"] >= 0, row
        assert "compact: " in row["note"], row["note"]
        key = f"{row['runtime']}-{row['device']}/batch{row['batch']}/compact"
        assert table["slowest_layers"][key], key
    storage = table["storage"]
    assert storage["compact_bytes"] == entry["weights_bytes"] and storage["compact_file"] == entry["files"][-1]
    assert storage["params"]["compact"] == entry["params"] < storage["params"]["compressed"]
    assert (out / "latency.png").stat().st_size > 1000


def test_the_reports_latency_headline_is_the_compact_models(run: tuple[Path, dict]) -> None:
    from sparsetrain.deploy.latency_report import noise_range, noise_words, row_spread
    from sparsetrain.report import format_table

    out, report = run
    row = next(r for r in report["latency"]["rows"] if (r["runtime"], r["batch"]) == ("torch", 1))
    headline = report["latency_ms"]
    assert headline["model"] == "compact" and headline["speedup"] == row["speedup_compact"]
    assert (headline["dense"], headline["compact"]) == (row["dense_ms"]["p20"], row["compact_ms"]["p20"])
    assert "pruned" not in headline, "pruned is Method 2's key: this is the compact model's time"
    line = next(x for x in format_table(report).splitlines() if x.startswith("latency"))
    noisy = noise_range(row["speedup_compact"], row["speedup_compact_median"], row["speedup_compact_paired"],
                        row_spread(row, "speedup_compact"))
    caveat = f", {noise_words(noisy)}" if noisy else ""  # 3 rounds: the ratios may well disagree
    assert headline["speedup_paired_p20"] == row["speedup_compact_paired_p20"], "the spread reaches the report"
    assert f"({row['speedup_compact']:.2f}x{caveat}; compact model: export/compact/, dead units removed;" in line, line
    assert json.loads((out / "report.json").read_text())["latency_ms"] == headline


def test_bench_latency_of_the_run_times_compact_and_of_compact_still_works(run: tuple[Path, dict], tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture) -> None:
    from sparsetrain.cli import main

    out, report = run
    args = ["--repeats", "3", "--batch", "2", "--no-memory", "--out", str(tmp_path)]
    assert main(["bench", "latency", str(out), *args]) == 0
    printed = capsys.readouterr().out
    table = json.loads((tmp_path / f"latency-{out.name}.json").read_text())
    assert list(table["timed"]) == ["dense", "compressed", "compact"]
    assert "compact ms" in printed and "compact/model.safetensors" in printed, printed
    assert main(["bench", "latency", str(out / "export" / "compact"), *args]) == 0
    table = json.loads((tmp_path / f"latency-{out.name}-compact.json").read_text())
    assert list(table["timed"]) == ["dense", "compact"], "keyed compact, as in the run's own three-model table"
    assert table["kind"] == "compact", "the compact model, not a Method 2 (structural) export"
    assert table["timed"]["compact"] == ("compact/model.safetensors (the compact model: dead units removed, a "
                                         "smaller dense graph)"), table["timed"]
    entry = report["export"]["compact"]
    assert table["storage"]["params"] == {"dense": report["latency"]["storage"]["params"]["dense"],
                                          "compact": entry["params"]}, table["storage"]
    assert (table["storage"]["compact_bytes"], table["storage"]["compact_file"]) == (entry["weights_bytes"],
                                                                                     entry["files"][-1])
    assert table["storage"]["compact_nonzero_params"] == entry["nonzero_params"]
    assert table["storage"]["dense_bytes"] == report["bytes"]["dense"] == report["latency"]["storage"]["dense_bytes"], \
        "one dense size everywhere: the dense architecture's safetensors file, as the weights files are measured"
    for row in table["rows"]:
        assert not any("compressed" in key for key in row) and "speedup" not in row, sorted(row)
        assert row["speedup_compact"] == pytest.approx(row["dense_ms"]["p20"] / row["compact_ms"]["p20"]), row
        assert set(row["peak_memory_bytes"]) == {"dense", "compact"}, row
    printed = capsys.readouterr().out
    assert printed.startswith("latency of lenet300_100 (compact, finetune phase)"), printed
    assert "compact ms" in printed and "compressed ms" not in printed and "peak MB d->compact " in printed, printed
    assert f"storage: {table['storage']['dense_bytes']:,} B dense -> compact: {entry['weights_bytes']:,} B" in printed


def test_a_compact_table_in_the_old_layout_is_still_printed_and_plotted(run: tuple[Path, dict],
                                                                        tmp_path: Path) -> None:
    """`bench latency RUN/export/compact` tables written before the compact model was keyed "compact" (it was
    "compressed" there) still print and plot."""
    from sparsetrain.deploy.latency_report import format_latency, plot_latency

    _, report = run
    table = report["latency"]
    old = {**table, "kind": "compact", "timed": {"dense": "", "compressed": ""},
           "rows": [{k: v for k, v in r.items() if "compact" not in k} for r in table["rows"]],
           "storage": {k: v for k, v in table["storage"].items() if not k.startswith("compact")}}
    printed = format_latency(old)
    assert "compressed ms" in printed and "compact ms" not in printed, printed
    plot_latency(old, tmp_path / "old.png")
    assert (tmp_path / "old.png").stat().st_size > 1000


def test_export_without_compact_drops_the_latency_table_that_timed_it(run: tuple[Path, dict], tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """An export that keeps the models the table timed (other formats) leaves report.json's latency alone; one
    without export/compact/ removes report.json's latency and latency_ms (they timed compact) and says so in one
    line; latency.json stays on disk as it was."""
    from sparsetrain.cli import main

    out, report = run
    copy = Path(shutil.copytree(out, tmp_path / "copy"))
    table = (copy / "latency.json").read_bytes()
    capsys.readouterr()
    assert main(["export", str(copy), "deploy.formats=[torch_export]"]) == 0
    assert "latency.json was timed on the previous export" not in capsys.readouterr().err
    kept = json.loads((copy / "report.json").read_text())
    assert (kept["latency"], kept["latency_ms"]) == (report["latency"], report["latency_ms"])

    assert main(["export", str(copy), "deploy.compact=false"]) == 0
    err = capsys.readouterr().err
    assert (f"[export] latency.json was timed on the previous export (models compressed, compact, phase "
            "finetune), not on what export/ now holds (models compressed, phase finetune): report.json's "
            "latency and latency_ms are removed and latency.json is left as it was; re-time with `sparsetrain bench "
            f"latency {copy}` or re-run the recipe\n") in err, err
    assert "[export] removed export/compact/, the compact model of the previous export (deploy.compact=false)\n" \
        in err, err
    after = json.loads((copy / "report.json").read_text())
    assert "latency" not in after and "latency_ms" not in after, sorted(after)
    assert "compact" not in after["export"] and not (copy / "export" / "compact").exists()
    assert (copy / "latency.json").read_bytes() == table

    # what is gone is named, with how to get it back: eval, bench latency and load_compressed of export/compact
    missing = (f"{copy / 'export'} has no compact model: this export was written with deploy.compact=false, or no "
               f"unit was dead (export/compact/ is Method 1's model without its dead units); write it with "
               f"`sparsetrain export {copy} deploy.compact=true`")
    assert main(["eval", str(copy / "export" / "compact")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"error: eval: {missing}")
    assert main(["bench", "latency", str(copy / "export" / "compact"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"error: bench latency: {missing}")
    for target, fmt in ((copy, "compact"), (copy / "export" / "compact", "auto"),
                        (copy / "export" / "compact" / "model.safetensors", "auto")):
        with pytest.raises(ValueError) as raised:
            sparsetrain.load_compressed(target, fmt)
        assert str(raised.value) == f"load_compressed: {missing}", (target, str(raised.value))

