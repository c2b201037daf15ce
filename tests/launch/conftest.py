"""Fixtures for launch tests: the local Slurm cluster and tiny pipeline settings.

Slurm tests need the cluster of `launch/local_slurm.sh` (root); the multi-node test needs it with two nodes
(`start --nodes 2`, as `.ci/run` starts it). They skip with the reason when it cannot run here (not root), and
fail instead of skipping on CI (`CI=true`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str) -> None:
    if ON_CI:
        pytest.fail(f"local Slurm is required on CI: {reason}", pytrace=False)
    pytest.skip(f"local Slurm not available: {reason}")


def _slurm_responds() -> bool:
    if shutil.which("sinfo") is None:
        return False
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30, check=False)
    return result.returncode == 0 and any(s in result.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """Start (or check) the local Slurm cluster once per session."""
    if _slurm_responds():
        return
    if os.geteuid() != 0:
        _unavailable("starting it needs root (run `sudo bash launch/local_slurm.sh start` first)")
    result = subprocess.run(["bash", str(REPO / "launch" / "local_slurm.sh"), "start"], capture_output=True,
                            text=True, timeout=900, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        _unavailable(f"launch/local_slurm.sh start failed: {last}")


def _ready_nodes() -> list[str]:
    result = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=30,
                            check=False)
    states = (line.split() for line in result.stdout.splitlines() if line.strip())
    usable = ("idle", "mixed", "allocated", "completing")
    return sorted({name for name, state in states if state.rstrip("*") in usable})


@pytest.fixture(scope="session")
def two_node_slurm(slurm_cluster: None) -> list[str]:
    """Names of the local cluster's nodes when it has at least two (`local_slurm.sh start --nodes 2`, as on CI).

    Never reconfigures a running cluster (other users' jobs may be on it): skips locally, fails on CI.
    """
    nodes = _ready_nodes()
    if len(nodes) < 2:
        _unavailable(f"this test needs 2 nodes, the cluster has {nodes or 'none ready'} "
                     "(`sudo bash launch/local_slurm.sh start --nodes 2`)")
    return nodes
