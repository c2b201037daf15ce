"""`model.imports`: the user's Python modules, imported before `model.name` is resolved.

A user's own architecture reaches sparsetrain the way sparsetrain's LeNets do: a module whose factory function is
decorated with timm's `@register_model` (`examples/my_net.py`). Importing the module registers the name with timm,
after which every place that builds a model by name (`run` on every rank, `--dry-run`, `config`, `eval`, `export`,
`bench latency`, `load_compressed`) finds it.

Each entry is a dotted module name (importable: installed, or on PYTHONPATH) or a path to a `.py` file. A relative
file path is relative to the current directory, in a YAML recipe and on the command line alike (the rule of every
path setting, `sparsetrain.paths`). Paths are stored absolute, so the resolved `config.yaml` of a run, a
resumed run and a Slurm job find the same file; exports record the entries in `architecture.json` meta
`model_imports`, which `load_compressed` imports in a fresh process.

A file is imported as the module named by its stem (`my_net.py` -> `my_net`), once per process.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sparsetrain.errors import InputError
from sparsetrain.paths import absolute_path

FIELD = "model.imports"
META_KEY = "model_imports"  # architecture.json meta key of the entries an export needs to rebuild its model
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_file_entry(entry: str) -> bool:
    """Whether an entry names a `.py` file (else a dotted module name)."""
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def check_entry(entry: str) -> str:
    """The entry if it is a dotted module name or a `.py` path.

    Raises:
        ValueError: one line saying what an entry may be.
    """
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"expected a dotted module name or a path to a .py file, got {entry!r}")
    if is_file_entry(entry):
        if not entry.endswith(".py"):
            raise ValueError(f"{entry!r}: a path must name a .py file")
    elif not _DOTTED.fullmatch(entry):
        raise ValueError(f"{entry!r}: expected a dotted module name (e.g. mypkg.models) or a path to a .py file")
    return entry


def absolute_entry(entry: str) -> str:
    """A `.py` entry made absolute against the current directory (`paths.absolute_path`); module names
    unchanged."""
    return absolute_path(entry) if is_file_entry(entry) else entry


def import_models(entries: Iterable[str]) -> None:
    """Import every entry (idempotent: a module already imported is not run again).

    Raises:
        InputError: `model.imports: cannot import ENTRY (ErrorType: first line)`, for anything the module raises
            while it is imported (ImportError, SyntaxError, ...) or a missing file.
    """
    for entry in entries:
        try:
            _import(entry)
        except InputError:
            raise
        except BaseException as err:  # noqa: BLE001  (the user's module may raise anything at import time)
            if isinstance(err, KeyboardInterrupt | SystemExit):
                raise
            lines = str(err).strip().splitlines()
            first = lines[0][:200] if lines else ""
            raise InputError(f"{FIELD}: cannot import {entry!r} ({type(err).__name__}"
                             f"{': ' + first if first else ''})") from None


def _import(entry: str) -> None:
    if not is_file_entry(entry):
        importlib.import_module(entry)
        return
    path = Path(entry).expanduser().resolve()
    if not path.is_file():
        raise InputError(f"{FIELD}: cannot import {entry!r} (file not found: {path})")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == path:
            return
        raise InputError(f"{FIELD}: cannot import {entry!r} (a module named {name!r} is already imported from "
                         f"{getattr(loaded, '__file__', None) or 'a built-in'}; rename the file)")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"{FIELD}: cannot import {entry!r} (not a Python module)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it: dataclasses, pickling and relative lookups need the entry
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def arch_imports(arch: Mapping[str, Any]) -> list[str]:
    """The `model.imports` an export recorded (architecture.json meta `model_imports`); [] when none."""
    return list(arch.get("meta", {}).get(META_KEY, []) or [])


def import_for_arch(arch: Mapping[str, Any]) -> None:
    """Import what an export's model needs before `timm.create_model(arch["model_name"], ...)`.

    Raises:
        InputError: as `import_models`.
    """
    import_models(arch_imports(arch))
