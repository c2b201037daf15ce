"""Input sizes of the deployment exports: a segmentation model traced with dynamic height and width, and the record
of which sizes the traced program takes.

A fully convolutional model runs at any image size its architecture allows (UNet with depth N: sides divisible by
2**N), so a segmentation export is traced with `torch.export.Dim`s on the batch, height and width axes. The
constraint the architecture needs is found by torch itself: export first with plain dims (min 2, max
`MAX_SIDE`); when tracing proves a narrower range or a divisibility guard, torch's error suggests fixes (`_height =
Dim('_height', ...); height = 4*_height`, a derived dim) and `refine_dynamic_shapes_from_suggested_fixes` applies
them; a guard torch cannot turn into a fix (MobileNetV3: a 1/16 feature map must not have size 1) is met by
starting from the training size instead of 2. A model that still cannot be traced with dynamic sides (sizes in its
weights or code) is traced as before, H and W fixed, and the record says why (`fixed_because`).

The record (`input_sizes`, in manifest.json and the ONNX metadata `sparsetrain.input_sizes`) names the dynamic
axes and, per axis, either `{"fixed": n}` or `{"multiple_of": A, "offset": B, "min", "max"}`: the sizes A*k + B
within [min, max] (UNet depth 2: multiple_of 4, offset 0).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["BATCH_AXIS", "HEIGHT_AXIS", "MAX_BATCH", "MAX_SIDE", "WIDTH_AXIS", "describe_sizes", "fits",
           "fixed_sizes", "other_size", "trace_any_size"]

MAX_BATCH = 4096  # largest batch a dynamic export is traced for
BATCH_AXIS = "batch"  # name of the ONNX input's and output's dynamic first axis
HEIGHT_AXIS, WIDTH_AXIS = "height", "width"  # names of the ONNX input's and output's dynamic axes 2 and 3
MAX_SIDE = 8192  # largest side a dynamic export is traced for (Cityscapes is 2048 x 1024)
_REFINES = 4  # rounds of torch's suggested fixes per starting range


def trace_any_size(model: nn.Module, example: torch.Tensor) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """`model` (eval mode) exported with dynamic batch, height and width; returns (program, `input_sizes` record).

    Args:
        model: A CPU float32 model taking N x C x H x W.
        example: An input batch (at least 2 samples) at the training size.

    Raises:
        Exception: whatever torch.export raises when no range of sides traces (the caller falls back to
            `program.trace`, fixed H and W).
    """
    from torch._dynamo.exc import UserError
    from torch.export.dynamic_shapes import refine_dynamic_shapes_from_suggested_fixes

    from sparsetrain.structural.rules import export_context

    model.eval()
    height, width = example.shape[-2:]
    error: Exception | None = None
    for start in ((2, 2), (height, width)):  # the smallest sides torch proves; else from the training size up
        spec = _spec(*start)
        for _ in range(_REFINES):
            try:
                with export_context(model):
                    program = torch.export.export(model, (example,), dynamic_shapes=spec)
                return program, input_sizes(program)
            except UserError as err:
                error = err
                if "Suggested fixes:" not in err.msg:
                    break
                spec = refine_dynamic_shapes_from_suggested_fixes(err.msg, spec)
    raise error  # type: ignore[misc]  # the loop ran: error is set


def _spec(min_height: int, min_width: int) -> tuple[dict[int, Any]]:
    """torch.export dynamic_shapes for one N x C x H x W input: batch 1..4096, sides from the given minimum."""
    dim = torch.export.Dim
    return ({0: dim(BATCH_AXIS, min=1, max=MAX_BATCH), 2: dim(HEIGHT_AXIS, min=min_height, max=MAX_SIDE),
             3: dim(WIDTH_AXIS, min=min_width, max=MAX_SIDE)},)


def input_sizes(program: torch.export.ExportedProgram) -> dict[str, Any]:
    """The `input_sizes` record of a program with one N x C x H x W input, read from the input's symbolic shape and
    the program's range constraints. Sides torch specialized (a constant in the shape) are recorded fixed, with why.

    Raises:
        ValueError: width and height are one symbol (square inputs only): the caller traces the fixed size instead.
    """
    name = program.graph_signature.user_inputs[0]
    shape = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name).meta["val"].shape
    axes = {axis: _axis(shape[i], program.range_constraints) for axis, i in
            ((BATCH_AXIS, 0), (HEIGHT_AXIS, 2), (WIDTH_AXIS, 3))}
    if _root(shape[3]) is not None and _root(shape[3]) == _root(shape[2]):
        raise ValueError("torch.export ties width to height (the model's code needs square inputs)")
    fixed = [axis for axis in (HEIGHT_AXIS, WIDTH_AXIS) if "fixed" in axes[axis]]
    return _record(axes, f"torch.export specialized {' and '.join(fixed)} to the training size (the model's "
                         "code or weights depend on it)" if fixed else None)


def example_side(dim: Any) -> int:
    """The size a symbolic dim had in the example it was traced with."""
    return int(dim.node.hint) if isinstance(dim, torch.SymInt) else int(dim)


def _root(dim: Any) -> Any:
    """The one free symbol of a symbolic dim (None for a constant)."""
    if not isinstance(dim, torch.SymInt):
        return None
    symbols = dim.node.expr.free_symbols
    return next(iter(symbols)) if len(symbols) == 1 else None


def _axis(dim: Any, ranges: dict[Any, Any]) -> dict[str, int]:
    """`{"fixed": n}` for a constant; `{"multiple_of": A, "offset": B, "min", "max"}` for a dim A*s + B, s in the
    program's range for s."""
    root = _root(dim)
    if root is None:
        return {"fixed": example_side(dim)}
    expr = dim.node.expr
    step, offset = int(expr.coeff(root)), int(expr.subs(root, 0))
    bounds = ranges[root]
    low, high = int(bounds.lower), (int(bounds.upper) if getattr(bounds.upper, "is_finite", False) else MAX_SIDE)
    return {"multiple_of": step, "offset": offset, "min": step * low + offset, "max": step * high + offset}


def _record(axes: dict[str, dict[str, int]], fixed_because: str | None) -> dict[str, Any]:
    return {"dynamic": [axis for axis, spec in axes.items() if "fixed" not in spec], **axes,
            "fixed_because": fixed_because}


def fixed_sizes(example: torch.Tensor, batch_dynamic: bool, fixed_because: str) -> dict[str, Any]:
    """The `input_sizes` record of a program traced at the example's size (`program.trace`): H and W (4-D inputs)
    fixed, for `fixed_because`."""
    axes: dict[str, dict[str, int]] = {
        BATCH_AXIS: {"multiple_of": 1, "offset": 0, "min": 1, "max": MAX_BATCH} if batch_dynamic else
        {"fixed": int(example.shape[0])}}
    if example.dim() == 4:
        axes.update({HEIGHT_AXIS: {"fixed": int(example.shape[2])}, WIDTH_AXIS: {"fixed": int(example.shape[3])}})
    return _record(axes, fixed_because)


def _axis_text(spec: dict[str, int]) -> str:
    """`fixed at 32`, `any size from 64 to 8192`, `a multiple of 8 from 8 to 8192`, `4k+1 from 9 to 8189`."""
    if "fixed" in spec:
        return f"fixed at {spec['fixed']}"
    step, offset = spec["multiple_of"], spec["offset"]
    kind = "any size" if step == 1 else f"a multiple of {step}" if offset == 0 else f"{step}k{offset:+d}"
    return f"{kind} from {spec['min']} to {spec['max']}"


def describe_sizes(sizes: dict[str, Any]) -> str:
    """The sides a record allows, in words: `height and width a multiple of 8 from 8 to 8192`."""
    if HEIGHT_AXIS not in sizes:
        return "inputs of the training shape"
    height, width = _axis_text(sizes[HEIGHT_AXIS]), _axis_text(sizes[WIDTH_AXIS])
    if height == width:
        return f"height and width {height}"
    return f"height {height}, width {width}"


def _allows(spec: dict[str, int], side: int) -> bool:
    if "fixed" in spec:
        return side == spec["fixed"]
    return spec["min"] <= side <= spec["max"] and (side - spec["offset"]) % spec["multiple_of"] == 0


def fits(sizes: dict[str, Any], height: int, width: int) -> bool:
    """Whether an H x W input is a size the record allows."""
    return _allows(sizes[HEIGHT_AXIS], height) and _allows(sizes[WIDTH_AXIS], width)


def nearest_side(spec: dict[str, int], side: int) -> int:
    """The allowed size closest to `side` (the larger one on a tie), within the axis's range."""
    if "fixed" in spec:
        return spec["fixed"]
    step, offset = spec["multiple_of"], spec["offset"]
    k = math.floor((side - offset) / step + 0.5)
    return min(max(step * k + offset, spec["min"]), spec["max"] - (spec["max"] - offset) % step)


def other_size(sizes: dict[str, Any], height: int, width: int) -> tuple[int, int] | None:
    """A second, larger and non-square size the export is verified at besides the training size: the allowed sizes
    nearest 1.5 H and 2 W (32 x 32, multiple of 4 -> 48 x 64); None when H and W are fixed."""
    if HEIGHT_AXIS not in sizes or HEIGHT_AXIS not in sizes["dynamic"] or WIDTH_AXIS not in sizes["dynamic"]:
        return None
    other = (nearest_side(sizes[HEIGHT_AXIS], math.ceil(1.5 * height)),
             nearest_side(sizes[WIDTH_AXIS], 2 * width))
    return None if other == (height, width) else other
