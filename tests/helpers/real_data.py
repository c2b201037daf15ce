"""Real Fashion-MNIST for tests: installed by `make data` (Debian's dataset-fashion-mnist, root).

Tests that need it skip with the reason where it cannot be installed (not root), and fail instead of skipping on
CI (`CI=true`), where `.ci/run` installs it — the same contract as the local Slurm tests.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sparsetrain.data.idx import FASHION_MNIST_DIR, IDX_FILES

REPO = Path(__file__).resolve().parents[2]
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _installed() -> bool:
    return all((FASHION_MNIST_DIR / f"{split}-{content}-ubyte.gz").is_file() for split, content in IDX_FILES.values())


def _unavailable(reason: str) -> None:
    if ON_CI:
        pytest.fail(f"real Fashion-MNIST is required on CI: {reason}", pytrace=False)
    pytest.skip(f"real Fashion-MNIST not available: {reason}")


def fashion_mnist_dir() -> Path:
    """The installed IDX folder, installing it first when we are root."""
    if _installed():
        return FASHION_MNIST_DIR
    if os.geteuid() != 0:
        _unavailable("installing it needs root (run `sudo make data`)")
    result = subprocess.run(["make", "-C", str(REPO), "data"], capture_output=True, text=True, timeout=900,
                            check=False)
    if result.returncode != 0 or not _installed():
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        _unavailable(f"`make data` failed: {last}")
    return FASHION_MNIST_DIR
