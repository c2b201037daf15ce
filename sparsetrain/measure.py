"""Measure a finished run into plain data and write its report: report.json, the printed table, plots, W&B.

The numbers come from the weights on disk (the final phase's model, and the dense one for structural runs);
`sparsetrain.report` turns them into report.json without touching models.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sparsetrain.deploy.bitmask import BITMASK_FILE, plain_bytes, smallest_file
from sparsetrain.engine.checkpoint import atomic_write_text
from sparsetrain.phases import final_phase
from sparsetrain.pruning.masks import layer_counts, prunable_parameters, sparsity_of
from sparsetrain.report import (
    build_report,
    dense_label,
    filters_removed,
    format_table,
    summary_values,
    training_setup,
)

if TYPE_CHECKING:
    from sparsetrain.pipeline import Pipeline

log = logging.getLogger(__name__)


def _param_counts(model: torch.nn.Module) -> dict[str, int]:
    params = list(model.parameters())
    return {"total": sum(p.numel() for p in params), "nonzero": sum(int(torch.count_nonzero(p)) for p in params)}


def measure_final(pipeline: Pipeline) -> dict[str, Any]:
    """Sparsity, layer counts, parameter counts and dense size of the final model (plus the structural and baseline
    numbers), as plain data; {} before any phase finished. The sizes of its weights files are the export's
    (`export_bytes`, added by `write_report` after `deploy_run`); `bytes.dense` is the size of the dense
    architecture's safetensors file (header included, as those files are measured; rank 0 only: it serializes the
    weights in memory)."""
    final = final_phase(pipeline.state["completed"])
    if final is None:
        return {}
    model = pipeline.model_from(final)
    layers = layer_counts(prunable_parameters(model))
    counts = _param_counts(model)
    measured: dict[str, Any] = {"sparsity": sparsity_of(layers), "layers": layers, "params": counts}
    measured["bytes"] = {"dense": plain_bytes(model.state_dict())} if pipeline.dist.is_main else {}
    if pipeline.structural:
        _add_structural(pipeline, measured, model)
    else:
        measured["params"].update(dense=counts["total"], pruned=counts["nonzero"])
        _add_baselines(pipeline, measured)
    # weights of the original dense model per non-zero weight of the final one (both methods)
    measured["compression_ratio"] = measured["params"].get("dense", counts["total"]) / max(counts["nonzero"], 1)
    return measured


def export_bytes(folder: Path) -> dict[str, int | str]:
    """The sizes (bytes) of the two weights files of export folder `folder` (`deploy.folder.write_export`), the
    smaller named `compressed` (`bitmask.smallest_file`): report.json's bytes, counted on the files written rather
    than by serializing the weights again (`bitmask.storage_bytes` counts a checkpoint that has no export)."""
    from sparsetrain.structural.serialize import WEIGHTS_FILE

    return smallest_file({"bitmask": (folder / BITMASK_FILE).stat().st_size,
                          "safetensors": (folder / WEIGHTS_FILE).stat().st_size})


def _add_baselines(pipeline: Pipeline, measured: dict[str, Any]) -> None:
    """The baselines' results and the accuracy-after-pruning curve of l0 vs l2 (see sparsetrain.baselines)."""
    from sparsetrain.baselines import prune_curve, summarize

    if pipeline.baseline_reports:
        measured["baselines"] = {name: summarize(r) for name, r in pipeline.baseline_reports.items()}
    wanted = pipeline.cfg.report.accuracy_curve and pipeline.cfg.regularizer.name == "l0_exp"
    if wanted and {"sparsify", "prune"} <= set(pipeline.state["completed"]):
        measured["prune_curve"] = prune_curve(pipeline, pipeline.baseline_reports)


def _add_structural(pipeline: Pipeline, measured: dict[str, Any], final: torch.nn.Module) -> None:
    """Sizes, FLOPs, latency and peak memory of the dense vs the physically smaller model (rank 0 measures). When no
    filter was removed both are one architecture: nothing is timed and there is no `latency_ms` (`deploy.run`
    says so in one line; the summary says "not compared")."""
    from sparsetrain.structural import profile_model

    completed = pipeline.state["completed"]
    measured["kept_filters"] = completed.get("prune", {}).get("kept_filters", [])
    if not pipeline.dist.is_main or "prune" not in completed:  # nothing removed yet: no before/after to compare
        return
    dense = pipeline.model_from("sparsify" if "sparsify" in completed else None).float().cpu()
    final = final.float().cpu()
    shape = (1, *pipeline.data.input_shape)
    before, after = (profile_model(m, shape, latency=False) for m in (dense, final))
    measured["params"].update(dense=before["params"], pruned=after["params"])
    measured["flops"] = {"dense": before["flops"], "pruned": after["flops"]}
    # as safetensors files (header included), like the export's: `pruned` is the size of the smaller model's
    # model.safetensors, `dense` that of the unpruned one (profile_model's weight_bytes count tensor data only)
    measured["bytes"].update(dense=plain_bytes(dense.state_dict()), pruned=plain_bytes(final.state_dict()))
    measured["peak_memory_bytes"] = {"dense": before["peak_memory_bytes"], "pruned": after["peak_memory_bytes"]}
    measured["param_reduction"] = before["params"] / max(after["params"], 1)
    if filters_removed(measured["kept_filters"]):
        _add_latency(measured, dense, final, shape)


QUICK_LATENCY = ("median of 5 interleaved rounds, torch eager, CPU, batch 1; one quick measurement: `sparsetrain "
                 "bench latency RUN` (or deploy.latency=true) for the full table (onnxruntime, batch 16)")


def _add_latency(measured: dict[str, Any], dense: torch.nn.Module, pruned: torch.nn.Module,
                 shape: tuple[int, ...]) -> None:
    """The quick `latency_ms` (torch eager, batch 1, interleaved), which a `deploy.latency` table replaces."""
    from sparsetrain.structural import interleaved_times_ms

    before, after = interleaved_times_ms([dense, pruned], shape)
    measured["latency_ms"] = {**quick_latency(before, after), "measured": QUICK_LATENCY}


def quick_latency(dense: list[list[float]], pruned: list[list[float]]) -> dict[str, float]:
    """The quick measurement's medians and ratios from per-round times (ms; rounds of passes, interleaved):
    `dense` and `pruned` the medians over all passes and `speedup` their ratio, as before; `speedup_p20` (the
    p20s'), `speedup_median` and `speedup_paired` (the median of per-round ratios of the rounds' medians) with its
    p20 and p80 are the ratios `latency_report.noise_range` judges, the one noise rule of the latency table."""
    flat = [np.concatenate(d) for d in (dense, pruned)]
    (d20, d50), (p20, p50) = (np.quantile(t, [0.2, 0.5]) for t in flat)
    rounds = [float(np.median(d) / max(np.median(p), 1e-9)) for d, p in zip(dense, pruned, strict=True)]
    low, high = np.quantile(rounds, [0.2, 0.8])
    return {"dense": float(d50), "pruned": float(p50), "speedup": float(d50 / max(p50, 1e-9)),
            "speedup_p20": float(d20 / max(p20, 1e-9)), "speedup_median": float(d50 / max(p50, 1e-9)),
            "speedup_paired": float(np.median(rounds)), "speedup_paired_p20": float(low),
            "speedup_paired_p80": float(high)}


REPORT_PLOTS = ("layer_sparsity.png", "weight_hist.png", "accuracy_vs_sparsity.png", "kept_filters.png")


def write_plots(pipeline: Pipeline, report: dict[str, Any]) -> list[Path]:
    """The report's PNGs in out_dir (those its contents call for), returned with latency.png when this report's
    latency table has one (drawn by the deploy step); `report.plots=false`: none, and one line instead."""
    if not pipeline.cfg.report.plots:
        _name_undrawn_plots(pipeline.out_dir, report)
        return []
    from sparsetrain.plots import plot_layer_sparsity, plot_magnitude_histograms

    out, drawn = pipeline.out_dir, []
    if report.get("kept_filters"):
        from sparsetrain.plots import plot_kept_filters

        plot_kept_filters(report["kept_filters"], out / "kept_filters.png")
        drawn.append(out / "kept_filters.png")
    if "layers" in report and not pipeline.structural:
        plot_layer_sparsity(report["layers"], out / "layer_sparsity.png")
        drawn.append(out / "layer_sparsity.png")
    if "prune_curve" in report:
        from sparsetrain.plots import plot_accuracy_vs_sparsity

        plot_accuracy_vs_sparsity(report, out / "accuracy_vs_sparsity.png", dense_label(report, method=""))
        drawn.append(out / "accuracy_vs_sparsity.png")
    elif not pipeline.cfg.report.accuracy_curve and (out / "accuracy_vs_sparsity.png").is_file():
        log.info("[report] report.accuracy_curve=false: report.json has no prune_curve; accuracy_vs_sparsity.png is "
                 "kept from an earlier run, not part of this report (report.accuracy_curve=true makes it again)")
    if "sparsify" in pipeline.state["completed"]:
        before = "dense" if "dense" in pipeline.state["completed"] else None
        plot_magnitude_histograms(prunable_parameters(pipeline.model_from(before)),
                                  prunable_parameters(pipeline.model_from("sparsify")), out / "weight_hist.png",
                                  ("dense-trained" if before else "initial", "after sparsity training"))
        drawn.append(out / "weight_hist.png")
    if "latency" in report and (out / "latency.png").is_file():
        drawn.append(out / "latency.png")
    return drawn


def _name_undrawn_plots(out: Path, report: dict[str, Any]) -> None:
    """`report.plots=false`: one line saying no plot was drawn, naming the PNGs an earlier run of `out` left that no
    longer show this report (kept on disk: a setting that skips drawing deletes nothing). latency.png is one when
    latency.json, this report's table, was written after it (timed again without drawing); with no table in the
    report the deploy step already named it."""
    left = [name for name in REPORT_PLOTS if (out / name).is_file()]
    png, table = out / "latency.png", out / "latency.json"
    if "latency" in report and png.is_file() and table.is_file() and png.stat().st_mtime < table.stat().st_mtime:
        left.append(png.name)
    kept = (f"; {', '.join(left)} {'are' if len(left) > 1 else 'is'} kept from an earlier run, not part of this "
            "report") if left else ""
    log.info(f"[report] report.plots=false: no plots drawn (report.json holds their numbers; report.plots=true "
             f"draws them){kept}")


def write_report(pipeline: Pipeline) -> dict[str, Any]:
    """Measure and build the report on every rank (evaluation is collective); rank 0 writes files and prints the
    table."""
    from sparsetrain.deploy.run import deploy_run
    from sparsetrain.engine import preemption

    with preemption.after_training():  # nothing left to checkpoint: Ctrl-C quits at once, a re-run redoes this
        measured = measure_final(pipeline)
        if pipeline.state["completed"]:
            measured.update(deploy_run(pipeline))  # export/ in every format, verified; the interleaved latency table
            if pipeline.dist.is_main:  # rank 0 wrote (or kept) export/
                measured["bytes"].update(export_bytes(pipeline.out_dir / "export"))
        header = {"task": pipeline.cfg.task, "model": pipeline.cfg.model.name,
                  **training_setup(pipeline.cfg, pipeline.dist.world_size, pipeline.backend)}
        if pipeline.cfg.data.ignore_index is not None:  # the metrics left these pixels out
            header["ignore_index"] = pipeline.cfg.data.ignore_index
        report = build_report(header, pipeline.state["completed"], measured)
        if pipeline.dist.is_main:
            atomic_write_text(Path(pipeline.out_dir) / "report.json", json.dumps(report, indent=2))
            plots = write_plots(pipeline, report)
            pipeline.tracker.summary(summary_values(report))
            pipeline.tracker.report_media(report.get("layers", []), plots)
            print(format_table(report), flush=True)
    return report
