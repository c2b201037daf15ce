"""`sparsetrain eval TARGET [CONFIG] [key=value ...]`: measure a run, an export or a checkpoint on any data.

TARGET is a run directory (its `export/`, data from its `config.yaml`), an export folder or a file in one (data
from the export's metadata), or a checkpoint file or DeepSpeed checkpoint folder (ZeRO 0-3, `latest` or a tag folder;
read as `model.checkpoint` reads them; CONFIG or `model.name=` says which model).
CONFIG and overrides replace the data (or anything else) for the evaluation, e.g. `data.path=OTHER`;
`deploy.latency=false` among the overrides skips the latency timing (`latency_ms` null, no latency line); the
run's own config.yaml setting is not inherited: it switched the run's end-of-run table, and eval times by default.

The test inputs are scaled as the model's training scaled its inputs: with the per-channel mean/std its export
recorded (`meta.preprocessing`; a run directory's export, or for a weights file or DeepSpeed folder in a run, that
run's export), not with the eval data's own training split, which other data (`data.path=OTHER`,
`data.test_fraction=1.0`) would give other statistics; a checkpoint without such a record is standardized with its
data's training split as `run` does.
`result["inputs"]` says which statistics were used (`_input_scaling`).

Input size: the test images are brought to the size the data config says, as `run` does (the run's
`data.image_size`, also recorded in meta.data and as meta.preprocessing.resize; eval reads the size from the config,
not from that record), so eval of an export reproduces the run's numbers. `data.image_size=S` resizes to S x S, and
`data.image_size=null` (seg_folder: images of one size) feeds the native size without resizing. model.onnx and
model.pt2 of a segmentation export take every size their manifest's `input_sizes` allows (`deploy.sizes`: e.g. UNet
depth 3, sides a multiple of 8): images are fed as they are, never padded or cropped; a size outside it is refused
in one line naming the size and the constraint (`_check_size`), as is any size but the training size for an export
with fixed H and W.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsetrain.config import RunConfig, load_config
from sparsetrain.config.loader import apply_overrides, load_raw, validate
from sparsetrain.deploy.bitmask import plain_bytes
from sparsetrain.deploy.loading import (
    compact_folder,
    export_folder,
    is_compact,
    load_compressed,
    missing_compact,
    preprocessing_of,
    read_manifest,
)
from sparsetrain.engine.finite import require_finite, require_finite_results
from sparsetrain.errors import InputError, first_line
from sparsetrain.model_imports import arch_imports, import_for_arch
from sparsetrain.progress import format_value, log
from sparsetrain.report import COMPRESSION_SCOPE, SPARSITY_SCOPE
from sparsetrain.rundir import check_finished
from sparsetrain.structural.serialize import ARCH_FILE

__all__ = ["evaluate_target", "format_evaluation"]


def _is_export(path: Path) -> bool:
    return (export_folder(path) / ARCH_FILE).is_file()


def _config(target: Path, recipe: str | None, overrides: list[str]) -> RunConfig:
    """The run's own config, or the export's recorded task/data/model, then CONFIG and the overrides."""
    if not _is_export(target):
        if reason := missing_compact(target):
            raise ValueError(f"eval: {reason}")
        if not target.is_file() and not _is_deepspeed_checkpoint(target):
            from sparsetrain.models.checkpoint import pruned_folder_note

            if note := pruned_folder_note(target):
                raise ValueError(f"eval: {target} does not exist; {note}")
            raise ValueError(f"eval: {target} is not a run directory, export folder, checkpoint file or DeepSpeed "
                             "checkpoint folder")
        return load_config(recipe, [*overrides, f"model.checkpoint={target}"])
    run_config = export_folder(target).parent / "config.yaml"
    if recipe is None and run_config.is_file():
        raw = load_raw(run_config)
    elif recipe is not None:
        raw = load_raw(recipe)
    else:
        arch = json.loads((export_folder(target) / ARCH_FILE).read_text())
        meta = arch.get("meta", {})
        recorded = meta.get("data", {})  # less the sizes the run used (`data.data_record`): not settings
        raw = {"task": meta.get("task", "classification"),
               "data": {k: v for k, v in recorded.items() if k not in ("train_samples", "test_samples")}}
    arch = json.loads((export_folder(target) / ARCH_FILE).read_text())
    raw.setdefault("model", {})["name"] = arch["model_name"]
    if imports := arch_imports(arch):  # a user's own model: what its run imported
        raw["model"]["imports"] = imports
    raw["model"].update(checkpoint=None, pretrained=False, pretrained_file=None, reset_head=False)
    return validate(apply_overrides(raw, overrides), overrides=overrides)


def _is_deepspeed_checkpoint(path: Path) -> bool:
    """Whether `path` is a DeepSpeed checkpoint folder (`latest` + tag folder, or a tag folder) `model.checkpoint`
    reads (`models.checkpoint.zero_checkpoint`).

    Raises:
        ValueError: one line when its `latest` names a tag folder without rank files.
    """
    from sparsetrain.models.checkpoint import zero_checkpoint

    return path.is_dir() and zero_checkpoint(path) is not None


def _recorded_preprocessing(target: Path) -> tuple[dict[str, Any] | None, Path | None]:
    """The preprocessing record (`data.base.preprocessing_record`) of the model at `target` and the export folder it
    was read from: the export's own (a compact/ folder without one: its export's), or for a checkpoint file or
    DeepSpeed folder in a run, the run's export's; (None, None) when there is none (a checkpoint outside a run or of
    a run without an export, an export written before the record existed)."""
    if _is_export(target):
        folder = export_folder(target)
        candidates = [folder, folder.parent] if is_compact(folder) else [folder]
    else:
        from sparsetrain.models.checkpoint import checkpoint_run

        run = checkpoint_run(target)
        candidates = [export_folder(run)] if run is not None and _is_export(run) else []
    for folder in candidates:
        record = preprocessing_of(folder)
        if record:
            return record, folder
    return None, None


def _with_recorded_scaling(cfg: RunConfig, record: dict[str, Any] | None
                           ) -> tuple[RunConfig, tuple[list[float], list[float]] | None]:
    """The config whose `data.normalize` is what the model's training did (the record's mean/std set or null), and
    the recorded (mean, std) to standardize with; `cfg` unchanged and None without a record."""
    if record is None:
        return cfg, None
    stats = (record["mean"], record["std"]) if record.get("mean") is not None else None
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"normalize": stats is not None})}), stats


def _input_scaling(cfg: RunConfig, data: Any, record: dict[str, Any] | None, origin: Path | None) -> dict[str, Any]:
    """How eval scaled the test inputs, for its output: `by` is `recorded` (the model's training mean/std, from the
    export at `recorded_in`), `fixed` (imagefolder: ImageNet's), `data` (no record: the eval data's training split, as
    `run` standardizes; `test`: no training split either, the test inputs' own) or `none` (not standardized);
    `mean`, `std` and `scale` are those applied (the `data` bundle's preprocessing record), `recorded_scale` the
    model's (None without a record)."""
    used = data.preprocessing
    if used.get("mean") is None:
        by = "none"
    elif cfg.data.source == "imagefolder":
        by = "fixed"
    else:
        by = "recorded" if record is not None else "data" if len(data.train) else "test"
    return {"by": by, "mean": used.get("mean"), "std": used.get("std"), "scale": used.get("scale"),
            "recorded_in": str(origin) if origin is not None else None,
            "recorded_scale": record.get("scale") if record is not None else None}


def _batches(dataset: torch.utils.data.Dataset, size: int):
    if hasattr(dataset, "__getitems__"):
        for start in range(0, len(dataset), size):
            yield dataset.__getitems__(list(range(start, min(start + size, len(dataset)))))
        return
    yield from torch.utils.data.DataLoader(dataset, batch_size=size)


@torch.no_grad()
def _metrics(model: nn.Module, dataset: torch.utils.data.Dataset, task: Any, batch_size: int) -> dict[str, Any]:
    total = None
    for x, y in _batches(dataset, batch_size):
        stats = task.batch_stats(model(x.float()), y).double()
        total = stats if total is None else total + stats
    return task.finalize(total)


def _sizes(model: nn.Module, target: Path) -> dict[str, Any]:
    """Parameter counts, sparsity and bytes of `model` as read from `target` (an export folder, its compact/, or a
    checkpoint file).

    Returns:
        {"params": {"total", "nonzero", and for an architecture made smaller ("dense": the unpruned architecture's
        count, "removed": "filters" or "dead units")}, "sparsity", "bytes": {"dense": the size of the unpruned
        architecture's safetensors file (`bitmask.plain_bytes`, header included, as the weights files are measured),
        then `_weights_files`}}.
    """
    from sparsetrain.pruning.masks import layer_counts, prunable_parameters, sparsity_of

    params = list(model.parameters())
    counts: dict[str, Any] = {"total": sum(p.numel() for p in params),
                              "nonzero": sum(int(torch.count_nonzero(p)) for p in params)}
    unpruned = _unpruned_architecture(model, target)
    if unpruned is not None:
        counts.update(dense=sum(p.numel() for p in unpruned.parameters()), removed=_what_was_removed(target))
    prunable = prunable_parameters(model)
    dense_bytes = plain_bytes((unpruned or model).state_dict())
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return {"params": counts, "sparsity": sparsity_of(layer_counts(prunable)),
            "bytes": {"dense": dense_bytes, **_weights_files(state, set(prunable), target)}}


def _unpruned_architecture(model: nn.Module, target: Path) -> nn.Module | None:
    """For an export whose architecture was made smaller (filters or dead units removed), the timm architecture it
    came from, built on the meta device in the model's dtype (no memory); None otherwise (same shapes as `model`)."""
    from sparsetrain.structural.serialize import create_on_meta

    arch = json.loads((export_folder(target) / ARCH_FILE).read_text()) if _is_export(target) else {}
    if not arch.get("modules"):
        return None
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    import_for_arch(arch)
    return create_on_meta(arch["model_name"], arch["model_kwargs"]).to(dtype)


def _what_was_removed(target: Path) -> str:
    """Method 1's compact/ folder lost dead units; any other smaller export (Method 2) lost filters."""
    return "dead units" if is_compact(target) else "filters"


def _weights_files(state: dict[str, torch.Tensor], sparse_names: set[str], target: Path) -> dict[str, Any]:
    """The weights files' sizes, one definition throughout (report.json, eval, bench latency): the weights file alone,
    without architecture.json. An export: the files its folder holds (compact/ holds no bitmask file), on disk; a
    checkpoint: the two files an export would write (`exported` false).

    Returns:
        {"safetensors", "bitmask" (those present): bytes, "compressed": the smaller, "compressed_format": its format,
        "compressed_file": its path in the export folder (compact/ included), "exported": whether the files exist}.
    """
    from sparsetrain.deploy.bitmask import BITMASK_FILE, storage_bytes
    from sparsetrain.deploy.compact import COMPACT_DIR
    from sparsetrain.structural.serialize import WEIGHTS_FILE

    if not _is_export(target):
        sizes = storage_bytes(state, sparse_names)
        return {**sizes, "compressed_file": None, "exported": False}
    folder = export_folder(target)
    names = {"safetensors": WEIGHTS_FILE, "bitmask": BITMASK_FILE}
    files = {fmt: (folder / name).stat().st_size for fmt, name in names.items() if (folder / name).is_file()}
    if not files:
        raise InputError(f"eval: {folder} holds no weights file ({WEIGHTS_FILE} or {BITMASK_FILE})")
    smallest = min(files, key=files.get)
    prefix = f"{COMPACT_DIR}/" if is_compact(folder) else ""
    return {**files, "compressed": files[smallest], "compressed_format": smallest,
            "compressed_file": prefix + names[smallest], "exported": True}


def _latency(model: nn.Module, shape: tuple[int, ...], repeats: int, threads: int) -> dict[str, float]:
    from sparsetrain.deploy.latency import interleaved_times

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.randn(1, *shape)
    try:
        with torch.inference_mode():
            ms = interleaved_times({"model": lambda: model(x)}, repeats)["model"]
    finally:
        torch.set_num_threads(previous)
    q = torch.tensor(ms).quantile(torch.tensor([0.2, 0.5, 0.8])).tolist()
    return {"batch": 1, "median": q[1], "p20": q[0], "p80": q[2], "threads": threads, "runtime": _runtime(model)}


def _runtime(model: nn.Module) -> str:
    """What ran the timed forward passes, in the latency table's terms: `onnxruntime cpu` (or `cuda`, the session's
    first execution provider) for an ONNX file, `torch.export program` for model.pt2, else `torch eager`."""
    session = getattr(model, "session", None)
    if session is not None:
        return "onnxruntime " + session.get_providers()[0].removesuffix("ExecutionProvider").lower()
    return "torch.export program" if getattr(model, "export_format", None) == "torch_export" else "torch eager"


def _weights_source(target: Path, fmt: str) -> Path:
    """The file the weights of `evaluate_target`'s torch model were read from: the checkpoint file, or the export's
    model.safetensors (also for onnx and torch_export, whose torch twin is read from it), bitmask file or compact/."""
    from sparsetrain.deploy.bitmask import BITMASK_FILE
    from sparsetrain.structural.serialize import WEIGHTS_FILE

    if fmt == "checkpoint":
        return target
    if fmt == "compact":
        return compact_folder(target) / WEIGHTS_FILE
    return export_folder(target) / (BITMASK_FILE if fmt == "bitmask" else WEIGHTS_FILE)


def _data_fields(cfg: RunConfig) -> str:
    """The data in config terms: `data.source=npz, data.path=x.npz`."""
    return f"data.source={cfg.data.source}" + (f", data.path={cfg.data.path}" if cfg.data.path else "")


def _check_fits(model: nn.Module, dataset: torch.utils.data.Dataset, target: Path, cfg: RunConfig) -> int | None:
    """One test input through the model first, so that data of the wrong shape is one line naming the data and the
    shape the model was built for (architecture.json's meta.input_shape), not a matmul error from deep inside.

    Returns:
        The model's outputs per sample (dim 1 of its output: classes, or segmentation logit channels), None when
        the output has no such dim.
    """
    x = dataset[0][0].unsqueeze(0).float()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:  # torch's RuntimeError, onnxruntime's own errors: any failure here is the data's shape
        meta = json.loads((export_folder(target) / ARCH_FILE).read_text()).get("meta", {}) if _is_export(target) \
            else {}
        expected = f"{tuple(meta['input_shape'])}" if meta.get("input_shape") else "another shape"
        raise InputError(f"eval: the data ({_data_fields(cfg)}) has inputs of shape {tuple(x.shape[1:])}, but the "
                         f"model of {target} takes {expected} (C, H, W); give data of that shape "
                         f"({first_line(err)})") from None
    shape = getattr(out, "shape", ())
    return int(shape[1]) if len(shape) >= 2 else None


def _check_size(target: Path, fmt: str, dataset: torch.utils.data.Dataset, cfg: RunConfig) -> None:
    """model.onnx / model.pt2 of an export whose manifest records the sizes its program takes (`deploy.sizes`):
    images of another size are refused before any is run (onnxruntime fails deep inside a graph on them, or for
    some graphs not at all).

    Raises:
        InputError: one line naming the images' H x W, what the export takes and a `data.image_size` that fits.
    """
    from sparsetrain.deploy.program import ONNX_FILE, PROGRAM_FILE
    from sparsetrain.deploy.sizes import HEIGHT_AXIS, describe_sizes, fits, nearest_side

    if fmt not in ("onnx", "torch_export") or not _is_export(target):
        return
    sizes = read_manifest(export_folder(target)).get("input_sizes")
    x = dataset[0][0]
    if not sizes or HEIGHT_AXIS not in sizes or x.dim() != 3:
        return
    height, width = (int(side) for side in x.shape[-2:])
    if fits(sizes, height, width):
        return
    side = nearest_side(sizes[HEIGHT_AXIS], max(height, width))
    fix = f"e.g. data.image_size={side} (resizes to {side}×{side})" if fits(sizes, side, side) else \
        "resize them to it"
    file = ONNX_FILE if fmt == "onnx" else PROGRAM_FILE
    raise InputError(f"eval: the data ({_data_fields(cfg)}) has images of {height}×{width} (H×W), but {file} of "
                     f"{export_folder(target)} takes {describe_sizes(sizes)} (manifest.json input_sizes); give "
                     f"images of such a size, {fix}")


def _task_classes(cfg: RunConfig, data_classes: int, outputs: int | None, target: Path) -> int:
    """The classes the task scores: a segmentation model's own output channels (the eval data's largest label may
    be below the model's: a test set without class 18), else the data's count.

    Raises:
        InputError: the masks hold more classes than the model has outputs (1 output: binary masks only).
    """
    if cfg.task != "segmentation" or outputs is None or outputs == data_classes:
        return data_classes
    need = max(data_classes, 2)  # 1 = binary masks: labels 0/1
    if outputs >= need:
        return outputs
    model = f"{outputs} output channel{'s' * (outputs != 1)}" + (" (binary masks)" if outputs == 1 else "")
    raise InputError(f"eval: the masks of the data ({_data_fields(cfg)}) hold {need} classes (labels 0-{need - 1}) "
                     f"but the model of {target} has {model}; evaluate it on masks of its classes")


def _checkpoint_model(cfg: RunConfig, data: Any, target: Path, recipe: str | None) -> nn.Module:
    """The model of a checkpoint target, its weights read as `model.checkpoint` reads them.

    Raises:
        InputError: a checkpoint of a run evaluated without CONFIG whose model or classes do not fit the default
            config: one line with the command that gives it the run's config.yaml (its model and data).
        CheckpointMismatch: otherwise, as `model.checkpoint` (naming the model to set, or the classes).
    """
    from sparsetrain.models.checkpoint import CheckpointMismatch, checkpoint_run
    from sparsetrain.models.factory import build_model

    try:
        return build_model(cfg.model, data.in_chans, data.num_classes, data.input_shape).eval()
    except CheckpointMismatch:
        run = checkpoint_run(target)
        if recipe is not None or run is None:
            raise
        command = shlex.join(["sparsetrain", "eval", str(target), str(run / "config.yaml")])
        raise InputError(f"eval: {target} is a checkpoint of the run in {run.resolve()}, and the default config has "
                         f"neither its model nor its data: give the run's config.yaml, `{command}` (key=value "
                         "overrides after it, e.g. data.path=OTHER)") from None


def evaluate_target(target: str | Path, recipe: str | None = None, overrides: list[str] | None = None,
                    format: str = "auto") -> dict[str, Any]:
    """Metrics on the config's test split, parameter counts, sparsity, bytes and batch-1 latency of TARGET
    (`latency_ms` None with `deploy.latency=false`).

    Raises:
        ValueError / ConfigError: one line naming what is wrong (target, config field, checkpoint mismatch).
        NonFiniteError: NaN or inf in the weights (naming the file and tensors) or in the metrics (naming them and the
            data), as `run` stops on them: no measurement is printed.
    """
    from sparsetrain.data import build_data
    from sparsetrain.tasks import build_task

    target = Path(target)
    if target.is_dir():
        check_finished(target, "eval")  # a run directory: its export must be of the final phase
    cfg = _config(target, recipe, list(overrides or []))
    record, origin = _recorded_preprocessing(target)
    cfg, stats = _with_recorded_scaling(cfg, record)
    data = build_data(cfg.data, cfg.seed, cfg.model.kwargs.get("num_classes"), eval_only=True, stats=stats)
    _warn_other_colours(record, data.test, cfg.data.path)
    if _is_export(target):
        model = load_compressed(target, format)
        fmt = model.export_format
        torch_model = model if fmt in ("safetensors", "bitmask", "compact") else load_compressed(
            export_folder(target), "safetensors", purpose=_twin_purpose(model, target))
    else:
        model = torch_model = _checkpoint_model(cfg, data, target, recipe)
        fmt = "checkpoint"
    require_finite(torch_model.state_dict(), f"the weights of {_weights_source(target, fmt)}",
                   "these weights cannot give a measurement: evaluate the weights of a run that did not diverge")
    _check_size(target, fmt, data.test, cfg)
    outputs = _check_fits(model, data.test, target, cfg)
    task = build_task(cfg.task, _task_classes(cfg, data.num_classes, outputs, target), cfg.data.ignore_index,
                      data.classes)
    metrics = _metrics(model, data.test, task, cfg.train.eval_batch_size)
    require_finite_results(metrics, "eval", _data_fields(cfg))
    result = {"target": str(target), "format": fmt, "model": cfg.model.name, "task": cfg.task,
              "data": {"source": cfg.data.source, "path": cfg.data.path, "test_samples": len(data.test),
                       "input_shape": list(data.input_shape)},
              "inputs": _input_scaling(cfg, data, record, origin), "metrics": metrics,
              **_sizes(torch_model, compact_folder(target) if fmt == "compact" else target)}
    result["latency_ms"] = _latency(model, data.input_shape, cfg.deploy.latency_repeats,
                                    cfg.deploy.latency_threads) if _latency_wanted(list(overrides or [])) else None
    return result


def _warn_other_colours(record: dict[str, Any] | None, test: Any, path: str | None) -> None:
    """One warning when the image files scored are of another colour kind than the model's training files (its
    record's `color.files`: a gray copy of a colour-trained set scores lower, with nothing else saying why)."""
    from sparsetrain.data.images import color_kinds

    trained = ((record or {}).get("color") or {}).get("files")
    samples = getattr(test, "samples", None)  # an ImageFolder's (path, label) pairs
    scored = color_kinds([p for p, _ in samples]) if trained and samples else None
    if scored and scored != trained:
        log.warning(f"data.path: the test images of {path} are {scored}, but the model was trained on {trained} "
                    "images (its export's record; both from a sample of file headers): its metric here may be lower "
                    "than on images like its training data")


def _twin_purpose(model: nn.Module, target: Path) -> str:
    """What eval reads an ONNX or torch.export model's safetensors twin for, on its load line: the metric (and
    latency) come from the program's own runtime; the twin only gives the parameter, sparsity and byte counts."""
    from sparsetrain.deploy.program import ONNX_FILE, PROGRAM_FILE

    program = ONNX_FILE if model.export_format == "onnx" else PROGRAM_FILE
    return (f"the torch twin of {program}, read only to count parameters, sparsity and bytes; the metric (and "
            f"latency, when timed) come from {_runtime(model)} on {export_folder(target) / program}")


def _latency_wanted(overrides: list[str]) -> bool:
    """Whether eval times the model: yes unless its own overrides set `deploy.latency` false (alone or in a
    `deploy={...}` mapping), as validated (`false`, `no`, `0`, ...). A run directory's config.yaml does not decide:
    a run made with `deploy.latency=false` (to skip its end-of-run table) is still timed by eval."""
    raw = apply_overrides({}, overrides).get("deploy")
    if not isinstance(raw, dict) or "latency" not in raw:
        return True
    return validate({"deploy": {"latency": raw["latency"]}}).deploy.latency


def _format_words(fmt: str) -> str:
    """The header's format: `onnx, run by onnxruntime` / `torch_export, run by torch.export` for a program (its
    parameters are counted on the safetensors twin), else the format's name."""
    runs = {"onnx": "onnxruntime", "torch_export": "torch.export"}
    return f"{fmt}, run by {runs[fmt]}" if fmt in runs else fmt


PER_CLASS_PRINTED = 8  # classes up to which eval's printed form lists the per-class IoU (more: --json only)


def format_evaluation(result: dict[str, Any]) -> str:
    """The printed form of `evaluate_target`'s result: one line each for data, metric (multi-class segmentation:
    then the per-class IoU, `_per_class_line`), inputs (`_inputs_line`: the statistics that scaled them), params,
    bytes, latency (none when it was not timed)."""
    m, lat = result["metrics"], result["latency_ms"]
    extra = ", ".join(f"{k} {format_value(v)}" for k, v in m.items() if k != "metric" and isinstance(v, int | float))
    lines = [
        f"{result['target']} ({_format_words(result['format'])}, {result['model']}) on {result['data']['source']} "
        f"{result['data']['path'] or ''} ({result['data']['test_samples']} test samples)",
        f"metric       {m['metric']:.4f}  ({extra})",
        *([_per_class_line(m["per_class_iou"])] if "per_class_iou" in m else []),
        *([_inputs_line(result["inputs"])] if "inputs" in result else []),
        _params_line(result["params"], result["sparsity"]),
        _bytes_line(result["bytes"]),
    ]
    if lat is not None:
        lines.append(f"latency      {lat['median']:.3f} ms [{lat['p20']:.3f}-{lat['p80']:.3f}] batch 1, "
                     f"{lat['threads']} thread(s), {lat.get('runtime', 'torch eager')}")
    return "\n".join(lines)


STATS_SHOWN = 3  # channels whose mean/std the inputs line prints (more: --json only)


def _inputs_line(inputs: dict[str, Any]) -> str:
    """`inputs       standardized with the run's recorded mean/std (D/export): mean 0.3, std 0.4`: which
    statistics scaled the test inputs (`_input_scaling`), and a note when the data's raw scale is not the model's."""
    what = {"recorded": f"standardized with the run's recorded mean/std ({inputs['recorded_in']})",
            "fixed": "standardized with the source's fixed ImageNet mean/std",
            "data": "standardized with the eval data's own training-split mean/std (no export records the model's)",
            "test": "standardized with the test images' own mean/std (no training split; no export records the "
                    "model's)",
            "none": "not standardized (data.normalize=false" + (", as the model was trained)" if
                                                                 inputs["recorded_in"] else ")")}[inputs["by"]]
    if inputs["mean"] is not None and len(inputs["mean"]) <= STATS_SHOWN:
        what += ": mean " + ", ".join(f"{v:.4g}" for v in inputs["mean"]) + "; std " + ", ".join(
            f"{v:.4g}" for v in inputs["std"])
    recorded = inputs.get("recorded_scale")
    if recorded is not None and inputs["scale"] is not None and abs(recorded - inputs["scale"]) > 1e-12:
        what += (f" (raw values scaled by {inputs['scale']:.6g} as this data's type says; the model's data was "
                 f"scaled by {recorded:.6g})")
    return f"inputs       {what}"


def _per_class_line(ious: dict[str, float | None]) -> str:
    """`per-class IoU  road 97.12, sidewalk 80.03, car - (absent)`: `-` for a class neither in the targets nor
    predicted; more than `PER_CLASS_PRINTED` classes: where to read them."""
    if len(ious) > PER_CLASS_PRINTED:
        return f"per-class IoU  {len(ious)} classes: in --json (metrics.per_class_iou)"
    return "per-class IoU  " + ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}" for k, v in ious.items())


def _params_line(p: dict[str, Any], sparsity: float) -> str:
    """`params  N total, M non-zero (all parameters); sparsity S % of prunable weights (conv/linear)`: the two
    scopes differ (`report.SPARSITY_SCOPE`), so each is named; led by the unpruned count when the architecture is
    smaller (`(no filter removed)` after it when a structural export is as large as the unpruned one)."""
    counts = (f"{p['total']:,} total, {p['nonzero']:,} non-zero ({COMPRESSION_SCOPE}); "
              f"sparsity {100 * sparsity:.2f} % {SPARSITY_SCOPE}")
    if "dense" not in p:
        return f"params       {counts}"
    if p["dense"] == p["total"]:  # a structural export that lost nothing (e.g. prune.filter_fraction=0)
        return f"params       {counts} (no {p['removed'].removesuffix('s')} removed)"
    fewer = p["dense"] / max(p["total"], 1)
    return f"params       {p['dense']:,} -> {p['total']:,} ({fewer:.2f}x fewer, {p['removed']} removed); {counts}"


def _bytes_line(b: dict[str, Any]) -> str:
    """Dense tensor bytes -> the smallest weights file (architecture.json not counted), and the other one's size."""
    others = "; ".join(f"{fmt} {b[fmt]:,}" for fmt in ("safetensors", "bitmask")
                       if fmt in b and fmt != b["compressed_format"])
    if b.get("exported", True):
        what = f"weights file {b['compressed_file']}" + (f"; other weights file: {others}" if others else "")
    else:
        what = f"{b['compressed_format']} weights file if exported" + (f"; {others}" if others else "")
    return f"bytes        {b['dense']:,} dense -> {b['compressed']:,} compressed ({what})"
