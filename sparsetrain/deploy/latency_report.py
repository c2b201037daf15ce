"""The latency table as text and as a plot (dense vs compressed, and compact when timed, per runtime and batch)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["NOISE_MARGIN", "bar_labels", "bench_stem", "format_latency", "noise_range", "noise_words", "plot_latency",
           "row_spread", "speedup_key", "timed_models", "unpruned", "write_latency"]

NOISE_MARGIN = 1.25  # the three ratios of one speed-up spanning more than this factor: called within noise


def noise_range(p20: float, median: float | None, paired: float | None,
                spread: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """(lowest, highest) of a speed-up's ratios when the speed-up is within measurement noise, else None.

    The ratios: dense / model of the p20s, of the medians, the median of the per-round ratios, and `spread`, the
    20th and 80th percentiles of the per-round ratios (`speedup*_paired_p20` / `_p80`: the spread the repeats
    measured), each as printed (2 decimals). Within noise when 1.00x lies inside their range (one under 1.00x,
    another at or above it; or the per-round p20-p80 holds 1.00x: a 1.01x or 0.99x of a model that runs as fast as
    dense), or the highest is more than `NOISE_MARGIN` times the lowest (e.g. 5 rounds on a loaded machine: p20
    1.88x, median 0.92x, paired 0.91x). None when the median or paired ratio is not known (tables and reports
    written before they were kept; without `spread`, from before it was kept, the rule uses the three ratios).
    The one rule for every speed-up a table note or the summary's `latency` line states."""
    if median is None or paired is None:
        return None
    shown = [float(f"{x:.2f}") for x in (p20, median, paired, *(spread or ()))]
    low, high = min(shown), max(shown)
    around_one = low < 1.0 <= high or (spread is not None and min(shown[3:]) <= 1.0 <= max(shown[3:]))
    return (low, high) if around_one or high > NOISE_MARGIN * max(low, 0.01) else None


def noise_words(ratios: tuple[float, float]) -> str:
    """`within noise: 0.91x-1.88x over the p20, median and paired ratios` (`noise_range`'s words)."""
    return f"within noise: {ratios[0]:.2f}x-{ratios[1]:.2f}x over the p20, median and paired ratios"


def row_spread(row: dict[str, Any], key: str) -> tuple[float, float] | None:
    """The p20 and p80 of a row's per-round ratios of speed-up `key` (`speedup`, `speedup_compact`), or None for a
    table written before they were kept."""
    low, high = row.get(f"{key}_paired_p20"), row.get(f"{key}_paired_p80")
    return None if low is None or high is None else (low, high)


def unpruned(storage: dict[str, Any]) -> bool:
    """Whether a table's compressed model has no weight pruned: every parameter non-zero (`storage`'s
    `nonzero_params` equal to `params.compressed`) and as many as dense has, e.g. the dense phase's export
    (`sparsetrain export RUN --phase dense`). Dense and compressed are then the same graph with the same weights'
    count, and a table says so instead of calling it unstructured-sparse. False for a model with filters removed
    (every remaining weight non-zero, but fewer), `RUN/export/compact` timed alone and tables without the counts."""
    params = storage.get("params", {})
    total = params.get("compressed")
    return total is not None and storage.get("nonzero_params") == total == params.get("dense", total)


def _smaller(ratio: float) -> str:
    """`9.90x smaller`, or `same size` when it prints as 1.00x, or `1.10x larger`."""
    shown = f"{ratio:.2f}"
    return "same size" if shown == "1.00" else f"{shown}x smaller" if ratio > 1 else f"{1 / ratio:.2f}x larger"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.2f}"


def _ms(stats: dict[str, float]) -> str:
    return f"{stats['median']:9.3f} [{stats['p20']:.3f}-{stats['p80']:.3f}]".ljust(24)


def timed_models(table: dict[str, Any]) -> list[str]:
    """The models a table timed, in round order: its `timed` (tables written before it: dense and compressed)."""
    return list(table.get("timed") or ("dense", "compressed"))


def speedup_key(model: str) -> str:
    """A row's key of the speed-up dense / `model` (p20s): `speedup` for the compressed model, `speedup_<model>`
    otherwise (`speedup_compact`); `_median` and `_paired` are appended for the other two ratios."""
    return "speedup" if model == "compressed" else f"speedup_{model}"


def _storage_line(s: dict[str, Any]) -> str:
    """Dense bytes and parameters vs each model's weights file: the compressed one (absent from a table of
    `RUN/export/compact` alone, which names the compact model's only), then the compact one when timed."""
    parts = []
    if "compressed_bytes" in s:
        parts.append(f"{s['compressed_bytes']:,} B weights file {s['compressed_file']} ({_smaller(s['ratio'])}); "
                     f"params {s['params']['dense']:,} -> {s['params']['compressed']:,} ({s['nonzero_params']:,} "
                     "non-zero)")
    if "compact_bytes" in s:
        parts.append(f"compact: {s['compact_bytes']:,} B weights file {s['compact_file']} ({s['compact_ratio']:.2f}x "
                     f"smaller), params {s['params']['dense']:,} -> {s['params']['compact']:,} "
                     f"({s['compact_nonzero_params']:,} non-zero)")
    return f"storage: {s['dense_bytes']:,} B dense -> " + "; ".join(parts)


def _row(r: dict[str, Any], models: list[str]) -> str:
    mem = r["peak_memory_bytes"]
    cells = "".join(f"  {_ms(r[f'{m}_ms'])}  {r[speedup_key(m)]:>7.2f}x" for m in models[1:])
    peaks = " -> ".join(_mb(mem.get(m)) for m in models)
    where = f"{r['runtime']} {r['device']}"
    return f"{where:<18}{r['batch']:>6}  {_ms(r['dense_ms'])}{cells}  {peaks:<14}  {r['note']}"


def format_latency(table: dict[str, Any]) -> str:
    """A fixed-width table: one row per runtime and batch (dense, then each model timed with its speed-up over
    dense), then the slowest layers at batch 1."""
    models = timed_models(table)
    phase = f", {table['phase']} phase" if table.get("phase") else ""
    kind = "no weight pruned" if unpruned(table["storage"]) else table["kind"]
    header = f"{'runtime':<18}{'batch':>6}  {'dense ms':>24}" + "".join(
        f"  {f'{m} ms':>24}  {'speed-up':>8}" for m in models[1:])
    peaks = "peak MB " + "->".join({"dense": "d", "compressed": "c"}.get(m, m) for m in models)
    lines = [f"latency of {table['model']} ({kind}{phase}), input {tuple(table['input_shape'])}, "
             f"{table['threads']} thread(s), {table['repeats']} interleaved rounds after {table['warmup']} warm-up "
             f"({', '.join(models)} in each round); ms as median [p20-p80]; speed-up = dense p20 / model p20 (the "
             "least disturbed by other load); peak MB = weights + workspace + activations in a warmed-up process "
             "(runtime set-up not counted)"]
    if table.get("timed"):
        lines.append("models: " + "; ".join(f"{name} = {what}" for name, what in table["timed"].items()))
    lines += [_storage_line(table["storage"]), f"{header}  {peaks:<14}  note"]
    lines += [_row(r, models) for r in table["rows"]]
    for key, rows in table["slowest_layers"].items():
        if "/batch1/" in key:
            shown = ", ".join(f"{row['layer']} ({row['op']}) {row['ms']:.3f}" for row in rows[:5])
            lines.append(f"slowest {key}: {shown}")
    return "\n".join(lines)


def plot_latency(table: dict[str, Any], path: Path) -> None:
    """Grouped bars: the median latency (p20-p80 whiskers) of each model timed (dense, compressed, compact) per
    runtime and batch, each group labelled with its speed-ups (`bar_labels`)."""
    import numpy as np

    from sparsetrain.plots import new_axes, save

    rows, models = table["rows"], timed_models(table)
    labels = bar_labels(table)
    x, width = np.arange(len(rows)), 0.8 / len(models)
    fig, ax = new_axes(max(6, (1.2 + 0.4 * len(models)) * len(rows)), 4)
    colors = {"dense": "tab:gray", "compressed": "tab:blue", "compact": "tab:green"}
    for i, which in enumerate(models):
        stats = [r[f"{which}_ms"] for r in rows]
        med = np.array([s["median"] for s in stats])
        err = np.array([[s["median"] - s["p20"] for s in stats], [s["p80"] - s["median"] for s in stats]])
        ax.bar(x + (i - (len(models) - 1) / 2) * width, med, width, yerr=err, capsize=3, color=colors[which],
               label=which)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency per forward pass (ms, log)")
    ax.set_title(f"{table['model']} ({table['kind']}): {' vs '.join(models)}, {table['threads']} thread(s)")
    ax.legend()
    save(fig, path)


def bar_labels(table: dict[str, Any]) -> list[str]:
    """latency.png's group labels: `torch cpu\nbatch 1\n1.04x (noise)`, each speed-up marked `(noise)` when the
    table's notes call it within noise (`noise_range`, the one rule), and named unless it is the compressed model's."""
    models = timed_models(table)

    def ratio(row: dict[str, Any], model: str) -> str:
        key = speedup_key(model)
        noisy = noise_range(row[key], row.get(f"{key}_median"), row.get(f"{key}_paired"), row_spread(row, key))
        return f"{row[key]:.2f}x" + (" (noise)" if noisy else "") + (f" {model}" if model != "compressed" else "")

    return [f"{r['runtime']} {r['device']}\nbatch {r['batch']}\n" + " / ".join(ratio(r, m) for m in models[1:])
            for r in table["rows"]]


def write_latency(table: dict[str, Any], out_dir: Path, stem: str = "latency", plot: bool = True) -> Path:
    """`<stem>.json` and (`plot`: a run's `report.plots`) `<stem>.png` in `out_dir` (a run's own: latency.json,
    latency.png); returns the JSON's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(table, indent=1))
    if plot:
        plot_latency(table, out_dir / f"{stem}.png")
    return path


def bench_stem(target: Path) -> str:
    """`latency-<name>` for `sparsetrain bench latency TARGET`'s own files: the run's folder name (the export
    folder's run for `RUN/export`; `latency-<run>-compact` for `RUN/export/compact`), so tables of several runs sit
    side by side and never replace a run's own latency.json."""
    folder = target.resolve()
    if folder.is_file():
        folder = folder.parent
    suffix = ""
    if folder.name == "compact" and folder.parent.name == "export":  # RUN/export/compact: the run's compact model
        folder, suffix = folder.parent, "-compact"
    if folder.name == "export":
        folder = folder.parent
    return f"latency-{re.sub(r'[^A-Za-z0-9_.-]+', '-', folder.name).strip('-') or 'model'}{suffix}"
