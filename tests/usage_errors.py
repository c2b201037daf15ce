"""What tests check of a command-line usage error: one line (sparsetrain's `CommandParser`), hint cut off."""

from __future__ import annotations

import re

HINT = re.compile(r"; `[^`]+ --help` shows the usage$")


def one_line(err: str) -> str:
    """The message of a usage error printed to stderr, without its `; `PROG --help` shows the usage` hint.

    Raises:
        AssertionError: stderr holds more (or less) than one line, e.g. argparse's usage before the error.
    """
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line, got {len(lines)}: {err!r}"
    return HINT.sub("", lines[0])
