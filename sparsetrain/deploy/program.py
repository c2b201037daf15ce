"""Two deployment formats traced from one `torch.export` program: `model.pt2` and `model.onnx`.

The model is traced once with `torch.export.export` (batch dimension dynamic, so one file serves batch 1 and
larger batches; a segmentation model's height and width too, `sizes.trace_any_size`), saved with
`torch.export.save`, and the same program is translated to ONNX by torch's torch.export-based exporter
(`torch.onnx.export(..., dynamo=True)`). Both files hold plain aten / ONNX operators: they load without sparsetrain
(`torch.export.load(path).module()`, `onnxruntime.InferenceSession(path)`).
Unstructured-sparse weights stay dense tensors holding the exact zeros; a structurally pruned model gives the
physically smaller graph.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparsetrain.deploy.sizes import BATCH_AXIS, HEIGHT_AXIS, MAX_BATCH, WIDTH_AXIS

__all__ = ["BATCH_AXIS", "MAX_BATCH", "ONNX_FILE", "PROGRAM_FILE", "onnx_session", "trace", "verify_onnx",
           "verify_program", "write_onnx", "write_program"]

PROGRAM_FILE = "model.pt2"
ONNX_FILE = "model.onnx"
_SINGLE_FILE_LIMIT = 1 << 30  # ONNX protobufs cap at 2 GiB: larger weights go to an external data file


def trace(model: nn.Module, example: torch.Tensor) -> tuple[torch.export.ExportedProgram, bool]:
    """The model (in eval mode) as an exported program; returns (program, batch dimension is dynamic).

    Args:
        model: A CPU float32 model.
        example: An input batch of at least 2 samples (torch.export specializes sizes 0 and 1).
    """
    from sparsetrain.structural.rules import export_context

    model.eval()
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with export_context(model):  # what a layer needs while traced (LeViT: no eval-mode bias cache)
        try:
            return torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), True
        except Exception:  # a model whose code fixes the batch size: a fixed-shape program
            return torch.export.export(model, (example,)), False


def write_program(program: torch.export.ExportedProgram, path: Path) -> Path:
    torch.export.save(program, str(path))
    return path


def write_onnx(program: torch.export.ExportedProgram, example: torch.Tensor, path: Path, opset: int,
               metadata: dict[str, str] | None = None) -> Path:
    """Translate the program to ONNX at `opset` (torch's torch.export-based exporter) and save it to `path`.

    The input's and output's dynamic axes are named `BATCH_AXIS` (axis 0) and, for an N x C x H x W input traced
    with dynamic sides (`sizes.trace_any_size`), `height` and `width` (axes 2 and 3); the exporter names them
    after their symbols, e.g. `s77` and `4*s56`. `metadata` goes into the file's metadata_props (read back by
    onnxruntime's `session.get_modelmeta().custom_metadata_map`). Weights over 1 GiB go to `<path>.data`.
    """
    weight_bytes = sum(t.numel() * t.element_size() for t in program.state_dict.values())
    with _quiet("onnxscript", "onnx_ir", "torch.onnx"):
        onnx_program = torch.onnx.export(program, (example,), dynamo=True, opset_version=opset,
                                         input_names=["input"], output_names=["output"], verbose=False)
    onnx_program.rename_axes(_axis_names(onnx_program.model.graph.inputs[0].shape))
    onnx_program.model.metadata_props.update(metadata or {})
    onnx_program.save(str(path), external_data=weight_bytes > _SINGLE_FILE_LIMIT)
    return path


def _axis_names(shape: Any) -> dict[Any, str]:
    """The ONNX input's symbolic (dynamic) axes -> their names: batch (axis 0), height and width (axes 2 and 3 of
    a 4-D input); the output's axes share the symbols, so they are renamed alike."""

    names = {0: BATCH_AXIS, **({2: HEIGHT_AXIS, 3: WIDTH_AXIS} if len(shape) == 4 else {})}
    return {shape[i]: name for i, name in names.items() if not isinstance(shape[i], int)}


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """The exporter's optimizer logs every pass at INFO; keep the run's log to warnings from it."""
    previous = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


def onnx_session(path: str | Path, threads: int | None = None, profile_prefix: str | None = None):
    """An onnxruntime CPU session (CUDA first when onnxruntime has it) with a fixed intra-op thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.log_severity_level = 3  # errors only
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def _max_abs_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor) -> float:
    a = torch.as_tensor(a)
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


@torch.no_grad()
def verify_program(path: Path, reference: torch.Tensor, example: torch.Tensor) -> float:
    """Max abs difference between the saved program's output and `reference` (the eager model's) on `example`."""
    return _max_abs_diff(torch.export.load(str(path)).module()(example), reference)


def verify_onnx(path: Path, reference: torch.Tensor, example: torch.Tensor) -> float:
    """Max abs difference between onnxruntime's output and `reference` on `example`."""
    session = onnx_session(path)
    output = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
    return _max_abs_diff(output, reference)


def onnx_weight_counts(path: Path) -> dict[str, int]:
    """Elements and exact zeros in the ONNX file's initializers (the weights the graph holds)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=True).graph
    arrays = [numpy_helper.to_array(t) for t in graph.initializer]
    floats = [a for a in arrays if np.issubdtype(a.dtype, np.floating)]
    return {"elements": int(sum(a.size for a in floats)), "zeros": int(sum((a == 0).sum() for a in floats))}
