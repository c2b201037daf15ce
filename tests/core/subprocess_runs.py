"""Helpers to run the CLI in real subprocesses (multi-rank runs, kill-and-resume)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_command(overrides: list[str], nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "sparsetrain", "run", *overrides]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", "-m", "sparsetrain", "run", *overrides]


def clean_env() -> dict[str, str]:
    """The test process's env without torch.distributed variables set by in-process runs."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(overrides: list[str], nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(cli_command(overrides, nproc), cwd=REPO, env=clean_env(), capture_output=True,
                            text=True, timeout=timeout)
    return result
