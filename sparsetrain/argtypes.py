"""argparse helpers shared by the commands: `CommandParser` (usage errors in one line) and the `type=` converters
of their numeric flags (`sparsetrain bench NAME`, the benchmarks).

A bad value is then argparse's own usage error, one line naming the flag and what it expects, exit code 2:
`sparsetrain bench latency: error: argument --repeats: expected an integer >= 3, got '0'` (a 0 used to reach the
timing code and end in a traceback).
"""

from __future__ import annotations

import argparse
import errno
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

__all__ = ["CommandParser", "int_at_least", "nonnegative_float", "out_folder", "positive_float", "positive_int"]


class CommandParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose usage errors are one line, as every other error of sparsetrain's: argparse
    prints its usage (one to three lines) before `PROG: error: MESSAGE`; here the error line alone says where the
    usage is: `sparsetrain eval: error: the following argument is required: target; `sparsetrain eval --help` shows
    the usage`. `--help` prints the usage and the options as argparse does.

    Raises (from `parse_args` and friends):
        SystemExit: code 2 after the error line on stderr.
    """

    def error(self, message: str) -> NoReturn:
        hint = "" if "--help" in message else f"; `{self.prog} --help` shows the usage"
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """A converter of an integer flag that must be `minimum` or more.

    Raises (from the converter):
        argparse.ArgumentTypeError: `expected an integer >= MINIMUM, got 'TEXT'` (argparse prefixes the flag).
    """

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    convert.__name__ = f"integer >= {minimum}"  # what argparse would name the type
    return convert


positive_int = int_at_least(1)
"""An integer flag that must be 1 or more (counts: threads, rounds, steps, calls)."""


def _finite(text: str) -> float:
    """The number `text` says, nan when it says none."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def nonnegative_float(text: str) -> float:
    """A finite number >= 0 (e.g. `--epochs`, where 0 means "the recipe's").

    Raises:
        argparse.ArgumentTypeError: `expected a number >= 0, got 'TEXT'` (also for nan and inf).
    """
    value = _finite(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (e.g. `--timeout` seconds: nan waited forever, a negative one not at all).

    Raises:
        argparse.ArgumentTypeError: `expected a number > 0, got 'TEXT'` (also for nan and inf).
    """
    value = _finite(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def out_folder(text: str) -> Path:
    """A folder flag the command writes into (`--out`), checked before any work: an existing file there, a file
    where a parent folder should be, or a folder it cannot write into (read-only mount, no permission) is argparse's
    one usage line, not a `FileExistsError` / `OSError` traceback after the whole benchmark ran (trial 17). The
    folder is then created and a file written into it and removed (`_try_writing`): permission bits do not stop
    root, and /proc or /sys refuse new entries whatever they say (trial 20); folders created only for the check are
    removed again.

    Raises (from the converter):
        argparse.ArgumentTypeError: `FOLDER is a file, not a folder`, `cannot write into FOLDER (REASON)` or
            `cannot create FOLDER (REASON)`.
    """
    folder = Path(text)
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())  # "/" always exists
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, not a folder; give a folder to write into")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        reason = os.strerror(errno.EROFS if read_only else errno.EACCES)
        raise argparse.ArgumentTypeError(f"cannot write into {existing} ({reason}); give a writable folder")
    _try_writing(folder)
    return folder


def _try_writing(folder: Path) -> None:
    """Create `folder` (with its missing parents) and a file in it, then remove the file and the folders this
    created.

    Raises:
        argparse.ArgumentTypeError: `cannot create FOLDER (REASON)` or `cannot write into FOLDER (REASON)`.
    """
    import tempfile

    created = [p for p in (folder.absolute(), *folder.absolute().parents) if not p.exists()]  # deepest first
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise argparse.ArgumentTypeError(f"cannot create {folder} ({err.strerror or err}); give a writable "
                                             "folder") from None
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
                pass
        except OSError as err:
            raise argparse.ArgumentTypeError(f"cannot write into {folder} ({err.strerror or err}); give a writable "
                                             "folder") from None
    finally:
        for path in created:
            try:
                path.rmdir()
            except OSError:
                break


out_folder.__name__ = "folder"  # what argparse would name the type
