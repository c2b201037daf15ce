"""sparsetrain: sparsity-inducing training, pruning and fine-tuning on DeepSpeed.

The Python API (README "Python API"): `load_config` -> `run_pipeline` -> `load_compressed`. Each is imported lazily,
so `import sparsetrain` stays light (no torch, DeepSpeed or timm until a function is called).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# the errors the API raises (README "Python API"); a leaf module: no torch, timm or DeepSpeed
from sparsetrain.errors import (
    ConfigError,
    InputError,
    NonFiniteError,
    ResumeError,
    SetupError,
    SparsetrainError,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from sparsetrain.config.schema import RunConfig

__version__ = "0.1.0"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                plan_only: bool = False) -> RunConfig:
    """A run's validated config: a YAML recipe (or the built-in defaults) plus `key=value` overrides, as `sparsetrain
    run CONFIG key=value ...` reads it; the modules of `model.imports` are imported.

    Args:
        path: A YAML recipe (its `base:` chain is read too); None = the built-in defaults (LeNet-300-100 on digits,
            1 epoch per phase, into runs/default).
        overrides: Dotted `key=value` items as on the command line, e.g. `["out_dir=runs/api", "alpha0=1e-5"]`: a
            list or tuple (a single string is refused, not read one character at a time).
        plan_only: Skip the checks that need the data on disk (what `run --dry-run` uses).

    Returns:
        The `RunConfig` (pydantic; `sparsetrain.config.config_to_dict(cfg)` gives plain data).

    Raises:
        InputError (a ValueError): one line naming the field and what was expected (the CLI's exit code 2):
            `ConfigError` (an InputError) for the recipe's and overrides' values, `model.imports: cannot import ...`,
            `model.name: unknown timm model ...` (checked after the imports, as `sparsetrain config` does). See
            `sparsetrain.config.loader.load_config`.
    """
    from sparsetrain.config.loader import load_config as _load

    return _load(path, overrides, plan_only=plan_only)


def run_pipeline(cfg: RunConfig | Mapping[str, Any], phases: list[str] | None = None) -> dict[str, Any]:
    """Run the pipeline of `cfg` in this process (one rank; under torchrun each process calls it), as `sparsetrain
    run` does: writes `cfg.out_dir` (report.json, export/, ...), resumes an unfinished run there.

    Args:
        cfg: From `load_config`, or a mapping of a recipe's settings (`{"out_dir": "runs/x", ...}`, e.g.
            `sparsetrain.config.config_to_dict(cfg)`), validated as `load_config` validates a recipe.
        phases: Run only these phases, in order (`["dense"]`, from `"dense"`, `"sparsify"`, `"prune"`,
            `"finetune"`: a list or tuple, a single string is refused); None = all enabled ones (the CLI's `--phase`).

    Returns:
        The report, as report.json holds it: `report["phases"][phase]["metric"]`, `sparsity`, `params`, `bytes`,
        `compression_ratio`, ... (format in `sparsetrain.report`).

    Raises:
        InputError (a ValueError): bad data, settings (ConfigError, as from `load_config`, for a mapping's values), a
            `cfg` that is neither a RunConfig nor a mapping, `phases` not a list of phase names, or a run directory
            holding another run (exit code 2 on the CLI), also a plain ValueError a check or library raises on the run's
            values (same message, chained as `__cause__`); ResumeError: an unreadable checkpoint; NonFiniteError:
            training hit NaN/inf (the last good checkpoint is kept); SetupError: a library not laid out as expected (all
            in `sparsetrain.errors`).
            Unlike the CLI, no signal handlers are installed: Ctrl-C raises KeyboardInterrupt (a re-run resumes
            from the last checkpoint).

    Process-wide state (README "Python API"): a process group the call creates is destroyed at its end (with torch's
    `[rank0]:` traceback hook and the RANK/WORLD_SIZE/... it set); one that existed before is used and left alone.
    The run's log lines go to stderr through the `sparsetrain` logger's own handler, removed at the end; the root
    logger is not touched.
    """
    from sparsetrain.engine.distributed import process_group_scope
    from sparsetrain.pipeline import run_pipeline as _run
    from sparsetrain.progress import package_logging

    with package_logging(), process_group_scope():
        return _run(cfg, phases)


def load_compressed(path, format: str = "auto", **kwargs):
    """Load an exported model from a run directory, its `export/` folder or a file in it, ready for `model(x)`.

    Reads every format an export folder holds (safetensors, bitmask, torch_export `.pt2`, onnx); the returned
    module's `export_format` says which one was loaded. A run's `model.imports` (architecture.json meta) are imported
    first for the formats rebuilt from a Python class. See `sparsetrain.deploy.loading.load_compressed`.
    """
    from sparsetrain.deploy.loading import load_compressed as _load

    return _load(path, format, **kwargs)


__all__ = ["ConfigError", "InputError", "NonFiniteError", "ResumeError", "SetupError", "SparsetrainError",
           "__version__", "load_compressed", "load_config", "run_pipeline"]
