"""Save a structurally pruned timm model so that it loads without the original config.

Layout of the output folder:
- `architecture.json`: format tag, timm model name and `create_model` kwargs, the caller's extra metadata, and
  for every module whose tensors or width attributes differ from the freshly created model: its class, the
  attributes its layer rule records (`in_channels`, `groups`, `num_heads`, ...; see `rules/`) and the shape of
  each of its tensors (a bias added by folding constants included).
- `model.safetensors`: the state dict.

`load_pruned_model` recreates the timm model, shrinks the recorded modules in place (same class, attributes set by
the layer rule's `rebuild`, empty tensors of the recorded shapes) and loads the weights strictly, so a missing or
extra tensor is an error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from sparsetrain.model_imports import import_for_arch
from sparsetrain.structural.rules import rule_for
from sparsetrain.structural.types import StructuralPruningError

__all__ = ["ARCH_FILE", "WEIGHTS_FILE", "load_pruned_model", "save_pruned_model"]

ARCH_FILE = "architecture.json"
WEIGHTS_FILE = "model.safetensors"
_FORMAT = "sparsetrain-compressed/1"
def save_pruned_model(model: nn.Module, out_dir: str | Path, *, meta: dict[str, Any]) -> Path:
    """Write `model` (a possibly pruned timm model) to `out_dir`.

    Args:
        model: A model created by `timm.create_model(meta["model_name"], **meta["model_kwargs"])`, possibly
            passed through `remove_channels`.
        out_dir: Folder to create (or overwrite files in).
        meta: Must hold "model_name" (str) and "model_kwargs" (JSON-serializable dict); other JSON-serializable
            entries (metrics, sparsity, run id) are stored alongside.

    Returns:
        `out_dir` as a Path.

    Raises:
        ValueError: `meta` lacks the timm name/kwargs or is not JSON-serializable.
        StructuralPruningError: `model` differs from the timm model in more than tensor shapes.
    """
    name, kwargs = _check_meta(meta)
    with torch.device("meta"):  # shapes only: skips weight init, which dominates for large models
        reference = _create(name, kwargs)
    changed = _changed_modules(model, reference)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = next((str(p.dtype).removeprefix("torch.") for p in model.parameters()), "float32")
    arch = {"format": _FORMAT, "model_name": name, "model_kwargs": kwargs, "dtype": dtype, "modules": changed,
            "meta": {k: v for k, v in meta.items() if k not in ("model_name", "model_kwargs")}}
    (out / ARCH_FILE).write_text(json.dumps(arch, indent=1))
    save_model(model, str(out / WEIGHTS_FILE))
    return out


def load_pruned_model(path: str | Path) -> nn.Module:
    """Rebuild a model saved by `save_pruned_model`.

    Args:
        path: The folder written by `save_pruned_model` (or any file inside it).

    Returns:
        The model, in eval mode, ready for `model(x)`.
    """
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    arch = json.loads((folder / ARCH_FILE).read_text())
    if arch.get("format") != _FORMAT:
        raise ValueError(f"{folder / ARCH_FILE}: format {arch.get('format')!r}, expected {_FORMAT!r}")
    import_for_arch(arch)  # a user's own model: the modules of its run's model.imports
    model = _create_empty(arch["model_name"], arch["model_kwargs"]).to(getattr(torch, arch["dtype"]))
    for module_name, spec in arch["modules"].items():
        _shrink(module_name, model.get_submodule(module_name), spec)
    missing, unexpected = load_model(model, str(folder / WEIGHTS_FILE), strict=True)
    if missing or unexpected:  # strict load raises; kept for older safetensors that only report
        raise StructuralPruningError(f"{folder}: missing tensors {missing}, unexpected tensors {unexpected}")
    return model.eval()


def _create(name: str, kwargs: dict[str, Any]) -> nn.Module:
    if not timm.is_model(name):
        import sparsetrain.models  # noqa: F401  (registers the project's own timm models: unet, lenet, ...)
    return timm.create_model(name, pretrained=False, **kwargs)


def create_on_meta(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The timm model `name` with its tensors on the meta device (shapes and dtypes only, no memory, no init)."""
    with torch.device("meta"):
        return _create(name, kwargs)


def _create_empty(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The timm model with uninitialized tensors when the weights file will overwrite all of them."""
    with torch.device("meta"):
        model = _create(name, kwargs)
    if any(m._non_persistent_buffers_set for m in model.modules()):
        return _create(name, kwargs)  # such buffers (index tables, masks) are computed at init, not saved
    return model.to_empty(device="cpu")


def _check_meta(meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name, kwargs = meta.get("model_name"), meta.get("model_kwargs", {})
    if not isinstance(name, str) or not name:
        raise ValueError(f"meta['model_name']: expected the timm model name, got {name!r}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"meta['model_kwargs']: expected a dict of timm.create_model kwargs, got {kwargs!r}")
    if kwargs.get("pretrained"):
        raise ValueError("meta['model_kwargs']: 'pretrained' must not be set; the weights are saved with the model")
    try:
        json.dumps(meta)
    except TypeError as err:
        raise ValueError(f"meta: every value must be JSON-serializable ({err})") from err
    return name, kwargs


def _module_tensors(m: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(m.named_parameters(recurse=False)), **dict(m.named_buffers(recurse=False))}


def _attributes(m: nn.Module) -> dict[str, Any]:
    rule = rule_for(m)
    return rule.attributes(m) if rule is not None else {}


def _changed_modules(model: nn.Module, reference: nn.Module) -> dict[str, dict[str, Any]]:
    """Describe each module of `model` whose own tensors or rule attributes differ from `reference`'s."""
    ours, theirs = dict(model.named_modules()), dict(reference.named_modules())
    if ours.keys() != theirs.keys():
        extra = sorted(ours.keys() ^ theirs.keys())[:5]
        raise StructuralPruningError(f"model modules differ from the timm model beyond shapes, e.g. {extra}")
    changed = {}
    for name, m in ours.items():
        if type(m) is not type(theirs[name]):
            raise StructuralPruningError(f"'{name}': {type(m).__name__} here, {type(theirs[name]).__name__} in timm")
        tensors, ref = _module_tensors(m), _module_tensors(theirs[name])
        added = {k for k in tensors.keys() - ref.keys() if k in theirs[name]._parameters}  # e.g. a folded bias
        if tensors.keys() - added != ref.keys():
            raise StructuralPruningError(f"'{name}': tensors {sorted(tensors)} differ from timm's {sorted(ref)}")
        shapes_differ = any(t.shape != ref[k].shape for k, t in tensors.items() if k in ref)
        if added or shapes_differ or _attributes(m) != _attributes(theirs[name]):
            changed[name] = {"type": f"{type(m).__module__}.{type(m).__qualname__}",
                             "args": {k: _jsonable(v) for k, v in _attributes(m).items()},
                             "tensors": {k: list(t.shape) for k, t in tensors.items()}}
    return changed


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _shrink(name: str, m: nn.Module, spec: dict[str, Any]) -> None:
    """Give `m` the recorded attributes (through its layer rule) and empty tensors of the recorded shapes."""
    type_name = f"{type(m).__module__}.{type(m).__qualname__}"
    if type_name != spec["type"]:
        raise StructuralPruningError(f"'{name}': saved as {spec['type']}, timm builds {type_name}")
    rule = rule_for(m)
    if rule is not None:
        rule.rebuild(name, m, spec["args"])
    own = _module_tensors(m)
    like = next(iter(own.values()), None)
    for tensor_name, shape in spec["tensors"].items():
        old = own.get(tensor_name)
        if old is None and tensor_name not in m._parameters:
            raise StructuralPruningError(f"'{name}': saved with tensor '{tensor_name}', which timm's module lacks")
        if old is not None and list(old.shape) == shape:
            continue  # loaded from the weights file, or a non-persistent buffer timm computed (LeViT's bias index)
        if tensor_name in m._non_persistent_buffers_set:
            raise StructuralPruningError(f"'{name}': buffer '{tensor_name}' is not saved and changed shape")
        new = torch.empty(shape, dtype=like.dtype, device=like.device)
        if old is None or isinstance(old, nn.Parameter):  # a parameter added by folding (a bias) is a parameter
            setattr(m, tensor_name, nn.Parameter(new, requires_grad=old is None or old.requires_grad))
        else:
            m._buffers[tensor_name] = new
