"""export/ and latency.json on re-runs and re-exports: an export leaves no file of an earlier one behind and
load_compressed refuses a file its manifest does not list; a re-run keeps what is up to date and says in one line
why it writes anything again; latency.json is reused only when it records the run's deploy settings (not those of
a `bench latency` call); `export --phase` updates state.json and report.json (dropping a latency table it no
longer matches); export refuses the deploy.latency* settings (it does not time). Real tiny runs
(tests.core.conftest.TINY)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import sparsetrain
from sparsetrain.cli import main
from sparsetrain.errors import InputError
from sparsetrain.pipeline import run_pipeline
from tests.core.conftest import tiny_config

SHORT = ("phases.sparsify.epochs=0.5", "phases.finetune.epochs=0.3", "deploy.formats=[torch_export]")
# no peak memory (a child process per model, most of a timing's cost): these tests read which table is reused
LATENCY = ("deploy.latency=true", "deploy.latency_repeats=3", "deploy.latency_memory=false", "deploy.latency_batch=2")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reuse") / "run"
    run_pipeline(tiny_config(out, *SHORT))
    return out


@pytest.fixture
def copy(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "copy"))


@dataclass(frozen=True)
class Timed:
    """A copy of `finished` re-run with the latency settings only (LATENCY): what that re-run returned and logged,
    and the stamps of export/ before it."""

    run: Path
    report: dict
    log: str
    export_before: dict[str, int]


@pytest.fixture(scope="module")
def timed(finished: Path, tmp_path_factory: pytest.TempPathFactory) -> Timed:
    """`finished` with its own latency table: timed once for the tests that start from a timed run. Tests change
    copies of `run` only (`copy_of`)."""
    run = Path(shutil.copytree(finished, tmp_path_factory.mktemp("timed") / "run"))
    before = _stamps(run / "export")
    log = io.StringIO()
    with contextlib.redirect_stderr(log):  # the run's log handler writes to the stderr of its start
        report = run_pipeline(tiny_config(run, *SHORT, *LATENCY, "report.plots=true"))  # latency.png
    return Timed(run, report, log.getvalue(), before)


def copy_of(run: Path, tmp_path: Path) -> Path:
    """A copy of a run directory (file times kept: `_stamps` of the copy equal the original's)."""
    return Path(shutil.copytree(run, tmp_path / "copy"))


def _rerun(run: Path, capsys: pytest.CaptureFixture, *extra: str) -> tuple[dict, str]:
    capsys.readouterr()
    report = run_pipeline(tiny_config(run, *SHORT, *extra))
    return report, capsys.readouterr().err


def _stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_export_removes_the_files_it_no_longer_writes(copy: Path, capsys: pytest.CaptureFixture) -> None:
    export = copy / "export"
    (export / "notes.txt").write_text("mine")
    old_program = (export / "model.pt2").read_bytes()
    _, err = _rerun(copy, capsys, "deploy.formats=[]")
    assert "[deploy] re-exporting: deploy settings changed (deploy.formats ['torch_export'] -> [])\n" in err, err
    assert not (export / "model.pt2").exists(), "the earlier export's model.pt2 outlived its manifest"
    assert (export / "notes.txt").read_text() == "mine", "a file the export does not write was removed"
    (export / "model.pt2").write_bytes(old_program)  # a stale program, as an older sparsetrain left it
    for target, fmt in ((copy, "torch_export"), (export / "model.pt2", "auto")):
        with pytest.raises(InputError, match=r"model\.pt2 is not listed in export/manifest\.json \(it lists "
                                             r"safetensors, bitmask\): a file left by another export"):
            sparsetrain.load_compressed(target, fmt)
    assert sparsetrain.load_compressed(copy).export_format == "safetensors"


@pytest.mark.parametrize("phase", [[], ["--phase", "finetune"]])
def test_export_of_a_run_without_state_is_one_line(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   phase: list[str]) -> None:
    run = tmp_path / "failed_at_start"
    run.mkdir()
    shutil.copy(finished / "config.yaml", run / "config.yaml")  # a run that stopped before any phase finished
    capsys.readouterr()
    assert main(["export", str(run), *phase]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: export: {run} has no finished phase to export"


def test_rerun_says_why_it_re_exports_and_export_phase_is_recorded(copy: Path, capsys: pytest.CaptureFixture) -> None:
    (copy / "export" / "model.pt2").unlink()
    _, err = _rerun(copy, capsys)
    assert "[deploy] re-exporting: export/model.pt2 is missing\n" in err, err
    assert (copy / "export" / "model.pt2").is_file()

    capsys.readouterr()
    assert main(["export", str(copy), "--phase", "sparsify"]) == 0
    assert f"[export] {copy / 'export'} now holds the sparsify model: report.json's export section says so" in \
        capsys.readouterr().err
    state, report = (json.loads((copy / name).read_text()) for name in ("state.json", "report.json"))
    manifest = json.loads((copy / "export" / "manifest.json").read_text())
    assert state["deployed"]["phase"] == "sparsify"
    assert report["export_phase"] == "sparsify" and report["export"] == manifest["formats"]

    report, err = _rerun(copy, capsys)
    assert "[deploy] re-exporting: export/ holds the sparsify model, not the final phase finetune\n" in err, err
    assert report["export_phase"] == "finetune"
    assert json.loads((copy / "state.json").read_text())["deployed"]["phase"] == "finetune"


def test_latency_json_is_reused_only_when_timed_with_the_run_settings(timed: Timed, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    export, report, err = timed.export_before, timed.report, timed.log
    # latency settings only: the export is kept, the table is new
    assert "[deploy] re-timing: latency.json is missing\n" in err, err
    assert "already holds the finetune model for these deploy settings: not exported again" in err, err
    assert report["latency"]["repeats"] == 3 and _stamps(timed.run / "export") == export

    copy = copy_of(timed.run, tmp_path)
    report_again, err = _rerun(copy, capsys, *LATENCY)
    assert "latency.json was timed with these deploy settings on this export: not timed again" in err, err
    assert report_again["latency"] == report["latency"] and _stamps(copy / "export") == export

    report, err = _rerun(copy, capsys, *LATENCY[:-1], "deploy.latency_batch=3")  # deploy.* may change on a re-run
    assert "[deploy] re-timing: latency.json was timed with batches [1, 2] (deploy: [1, 3])\n" in err, err
    kept = next(line for line in err.splitlines() if "report.plots=false: no plots drawn" in line)  # TINY
    assert kept.endswith("latency.png are kept from an earlier run, not part of this report"), kept  # re-timed
    assert {r["batch"] for r in report["latency"]["rows"]} == {1, 3}
    assert json.loads((copy / "latency.json").read_text())["rows"] == report["latency"]["rows"]


def test_bench_latency_leaves_the_runs_own_table_alone(timed: Timed, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A benchmark with other settings writes its own file (default runs/bench/latency-<run>.json under the current
    folder, or --out), never the run's latency.json or report.json, so a re-run of the run keeps its table."""
    copy = copy_of(timed.run, tmp_path)
    own = {name: (copy / name).read_bytes() for name in ("latency.json", "latency.png", "report.json")}
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["bench", "latency", str(copy), "--repeats", "4", "--batch", "3", "--no-memory"]) == 0
    printed = capsys.readouterr().out
    assert {name: (copy / name).read_bytes() for name in own} == own, "bench latency changed the run's results"
    assert printed.endswith(f"wrote {Path('runs', 'bench', 'latency-copy.json')}\n"), printed[-200:]
    assert json.loads((tmp_path / "runs" / "bench" / "latency-copy.json").read_text())["repeats"] == 4
    _, err = _rerun(copy, capsys, *LATENCY)
    assert "latency.json was timed with these deploy settings on this export: not timed again" in err, err
    (copy / "latency.png").unlink()  # as a run with report.plots=false leaves it: the reused table is drawn
    _, err = _rerun(copy, capsys, *LATENCY, "report.plots=true")
    assert "not timed again" in err and (copy / "latency.png").stat().st_size > 1000, err


def test_export_of_another_phase_drops_the_latency_table_of_the_final_one(
        timed: Timed, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """latency.json timed the final phase's export: after `export --phase sparsify` report.json no longer carries
    it (one line says so; latency.json is left on disk), and `bench latency` times the phase export/ now holds."""
    from sparsetrain.deploy.latency import latency_table
    from sparsetrain.deploy.latency_report import format_latency

    copy = copy_of(timed.run, tmp_path)
    assert timed.report["latency"]["phase"] == "finetune"
    table = (copy / "latency.json").read_bytes()
    capsys.readouterr()
    assert main(["export", str(copy), "--phase", "sparsify"]) == 0
    err = capsys.readouterr().err
    assert ("[export] latency.json was timed on the previous export (models compressed, phase finetune), not "
            "on what export/ now holds (models compressed, phase sparsify): report.json's latency and "
            "latency_ms are removed") in err, err
    assert (f"{copy / 'export'} now holds the sparsify model: report.json's export section says so, its other "
            "numbers describe the final phase finetune") in err, err
    report = json.loads((copy / "report.json").read_text())
    assert report["export_phase"] == "sparsify" and "latency" not in report and "latency_ms" not in report
    assert (copy / "latency.json").read_bytes() == table
    table = latency_table(copy / "export", batches=(1,), repeats=1, memory=False)  # what bench latency times now
    assert table["phase"] == "sparsify"
    # sparsify comes before pruning: every weight is non-zero, not "unstructured"
    assert format_latency(table).startswith("latency of lenet300_100 (no weight pruned, sparsify phase), input")


def test_export_takes_deploy_overrides(copy: Path, capsys: pytest.CaptureFixture) -> None:
    """A run exported without deploy.compact and onnx is re-exported with them by `sparsetrain export RUN deploy.*=`;
    state.json and config.yaml record the deploy settings used, as after a re-run with other deploy settings."""
    import yaml

    before = yaml.safe_load((copy / "config.yaml").read_text())
    capsys.readouterr()
    assert main(["export", str(copy), "deploy.compact=true", "deploy.formats=[onnx]"]) == 0
    err = capsys.readouterr().err
    manifest = json.loads((copy / "export" / "manifest.json").read_text())
    assert manifest["formats"]["onnx"]["ok"] and (copy / "export" / "model.onnx").is_file()
    assert not (copy / "export" / "model.pt2").exists(), "the run's torch_export format was written anyway"
    assert ("compact" in manifest["formats"]) != ("[export] compact: no dead units, not written" in err), err
    deployed = json.loads((copy / "state.json").read_text())["deployed"]["deploy"]
    assert (deployed["compact"], deployed["formats"]) == (True, ["onnx"])
    after = yaml.safe_load((copy / "config.yaml").read_text())
    assert after["deploy"] == deployed
    assert {k: v for k, v in after.items() if k not in ("deploy", "out_dir", "tracking")} == \
        {k: v for k, v in before.items() if k not in ("deploy", "out_dir", "tracking")}


@pytest.mark.parametrize(("override", "line"), [
    ("model.name=resnet18", "error: model.name: export only takes deploy.* overrides; model.name made the run's "
     "weights (change it in a new run)"),
    ("alpha0=1", "error: regularizer.alpha0: export only takes deploy.* overrides; regularizer.alpha0 made the run's "
     "weights (change it in a new run)"),
    *((setting, f"error: {key}: export only takes deploy.* overrides; {key} is an execution setting of the run, read "
       "from its config.yaml (a re-run with `sparsetrain run` may change it)")  # it made no weights: not said so
      for setting, key in (("train.threads=1", "train.threads"), ("tracking.mode=offline", "tracking.mode"))),
    ("deploy.formats=[onx]", "error: deploy.formats.0: Input should be 'onnx' or 'torch_export' (got 'onx')"),
    *((timing, f"error: {key}: export does not time the model; time this export with `sparsetrain bench latency "
       "{run}` (its own table), or set it for a re-run of the recipe (`sparsetrain run`, which times into "
       "latency.json)") for timing, key in (("deploy.latency=true", "deploy.latency"),
                                            ("latency_repeats=5", "deploy.latency_repeats"),
                                            ("deploy={compact: true, latency_threads: 2}", "deploy.latency_threads"))),
])
def test_export_refuses_other_overrides_in_one_line(finished: Path, capsys: pytest.CaptureFixture, override: str,
                                                    line: str) -> None:
    stamps = _stamps(finished / "export")
    capsys.readouterr()
    assert main(["export", str(finished), override]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == line.replace("{run}", str(finished))
    assert _stamps(finished / "export") == stamps, "a refused export touched export/"


def test_a_table_from_before_the_compact_model_was_timed_names_two_models() -> None:
    """latency.json written before `timed` was recorded timed dense and compressed: a run whose export now has a
    compact model re-times it (`_latency_to_reuse` compares the models too)."""
    from sparsetrain.deploy.run import _timed_with

    rows = [{"batch": b, "device": "cpu", "peak_memory_bytes": {"dense": 1, "compressed": 1}} for b in (1, 2)]
    old = {"rows": rows, "repeats": 3, "threads": 1}
    assert _timed_with(old) == {"batches": [1, 2], "repeats": 3, "threads": 1, "memory": True,
                                "models": ["compressed"]}, "dense is never in export/: not compared"
    assert _timed_with({**old, "timed": {"dense": "", "compressed": "", "compact": ""}})["models"][-1] == "compact"
