"""Channel groups of a convnet: which parameter slices must shrink together when filters are removed.

Vocabulary (kept across `sparsetrain.structural`):
- A *channel group* is a set of channels that are the same channels everywhere they appear: a conv's output
  channels, the BN that normalizes them, the depthwise conv that filters them, every tensor added to them in a
  residual sum, the SE gate that multiplies them. Removing channel i of a group removes it everywhere at once.
- *Producers* are parameter slices indexed by the group's channel on their output side (conv/linear weight rows,
  biases, BN affine parameters and running stats, layer-scale vectors). *Consumers* are the input-side slices of
  the convs/linears that read the group (weight columns, shifted by the group's offset inside a concatenation).
- *Zeroing* (masking) sets a channel's producer slices to zero; *removing* rebuilds the modules without it.

The graph comes from `torch.fx` symbolic tracing of the plain model (timm's registered no-trace modules and
functions stay opaque), shapes from one forward pass on `example_input`; `_analysis.ChannelAnalyzer` does the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from timm.layers import get_notrace_functions, is_notrace_module
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from sparsetrain.errors import InputError

__all__ = [
    "ChannelGroup",
    "ChannelSlice",
    "StructuralPruningError",
    "build_channel_groups",
    "producer_weights",
    "producer_weights_by_group",
    "trace_model",
]


class StructuralPruningError(InputError, RuntimeError):
    """A model, layer or channel group that structural pruning cannot handle exactly."""


@dataclass(frozen=True)
class ChannelSlice:
    """The part of one parameter (or buffer) that a channel group indexes.

    Channel `c` of the group owns positions `offset + c * expand + j` (`0 <= j < expand`) along `dim` of
    `module.param`; `expand > 1` only after a flatten merged the channel with spatial positions.

    Attributes:
        module: Qualified module name ("" for the root module).
        param: Attribute name of the tensor on that module ("weight", "bias", "running_mean", "gamma").
        dim: Dimension of the tensor indexed by the channel.
        offset: First position of this group along `dim` (non-zero for consumers of a concatenation).
        expand: Consecutive positions per channel.
        kind: "filter" (conv/linear weight, output side), "bias", "norm" (BN/affine scale and shift),
            "stat" (running statistics, divisors: sliced on removal, never zeroed), "scale" (an elementwise
            parameter such as layer scale) or "input" (consumer weight columns).
    """

    module: str
    param: str
    dim: int
    offset: int = 0
    expand: int = 1
    kind: str = "filter"

    @property
    def qualname(self) -> str:
        """Dotted name of the tensor, as in `model.state_dict()`."""
        return f"{self.module}.{self.param}" if self.module else self.param


@dataclass
class ChannelGroup:
    """Channels that must be kept or removed together.

    Attributes:
        id: Stable name: the first module (in graph order) whose filters produce the group, else a node name.
        num_channels: Channels in the group.
        producers: Output-side slices (see `ChannelSlice`), in graph order.
        consumers: Input-side slices of the convs/linears that read the group, in graph order.
        prunable: Whether channels of this group may be removed.
        reason: Why not, when `prunable` is False ("; "-joined when several reasons apply).
    """

    id: str
    num_channels: int
    producers: list[ChannelSlice] = field(default_factory=list)
    consumers: list[ChannelSlice] = field(default_factory=list)
    prunable: bool = True
    reason: str = ""


class _Tracer(fx.Tracer):
    """Traces into timm/user modules, keeps torch.nn layers and timm's registered no-trace modules opaque."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=tuple(get_notrace_functions()))

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if is_notrace_module(type(m)):
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
        graph = _Tracer().trace(model)
        gm = fx.GraphModule(model, graph)
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    except Exception as err:  # fx raises many types; the caller only needs to know tracing is impossible
        raise StructuralPruningError(f"cannot trace {type(model).__name__} with torch.fx: {err}") from err
    finally:
        model.train(was_training)
    return gm


def build_channel_groups(model: nn.Module, example_input: torch.Tensor) -> list[ChannelGroup]:
    """Find the coupled channel groups of `model`.

    Args:
        model: A convnet (any timm model built from convs, norms, activations, pooling, adds, multiplies,
            concatenations, permutes, flatten and linears).
        example_input: One input batch with the shape the model will be used with; flatten→linear heads
            depend on the spatial size.

    Returns:
        All groups, prunable or not, in graph order of their first producer.
    """
    from sparsetrain.structural._analysis import ChannelAnalyzer  # the analyzer needs the types above

    gm = trace_model(model, example_input)
    return ChannelAnalyzer(gm).run()


def producer_weights(model: nn.Module, group: ChannelGroup, *, grad: bool = False) -> list[tuple[str, torch.Tensor]]:
    """The filter weights that produce a group's channels (or their gradients), with the channel on dim 0.

    Used by filter scoring (norms, gradient counts, cosine similarity between filters). Depthwise conv
    filters of the group are included; BN parameters and biases are not.

    Args:
        model: The model the group was built from (or a copy with the same shapes).
        group: One group of `build_channel_groups(model, ...)`.
        grad: Return views of the parameters' `.grad` instead (filters without a gradient are skipped).

    Returns:
        (qualified parameter name, view of shape [num_channels, ...]) per filter producer; the views share
        storage with the model's parameters (or gradients).
    """
    out = []
    for s in group.producers:
        if s.kind != "filter":
            continue
        weight = model.get_submodule(s.module).get_parameter(s.param)
        tensor = weight.grad if grad else weight
        if tensor is None:
            continue
        view = tensor.movedim(s.dim, 0).narrow(0, s.offset, group.num_channels * s.expand)
        out.append((s.qualname, view))
    return out


def producer_weights_by_group(model: nn.Module, groups: Sequence[ChannelGroup], *, prunable_only: bool = True,
                              grad: bool = False) -> dict[str, list[tuple[str, torch.Tensor]]]:
    """`producer_weights` for every (prunable) group, keyed by group id."""
    return {g.id: producer_weights(model, g, grad=grad) for g in groups if g.prunable or not prunable_only}


def groups_by_id(groups: Sequence[ChannelGroup]) -> dict[str, ChannelGroup]:
    """Index groups by id."""
    return {g.id: g for g in groups}
