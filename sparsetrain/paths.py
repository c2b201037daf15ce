"""The one rule for every path setting: a relative path is relative to the current directory, in a YAML recipe and
on the command line alike, and the validated config stores it absolute (so `config.yaml`, a resume, every rank and
a Slurm job started from another directory find the same file).

The path settings (`PATH_FIELDS`): `out_dir`, `model.imports` (its `.py` entries), `model.checkpoint`,
`model.pretrained_file`, `data.path` and `launch.log_folder`. A resumed run compares them resolved
(`comparable`), so a run whose `config.yaml` holds a relative path (written before paths were stored absolute)
continues from the directory it was started in.
"""

from __future__ import annotations

import os
from typing import Any

PATH_FIELDS = ("out_dir", "model.imports", "model.checkpoint", "model.pretrained_file", "data.path",
               "launch.log_folder")


def absolute_path(path: str) -> str:
    """`path` with `~` expanded, made absolute against the current directory and normalised (`a/../b` -> `b`;
    symbolic links are kept as written). An empty string stays empty (validation reports it)."""
    return os.path.abspath(os.path.expanduser(path)) if path else path


def comparable(key: str, value: Any) -> Any:
    """A stored or new setting as a resume compares it: the string of a path setting (dotted `key` in
    `PATH_FIELDS`) made absolute, anything else unchanged."""
    return absolute_path(value) if key in PATH_FIELDS and isinstance(value, str) else value
