"""Smoke test of the benchmark scripts in their quick mode: they run and write well-formed JSON."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from benchmarks import host_overhead, kernels, train_step
from tests.helpers.cli_checks import read_only_mount
from tests.usage_errors import one_line

ROW_KEYS = {
    "case",
    "numel",
    "dtype",
    "op",
    "mask",
    "ours_ms",
    "eager_ms",
    "compile_ms",
    "autograd_ms",
    "gbps",
    "copy_gbps",
    "host_ms",
    "graph_ms",
    "timer",
    "warmup_calls",
    "ours_calls",
    "eager_calls",
    "max_abs_diff",
    "backend",
}


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU smoke mode; on a GPU run the benchmarks themselves")
def test_kernels_benchmark_quick_writes_json(tmp_path, monkeypatch) -> None:
    """28 rows, each timed 2-3 times for CPU_MIN_RUN_S (0.2 s) at least: this test reads the rows' structure, not
    their times, so each timing is 0.02 s here (the CPU timing itself: test_kernels_cpu_timing_warms_up_...)."""
    from functools import partial

    from benchmarks import common

    short = partial(common.time_call, min_run_s=0.02)
    monkeypatch.setattr(common, "time_call", short)  # bench_ms's (autograd, copy bandwidth)
    monkeypatch.setattr(kernels, "time_call", short)
    argv = ["--quick", "--sizes", "4096,1K", "--models", "test_resnet", "--dtypes", "fp32,bf16", "--out", str(tmp_path)]
    kernels.main([*argv, "--ops", "l0_grad_mask,apply_masks"])
    payload = json.loads((tmp_path / "kernels-cpu.json").read_text())
    assert payload["device"] == "cpu", f"device: {payload['device']}"
    rows = payload["rows"]
    assert len(rows) == 24, f"rows: 3 cases x 2 dtypes x 2 ops x 2 mask kinds expected, got {len(rows)}"
    for row in rows:
        label = f"{row['case']}/{row['dtype']}/{row['op']}/{row['mask']}"
        assert set(row) == ROW_KEYS, f"row keys: {sorted(row)}"
        for key in ("ours_ms", "eager_ms", "gbps", "copy_gbps"):
            assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, f"{label} {key}"
        assert (row["autograd_ms"] is None) == (row["op"] == "apply_masks"), f"{label}: autograd only for l0"
    assert [(r["op"], r["mask"]) for r in rows[:4]] == [
        ("l0_grad_mask", "bool"),
        ("l0_grad_mask", "packed"),
        ("apply_masks", "bool"),
        ("apply_masks", "packed"),
    ], "ops x mask kinds per case"
    assert [r["numel"] for r in rows[:16:8]] == [4096, 1024], "--sizes with a K suffix"
    # GB/s counts the mask at 1 byte (bool) or 1 bit (packed) per weight: ours moved the same w/g bytes.
    l0_bool, l0_packed = rows[0], rows[1]
    ratio = (l0_bool["gbps"] * l0_bool["ours_ms"]) / (l0_packed["gbps"] * l0_packed["ours_ms"])
    assert math.isclose(ratio, (12 + 1) / (12 + 1 / 8)), f"fp32 l0 bytes bool/packed: {ratio}"
    kernels.main([*argv, "--dtypes", "fp32", "--sizes", "4096", "--models", "none", "--masks", "packed", "--append"])
    appended = json.loads((tmp_path / "kernels-cpu.json").read_text())["rows"]
    assert len(appended) == 24, f"--append replaces rows of the same case/dtype/op/mask: {len(appended)} rows"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU smoke mode; on a GPU run the benchmarks themselves")
def test_kernels_benchmark_writes_under_the_current_folder_not_the_source_tree(tmp_path, monkeypatch) -> None:
    from benchmarks.common import RESULTS_DIR

    before = set(RESULTS_DIR.iterdir())
    monkeypatch.chdir(tmp_path)
    kernels.main(["--quick", "--sizes", "4096", "--models", "none", "--dtypes", "fp32", "--masks", "packed",
                  "--no-compile"])
    assert (tmp_path / "runs" / "bench" / "kernels-cpu.json").is_file()
    assert set(RESULTS_DIR.iterdir()) == before, "bench kernels wrote into benchmarks/results"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU smoke mode; on a GPU run the benchmarks themselves")
def test_train_step_benchmark_quick_writes_json(tmp_path) -> None:
    train_step.main(["--quick", "--model", "test_resnet", "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "train_step-cpu.json").read_text())
    variants = [row["variant"] for row in payload["rows"]]
    assert variants == train_step.VARIANTS, f"variants: {variants}"
    assert payload["rows"][0]["ratio_vs_dense"] == 1.0, "dense ratio must be 1"
    assert all(row["step_ms"] > 0 for row in payload["rows"]), f"step times: {payload['rows']}"


def assert_cpu_caveat(payload: dict, out: list[str]) -> None:
    """A benchmark's CPU caveat: in its JSON (`caveat`, saying the times are a smoke test) and printed as `note:`."""
    caveat = payload["caveat"]
    assert caveat and caveat.startswith("on CPU these times are a smoke test of the code path, not kernel "
                                        "performance"), caveat
    assert f"note: {caveat}" in out, out


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU smoke mode; on a GPU run the benchmarks themselves")
def test_train_step_cpu_timing_warms_up_repeats_and_says_it_is_a_smoke_test(tmp_path, capsys) -> None:
    """Trial 24: on CPU quick mode timed one wall-clock round after one warm-up step and printed fused_finetune
    6.6x then 8.8x dense (by hand about 2.5x) with no caveat. Now CPU_WARMUP warm-up steps, CPU_ROUNDS rounds in
    process CPU time, and the note line / JSON caveat of bench kernels. Structure only: no timed assertion."""
    train_step.main(["--model", "test_resnet", "--out", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    payload = json.loads((tmp_path / "train_step-cpu.json").read_text())
    assert_cpu_caveat(payload, out)
    assert payload["warmup_steps"] == train_step.CPU_WARMUP >= 2, payload
    assert payload["rounds"] == train_step.CPU_ROUNDS >= 5, payload
    assert payload["timer"] == "process CPU time, 1 thread, interleaved rounds", payload
    device = next(line for line in out if line.startswith("device: "))
    assert device.endswith(f"median of {train_step.CPU_ROUNDS} round(s) after {train_step.CPU_WARMUP} warm-up "
                           "step(s) per variant, process CPU time, 1 thread, interleaved rounds"), device
    with pytest.raises(SystemExit):
        train_step.parse_args(["--help"])
    assert "On CPU the times are a smoke test of the code path" in " ".join(capsys.readouterr().out.split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU smoke mode; on a GPU run the benchmarks themselves")
def test_kernels_says_compile_is_off_on_cpu_and_records_the_backend_that_ran(tmp_path, capsys, monkeypatch) -> None:
    """Trial 24: on CPU the compile column was '-' with no word why; the rows did not say which backend ran, and a
    TRITON_INTERPRET=1 --backend triton run wrote kernels-cpu.json over a torch run's."""
    import triton_kernels._multi_tensor as multi_tensor

    argv = ["--sizes", "1K", "--models", "none", "--dtypes", "fp32", "--masks", "bool", "--out", str(tmp_path)]
    kernels.main(argv)
    out = capsys.readouterr().out.splitlines()
    assert f"note: {kernels.NO_COMPILE_ON_CPU}" in out, out
    assert "torch.compile is not timed on CPU (the compile column is '-')" in kernels.NO_COMPILE_ON_CPU
    torch_run = json.loads((tmp_path / "kernels-cpu.json").read_text())
    assert torch_run["backend"] == "torch" and [r["backend"] for r in torch_run["rows"]] == ["torch"], torch_run
    assert torch_run["compile"] is None, "compile not timed on CPU"
    with pytest.raises(SystemExit):
        kernels.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "On CPU the compile column is '-': torch.compile is not timed on CPU" in help_text, help_text
    assert "skip torch.compile (always skipped on CPU)" in help_text, help_text
    try:
        import triton  # noqa: F401
    except ImportError:
        return
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(multi_tensor, "INTERPRET", True)
    kernels.main([*argv, "--backend", "triton"])
    assert "ours = backend triton-interpreter;" in capsys.readouterr().out
    interpreted = json.loads((tmp_path / "kernels-cpu-triton-interpreter.json").read_text())
    assert [r["backend"] for r in interpreted["rows"]] == ["triton-interpreter"], interpreted
    assert json.loads((tmp_path / "kernels-cpu.json").read_text()) == torch_run, "the torch run's file is kept"


def test_parse_size() -> None:
    assert [kernels.parse_size(s) for s in ("1K", "64M", "1G", "4097")] == [1024, 2**26, 2**30, 4097], "size suffixes"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU smoke mode; on a GPU run the benchmarks themselves")
@pytest.mark.parametrize("masks", ["bool", "packed"])
def test_host_overhead_reports_the_work_a_plan_skips(masks: str, capsys) -> None:
    host_overhead.main(["--model", "test_resnet", "--calls", "3", "--masks", masks])
    out = capsys.readouterr().out
    assert f"{masks} masks, 3 calls" in out, out
    assert "host work a plan skips" in out and "ms of process CPU time per call" in out, out


@pytest.mark.skipif(torch.cuda.is_available(), reason="plain CPU only")
def test_host_overhead_on_plain_cpu_says_why_it_measures_nothing() -> None:
    """Without TRITON_INTERPRET the kernels refuse CPU tensors (one RuntimeError line): the benchmark says so and how
    to measure, instead of ending in that traceback (it did once the kernels checked the device)."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "benchmarks.host_overhead", "--model", "test_resnet", "--calls", "2"],
                          cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TRITON_INTERPRET": "0"})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-800:]
    assert done.stdout.splitlines()[-1].startswith("host work a plan skips: not measured (backend 'triton' cannot "
                                                   "run: "), done.stdout
    assert done.stdout.splitlines()[-1].endswith("set TRITON_INTERPRET=1 to time it on CPU"), done.stdout


def test_throughput_benchmark_quick_writes_json(tmp_path) -> None:
    from benchmarks import throughput

    payload = throughput.main(["--config", "configs/quickstart.yaml", "--epochs", "3", "--set", "train.log_every=2",
                               "--threads", "1",
                               "--rounds", "2", "--round-steps", "4", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "throughput-cpu.json").read_text())
    assert on_disk == json.loads(json.dumps(payload)), "throughput-cpu.json differs from the returned payload"
    assert [row["phase"] for row in payload["drift"]] == ["dense", "sparsify"], f"drift rows: {payload['drift']}"
    for row in payload["drift"]:
        assert row["steps"] == 3 * 22, f"{row['phase']}: {row['steps']} steps, expected 3 epochs of 22"
        for key in ("first_steps_per_s", "last_steps_per_s", "ratio", "first_cpu_ms", "last_cpu_ms", "cpu_ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, f"{row['phase']} {key}: {row[key]}"
        assert row["ratio"] == pytest.approx(row["last_steps_per_s"] / row["first_steps_per_s"])
    overhead = payload["overhead"]
    for loop in ("sparsetrain", "plain"):
        assert overhead[loop]["steps_per_s"] > 0 and overhead[loop]["cpu_ms"] > 0, f"{loop}: {overhead[loop]}"
    assert overhead["ratio"] == pytest.approx(overhead["sparsetrain"]["steps_per_s"] / overhead["plain"]["steps_per_s"])


def test_throughput_quick_runs_in_seconds_without_export_or_latency(tmp_path, capsys) -> None:
    """Trial 24: no quick mode (the smallest run took 2 min 9 s, partly a full export and the latency table);
    `1 threads`; --epochs help read as if one epoch were 9,400 steps. --quick now shortens everything, the
    benchmark's runs skip export formats and latency (payload `skipped`), and the words are right."""
    from benchmarks import throughput

    payload = throughput.main(["--quick", "--config", "configs/quickstart.yaml", "--epochs", "1", "--threads", "1",
                               "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert payload["quick"] is True and payload["epochs"] == 1.0, payload
    assert payload["overhead"]["rounds"] == throughput.QUICK["rounds"], payload["overhead"]
    assert payload["overhead"]["round_steps"] == throughput.QUICK["round_steps"], payload["overhead"]
    assert {"deploy.latency=false", "deploy.formats=[]", "deploy.compact=false"} <= set(payload["skipped"]), payload
    assert [row["steps"] for row in payload["drift"]] == [22, 22], payload["drift"]
    assert "on CPU (--quick: a smoke test, not a measurement), 1 thread, " in out, out
    assert "; not run: export formats, latency table, plots (deploy.formats=[] " in out, out
    args = throughput.parse_args([])
    assert (args.epochs, args.rounds, args.round_steps, args.quick) == (20.0, 7, 200, False), args
    with pytest.raises(SystemExit):
        throughput.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "one epoch of the lenet300 recipe is 468 steps, so 20 are about 9,400 per phase" in help_text, help_text


def test_throughput_window_rates() -> None:
    from benchmarks.throughput import window_rates

    lines = [{"phase": "dense", "step": s, "step_time_ms": 10.0 if s <= 20 else 20.0, "cpu_time_ms": 5.0}
             for s in range(10, 201, 10)] + [{"phase": "dense", "event": "phase_end"}]
    rates = window_rates(lines, "dense")
    assert rates["steps"] == 200 and rates["first_steps_per_s"] == pytest.approx(100.0), rates
    assert rates["last_steps_per_s"] == pytest.approx(50.0) and rates["ratio"] == pytest.approx(0.5), rates


@pytest.mark.parametrize("name", ["kernels", "train_step", "throughput"])
def test_usage_names_the_command_typed(name: str, capsys: pytest.CaptureFixture) -> None:
    """`sparsetrain bench NAME --help` and its errors say `sparsetrain bench NAME` (they said `python -m
    benchmarks.NAME`); the module run directly still says `python -m benchmarks.NAME`."""
    import importlib

    from sparsetrain.cli import main

    capsys.readouterr()
    for call, typed in ((lambda: main(["bench", name, "--help"]), f"sparsetrain bench {name}"),
                        (lambda: importlib.import_module(f"benchmarks.{name}").main(["--help"]),
                         f"python -m benchmarks.{name}")):
        with pytest.raises(SystemExit) as stop:
            call()
        out = capsys.readouterr().out
        assert stop.value.code == 0 and out.startswith(f"usage: {typed} ["), out.splitlines()[0]
    with pytest.raises(SystemExit) as stop:
        main(["bench", name, "--no-such-flag"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err == (f"sparsetrain bench {name}: error: unrecognized arguments: --no-such-flag; "
                                            f"`sparsetrain bench {name} --help` shows the usage\n"), err


def test_usage_line_of_both_real_commands() -> None:
    """Both ways of running a benchmark, as a user types them (the installed script and `python -m`)."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = Path(sys.executable).with_name("sparsetrain")
    for command, typed in (([str(script), "bench", "kernels", "--help"], "sparsetrain bench kernels"),
                           ([sys.executable, "-m", "benchmarks.kernels", "--help"], "python -m benchmarks.kernels")):
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.startswith(f"usage: {typed} ["), (command, done.stdout[:200],
                                                                                     done.stderr[-500:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU smoke mode; on a GPU run the benchmarks themselves")
def test_kernels_table_gives_each_columns_unit_under_its_name(tmp_path, capsys) -> None:
    kernels.main(["--quick", "--sizes", "4096", "--models", "none", "--dtypes", "fp32", "--masks", "bool",
                  "--no-compile", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("case "))
    names, units, row = lines[start:start + 3]
    expected = {"numel": "elements", "ours": "ms", "eager": "ms", "compile": "ms", "autograd": "ms",
                "eager/ours": "ratio", "comp/ours": "ratio", "auto/ours": "ratio", "GB/s": "GB/s", "%copy": "%",
                "host": "ms", "graph": "ms", "maxdiff": "abs"}
    for name, unit in expected.items():
        end = names.index(f" {name}") + 1 + len(name)  # columns are right-aligned: a unit ends where its name does
        assert units[end - len(unit):end] == unit and units[end - len(unit) - 1] == " ", (name, names, units)
    assert len(row) == len(names) == len(units), "the rows line up with the header"


# (command, flag, bad values) of every numeric flag of `sparsetrain bench NAME`, and what the error says it expects
NUMERIC_FLAGS = [
    ("latency", "--batch", ["1", "0", "-4", "x"], "an integer >= 2"),
    ("latency", "--repeats", ["0", "-1", "2", "x", "1.5"], "an integer >= 3"),
    ("latency", "--threads", ["0", "-1", "two"], "an integer >= 1"),
    ("train_step", "--batch", ["0", "-1", "x"], "an integer >= 1"),
    ("train_step", "--image-size", ["0", "-32", "x"], "an integer >= 1"),
    ("train_step", "--steps", ["0", "-1", "x"], "an integer >= 1"),
    ("train_step", "--warmup", ["-1", "x"], "an integer >= 0"),
    ("throughput", "--epochs", ["-1", "nan", "inf", "x"], "a number >= 0"),
    ("throughput", "--threads", ["0", "-1", "x"], "an integer >= 1"),
    ("throughput", "--rounds", ["0", "-1", "x"], "an integer >= 1"),
    ("throughput", "--round-steps", ["0", "-1", "x"], "an integer >= 1"),
    ("kernels", "--sizes", ["0", "foo", "1M,-3", "1M,", "1X"], "sizes like 1M,64M,1G (positive)"),
]


@pytest.mark.parametrize(("name", "flag", "values", "expected"), NUMERIC_FLAGS, ids=lambda v: str(v))
def test_numeric_flags_refuse_zero_negative_and_non_numbers_in_one_line(
        name: str, flag: str, values: list[str], expected: str, capsys: pytest.CaptureFixture) -> None:
    """A bad number is argparse's one-line error naming the flag and what it expects, exit 2, before anything runs
    (`--repeats 0` ended in numpy's IndexError from the quantiles of no times, `--sizes 0` in a ZeroDivisionError,
    `--sizes foo` in `invalid literal for int()`, naming neither the flag nor the format)."""
    import importlib

    from sparsetrain.cli import main

    def parse(argv: list[str]) -> object:  # the arguments only: a value let through must not start a benchmark
        if name == "latency":  # parsed and run by the CLI itself; RUN/export is never read, the flag is refused first
            return main(["bench", "latency", "RUN/export", *argv])
        return importlib.import_module(f"benchmarks.{name}").parse_args(argv, prog=f"sparsetrain bench {name}")

    for value in values:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            parse([f"{flag}={value}"])
        err = capsys.readouterr().err
        bad = value.split(",")[-1] if name == "kernels" else value
        assert stop.value.code == 2 and one_line(err) == (
            f"sparsetrain bench {name}: error: argument {flag}: expected {expected}, got {bad!r}"), (value, err)


def test_kernels_choice_flags_name_the_flag_and_the_choices(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stop:
        kernels.parse_args(["--dtypes", "fp32,fp64"])
    assert stop.value.code == 2 and one_line(capsys.readouterr().err).endswith(
        "error: argument --dtypes: unknown 'fp64' (choose from fp32, bf16, fp16)")
    assert kernels.parse_args(["--sizes", "1K,4097"]).sizes == [1024, 4097]
    assert kernels.parse_args([]).ops == ["l0_grad_mask"], "the default ops, a list"


def test_kernels_models_flag_names_an_unknown_timm_model_in_one_line(capsys: pytest.CaptureFixture) -> None:
    """Fresh-user trial: `--models resnet-50` ran the size cases, then died in timm with `RuntimeError: Unknown model
    (resnet-50)` and a traceback."""
    with pytest.raises(SystemExit) as stop:
        kernels.parse_args(["--models", "resnet50,resnet-50"])
    last = one_line(capsys.readouterr().err)
    assert stop.value.code == 2
    assert "error: argument --models: unknown timm model 'resnet-50' (closest: resnet50" in last, last
    assert kernels.parse_args(["--models", "none"]).models == []
    assert kernels.parse_args(["--models", "resnet18,vit_tiny_patch16_224"]).models == ["resnet18",
                                                                                      "vit_tiny_patch16_224"]


def test_kernels_models_flag_takes_sparsetrains_own_models() -> None:
    """`--models lenet5`: the name check accepts sparsetrain's own names without importing them (model_names), so
    the benchmark registers them itself before timm builds the model (a fresh process: nothing registered them)."""
    code = ("from benchmarks import kernels\nnames = kernels.parse_args(['--models', 'lenet5']).models\n"
            "print([w.shape[0] for w in kernels.model_weights(names[0], None)])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and done.stdout.strip() == "[20, 50, 500, 10]", done.stderr[-2000:]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU smoke mode; on a GPU run the benchmarks themselves")
def test_kernels_prints_the_table_once_and_says_which_ops_it_times(tmp_path, capsys) -> None:
    """The rows printed as each case finished were printed again, all together, before `wrote ...`; and a table of
    l0_grad_mask rows alone did not say that apply_masks is left out by default, nor `--help` what the default is."""
    argv = ["--sizes", "4096", "--models", "none", "--dtypes", "fp32,bf16", "--masks", "bool", "--no-compile"]
    kernels.main([*argv, "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("case ") for line in lines) == 1, "\n".join(lines)
    assert sum(line.startswith("flat-4096 ") for line in lines) == 2, "one row per dtype, printed once"
    assert lines[-1] == f"wrote {tmp_path / 'kernels-cpu.json'}"
    device = next(line for line in lines if line.startswith("device: "))
    assert device.endswith("; ops l0_grad_mask (apply_masks: --ops l0_grad_mask,apply_masks)"), device
    kernels.main([*argv, "--ops", "apply_masks,l0_grad_mask", "--out", str(tmp_path)])
    assert "; ops apply_masks,l0_grad_mask\n" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        kernels.parse_args(["--help"])
    assert "(default: l0_grad_mask; add apply_masks" in " ".join(capsys.readouterr().out.split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU smoke mode; on a GPU run the benchmarks themselves")
def test_kernels_cpu_timing_warms_up_repeats_and_says_it_is_a_smoke_test(tmp_path, capsys) -> None:
    """Trial 18: on CPU ours (the torch backend) and eager are one function, yet a median of 3 calls printed
    eager/ours 19.78, 2.92 and 14.35 for one case. Each variant is now timed after CPU_WARMUP_CALLS untimed calls by
    blocked_autorange over many calls (recorded per row), and the output, the JSON and --help say that CPU times are
    a smoke test. Structure only: a timed assertion would be flaky on a shared machine."""
    kernels.main(["--sizes", "4096", "--models", "none", "--dtypes", "fp32", "--masks", "bool", "--out", str(tmp_path)])
    out = capsys.readouterr().out.splitlines()
    payload = json.loads((tmp_path / "kernels-cpu.json").read_text())
    assert_cpu_caveat(payload, out)
    (row,) = payload["rows"]
    assert row["timer"].startswith("torch.utils.benchmark.Timer.blocked_autorange"), row["timer"]
    assert row["warmup_calls"] == kernels.CPU_WARMUP_CALLS >= 1, row
    assert row["ours_calls"] >= 10 and row["eager_calls"] >= 10, f"a median of a few calls is noise: {row}"
    with pytest.raises(SystemExit):
        kernels.parse_args(["--help"])
    assert "the times are a smoke test of the code path, not kernel performance" in " ".join(
        capsys.readouterr().out.split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU smoke mode; on a GPU run the benchmarks themselves")
def test_kernels_reports_each_cases_max_abs_diff_from_the_torch_reference(tmp_path, capsys) -> None:
    """Trial 18: bench kernels timed ours without saying whether it computed the same as the reference. Each row
    now has max_abs_diff (JSON) and a maxdiff column, against l0_grad_mask_reference_ / apply_masks_reference_."""
    kernels.main(["--sizes", "4097", "--models", "none", "--dtypes", "fp32,bf16", "--ops", "l0_grad_mask,apply_masks",
                  "--masks", "bool,packed", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    rows = json.loads((tmp_path / "kernels-cpu.json").read_text())["rows"]
    printed = [line.split()[-1] for line in lines if line.startswith("flat-4097 ")]
    assert printed == [format(r["max_abs_diff"], ".1e") for r in rows], (printed, rows)
    for row in rows:
        label = f"{row['dtype']}/{row['op']}/{row['mask']}"
        # the torch backend is the reference's computation: equal to rounding (grads ~1e-3, bf16 eps 2^-8)
        assert isinstance(row["max_abs_diff"], float) and 0.0 <= row["max_abs_diff"] <= 1e-5, (label, row)
    grads = [torch.ones(3)]
    diff = kernels.max_abs_diff("apply_masks", grads, [torch.tensor([True, False, True])], [0.0],
                                torch.Generator().manual_seed(0), "torch")
    assert diff == 0.0, "apply_masks on the torch backend is the reference"


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder bind-mounted read-only (chmod does not stop root; a read-only mount does), or a skip saying why."""
    source = tmp_path / "source"
    source.mkdir()
    with read_only_mount(source, tmp_path / "ro") as mounted:
        yield mounted


@pytest.mark.parametrize("name", ["latency", "kernels", "throughput", "train_step"])
def test_out_that_is_a_file_or_read_only_is_one_argparse_line_before_the_benchmark(
        name: str, tmp_path: Path, read_only_folder: Path, capsys: pytest.CaptureFixture) -> None:
    """Trial 17: `--out FILE` ended in a FileExistsError traceback and a read-only --out in an OSError, throughput's
    only after the whole benchmark had run. Now argparse's one line naming --out, exit 2, before anything runs
    (latency's RUN/export is never read)."""
    from sparsetrain.cli import main

    file = tmp_path / "results.json"
    file.write_text("{}")
    not_a_folder = f"{file} is a file, not a folder; give a folder to write into"
    read_only = f"cannot write into {read_only_folder} (Read-only file system); give a writable folder"
    cases = [(file, not_a_folder), (file / "sub", not_a_folder), (read_only_folder, read_only),
             (read_only_folder / "new", read_only)]
    for out, expected in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            main(["bench", name, *(["RUN/export"] if name == "latency" else []), "--out", str(out)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and one_line(err) == (
            f"sparsetrain bench {name}: error: argument --out: {expected}"), (out, err)


@pytest.mark.parametrize("name", ["latency", "kernels"])
@pytest.mark.parametrize(("out", "reason"), [("/proc/nope", "No such file or directory"),
                                             ("/sys/nope", "Operation not permitted")])
def test_out_that_cannot_be_created_is_one_argparse_line_before_the_benchmark(
        name: str, out: str, reason: str, capsys: pytest.CaptureFixture) -> None:
    """Trial 20: `bench kernels --quick --out /proc/nope` ran the whole benchmark and then ended in a
    FileNotFoundError traceback (/sys/nope: PermissionError); /proc and /sys pass the permission check but refuse
    new entries. --out is now created (and written into) before anything runs."""
    from sparsetrain.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["bench", name, *(["RUN/export"] if name == "latency" else ["--quick"]), "--out", out])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and one_line(err) == (
        f"sparsetrain bench {name}: error: argument --out: cannot create {out} ({reason}); give a writable folder"), err


def test_out_checked_by_creating_it_leaves_no_trace(tmp_path: Path) -> None:
    """The check creates --out and a file in it, and removes what it created: a usage error elsewhere leaves nothing."""
    from sparsetrain.argtypes import out_folder

    existing = tmp_path / "existing"
    existing.mkdir()
    assert out_folder(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"
    assert out_folder(str(existing)) == existing
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["existing"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU --backend triton runs")
@pytest.mark.parametrize("name", ["kernels", "train_step"])
def test_backend_triton_where_it_cannot_run_is_one_line(name: str, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture) -> None:
    """Trial 17: `sparsetrain bench kernels --quick --backend triton` on CPU ended in `RuntimeError: backend 'triton'
    cannot run on this machine` and a traceback; `run` with regularizer.backend=triton says it in one line."""
    import triton_kernels._multi_tensor as multi_tensor
    from sparsetrain.cli import main

    monkeypatch.setattr(multi_tensor, "INTERPRET", False)  # a plain CPU machine, whatever the test environment sets
    assert main(["bench", name, "--quick", "--backend", "triton"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err == ("error: --backend: 'triton' cannot run on cpu: Triton kernels need CUDA tensors (or "
                   "TRITON_INTERPRET=1 for CPU), got cpu; use --backend torch (or leave it out)"), err
    assert "device:" not in captured.out, "refused before the benchmark starts"
