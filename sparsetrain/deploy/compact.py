"""The `compact` export entry: a Method 1 model with its dead units physically removed (`export/compact/`).

Method 1 leaves exact zeros in dense tensors; at high sparsity whole units are dead (no non-zero input weight, or
nothing reads them). `structural.dead.remove_dead_units` removes them exactly (constants folded into biases), which
gives a smaller dense model that any runtime runs faster. It is written in the structural format
(`architecture.json` + `model.safetensors`, as Method 2's exports) to `export/compact/`, verified against the
masked model on the example batch, and described in the manifest's "compact" entry. Loading:
`sparsetrain.load_compressed(RUN_DIR, "compact")` (or `load_compressed(RUN_DIR/export/compact)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetrain.progress import log
from sparsetrain.structural.serialize import ARCH_FILE, WEIGHTS_FILE, load_pruned_model, save_pruned_model

__all__ = ["COMPACT_DIR", "remove_compact", "write_compact"]

COMPACT_DIR = "compact"


def _params(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters)."""
    return (sum(p.numel() for p in model.parameters()), sum(int((p != 0).sum()) for p in model.parameters()))


def remove_compact(folder: Path) -> None:
    """Delete the files an earlier export wrote to `folder/compact/` (and the folder, when that empties it)."""
    for name in (ARCH_FILE, WEIGHTS_FILE):
        (folder / COMPACT_DIR / name).unlink(missing_ok=True)
    if (folder / COMPACT_DIR).is_dir() and not any((folder / COMPACT_DIR).iterdir()):
        (folder / COMPACT_DIR).rmdir()


def write_compact(model: nn.Module, folder: str | Path, *, meta: dict[str, Any], example: torch.Tensor,
                  tolerance: float) -> dict[str, Any] | None:
    """Write `model` without its dead units to `folder/compact/` and verify it against `model` on `example`.

    Args:
        model: The masked (unstructured-sparse) float32 CPU model in eval mode; not modified.
        folder: The export folder.
        meta: As `write_export`'s (timm name/kwargs + JSON metadata), stored in `compact/architecture.json`.
        example: An input batch [N >= 2, ...] of the data's shape: traces the groups, measures the folded
            constants and verifies the written model (loaded back from its files).
        tolerance: Largest max abs difference from `model` that passes.

    Returns:
        The manifest entry (files relative to `folder`, bytes, params and non-zero params of the compact model and
        of `model`, units removed per channel group, max_abs_diff, ok), or None when no unit is dead (nothing is
        written).

    Raises:
        StructuralPruningError: The model cannot be traced into channel groups.
    """
    from sparsetrain.structural.dead import remove_dead_units

    folder = Path(folder)
    result = remove_dead_units(model, example)
    if not result.removed:
        log.info("[export] compact: no dead units, not written")
        return None
    save_pruned_model(result.model, folder / COMPACT_DIR, meta=meta)
    loaded = load_pruned_model(folder / COMPACT_DIR)
    with torch.no_grad():
        diff = float((loaded(example) - model(example)).abs().max())
    files = [f"{COMPACT_DIR}/{ARCH_FILE}", f"{COMPACT_DIR}/{WEIGHTS_FILE}"]
    (params, nonzero), (dense, dense_nonzero) = _params(loaded), _params(model)
    entry = {"files": files, "bytes": sum((folder / f).stat().st_size for f in files),
             "weights_bytes": (folder / files[-1]).stat().st_size, "params": params,
             "nonzero_params": nonzero, "masked_params": dense, "masked_nonzero_params": dense_nonzero,
             "units_removed": result.removed, "units_kept_unfoldable": result.kept_unfoldable,
             "max_abs_diff": diff, "tolerance": tolerance, "ok": diff <= tolerance, "verified_on": list(example.shape)}
    _log(entry)
    return entry


def _log(entry: dict[str, Any]) -> None:
    removed = ", ".join(f"{gid} -{n}" for gid, n in entry["units_removed"].items())
    log.info(f"[export] compact: {' + '.join(entry['files'])}; weights file {entry['files'][-1]} "
             f"{entry['weights_bytes']:,} B; dead units removed ({removed}); "
             f"params {entry['masked_params']:,} -> {entry['params']:,} dense, non-zero "
             f"{entry['masked_nonzero_params']:,} -> {entry['nonzero_params']:,}; max abs diff "
             f"{entry['max_abs_diff']:.2g} from the masked model on a batch of {entry['verified_on'][0]} "
             f"({'ok' if entry['ok'] else 'FAILED'}, tolerance {entry['tolerance']:g})")
    if not entry["ok"]:
        log.warning(f"[export] compact: max abs diff {entry['max_abs_diff']:.3g} exceeds {entry['tolerance']:g}")
