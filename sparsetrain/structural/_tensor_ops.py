"""How plain tensor ops move channels: the part of the channel analysis (`_analysis.py`) that needs no layer rule.

`TensorOps` is mixed into `_analysis.ChannelAnalyzer`: per op it maps the layout(s) of the inputs to the layout of
the output — pointwise ops (keep zeros or not), spatial ops, indexing / slicing / split of the channel axis,
elementwise ops between activations and parameters (adds join channel spaces; parameters become producer
slices), concatenation, reshapes / permutes / reductions / padding — and blocks what a removal could not follow.
It uses the analyzer's union-find (`sp`), its value lookup (`_val`) and its `rules.TraceContext` methods.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import replace

from torch import fx
from torch.fx.passes.shape_prop import TensorMetadata

from sparsetrain.structural._spaces import Layout, ParamRef, Spaces
from sparsetrain.structural.rules.elementwise import NONZERO_OPS, SPATIAL_OPS, ZERO_OPS

BINARY_OPS = {
    "add", "add_", "iadd", "sub", "sub_", "isub", "mul", "mul_", "imul", "truediv", "itruediv", "div", "div_",
}
_RESHAPE_OPS = {"flatten", "reshape", "view", "squeeze", "unsqueeze", "expand", "expand_as"}
_REDUCE_OPS = {"mean", "sum", "amax"}
_SPLIT_OPS = {"split", "chunk", "tensor_split", "unbind"}
_KEEP_AXES_OPS = {"expand", "expand_as", "contiguous", "to", "float", "half", "double", "type", "detach", "clone"}
NON_TENSOR_OPS = {"getattr", "size", "dim", "numel"}


def op_name(node: fx.Node) -> str:
    """The function's or method's name a call node runs ("conv2d", "add", "view")."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def node_shape(node: object) -> tuple[int, ...] | None:
    """Output shape of a shape-propagated node (None if it is not a tensor, or not a node)."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _literal_ints(args: object) -> set[int]:
    """Integers written as constants in a node's arguments (sizes computed from tensors are nodes, not ints)."""
    if isinstance(args, (tuple, list)):
        return {i for a in args for i in _literal_ints(a)}
    return {args} if isinstance(args, int) and not isinstance(args, bool) else set()


def node_arg(node: fx.Node, i: int, key: str, default: object = None) -> object:
    """Argument `i` of a call node, given by position or as keyword `key`."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


class TensorOps:
    """Layout rules of plain tensor ops (see the module docstring); a mixin of `ChannelAnalyzer`."""

    sp: Spaces

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
            dims = node_arg(node, 2, "dims")
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
        shape = node_shape(node)
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
        dim = node_arg(node, 1 if op == "unbind" else 2, "dim", 0) % x.ndim
        if dim != x.cdim:
            cdim = x.cdim - (op == "unbind" and dim < x.cdim)
            return tuple(replace(x, cdim=cdim, ndim=len(m.shape)) for m in metas)
        # split sizes and chunk counts are constants of the model's code: removing a channel breaks them
        return self.unsupported(node, f"'{op}' of the channel axis")

    # ----- elementwise ops ---------------------------------------------------------------------------------

    def _param_op(self, node: fx.Node, p: ParamRef, op: str) -> object:
        """Reshapes/casts of a parameter keep track of where its channel axis went."""
        shape = node_shape(node)
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
        a, b = node_arg(node, 0, "input"), node_arg(node, 1, "other")
        va, vb = self._val(a), self._val(b)
        shape = node_shape(node)
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
        ndim = len(node_shape(node))
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
        vals = [self._val(t) for t in node_arg(node, 0, "tensors")]
        dim = node_arg(node, 1, "dim", 0)
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
        src, dst = node_shape(node.args[0]), node_shape(node)
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
        if op_name(node) in ("view", "reshape", "expand") and dst[out.cdim] > 1 and dst[out.cdim] in _literal_ints(
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
        dims = node_arg(node, 1, "dim")
        keepdim = node_arg(node, 2, "keepdim", False)
        if dims is None:
            return self.unsupported(node, f"'{op}' over all axes")
        dims = [d % x.ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if x.cdim in dims:
            return self.unsupported(node, f"'{op}' over the channel axis")
        cdim = x.cdim if keepdim else x.cdim - sum(d < x.cdim for d in dims)
        return replace(x, cdim=cdim, ndim=len(node_shape(node)))

    def _pad(self, node: fx.Node, x: object) -> object:
        pad = node_arg(node, 1, "pad")
        if not isinstance(x, Layout):
            return self.unsupported(node, "padding of an untracked tensor")
        first_padded = x.ndim - len(pad) // 2
        if x.cdim >= first_padded and any(pad[2 * (x.ndim - 1 - x.cdim):2 * (x.ndim - x.cdim)]):
            return self.unsupported(node, "padding of the channel axis")
        value = node_arg(node, 3, "value", None)
        return self.passthrough(x, node, zero=None if value in (None, 0, 0.0) else False)
