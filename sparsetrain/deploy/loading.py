"""`sparsetrain.load_compressed`: the compressed model from any format an export folder holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetrain.deploy.bitmask import BITMASK_FILE, load_sparse
from sparsetrain.deploy.program import ONNX_FILE, PROGRAM_FILE, onnx_session
from sparsetrain.errors import InputError
from sparsetrain.progress import log
from sparsetrain.structural.serialize import ARCH_FILE, WEIGHTS_FILE

__all__ = ["FORMAT_ORDER", "OnnxRuntimeModel", "compact_folder", "export_folder", "is_compact", "load_compressed",
           "missing_compact", "no_compact_model", "output_of", "preprocessing_of", "read_manifest", "verified_compact"]

# Preference of format="auto": the torch model first (trainable, inspectable), then the deployment graphs.
FORMAT_ORDER = ("safetensors", "bitmask", "torch_export", "onnx")
_FILES = {"safetensors": WEIGHTS_FILE, "bitmask": BITMASK_FILE, "torch_export": PROGRAM_FILE, "onnx": ONNX_FILE}


class OnnxRuntimeModel(nn.Module):
    """An ONNX file run by onnxruntime, called like the torch model: float32 tensor in, tensor out."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def export_folder(path: str | Path) -> Path:
    """The export folder for a run directory (its `export/`), an export folder, or a file inside one."""
    path = Path(path)
    if path.is_file():
        return path.parent
    if (path / "export").is_dir() and not (path / ARCH_FILE).exists():
        return path / "export"
    return path


def compact_folder(path: str | Path) -> Path:
    """`export/compact/` of a run directory, export folder or file in one (`path` itself when it is that folder)."""
    from sparsetrain.deploy.compact import COMPACT_DIR

    folder = export_folder(path)
    return folder if is_compact(folder) else folder / COMPACT_DIR


def is_compact(path: str | Path) -> bool:
    """Whether `path` (a folder or a file in one) is an export's `compact/` folder, Method 1's model with its dead
    units removed: what `load_compressed`, eval and bench latency then call the "compact" model."""
    from sparsetrain.deploy.compact import COMPACT_DIR

    return export_folder(path).name == COMPACT_DIR


def no_compact_model(export: Path) -> str:
    """Why export folder `export` has no `compact/` and how to get one: `<export> has no compact model (...)`, for
    eval, bench latency and `load_compressed(..., "compact")` alike."""
    run = export.parent if export.name == "export" and (export.parent / "config.yaml").is_file() else "RUN"
    return (f"{export} has no compact model: this export was written with deploy.compact=false, or no unit was dead "
            f"(export/compact/ is Method 1's model without its dead units); write it with `sparsetrain export {run} "
            "deploy.compact=true`")


def missing_compact(path: str | Path) -> str | None:
    """`no_compact_model` of the export folder `path` belongs to when `path` names its `compact/` folder (or a file
    in it) and that holds no compact model; None otherwise."""
    from sparsetrain.deploy.compact import COMPACT_DIR

    path = Path(path)
    folder = path.parent if path.parent.name == COMPACT_DIR else path
    if folder.name != COMPACT_DIR or (folder / ARCH_FILE).is_file() or not (folder.parent / ARCH_FILE).is_file():
        return None
    return no_compact_model(folder.parent)


def preprocessing_of(path: str | Path) -> dict | None:
    """The input preprocessing an exported model expects (see `sparsetrain.data.base.preprocessing_record`):
    from `architecture.json` meta, else from the ONNX file's metadata; None for exports written before it was
    recorded.

    Args:
        path: A run directory, export folder or a file in one.
    """
    from sparsetrain.deploy.folder import PREPROCESSING_KEY

    return _export_record(path, "preprocessing", PREPROCESSING_KEY)


def output_of(path: str | Path) -> dict | None:
    """What an exported model's output means: `classes` (names in output index order, or None where the data
    names none) and `decode` (how to turn the output into a prediction); from `architecture.json` meta `output`,
    else the ONNX file's `sparsetrain.output` metadata; None for exports written before it was recorded.

    Args:
        path: A run directory, export folder or a file in one.
    """
    from sparsetrain.deploy.folder import OUTPUT_KEY

    return _export_record(path, "output", OUTPUT_KEY)


def _export_record(path: str | Path, meta_key: str, onnx_key: str) -> dict | None:
    """`architecture.json`'s meta[meta_key], else the ONNX file's metadata entry `onnx_key` (JSON), else None."""
    folder = export_folder(path)
    if (folder / ARCH_FILE).is_file():
        found = json.loads((folder / ARCH_FILE).read_text()).get("meta", {}).get(meta_key)
        if found:
            return found
    if (folder / ONNX_FILE).is_file():
        import onnx

        props = {p.key: p.value for p in onnx.load(str(folder / ONNX_FILE), load_external_data=False).metadata_props}
        if onnx_key in props:
            return json.loads(props[onnx_key])
    return None


def _what_it_has(folder: Path, present: list[str], asked: str) -> str:
    """` (it has [...]; did you mean 'x'?)`: the formats present, the compact model included."""
    import difflib

    from sparsetrain.deploy.compact import COMPACT_DIR

    have = [*present, *(["compact"] if (folder / COMPACT_DIR / WEIGHTS_FILE).is_file() else [])]
    near = difflib.get_close_matches(asked, have, n=1)
    return f" (it has {have or 'none'}" + (f"; did you mean {near[0]!r}?)" if near else ")")


def _format_of(path: Path, format: str) -> str:
    """The format to load: given, implied by the file named, or the first present in FORMAT_ORDER that the
    folder's manifest lists."""
    if path.is_file():
        named = next((fmt for fmt, name in _FILES.items() if path.name == name), None)
        if named is None:
            raise ValueError(f"load_compressed: {path} is not an export file (expected one of "
                             f"{sorted(_FILES.values())})")
        _check_listed(path.parent, named)
        return named
    folder = export_folder(path)
    if reason := missing_compact(path):
        raise ValueError(f"load_compressed: {reason}")
    if not folder.is_dir():
        raise ValueError(f"load_compressed: {path} is not a run directory, export folder or export file")
    present = [fmt for fmt in FORMAT_ORDER if (folder / _FILES[fmt]).is_file()
               and (fmt in ("torch_export", "onnx") or (folder / ARCH_FILE).is_file())]
    listed = _listed_formats(folder)
    if listed is not None:
        present = [fmt for fmt in present if fmt in listed]
    if format != "auto":
        _check_listed(folder, format)
        if format not in present:
            has = _what_it_has(folder, present, format)
            raise ValueError(f"load_compressed: {folder} holds no {format!r} model{has}")
        return format
    if not present:
        raise ValueError(f"load_compressed: {folder} holds no exported model (expected {ARCH_FILE} + "
                         f"{WEIGHTS_FILE}, {BITMASK_FILE}, {PROGRAM_FILE} or {ONNX_FILE})")
    return present[0]


def _check_listed(folder: Path, format: str) -> None:
    """Refuse a format whose file is in the folder but not in its manifest: a file another export left there."""
    listed = _listed_formats(folder)
    if listed is not None and format not in listed and (folder / _FILES.get(format, "")).is_file():
        raise InputError(f"load_compressed: {folder / _FILES[format]} is not listed in {folder.name}/manifest.json "
                         f"(it lists {', '.join(listed) or 'no model'}): a file left by another export, not this "
                         f"one's {format} model; re-export with deploy.formats including {format}")


def _listed_formats(folder: Path) -> list[str] | None:
    """The formats `manifest.json` lists as written (with their files), or None for a folder without a readable
    manifest (written by hand, or before manifests)."""
    formats = read_manifest(folder).get("formats")
    if formats is None:
        return None
    return [fmt for fmt, entry in formats.items() if isinstance(entry, dict) and entry.get("files")]


def read_manifest(folder: Path) -> dict[str, Any]:
    """Export folder `folder`'s `manifest.json` (`deploy.folder.write_export`); {} when it has none, or none that
    can be read as a manifest with a `formats` mapping (written by hand, or before manifests)."""
    from sparsetrain.deploy.folder import MANIFEST_FILE

    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("formats"), dict) else {}


def verified_compact(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's `compact` entry when `export/compact/` (Method 1, `deploy.compact`) was written and passed its
    verification (`ok`), else None: the one test of whether an export holds a compact model to time, for `bench
    latency` and for the latency tables a run reuses or `sparsetrain export` keeps (`deploy.run.held_models`)."""
    entry = (manifest.get("formats") or {}).get("compact")
    return entry if isinstance(entry, dict) and entry.get("ok") else None


def _load_compact(path: Path) -> nn.Module:
    """The export's compact model (`deploy/compact.py`): `export/compact/`, written only for Method 1 runs."""
    from sparsetrain.structural.serialize import load_pruned_model as load_timm

    folder = compact_folder(path)
    missing = [name for name in (ARCH_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if len(missing) == 2:
        raise ValueError(f"load_compressed: {no_compact_model(folder.parent)}")
    if missing:
        raise ValueError(f"load_compressed: {folder} is incomplete: {missing[0]} is missing; re-export the run "
                         f"(`sparsetrain export RUN`)")
    return load_timm(folder)


def load_compressed(path: str | Path, format: str = "auto", *, threads: int | None = None,
                    purpose: str = "") -> nn.Module:
    """Load an exported model, ready for `model(x)`, and say which format it came from.

    Args:
        path: A run directory, its `export/` folder, or one file in it (`model.safetensors`,
            `model.bitmask.safetensors`, `model.pt2`, `model.onnx`).
        format: "auto" (the first of `FORMAT_ORDER` the folder holds), "safetensors", "bitmask",
            "torch_export", "onnx", or "compact" (Method 1's model with its dead units removed, `export/compact/`;
            never chosen by "auto" for a run or export folder; `path` = `export/compact/` itself loads it as
            "compact").
        threads: onnxruntime intra-op threads (onnx only; None = onnxruntime's default).
        purpose: What the caller loads it for, appended to the load line (eval: the torch twin of model.onnx only
            counts parameters).

    Returns:
        A module in eval mode whose `export_format` attribute names the format loaded (also logged) and whose
        `preprocessing` attribute is the input preprocessing it expects (`preprocessing_of`; None if the export
        predates it): feed it `(raw * scale - mean[c]) / std[c]`, float32, N×C×H×W; its `output` attribute says
        what the output means (`output_of`: class names in index order, how to decode). The
        safetensors and bitmask formats give the timm model (physically smaller after structural pruning);
        torch_export gives `torch.export.load(...).module()`; onnx an `OnnxRuntimeModel`.

    Raises:
        ValueError: no such folder/file, or the folder lacks the format asked for.
        InputError (a ValueError): the format's file is there but the folder's manifest.json does not list it (a
            file another export left behind).
    """
    path = Path(path)
    fmt = "compact" if format == "compact" else _format_of(path, format)
    if fmt == "safetensors" and is_compact(path):  # export/compact/ itself: its model.safetensors is the compact one
        fmt = "compact"
    folder = compact_folder(path) if fmt == "compact" else export_folder(path)
    if fmt == "compact":
        model = _load_compact(path)
    elif fmt == "safetensors":
        from sparsetrain.structural.serialize import load_pruned_model as load_timm

        model = load_timm(folder)
    elif fmt == "bitmask":
        model = _load_bitmask(folder)
    elif fmt == "torch_export":
        model = torch.export.load(str(folder / PROGRAM_FILE)).module()
    else:
        model = OnnxRuntimeModel(folder / ONNX_FILE, threads)
    if fmt != "torch_export":
        model.eval()  # an exported program's module is already an inference graph (it rejects .eval())
    model.export_format = fmt
    model.preprocessing = preprocessing_of(path)
    model.output = output_of(path)
    log.info(f"load_compressed: {folder / _FILES.get(fmt, WEIGHTS_FILE)} ({fmt}){f': {purpose}' if purpose else ''}")
    return model


def _load_bitmask(folder: Path) -> nn.Module:
    """The model of `architecture.json` holding the bitmask file's weights (unpacked, exact zeros restored)."""
    import timm

    import sparsetrain.models  # noqa: F401  (registers sparsetrain's timm models)
    from sparsetrain.model_imports import import_for_arch
    from sparsetrain.structural.serialize import load_pruned_model as load_timm

    arch = json.loads((folder / ARCH_FILE).read_text())
    if arch.get("modules"):  # structurally pruned: the recorded smaller architecture, rebuilt by its loader
        model = load_timm(folder)
    else:
        import_for_arch(arch)  # a user's own model: the modules of its run's model.imports
        model = timm.create_model(arch["model_name"], pretrained=False, **arch["model_kwargs"])
    model.load_state_dict(load_sparse(folder / BITMASK_FILE), strict=True)
    return model
