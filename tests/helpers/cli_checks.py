"""Shared checks of the CLI's refusals: the one `error:` line a command printed, and a real read-only folder."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    """The one `error:` line printed (log lines may precede it), with no traceback and nothing measured."""
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err and "metric" not in out, (out, err)
    return errors[0]


@contextmanager
def read_only_mount(source: Path, mounted: Path) -> Iterator[Path]:
    """`source` bind-mounted read-only at `mounted` (an empty folder it creates) while the block runs; chmod does not
    stop root, a read-only mount does. Skips the test, saying why, when not root or when mounting is refused."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only bind mount needs root")
    mounted.mkdir()
    bind = subprocess.run(["mount", "--bind", str(source), str(mounted)], capture_output=True, text=True)
    if bind.returncode != 0:
        pytest.skip(f"mount --bind is not allowed here: {bind.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mounted)], check=True, capture_output=True)
        yield mounted
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
