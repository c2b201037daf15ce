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
