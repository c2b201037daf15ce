"""Channel-dependency analysis of a traced, shape-annotated graph (vocabulary: `types.py`).

Every activation tensor gets a *layout*: which axis holds channels (`cdim`, moved by permutes and reshapes) and
the list of channel *spaces* concatenated along it. Layers open new spaces or couple existing ones as their
registered rule says (`rules/`); elementwise ops (adds, SE multiplies) merge the spaces of their inputs in a
union-find, slicing and `split` cut spaces, so each union-find root is one channel group. Anything that mixes
channels in a way a removal cannot follow (unknown ops, reductions over channels, the model input and output)
*blocks* the groups it touches, with a reason; layers that normalize over channels mark them *inexact*.
This module walks the graph and implements what layer rules may ask (`rules.TraceContext`); what plain tensor
ops do to layouts is `_tensor_ops.py`.

Exactness of zeroing: removing a channel equals zeroing it only if the channel is exactly zero wherever
channels get mixed (conv/linear inputs). Each layout therefore carries, per space, whether a zeroed channel is
still zero at this point: producers make it zero, f(0)=0 ops keep it, sigmoid/hard-sigmoid gates and constant
shifts do not, a product with a zero operand restores it. A group whose zeroed channel reaches a consumer
non-zero is blocked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from sparsetrain.structural._spaces import Layout, ParamRef, Spaces
from sparsetrain.structural._tensor_ops import BINARY_OPS, NON_TENSOR_OPS, TensorOps, node_arg, node_shape, op_name
from sparsetrain.structural.rules import functional_rule, rule_for  # the package: registers the built-in rules
from sparsetrain.structural.trace import ModuleTracer
from sparsetrain.structural.types import ChannelGroup, ChannelSlice


class ChannelAnalyzer(TensorOps):
    """Walks a shape-annotated GraphModule once and returns its channel groups (implements `rules.TraceContext`).

    Args:
        gm: Output of `trace.trace_model` (or of `trace_inline` for a module analyzed in place of its node).
        spaces: Shared union-find (inline analyses add to the caller's).
        prefix: Qualified name of `gm`'s root inside the whole model ("" for the model, "blocks.0.attn." inline).
        inputs: Layouts bound to the placeholders (inline analyses), else the placeholders are model inputs.
        order: Shared counter of registered slices (graph order across inline analyses).
        grouped_conv: How grouped convs are pruned: "within_groups" or "whole_groups" (`rules.GROUPED_CONV`).
    """

    def __init__(self, gm: fx.GraphModule, spaces: Spaces | None = None, prefix: str = "",
                 inputs: list[object] | None = None, order: list[int] | None = None,
                 grouped_conv: str = "within_groups") -> None:
        self.gm = gm
        self.grouped_conv = grouped_conv
        self.sp = spaces or Spaces()
        self.prefix = prefix
        self.inputs = list(inputs) if inputs is not None else None
        self.env: dict[fx.Node, object] = {}
        self._order = order if order is not None else [0]
        self.output: object = None

    def run(self) -> list[ChannelGroup]:
        """Analyze every node; return the groups."""
        self.walk()
        return self.sp.groups()

    def walk(self) -> object:
        """Analyze every node; return the value of the graph's output."""
        for node in self.gm.graph.nodes:
            self.env[node] = getattr(self, f"_on_{node.op}")(node)
        return self.output

    # ----- TraceContext ---------------------------------------------------------------------------------------

    def module_name(self, target: str) -> str:
        return f"{self.prefix}{target}" if target else self.prefix.rstrip(".")

    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        return node_shape(node)

    def param_ref(self, arg: object) -> tuple[str, str] | None:
        p = self._val(arg)
        return (p.module, p.param) if isinstance(p, ParamRef) else None

    def tensor(self, module: str, param: str) -> torch.Tensor:
        root = self.prefix.rstrip(".")
        local = "" if module == root else module[len(self.prefix):] if self.prefix else module
        return getattr(self.gm.get_submodule(local), param)

    def apply_op(self, node: fx.Node, x: Layout, op: str) -> object:
        return self._unary(node, self.sp.resolve(x), op)

    def new_space(self, size: int, name: str) -> int:
        return self.sp.new(size, name)

    def add_slice(self, space: int, role: str, s: ChannelSlice) -> None:
        self._order[0] += 1
        self.sp.add(space, role, s, self._order[0])

    def fresh(self, node: fx.Node, name: str, reason: str | None = None, cdim: int = 1) -> Layout | None:
        shape = node_shape(node)
        if shape is None or len(shape) == 0:
            return None
        cdim = min(cdim, len(shape) - 1) if cdim >= 0 else len(shape) + cdim
        space = self.sp.new(shape[cdim], name, reason)
        return Layout((space,), (1,), (True,), cdim, len(shape))

    def block(self, value: object, reason: str) -> None:
        if isinstance(value, Layout):
            for space in self.sp.resolve(value).spaces:
                self.sp.block(space, reason)

    def inexact(self, value: object, reason: str) -> None:
        if isinstance(value, Layout):
            for space in self.sp.resolve(value).spaces:
                self.sp.mark_inexact(space, reason)

    def unsupported(self, node: fx.Node, what: str) -> object:
        reason = f"unsupported {what} at node '{node.name}'"
        self._block_inputs(node, reason)
        meta = node.meta.get("tensor_meta")
        if isinstance(meta, (tuple, list)) and not isinstance(meta, TensorMetadata):  # TensorMetadata is a tuple
            return tuple(self._fresh_meta(m, node.name, reason) for m in meta)
        return self.fresh(node, f"op:{node.name}", reason)

    def consume(self, x: object, module: str, param: str, dim: int, cdim: int | None, where: str) -> None:
        if not isinstance(x, Layout):
            return
        x = self.sp.resolve(x)
        if cdim is not None and x.cdim != cdim:
            self.block(x, f"'{where}' reads axis {cdim} but channels are on axis {x.cdim}")
            return
        offset = 0
        for space, expand, zero in zip(x.spaces, x.expand, x.zero, strict=True):
            if not zero:
                self.sp.block(space, f"a zeroed channel reaches '{where}' non-zero (after an op with f(0)!=0, such "
                                     "as a sigmoid gate or a norm): removal would not match masking")
            self.add_slice(space, "c", ChannelSlice(module, param, dim, offset, expand, "input"))
            offset += self.sp.size[space] * expand

    def produce(self, x: object, module: str, param: str | None, dim: int, kind: str) -> None:
        if param is None or not isinstance(x, Layout):
            return
        x = self.sp.resolve(x)
        offset = 0
        for space, expand in zip(x.spaces, x.expand, strict=True):
            self.add_slice(space, "p", ChannelSlice(module, param, dim, offset, expand, kind))
            offset += self.sp.size[space] * expand

    def passthrough(self, x: Layout, node: fx.Node | None = None, zero: bool | None = None,
                    cdim: int | None = None) -> Layout:
        x = self.sp.resolve(x)
        ndim = len(node_shape(node)) if node is not None and node_shape(node) is not None else x.ndim
        flags = x.zero if zero is None else (zero,) * len(x.zero)  # True: producer-like; False: f(0) != 0
        return replace(x, ndim=ndim, cdim=x.cdim if cdim is None else cdim, zero=flags)

    def link_blocks(self, x: object, node: fx.Node, in_block: int, out_block: int, name: str,
                    where: str) -> Layout | None:
        shape = node_shape(node)
        if not isinstance(x, Layout) or shape is None:
            return self.unsupported(node, f"'{where}' of an untracked tensor")
        x = self.sp.resolve(x)
        if x.cdim != 1 or any(e != 1 for e in x.expand) or any(w % in_block for w in self.sp.widths(x)):
            return self.unsupported(node, f"'{where}' (blocks of {in_block} input channels) of concatenated "
                                          "or flattened channels that do not align with its groups")
        spaces = []
        for space in x.spaces:
            out = self.sp.new(self.sp.size[space] // in_block * out_block, name)
            self.sp.link(space, out, in_block, out_block, where)
            spaces.append(out)
        return Layout(tuple(spaces), (1,) * len(spaces), (True,) * len(spaces), 1, len(shape))

    def interleave(self, x: object, parts: int) -> Layout | None:
        if not isinstance(x, Layout):
            return None
        x = self.sp.resolve(x)
        if len(x.spaces) != 1 or x.cdim != 1 or x.expand != (1,) or not self.sp.interleave(x.spaces[0], parts):
            return None
        return replace(x, spaces=(self.sp.local(x.spaces[0]),))

    def require_blocks(self, x: object, block: int, where: str) -> bool:
        if not isinstance(x, Layout):
            return False
        x = self.sp.resolve(x)
        starts = [0]
        for w in self.sp.widths(x)[:-1]:
            starts.append(starts[-1] + w)
        ok = all(s % block == 0 and e == 1 for s, e in zip(starts, x.expand, strict=True))
        ok = ok and all(self.sp.require_unit(space, block) for space in x.spaces)
        if not ok:
            self.block(x, f"'{where}' acts on blocks of {block} channels that do not align with the concatenated "
                          "channels")
        return ok

    def trace_inline(self, node: fx.Node, name: str, module: nn.Module, forward: Callable[..., Any]) -> object:
        examples = [torch.zeros(m.shape, dtype=m.dtype) for m in (a.meta.get("tensor_meta") for a in node.args
                                                                    if isinstance(a, fx.Node))
                    if isinstance(m, TensorMetadata)]
        original = type(module)
        module.__class__ = type(f"Inline{original.__name__}", (original,), {"forward": forward})
        try:  # fx traces type(root).forward, so the stand-in goes on a throwaway subclass
            gm = fx.GraphModule(module, ModuleTracer().trace(module))
            with torch.no_grad():
                ShapeProp(gm).propagate(*examples)
        except Exception as err:  # fx raises many types; the stand-in is the rule's responsibility
            return self.unsupported(node, f"stand-in forward of '{name}' ({err})")
        finally:
            module.__class__ = original
        inputs = [self._val(a) for a in node.args if isinstance(a, fx.Node)]
        return ChannelAnalyzer(gm, self.sp, f"{name}.", inputs, self._order, self.grouped_conv).walk()

    # ----- helpers ---------------------------------------------------------------------------------------

    def _val(self, arg) -> object:
        value = self.env.get(arg) if isinstance(arg, fx.Node) else None
        if isinstance(value, Layout):
            return self.sp.resolve(value)
        if isinstance(value, tuple):
            return tuple(self.sp.resolve(v) if isinstance(v, Layout) else v for v in value)
        return value

    def _block_inputs(self, node: fx.Node, reason: str) -> None:
        def visit(a):
            value = self._val(a)
            for v in value if isinstance(value, tuple) else (value,):
                self.block(v, reason)
            return a

        map_aggregate(node.args, visit)
        map_aggregate(node.kwargs, visit)

    def _fresh_meta(self, meta: object, name: str, reason: str) -> Layout | None:
        if not isinstance(meta, TensorMetadata) or len(meta.shape) == 0:
            return None
        cdim = min(1, len(meta.shape) - 1)
        return Layout((self.sp.new(meta.shape[cdim], f"op:{name}", reason),), (1,), (True,), cdim, len(meta.shape))

    def _reads_layout(self, node: fx.Node) -> bool:
        found = []
        map_aggregate((node.args, node.kwargs), lambda a: found.append(isinstance(self._val(a), Layout)) or a)
        return any(found)

    # ----- placeholders, attributes, output ---------------------------------------------------------------

    def _on_placeholder(self, node: fx.Node) -> object:
        if self.inputs is not None:
            return self.inputs.pop(0) if self.inputs else None
        return self.fresh(node, f"input:{node.name}", "model input channels")

    def _on_get_attr(self, node: fx.Node) -> object:
        module, _, param = node.target.rpartition(".")
        tensor = getattr(self.gm.get_submodule(module), param)
        if not isinstance(tensor, torch.Tensor):
            return None
        shape = tuple(tensor.shape)
        big = [d for d, n in enumerate(shape) if n != 1]
        pdim = big[0] if len(big) == 1 else None
        return ParamRef(self.module_name(module), param, shape, pdim, pdim, len(shape), True)

    def _on_output(self, node: fx.Node) -> None:
        if self.inputs is not None:  # an inline analysis hands its output back to the caller
            self.output = self._val(node.args[0])
            return
        self._block_inputs(node, "model output channels")

    # ----- modules ---------------------------------------------------------------------------------------

    def _on_call_module(self, node: fx.Node) -> object:
        name, mod = self.module_name(node.target), self.gm.get_submodule(node.target)
        x = self._val(node.args[0]) if node.args else None
        rule = rule_for(mod)
        if rule is not None:
            return rule.trace(self, node, name, mod, x)
        if x is None and not self._reads_layout(node):
            return self.fresh(node, f"op:{node.name}", f"tensor made by module '{name}' from constants")
        return self.unsupported(node, f"module '{name}' ({type(mod).__name__})")

    # ----- functions and methods ---------------------------------------------------------------------------

    def _on_call_function(self, node: fx.Node) -> object:
        return self._dispatch(node, op_name(node))

    def _on_call_method(self, node: fx.Node) -> object:
        return self._dispatch(node, op_name(node))

    def _dispatch(self, node: fx.Node, op: str) -> object:
        x = self._val(node_arg(node, 0, "input"))
        if op in NON_TENSOR_OPS and node_shape(node) is None:
            return None
        if op == "getitem":
            return self._getitem(node, x)
        if op in BINARY_OPS:
            return self._binary(node, op)
        if op in ("cat", "concat", "concatenate"):
            return self._cat(node)
        handler = functional_rule(op)
        if handler is not None:
            return handler(self, node, x)
        if op == "pad":
            return self._pad(node, x)
        if isinstance(x, ParamRef):
            return self._param_op(node, x, op)
        if not isinstance(x, Layout):
            if self._reads_layout(node):
                return self.unsupported(node, f"op '{op}'")
            return self.fresh(node, f"op:{node.name}", f"tensor made by op '{op}' at node '{node.name}'")
        return self._unary(node, x, op)
