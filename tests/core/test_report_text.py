"""What the printed summary and `--help` say matches what the code computes: the latency line's numbers give its
speed-up and say how they were measured (and which model: Method 1's is the compact one); `--help` lists every bench
subcommand."""

from __future__ import annotations

import re

import pytest

from sparsetrain.cli import BENCHMARKS, main
from sparsetrain.deploy.evaluate import _params_line
from sparsetrain.deploy.run import _headline
from sparsetrain.report import format_kept_filters, format_table


def _structural_report(latency_ms: dict) -> dict:
    return {"phases": {"finetune": {"metric": 90.0}}, "params": {"dense": 100, "pruned": 50},
            "param_reduction": 2.0, "flops": {"dense": 10, "pruned": 5}, "latency_ms": latency_ms}


def latency_line(report: dict) -> tuple[float, float, float, str]:
    line = next(x for x in format_table(report).splitlines() if x.startswith("latency"))
    # `(1.88x; how)`, or `(0.97x, within noise: ...; how)` when the noise rule finds the ratios disagree
    match = re.match(r"latency +([\d.]+) ms -> ([\d.]+) ms \(([\d.]+)x(?:, [^;]*)?; (.*)\)", line)
    assert match, line
    dense, pruned, speedup, how = match.groups()
    return float(dense), float(pruned), float(speedup), how


def test_interleaved_latency_line_prints_the_p20s_its_speedup_divides() -> None:
    row = {"runtime": "torch", "device": "cpu", "batch": 1, "speedup": 30.0 / 14.0,
           "dense_ms": {"median": 31.92, "p20": 30.0, "p80": 33.0},
           "compressed_ms": {"median": 14.21, "p20": 14.0, "p80": 15.0}}
    dense, pruned, speedup, how = latency_line(_structural_report(_headline({"rows": [row]})))
    assert speedup == pytest.approx(dense / pruned, abs=0.01) and "p20 of interleaved" in how


def test_a_method2_run_that_removed_no_filter_claims_no_speedup() -> None:
    """Both models are one architecture when no filter was removed: a timed difference (1.42x seen in 5 rounds) is
    noise, so the summary compares nothing."""
    same = {**_structural_report({"dense": 15.94, "pruned": 11.2, "speedup": 1.42}),
            "params": {"dense": 100, "pruned": 100}, "flops": {"dense": 10, "pruned": 10}, "param_reduction": 1.0}
    line = next(x for x in format_table(same).splitlines() if x.startswith("latency"))
    assert "not compared: no filter was removed" in line and "1.42x" not in line


def test_a_method2_run_that_removed_no_filter_says_so_on_the_params_line() -> None:
    """prune.filter_fraction=0 printed `params 488,001 -> 488,001 (1.00x fewer)`: nothing was removed, say that."""
    pruned = {k: v for k, v in _structural_report({}).items() if k != "latency_ms"}
    same = {**pruned, "params": {"dense": 488_001, "pruned": 488_001}, "flops": {"dense": 10, "pruned": 10},
            "param_reduction": 1.0}
    lines = format_table(same).splitlines()
    assert "params       488,001 (no filter removed)" in lines, lines
    assert "flops        10 (FLOPs of one forward pass per sample, 2 per multiply-add)" in lines, lines
    assert not any("fewer" in line or "->" in line for line in lines), lines
    assert "params       100 -> 50 (2.00x fewer)" in format_table(pruned).splitlines()
    evaluated = {"total": 488_001, "nonzero": 488_001, "dense": 488_001, "removed": "filters"}  # sparsetrain eval
    assert _params_line(evaluated, 0.0) == ("params       488,001 total, 488,001 non-zero (all parameters); sparsity "
                                            "0.00 % of prunable weights (conv/linear) (no filter removed)")
    assert _params_line({**evaluated, "total": 400_000}, 0.0).startswith("params       488,001 -> 400,000 (1.22x")


def test_method1_latency_line_is_the_compact_models_and_says_so() -> None:
    """A table that timed export/compact/: the headline is dense vs compact (the masked model runs as a dense
    graph), labelled; Method 1's summary prints it after the bytes line."""
    row = {"runtime": "torch", "device": "cpu", "batch": 1, "speedup": 1.01, "speedup_compact": 0.2 / 0.14,
           "dense_ms": {"median": 0.21, "p20": 0.2, "p80": 0.22},
           "compressed_ms": {"median": 0.2, "p20": 0.198, "p80": 0.21},
           "compact_ms": {"median": 0.15, "p20": 0.14, "p80": 0.16}}
    headline = _headline({"rows": [row]})
    assert headline["model"] == "compact" and headline["compact"] == 0.14 and "pruned" not in headline
    report = {"phases": {"finetune": {"metric": 90.0}}, "sparsity": 0.99, "compression_ratio": 100.0,
              "params": {"total": 1000, "nonzero": 10}, "bytes": {"dense": 4000, "compressed": 200},
              "latency_ms": headline}
    dense, pruned, speedup, how = latency_line(report)
    assert (dense, pruned) == (0.2, 0.14) and speedup == pytest.approx(dense / pruned, abs=0.01)
    assert how.startswith("compact model: export/compact/, dead units removed; p20 of interleaved"), how
    earlier = {**{k: v for k, v in headline.items() if k != "compact"}, "pruned": 0.14}  # report.json before `compact`
    assert latency_line({**report, "latency_ms": earlier})[:2] == (0.2, 0.14)
    lines = format_table(report).splitlines()
    assert lines.index(next(x for x in lines if x.startswith("latency"))) == lines.index(
        next(x for x in lines if x.startswith("bytes"))) + 1


def test_the_summary_line_calls_a_speedup_within_noise_when_its_ratios_disagree() -> None:
    """The table note's rule (`latency_report.noise_range`) on the summary's latency line: with 5 rounds the p20
    said 1.88x while the median and paired ratios said 0.92x / 0.91x; reports from before those were kept print as
    before."""
    row = {"runtime": "torch", "device": "cpu", "batch": 1, "speedup": 1.01, "speedup_median": 1.0,
           "speedup_paired": 1.0, "speedup_compact": 1.88, "speedup_compact_median": 0.92,
           "speedup_compact_paired": 0.91, "dense_ms": {"median": 0.21, "p20": 0.2, "p80": 0.22},
           "compressed_ms": {"median": 0.2, "p20": 0.198, "p80": 0.21},
           "compact_ms": {"median": 0.23, "p20": 0.106, "p80": 0.24}}
    headline = _headline({"rows": [row]})
    assert (headline["speedup_median"], headline["speedup_paired"]) == (0.92, 0.91), headline
    report = {"phases": {"finetune": {"metric": 90.0}}, "sparsity": 0.99, "compression_ratio": 100.0,
              "params": {"total": 1000, "nonzero": 10}, "bytes": {"dense": 4000, "compressed": 200},
              "latency_ms": headline}
    line = next(x for x in format_table(report).splitlines() if x.startswith("latency"))
    assert "(1.88x, within noise: 0.91x-1.88x over the p20, median and paired ratios; compact model:" in line, line
    agreeing = {**headline, "speedup_median": 1.8, "speedup_paired": 1.85}
    assert latency_line({**report, "latency_ms": agreeing})[2] == 1.88
    earlier = {k: v for k, v in headline.items() if k not in ("speedup_median", "speedup_paired")}
    assert latency_line({**report, "latency_ms": earlier})[2] == 1.88


@pytest.mark.parametrize(("task", "header"), [
    ("segmentation", "phase        Dice %"), ("classification", "phase        accuracy %"),
    (None, "phase        metric"),  # a report without its task (format 1)
])
def test_the_metric_column_is_named_after_the_tasks_metric(task: str | None, header: str) -> None:
    report = {"phases": {"dense": {"metric": 71.234}}, **({"task": task} if task else {})}
    assert format_table(report).splitlines()[:2] == [header, "dense          71.23"]


def test_help_lists_every_bench_subcommand(capsys: pytest.CaptureFixture) -> None:
    assert main(["--help"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("bench"))
    assert set(BENCHMARKS) == {"kernels", "train_step", "latency", "throughput"}
    assert all(name in line for name in BENCHMARKS), line


def test_logged_counts_are_integers_with_thousands_separators(caplog: pytest.LogCaptureFixture) -> None:
    """`[prune] done: ... prune/params_before 488,001, prune/params_after 122,809` (it said 4.88e+05 and 1.228e+05
    beside the table's 122,809); other numbers keep 4 significant digits. The phase-done line, the progress line
    and eval's metric line share the format."""
    from sparsetrain.progress import Progress, format_value

    assert format_value(122_809) == "122,809" and format_value(488_330) == "488,330" and format_value(7) == "7"
    assert format_value(0.931249) == "0.9312" and format_value(4.5e-5) == "4.5e-05" and format_value(97.0) == "97"
    assert format_value(True) == "1", "a flag is not a count"
    with caplog.at_level("INFO", logger="sparsetrain"):
        Progress("prune", 0, 1, every=1).update(0, params_after=122_809, loss=0.25)
    assert "params_after 122,809 loss 0.25 |" in caplog.text, caplog.text


def test_kept_filters_block_lists_the_groups_that_lost_most_then_points_to_report_json() -> None:
    """Method 2's prune log block: one row per channel group (its layers, three at most, inexact ones marked; a row
    from before `layers` was recorded shows its group id), and past `max_rows` groups the ones that lost the most
    filters, in graph order, a line counting the rest, and a total over all groups."""
    rows = [{"group": f"g{i}", "total": 64, "kept": 64 - i, "layers": [f"s{i}.conv"]} for i in range(6)]
    rows[4]["layers"] = ["s4.conv1", "s4.conv2", "s4.down", "s5.conv2", "s6.conv2"]
    rows[5] = {"group": "s5.proj", "total": 64, "kept": 59, "exact": False}
    lines = format_kept_filters(rows, max_rows=3).splitlines()
    assert lines == [
        "[prune] filters kept per channel group, the 3 of 6 groups that lost the most: kept / total (% kept), layers",
        "   61 / 64   95.3 %  s3.conv",
        "   60 / 64   93.8 %  s4.conv1, s4.conv2, s4.down (+2 more)",
        "   59 / 64   92.2 %  s5.proj (inexact)",
        "  ... 3 more groups, all in report.json (kept_filters)",
        "  369 / 384  96.1 %  total: 5 of 6 groups lost filters"], "\n".join(lines)
    assert len(format_kept_filters(rows).splitlines()) == 1 + 6 + 1, "all rows when they fit"
    rows[0].update(kept=64, kept_because="inexact (LayerNorm)")  # trial 28: shown at 100 % with no reason
    assert "   64 / 64  100.0 %  s0.conv (kept whole: inexact (LayerNorm))" in format_kept_filters(rows).splitlines()


def test_sparsity_and_compression_lines_name_their_different_scopes() -> None:
    """Trial 18: `sparsity 80.01 %` beside `compression 4.5 x` and `params 5,226 total, 1,168 non-zero; sparsity
    80.01 %` read as one scope (1,168 / 5,226 is 77.65 % zeros). Sparsity counts the prunable conv/linear weights,
    compression every parameter: each line names which."""
    report = {"task": "classification", "phases": {"finetune": {"metric": 90.0}}, "sparsity": 0.8001,
              "compression_ratio": 5226 / 1168, "params": {"total": 5226, "nonzero": 1168},
              "bytes": {"dense": 100, "compressed": 40, "compressed_format": "bitmask"}}
    lines = format_table(report).splitlines()
    assert "sparsity       80.01 % of prunable weights (conv/linear)" in lines, lines
    assert "compression      4.5 x  (all parameters: 1,168 of 5,226 non-zero)" in lines, lines
    line = _params_line({"total": 5226, "nonzero": 1168}, 0.8001)
    assert line == ("params       5,226 total, 1,168 non-zero (all parameters); sparsity 80.01 % of prunable weights "
                    "(conv/linear)"), line
    baselines = {**report, "phases": {"sparsify": {"metric": 91.0}, "finetune": {"metric": 90.0}},
                 "baselines": {"gmp": {"sparsify": 90.0, "finetune": 89.0, "sparsity": 0.8, "compression_ratio": 4.4}}}
    table = format_table(baselines).splitlines()
    assert "sparsity of prunable weights (conv/linear); compr. over all parameters (dense count / non-zero)" in table


def test_dense_row_says_same_budget_only_when_its_epochs_match_sparsify_plus_finetune() -> None:
    """Trial 18: `dense (l2, same budget)` was printed for a dense baseline of 3 epochs beside 20 + 2 of sparsify +
    finetune. The budget (the recipes' `dense: 480  # same budget as sparsify + finetune`, 450 + 30) is compared."""
    from sparsetrain.config import load_config
    from sparsetrain.report import dense_label, training_setup

    report = {"task": "classification", "sparsity": 0.9, "compression_ratio": 8.0,
              "params": {"total": 10, "nonzero": 1}, "bytes": {"dense": 10, "compressed": 2},
              "phases": {"dense": {"metric": 95.0}, "sparsify": {"metric": 94.0}, "finetune": {"metric": 93.0}},
              "baselines": {"gmp": {"sparsify": 90.0, "finetune": 89.0, "sparsity": 0.9, "compression_ratio": 7.0}}}
    cfg = load_config(None, ["phases.dense.epochs=3", "phases.sparsify.epochs=20", "phases.finetune.epochs=2"])
    short = {**report, **training_setup(cfg, 1)}
    assert short["epochs"] == {"dense": 3, "sparsify": 20, "finetune": 2}, short["epochs"]
    rows = [line for line in format_table(short).splitlines() if line.startswith("dense (")]
    assert rows == [f"{'dense (l2, 3 epochs)':<36}{95.0:>27.2f}"], rows
    same = {**report, "epochs": {"dense": 22, "sparsify": 20, "finetune": 2}}
    assert any(line.startswith("dense (l2, same budget) ") for line in format_table(same).splitlines())
    assert dense_label(same, method="") == "dense (same budget)", "the accuracy plot's line"
    assert dense_label({**same, "epochs": {"dense": 1, "sparsify": 0.5, "finetune": 0}}) == "dense (l2, 1 epoch)"
    assert dense_label(report) == "dense (l2)", "a report from before the epochs were recorded claims no budget"


def test_a_selection_note_is_cut_where_it_says_what_follows_never_inside_a_name() -> None:
    """Trial 18: the table's selection line read `features.0, ...` when the log named that one layer only (the cut
    fell in the next clause, mid-word, and `, ...` was added). The cut keeps its separator: `; ...` for another
    clause, `, ...` for more names, `+...` for more layers of one group."""
    from sparsetrain.report import _short

    advice = "; lower round_to to remove from them"
    two_bins = ("prune.round_to=8: 1 group of 64 channels keeps all 64 (60 rounded up): features.0; 1 group of 192 "
                f"channels keeps all 192 (184 rounded up): features.3{advice}")
    assert _short(two_bins) == ("prune.round_to=8: 1 group of 64 channels keeps all 64 (60 rounded up): features.0; ..."
                                + advice), _short(two_bins)
    group = ("prune.round_to=16: 1 group of 64 channels keeps all 64 (60 rounded up): features.0+features.1.conv_dw+"
             f"features.1.bn2{advice}")
    assert _short(group) == ("prune.round_to=16: 1 group of 64 channels keeps all 64 (60 rounded up): features.0+..."
                             + advice), _short(group)
    names = ("prune.round_to=8: 4 groups of 8 channels keep all 8 (2 rounded up): stem.0, downs.0.1.0, downs.1.1.0, "
             f"ups.1.conv.3{advice}")
    assert _short(names) == names.replace(", downs.1.1.0, ups.1.conv.3;", ", ...;"), _short(names)


def test_the_report_header_records_the_batch_split() -> None:
    """Trial 26, finding 10: report.json's header had `world_size`, `zero_stage`, `precision` but neither
    `gradient_accumulation_steps` nor the micro-batch (only config.yaml had the former)."""
    from sparsetrain.config import load_config
    from sparsetrain.report import training_setup

    cfg = load_config(None, ["train.batch_size=96", "deepspeed.gradient_accumulation_steps=3"])
    setup = training_setup(cfg, 2)
    assert {key: setup.get(key) for key in ("batch_size", "gradient_accumulation_steps", "micro_batch")} == \
        {"batch_size": 96, "gradient_accumulation_steps": 3, "micro_batch": 16}, setup


def test_the_quick_latency_line_applies_the_tables_noise_rule_and_says_it_is_one_measurement() -> None:
    """Trial 25: with deploy.latency=false the summary printed `80.03 ms -> 82.25 ms (0.97x; median of 5 interleaved
    rounds, ...)` for a model with 3.5x fewer parameters: rounds that disagree now get the table's `within noise`
    note (`noise_range`), and the line says it is one quick measurement, naming `sparsetrain bench latency`."""
    import torch

    from sparsetrain.measure import QUICK_LATENCY, quick_latency
    from sparsetrain.structural import interleaved_times_ms

    noisy = quick_latency([[80.0, 81.0], [40.0, 42.0], [90.0, 95.0], [60.0, 61.0], [85.0, 80.0]],
                          [[82.0, 83.0], [70.0, 71.0], [45.0, 47.0], [30.0, 33.0], [90.0, 88.0]])
    line = next(x for x in format_table(_structural_report({**noisy, "measured": QUICK_LATENCY})).splitlines()
                if x.startswith("latency"))
    assert re.search(r"\(\d\.\d\dx, within noise: \d\.\d\dx-\d\.\d\dx over the p20, median and paired ratios; median "
                     r"of 5 interleaved rounds, .*one quick measurement: `sparsetrain bench latency RUN`", line), line
    steady = quick_latency([[30.0, 30.5]] * 5, [[10.0, 10.1]] * 5)
    line = next(x for x in format_table(_structural_report({**steady, "measured": QUICK_LATENCY})).splitlines()
                if x.startswith("latency"))
    assert "(3.01x; median of 5" in line and "noise" not in line, line
    times = interleaved_times_ms([torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)], (1, 4), rounds=3, runs=2)
    assert [[len(r) for r in model] for model in times] == [[2, 2, 2], [2, 2, 2]], times


def test_latency_png_marks_the_speedups_the_table_calls_within_noise() -> None:
    """Trial 25: latency.png labelled bars `1.04x` and `2.23x` with no mark, where the table said both were within
    noise."""
    from sparsetrain.deploy.latency_report import bar_labels

    def row(batch: int, p20: float, median: float, paired: float) -> dict:
        return {"runtime": "onnxruntime", "device": "cpu", "batch": batch, "speedup": p20, "speedup_median": median,
                "speedup_paired": paired, "speedup_paired_p20": min(p20, median),
                "speedup_paired_p80": max(p20, median)}

    table = {"timed": ["dense", "compressed"], "rows": [row(1, 1.29, 1.28, 1.30), row(16, 2.23, 1.31, 2.2),
                                                       row(32, 1.04, 0.98, 1.02)]}
    assert bar_labels(table) == ["onnxruntime cpu\nbatch 1\n1.29x", "onnxruntime cpu\nbatch 16\n2.23x (noise)",
                                 "onnxruntime cpu\nbatch 32\n1.04x (noise)"]


def test_the_flops_line_says_they_are_flops_not_macs() -> None:
    """Trial 25: report.json and the summary said `flops 3,269,216 -> 2,271,808` without saying FLOPs or MACs (many
    papers call MACs FLOPs); the value is torch's FlopCounterMode count, 2 per multiply-add, and the line says so."""
    import torch

    from sparsetrain.structural import profile_model

    report = {k: v for k, v in _structural_report({}).items() if k != "latency_ms"}
    line = next(x for x in format_table(report).splitlines() if x.startswith("flops"))
    assert line == "flops        10 -> 5 (2.00x fewer; FLOPs of one forward pass per sample, 2 per multiply-add)", line
    linear = torch.nn.Linear(7, 3)  # 21 multiply-adds per sample
    assert profile_model(linear, (1, 7), latency=False)["flops"] == 42
