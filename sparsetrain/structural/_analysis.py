"""Channel-dependency analysis of a traced, shape-annotated graph (vocabulary: `types.py`).

Every activation tensor gets a *layout*: which axis holds channels (`cdim`, moved by permutes and reshapes) and
the list of channel *spaces* concatenated along it. Layers open new spaces or couple existing ones as their
registered rule says (`rules/`); elementwise ops (adds, SE multiplies) merge the spaces of their inputs in a
union-find, slicing and `split` cut spaces, so each union-find root is one channel group. Anything that mixes
channels in a way a removal cannot follow (unknown ops, reductions over channels, the model input and output)
*blocks* the groups it touches, with a reason; layers that normalize over channels mark them *inexact*.

Exactness of zeroing: removing a channel equals zeroing it only if the channel is exactly zero wherever
channels get mixed (conv/linear inputs). Each layout therefore carries, per space, whether a zeroed channel is
still zero at this point: producers make it zero, f(0)=0 ops keep it, sigmoid/hard-sigmoid gates and constant
shifts do not, a product with a zero operand restores it. A group whose zeroed channel reaches a consumer
non-zero is blocked.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from sparsetrain.structural._spaces import Layout, ParamRef, Spaces
from sparsetrain.structural.rules import functional_rule, rule_for  # the package: registers the built-in rules
from sparsetrain.structural.rules.elementwise import NONZERO_OPS, SPATIAL_OPS, ZERO_OPS
from sparsetrain.structural.trace import ModuleTracer
from sparsetrain.structural.types import ChannelGroup, ChannelSlice

_BINARY_OPS = {
    "add", "add_", "iadd", "sub", "sub_", "isub", "mul", "mul_", "imul", "truediv", "itruediv", "div", "div_",
}
_RESHAPE_OPS = {"flatten", "reshape", "view", "squeeze", "unsqueeze", "expand", "expand_as"}
_REDUCE_OPS = {"mean", "sum", "amax"}
_SPLIT_OPS = {"split", "chunk", "tensor_split", "unbind"}
_KEEP_AXES_OPS = {"expand", "expand_as", "contiguous", "to", "float", "half", "double", "type", "detach", "clone"}
_NON_TENSOR_OPS = {"getattr", "size", "dim", "numel"}


def _op_name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def _shape(node: object) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _literal_ints(args: object) -> set[int]:
    """Integers written as constants in a node's arguments (sizes computed from tensors are nodes, not ints)."""
    if isinstance(args, (tuple, list)):
        return {i for a in args for i in _literal_ints(a)}
    return {args} if isinstance(args, int) and not isinstance(args, bool) else set()


def _arg(node: fx.Node, i: int, key: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


class ChannelAnalyzer:
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
        return _shape(node)

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
        shape = _shape(node)
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
        ndim = len(_shape(node)) if node is not None and _shape(node) is not None else x.ndim
        flags = x.zero if zero is None else (zero,) * len(x.zero)  # True: producer-like; False: f(0) != 0
        return replace(x, ndim=ndim, cdim=x.cdim if cdim is None else cdim, zero=flags)

    def link_blocks(self, x: object, node: fx.Node, in_block: int, out_block: int, name: str,
                    where: str) -> Layout | None:
        shape = _shape(node)
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
        return self._dispatch(node, _op_name(node))

    def _on_call_method(self, node: fx.Node) -> object:
        return self._dispatch(node, _op_name(node))

    def _dispatch(self, node: fx.Node, op: str) -> object:
        x = self._val(_arg(node, 0, "input"))
        if op in _NON_TENSOR_OPS and _shape(node) is None:
            return None
        if op == "getitem":
            return self._getitem(node, x)
        if op in _BINARY_OPS:
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

    def _unary(self, node: fx.Node, x: Layout, op: str) -> object:
        if op in ZERO_OPS:
            return self.passthrough(x, node)
        if op in NONZERO_OPS:
            return self.passthrough(x, node, zero=False)
        if op in SPATIAL_OPS:
            return self._spatial(node, x)
        if op in _RESHAPE_OPS:
            return self._reshape(node, x)
        if op in ("permute", "transpose"):
            return self._permute(node, x, op)
        if op in _REDUCE_OPS:
            return self._reduce(node, x, op)
        if op in _SPLIT_OPS:
            return self._split(node, x, op)
        if op == "roll":
            dims = _arg(node, 2, "dims")
            dims = [d % x.ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
            return self.unsupported(node, "roll of the channel axis") if x.cdim in dims else self.passthrough(x, node)
        return self.unsupported(node, f"op '{op}'")

    def _spatial(self, node: fx.Node, x: Layout) -> object:
        if x.cdim != 1:
            return self.unsupported(node, f"spatial op '{node.name}' on a channel-last tensor")
        return self.passthrough(x, node)

    # ----- indexing, slicing, splitting -------------------------------------------------------------------

    def _getitem(self, node: fx.Node, x: object) -> object:
        index = node.args[1]
        if isinstance(x, (tuple, list)):
            return x[index] if isinstance(index, int) and -len(x) <= index < len(x) else None
        if isinstance(x, Layout):
            return self._index(node, x, index if isinstance(index, tuple) else (index,))
        if isinstance(x, ParamRef):
            return self.unsupported(node, "parameter indexing")
        return None

    def _index(self, node: fx.Node, x: Layout, index: tuple) -> object:
        """Basic indexing: ints and slices off the channel axis, a unit-step slice of the channel axis."""
        shape = _shape(node)
        real = sum(1 for i in index if i is not None and i is not Ellipsis)
        axis, out_axis, cdim, channel = 0, 0, None, slice(None)
        for item in index:
            if item is Ellipsis:
                skipped = x.ndim - real
                if axis <= x.cdim < axis + skipped:
                    cdim = out_axis + x.cdim - axis
                axis, out_axis = axis + skipped, out_axis + skipped
            elif item is None:
                out_axis += 1
            elif isinstance(item, int) and axis != x.cdim:
                axis += 1
            elif isinstance(item, slice) and not any(isinstance(v, fx.Node) for v in (item.start, item.stop)):
                if axis == x.cdim:
                    cdim, channel = out_axis, item
                axis, out_axis = axis + 1, out_axis + 1
            else:
                return self.unsupported(node, "tensor indexing")
        if cdim is None:
            cdim = out_axis + x.cdim - axis if x.cdim >= axis else None
        if shape is None or cdim is None:
            return self.unsupported(node, "tensor indexing")
        return self._select(node, replace(x, cdim=cdim, ndim=len(shape)), channel)

    def _select(self, node: fx.Node, x: Layout, channel: slice) -> object:
        """A unit-step slice of the channel axis. Its bounds are constants of the model's code: channels before the
        start cannot be removed (the start would shift), nor channels inside unless the slice runs to the end."""
        total = sum(self.sp.widths(x))
        start, stop, step = channel.indices(total)
        if (start, stop, step) == (0, total, 1):
            return x
        refined = self.sp.refine(x, {start, stop}) if step == 1 else None
        if refined is None:
            return self.unsupported(node, "channel slicing inside a unit")
        fixed = start if stop == total else stop
        kept, pos = [], 0
        for i, w in enumerate(self.sp.widths(refined)):
            if pos + w <= fixed:
                self.sp.block(refined.spaces[i], f"channel slice [{start}:{stop}] with fixed bounds at node "
                                                 f"'{node.name}'")
            if start <= pos and pos + w <= stop:
                kept.append(i)
            pos += w
        return replace(refined, spaces=tuple(refined.spaces[i] for i in kept),
                       expand=tuple(refined.expand[i] for i in kept), zero=tuple(refined.zero[i] for i in kept))

    def _split(self, node: fx.Node, x: Layout, op: str) -> object:
        metas = node.meta.get("tensor_meta")
        if not isinstance(metas, (tuple, list)) or isinstance(metas, TensorMetadata):
            return self.unsupported(node, f"op '{op}'")
        dim = _arg(node, 1 if op == "unbind" else 2, "dim", 0) % x.ndim
        if dim != x.cdim:
            cdim = x.cdim - (op == "unbind" and dim < x.cdim)
            return tuple(replace(x, cdim=cdim, ndim=len(m.shape)) for m in metas)
        # split sizes and chunk counts are constants of the model's code: removing a channel breaks them
        return self.unsupported(node, f"'{op}' of the channel axis")

    # ----- elementwise ops ---------------------------------------------------------------------------------

    def _param_op(self, node: fx.Node, p: ParamRef, op: str) -> object:
        """Reshapes/casts of a parameter keep track of where its channel axis went."""
        shape = _shape(node)
        if shape is None:
            return None
        if p.pdim is not None and p.shape[p.pdim] > 1 and p.shape[p.pdim] in _literal_ints(node.args[1:]):
            name = f"{p.module}.{p.param}".lstrip(".")
            p = replace(p, fixed=f"'{name}' is reshaped to sizes fixed in the code at node '{node.name}': it "
                                 "could not shrink")
        if op in _KEEP_AXES_OPS:  # broadcasts and casts keep the parameter's own axes
            return replace(p, ndim=len(shape))
        if op in _RESHAPE_OPS | ZERO_OPS and p.pdim is not None:
            hits = [d for d, n in enumerate(shape) if n == p.shape[p.pdim]]
            others_one = math.prod(shape) == p.shape[p.pdim]
            cur = hits[0] if len(hits) == 1 and others_one else None
            return replace(p, cur=cur, ndim=len(shape), raw=False)
        return replace(p, pdim=None, cur=None, ndim=len(shape), raw=False)

    def _binary(self, node: fx.Node, op: str) -> object:
        a, b = _arg(node, 0, "input"), _arg(node, 1, "other")
        va, vb = self._val(a), self._val(b)
        shape = _shape(node)
        if shape is None:
            return None
        if isinstance(va, Layout) and isinstance(vb, Layout):
            return self._join(node, va, vb, op)
        if not isinstance(va, Layout) and not isinstance(vb, Layout):
            p = va if isinstance(va, ParamRef) else vb
            return replace(p, pdim=None, cur=None, ndim=len(shape), raw=False) if isinstance(p, ParamRef) else None
        x, other, x_first = (va, b, True) if isinstance(va, Layout) else (vb, a, False)
        out = self.passthrough(x, node, cdim=x.cdim + len(shape) - x.ndim)
        if isinstance(self._val(other), ParamRef):
            # A divisor is sliced on removal but never zeroed (x / 0 would turn the masked channel into NaN).
            divisor = x_first and not op.strip("_i").startswith(("add", "sub", "mul"))
            other_zero = self._attach_param(node, out, self._val(other), "stat" if divisor else "scale")
        else:
            other_zero = isinstance(other, numbers.Number) and other == 0
        return replace(out, zero=tuple(self._zero_rule(op, z, other_zero, x_first) for z in out.zero))

    @staticmethod
    def _zero_rule(op: str, x_zero: bool, other_zero: bool, x_first: bool) -> bool:
        """Is `x op other` zero where x's channel was zeroed (x_zero) and other's is zero (other_zero)?"""
        if op.strip("_i").startswith(("add", "sub")):
            return x_zero and other_zero
        if op.strip("_i").startswith("mul"):
            return x_zero or other_zero
        return x_zero and x_first  # x / c stays zero; c / x does not

    def _attach_param(self, node: fx.Node, x: Layout, p: ParamRef, kind: str) -> bool:
        """Register a parameter combined elementwise with `x` (layer scale, learned shift) as a producer slice.

        Returns whether its slice is zero after zeroing (when registered as a "scale": zeroing clears it).
        """
        if math.prod(p.shape) == 1:
            return False
        if p.fixed:
            self.block(x, p.fixed)
            return False
        total = sum(self.sp.widths(x))
        if p.cur is not None and p.cur + x.ndim - p.ndim == x.cdim and p.shape[p.pdim] == total:
            self.produce(x, p.module, p.param, p.pdim, kind)
            return kind == "scale"
        axis = x.cdim - (x.ndim - p.ndim)  # the parameter's own axis broadcast against the channel axis
        if p.raw and 0 <= axis < len(p.shape) and p.shape[axis] == total:
            self.produce(x, p.module, p.param, axis, kind)
            return kind == "scale"
        self.block(x, f"parameter '{p.module}.{p.param}' {p.shape} is combined with channels in a way "
                      f"that cannot be followed (node '{node.name}')")
        return False

    def _join(self, node: fx.Node, a: Layout, b: Layout, op: str) -> object:
        """Elementwise op of two activations: aligned channels are the same channels."""
        ndim = len(_shape(node))
        ca, cb = a.cdim + ndim - a.ndim, b.cdim + ndim - b.ndim
        wa, wb = sum(self.sp.widths(a)), sum(self.sp.widths(b))
        if ca == cb and (wb == 1 < wa or wa == 1 < wb):
            big = a if wa > 1 else b  # broadcast of a single channel (spatial gate)
            # The broadcast operand is one undroppable channel: never zero where big's channel was zeroed.
            zero = tuple(self._zero_rule(op, z, False, big is a) for z in big.zero)
            return replace(big, zero=zero, cdim=ca, ndim=ndim)
        if ca != cb or wa != wb:
            return self.unsupported(node, f"elementwise '{op}' of differently laid out channels")
        a, b = self._align(a, b)
        if a is None or a.expand != b.expand:
            return self.unsupported(node, f"elementwise '{op}' of differently laid out channels")
        for sa, sb in zip(a.spaces, b.spaces, strict=True):
            self.sp.union(sa, sb, node.name)
        zero = tuple(self._zero_rule(op, za, zb, True) for za, zb in zip(a.zero, b.zero, strict=True))
        return replace(a, zero=zero, cdim=ca, ndim=ndim)

    def _align(self, a: Layout, b: Layout) -> tuple[Layout | None, Layout | None]:
        """Cut the spaces of both layouts at every boundary of either, so that they pair up one to one."""
        for _ in range(8):  # splitting one layout can split spaces the other one shares: repeat until stable
            cuts = set()
            for x in (a, b):
                pos = 0
                for w in self.sp.widths(x):
                    pos += w
                    cuts.add(pos)
            a, b = self.sp.refine(a, cuts), self.sp.refine(b, cuts)
            if a is None or b is None:
                return None, None
            a, b = self.sp.resolve(a), self.sp.resolve(b)
            if self.sp.widths(a) == self.sp.widths(b):
                return a, b
        return None, None

    def _cat(self, node: fx.Node) -> object:
        vals = [self._val(t) for t in _arg(node, 0, "tensors")]
        dim = _arg(node, 1, "dim", 0)
        layouts = [v for v in vals if isinstance(v, Layout)]
        if not layouts or len(layouts) + sum(isinstance(v, ParamRef) for v in vals) != len(vals) or len(
                {v.cdim for v in layouts}) != 1:
            return self.unsupported(node, "concatenation")
        first = layouts[0]
        if dim % first.ndim == first.cdim:
            if len(layouts) != len(vals):
                return self.unsupported(node, "concatenation of a parameter along the channel axis")
            return Layout(tuple(s for v in vals for s in v.spaces), tuple(e for v in vals for e in v.expand),
                          tuple(z for v in vals for z in v.zero), first.cdim, first.ndim)
        out = first  # concatenating along another axis (tokens, space): the channels align
        for v in layouts[1:]:
            out = self._join(node, out, v, "add")
            if not isinstance(out, Layout):
                return out
        for p in (v for v in vals if isinstance(v, ParamRef)):  # e.g. a class token: per-channel parameter rows
            zero = self._attach_param(node, out, p, "scale")
            out = replace(out, zero=tuple(z and zero for z in out.zero))
        return out

    # ----- shape ops ---------------------------------------------------------------------------------------

    def _reshape(self, node: fx.Node, x: Layout) -> object:
        """Follow the channel axis through a reshape that keeps it whole, or merges it with the axes after it."""
        src, dst = _shape(node.args[0]), _shape(node)
        c = x.cdim
        if src is None or dst is None:
            return self.unsupported(node, "reshape of an untracked tensor")
        before = math.prod(src[:c])
        out = None
        for d in range(len(dst)):  # same number of elements before the channel axis and the same channel count
            if out is None and math.prod(dst[:d]) == before and dst[d] == src[c]:
                out = replace(x, cdim=d, ndim=len(dst))
        if out is None and len(dst) > c and tuple(dst[:c]) == tuple(src[:c]) and dst[c] % src[c] == 0:
            factor = dst[c] // src[c]
            if factor in [math.prod(src[c + 1:c + 1 + k]) for k in range(len(src) - c)]:
                out = replace(x, expand=tuple(e * factor for e in x.expand), ndim=len(dst))
        if out is None:
            return self.unsupported(node, "reshape splitting or moving the channel axis")
        if _op_name(node) in ("view", "reshape", "expand") and dst[out.cdim] > 1 and dst[out.cdim] in _literal_ints(
                node.args[1:]):  # the channel count is written in the code: it could not shrink
            self.block(out, f"reshape to sizes fixed in the code at node '{node.name}'")
        return out

    def _permute(self, node: fx.Node, x: Layout, op: str) -> object:
        args = [a for a in node.args[1:]]
        if op == "transpose":
            d0, d1 = (a % x.ndim for a in args[:2])
            cdim = d1 if x.cdim == d0 else d0 if x.cdim == d1 else x.cdim
        else:
            dims = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
            cdim = [d % x.ndim for d in dims].index(x.cdim)
        return replace(x, cdim=cdim)

    def _reduce(self, node: fx.Node, x: Layout, op: str) -> object:
        dims = _arg(node, 1, "dim")
        keepdim = _arg(node, 2, "keepdim", False)
        if dims is None:
            return self.unsupported(node, f"'{op}' over all axes")
        dims = [d % x.ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if x.cdim in dims:
            return self.unsupported(node, f"'{op}' over the channel axis")
        cdim = x.cdim if keepdim else x.cdim - sum(d < x.cdim for d in dims)
        return replace(x, cdim=cdim, ndim=len(_shape(node)))

    def _pad(self, node: fx.Node, x: object) -> object:
        pad = _arg(node, 1, "pad")
        if not isinstance(x, Layout):
            return self.unsupported(node, "padding of an untracked tensor")
        first_padded = x.ndim - len(pad) // 2
        if x.cdim >= first_padded and any(pad[2 * (x.ndim - 1 - x.cdim):2 * (x.ndim - x.cdim)]):
            return self.unsupported(node, "padding of the channel axis")
        value = _arg(node, 3, "value", None)
        return self.passthrough(x, node, zero=None if value in (None, 0, 0.0) else False)
