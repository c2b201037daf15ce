"""The run report: report.json, a printed table, plots; everything measured from the weights on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sparsetrain.deploy.bitmask import BITMASK_FILE, save_sparse
from sparsetrain.engine.checkpoint import atomic_write_text
from sparsetrain.pruning.masks import layer_counts, prunable_parameters, sparsity_of

if TYPE_CHECKING:
    from sparsetrain.pipeline import Pipeline

METRIC_KEYS = {"dense": "dense", "sparsify": "sparse", "prune": "pruned", "finetune": "finetuned"}


def _final_phase(completed: dict[str, Any]) -> str | None:
    from sparsetrain.deploy.run import final_phase

    return final_phase(completed)


def _param_counts(model: torch.nn.Module) -> dict[str, int]:
    params = list(model.parameters())
    return {"total": sum(p.numel() for p in params), "nonzero": sum(int(torch.count_nonzero(p)) for p in params)}


def build_report(pipeline: Pipeline) -> dict[str, Any]:
    """Collect phase results and measure the final model (sparsity, sizes) from its weights."""
    completed, out = pipeline.state["completed"], pipeline.out_dir
    report: dict[str, Any] = {"world_size": pipeline.dist.world_size, "task": pipeline.cfg.task,
                              "model": pipeline.cfg.model.name}
    for phase, key in METRIC_KEYS.items():
        if phase in completed:
            report[key] = {k: v for k, v in completed[phase].items() if k != "wall_time_s"}
    report["wall_time_s"] = {p: r.get("wall_time_s") for p, r in completed.items()}
    masked = [completed[p]["mask_memory"] for p in ("finetune", "sparsify") if completed.get(p, {}).get("mask_memory")]
    if masked:  # packed keep-masks each rank held while training (its share under ZeRO >= 1)
        report["mask_memory"] = masked[0]
    final = _final_phase(completed)
    if final is None:
        return report
    model = pipeline.model_from(final)
    params = prunable_parameters(model)
    layers = layer_counts(params)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    counts = _param_counts(model)
    report.update(sparsity=sparsity_of(layers), layers=layers, params=counts)
    report["bytes"] = {"dense": sum(t.numel() * t.element_size() for t in state.values()),
                       "compressed": save_sparse(state, set(params), out / "export" / BITMASK_FILE)}
    if pipeline.structural:
        _add_structural(pipeline, report, model)
    else:
        report["params"].update(dense=counts["total"], pruned=counts["nonzero"])
        _add_baselines(pipeline, report)
    # weights of the original dense model per non-zero weight of the final one (both methods)
    report["compression_ratio"] = report["params"].get("dense", counts["total"]) / max(counts["nonzero"], 1)
    return report


def _add_baselines(pipeline: Pipeline, report: dict[str, Any]) -> None:
    """The baselines' results and the accuracy-after-pruning curve of l0 vs l2 (see sparsetrain.baselines)."""
    from sparsetrain.baselines import prune_curve, summarize

    if pipeline.baseline_reports:
        report["baselines"] = {name: summarize(r) for name, r in pipeline.baseline_reports.items()}
    if pipeline.cfg.regularizer.name == "l0_exp" and {"sparsify", "prune"} <= set(pipeline.state["completed"]):
        report["prune_curve"] = prune_curve(pipeline, pipeline.baseline_reports)


def _add_structural(pipeline: Pipeline, report: dict[str, Any], final: torch.nn.Module) -> None:
    """Sizes, FLOPs, latency and peak memory of the dense vs the physically smaller model (rank 0 measures)."""
    from sparsetrain.structural import profile_model

    completed = pipeline.state["completed"]
    report["kept_filters"] = completed.get("prune", {}).get("kept_filters", [])
    if not pipeline.dist.is_main:
        return
    dense = pipeline.model_from("sparsify" if "sparsify" in completed else None)
    shape = (1, *pipeline.data.input_shape)
    before, after = (profile_model(m.float().cpu(), shape) for m in (dense, final))
    report["params"].update(dense=before["params"], pruned=after["params"])
    report["flops"] = {"dense": before["flops"], "pruned": after["flops"]}
    report["bytes"].update(dense=before["weight_bytes"], pruned=after["weight_bytes"])
    report["peak_memory_bytes"] = {"dense": before["peak_memory_bytes"], "pruned": after["peak_memory_bytes"]}
    report["latency_ms"] = {"dense": before["latency_ms"], "pruned": after["latency_ms"],
                            "speedup": before["latency_ms"] / max(after["latency_ms"], 1e-9)}
    report["param_reduction"] = before["params"] / max(after["params"], 1)


def format_table(report: dict[str, Any]) -> str:
    rows = [(key, report[key]["metric"]) for key in METRIC_KEYS.values() if key in report]
    lines = ["phase        metric"] + [f"{name:<12} {value:7.2f}" for name, value in rows]
    if "flops" in report:
        p, f, lat = report["params"], report["flops"], report["latency_ms"]
        lines += [f"params       {p['dense']:,} -> {p['pruned']:,} ({report['param_reduction']:.2f}x fewer)",
                  f"flops        {f['dense']:,} -> {f['pruned']:,}",
                  f"latency      {lat['dense']:.2f} ms -> {lat['pruned']:.2f} ms ({lat['speedup']:.2f}x, CPU, batch 1)"]
        return "\n".join(lines)
    if "sparsity" in report:
        lines += [f"sparsity     {100 * report['sparsity']:7.2f} %",
                  f"compression  {report['compression_ratio']:7.1f} x  "
                  f"({report['params']['nonzero']:,} of {report['params']['total']:,} weights non-zero)",
                  f"bytes        {report['bytes']['dense']:,} dense -> {report['bytes']['compressed']:,} compressed"]
    if "mask_memory" in report:
        per_rank = report["mask_memory"]["bytes_per_rank"]
        lines.append(f"masks        {max(per_rank):,} bytes per rank (packed 1 bit per weight, {len(per_rank)} ranks)")
    if report.get("baselines"):
        lines += ["", _comparison_table(report)]
    return "\n".join(lines)


def _comparison_table(report: dict[str, Any]) -> str:
    """l0 vs the baselines at the same sparsity and budget: metric after training, after pruning, fine-tuned."""
    from sparsetrain.baselines import BASELINES

    def cell(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:>9.2f}" if isinstance(row.get(key), int | float) else f"{'-':>9}"

    main = {key: report[key]["metric"] for key in ("sparse", "pruned", "finetuned") if key in report}
    rows = [("l0 (this run)", {**main, "sparsity": report["sparsity"],
                               "compression_ratio": report["compression_ratio"]})]
    rows += [(BASELINES[name]["label"], row) for name, row in report["baselines"].items()]
    lines = [f"{'method (same sparsity, same epochs)':<36}{'trained':>9}{'pruned':>9}{'finetuned':>10}"
             f"{'sparsity':>10}{'compr.':>8}"]
    lines += [f"{label:<36}{cell(row, 'sparse')}{cell(row, 'pruned')}{cell(row, 'finetuned')}"
              f"{100 * row['sparsity']:>9.2f}%{row['compression_ratio']:>7.1f}x" for label, row in rows]
    if "dense" in report:
        lines.append(f"{'dense (l2, same budget)':<36}{report['dense']['metric']:>27.2f}")
    return "\n".join(lines)


def write_plots(pipeline: Pipeline, report: dict[str, Any]) -> None:
    from sparsetrain.plots import plot_layer_sparsity, plot_magnitude_histograms

    out = pipeline.out_dir
    if report.get("kept_filters"):
        from sparsetrain.plots import plot_kept_filters

        plot_kept_filters(report["kept_filters"], out / "kept_filters.png")
    if "layers" in report and not pipeline.structural:
        plot_layer_sparsity(report["layers"], out / "layer_sparsity.png")
    if "prune_curve" in report:
        from sparsetrain.plots import plot_accuracy_vs_sparsity

        plot_accuracy_vs_sparsity(report, out / "accuracy_vs_sparsity.png")
    if "sparsify" in pipeline.state["completed"]:
        before = "dense" if "dense" in pipeline.state["completed"] else None
        plot_magnitude_histograms(prunable_parameters(pipeline.model_from(before)),
                                  prunable_parameters(pipeline.model_from("sparsify")), out / "weight_hist.png",
                                  ("dense-trained" if before else "initial", "after sparsity training"))


def summary_values(report: dict[str, Any]) -> dict[str, float]:
    """Top-level numbers, each phase's metric and the baselines' numbers, flat for the W&B run summary."""
    values = {k: v for k, v in report.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    values.update({f"{key}/metric": report[key]["metric"] for key in METRIC_KEYS.values() if key in report})
    for name, row in report.get("baselines", {}).items():
        values.update({f"baselines/{name}/{k}": v for k, v in row.items() if isinstance(v, int | float)})
    return values


def write_report(pipeline: Pipeline) -> dict[str, Any]:
    """Build the report on every rank (evaluation is collective); rank 0 writes files and prints the table."""
    from sparsetrain.deploy.run import deploy_run

    report = build_report(pipeline)
    if pipeline.state["completed"]:
        report.update(deploy_run(pipeline))  # export/ in every format, verified; the interleaved latency table
    if pipeline.dist.is_main:
        atomic_write_text(Path(pipeline.out_dir) / "report.json", json.dumps(report, indent=2))
        write_plots(pipeline, report)
        pipeline.tracker.summary(summary_values(report))
        print(format_table(report), flush=True)
    return report
