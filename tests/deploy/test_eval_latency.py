"""`sparsetrain eval` and the dense-vs-compressed latency table (`sparsetrain bench latency`, end of `run`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from sparsetrain.cli import main, usage
from sparsetrain.deploy.latency import _note, interleaved_times, latency_table
from sparsetrain.deploy.latency_report import format_latency
from sparsetrain.pipeline import run_pipeline
from tests.core.conftest import tiny_config

LATENCY_ON = ("deploy.latency=true", "deploy.latency_repeats=3", "deploy.latency_batch=4")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny unstructured run with the default exports and the latency table at the end of run."""
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(out, "deploy.formats=[onnx,torch_export]", *LATENCY_ON, "report.plots=true")  # latency.png
    return out, run_pipeline(cfg)


def test_run_writes_the_latency_table_into_the_report(run: tuple[Path, dict]) -> None:
    out, report = run
    table = json.loads((out / "report.json").read_text())["latency"]
    assert table == json.loads(json.dumps(report["latency"]))
    keys = {(r["runtime"], r["device"], r["batch"]) for r in table["rows"]}
    assert {("torch", "cpu", 1), ("torch", "cpu", 4), ("onnxruntime", "cpu", 1), ("onnxruntime", "cpu", 4)} <= keys
    for row in table["rows"]:
        for which in ("dense_ms", "compressed_ms"):
            stats = row[which]
            assert 0 < stats["p20"] <= stats["median"] <= stats["p80"] and stats["runs"] == 3, (row, which)
        assert row["speedup"] > 0 and row["speedup_paired"] > 0
        assert row["peak_memory_bytes"]["dense"] > 0 and row["peak_memory_bytes"]["compressed"] > 0, row
    assert table["kind"] == "unstructured" and table["threads"] == 1
    assert list(table["timed"]) == ["dense", "compressed"], "no export/compact/ (deploy.compact=false): two models"
    assert "compact_ms" not in table["rows"][0] and "latency_ms" not in report, "no compact: no Method 1 headline"
    assert table["storage"]["ratio"] > 1.5, "an 80 % sparse model should store in far fewer bytes"
    for key, layers in table["slowest_layers"].items():
        assert 0 < len(layers) <= 10 and all(row["ms"] >= 0 for row in layers), key
    assert {row["layer"] for row in table["slowest_layers"]["torch-cpu/batch1/compressed"]} == {"fc1", "fc2", "head"}
    assert (out / "latency.png").stat().st_size > 1000


def test_interleaving_alternates_the_order_every_round() -> None:
    order: list[str] = []
    times = interleaved_times({"dense": lambda: order.append("d"), "compressed": lambda: order.append("c")},
                              repeats=4, warmup=1)
    assert "".join(order) == "dc" + "cd" + "dc" + "cd" + "dc"  # one warm-up round, four timed
    assert len(times["dense"]) == len(times["compressed"]) == 4


def test_three_models_share_every_round_in_alternating_order() -> None:
    """Dense, compressed and compact in the same rounds: forward, then backward, so each sees the others' load."""
    order: list[str] = []
    letters = {"dense": "d", "compressed": "c", "compact": "k"}
    calls = {name: (lambda n=letter: order.append(n)) for name, letter in letters.items()}
    times = interleaved_times(calls, repeats=3, warmup=1)
    assert "".join(order) == "dck" + "kcd" + "dck" + "kcd"
    assert len(times["dense"]) == len(times["compressed"]) == len(times["compact"]) == 3


def test_fast_calls_are_timed_in_blocks() -> None:
    counts = {"dense": 0, "compressed": 0}
    calls = {name: (lambda n=name: counts.__setitem__(n, counts[n] + 1)) for name in counts}
    times = interleaved_times(calls, repeats=3, warmup=1, min_sample_ms=2.0)
    assert len(times["dense"]) == len(times["compressed"]) == 3
    assert counts["dense"] == counts["compressed"] > 3 * 10, "a no-op should be repeated many times per sample"


def _row(speedup: float | None = None, compact: float | None = None, *, spread: dict | None = None) -> dict:
    """A table row's speed-ups: each model's three ratios equal (they agree) unless `spread` gives the median and
    paired ones, e.g. {"speedup_compact": (0.92, 0.91)}."""
    row = {}
    for key, value in (("speedup", speedup), ("speedup_compact", compact)):
        if value is not None:
            median, paired = (spread or {}).get(key, (value, value))
            row.update({key: value, f"{key}_median": median, f"{key}_paired": paired})
    return row


def test_unstructured_without_speedup_says_so_with_the_storage_saving() -> None:
    assert _note("unstructured", _row(1.02), 9.9) == ("no speed-up: unstructured zeros run as a dense graph (1.02x); "
                                                      "storage 9.9x smaller")
    assert _note("unstructured", _row(1.13), 9.0).startswith("no speed-up expected: the same dense graph, 1.13x is")
    assert _note("structural", _row(1.8), 3.0) == ""
    assert _note("structural", _row(0.9), 1.7) == "slower than dense (0.90x)"
    assert _note("unstructured", _row(0.97), 1.0) == ("no speed-up: unstructured zeros run as a dense graph (0.97x); "
                                                      "storage the same size"), "was `storage 1.0x smaller`"
    assert _note("unstructured", _row(1.02, 1.45), 9.9).endswith("storage 9.9x smaller; compact: dead units "
                                                                 "removed, 1.45x")
    assert _note("unstructured", _row(1.0, 0.97), 9.9).endswith("; compact: slower than dense (0.97x)")
    assert _note("compact", _row(compact=1.45), None) == "compact: dead units removed, 1.45x", \
        "RUN/export/compact timed alone: dense vs compact only"


def test_a_model_with_no_weight_pruned_claims_no_zeros() -> None:
    """The dense phase's export has every parameter non-zero: its rows said `no speed-up: unstructured zeros run as
    a dense graph (0.94x); storage 1.0x smaller`."""
    note = _note("unstructured", _row(0.94), 1.0, unpruned=True)
    assert note == "no weight pruned: dense and compressed are the same graph; 0.94x is timing noise"
    assert _note("unstructured", _row(1.3), 1.0, unpruned=True).endswith("; 1.30x is timing noise")


def test_latency_memory_false_times_without_peak_memory_and_re_times_a_table_that_has_it(
        run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`deploy.latency_memory=false` (the run's `bench latency --no-memory`): the table leaves every peak memory
    empty, and a re-run with it re-times a latency.json that measured memory (and keeps one that did not)."""
    import shutil

    copy = Path(shutil.copytree(run[0], tmp_path / "copy"))
    settings = ("deploy.formats=[onnx,torch_export]", *LATENCY_ON, "deploy.latency_memory=false")
    capsys.readouterr()
    report = run_pipeline(tiny_config(copy, *settings))
    err = capsys.readouterr().err
    assert "[deploy] re-timing: latency.json was timed with memory True (deploy: False)\n" in err, err
    rows = report["latency"]["rows"]
    assert rows and all(set(row["peak_memory_bytes"].values()) == {None} for row in rows), rows
    assert json.loads((copy / "latency.json").read_text())["rows"] == rows
    run_pipeline(tiny_config(copy, *settings))
    assert "latency.json was timed with these deploy settings on this export: not timed again" in \
        capsys.readouterr().err


def test_latency_of_the_dense_phase_says_no_weight_was_pruned(run: tuple[Path, dict], tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """`sparsetrain export RUN --phase sparsify` (a phase before pruning, as `--phase dense` of a run that has one),
    then `sparsetrain bench latency RUN`; and a run of the dense phase alone, whose own table (latency.json,
    report.json) times its export: each says no weight was pruned, and none claims unstructured zeros or a storage
    saving (the dense phase's 4,927,186 of 4,927,186 parameters non-zero were called `unstructured`, `storage 1.00x
    smaller`, `unstructured zeros run as a dense graph (0.94x)`)."""
    import shutil

    copy = Path(shutil.copytree(run[0], tmp_path / "copy"))
    assert main(["export", str(copy), "--phase", "sparsify"]) == 0
    capsys.readouterr()
    assert main(["bench", "latency", str(copy), "--batch", "2", "--repeats", "3", "--no-memory",
                 "--out", str(tmp_path / "bench")]) == 0
    printed = capsys.readouterr().out
    assert "latency of lenet300_100 (no weight pruned, sparsify phase)" in printed, printed
    assert "(same size)" in printed and "smaller" not in printed, printed
    assert not re.search(r"unstructured|zeros|sparsity", printed), printed
    alone = tmp_path / "dense-only"
    report = run_pipeline(tiny_config(alone, "phases.dense.enabled=true", "phases.dense.epochs=1",
                                      "deploy.latency=true", "deploy.latency_repeats=3", "deploy.latency_batch=2",
                                      "deploy.latency_memory=false"),  # the notes are read, not the memory
                          ["dense"])
    assert report["latency"]["phase"] == "dense" and report["params"]["nonzero"] == report["params"]["total"]
    assert (alone / "latency.json").is_file() and not list(alone.glob("*.png")), "report.plots=false (TINY): no PNG"
    tables = [json.loads((tmp_path / "bench" / "latency-copy.json").read_text()),
              json.loads((alone / "latency.json").read_text()), report["latency"]]
    for table in tables:
        notes = [row["note"] for row in table["rows"]]
        assert notes and all(re.fullmatch(r"no weight pruned: dense and compressed are the same graph; "
                                          r"\d+\.\d\dx is timing noise", note) for note in notes), notes


def test_a_speedup_printed_as_1_00x_is_not_called_slower() -> None:
    """The words agree with the printed number: 0.996 prints as 1.00x (it was "slower than dense (1.00x)")."""
    assert _note("structural", _row(0.996), 1.7) == ""
    assert _note("structural", _row(0.994), 1.7) == "slower than dense (0.99x)"
    assert _note("unstructured", _row(1.0, 0.996), 9.9).endswith("; compact: dead units removed, 1.00x")
    assert _note("unstructured", _row(1.0, 0.9949), 9.9).endswith("; compact: slower than dense (0.99x)")
    assert _note("unstructured", _row(1.097), 9.9).startswith("no speed-up expected: the same dense graph, 1.10x is")


def test_a_speedup_whose_ratios_disagree_is_called_within_noise() -> None:
    """One rule (`noise_range`) for the compact and the structural (Method 2) speed-up: the p20 ratio says faster
    and the median / paired ratios slower (5 rounds on a loaded machine: 1.88x vs 0.92x / 0.91x), or they differ by
    more than NOISE_MARGIN: the note gives their range instead of a speed-up."""
    from sparsetrain.deploy.latency_report import NOISE_MARGIN, noise_range

    noisy = {"speedup_compact": (0.92, 0.91)}
    assert _note("unstructured", _row(1.0, 1.88, spread=noisy), 9.9).endswith(
        "; compact: 1.88x is within noise: 0.91x-1.88x over the p20, median and paired ratios")
    assert _note("compact", _row(compact=1.88, spread=noisy), None) == (
        "compact: 1.88x is within noise: 0.91x-1.88x over the p20, median and paired ratios")
    assert _note("structural", _row(0.95, spread={"speedup": (1.02, 1.01)}), 2.0) == (
        "0.95x is within noise: 0.95x-1.02x over the p20, median and paired ratios")
    assert noise_range(1.5, 1.5 * NOISE_MARGIN + 0.02, 1.5) == (1.5, 1.9), "all faster, but far apart"
    assert noise_range(1.5, 1.5 * NOISE_MARGIN - 0.02, 1.5) is None, "all faster, within the margin"
    assert noise_range(1.45, 1.3, 1.38) is None and noise_range(0.8, 0.85, 0.82) is None
    assert noise_range(1.5, None, None) is None, "a table or report from before the median/paired ratios"
    assert _note("unstructured", _row(1.0, 1.45, spread={"speedup_compact": (1.3, 1.38)}), 9.9).endswith(
        "; compact: dead units removed, 1.45x")


def test_one_noise_rule_for_every_row_from_the_per_round_spread() -> None:
    """Trial 24: one table called 1.01x a gain ("dead units removed, 1.01x"), 0.99x "slower than dense" and 1.02x
    "within noise". A speed-up whose per-round ratios (p20-p80, kept in the row) hold 1.00x is now within noise,
    on either side of 1; one whose rounds all agree keeps its words."""
    from sparsetrain.deploy.latency_report import noise_range

    def row(compact: float, spread: tuple[float, float]) -> dict:
        return {**_row(1.0, compact), "speedup_compact_paired_p20": spread[0], "speedup_compact_paired_p80": spread[1]}

    for value in (1.01, 0.99, 1.02):
        note = _note("unstructured", row(value, (0.97, 1.04)), 9.9)
        assert note.endswith(f"; compact: {value:.2f}x is within noise: 0.97x-1.04x over the p20, median and paired "
                             "ratios"), note
    assert _note("unstructured", row(1.45, (1.3, 1.6)), 9.9).endswith("; compact: dead units removed, 1.45x")
    assert _note("structural", {**_row(0.9), "speedup_paired_p20": 0.85, "speedup_paired_p80": 0.95}, 2.0) == (
        "slower than dense (0.90x)")
    assert noise_range(1.01, 1.01, 1.01, (0.98, 1.03)) == (0.98, 1.03)
    assert noise_range(1.01, 1.01, 1.01) is None, "a table from before the spread was kept: the three ratios"


def test_slowest_layers_profile_warms_up_each_model_first() -> None:
    """Trial 24: the slowest-layers profile put dense fc1 at 0.425 ms against compact's 0.008 ms: the first model
    was profiled cold. A layer whose first call is slow (a one-off cost, as lazy set-up is) must not lead it."""
    import time

    from torch import nn

    from sparsetrain.deploy.latency import _torch_layers

    class SlowFirstCall(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.calls == 0:
                time.sleep(0.2)
            self.calls += 1
            return x

    model = nn.Sequential(SlowFirstCall(), nn.Linear(4, 4))
    x = torch.randn(1, 4)
    rows = {r["layer"]: r["ms"] for r in _torch_layers(model, lambda: model(x), runs=3)}
    assert set(rows) == {"0", "1"} and rows["0"] < 20, f"the cold first call was timed: {rows}"


def test_bench_latency_cli_prints_the_table_and_plots(run: tuple[Path, dict], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out, _ = run
    code = main(["bench", "latency", str(out / "export"), "--batch", "2", "--repeats", "3", "--no-memory",
                 "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert code == 0 and "onnxruntime cpu" in printed and "speed-up" in printed
    assert printed.count("no speed-up") == 4, "every unstructured row says it runs as a dense graph"
    own = tmp_path / f"latency-{out.name}"  # named after the run, not the export folder
    assert printed.endswith(f"wrote {own}.json\n"), printed[-200:]
    assert own.with_suffix(".png").stat().st_size > 1000
    assert json.loads(own.with_suffix(".json").read_text())["rows"][0]["batch"] == 1


def test_latency_of_a_folder_without_export_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bench latency: .* is not a run directory or export folder"):
        latency_table(tmp_path)


def test_latency_table_refuses_no_rounds_in_one_line(tmp_path: Path) -> None:
    """Called from Python with 0 rounds it ended in numpy's IndexError (the quantiles of no times)."""
    for kwargs, name in (({"repeats": 0}, "repeats"), ({"threads": 0}, "threads"), ({"batches": (1, 0)}, "batch")):
        with pytest.raises(ValueError, match=f"^bench latency: {name}: expected an integer >= 1, got 0$"):
            latency_table(tmp_path, **kwargs)


def test_eval_of_run_export_and_onnx_agree_with_the_run(run: tuple[Path, dict],
                                                        capsys: pytest.CaptureFixture) -> None:
    out, report = run
    results = []
    for target, extra in ((out, []), (out / "export", []), (out / "export" / "model.onnx", []),
                          (out / "export", ["--format", "torch_export"])):
        assert main(["eval", str(target), "--json", *extra]) == 0
        results.append(json.loads(capsys.readouterr().out))
    final = report["phases"]["finetune"]["metric"]
    for result in results:
        assert abs(result["metrics"]["metric"] - final) <= 1e-6, f"{result['target']} ({result['format']})"
        assert result["params"] == {"total": report["params"]["total"], "nonzero": report["params"]["nonzero"]}
        assert result["sparsity"] == pytest.approx(report["sparsity"])
        assert result["bytes"]["compressed"] == report["bytes"]["compressed"]
        assert result["bytes"]["dense"] == report["bytes"]["dense"] == report["bytes"]["safetensors"], \
            "dense: the size of the dense-shaped model.safetensors (header included)"
        assert result["latency_ms"]["median"] > 0
    assert [r["format"] for r in results] == ["safetensors", "safetensors", "onnx", "torch_export"]
    runtimes = [r["latency_ms"]["runtime"] for r in results]
    assert runtimes == ["torch eager", "torch eager", "onnxruntime cpu", "torch.export program"], runtimes
    assert main(["eval", str(out / "export" / "model.onnx")]) == 0
    latency = capsys.readouterr().out.splitlines()[-1]
    assert latency.startswith("latency ") and latency.endswith(" thread(s), onnxruntime cpu"), latency


def test_eval_of_a_program_says_it_runs_the_program_and_reads_the_twin_only_for_counts(
        run: tuple[Path, dict], capsys: pytest.CaptureFixture) -> None:
    """Trial 25: `eval RUN/export/model.onnx` logged the safetensors load, and `bytes` named model.safetensors, as if
    the ONNX file was not what got evaluated. The twin's load line now says what it is read for, and the header
    names the runtime that gave the metric."""
    out, _ = run
    export = out / "export"
    for program, runtime, header in (("model.onnx", "onnxruntime cpu", "onnx, run by onnxruntime"),
                                     ("model.pt2", "torch.export program", "torch_export, run by torch.export")):
        assert main(["eval", str(export / program), "deploy.latency=false"]) == 0
        printed, err = capsys.readouterr()
        loads = [line.split(" ", 1)[1] for line in err.splitlines() if "load_compressed:" in line]
        fmt = "onnx" if program == "model.onnx" else "torch_export"
        assert loads == [f"load_compressed: {export / program} ({fmt})",
                         f"load_compressed: {export / 'model.safetensors'} (safetensors): the torch twin of {program}, "
                         f"read only to count parameters, sparsity and bytes; the metric (and latency, when timed) "
                         f"come from {runtime} on {export / program}"], loads
        assert printed.splitlines()[0].startswith(f"{export / program} ({header}, lenet300_100) on "), printed


def test_eval_of_a_checkpoint_on_another_data_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    from sparsetrain.config.schema import ModelConfig
    from sparsetrain.models.factory import build_model

    torch.save({"model": build_model(ModelConfig(name="lenet300_100"), 1, 10, (1, 8, 8)).state_dict()},
               tmp_path / "ckpt.pth")
    assert main(["eval", str(tmp_path / "ckpt.pth"), "model.name=lenet300_100", "data.source=digits"]) == 0
    printed, logged = capsys.readouterr()
    assert "(checkpoint, lenet300_100) on digits" in printed and "sparsity" in printed
    dense, compressed = re.search(r"bytes +([\d,]+) dense -> ([\d,]+) compressed \(safetensors", printed).groups()
    assert dense == compressed, "an unpruned model's plain safetensors file is its dense size, header included"
    assert "model.checkpoint: loaded 6 tensors (" in logged and f"from {tmp_path / 'ckpt.pth'} into lenet300_100" \
        in logged, logged  # which weights were read, as a run says it
    assert main(["eval", str(tmp_path / "missing.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: eval: ") and "\n" not in err


def test_help_lists_eval() -> None:
    assert any(line.split()[:1] == ["eval"] for line in usage().splitlines())


def test_a_model_with_filters_removed_is_not_called_unpruned() -> None:
    """Seen on a Method 2 digits run (50,610 -> 17,714 params): its latency table was headed `latency of lenet300_100
    (no weight pruned, finetune phase)`, since every weight left is non-zero."""
    storage = {"dense_bytes": 202888, "params": {"dense": 50610, "compressed": 17714}, "compressed_bytes": 71296,
               "compressed_file": "model.safetensors", "ratio": 2.845713644524237, "nonzero_params": 17714}
    table = {"model": "lenet300_100", "kind": "structural", "phase": "finetune", "input_shape": [1, 8, 8],
             "threads": 1, "repeats": 20, "warmup": 3, "storage": storage, "rows": [], "slowest_layers": {}}
    assert format_latency(table).startswith("latency of lenet300_100 (structural, finetune phase), input"), \
        format_latency(table)
    same = {**storage, "params": {"dense": 50610, "compressed": 50610}, "nonzero_params": 50610}
    assert format_latency({**table, "kind": "unstructured", "storage": same}).startswith(
        "latency of lenet300_100 (no weight pruned, finetune phase)")
