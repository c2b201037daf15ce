"""The bitmask format (`export/model.bitmask.safetensors`): pruned tensors as a packed bitmask plus the non-zero
values, in safetensors.

For a pruned tensor `w` the file holds `<name>.__mask__` (uint8, numel/8 bytes, numpy bit order "big") and
`<name>.__values__` (the non-zero values in row-major order); its shape is kept in the metadata. Other tensors
are stored dense. Its size on disk is `bytes.bitmask` in the report, and `bytes.compressed` when it is the smaller
of the export's weights files (`storage_bytes`); `load_compressed` rebuilds the model from it with the export's
`architecture.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

MASK, VALUES = ".__mask__", ".__values__"
BITMASK_FILE = "model.bitmask.safetensors"


def _pack(state: dict[str, torch.Tensor], sparse_names: set[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, shapes = {}, {}
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous()
        if name not in sparse_names:
            tensors[name] = t
            continue
        flat = t.flatten()
        nonzero = flat != 0
        tensors[name + MASK] = torch.from_numpy(np.packbits(nonzero.numpy()))
        tensors[name + VALUES] = flat[nonzero].clone()
        shapes[name] = list(t.shape)
    return tensors, {"sparse_shapes": json.dumps(shapes)}


def save_sparse(state: dict[str, torch.Tensor], sparse_names: set[str], path: Path) -> int:
    """Write `state` with the tensors in `sparse_names` bitmask-compressed; returns the file size in bytes."""
    tensors, metadata = _pack(state, sparse_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path.stat().st_size


def sparse_bytes(state: dict[str, torch.Tensor], sparse_names: set[str]) -> int:
    """The size `save_sparse` would write, without writing (safetensors' in-memory serialization)."""
    from safetensors.torch import save

    tensors, metadata = _pack(state, sparse_names)
    return len(save(tensors, metadata=metadata))


def plain_bytes(state: dict[str, torch.Tensor]) -> int:
    """The size of `state` as a plain safetensors file (every tensor whole, zeros included, header counted), as the
    export's `model.safetensors` and the run's `weights/<phase>.safetensors` are written
    (`safetensors.torch.save_model` / `save_file`, a model without shared tensors), without writing: the file is
    serialized in memory (a transient copy of the weights). Tensors on the meta device (an architecture built
    without memory) count as zeros of their shape and dtype; the size does not depend on the values."""
    from safetensors.torch import _remove_duplicate_names, save

    tensors = {k: _on_cpu(v) for k, v in state.items()}
    metadata = {}
    for kept, dropped in _remove_duplicate_names(tensors).items():  # tied weights: stored once, as save_model does
        for name in dropped:
            metadata[name] = kept
            del tensors[name]
    return len(save(tensors, metadata=metadata or None))


def _on_cpu(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_meta:
        return torch.zeros(tensor.shape, dtype=tensor.dtype)
    return tensor.detach().cpu().contiguous()


def storage_bytes(state: dict[str, torch.Tensor], sparse_names: set[str]) -> dict[str, int | str]:
    """The sizes of an export's two weights files for `state`, and which one is the compressed model's size.

    Unstructured zeros make the bitmask file the smaller; a model whose filters were removed physically has no
    zeros to pack, so its plain file is the smaller (the bitmask file then adds a mask bit per weight).

    Returns:
        {"bitmask": size of model.bitmask.safetensors, "safetensors": size of model.safetensors (bytes), "compressed":
        the smaller of the two, "compressed_format": its `load_compressed` format, "bitmask" or "safetensors"}.
    """
    return smallest_file({"bitmask": sparse_bytes(state, sparse_names), "safetensors": plain_bytes(state)})


def smallest_file(sizes: dict[str, int]) -> dict[str, int | str]:
    """`sizes` (format -> bytes of its weights file) with the smallest named the compressed model's size:
    "compressed" (bytes) and "compressed_format" (its format)."""
    smallest = min(sizes, key=sizes.get)
    return {**sizes, "compressed": sizes[smallest], "compressed_format": smallest}


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    """Inverse of `save_sparse`: the dense state dict, with exact zeros restored."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        shapes = json.loads((f.metadata() or {}).get("sparse_shapes", "{}"))
    raw = load_file(str(path))
    state = {k: v for k, v in raw.items() if not k.endswith((MASK, VALUES))}
    for name, shape in shapes.items():
        values = raw[name + VALUES]
        numel = int(np.prod(shape))
        bits = np.unpackbits(raw[name + MASK].numpy(), count=numel).astype(bool)
        dense = torch.zeros(numel, dtype=values.dtype)
        dense[torch.from_numpy(bits)] = values
        state[name] = dense.view(shape)
    return state
