"""Initial weights from a trained model on disk (`model.checkpoint`): safetensors, torch checkpoints, exports.

Accepted files, read through the libraries that write them:
- `.safetensors`: a flat state dict (`safetensors.torch.load_file`).
- `.pth` / `.pt` / `.bin` / `.tar`: a torch state dict or a training checkpoint, read by timm's
  `timm.models.load_state_dict` (`torch.load(weights_only=True)`; weights under `state_dict`, `model`, or with
  `model.checkpoint_ema` under `state_dict_ema` / `model_ema`; `module.` and `_orig_mod.` prefixes of DDP and
  torch.compile removed), as timm's and torchvision's training scripts save them. Besides tensors such a checkpoint
  may hold `argparse.Namespace` args and numpy scalars / arrays (`epoch`, `best_acc=np.float64(...)`): those
  globals are allowed (`safe_globals`); anything else pickled (a whole `torch.save(model)`) is refused.
- A sparsetrain export folder (`architecture.json` + `model.safetensors`, see `sparsetrain.deploy`); a structurally
  pruned export gives its smaller architecture.
- A DeepSpeed checkpoint, as DeepSpeed's `engine.save_checkpoint` writes it: the folder (with `latest` naming its
  tag) or the tag folder (`global_stepN/`). ZeRO 1-3 (`*_model_states.pt` and `*_optim_states.pt` of every rank):
  DeepSpeed's own `zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint` consolidates the fp32 weights; the early
  check (`check_checkpoint`) runs it in lazy mode, which reads the rank files' pickles (memory-mapped: the fp32
  partitions are not copied) and gives every tensor's shape. ZeRO 0 (no optimizer partitions: DeepSpeed saves the
  whole module, optimizer state inside, in `mp_rank_00_model_states.pt`, the file zero_to_fp32's
  `get_model_state_file` names): its `module` state dict, as DeepSpeed's own `load_checkpoint(load_module_only=True)`
  reads it. DeepSpeed's files are pickles that its tools load with `torch.load(weights_only=False)`: give only
  checkpoints you trust. One rank's file alone is refused in one line naming the folder to give.
- A sparsetrain run directory: its `export/` folder, or without one the weights of its last finished phase
  (`weights/<phase>.safetensors`, or the pruned model in `weights/<phase>/` of a structural run). A run whose final
  phase has not finished is taken too, with a warning naming the phase taken and the other finished phases' files.

Other files of an export or run (`model.bitmask.safetensors`, `model.onnx`, `model.pt2`, `weights/masks.safetensors`)
are recognised and refused in one line that names the file to give instead.

Every mismatch is one line naming `model.checkpoint` (or `model.reset_head`; `model.kwargs.num_classes` when that
setting is what makes the classifiers differ), the same from `check_checkpoint` (the
tensors' names and shapes against the meta model, before a run writes anything) as from the load. When the
checkpoint comes from a sparsetrain run or export that names its model (`architecture.json`, or the run's
`config.yaml`) and that is not `model.name`, the line says which model it holds; otherwise it gives the count and
the first few keys of each kind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from torch import nn

from sparsetrain.config.schema import ModelConfig
from sparsetrain.phases import PHASES, final_phase
from sparsetrain.progress import log

__all__ = ["CheckpointMismatch", "apply_checkpoint", "architecture_only", "check_checkpoint", "checkpoint_run",
           "classifier_keys", "read_state_dict"]

_SHOWN = 3  # keys listed per kind in a mismatch message
_RUN_DEPTH = 2  # a run's files lie at most this deep below its config.yaml (weights/<phase>.safetensors)
_AVERAGED_MODEL_KEYS = ("n_averaged",)  # torch.optim.swa_utils.AveragedModel (torchvision's EMA) bookkeeping
_EMA_KEYS = ("state_dict_ema", "model_ema")  # where timm's load_state_dict(use_ema=True) looks, in this order
_KEYS_SHOWN = 8  # top-level keys of a training checkpoint listed when it has no EMA weights


class CheckpointMismatch(ValueError):
    """The checkpoint's tensors do not fit the model: one line naming the field, with example keys."""


@contextlib.contextmanager
def quiet_timm_loading() -> Iterator[None]:
    """Hold back timm's own INFO lines about loading weights (`Loaded  from checkpoint ...` with an empty key,
    `Loading pretrained weights from Hugging Face hub` though the hub is off): sparsetrain logs what it loaded."""
    loggers = [logging.getLogger(name) for name in ("timm.models._builder", "timm.models._helpers")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _first_line(err: BaseException) -> str:
    """The error's type and first sentence (a long first line is cut at a sentence end, not mid-word)."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    text = lines[0] if len(lines[0]) <= 160 else lines[0].split(". ")[0][:160].rstrip(".") + " ..."
    return f"{type(err).__name__}: {text}"


def read_state_dict(path: str | Path, use_ema: bool = False, *, meta: bool = False) -> dict[str, torch.Tensor]:
    """The weights held by a checkpoint file or export folder, on the CPU, wrapper prefixes removed.

    With `meta`, the same tensors on the meta device: names and shapes only, the weights are not read (a safetensors
    file's header; a torch zip checkpoint's pickle without its storages; a legacy pickle checkpoint is read whole).

    Raises:
        ValueError: `model.checkpoint: ...` when the path is missing or holds no state dict;
            `model.checkpoint_ema: ...` when `use_ema` and it holds no EMA weights (`_check_ema`).
    """
    path = resolve(path)
    if path.is_dir():
        if use_ema:
            _check_ema(path)
        zero = zero_checkpoint(path)
        return _zero_state(*zero, meta) if zero else _export_state(path, meta)
    if not path.is_file():
        raise ValueError(f"model.checkpoint: file or export folder not found: {path}"
                         + (f"; {note}" if (note := pruned_folder_note(path)) else ""))
    foreign = _not_weights(path) or _zero_rank_file(path)
    if foreign:
        raise ValueError(f"model.checkpoint: {path} {foreign}")
    tensors = _tensors(path, use_ema, meta)
    if use_ema:
        _check_ema(path)
    if not tensors and not use_ema:  # a checkpoint that keeps only EMA weights
        tensors = _tensors(path, True, meta)
    if not tensors:
        raise ValueError(f"model.checkpoint: {path} holds no tensors (expected a state dict, or a training "
                         "checkpoint with one under 'state_dict', 'model' or 'model_ema')")
    return tensors


def resolve(path: str | Path) -> Path:
    """The path itself; for a sparsetrain run directory its `export/` folder, or without one the weights of its
    last finished phase (`run_weights`)."""
    path = Path(path).expanduser()
    if not path.is_dir() or (path / "architecture.json").exists():
        return path
    if (path / "export").is_dir():
        return path / "export"
    return run_weights(path) or path


def run_weights(run: Path) -> Path | None:
    """`weights/<phase>/` (a structurally pruned model) or `weights/<phase>.safetensors` of the last finished phase
    recorded in the run directory's `state.json`; None when `run` is not a run directory or has no such file."""
    from sparsetrain.engine.checkpoint import read_run_state

    state = read_run_state(run)
    phase = final_phase(state["completed"]) if state is not None else None
    return _phase_weights(run, phase) if phase is not None else None


def pruned_folder_note(path: Path) -> str:
    """`FOLDER/ beside it holds ...; give that folder` when `path` is a missing `<phase>.safetensors` whose `<phase>/`
    folder holds a structurally pruned model (Method 2 saves its pruned phases' weights as folders); empty otherwise.

    Args:
        path: The path a user gave, e.g. `RUN/weights/prune.safetensors`.
    """
    from sparsetrain.structural.serialize import ARCH_FILE

    folder = path.with_suffix("")
    if path.suffix != ".safetensors" or path.exists() or not (folder / ARCH_FILE).is_file():
        return ""
    return (f"{folder}/ beside it holds those weights (a structurally pruned model is saved as a folder: {ARCH_FILE} "
            "+ model.safetensors); give that folder")


def _phase_weights(run: Path, phase: str) -> Path | None:
    """`weights/<phase>/` (a structurally pruned model) or `weights/<phase>.safetensors` of a run, None when absent."""
    from sparsetrain.structural.serialize import ARCH_FILE

    folder, file = run / "weights" / phase, run / "weights" / f"{phase}.safetensors"
    return folder if (folder / ARCH_FILE).is_file() else file if file.is_file() else None


_MODEL_STATES, _OPTIM_STATES = "*_model_states.pt", "*_optim_states.pt"  # rank files of a DeepSpeed checkpoint's tag
_ZERO_FILES = (_MODEL_STATES, _OPTIM_STATES)


def _has_zero_files(folder: Path) -> bool:
    """Whether `folder` holds DeepSpeed rank files: model states, and (ZeRO >= 1) optimizer partitions; ZeRO 0 writes
    model states only (its optimizer state inside them)."""
    return folder.is_dir() and any(folder.glob(_MODEL_STATES))


def _is_zero_folder(path: Path) -> bool:
    """Whether `path` is a DeepSpeed checkpoint folder (its `latest` file) or one of its tag folders (rank files), as
    `zero_checkpoint` reads them, without its check of what `latest` names."""
    return _has_zero_files(path) or (path / "latest").is_file()


def _is_zero0(folder: Path) -> bool:
    """Whether tag folder `folder` holds no optimizer partitions: a ZeRO 0 checkpoint (checked by `_zero0_state`)."""
    return not any(folder.glob(_OPTIM_STATES))


def zero_checkpoint(path: Path) -> tuple[Path, str] | None:
    """(checkpoint folder, tag) when `path` is a DeepSpeed ZeRO checkpoint: the folder `engine.save_checkpoint`
    wrote (its `latest` file names the tag) or one tag folder of it (`global_stepN/`); None for other paths.

    Raises:
        ValueError: `model.checkpoint: ...` when `latest` names a tag folder that holds no rank files.
    """
    if _has_zero_files(path):
        return path.parent, path.name
    latest = path / "latest"
    if not latest.is_file():
        return None
    tag = latest.read_text().strip()
    if not _has_zero_files(path / tag):
        raise ValueError(f"model.checkpoint: {path} is a DeepSpeed checkpoint folder whose 'latest' names {tag!r}, "
                         f"but {path / tag} holds no rank files ({_MODEL_STATES}, and {_OPTIM_STATES} from ZeRO 1 "
                         "on); give a tag folder that does")
    return path, tag


def _zero_state(folder: Path, tag: str, meta: bool) -> dict[str, torch.Tensor]:
    """The fp32 weights of DeepSpeed ZeRO checkpoint `folder/tag`, consolidated from every rank's partition by
    DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint` (`module.` / `_orig_mod.` prefixes removed); with `meta`
    their names and shapes only (the tool's lazy mode: nothing is gathered)."""
    import io

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from timm.models import clean_state_dict

    if _is_zero0(folder / tag):
        return clean_state_dict(_zero0_state(folder / tag, meta))
    try:  # the tool prints its progress (and tqdm bars): sparsetrain's load line says what was read
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            state = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag, lazy_mode=meta)
    except Exception as err:  # truncated or missing rank files, another DeepSpeed layout: many types
        raise ValueError(f"model.checkpoint: DeepSpeed's zero_to_fp32 could not read {folder / tag} "
                         f"({_first_line(err)})") from None
    if meta:
        state = {k: torch.empty(tuple(v.shape), dtype=v.dtype, device="meta") for k, v in state.items()}
    return clean_state_dict(state)


def _zero0_state(tag_dir: Path, meta: bool) -> dict[str, torch.Tensor]:
    """The weights of a ZeRO 0 checkpoint's tag folder: the `module` state dict DeepSpeed saved whole in the model
    states file zero_to_fp32's `get_model_state_file` names (`mp_rank_00_model_states.pt`), in the training's dtype;
    with `meta` their names and shapes (the pickle memory-mapped, no weight copied).

    Raises:
        ValueError: `model.checkpoint: ...` when the file cannot be read, or records ZeRO >= 1 (its optimizer
            partitions, the fp32 weights, are missing) or tensor parallelism (a module split over mp ranks).
    """
    from deepspeed.utils.zero_to_fp32 import get_model_state_file

    try:
        states = torch.load(get_model_state_file(str(tag_dir), 0), map_location="cpu", weights_only=False, mmap=meta)
        module = dict(states["module"])
    except Exception as err:  # a missing or truncated file, another layout: many types
        raise ValueError(f"model.checkpoint: DeepSpeed's checkpoint files in {tag_dir} could not be read "
                         f"({_first_line(err)})") from None
    stage = ((states.get("ds_config") or {}).get("zero_optimization") or {}).get("stage", 0)
    if stage:
        raise ValueError(f"model.checkpoint: {tag_dir} is a DeepSpeed ZeRO stage {stage} checkpoint without its "
                         f"optimizer partitions ({_OPTIM_STATES}), which hold the fp32 weights; give the tag folder "
                         "as the training saved it")
    if states.get("mp_world_size", 1) != 1:
        raise ValueError(f"model.checkpoint: {tag_dir} is a DeepSpeed checkpoint of a model split over "
                         f"{states['mp_world_size']} model-parallel ranks; give one consolidated state dict")
    if meta:
        return {k: torch.empty(tuple(v.shape), dtype=v.dtype, device="meta") for k, v in module.items()}
    return module


def _zero_rank_file(path: Path) -> str | None:
    """Why one rank's file of a DeepSpeed ZeRO checkpoint is not weights, with the folder to give; None for other
    files."""
    tag = path.parent
    if not any(path.match(pattern) for pattern in _ZERO_FILES) or not _has_zero_files(tag):
        return None
    latest = tag.parent / "latest"
    given = tag.parent if latest.is_file() and latest.read_text().strip() == tag.name else tag
    how = ("the module DeepSpeed saved whole is read from it" if _is_zero0(tag) else
           "the weights of every rank are consolidated with DeepSpeed's zero_to_fp32")
    return f"is one rank's file of a DeepSpeed ZeRO checkpoint; give the folder ({given}): {how}"


def _is_text(path: Path) -> bool:
    """Whether the file's first KiB is UTF-8 text without NUL bytes (every pickle, zip or safetensors file has some)."""
    with path.open("rb") as f:
        head = f.read(1024)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in head


def _load_error(path: Path, err: BaseException) -> str:
    """Why a checkpoint file could not be read, in words a user can act on."""
    if path.stat().st_size == 0:
        return f"model.checkpoint: {path} is empty (0 bytes); was it written completely?"
    if _is_text(path):
        return (f"model.checkpoint: {path} is a text file, not a safetensors file or torch checkpoint (state dict, "
                ".pth/.pt/.bin)")
    if "weights_only" in str(err) and "Unsupported global" in str(err):  # torch.save(model): a pickled module
        return (f"model.checkpoint: {path} holds pickled Python objects (e.g. torch.save(model)), which are not "
                "loaded (torch.load weights_only=True runs no code from the file); save model.state_dict() instead")
    return f"model.checkpoint: {path} is not a safetensors file or torch checkpoint ({_first_line(err)})"


def _safetensors_kind(path: Path) -> str | None:
    """'bitmask' or 'masks' for those sparsetrain safetensors files, None for others (or unreadable ones)."""
    from safetensors import SafetensorError, safe_open

    from sparsetrain.deploy.bitmask import MASK, VALUES
    from sparsetrain.pruning.sharded_masks import FORMAT

    try:
        with safe_open(str(path), framework="pt") as f:
            meta, keys = f.metadata() or {}, list(f.keys())
    except (SafetensorError, OSError, ValueError):
        return None
    if meta.get("format") == FORMAT:
        return "masks"
    return "bitmask" if any(k.endswith((MASK, VALUES)) for k in keys) else None


def _not_weights(path: Path) -> str | None:
    """Why a file of a sparsetrain export or run is not model weights, with the file to give instead; None for
    other files."""
    from sparsetrain.deploy.program import ONNX_FILE, PROGRAM_FILE
    from sparsetrain.structural.serialize import WEIGHTS_FILE

    export = f"give the export folder ({path.parent}) or {path.parent / WEIGHTS_FILE}"
    if path.suffix == ".onnx" or path.name == ONNX_FILE:
        return f"is an ONNX model, not a weights file; {export}"
    if path.suffix == ".pt2" or path.name == PROGRAM_FILE:
        return f"is a torch.export program, not a weights file; {export}"
    kind = _safetensors_kind(path) if path.suffix == ".safetensors" else None
    if kind == "bitmask":
        return f"is a bitmask export file (packed masks and non-zero values), not plain weights; {export}"
    if kind == "masks":
        run = path.parent.parent
        return (f"is a pruning mask file (keep-masks only, no weights); give the run's export folder "
                f"({run / 'export'}) or {path.parent / '<phase>.safetensors'} (e.g. finetune.safetensors)")
    return None


def _allowed_globals() -> list:
    """The non-tensor globals a training checkpoint may hold that `torch.load(weights_only=True)` is allowed to
    rebuild: `argparse.Namespace` (the `args` timm's and torchvision's scripts save), numpy scalars (`np.float64`:
    `multiarray.scalar` + its dtype class), arrays (`multiarray._reconstruct`, `np.ndarray`) and their dtypes
    (`np.dtype`, every `np.dtypes.*DType`). None of them runs code from the file."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 / numpy 1
    dtypes = [getattr(np.dtypes, name) for name in np.dtypes.__all__] if hasattr(np, "dtypes") else []
    return [argparse.Namespace, multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


def _tensors(path: Path, use_ema: bool, meta: bool) -> dict[str, torch.Tensor]:
    """The file's state dict as timm's `load_state_dict` picks and cleans it; with `meta` on the meta device (torch
    reads no storage for it; safetensors cannot load to meta, so its header gives the shapes)."""
    from timm.models import clean_state_dict, load_state_dict

    try:
        if meta and path.suffix == ".safetensors":
            state = clean_state_dict(_header_tensors(path))
        else:
            with quiet_timm_loading(), torch.serialization.safe_globals(_allowed_globals()):
                state = load_state_dict(str(path), use_ema=use_ema, device="meta" if meta else "cpu",
                                        weights_only=True)
    except Exception as err:  # torch.load and safetensors raise many types on foreign or truncated files
        raise ValueError(_load_error(path, err)) from None
    if not isinstance(state, dict):
        raise ValueError(f"model.checkpoint: {path} holds a {type(state).__name__}, expected a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and k not in _AVERAGED_MODEL_KEYS}


def _header_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors as meta tensors of the same names and shapes, from its header alone."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {key: torch.empty(f.get_slice(key).get_shape(), device="meta") for key in f.keys()}


def _check_ema(path: Path) -> None:
    """With `model.checkpoint_ema`, a checkpoint without EMA weights is refused: timm's load_state_dict would quietly
    take its `state_dict` / `model` instead.

    Raises:
        ValueError: `model.checkpoint_ema: ...` naming the keys the file has.
    """
    if path.is_dir() or path.suffix == ".safetensors":
        raise ValueError(f"model.checkpoint_ema: {path} holds one set of weights, no EMA weights (those come from a "
                         f"training checkpoint's {' or '.join(_EMA_KEYS)}); leave model.checkpoint_ema unset")
    with torch.serialization.safe_globals(_allowed_globals()):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    if not isinstance(checkpoint, dict) or any(checkpoint.get(key) is not None for key in _EMA_KEYS):
        return
    keys = [str(k) for k in checkpoint]
    if all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        what = f"is a plain state dict ({_show(keys)})"
    else:
        more = ", ..." if len(keys) > _KEYS_SHOWN else ""
        what = f"has no {' or '.join(_EMA_KEYS)} (its keys: {', '.join(keys[:_KEYS_SHOWN])}{more})"
    raise ValueError(f"model.checkpoint_ema: {path} {what}, no EMA weights; leave model.checkpoint_ema unset to "
                     "load its weights")


def _is_zip(path: Path) -> bool:
    """Whether torch.save's zip format (which torch.load can memory-map), not the legacy pickle format."""
    import zipfile

    return zipfile.is_zipfile(path)


def _export_state(folder: Path, meta: bool = False) -> dict[str, torch.Tensor]:
    """The weights of an export folder (its model.safetensors); with `meta` their names and shapes only."""
    from safetensors.torch import load_file

    from sparsetrain.structural.serialize import ARCH_FILE, WEIGHTS_FILE

    if not (folder / ARCH_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise ValueError(f"model.checkpoint: {folder} is a folder but neither a sparsetrain export ({ARCH_FILE} and "
                         f"{WEIGHTS_FILE}), a run directory with a finished phase (state.json and "
                         "weights/<phase>.safetensors) nor a DeepSpeed checkpoint (latest, or a global_stepN "
                         "folder with *_model_states.pt, and *_optim_states.pt from ZeRO 1 on)")
    return _header_tensors(folder / WEIGHTS_FILE) if meta else load_file(str(folder / WEIGHTS_FILE))


def export_architecture(path: str | Path) -> dict | None:
    """The `architecture.json` of an export folder given as checkpoint, None for checkpoint files."""
    from sparsetrain.structural.serialize import ARCH_FILE

    arch_file = resolve(path) / ARCH_FILE
    return json.loads(arch_file.read_text()) if arch_file.is_file() else None


def classifier_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the model's classifier (timm's `get_classifier()`), empty when it has none."""
    if not hasattr(model, "get_classifier"):
        return []
    head = model.get_classifier()
    prefix = next((name for name, m in model.named_modules() if m is head and name), None)
    if prefix is None:
        return []
    return [k for k in model.state_dict() if k.startswith(f"{prefix}.")]


def _show(keys: list[str], what: str = "key") -> str:
    more = ", ..." if len(keys) > _SHOWN else ""
    return f"{len(keys)} {what}{'s' if len(keys) != 1 else ''} ({', '.join(keys[:_SHOWN])}{more})"


def source_model_name(path: str | Path) -> str | None:
    """The timm model name a sparsetrain export or run recorded for the weights at `path`, None when unknown.

    Looks at the export's `architecture.json` (a run directory, an export folder, or a file inside one), then for a
    file at the `config.yaml` (`model.name`) of the run directory it lies in (next to `state.json`, at most
    `_RUN_DEPTH` levels up, e.g. `<run>/weights/finetune.safetensors`).
    """
    from sparsetrain.structural.serialize import ARCH_FILE

    path = resolve(path)
    folder = path if path.is_dir() else path.parent
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return json.loads((folder / ARCH_FILE).read_text())["model_name"]
    run = checkpoint_run(path)
    if run is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            return yaml.safe_load((run / "config.yaml").read_text())["model"]["name"]
    return None


def checkpoint_run(path: str | Path) -> Path | None:
    """The run directory a weights file or DeepSpeed checkpoint folder lies in (a folder holding `config.yaml` and
    `state.json`, at most `_RUN_DEPTH` levels up, e.g. `<run>/weights/dense.safetensors`, `<run>/checkpoints` or its
    tag folder `<run>/checkpoints/finetune-step0000042`), as `path` spells it (relative stays relative); None for
    another folder (a run directory, an export) or a file outside a run."""
    path = Path(path)
    if path.is_dir() and not _is_zero_folder(path):
        return None
    return next((run for run in list(path.parents)[:_RUN_DEPTH]
                 if (run / "config.yaml").is_file() and (run / "state.json").is_file()), None)


def check_checkpoint_source(cfg: ModelConfig) -> None:
    """What can be known of `cfg.checkpoint` without reading its tensors: that it exists, and that the run or export
    it comes from holds a `cfg.name` model (`source_model_name`).

    Raises:
        ValueError: `model.checkpoint: file or export folder not found: PATH`, or `model.checkpoint: PATH holds a
            NAME model; set model.name=NAME ...`.
    """
    path = resolve(cfg.checkpoint)
    if not path.exists():
        raise ValueError(f"model.checkpoint: file or export folder not found: {path}"
                         + (f"; {note}" if (note := pruned_folder_note(path)) else ""))
    _check_source_model(cfg)


def _check_source_model(cfg: ModelConfig) -> None:
    """Name the model the checkpoint holds when its run or export says it is not `model.name`."""
    theirs = source_model_name(cfg.checkpoint)
    if theirs and theirs != cfg.name:
        raise CheckpointMismatch(f"model.checkpoint: {cfg.checkpoint} holds a {theirs} model; set "
                                 f"model.name={theirs} (the config has {cfg.name})")


def _mismatch(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> tuple[list, list, list]:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    return missing, unexpected, wrong


def _check_head(cfg: ModelConfig, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                wrong: list[str], head: list[str], data_classes: int | None = None) -> None:
    """A mismatch confined to the classifier means the class counts differ: name the checkpoint's, the model's and
    the data's (`data_classes`, where known), and the fix that keeps a trained classifier when one fits.

    Raises:
        CheckpointMismatch: `model.kwargs.num_classes: ...` when that setting is what sizes the model's outputs
            (leave it out when the checkpoint has the data's classes), else `model.reset_head: ...`.
    """
    if not wrong or not set(wrong) <= set(head):
        return
    weight = next((k for k in head if k.endswith("weight")), wrong[0])
    ours, theirs = expected[weight].shape[0], state[weight].shape[0]
    held = f"{cfg.checkpoint} has {theirs} classes ({weight} {tuple(state[weight].shape)})"
    reset = "set model.reset_head=true to re-initialize the classifier"
    if "num_classes" not in cfg.kwargs:
        raise CheckpointMismatch(f"model.reset_head: {held}, the data {ours}; {reset}")
    outputs = f"model.kwargs.num_classes: {ours} model outputs"
    if data_classes is None:
        raise CheckpointMismatch(f"{outputs}, but {held}: leave model.kwargs.num_classes out if the data has {theirs} "
                                 f"classes (the checkpoint's classifier is then kept), else {reset}")
    if data_classes == theirs:
        raise CheckpointMismatch(f"{outputs}, but the data has {data_classes} classes and {held}: leave "
                                 "model.kwargs.num_classes out (the trained classifier is then kept)")
    raise CheckpointMismatch(f"{outputs}, the data has {data_classes} classes and {held}; {reset} (with "
                             f"model.kwargs.num_classes left out it gets the data's {data_classes} outputs)")


def _warn_discarded_head(cfg: ModelConfig, state: dict[str, torch.Tensor], head: list[str],
                         data_classes: int | None) -> None:
    """One warning when `model.reset_head` re-initializes a checkpoint classifier that has the data's classes (it
    would have loaded with model.kwargs.num_classes left out): the trained classifier is thrown away."""
    weight = next((k for k in head if k.endswith("weight") and k in state), None)
    if weight is None or data_classes is None or state[weight].shape[0] != data_classes:
        return
    outputs = cfg.kwargs.get("num_classes", data_classes)
    via = " (model.kwargs.num_classes)" if "num_classes" in cfg.kwargs else ""
    log.warning(f"model.reset_head: {cfg.checkpoint}'s classifier ({weight} {tuple(state[weight].shape)}) has the "
                f"data's {data_classes} classes but is re-initialized for {outputs} outputs{via}: its training is "
                f"discarded; leave model.reset_head{' and model.kwargs.num_classes' if via else ''} out to keep it")


def load_into(model: nn.Module, state: dict[str, torch.Tensor], cfg: ModelConfig) -> list[str]:
    """Load `state` strictly into `model`, keeping the model's fresh classifier when `cfg.reset_head`.

    Returns:
        The keys of `state` that were not loaded: the checkpoint's classifier with `cfg.reset_head`, else none.

    Raises:
        CheckpointMismatch: see `check_state`.
    """
    reset = check_state(model, state, cfg)
    model.load_state_dict({k: v for k, v in state.items() if k not in reset}, strict=not cfg.reset_head)
    return reset


def check_state(model: nn.Module, state: dict[str, torch.Tensor], cfg: ModelConfig,
                data_classes: int | None = None) -> list[str]:
    """Whether `state` fits `model` key for key and shape for shape (either may be on the meta device: only names
    and shapes are compared), the classifier left out with `cfg.reset_head`; `data_classes` (the data's own class
    count, where known) names the fix of a classifier mismatch (`_check_head`).

    Returns:
        The keys of `state` not to load: the checkpoint's classifier with `cfg.reset_head`, else none.

    Raises:
        CheckpointMismatch: the checkpoint's run or export names another model (`source_model_name`); else
            missing / unexpected / wrong-shape keys (counts and the first few of each, each shape labelled as the
            checkpoint's or the model's, with a `data.in_chans` hint when the stem's input channels differ), or
            classes differ without `model.reset_head`.
    """
    expected = model.state_dict()
    head = classifier_keys(model)
    if cfg.reset_head:
        if not head:
            raise CheckpointMismatch(f"model.reset_head: {cfg.name} has no classifier (timm get_classifier) to reset")
        state = {k: v for k, v in state.items() if k not in head}
        expected = {k: v for k, v in expected.items() if k not in head}
    missing, unexpected, wrong = _mismatch(state, expected)
    if not missing and not unexpected:
        _check_head(cfg, state, expected, wrong, head, data_classes)
    if missing or unexpected or wrong:
        _check_source_model(cfg)
        parts = [f"{label} {_show(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected))
                 if keys]
        if wrong:
            parts.append("wrong shape in " + _show([f"{k}: checkpoint {tuple(state[k].shape)}, model "
                                                    f"{tuple(expected[k].shape)}" for k in wrong], "tensor"))
        hint = _in_chans_hint(state, expected, wrong)
        raise CheckpointMismatch(f"model.checkpoint: {cfg.checkpoint} does not fit {cfg.name}: {'; '.join(parts)}"
                                 f"{hint}")
    return head if cfg.reset_head else []


def _in_chans_hint(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], wrong: list[str]) -> str:
    """When the model's first convolution (its stem) differs from the checkpoint's only in input channels, say that
    the model's input channels are the data's and how to change them (`data.in_chans`); else ''."""
    stem = next((k for k, v in expected.items() if k.endswith("weight") and v.dim() >= 3), None)
    if stem not in wrong:
        return ""
    theirs, ours = state[stem].shape, expected[stem].shape
    if theirs.numel() == 0 or theirs[:1] + theirs[2:] != ours[:1] + ours[2:]:
        return ""
    return (f"; the checkpoint's stem ({stem}) takes {theirs[1]} input channel{'s' if theirs[1] != 1 else ''}, "
            f"the model {ours[1]} (the data's channels; imagefolder reads images as RGB unless data.in_chans=1): "
            f"set data.in_chans={theirs[1]}")


def _reset_note(model: nn.Module, head: list[str]) -> str:
    """`; classifier re-initialized (model.reset_head): head.fc.weight (27, 512), head.fc.bias (27,)`, or '' when no
    key was reset."""
    if not head:
        return ""
    shapes = model.state_dict()
    return f"; classifier re-initialized (model.reset_head): {', '.join(f'{k} {tuple(shapes[k].shape)}' for k in head)}"


def apply_checkpoint(model: nn.Module, cfg: ModelConfig, *, announce: bool = True) -> nn.Module:
    """`model` with the weights of `cfg.checkpoint`; a structurally pruned export gives its own smaller model.

    Args:
        model: The freshly created timm model (its classifier sized for the data).
        cfg: The model section; `checkpoint` must be set.
        announce: Log which file was read (and warn when it is an unfinished run's); False for a repeated build.

    Returns:
        The model holding the checkpoint's weights (the same object, unless the export is structurally pruned).
    """
    if announce:
        _note_unfinished_run(cfg.checkpoint)
    if _is_pruned_export(cfg):
        _check_pruned_export(model, cfg)
        pruned = _load_pruned(cfg)
        _check_finite(pruned.state_dict(), cfg)
        if announce:
            log.info(f"model.checkpoint: loaded the structurally pruned {cfg.name} "
                     f"({sum(p.numel() for p in pruned.parameters()):,} parameters) from {_source(cfg.checkpoint)}")
        return pruned
    state = read_state_dict(cfg.checkpoint, cfg.checkpoint_ema)
    reset = load_into(model, state, cfg)
    _check_finite({k: t for k, t in state.items() if k not in reset}, cfg)
    if announce:
        loaded = [t for k, t in state.items() if k not in reset]
        count = f"{len(loaded)} of its {len(state)}" if reset else f"{len(state)}"
        log.info(f"model.checkpoint: loaded {count} tensors ({sum(t.numel() for t in loaded):,} values"
                 f"{', EMA weights' if cfg.checkpoint_ema else ''}) from {_source(cfg.checkpoint)} into {cfg.name}"
                 f"{_reset_note(model, reset)}")
    return model


def _check_finite(state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """The weights read from `cfg.checkpoint` must be finite: a NaN there reached training unnoticed until the weights
    were handed on, then blamed on the phase (`the dense phase diverged: lower optim.lr`) when none had taken a step.

    Raises:
        NonFiniteError: one line naming the file and the tensors holding NaN or inf (exit 4, as NaN/inf in the data).
    """
    from sparsetrain.engine.finite import require_finite

    require_finite(state, f"the weights of {_source(cfg.checkpoint)}", "model.checkpoint holds NaN or inf: give "
                   "one saved before the weights diverged (a run's last good checkpoint, weights/<phase>.safetensors)")


def check_checkpoint(model: nn.Module, cfg: ModelConfig, data_classes: int | None = None) -> None:
    """Whether `cfg.checkpoint` fits `model` (the run's model on the meta device will do), from the checkpoint's
    tensor names and shapes alone: the checks of `apply_checkpoint`, with its one-line refusals, before anything of
    the run is written. `data_classes`: the data's own class count where known (`_check_head`); with it a
    `model.reset_head` that discards a classifier having the data's classes is warned about.

    Raises:
        ValueError: one line naming `model.checkpoint`, `model.checkpoint_ema`, `model.reset_head` or
            `model.kwargs.num_classes`.
    """
    check_checkpoint_source(cfg)
    if _is_pruned_export(cfg):
        _check_pruned_export(model, cfg, data_classes)
        return
    state = read_state_dict(cfg.checkpoint, cfg.checkpoint_ema, meta=True)
    reset = check_state(model, state, cfg, data_classes)
    _warn_discarded_head(cfg, state, reset, data_classes)


def _is_pruned_export(cfg: ModelConfig) -> bool:
    """Whether `cfg.checkpoint` is a structurally pruned export (its `architecture.json` lists changed modules)."""
    return bool((export_architecture(cfg.checkpoint) or {}).get("modules"))


def _source(path: str | Path) -> str:
    """The checkpoint as given, with the file read when it is a folder: `RUN (export/model.safetensors)`,
    `RUN (weights/finetune.safetensors, its last finished phase)`, `EXPORT (model.safetensors)`, `DIR (DeepSpeed ZeRO
    checkpoint global_step1, consolidated by DeepSpeed's zero_to_fp32)`."""
    from sparsetrain.structural.serialize import WEIGHTS_FILE

    given, used = Path(path).expanduser(), resolve(path)
    if used == given and not given.is_dir():
        return str(path)
    zero = zero_checkpoint(used) if used.is_dir() else None
    if zero and _is_zero0(zero[0] / zero[1]):
        return f"{path} (DeepSpeed ZeRO 0 checkpoint {zero[1]}, the module DeepSpeed saved whole)"
    if zero:
        return f"{path} (DeepSpeed ZeRO checkpoint {zero[1]}, consolidated by DeepSpeed's zero_to_fp32)"
    file = used / WEIGHTS_FILE if (used / WEIGHTS_FILE).is_file() else used
    last = "" if used in (given, given / "export") else ", its last finished phase"
    return f"{path} ({file.relative_to(given)}{last})"


def _note_unfinished_run(path: str | Path) -> None:
    """One line when `path` is a run directory whose final phase has not finished: which phase's weights are taken
    (its export's, or the last finished phase's) and the files of its other finished phases, to give instead."""
    from sparsetrain.engine.checkpoint import read_run_state
    from sparsetrain.rundir import unfinished_phases

    run = Path(path).expanduser()
    state = read_run_state(run) if run.is_dir() else None
    unfinished = unfinished_phases(run, state) if state is not None else None
    used = resolve(run)
    if unfinished is None or used == run:
        return
    last, final = unfinished
    taken = (export_architecture(run) or {}).get("meta", {}).get("phase") if used.name == "export" else last
    completed = state["completed"]
    others = [str(file) for phase in PHASES
              if phase in completed and phase != taken and (file := _phase_weights(run, phase))]
    instead = f"; to start from another finished phase give {' or '.join(others)}" if others else ""
    log.warning(f"model.checkpoint: {run} is an unfinished run (its final phase {final} has not finished; last "
                f"finished: {last}): taking the {taken} phase's weights ({used.relative_to(run)}){instead}")


def _check_pruned_export(model: nn.Module, cfg: ModelConfig, data_classes: int | None = None) -> None:
    """A structurally pruned export is its own architecture: it must hold a `cfg.name` model whose classifier has
    the data's classes (`model`'s), from its weights' names and shapes."""
    path = resolve(cfg.checkpoint)
    if cfg.checkpoint_ema:
        _check_ema(path)
    _check_source_model(cfg)
    if cfg.reset_head:
        raise CheckpointMismatch("model.reset_head: not supported for a structurally pruned export (its classifier "
                                 "input is pruned); start from the unpruned weights")
    ours, theirs = model.state_dict(), _export_state(path, meta=True)
    head = [k for k in classifier_keys(model) if k in theirs]
    _check_head(cfg, theirs, ours, [k for k in head if theirs[k].shape[0] != ours[k].shape[0]], head, data_classes)


def _load_pruned(cfg: ModelConfig) -> nn.Module:
    """The structurally pruned model of the export `cfg.checkpoint`, in training mode."""
    from sparsetrain.structural.serialize import load_pruned_model

    return load_pruned_model(resolve(cfg.checkpoint)).train()


def architecture_only(cfg: ModelConfig) -> ModelConfig:
    """`cfg` without the checkpoint's weights, for models whose weights come from elsewhere (a phase's file).

    A structurally pruned export stays: it defines the (smaller) architecture itself.
    """
    if not cfg.checkpoint or (export_architecture(cfg.checkpoint) or {}).get("modules"):
        return cfg
    return cfg.model_copy(update={"checkpoint": None, "reset_head": False, "checkpoint_ema": False})
