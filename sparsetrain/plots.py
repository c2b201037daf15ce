"""Plots written next to the report: per-layer sparsity and weight-magnitude histograms.

Figures are built with matplotlib's object API (`matplotlib.figure.Figure`, saved through the Agg canvas that
`savefig` picks for .png), never pyplot: no GUI backend is chosen or imported (cluster nodes have no display, and a
user's own pyplot backend in the same process is left alone), no global figure list to close, and a figure is freed
as soon as it is dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure

if TYPE_CHECKING:
    import torch

DPI = 120  # 7x4 in -> 840x480 px: tick labels at 7 pt stay readable


def use_bundled_fonts() -> None:
    """Make matplotlib's own fonts findable when its font cache lacks them.

    Log-scale tick labels are mathtext, whose DejaVu fontset falls back to matplotlib's bundled STIX fonts. A font
    cache (`~/.cache/matplotlib/fontlist-v*.json`) written by another matplotlib of the same version (e.g. Debian's
    python3-matplotlib, which ships no fonts of its own) lists only system fonts: every figure then logs ~20
    `findfont: Font family ['STIXGeneral'] not found` lines. Registering the bundled files (once per process, only
    when STIX is missing) fixes the cause; the cache on disk is left alone.
    """
    from matplotlib import font_manager

    manager = font_manager.fontManager
    if any(font.name == "STIXGeneral" for font in manager.ttflist):
        return
    bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    for file in sorted(bundled.glob("*.ttf")):
        manager.addfont(str(file))


use_bundled_fonts()


def new_axes(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure of `width` x `height` inches with one axes, outside pyplot (see the module docstring)."""
    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def save(fig: Figure, path: Path) -> None:
    """Lay `fig` out tightly (labels inside the canvas) and write it as a PNG of `DPI` dots per inch."""
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


def plot_layer_sparsity(layers: list[dict], path: Path) -> None:
    names = [layer["name"] for layer in layers]
    sparsity = [100.0 * (1 - layer["nonzero"] / max(layer["total"], 1)) for layer in layers]
    fig, ax = new_axes(max(6, 0.35 * len(names)), 4)
    ax.bar(range(len(names)), sparsity, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel("sparsity (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Per-layer sparsity of the final model (prunable conv/linear weights only)")
    save(fig, path)


def plot_magnitude_histograms(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], path: Path,
                              labels: tuple[str, str] = ("before sparsity training", "after sparsity training")
                              ) -> None:
    import torch  # here, not at the top: the sweep's plot (launch/sweep.py) runs without torch

    fig, ax = new_axes(7, 4)
    for weights, label in zip((before, after), labels, strict=True):
        mags = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights.values()])
        # stepfilled: the outline of the 120 touching bars as one polygon, not 120 rectangles to transform (log y)
        ax.hist(torch.log10(mags.clamp_min(1e-12)).numpy(), bins=120, alpha=0.55, label=label, histtype="stepfilled")
    ax.set_xlabel("log10 |w|  (exact zeros shown at -12)")
    ax.set_ylabel("count")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("Weight magnitudes of prunable layers")
    save(fig, path)


def plot_kept_filters(kept: list[dict], path: Path) -> None:
    """Bars of total vs kept channels per prunable group (structural pruning)."""
    names = [row["group"] for row in kept]
    fig, ax = new_axes(max(6, 0.3 * len(names)), 4)
    positions = range(len(names))
    ax.bar(positions, [row["total"] for row in kept], color="lightgray", label="before")
    ax.bar(positions, [row["kept"] for row in kept], color="tab:green", label="kept")
    ax.set_xticks(positions, names, rotation=90, fontsize=6)
    ax.set_ylabel("filters / channels")
    ax.legend()
    ax.set_title("Kept filters per channel group")
    save(fig, path)


def plot_accuracy_vs_sparsity(report: dict, path: Path, dense_label: str = "dense") -> None:
    """Metric right after global magnitude pruning (no fine-tuning) vs compression, for the l0- and the l2-trained
    model (`report["prune_curve"]`), with the fine-tuned results of l0 and the baselines and the dense line, labelled
    `dense_label` (`report.dense_label`: `dense (same budget)` only when it was)."""
    from sparsetrain.baselines import BASELINES

    curve = report["prune_curve"]
    ratio = [1.0 / (1.0 - s) for s in curve["sparsity"]]
    fig, ax = new_axes(7, 4.5)
    for label, color in (("l0", "tab:blue"), ("l2", "tab:orange")):
        if label in curve:
            ax.plot(ratio, curve[label], "o-", color=color, ms=3, label=f"{label}-trained, pruned (no fine-tune)")
    phases = report.get("phases", {})
    finals = [("l0 fine-tuned", phases.get("finetune", {}).get("metric"), report.get("sparsity"), "tab:blue")]
    finals += [(f"{BASELINES[n]['label']}, fine-tuned", row.get("finetune"), row.get("sparsity"), color)
               for (n, row), color in zip(report.get("baselines", {}).items(), ("tab:orange", "tab:green"),
                                          strict=False)]
    for label, metric, sparsity, color in finals:
        if metric is not None and sparsity is not None:
            ax.plot([1.0 / (1.0 - sparsity)], [metric], "*", color=color, ms=12, mec="black", label=label)
    if "dense" in phases:
        ax.axhline(phases["dense"]["metric"], color="gray", ls="--", lw=1, label=dense_label)
    ax.set_xscale("log")
    ax.set_xlabel("compression of prunable weights (1 / density), log scale")
    ax.set_ylabel("test metric")
    ax.set_title("Accuracy vs sparsity: l0 vs l2 + magnitude pruning")
    ax.legend(fontsize=8, loc="lower left")
    save(fig, path)
