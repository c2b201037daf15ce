"""`torch.fx` tracing of a model for the channel analysis, with the output shape of every node."""

from __future__ import annotations

import torch
from timm.layers import get_notrace_functions, is_notrace_module
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from sparsetrain.deepspeed_linear import stock_linear
from sparsetrain.structural.rules import is_rule_leaf
from sparsetrain.structural.types import StructuralPruningError

__all__ = ["ModuleTracer", "trace_model"]


class ModuleTracer(fx.Tracer):
    """Traces into timm/user modules; keeps opaque: torch.nn layers, timm's registered no-trace modules and modules
    whose exact type has a layer rule (the rule describes them)."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=tuple(get_notrace_functions()))

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if is_notrace_module(type(m)) or is_rule_leaf(m):
            return True
        containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
        return type(m).__module__.startswith("torch.nn") and not isinstance(m, containers)


def trace_model(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """Symbolically trace `model` and annotate every node with its output shape.

    Args:
        model: The model; traced in eval mode (its training flag is restored afterwards).
        example_input: One input batch; shapes only, its values do not matter.

    Returns:
        A GraphModule sharing the model's submodules, with `node.meta["tensor_meta"]` filled in.

    Raises:
        StructuralPruningError: Tracing failed (data-dependent control flow, unsupported Python construct).
    """
    was_training = model.training
    model.eval()
    try:
        with stock_linear():  # not DeepSpeed ZeRO-3's F.linear, which branches on the traced input
            graph = ModuleTracer().trace(model)
            gm = fx.GraphModule(model, graph)
            with torch.no_grad():
                ShapeProp(gm).propagate(example_input)
    except Exception as err:  # fx raises many types; the caller only needs to know tracing is impossible
        raise StructuralPruningError(f"cannot trace {type(model).__name__} with torch.fx: {err}") from err
    finally:
        model.train(was_training)
    return gm
