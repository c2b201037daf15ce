"""The run report as plain data: report.json's format, the printed table and the W&B summary values.

Everything here works on plain mappings (phase results from state.json, measurements of the final model); the
measuring itself, which needs models, is `sparsetrain.measure`. report.json, format 2:

    format_version   2
    task, model, world_size, zero_stage, precision, offload_optimizer, grad_checkpointing, batch_size,
    gradient_accumulation_steps, micro_batch, epochs   how it trained
                     (`training_setup`; batch_size: global, per optimizer step; micro_batch: per rank and micro-step;
                     epochs: {phase: phases.<phase>.epochs} of dense, sparsify and finetune; the batch keys and
                     epochs are absent in runs from before they were recorded)
    ignore_index     segmentation with data.ignore_index: the mask value its loss and metrics left out (absent
                     otherwise)
    phases           {phase: its results (metric, the task's metrics, steps, ...)}, keyed by phase name
                     (`sparsetrain.phases`), in run order; only finished phases. Segmentation with 3 or more
                     classes adds `miou` (then the `metric`) and `per_class_iou` ({class name or index: IoU %, null
                     for a class neither in the targets nor predicted}; `tasks.segmentation`). Each has `chance`
                     (the metric's chance level, `tasks.*.finalize`; absent in runs from before it; classification
                     adds `chance_margin`, what a later phase must clear above it to count as recovered,
                     `clearly_above_chance`) and, when its metric was at or below it, `at_chance` (the warning line
                     the phase logged, `sparsetrain.collapse`)
    final_phase      the phase whose weights are the run's result
    wall_time_s      {phase: seconds; a resumed phase's over its attempts (each up to the checkpoint resumed from)}
    sparsity, layers, params, bytes, compression_ratio   the final model (`sparsetrain.measure`). Two scopes
                     (`SPARSITY_SCOPE`, `COMPRESSION_SCOPE`): sparsity and layers count only the prunable weights
                     (conv / linear kernels, `pruning.masks.prunable_parameters`), params and compression_ratio
                     (params.dense, or params.total, / params.nonzero) count every parameter (biases, norms too),
                     so compression_ratio is below 1 / (1 - sparsity) by the never-pruned parameters; bytes, all sizes
                     of safetensors files (header included): dense (the unpruned model as a plain file), bitmask and
                     safetensors (the export's two weights files), compressed (the smaller of those, the one
                     `compressed_format` names: the bitmask file for pruned weights, model.safetensors for a model
                     with filters removed), pruned (structural: the smaller model as a plain file)
    mask_memory      {bytes_per_rank, weights_per_rank}: the packed keep-masks (1 bit per weight) each rank held
                     while training with masks (fine-tuning, else gradual pruning in sparsify), its share under
                     ZeRO >= 1; absent when no phase trained with masks
    baselines        {name: {phase: metric, sparsity, ...}} (Method 1 with `baselines`)
    ... structural runs add kept_filters ([{group, total, kept, layers}] per prunable channel group, in graph
    order: units kept of total, the modules whose filters make the group; `exact: false` when removed inexactly;
    `kept_because: "inexact (LayerNorm)"` when kept whole because removal would be inexact and prune.allow_inexact
    is off; rows before `layers` was recorded lack it), phases.prune.why_nothing_removed (when no filter was removed:
    the prune warning's reason, with what to set), phases.prune.selection_notes (the lines the prune phase logged
    when prune.round_to left groups whole, prune.max_filter_fraction capped a removal, whole heads / conv groups
    removed more than filter_fraction, or groups were kept whole as inexact), flops (FLOPs of one forward pass
    of one sample, 2 per multiply-add: torch's FlopCounterMode, convs and matmuls; papers' "FLOPs" are often MACs,
    half this), peak_memory_bytes,
    latency_ms (with deploy.latency=false the quick measurement's medians `dense` / `pruned`, their ratio `speedup`
    and the ratios the noise rule judges: `speedup_p20`, `speedup_median`, `speedup_paired` (+ `_p20` / `_p80`);
    `measure.quick_latency`), param_reduction (no latency_ms, and no latency table, when no filter was removed:
    nothing was timed, the summary says "not compared"); deployment
    adds export, export_phase (the phase export/ holds: the final one unless `sparsetrain export --phase` wrote
    another since) and latency (`sparsetrain.deploy.run`; its `phase`: the phase whose export it timed); a Method 1
    run whose latency table timed export/compact/ adds latency_ms, the compact model's speed-up ({dense, compact,
    speedup, speedup_median, speedup_paired, model: "compact", measured}; Method 2's has `pruned` where this has
    `compact`; the masked model runs as a dense graph and gets no headline).

Format 1 (before the phase vocabulary) had the phases as top-level keys dense / sparse / pruned / finetuned;
`phase_results` reads both.
"""

from __future__ import annotations

import math
from typing import Any

from sparsetrain.phases import DENSE, FINETUNE, PHASES, PRUNE, SPARSIFY, TRAINING_PHASES, final_phase

REPORT_FORMAT = 2
# what a task's "metric" is (tasks.*.finalize); segmentation with K >= 3 classes: mIoU (`metric_label`)
TASK_METRICS = {"classification": "accuracy", "segmentation": "Dice"}
FORMAT_1_KEYS = {"dense": "dense", "sparse": "sparsify", "pruned": "prune", "finetuned": "finetune"}
# what `sparsity` and `compression_ratio` count, named wherever either is printed (they differ on purpose: the
# field's usual definitions, sparsity over the prunable weights, compression over the whole model)
SPARSITY_SCOPE = "of prunable weights (conv/linear)"
COMPRESSION_SCOPE = "all parameters"
KEPT_ROWS_LOGGED = 20  # groups listed in the prune phase's log block (report.json's kept_filters has all)


def metric_label(task: str | None, result: dict[str, Any] | None = None) -> str:
    """The name of a phase result's `metric`: `mIoU` when the result has `miou` (multi-class segmentation,
    `tasks.segmentation`), else the task's (`TASK_METRICS`), else `metric`."""
    if result and "miou" in result:
        return "mIoU"
    return TASK_METRICS.get(task or "", "metric")


def training_setup(cfg: Any, world_size: int, backend: str | None = None) -> dict[str, Any]:
    """How the run trains, for report.json's header and the start line: ranks, ZeRO stage, precision (fp32 or bf16
    with fp32 masters), optimizer offload (`none` / `cpu`), gradient checkpointing, the global batch
    (`batch_size`, samples per optimizer step over all ranks), `gradient_accumulation_steps` and `micro_batch`
    (samples per rank and micro-step: batch_size / (world_size × gradient_accumulation_steps)), each training phase's
    epochs (`dense_label` compares the dense baseline's budget with them), the regularizer, its gradient path and
    the backend that ran (resolved: `triton` or `torch`, never `auto`).

    Args:
        cfg: The run's `RunConfig`.
        world_size: Ranks of the run.
        backend: The run's resolved backend (`sparsetrain.backend.resolve_backend`); None leaves it out.
    """
    ds = cfg.deepspeed
    return {"world_size": world_size, "zero_stage": ds.zero_stage, "precision": ds.precision,
            "offload_optimizer": ds.offload_optimizer, "grad_checkpointing": cfg.train.grad_checkpointing,
            "batch_size": cfg.train.batch_size, "gradient_accumulation_steps": ds.gradient_accumulation_steps,
            "micro_batch": cfg.train.batch_size // (world_size * ds.gradient_accumulation_steps),
            "epochs": {phase: getattr(cfg.phases, phase).epochs for phase in TRAINING_PHASES},
            **kernel_setup(cfg, backend)}


def kernel_setup(cfg: Any, backend: str | None = None) -> dict[str, str]:
    """`{"regularizer": "l0_exp", "gradient_path": "hook", "backend": "torch"}`: the regularizer, its gradient path
    and the resolved backend (left out when None), as report.json's header, state.json's and the W&B config's
    `kernels` record them (the config's `regularizer.backend` may say `auto`)."""
    setup = {"regularizer": cfg.regularizer.name, "gradient_path": cfg.regularizer.gradient_path}
    return setup if backend is None else {**setup, "backend": backend}


def setup_line(setup: dict[str, Any], device: str) -> str:
    """`training: 2 ranks on cpu, ZeRO 3, bf16 (fp32 masters), optimizer state offloaded to cpu, gradient
    checkpointing` from `training_setup`; offload and checkpointing are named only when in effect."""
    ranks = setup["world_size"]
    parts = [f"{ranks} rank{'s' * (ranks != 1)} on {device}", f"ZeRO {setup['zero_stage']}",
             "bf16 (fp32 masters)" if setup["precision"] == "bf16" else setup["precision"]]
    if setup["offload_optimizer"] != "none":
        parts.append(f"optimizer state offloaded to {setup['offload_optimizer']} (ZeRO-Offload)")
    if setup["grad_checkpointing"]:
        parts.append("gradient checkpointing")
    return f"training: {', '.join(parts)}"


def regularizer_line(setup: dict[str, Any], why: str) -> str:
    """`regularizer: l0_exp, gradient path hook, backend torch (auto: not CUDA (cpu))` from `training_setup` (with
    its backend) and why that backend (`sparsetrain.backend.explain_backend`)."""
    return (f"regularizer: {setup['regularizer']}, gradient path {setup['gradient_path']}, "
            f"backend {setup['backend']} ({why})")


def build_report(header: dict[str, Any], completed: dict[str, dict[str, Any]],
                 measured: dict[str, Any]) -> dict[str, Any]:
    """report.json's content from plain data.

    Args:
        header: task, model and `training_setup`.
        completed: phase name → results, as state.json records them.
        measured: numbers measured on the final model and anything else the report shows (`sparsetrain.measure`).
    """
    phases = {p: {k: v for k, v in completed[p].items() if k != "wall_time_s"} for p in PHASES if p in completed}
    report = {"format_version": REPORT_FORMAT, **header, "phases": phases, "final_phase": final_phase(completed),
              "wall_time_s": {p: r.get("wall_time_s") for p, r in completed.items()}}
    masks = mask_memory(completed)
    if masks is not None:
        report["mask_memory"] = masks
    return {**report, **measured}


def mask_memory(completed: dict[str, dict[str, Any]]) -> dict[str, list[int]] | None:
    """The packed keep-masks each rank held while training (fine-tuning's, else sparsify's under gradual
    pruning), as the phase recorded them; None when no phase trained with masks."""
    return next((completed[p]["mask_memory"] for p in (FINETUNE, SPARSIFY) if completed.get(p, {}).get("mask_memory")),
                None)


def phase_results(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Phase name → results of a report of either format."""
    if "phases" in report:
        return report["phases"]
    return {phase: report[key] for key, phase in FORMAT_1_KEYS.items() if isinstance(report.get(key), dict)}


def final_metric(report: dict[str, Any]) -> tuple[str | None, float | None]:
    """(phase, metric) of the last finished phase that has a metric, or (None, None)."""
    results = phase_results(report)
    phase = next((p for p in reversed(PHASES) if "metric" in results.get(p, {})), None)
    return phase, (results[phase]["metric"] if phase else None)


def format_table(report: dict[str, Any]) -> str:
    """The printed summary: each phase's metric (the column named after the task's metric, in percent; `at chance`
    beside a phase at chance level), then the final model's size, speed and bytes (Method 2: and its selection
    notes), the baselines, and last one `warning` line per phase at chance that no later phase recovered from
    (`clearly_above_chance`)."""
    results = phase_results(report)
    name = metric_label(report.get("task"), next(iter(results.values()), None))
    label = f"{name} %" if name != "metric" else name
    lines = [f"phase        {label}"] + [f"{name:<12} {result['metric']:7.2f}{_chance_mark(name, results)}"
                                         for name, result in results.items()]
    if "flops" in report:
        lines += _structural_lines(report)
    elif "sparsity" in report:
        lines += [f"sparsity     {100 * report['sparsity']:7.2f} % {SPARSITY_SCOPE}",
                  f"compression  {report['compression_ratio']:7.1f} x  ({COMPRESSION_SCOPE}: "
                  f"{report['params']['nonzero']:,} of {report['params']['total']:,} non-zero)",
                  _bytes_line(report["bytes"])]
        lines += [_latency_line(report["latency_ms"])] if "latency_ms" in report else []  # the compact model's
    if "mask_memory" in report and "flops" not in report:
        per_rank = report["mask_memory"]["bytes_per_rank"]
        ranks = f"{len(per_rank)} rank{'s' if len(per_rank) > 1 else ''}"
        lines.append(f"masks        {max(per_rank):,} bytes per rank (packed 1 bit per weight, {ranks})")
    if report.get("baselines"):
        lines += ["", _comparison_table(report)]
    lines += [f"warning      {phase}: {results[phase]['at_chance']}" for phase in results
              if results[phase].get("at_chance") and not _recovered_by(phase, results)]
    return "\n".join(lines)


# what report.json's `flops` counts (structural.profile_model: torch's FlopCounterMode, convs and matmuls only)
FLOPS = "FLOPs of one forward pass per sample, 2 per multiply-add"


def _structural_lines(report: dict[str, Any]) -> list[str]:
    """Method 2: params and FLOPs dense -> pruned, latency, bytes, then what prune.round_to and
    prune.max_filter_fraction changed in the selection (`selection_notes`, each cut to `NOTE_WIDTH`)."""
    p, f = report["params"], report["flops"]
    if p["dense"] == p["pruned"] and f["dense"] == f["pruned"]:  # no filter removed: one architecture twice
        # nothing was timed (runs from before that timed both copies have a latency_ms: not shown)
        lines = [f"params       {p['dense']:,} ({nothing_removed(report)})", f"flops        {f['dense']:,} ({FLOPS})",
                 "latency      not compared: no filter was removed, so both are the same architecture"]
    else:
        lines = [f"params       {p['dense']:,} -> {p['pruned']:,} ({report['param_reduction']:.2f}x fewer)",
                 f"flops        {f['dense']:,} -> {f['pruned']:,} ({f['dense'] / max(f['pruned'], 1):.2f}x fewer; "
                 f"{FLOPS})"]
        lines += [_latency_line(report["latency_ms"])] if "latency_ms" in report else []
    lines += [_bytes_line(report["bytes"])] if "bytes" in report else []
    notes = phase_results(report).get(PRUNE, {}).get("selection_notes", [])
    return lines + [f"selection    {_short(note)}" for note in notes]


CHAIN = (SPARSIFY, PRUNE, FINETUNE)  # each starts from the weights of the one before (dense is a separate baseline)
NOTE_WIDTH = 100  # characters of a selection note the table shows; report.json has it whole


def clearly_above_chance(result: dict[str, Any]) -> bool:
    """Whether a phase's metric is clearly above its chance level: above `chance` by `chance_margin` too.

    `chance` already sits `CHANCE_SIGMAS` (3) standard errors above the commonest class's share p (a metric at or
    below it cannot be told from chance: `tasks.classification.chance_accuracy`). The same 3-standard-error test from
    the other side asks the metric's lower 3-sigma limit to clear that bound: metric − 3·SE > chance, with SE that of
    a share near chance, sqrt(p (1 − p) / n) (`chance_margin`, 3·SE in percent points; ~5.1 on 359 digits test
    samples). So finetune 14.20 % above a chance bound of 14.08 % is not a recovery: one lucky guess more or less
    decides it. Segmentation's chance (the best constant answer's Dice or mIoU) is no sampled share: no margin. A result
    without `chance` (runs from before it was measured) counts when it is not marked at chance.
    """
    if result.get("at_chance"):
        return False
    chance = result.get("chance")
    return chance is None or result["metric"] > chance + result.get("chance_margin", 0.0)


def _recovered_by(phase: str, results: dict[str, dict[str, Any]]) -> str | None:
    """The first later phase of `CHAIN` clearly above chance (`clearly_above_chance`), for a phase at chance; None
    when none is."""
    later = CHAIN[CHAIN.index(phase) + 1:] if phase in CHAIN else ()
    return next((p for p in later if p in results and clearly_above_chance(results[p])), None)


def _chance_mark(phase: str, results: dict[str, dict[str, Any]]) -> str:
    """`  at chance` beside a phase's metric: `, recovered in finetune` when a later phase is clearly above chance;
    else the numbers of a later phase above the chance bound but not clearly (`; finetune 14.20 %, chance bound
    14.08 %: not clearly above it`), and `(see the warning below)`."""
    if not results[phase].get("at_chance"):
        return ""
    recovered = _recovered_by(phase, results)
    if recovered:
        return f"  at chance, recovered in {recovered}"
    later = CHAIN[CHAIN.index(phase) + 1:] if phase in CHAIN else ()
    near = next((p for p in later if p in results and not results[p].get("at_chance")
                 and results[p].get("chance") is not None), None)
    numbers = (f"; {near} {results[near]['metric']:.2f} %, chance bound {results[near]['chance']:.2f} %: not clearly "
               "above it" if near else "")
    return f"  at chance{numbers} (see the warning below)"


NOTE_CUTS = ("; ", ", ", "+", " ")  # where a note may be cut: clauses, layer names, a group's layers; else words


def _short(text: str, width: int = NOTE_WIDTH) -> str:
    """`text` cut within `width` characters at its last clause or name separator there (`NOTE_CUTS`; a space when
    there is none), kept before the `...` (`stem.0, ...` when more names of that list follow, `features.0; ...` when
    the next clause does, `features.0+...` when the group has more layers: a single layer is never made to look like
    a list), then its last `; ` clause (the note's advice, e.g. `; lower round_to to remove from them`) when that is
    shorter than `width` / 2. Never cut inside a word."""
    if len(text) <= width:
        return text
    head, sep, tail = text.rpartition("; ")
    head, tail = (head, sep + tail) if head and len(tail) < width // 2 else (text, "")
    cut, kept = max((head.rfind(s, 0, width), s) for s in NOTE_CUTS[:-1])  # a clause or name boundary first
    if cut <= 0:
        cut, kept = head.rfind(" ", 0, width), " "
    if cut <= 0:
        return head[:width] + " ..." + tail
    return head[:cut] + kept.rstrip() + (" ..." if kept.endswith(" ") else "...") + tail


def nothing_removed(report: dict[str, Any]) -> str:
    """`no filter removed: <why>`, the reason the prune phase recorded (`why_nothing_removed`); reports from before it
    was recorded: `no filter removed`."""
    why = phase_results(report).get(PRUNE, {}).get("why_nothing_removed")
    return f"no filter removed: {why}" if why else "no filter removed"


def filters_removed(kept: list[dict[str, Any]]) -> bool:
    """Whether Method 2's prune step removed any filter, from its `kept_filters` rows ({group, total, kept, ...})."""
    return any(row["kept"] < row["total"] for row in kept)


def format_kept_filters(kept: list[dict[str, Any]], max_rows: int = KEPT_ROWS_LOGGED) -> str:
    """The prune phase's log block of Method 2: per channel group, filters kept / total (% kept) and the layers
    whose filters make the group (`kept_filters`' `layers`; its id for rows written before), then a total line.

    Args:
        kept: `kept_filters` rows, in graph order.
        max_rows: More groups than this: only the `max_rows` that lost the most filters are listed (in graph order),
            and one line says how many more report.json holds.
    """
    shown = kept
    if len(kept) > max_rows:
        most = sorted(range(len(kept)), key=lambda i: (kept[i]["kept"] - kept[i]["total"], i))[:max_rows]
        shown = [kept[i] for i in sorted(most)]
    width = len(f"{sum(row['total'] for row in kept):,}")
    which = f", the {len(shown)} of {len(kept)} groups that lost the most" if len(shown) < len(kept) else ""
    lines = [f"[prune] filters kept per channel group{which}: kept / total (% kept), layers"]
    lines += [_kept_row(row["kept"], row["total"], _group_layers(row), width) for row in shown]
    if len(shown) < len(kept):
        lines.append(f"  ... {len(kept) - len(shown)} more groups, all in report.json (kept_filters)")
    pruned = sum(row["kept"] < row["total"] for row in kept)
    lines.append(_kept_row(sum(row["kept"] for row in kept), sum(row["total"] for row in kept),
                           f"total: {pruned} of {len(kept)} groups lost filters", width))
    return "\n".join(lines)


def _kept_row(kept: int, total: int, label: str, width: int) -> str:
    share = 100 * kept / max(total, 1)
    return f"  {kept:>{width},} / {total:<{width},} {share:5.1f} %  {label}"


def _group_layers(row: dict[str, Any], at_most: int = 3) -> str:
    """`a, b, c (+2 more)`: the layers of a kept_filters row, (inexact) when its removal was inexact,
    `(kept whole: inexact (LayerNorm))` when the selection skipped it (`kept_because`)."""
    layers = row.get("layers") or [row["group"]]
    more = f" (+{len(layers) - at_most} more)" if len(layers) > at_most else ""
    tag = (" (inexact)" if row.get("exact") is False else
           f" (kept whole: {row['kept_because']})" if row.get("kept_because") else "")
    return ", ".join(layers[:at_most]) + more + tag


def _latency_line(lat: dict[str, Any]) -> str:
    """Dense -> pruned (Method 2) or compact (Method 1; reports before `compact` was its key: `pruned`) latency, the
    speed-up (with the range of its three ratios when they disagree: `latency_report.noise_range`, the rule the
    table's notes use), and how it was measured."""
    from sparsetrain.deploy.latency_report import noise_range, noise_words, row_spread

    def ms(value: float) -> str:
        return f"{value:.2f}" if value >= 1 else f"{value:.3f}"  # small models run in tens of microseconds

    after = lat["compact"] if "compact" in lat else lat["pruned"]
    noisy = noise_range(lat.get("speedup_p20", lat["speedup"]), lat.get("speedup_median"), lat.get("speedup_paired"),
                        row_spread(lat, "speedup"))  # the quick measurement's `speedup` is its medians' ratio
    speedup = f"{lat['speedup']:.2f}x" + (f", {noise_words(noisy)}" if noisy else "")
    return f"latency      {ms(lat['dense'])} ms -> {ms(after)} ms ({speedup}; {lat.get('measured', 'CPU, batch 1')})"


def _bytes_line(sizes: dict[str, Any]) -> str:
    """Dense bytes -> the compressed model's smallest weights file (architecture.json not counted), its format named
    (reports before `compressed_format` was recorded measured the bitmask file)."""
    return (f"bytes        {sizes['dense']:,} dense -> {sizes['compressed']:,} compressed "
            f"({sizes.get('compressed_format', 'bitmask')} weights file)")


def _comparison_table(report: dict[str, Any]) -> str:
    """l0 vs the baselines at the same sparsity and budget: metric after training, after pruning, fine-tuned."""
    from sparsetrain.baselines import BASELINES

    def cell(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:>9.2f}" if isinstance(row.get(key), int | float) else f"{'-':>9}"

    phases = phase_results(report)
    main = {p: result["metric"] for p, result in phases.items() if p != DENSE}
    rows = [("l0 (this run)", {**main, "sparsity": report["sparsity"],
                               "compression_ratio": report["compression_ratio"]})]
    rows += [(BASELINES[name]["label"], row) for name, row in report["baselines"].items()]
    lines = [f"{'method (same sparsity, same epochs)':<36}{'trained':>9}{'pruned':>9}{'finetuned':>10}"
             f"{'sparsity':>10}{'compr.':>8}"]
    lines += [f"{label:<36}{cell(row, 'sparsify')}{cell(row, 'prune')}{cell(row, 'finetune')}"
              f"{100 * row['sparsity']:>9.2f}%{row['compression_ratio']:>7.1f}x" for label, row in rows]
    if DENSE in phases:
        lines.append(f"{dense_label(report):<36}{phases['dense']['metric']:>27.2f}")
    lines.append(f"sparsity {SPARSITY_SCOPE}; compr. over {COMPRESSION_SCOPE} (dense count / non-zero)")
    return "\n".join(lines)


def dense_label(report: dict[str, Any], method: str = "l2, ") -> str:
    """`dense (l2, same budget)` when the dense baseline trained as many epochs as sparsify and finetune together
    (the recipes' definition of the same budget, e.g. lenet300_mnist's 480 = 450 + 30), else `dense (l2, 3 epochs)`;
    `dense (l2)` for a report from before the epochs were recorded. `method=""` drops the `l2, `."""
    epochs = report.get("epochs")
    if not epochs:
        return f"dense ({method.removesuffix(', ')})" if method else "dense"
    dense, sparse = epochs.get(DENSE), epochs.get(SPARSIFY, 0) + epochs.get(FINETUNE, 0)
    if dense is not None and math.isclose(dense, sparse):
        return f"dense ({method}same budget)"
    return f"dense ({method}{dense:g} epoch{'s' * (dense != 1)})"


def summary_values(report: dict[str, Any]) -> dict[str, float]:
    """Top-level numbers, each phase's metric and the baselines' numbers, flat for the W&B run summary."""
    values = {k: v for k, v in report.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    values.update({f"{phase}/metric": result["metric"] for phase, result in phase_results(report).items()})
    for name, row in report.get("baselines", {}).items():
        values.update({f"baselines/{name}/{k}": v for k, v in row.items() if isinstance(v, int | float)})
    return values
