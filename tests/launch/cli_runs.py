"""`sparsetrain launch` run in the test's own process, its output captured (shared by the launch test files)."""

from __future__ import annotations

import contextlib
import io

from launch.cli import launch_main


def launch_in_process(argv: list[str]) -> tuple[int, str, str]:
    """`sparsetrain launch ARGV` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = launch_main(argv)
    return code, out.getvalue(), err.getvalue()
