"""Plots with log axes log no `findfont` lines when matplotlib's font cache was written by a matplotlib without
its bundled fonts (e.g. Debian's python3-matplotlib sharing ~/.cache/matplotlib)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import torch
from pathlib import Path
from sparsetrain.plots import plot_magnitude_histograms
w = {"a": torch.logspace(-6, 0, 200)}
plot_magnitude_histograms(w, w, Path("hist.png"))
"""


def test_log_axis_plot_is_quiet_with_a_cache_lacking_stix(tmp_path: Path) -> None:
    from matplotlib import font_manager

    manager = font_manager.FontManager()  # a cache as a matplotlib without bundled STIX fonts writes it
    manager.ttflist = [font for font in manager.ttflist if "STIX" not in font.name]
    font_manager.json_dump(manager, tmp_path / f"fontlist-v{font_manager.FontManager.__version__}.json")
    env = {"MPLCONFIGDIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "hist.png").stat().st_size > 0
    assert "findfont" not in done.stderr, done.stderr[-2000:]


NO_PYPLOT = """
import sys
from pathlib import Path
from sparsetrain.plots import plot_layer_sparsity
plot_layer_sparsity([{"name": "fc1", "nonzero": 1, "total": 4}], Path("layers.png"))
print(sorted(name for name in ("matplotlib.pyplot", "torch") if name in sys.modules))
"""


def test_plots_are_drawn_without_pyplot_or_torch(tmp_path: Path) -> None:
    """The report's plots use matplotlib's object API: pyplot (its import, the backend switch, a global figure list)
    is never loaded, so a user's own pyplot backend is left alone; the sweep's plot, sharing the helpers, loads no
    torch."""
    done = subprocess.run([sys.executable, "-c", NO_PYPLOT], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "layers.png").stat().st_size > 1000
    assert done.stdout.strip() == "[]", done.stdout
