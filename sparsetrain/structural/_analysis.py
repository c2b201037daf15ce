"""Channel-dependency analysis of a traced, shape-annotated graph (see `graph.py` for the vocabulary).

Every activation tensor gets a *layout*: which axis holds channels (`cdim`, moved by permutes) and the list of
channel *spaces* concatenated along it. Convs and linears open a new space; elementwise ops (BN, activations,
adds, SE multiplies) merge the spaces of their inputs in a union-find, so each union-find root is one channel
group. Anything that mixes channels in a way a removal cannot follow (norms over channels, grouped convs,
unknown ops, the model input and output) *blocks* the groups it touches, with a reason.

Exactness of zeroing: removing a channel equals zeroing it only if the channel is exactly zero wherever
channels get mixed (conv/linear inputs). Each layout therefore carries, per space, whether a zeroed channel is
still zero at this point: producers make it zero, f(0)=0 ops keep it, sigmoid/hard-sigmoid gates and constant
shifts do not, a product with a zero operand restores it. A group whose zeroed channel reaches a consumer
non-zero is blocked.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import replace

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import TensorMetadata

from sparsetrain.structural._spaces import Layout, ParamRef, Spaces
from sparsetrain.structural.graph import ChannelGroup, ChannelSlice

# Modules and ops that act per channel and map 0 to 0 (a zeroed channel stays zero after them).
_ZERO_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Tanh, nn.Hardtanh, nn.Softsign, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
# Spatial ops: per channel and 0 -> 0 on channel-first tensors.
_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad2d,
)
# Per channel but f(0) != 0: a zeroed channel is no longer zero after them.
_NONZERO_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)

_ZERO_OPS = {
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "hardswish", "hardswish_", "leaky_relu", "elu", "mish",
    "tanh", "hardtanh", "dropout", "dropout2d", "contiguous", "clone", "float", "double", "half", "to", "type",
    "detach", "neg", "abs",
}
_SPATIAL_OPS = {"avg_pool2d", "max_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "interpolate"}
_NONZERO_OPS = {"sigmoid", "sigmoid_", "hardsigmoid", "exp", "softplus", "cos", "reciprocal"}
_BINARY_OPS = {
    "add", "add_", "iadd", "sub", "sub_", "isub", "mul", "mul_", "imul", "truediv", "itruediv", "div", "div_",
}
_RESHAPE_OPS = {"flatten", "reshape", "view", "squeeze", "unsqueeze", "expand", "expand_as"}
_REDUCE_OPS = {"mean", "sum", "amax"}
_NON_TENSOR_OPS = {"getattr", "size", "dim", "numel"}


def _op_name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _arg(node: fx.Node, i: int, key: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


class ChannelAnalyzer:
    """Walks a shape-annotated GraphModule once and returns its channel groups.

    Args:
        gm: Output of `graph.trace_model`.
    """

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.sp = Spaces()
        self.env: dict[fx.Node, object] = {}
        self._order = 0

    def run(self) -> list[ChannelGroup]:
        """Analyze every node; return the groups."""
        for node in self.gm.graph.nodes:
            self.env[node] = getattr(self, f"_on_{node.op}")(node)
        return self.sp.groups()

    # ----- helpers ---------------------------------------------------------------------------------------

    def _val(self, arg) -> object:
        return self.env.get(arg) if isinstance(arg, fx.Node) else None

    def _slice(self, space: int, role: str, s: ChannelSlice) -> None:
        self._order += 1
        self.sp.add(space, role, s, self._order)

    def _fresh(self, node: fx.Node, name: str, reason: str | None = None, cdim: int = 1) -> Layout | None:
        """A layout for `node`'s output with one new space along `cdim` (None if the output is no tensor)."""
        shape = _shape(node)
        if shape is None or len(shape) == 0:
            return None
        cdim = min(cdim, len(shape) - 1) if cdim >= 0 else len(shape) + cdim
        space = self.sp.new(shape[cdim], name, reason)
        return Layout((space,), (1,), (True,), cdim, len(shape))

    def _block(self, value: object, reason: str) -> None:
        if isinstance(value, Layout):
            for space in value.spaces:
                self.sp.block(space, reason)

    def _block_inputs(self, node: fx.Node, reason: str) -> None:
        def visit(a):
            self._block(self._val(a), reason)
            return a

        map_aggregate(node.args, visit)
        map_aggregate(node.kwargs, visit)

    def _unsupported(self, node: fx.Node, what: str) -> object:
        """Block everything `node` reads and give its outputs new blocked spaces."""
        reason = f"unsupported {what} at node '{node.name}'"
        self._block_inputs(node, reason)
        meta = node.meta.get("tensor_meta")
        if isinstance(meta, (tuple, list)) and not isinstance(meta, TensorMetadata):  # TensorMetadata is a tuple
            return tuple(self._fresh_meta(m, node.name, reason) for m in meta)
        return self._fresh(node, f"op:{node.name}", reason)

    def _fresh_meta(self, meta: object, name: str, reason: str) -> Layout | None:
        if not isinstance(meta, TensorMetadata) or len(meta.shape) == 0:
            return None
        cdim = min(1, len(meta.shape) - 1)
        return Layout((self.sp.new(meta.shape[cdim], f"op:{name}", reason),), (1,), (True,), cdim, len(meta.shape))

    def _consume(self, x: object, module: str, param: str, dim: int, cdim: int | None, where: str) -> None:
        """Register `module.param` columns (along `dim`) as reading the channels of layout `x`."""
        if not isinstance(x, Layout):
            return
        if cdim is not None and x.cdim != cdim:
            self._block(x, f"'{where}' reads axis {cdim} but channels are on axis {x.cdim}")
            return
        offset = 0
        for space, expand, zero in zip(x.spaces, x.expand, x.zero, strict=True):
            if not zero:
                self.sp.block(space, f"a zeroed channel reaches '{where}' non-zero (after an op with f(0)!=0, such "
                                     "as a sigmoid gate or a norm): removal would not match masking")
            self._slice(space, "c", ChannelSlice(module, param, dim, offset, expand, "input"))
            offset += self.sp.size[space] * expand

    def _produce(self, x: Layout, module: str, param: str | None, dim: int, kind: str) -> None:
        """Register `module.param` slices along `dim` as producing the channels of layout `x`."""
        if param is None:
            return
        offset = 0
        for space, expand in zip(x.spaces, x.expand, strict=True):
            self._slice(space, "p", ChannelSlice(module, param, dim, offset, expand, kind))
            offset += self.sp.size[space] * expand

    def _with(self, x: Layout, node: fx.Node | None = None, zero: bool | None = None, cdim: int | None = None):
        """`x` passed through a per-channel op: same spaces, maybe new zero flags / channel axis / rank."""
        ndim = len(_shape(node)) if node is not None and _shape(node) is not None else x.ndim
        flags = x.zero if zero is None else (zero,) * len(x.zero)  # True: producer-like; False: f(0) != 0
        return replace(x, ndim=ndim, cdim=x.cdim if cdim is None else cdim, zero=flags)

    # ----- placeholders, attributes, output ---------------------------------------------------------------

    def _on_placeholder(self, node: fx.Node) -> object:
        return self._fresh(node, f"input:{node.name}", "model input channels")

    def _on_get_attr(self, node: fx.Node) -> object:
        module, _, param = node.target.rpartition(".")
        tensor = self.gm.get_submodule(module)
        tensor = getattr(tensor, param)
        if not isinstance(tensor, torch.Tensor):
            return None
        shape = tuple(tensor.shape)
        big = [d for d, n in enumerate(shape) if n != 1]
        pdim = big[0] if len(big) == 1 else None
        return ParamRef(module, param, shape, pdim, pdim, len(shape))

    def _on_output(self, node: fx.Node) -> None:
        self._block_inputs(node, "model output channels")

    # ----- modules ---------------------------------------------------------------------------------------

    def _on_call_module(self, node: fx.Node) -> object:
        name, mod = node.target, self.gm.get_submodule(node.target)
        x = self._val(node.args[0]) if node.args else None
        if isinstance(mod, nn.modules.conv._ConvTransposeNd):
            return self._conv_transpose(node, name, mod, x)
        if isinstance(mod, nn.modules.conv._ConvNd):
            bias = "bias" if mod.bias is not None else None
            return self._conv(node, x, name, bias, mod.groups)
        if isinstance(mod, nn.Linear):
            return self._linear(node, x, name, "weight", "bias" if mod.bias is not None else None)
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            return self._batchnorm_module(node, name, mod, x)
        if isinstance(mod, (nn.LayerNorm, nn.GroupNorm)) or not isinstance(x, Layout):
            return self._norm_or_unknown(node, name, mod, x)
        if isinstance(mod, _ZERO_MODULES):
            return self._with(x, node)
        if isinstance(mod, _SPATIAL_MODULES):
            return self._spatial(node, x, zero=True)
        if isinstance(mod, _NONZERO_MODULES):
            return self._with(x, node, zero=False)
        if isinstance(mod, nn.Flatten):
            return self._reshape(node, x)
        return self._unsupported(node, f"module '{name}' ({type(mod).__name__})")

    def _norm_or_unknown(self, node: fx.Node, name: str, mod: nn.Module, x: object) -> object:
        if isinstance(mod, nn.LayerNorm):
            return self._layer_norm(node, x, len(mod.normalized_shape), name)
        if isinstance(mod, nn.GroupNorm):
            self._block(x, f"GroupNorm '{name}' normalizes over channel groups: removing a channel changes the others")
            return self._with(x, node, zero=False) if isinstance(x, Layout) else self._fresh(node, name, "GroupNorm")
        if x is None and not any(isinstance(self._val(a), Layout) for a in node.args):
            return self._fresh(node, f"op:{node.name}", f"tensor made by module '{name}' from constants")
        return self._unsupported(node, f"module '{name}' ({type(mod).__name__})")

    def _conv(self, node: fx.Node, x: object, module: str, bias: str | None, groups: int) -> object:
        shape = _shape(node)
        weight = self.gm.get_submodule(module).get_parameter("weight")
        in_chs = weight.shape[1] * groups
        if groups == 1:
            self._consume(x, module, "weight", 1, 1, module)
            out = self._fresh(node, module)
            self._produce(out, module, "weight", 0, "filter")
            self._produce(out, module, bias, 0, "bias")
            return out
        if groups == in_chs == weight.shape[0] and isinstance(x, Layout) and x.cdim == 1:
            # Depthwise: output channel i filters input channel i only, so input and output are one group.
            out = self._with(x, node, zero=True)
            self._produce(out, module, "weight", 0, "filter")
            self._produce(out, module, bias, 0, "bias")
            return out
        reason = f"grouped conv '{module}' (groups={groups}) couples channels in blocks of {in_chs // groups}"
        self._block(x, reason)
        return self._fresh(node, module, reason) if shape else None

    def _conv_transpose(self, node: fx.Node, name: str, mod: nn.Module, x: object) -> object:
        if mod.groups != 1:
            return self._unsupported(node, f"grouped transposed conv '{name}'")
        self._consume(x, name, "weight", 0, 1, name)  # transposed weights are [in, out, k...]
        out = self._fresh(node, name)
        self._produce(out, name, "weight", 1, "filter")
        self._produce(out, name, "bias" if mod.bias is not None else None, 0, "bias")
        return out

    def _linear(self, node: fx.Node, x: object, module: str, weight: str, bias: str | None) -> object:
        ndim = len(_shape(node) or (0,))
        self._consume(x, module, weight, 1, ndim - 1, module)
        out = self._fresh(node, module, cdim=-1)
        self._produce(out, module, weight, 0, "filter")
        self._produce(out, module, bias, 0, "bias")
        return out

    def _batchnorm_module(self, node: fx.Node, name: str, mod: nn.Module, x: object) -> object:
        # timm's BatchNormAct2d is a BN subclass applying `drop` and `act` after the normalization.
        post = [getattr(mod, "drop", nn.Identity()), getattr(mod, "act", nn.Identity())]
        keeps_zero = mod.affine and all(isinstance(m, _ZERO_MODULES) for m in post)
        if not all(isinstance(m, _ZERO_MODULES + _NONZERO_MODULES) for m in post):
            return self._unsupported(node, f"activation in '{name}' ({type(post[1]).__name__})")
        params = ("weight", "bias") if mod.affine else (None, None)
        stats = ("running_mean", "running_var") if mod.running_mean is not None else (None, None)
        return self._batchnorm(node, x, name, params, stats, keeps_zero)

    def _batchnorm(self, node, x, module: str, params: tuple, stats: tuple, keeps_zero: bool) -> object:
        if not isinstance(x, Layout) or x.cdim != 1:
            return self._unsupported(node, f"batch norm '{module}' off the channel axis")
        for p, kind in zip(params + stats, ("norm", "norm", "stat", "stat"), strict=True):
            self._produce(x, module, p, 0, kind)
        # With gamma and beta zeroed, BN outputs exactly 0 for the channel, whatever it reads.
        return self._with(x, node, zero=keeps_zero)

    def _layer_norm(self, node: fx.Node, x: object, n_norm_dims: int, name: str) -> object:
        if not isinstance(x, Layout):
            return self._fresh(node, name, f"LayerNorm '{name}' of an untracked tensor")
        if x.cdim >= x.ndim - n_norm_dims:
            self._block(x, f"LayerNorm '{name}' normalizes over channels: removing a channel changes the others")
        return self._with(x, node, zero=False)

    def _spatial(self, node: fx.Node, x: Layout, zero: bool) -> object:
        if x.cdim != 1:
            return self._unsupported(node, f"spatial op '{node.name}' on a channel-last tensor")
        return self._with(x, node, zero=None if zero else False)

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
        handler = {"linear": self._f_linear, "conv2d": self._f_conv, "batch_norm": self._f_batchnorm,
                   "layer_norm": self._f_layer_norm, "pad": self._pad}.get(op)
        if handler is not None:
            return handler(node, x)
        if isinstance(x, ParamRef):
            return self._param_op(node, x, op)
        if not isinstance(x, Layout):
            if self._reads_layout(node):
                return self._unsupported(node, f"op '{op}'")
            return self._fresh(node, f"op:{node.name}", f"tensor made by op '{op}' at node '{node.name}'")
        return self._unary(node, x, op)

    def _reads_layout(self, node: fx.Node) -> bool:
        found = []
        map_aggregate((node.args, node.kwargs), lambda a: found.append(isinstance(self._val(a), Layout)) or a)
        return any(found)

    def _unary(self, node: fx.Node, x: Layout, op: str) -> object:
        if op in _ZERO_OPS:
            return self._with(x, node)
        if op in _NONZERO_OPS:
            return self._with(x, node, zero=False)
        if op in _SPATIAL_OPS:
            return self._spatial(node, x, zero=True)
        if op in _RESHAPE_OPS:
            return self._reshape(node, x)
        if op in ("permute", "transpose"):
            return self._permute(node, x, op)
        if op in _REDUCE_OPS:
            return self._reduce(node, x, op)
        return self._unsupported(node, f"op '{op}'")

    def _getitem(self, node: fx.Node, x: object) -> object:
        if isinstance(x, (tuple, list)):
            index = node.args[1]
            return x[index] if isinstance(index, int) and -len(x) <= index < len(x) else None
        if isinstance(x, (Layout, ParamRef)):
            return self._unsupported(node, "tensor indexing")
        return None

    def _param_op(self, node: fx.Node, p: ParamRef, op: str) -> object:
        """Reshapes/casts of a parameter keep track of where its channel axis went."""
        shape = _shape(node)
        if shape is None:
            return None
        if op in _RESHAPE_OPS | _ZERO_OPS and p.pdim is not None:
            hits = [d for d, n in enumerate(shape) if n == p.shape[p.pdim]]
            others_one = math.prod(shape) == p.shape[p.pdim]
            cur = hits[0] if len(hits) == 1 and others_one else None
            return replace(p, cur=cur, ndim=len(shape))
        return replace(p, pdim=None, cur=None, ndim=len(shape))

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
            return replace(p, pdim=None, cur=None, ndim=len(shape)) if isinstance(p, ParamRef) else None
        x, other, x_first = (va, b, True) if isinstance(va, Layout) else (vb, a, False)
        out = self._with(x, node, cdim=x.cdim + len(shape) - x.ndim)
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
        total = sum(self.sp.size[s] * e for s, e in zip(x.spaces, x.expand, strict=True))
        if p.cur is not None and p.cur + x.ndim - p.ndim == x.cdim and p.shape[p.pdim] == total:
            self._produce(x, p.module, p.param, p.pdim, kind)
            return kind == "scale"
        self._block(x, f"parameter '{p.module}.{p.param}' {p.shape} is combined with channels in a way "
                       f"that cannot be followed (node '{node.name}')")
        return False

    def _join(self, node: fx.Node, a: Layout, b: Layout, op: str) -> object:
        """Elementwise op of two activations: aligned channels are the same channels."""
        ndim = len(_shape(node))
        ca, cb = a.cdim + ndim - a.ndim, b.cdim + ndim - b.ndim
        sizes_a = [self.sp.size[s] * e for s, e in zip(a.spaces, a.expand, strict=True)]
        sizes_b = [self.sp.size[s] * e for s, e in zip(b.spaces, b.expand, strict=True)]
        if ca == cb and sum(sizes_b) == 1 < sum(sizes_a) or ca == cb and sum(sizes_a) == 1 < sum(sizes_b):
            big, small = (a, b) if sum(sizes_a) > 1 else (b, a)  # broadcast of a single channel (spatial gate)
            # The broadcast operand is one undroppable channel: never zero where big's channel was zeroed.
            zero = tuple(self._zero_rule(op, z, False, big is a) for z in big.zero)
            return replace(big, zero=zero, cdim=ca, ndim=ndim)
        if ca != cb or sizes_a != sizes_b or a.expand != b.expand:
            return self._unsupported(node, f"elementwise '{op}' of differently laid out channels")
        for sa, sb in zip(a.spaces, b.spaces, strict=True):
            self.sp.union(sa, sb, node.name)
        zero = tuple(self._zero_rule(op, za, zb, True) for za, zb in zip(a.zero, b.zero, strict=True))
        return replace(a, zero=zero, cdim=ca, ndim=ndim)

    def _cat(self, node: fx.Node) -> object:
        tensors = _arg(node, 0, "tensors")
        vals = [self._val(t) for t in tensors]
        dim = _arg(node, 1, "dim", 0)
        if not vals or not all(isinstance(v, Layout) for v in vals) or len({v.cdim for v in vals}) != 1:
            return self._unsupported(node, "concatenation")
        first = vals[0]
        if dim % first.ndim != first.cdim:  # concatenating along a spatial axis: channels align
            out = first
            for v in vals[1:]:
                out = self._join(node, out, v, "add")
            return out
        return Layout(tuple(s for v in vals for s in v.spaces), tuple(e for v in vals for e in v.expand),
                       tuple(z for v in vals for z in v.zero), first.cdim, first.ndim)

    def _reshape(self, node: fx.Node, x: Layout) -> object:
        """Flatten/reshape: follow channels if the axes before them stay and they merge only with later axes."""
        src, dst = _shape(node.args[0]), _shape(node)
        c = x.cdim
        if src is None or dst is None or len(dst) <= c or tuple(dst[:c]) != tuple(src[:c]):
            return self._unsupported(node, "reshape moving the channel axis")
        if dst[c] % src[c] == 0 and math.prod(src[c:]) % dst[c] == 0:
            factor = dst[c] // src[c]
            merged = [math.prod(src[c + 1:c + 1 + k]) for k in range(len(src) - c)]
            if factor in merged:
                return replace(x, expand=tuple(e * factor for e in x.expand), ndim=len(dst))
        return self._unsupported(node, "reshape splitting the channel axis")

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
            return self._unsupported(node, f"'{op}' over all axes")
        dims = [d % x.ndim for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
        if x.cdim in dims:
            return self._unsupported(node, f"'{op}' over the channel axis")
        cdim = x.cdim if keepdim else x.cdim - sum(d < x.cdim for d in dims)
        return replace(x, cdim=cdim, ndim=len(_shape(node)))

    def _pad(self, node: fx.Node, x: object) -> object:
        pad = _arg(node, 1, "pad")
        if not isinstance(x, Layout) or x.cdim >= x.ndim - len(pad) // 2:
            return self._unsupported(node, "padding of the channel axis")
        value = _arg(node, 3, "value", None)
        return self._with(x, node, zero=None if value in (None, 0, 0.0) else False)

    def _param_ref(self, arg) -> tuple[str, str] | None:
        p = self._val(arg)
        return (p.module, p.param) if isinstance(p, ParamRef) else None

    def _f_linear(self, node: fx.Node, x: object) -> object:
        w, b = self._param_ref(_arg(node, 1, "weight")), self._param_ref(_arg(node, 2, "bias"))
        if w is None or (b is not None and b[0] != w[0]):
            return self._unsupported(node, "linear with a computed weight")
        return self._linear(node, x, w[0], w[1], b[1] if b else None)

    def _f_conv(self, node: fx.Node, x: object) -> object:
        w, b = self._param_ref(_arg(node, 1, "weight")), self._param_ref(_arg(node, 2, "bias"))
        if w is None or w[1] != "weight" or (b is not None and b != (w[0], "bias")) or _arg(node, 6, "groups", 1) != 1:
            return self._unsupported(node, "functional conv")
        return self._conv(node, x, w[0], "bias" if b else None, 1)

    def _f_batchnorm(self, node: fx.Node, x: object) -> object:
        refs = [self._param_ref(_arg(node, i, k)) for i, k in ((3, "weight"), (4, "bias"), (1, "running_mean"),
                                                                 (2, "running_var"))]
        modules = {r[0] for r in refs if r is not None}
        if len(modules) != 1:
            return self._unsupported(node, "batch_norm with parameters of several modules")
        names = tuple(r[1] if r else None for r in refs)
        return self._batchnorm(node, x, modules.pop(), names[:2], names[2:], None not in names[:2])

    def _f_layer_norm(self, node: fx.Node, x: object) -> object:
        w = self._param_ref(_arg(node, 2, "weight"))
        return self._layer_norm(node, x, len(_arg(node, 1, "normalized_shape")), w[0] if w else node.name)
