"""Write an export folder: the compressed model in every format, each verified against torch when written.

| format | files | what it is |
|---|---|---|
| `safetensors` | `architecture.json` + `model.safetensors` | timm name/kwargs + shrunk modules, dense tensors |
| `bitmask` | `architecture.json` + `model.bitmask.safetensors` | pruned tensors as packed bitmask + non-zero values |
| `torch_export` | `model.pt2` | `torch.export` program, batch dimension dynamic (segmentation: height, width too) |
| `onnx` | `model.onnx` | the same program in ONNX (opset >= 17) |
| `compact` | `compact/` + the same two files | Method 1: dead units removed exactly (`compact.py`) |

The input preprocessing the model expects (`data.preprocessing_record`: layout, dtype, shape, scale of the raw
values, per-channel mean/std, resize, the channel conversion applied) is stored in `architecture.json` under
`meta.preprocessing` and in the ONNX file's metadata_props under `sparsetrain.preprocessing` (JSON);
`load_compressed` exposes it as `.preprocessing`. What the output means (`data.output_record`: the class names in
index order, how to decode the logits) is stored the same way under `meta.output` and `sparsetrain.output`. The
ONNX input's first axis is named `batch`.

Input sizes: a segmentation model (meta `task`) is traced with dynamic height and width as well as batch
(`sizes.trace_any_size`: the range and the multiple its architecture needs, e.g. UNet depth 3 sides divisible by 8,
found by torch.export); the ONNX axes 2 and 3 are named `height` and `width`. What the programs take is recorded
in manifest.json `input_sizes` and the ONNX metadata `sparsetrain.input_sizes` (JSON): the dynamic axes, per axis
`{"fixed": n}` or `{"multiple_of", "offset", "min", "max"}`, and `fixed_because` when H and W are fixed (a
classification model, which keeps the training size; a segmentation model that does not trace with dynamic sides:
one warning line says so). The deployment formats are verified at the training size and, with dynamic sides, at a
larger non-square size (32 x 32 -> 48 x 64; each entry's `verified_sizes`).

`manifest.json` lists the formats written, their files and sizes (`bytes`: every file listed; `weights_bytes`, for
the torch formats: the weights file alone, the size report.json, `sparsetrain eval` and `bench latency` give), and
for the deployment formats the max abs difference from the torch model on an input batch of the data's shape
(fp32) and whether it passed. A format that
fails to export or to verify is recorded with `ok: false` and its error, and logged; the others are still written.
Writing an export first removes the export files an earlier export left (`EXPORT_FILES`; other files are kept), so
the folder never holds a model its manifest does not list (e.g. the `model.pt2` of another phase).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetrain.deploy.bitmask import BITMASK_FILE, save_sparse
from sparsetrain.deploy.compact import COMPACT_DIR, remove_compact, write_compact
from sparsetrain.deploy.program import (
    BATCH_AXIS,
    ONNX_FILE,
    PROGRAM_FILE,
    onnx_weight_counts,
    trace,
    verify_onnx,
    verify_program,
    write_onnx,
    write_program,
)
from sparsetrain.deploy.sizes import HEIGHT_AXIS, WIDTH_AXIS, describe_sizes, fixed_sizes, other_size, trace_any_size
from sparsetrain.errors import first_line
from sparsetrain.progress import log
from sparsetrain.pruning.masks import prunable_parameters
from sparsetrain.structural.serialize import ARCH_FILE, WEIGHTS_FILE, save_pruned_model

__all__ = ["DEPLOYMENT_FORMATS", "EXPORT_FILES", "MANIFEST_FILE", "OUTPUT_KEY", "PREPROCESSING_KEY", "SIZES_KEY",
           "write_export"]

MANIFEST_FILE = "manifest.json"
PREPROCESSING_KEY = "sparsetrain.preprocessing"  # ONNX metadata_props key holding the preprocessing record (JSON)
OUTPUT_KEY = "sparsetrain.output"  # ONNX metadata_props key holding the output record (JSON): class names, decoding
SIZES_KEY = "sparsetrain.input_sizes"  # ONNX metadata_props key holding the input sizes record (JSON, `sizes.py`)
DEPLOYMENT_FORMATS = ("onnx", "torch_export")
_MANIFEST_FORMAT = "sparsetrain-export/1"
# every file write_export may write (model.onnx.data: the ONNX weights of a model over 1 GiB)
EXPORT_FILES = (ARCH_FILE, WEIGHTS_FILE, BITMASK_FILE, PROGRAM_FILE, ONNX_FILE, f"{ONNX_FILE}.data", MANIFEST_FILE)


def _entry(folder: Path, *files: str, **extra: Any) -> dict[str, Any]:
    return {"files": list(files), "bytes": sum((folder / f).stat().st_size for f in files), **extra}


def _weights_entry(folder: Path, weights: str) -> dict[str, Any]:
    """A torch format's entry: `bytes` counts every file it lists (architecture.json too), `weights_bytes` the
    weights file alone, the size report.json, eval and bench latency give."""
    return _entry(folder, ARCH_FILE, weights, weights_bytes=(folder / weights).stat().st_size)


def weights_file_size(entry: dict[str, Any]) -> str:
    """`weights file model.safetensors 202,888 B`: the last file an entry lists is its weights file."""
    return f"weights file {entry['files'][-1]} {entry['weights_bytes']:,} B"


def write_export(model: nn.Module, folder: str | Path, *, meta: dict[str, Any], example: torch.Tensor,
                 formats: tuple[str, ...] | list[str] = DEPLOYMENT_FORMATS, opset: int = 18,
                 tolerance: float = 1e-4, compact: bool = False, any_size: bool | None = None) -> dict[str, Any]:
    """Write `model` to `folder` in every format and verify the deployment formats.

    Args:
        model: The compressed model (a timm model, possibly structurally pruned); a float32 CPU copy is exported.
        folder: The export folder (created; the `EXPORT_FILES` an earlier export left are removed first).
        meta: timm "model_name" and "model_kwargs" plus JSON metadata (see `structural.serialize.save_pruned_model`).
        example: An input batch (at least 2 samples) of the data's shape, used to trace and verify.
        formats: Deployment formats to write besides safetensors and bitmask (`DEPLOYMENT_FORMATS`).
        opset: ONNX opset.
        tolerance: Largest max abs difference from torch that passes verification.
        compact: Also write the model without its dead units to `folder/compact/` (`compact.py`; Method 1), when
            it has any.
        any_size: Trace the deployment formats with dynamic height and width (`sizes.trace_any_size`); None = for
            a segmentation model (meta "task") with N x C x H x W inputs.

    Returns:
        The manifest (also written to `folder/manifest.json`).
    """
    import copy

    folder = Path(folder)
    unknown = sorted(set(formats) - set(DEPLOYMENT_FORMATS))
    if unknown:
        raise ValueError(f"deploy.formats: unknown format(s) {unknown}; expected {list(DEPLOYMENT_FORMATS)}")
    log.info(f"[export] writing {folder}: safetensors, bitmask{''.join(', ' + f for f in formats)}")
    model = copy.deepcopy(model).float().cpu().eval()
    had_compact = (folder / COMPACT_DIR / ARCH_FILE).is_file()
    _remove_earlier_export(folder)
    save_pruned_model(model, folder, meta=meta)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    save_sparse(state, set(prunable_parameters(model)), folder / BITMASK_FILE)
    entries = {"safetensors": _weights_entry(folder, WEIGHTS_FILE), "bitmask": _weights_entry(folder, BITMASK_FILE)}
    for fmt in ("safetensors", "bitmask"):
        log.info(f"[export] {fmt}: {' + '.join(entries[fmt]['files'])}; {weights_file_size(entries[fmt])}")
    if compact:
        entries.update(_compact(model, folder, meta, example.float().cpu(), tolerance))
    if had_compact and "compact" not in entries:
        log.info(f"[export] removed {folder.name}/{COMPACT_DIR}/, the compact model of the previous export "
                 f"({'no dead units' if compact else 'deploy.compact=false'})")
    if any_size is None:
        any_size = meta.get("task") == "segmentation" and example.dim() == 4
    sizes = None
    if formats:
        deployed, sizes = _deployment_formats(model, folder, example.float().cpu(), formats, opset, tolerance,
                                              _onnx_metadata(meta), any_size)
        entries.update(deployed)
    manifest = {"format": _MANIFEST_FORMAT, "model_name": meta["model_name"],
                "input_shape": list(example.shape[1:]), **({"input_sizes": sizes} if sizes else {}),
                "formats": entries}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    _default_permissions(folder)
    return manifest


def _remove_earlier_export(folder: Path) -> None:
    """Delete the files an earlier export wrote (`EXPORT_FILES`), so none outlives the manifest that listed it."""
    for name in EXPORT_FILES:
        (folder / name).unlink(missing_ok=True)
    remove_compact(folder)


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 1e6:.2f} MB" if num_bytes >= 1e5 else f"{num_bytes:,} B"


def _default_permissions(folder: Path) -> None:
    """Give every export file the mode a plain `open()` gives (0644 under umask 022): safetensors writes its files
    0600, which left other users of a shared export unable to read the weights."""
    umask = os.umask(0)
    os.umask(umask)
    compact = folder / COMPACT_DIR
    for path in [*folder.iterdir(), *(compact.iterdir() if compact.is_dir() else ())]:
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _compact(model: nn.Module, folder: Path, meta: dict[str, Any], example: torch.Tensor,
             tolerance: float) -> dict[str, dict[str, Any]]:
    """The "compact" entry (none when no unit is dead); a model that cannot be traced is recorded as failed."""
    try:
        entry = write_compact(model, folder, meta=meta, example=example, tolerance=tolerance)
    except Exception as err:  # tracing raises many types; the other formats must still be written
        return {"compact": _failed("compact", err)}
    return {"compact": entry} if entry is not None else {}


def _onnx_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """The records of `meta` the ONNX file carries in its metadata_props, as JSON strings."""
    records = {PREPROCESSING_KEY: meta.get("preprocessing"), OUTPUT_KEY: meta.get("output")}
    return {key: json.dumps(record) for key, record in records.items() if record}


def _deployment_formats(model: nn.Module, folder: Path, example: torch.Tensor, formats: tuple[str, ...] | list[str],
                        opset: int, tolerance: float, metadata: dict[str, str], any_size: bool
                        ) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """The deployment formats' manifest entries, and the `input_sizes` record of their program (None when the model
    does not trace)."""
    try:
        program, sizes = _trace(model, example, any_size)
        checks = _checks(model, example, sizes)
    except Exception as err:  # torch.export raises many types for untraceable code
        return {fmt: _failed(fmt, err) for fmt in formats}, None
    pruned_zeros = sum(int((p == 0).sum()) for p in prunable_parameters(model).values())
    dynamic = {"dynamic_batch": BATCH_AXIS in sizes["dynamic"],
               "dynamic_size": HEIGHT_AXIS in sizes["dynamic"] and WIDTH_AXIS in sizes["dynamic"]}
    metadata = {**metadata, SIZES_KEY: json.dumps(sizes)}
    writers = {
        "torch_export": lambda: _checked(folder, write_program(program, folder / PROGRAM_FILE), verify_program,
                                         checks, tolerance, **dynamic),
        "onnx": lambda: _onnx(folder, program, checks, opset, tolerance, dynamic, pruned_zeros, metadata),
    }
    entries = {}
    for fmt in formats:
        log.info(f"[export] {fmt}: writing and verifying against torch …")
        start = time.perf_counter()
        try:
            entries[fmt] = writers[fmt]()
        except Exception as err:  # exporters raise many types; one failed format must not lose the others
            entries[fmt] = _failed(fmt, err)
            continue
        entry = entries[fmt]
        at = " and ".join("×".join(map(str, v["size"])) for v in entry["verified_sizes"])
        log.info(f"[export] {fmt}: {' + '.join(entry['files'])}, {_size(entry['bytes'])}, max abs diff "
                 f"{entry['max_abs_diff']:.2g} from torch on a batch of {entry['verified_on'][0]} at {at} "
                 f"({'ok' if entry['ok'] else 'FAILED'}, tolerance {tolerance:g}), {time.perf_counter() - start:.1f} s")
    return entries, sizes


def _trace(model: nn.Module, example: torch.Tensor, any_size: bool) -> tuple[torch.export.ExportedProgram,
                                                                             dict[str, Any]]:
    """The program both deployment formats are written from, and its `input_sizes` record. With `any_size`, traced
    with dynamic height and width; a model that does not trace so is traced at the training size, and one warning
    line says so (as the record's `fixed_because` does)."""
    if not any_size:
        program, batch = trace(model, example)
        return program, fixed_sizes(example, batch, "only segmentation exports are traced with dynamic height and "
                                                    "width")
    size = "×".join(map(str, example.shape[2:]))
    try:
        program, sizes = trace_any_size(model, example)
    except Exception as err:  # torch.export raises many types for code it cannot trace with dynamic sides
        reason = f"it does not trace with dynamic height and width ({type(err).__name__}: {first_line(err)[:200]})"
        program, batch = trace(model, example)
        sizes = fixed_sizes(example, batch, reason)
    if sizes["fixed_because"]:
        log.warning(f"[export] model.pt2 and model.onnx take only {size} inputs (H×W), the training size: "
                    f"{sizes['fixed_because']}; resize inputs to {size}")
    else:
        log.info(f"[export] model.pt2 and model.onnx take any batch; {describe_sizes(sizes)} (dynamic height "
                 f"and width; trained at {size})")
    return program, sizes


def _checks(model: nn.Module, example: torch.Tensor, sizes: dict[str, Any]
            ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, the eager model's output) pairs the deployment formats are verified on: the example, and with
    dynamic sides the example resized (bilinear) to `sizes.other_size`, a larger non-square size."""
    with torch.no_grad():
        checks = [(example, model(example))]
        other = other_size(sizes, *example.shape[2:]) if example.dim() == 4 else None
        if other is not None:
            resized = torch.nn.functional.interpolate(example, size=other, mode="bilinear", align_corners=False)
            checks.append((resized, model(resized)))
    return checks


def _checked(folder: Path, path: Path, verify: Any, checks: list[tuple[torch.Tensor, torch.Tensor]],
             tolerance: float, **extra: Any) -> dict[str, Any]:
    """The format's entry: its largest max abs difference from torch over `checks` (`verified_sizes`: per size)."""
    diffs = [(list(x.shape[2:]), verify(path, reference, x)) for x, reference in checks]
    diff = max(d for _, d in diffs)
    ok = diff <= tolerance
    if not ok:
        log.warning(f"[export] {path.name}: max abs diff {diff:.3g} from torch exceeds {tolerance:g}")
    return _entry(folder, path.name, max_abs_diff=diff, tolerance=tolerance, ok=ok,
                  verified_on=list(checks[0][0].shape),
                  verified_sizes=[{"size": size, "max_abs_diff": d} for size, d in diffs], **extra)


def _onnx(folder: Path, program: torch.export.ExportedProgram, checks: list[tuple[torch.Tensor, torch.Tensor]],
          opset: int, tolerance: float, dynamic: dict[str, bool], pruned_zeros: int,
          metadata: dict[str, str]) -> dict[str, Any]:
    path = write_onnx(program, checks[0][0], folder / ONNX_FILE, opset, metadata)
    counts = onnx_weight_counts(path)
    entry = _checked(folder, path, verify_onnx, checks, tolerance, opset=opset, **dynamic,
                     weight_elements=counts["elements"], weight_zeros=counts["zeros"],
                     pruned_zeros_kept=counts["zeros"] >= pruned_zeros)
    entry["ok"] = entry["ok"] and entry["pruned_zeros_kept"]
    return entry


def _failed(fmt: str, err: BaseException) -> dict[str, Any]:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    log.warning(f"[export] {fmt}: not written ({type(err).__name__}: {first})")
    return {"ok": False, "error": f"{type(err).__name__}: {first}"}
