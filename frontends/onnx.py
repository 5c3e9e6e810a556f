"""ONNX ModelProto -> tilecraft Graph (opsets 13-18; older opsets where the op is unchanged).

Each converter reads attributes and constant inputs and emits our ops through a
GraphBuilder.  Shapes are static: every symbolic input dimension must be bound
by the caller (`input_shapes`), else a ShapeError names it.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from ..compiler import ir
from ..compiler.ir import Graph, TensorType
from ..errors import ModelLoadError, ShapeError, TilecraftError, UnsupportedOpError
from .builder import GraphBuilder

try:  # onnx is a hard dependency, but keep the import error readable
    import onnx
    from onnx import numpy_helper
except ImportError as e:  # pragma: no cover
    raise ImportError("tilecraft's ONNX frontend needs the 'onnx' package") from e

ONNX_DTYPES = {
    1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 5: "int16", 3: "int8", 13: "uint64",
    12: "uint32", 4: "uint16", 2: "uint8", 9: "bool",
}


def tensor_dtype(elem_type: int, what: str) -> str:
    """Our dtype for an ONNX element type, or UnsupportedOpError naming `what`."""
    dtype = ONNX_DTYPES.get(elem_type)
    if dtype is None or dtype not in ir.DTYPES:
        name = onnx.TensorProto.DataType.Name(elem_type) if elem_type in onnx.TensorProto.DataType.values() else elem_type
        raise UnsupportedOpError(f"{what} has unsupported ONNX element type {name}")
    return dtype


def constant_array(array: np.ndarray, what: str) -> np.ndarray:
    if str(array.dtype) not in ir.DTYPES:
        raise UnsupportedOpError(f"{what} has unsupported element type {array.dtype}")
    return array


class Ctx:
    """What a converter sees: the builder, the node and helpers for its inputs and attributes."""

    def __init__(self, builder: GraphBuilder, node, opset: int):
        self.b = builder
        self.node = node
        self.opset = opset
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        for k, v in list(self.attrs.items()):
            if isinstance(v, bytes):
                self.attrs[k] = v.decode()
            elif isinstance(v, onnx.TensorProto):
                self.attrs[k] = numpy_helper.to_array(v)

    @property
    def name(self) -> str:
        return self.node.output[0] if self.node.output else self.node.name

    def input(self, k: int) -> str | None:
        ins = self.node.input
        return ins[k] if k < len(ins) and ins[k] else None

    @property
    def inputs(self) -> list[str]:
        return [i for i in self.node.input if i]

    def attr(self, key: str, default=None):
        return self.attrs.get(key, default)

    def const_input(self, k: int, default=None) -> np.ndarray | None:
        name = self.input(k)
        if name is None:
            return default
        value = self.b.value(name)
        if value is None:
            raise UnsupportedOpError(
                f"{self.node.op_type} node {self.node.name or self.name!r}: input {k} ({name}) must be a constant"
            )
        return value

    def fail(self, why: str) -> TilecraftError:
        return UnsupportedOpError(f"{self.node.op_type} node {self.node.name or self.name!r}: {why}")


Converter = Callable[[Ctx], list[str]]
CONVERTERS: dict[str, Converter] = {}


def converter(*op_types: str):
    def deco(fn):
        for op in op_types:
            CONVERTERS[op] = fn
        return fn

    return deco


def _axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


# --------------------------------------------------------------------------- elementwise
UNARY_MAP = {
    "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Log": "log", "Sqrt": "sqrt",
    "Neg": "neg", "Abs": "abs", "Floor": "floor", "Ceil": "ceil", "Sin": "sin", "Cos": "cos",
    "Reciprocal": "reciprocal", "Erf": "erf", "Not": "not", "HardSwish": "hard_swish",
}


@converter(*UNARY_MAP)
def _unary(c: Ctx):
    return [c.b.add(UNARY_MAP[c.node.op_type], [c.input(0)], c.name)]


@converter("LeakyRelu")
def _leaky(c: Ctx):
    return [c.b.add("leaky_relu", [c.input(0)], c.name, alpha=float(c.attr("alpha", 0.01)))]


@converter("HardSigmoid")
def _hard_sigmoid(c: Ctx):
    return [c.b.add("hard_sigmoid", [c.input(0)], c.name, alpha=float(c.attr("alpha", 0.2)), beta=float(c.attr("beta", 0.5)))]


@converter("Gelu")
def _gelu(c: Ctx):
    return [c.b.add("gelu", [c.input(0)], c.name, approximate=c.attr("approximate", "none"))]


@converter("Clip")
def _clip(c: Ctx):
    if c.opset < 11:
        lo, hi = c.attr("min", -np.inf), c.attr("max", np.inf)
    else:
        lo_v, hi_v = c.const_input(1), c.const_input(2)
        lo = -np.inf if lo_v is None or np.size(lo_v) == 0 else float(np.ravel(lo_v)[0])
        hi = np.inf if hi_v is None or np.size(hi_v) == 0 else float(np.ravel(hi_v)[0])
    attrs = {}
    if np.isfinite(lo):
        attrs["min"] = float(lo)
    if np.isfinite(hi):
        attrs["max"] = float(hi)
    return [c.b.add("clip", [c.input(0)], c.name, **attrs)]


BINARY_MAP = {
    "Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Equal": "equal", "Less": "less",
    "LessOrEqual": "less_equal", "Greater": "greater", "GreaterOrEqual": "greater_equal", "And": "logical_and",
    "Or": "logical_or", "Xor": "logical_xor", "Min": "minimum", "Max": "maximum", "Sum": "add", "Mod": "mod",
}


@converter(*BINARY_MAP)
def _binary(c: Ctx):
    op = BINARY_MAP[c.node.op_type]
    if c.node.op_type == "Mod" and not c.attr("fmod", 0) and not c.b.type(c.input(0)).dtype.startswith("float"):
        raise c.fail("integer Mod with Python semantics (fmod=0) is not supported")
    ins = c.inputs
    if c.node.op_type == "Pow":
        a_t, b_t = c.b.type(ins[0]), c.b.type(ins[1])
        if a_t.dtype != b_t.dtype and a_t.dtype.startswith("float"):  # integer bases compute in double
            ins = [ins[0], c.b.add("cast", [ins[1]], c.name + "_exp", to=a_t.dtype)]
    # ONNX integer division truncates toward zero (our div floors, like numpy, unless told)
    attrs = {"rounding": "trunc"} if op == "div" and not c.b.type(ins[0]).dtype.startswith("float") else {}
    out = ins[0]
    for k, other in enumerate(ins[1:]):
        out = c.b.add(op, [out, other], c.name if k == len(ins) - 2 else c.name + f"_{k}", **attrs)
    if len(ins) == 1:
        out = c.b.rename(out, c.name)
    return [out]


@converter("Where")
def _where(c: Ctx):
    return [c.b.add("where", c.inputs, c.name)]


@converter("Cast")
def _cast(c: Ctx):
    return [c.b.add("cast", [c.input(0)], c.name, to=tensor_dtype(c.attr("to"), f"Cast node {c.node.name or c.name!r}: its target"))]


@converter("Identity", "Dropout")
def _identity(c: Ctx):
    training = c.node.op_type == "Dropout" and bool(np.ravel(c.const_input(2, np.array(False)))[0])
    if training and float(np.ravel(c.const_input(1, np.array(0.5)))[0]) > 0:
        raise c.fail("training_mode=1 with a ratio > 0 draws a random mask (inference only)")
    if c.node.op_type == "Dropout" and len(c.node.output) > 1 and c.node.output[1]:
        mask = c.b.add("expand", [c.b.const(np.array(True))], c.node.output[1], shape=c.b.shape(c.input(0)))
        return [c.b.rename(c.input(0), c.name), mask]
    return [c.b.rename(c.input(0), c.name)]


# --------------------------------------------------------------------------- anchors
@converter("MatMul")
def _matmul(c: Ctx):
    a, b = c.input(0), c.input(1)
    a_shape, b_shape = c.b.shape(a), c.b.shape(b)
    if len(a_shape) == 1:
        a = c.b.add("reshape", [a], c.name + "_a2d", shape=(1,) + a_shape)
    if len(b_shape) == 1:
        b = c.b.add("reshape", [b], c.name + "_b2d", shape=b_shape + (1,))
    out = c.b.add("matmul", [a, b], c.name + "_mm" if (len(a_shape) == 1 or len(b_shape) == 1) else c.name)
    if len(a_shape) == 1 or len(b_shape) == 1:
        shape = list(c.b.shape(out))
        if len(b_shape) == 1:
            shape.pop(-1)
        if len(a_shape) == 1:
            shape.pop(-2 if len(b_shape) != 1 else -1)
        out = c.b.add("reshape", [out], c.name, shape=tuple(shape))
    return [out]


@converter("Gemm")
def _gemm(c: Ctx):
    a, b = c.input(0), c.input(1)
    if c.attr("transA", 0):
        a = c.b.add("transpose", [a], c.name + "_at", perm=(1, 0))
    out = c.b.add("matmul", [a, b], c.name + "_mm", transpose_b=bool(c.attr("transB", 0)))
    alpha, beta = float(c.attr("alpha", 1.0)), float(c.attr("beta", 1.0))
    if alpha != 1.0:
        out = c.b.add("mul", [out, c.b.const(np.array(alpha, dtype=c.b.type(out).dtype))], c.name + "_alpha")
    bias = c.input(2)
    if bias is not None and beta != 0.0:
        if beta != 1.0:
            bias = c.b.add("mul", [bias, c.b.const(np.array(beta, dtype=c.b.type(bias).dtype))], c.name + "_beta")
        out = c.b.add("add", [out, bias], c.name + "_bias")
    return [c.b.rename(out, c.name)]


def _same_pads(in_shape, kernel, strides, dilations, mode):
    pads_lo, pads_hi = [], []
    for size, k, s, d in zip(in_shape, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        lo = total // 2 if mode == "SAME_UPPER" else total - total // 2
        pads_lo.append(lo)
        pads_hi.append(total - lo)
    return pads_lo + pads_hi


def _spatial_pads(c: Ctx, in_shape, kernel, strides, dilations):
    auto = c.attr("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(in_shape, kernel, strides, dilations, auto)
    if auto == "VALID":
        return [0] * (2 * len(kernel))
    return list(c.attr("pads", [0] * (2 * len(kernel))))


def _as_2d(c: Ctx, x: str, rank: int, what: str) -> str:
    """1-D convolution/pooling runs as 2-D with a unit height."""
    if rank == 1:
        shape = c.b.shape(x)
        return c.b.add("reshape", [x], c.name + f"_{what}2d", shape=shape[:2] + (1,) + shape[2:])
    if rank != 2:
        raise c.fail(f"{rank}-D {c.node.op_type} is not supported (1-D and 2-D are)")
    return x


@converter("Conv")
def _conv(c: Ctx):
    x, w = c.input(0), c.input(1)
    x_shape, w_shape = c.b.shape(x), c.b.shape(w)
    rank = len(x_shape) - 2
    kernel = list(c.attr("kernel_shape", w_shape[2:]))
    strides = list(c.attr("strides", [1] * rank))
    dilations = list(c.attr("dilations", [1] * rank))
    pads = _spatial_pads(c, x_shape[2:], kernel, strides, dilations)
    x, w = _as_2d(c, x, rank, "x"), _as_2d(c, w, rank, "w")
    if rank == 1:
        strides, dilations, pads = [1] + strides, [1] + dilations, [0, pads[0], 0, pads[1]]
    ins = [x, w] + ([c.input(2)] if c.input(2) else [])
    out = c.b.add("conv2d", ins, c.name + ("_2d" if rank == 1 else ""), strides=strides, pads=pads,
                  dilations=dilations, groups=int(c.attr("group", 1)))
    if rank == 1:
        s = c.b.shape(out)
        out = c.b.add("reshape", [out], c.name, shape=(s[0], s[1], s[3]))
    return [out]


@converter("BatchNormalization")
def _batch_norm(c: Ctx):
    eps = float(c.attr("epsilon", 1e-5))
    if not c.attr("training_mode", 0):
        return [c.b.add("batch_norm", c.inputs[:5], c.name, epsilon=eps)]
    # training: normalize with the batch's statistics and update the running ones
    x, scale, bias, mean, var = c.inputs[:5]
    shape, dtype = c.b.shape(x), c.b.type(x).dtype
    axes = (0,) + tuple(range(2, len(shape)))
    batch_mean = c.b.add("reduce", [x], c.name + "_mean", kind="mean", axes=axes, keepdims=False)
    centered = c.b.add("sub", [x, c.b.add("reshape", [batch_mean], c.name + "_mean_b", shape=(1, shape[1]) + (1,) * (len(shape) - 2))],
                       c.name + "_centered")
    batch_var = c.b.add("reduce", [c.b.add("mul", [centered, centered], c.name + "_sq")], c.name + "_var", kind="mean",
                        axes=axes, keepdims=False)
    y = c.b.add("batch_norm", [x, scale, bias, batch_mean, batch_var], c.name, epsilon=eps)
    momentum = float(c.attr("momentum", 0.9))

    def running(old: str, new: str, what: str) -> str:
        kept = c.b.add("mul", [old, c.b.const(np.array(momentum, dtype=dtype))], c.name + f"_{what}_kept")
        return c.b.add("add", [kept, c.b.add("mul", [new, c.b.const(np.array(1 - momentum, dtype=dtype))], c.name + f"_{what}_new")],
                       c.name + f"_running_{what}")

    return [y, running(mean, batch_mean, "mean"), running(var, batch_var, "var")]


# --------------------------------------------------------------------------- pooling, reductions
@converter("MaxPool", "AveragePool")
def _pool(c: Ctx):
    x = c.input(0)
    x_shape = c.b.shape(x)
    rank = len(x_shape) - 2
    kernel = list(c.attr("kernel_shape"))
    strides = list(c.attr("strides", [1] * rank))
    dilations = list(c.attr("dilations", [1] * rank))
    pads = _spatial_pads(c, x_shape[2:], kernel, strides, dilations)
    extra = [0] * rank
    if c.attr("ceil_mode", 0):  # grow the high pads so floor division gives ceil's size
        for i in range(rank):
            size = x_shape[2 + i] + pads[i] + pads[i + rank] - dilations[i] * (kernel[i] - 1) - 1
            out = -(-size // strides[i]) + 1
            if (out - 1) * strides[i] >= x_shape[2 + i] + pads[i]:
                out -= 1  # the last window must start inside the input or its low pad
            grow = (out - 1) * strides[i] - size  # negative when the last window would start in the high pad
            pads[i + rank] += grow
            extra[i] = max(grow, 0)
    attrs = {"kind": "max" if c.node.op_type == "MaxPool" else "avg", "count_include_pad": bool(c.attr("count_include_pad", 0))}
    if len(c.node.output) > 1 and c.node.output[1]:  # MaxPool's Indices
        if rank != 2:
            raise c.fail(f"the Indices output of a {rank}-D MaxPool is not supported (2-D is)")
        indices = c.b.add("pool2d", [x], c.node.output[1], kernel=kernel, strides=strides, pads=pads, dilations=dilations,
                          ceil_extra=extra, kind="argmax", storage_order=int(c.attr("storage_order", 0)))
        return [c.b.add("pool2d", [x], c.name, kernel=kernel, strides=strides, pads=pads, dilations=dilations,
                        ceil_extra=extra, **attrs), indices]
    if rank == 3:
        return [_pool3d(c, x, kernel, strides, dilations, pads, extra, attrs)]
    x = _as_2d(c, x, rank, "x")
    if rank == 1:
        kernel, strides, dilations, pads, extra = [1] + kernel, [1] + strides, [1] + dilations, [0, pads[0], 0, pads[1]], [0] + extra
    out = c.b.add("pool2d", [x], c.name + ("_2d" if rank == 1 else ""), kernel=kernel, strides=strides,
                  pads=pads, dilations=dilations, ceil_extra=extra, **attrs)
    if rank == 1:
        s = c.b.shape(out)
        out = c.b.add("reshape", [out], c.name, shape=(s[0], s[1], s[3]))
    return [out]


def _pool3d(c: Ctx, x: str, kernel, strides, dilations, pads, extra, attrs) -> str:
    """A 3-D pool is separable: pool (H, W) of every depth slice, then pool depth.  Exact for max and
    for both averages, since a window's tap count is the product of its per-axis counts."""
    n, ch, d, h, w = c.b.shape(x)
    hw = c.b.add("reshape", [x], c.name + "_slices", shape=(n, ch * d, h, w))
    hw = c.b.add("pool2d", [hw], c.name + "_hw", kernel=kernel[1:], strides=strides[1:], dilations=dilations[1:],
                 pads=[pads[1], pads[2], pads[4], pads[5]], ceil_extra=extra[1:], **attrs)
    h2, w2 = c.b.shape(hw)[2:]
    dd = c.b.add("reshape", [hw], c.name + "_depth", shape=(n, ch, d, h2 * w2))
    dd = c.b.add("pool2d", [dd], c.name + "_d", kernel=[kernel[0], 1], strides=[strides[0], 1],
                 dilations=[dilations[0], 1], pads=[pads[0], 0, pads[3], 0], ceil_extra=[extra[0], 0], **attrs)
    return c.b.add("reshape", [dd], c.name, shape=(n, ch, c.b.shape(dd)[2], h2, w2))


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(c: Ctx):
    ndim = len(c.b.shape(c.input(0)))
    kind = "mean" if c.node.op_type == "GlobalAveragePool" else "max"
    return [c.b.add("reduce", [c.input(0)], c.name, kind=kind, axes=tuple(range(2, ndim)), keepdims=True)]


REDUCE_MAP = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min", "ReduceProd": "prod"}


@converter(*REDUCE_MAP)
def _reduce(c: Ctx):
    x = c.input(0)
    ndim = len(c.b.shape(x))
    axes_in_input = c.node.op_type == "ReduceSum" and c.opset >= 13 or c.opset >= 18
    axes = c.const_input(1) if axes_in_input else c.attr("axes")
    if axes is None or len(axes) == 0:
        if c.attr("noop_with_empty_axes", 0):
            return [c.b.rename(x, c.name)]
        axes = range(ndim)
    axes = tuple(sorted(_axis(int(a), ndim) for a in np.ravel(axes)))
    return [c.b.add("reduce", [x], c.name, kind=REDUCE_MAP[c.node.op_type], axes=axes, keepdims=bool(c.attr("keepdims", 1)))]


@converter("Softmax", "LogSoftmax")
def _softmax(c: Ctx):
    x = c.input(0)
    ndim = len(c.b.shape(x))
    log = c.node.op_type == "LogSoftmax"
    if c.opset >= 13:
        return [c.b.add("softmax", [x], c.name, axis=_axis(int(c.attr("axis", -1)), ndim), log=log)]
    # opset < 13: softmax over the flattened trailing dims starting at `axis`
    axis = _axis(int(c.attr("axis", 1)), ndim)
    shape = c.b.shape(x)
    flat = c.b.add("reshape", [x], c.name + "_flat", shape=(int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))
    sm = c.b.add("softmax", [flat], c.name + "_sm", axis=1, log=log)
    return [c.b.add("reshape", [sm], c.name, shape=shape)]


@converter("LayerNormalization")
def _layer_norm(c: Ctx):
    x = c.input(0)
    ndim = len(c.b.shape(x))
    axis, eps = _axis(int(c.attr("axis", -1)), ndim), float(c.attr("epsilon", 1e-5))
    out = c.b.add("layer_norm", c.inputs[:3], c.name, axis=axis, epsilon=eps)
    if not any(c.node.output[1:]):
        return [out]
    # the optional Mean and InvStdDev outputs, in the stash type (float32 unless stash_type says otherwise)
    stash = tensor_dtype(int(c.attr("stash_type", 1)), f"{c.node.op_type} node {c.node.name or c.name!r}: stash_type")
    if c.b.type(x).dtype != stash:
        x = c.b.add("cast", [x], c.name + "_stash", to=stash)
    axes = tuple(range(axis, ndim))
    mean = c.b.add("reduce", [x], c.name + "_mean", kind="mean", axes=axes, keepdims=True)
    centered = c.b.add("sub", [x, mean], c.name + "_centered")
    var = c.b.add("reduce", [c.b.add("mul", [centered, centered], c.name + "_sq")], c.name + "_var", kind="mean",
                  axes=axes, keepdims=True)
    std = c.b.add("sqrt", [c.b.add("add", [var, c.b.const(np.array(eps, dtype=stash))], c.name + "_var_eps")], c.name + "_std")
    return [out, mean, c.b.add("reciprocal", [std], c.name + "_inv_std")]


# --------------------------------------------------------------------------- data movement
@converter("Reshape")
def _reshape(c: Ctx):
    x = c.input(0)
    in_shape = c.b.shape(x)
    target = [int(d) for d in c.const_input(1)]
    allowzero = c.attr("allowzero", 0)
    shape = [in_shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(target)]
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1]))
        shape[shape.index(-1)] = int(np.prod(in_shape)) // max(known, 1)
    return [c.b.add("reshape", [x], c.name, shape=tuple(shape))]


@converter("Flatten")
def _flatten(c: Ctx):
    shape = c.b.shape(c.input(0))
    axis = _axis(int(c.attr("axis", 1)), len(shape))
    return [c.b.add("reshape", [c.input(0)], c.name, shape=(int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))]


@converter("Squeeze")
def _squeeze(c: Ctx):
    shape = c.b.shape(c.input(0))
    axes = c.const_input(1) if c.opset >= 13 else c.attr("axes")
    axes = {_axis(int(a), len(shape)) for a in np.ravel(axes)} if axes is not None else {i for i, d in enumerate(shape) if d == 1}
    return [c.b.add("reshape", [c.input(0)], c.name, shape=tuple(d for i, d in enumerate(shape) if i not in axes))]


@converter("Unsqueeze")
def _unsqueeze(c: Ctx):
    shape = list(c.b.shape(c.input(0)))
    axes = c.const_input(1) if c.opset >= 13 else c.attr("axes")
    out_rank = len(shape) + len(np.ravel(axes))
    for a in sorted(_axis(int(a), out_rank) for a in np.ravel(axes)):
        shape.insert(a, 1)
    return [c.b.add("reshape", [c.input(0)], c.name, shape=tuple(shape))]


@converter("Transpose")
def _transpose(c: Ctx):
    ndim = len(c.b.shape(c.input(0)))
    perm = c.attr("perm", list(reversed(range(ndim))))
    return [c.b.add("transpose", [c.input(0)], c.name, perm=tuple(int(p) for p in perm))]


@converter("Concat")
def _concat(c: Ctx):
    ndim = len(c.b.shape(c.input(0)))
    ins = [i for i in c.inputs if c.b.type(i).size > 0 or len(c.inputs) == 1]
    return [c.b.add("concat", ins, c.name, axis=_axis(int(c.attr("axis")), ndim))]


@converter("Split")
def _split(c: Ctx):
    x = c.input(0)
    shape = c.b.shape(x)
    axis = _axis(int(c.attr("axis", 0)), len(shape))
    n_out = len(c.node.output)
    sizes = c.const_input(1) if c.opset >= 13 else c.attr("split")
    if sizes is None:
        chunk = -(-shape[axis] // int(c.attr("num_outputs", n_out)))
        sizes = [min(chunk, shape[axis] - k * chunk) for k in range(n_out)]
    outs, start = [], 0
    for out_name, size in zip(c.node.output, np.ravel(sizes)):
        size = int(size)
        outs.append(c.b.add("slice", [x], out_name, starts=(start,), ends=(start + size,), axes=(axis,), steps=(1,)))
        start += size
    return outs


@converter("Slice")
def _slice(c: Ctx):
    x = c.input(0)
    shape = c.b.shape(x)
    starts, ends = c.const_input(1), c.const_input(2)
    axes = c.const_input(3, np.arange(len(starts)))
    steps = c.const_input(4, np.ones(len(starts), dtype=np.int64))
    norm = {"starts": [], "ends": [], "axes": [], "steps": []}
    for s, e, a, st in zip(*(np.ravel(v).tolist() for v in (starts, ends, axes, steps))):
        a = _axis(int(a), len(shape))
        dim = shape[a]
        s, e, st = int(s), int(e), int(st)
        if st == 0:
            raise c.fail("slice step 0")
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        else:
            s, e = min(max(s, -1), dim - 1), min(max(e, -1), dim - 1)
        norm["starts"].append(s)
        norm["ends"].append(e)
        norm["axes"].append(a)
        norm["steps"].append(st)
    return [c.b.add("slice", [x], c.name, **{k: tuple(v) for k, v in norm.items()})]


@converter("Gather")
def _gather(c: Ctx):
    ndim = len(c.b.shape(c.input(0)))
    return [c.b.add("gather", [c.input(0), c.input(1)], c.name, axis=_axis(int(c.attr("axis", 0)), ndim))]


@converter("Expand")
def _expand(c: Ctx):
    return [c.b.add("expand", [c.input(0)], c.name, shape=tuple(int(d) for d in c.const_input(1)))]


@converter("Pad")
def _pad(c: Ctx):
    x = c.input(0)
    ndim = len(c.b.shape(x))
    if c.opset >= 11:
        pads = [int(p) for p in c.const_input(1)]
        value = c.const_input(2)
        axes = c.const_input(3)
    else:
        pads, value, axes = list(c.attr("pads")), c.attr("value", 0.0), None
    if axes is not None:
        full = [0] * (2 * ndim)
        axes = [_axis(int(a), ndim) for a in np.ravel(axes)]
        for k, a in enumerate(axes):
            full[a], full[a + ndim] = pads[k], pads[k + len(axes)]
        pads = full
    if any(p < 0 for p in pads):
        raise c.fail("negative pads are not supported")
    mode = c.attr("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise c.fail(f"pad mode {mode!r} is not supported")
    value = 0.0 if value is None or np.size(value) == 0 else float(np.ravel(value)[0])
    return [c.b.add("pad", [x], c.name, pads=tuple(pads), mode=mode, value=value)]


RESIZE_COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                      "tf_crop_and_resize")


@converter("Resize")
def _resize(c: Ctx):
    x = c.input(0)
    shape = c.b.shape(x)
    nd = len(shape)
    if c.opset < 11:  # Resize-10: (X, scales), Upsample's asymmetric floor semantics
        roi, scales, sizes = None, c.const_input(1), None
        coord, nearest = "asymmetric", "floor"
    else:
        roi, scales, sizes = c.const_input(1), c.const_input(2), c.const_input(3)
        coord, nearest = c.attr("coordinate_transformation_mode", "half_pixel"), c.attr("nearest_mode", "round_prefer_floor")
    mode = c.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic"):
        raise c.fail(f"mode {mode!r} is not supported")
    if coord not in RESIZE_COORD_MODES:
        raise c.fail(f"coordinate_transformation_mode {coord!r} is not supported")
    axes = [_axis(int(a), nd) for a in c.attr("axes", range(nd))]
    out_sizes, out_scales = list(shape), [1.0] * nd
    if sizes is not None and np.size(sizes):
        ratios = [int(s) / shape[a] for s, a in zip(np.ravel(sizes), axes)]
        policy = c.attr("keep_aspect_ratio_policy", "stretch")
        if policy not in ("stretch", "not_larger", "not_smaller"):
            raise c.fail(f"keep_aspect_ratio_policy {policy!r} is not supported")
        if policy != "stretch":  # one scale for every resized axis, sizes rounded half up
            ratios = [(min if policy == "not_larger" else max)(ratios)] * len(axes)
        for k, a in enumerate(axes):
            out_scales[a] = ratios[k]
            out_sizes[a] = int(np.ravel(sizes)[k]) if policy == "stretch" else int(ratios[k] * shape[a] + 0.5)
    elif scales is not None and np.size(scales):
        for s, a in zip(np.ravel(scales).tolist(), axes):
            out_scales[a], out_sizes[a] = float(s), int(np.floor(shape[a] * float(s)))
    else:
        raise c.fail("needs scales or sizes")
    if len(axes) != (np.size(sizes) if sizes is not None and np.size(sizes) else np.size(scales)):
        raise c.fail("scales / sizes do not match the resized axes")
    attrs = {}
    if coord == "tf_crop_and_resize":
        if roi is None or np.size(roi) != 2 * len(axes):
            raise c.fail("tf_crop_and_resize needs a constant roi")
        full = [0.0] * nd + [1.0] * nd
        for k, a in enumerate(axes):
            full[a], full[a + nd] = float(np.ravel(roi)[k]), float(np.ravel(roi)[k + len(axes)])
        attrs = {"roi": full, "extrapolation_value": float(c.attr("extrapolation_value", 0.0))}
    if mode != "nearest":
        attrs.update(antialias=bool(c.attr("antialias", 0)), exclude_outside=bool(c.attr("exclude_outside", 0)))
    if mode == "cubic":
        attrs["cubic_a"] = float(c.attr("cubic_coeff_a", -0.75))
    return [c.b.add("resize", [x], c.name, sizes=tuple(out_sizes), scales=tuple(out_scales), mode=mode, coord_mode=coord,
                    nearest_mode=nearest, **attrs)]


# --------------------------------------------------------------------------- folded at import
@converter("Shape")
def _shape(c: Ctx):
    shape = np.array(c.b.shape(c.input(0)), dtype=np.int64)
    start, end = c.attr("start", 0), c.attr("end", None)
    return [c.b.alias_const(c.name, shape[start:end])]


@converter("Size")
def _size(c: Ctx):
    return [c.b.alias_const(c.name, np.array(c.b.type(c.input(0)).size, dtype=np.int64))]


@converter("Constant")
def _constant(c: Ctx):
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in c.attrs:
            v = c.attrs[key]
            dtype = np.float32 if "float" in key else (np.int64 if "int" in key else None)
            return [c.b.alias_const(c.name, constant_array(np.asarray(v, dtype=dtype), f"Constant node {c.node.name or c.name!r}"))]
    raise c.fail("only value/value_float(s)/value_int(s) constants are supported")


@converter("ConstantOfShape")
def _constant_of_shape(c: Ctx):
    shape = tuple(int(d) for d in c.const_input(0))
    value = c.attr("value", np.zeros(1, dtype=np.float32))
    return [c.b.alias_const(c.name, np.full(shape, np.ravel(value)[0], dtype=np.asarray(value).dtype))]


@converter("Range")
def _range(c: Ctx):
    start, limit, delta = (c.const_input(k) for k in range(3))
    return [c.b.alias_const(c.name, np.arange(start, limit, delta).astype(np.asarray(start).dtype))]


# =========================================================================== driver
def load_model(path: str | os.PathLike) -> "onnx.ModelProto":
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"model file not found: {path}")
    try:
        model = onnx.load(path)
    except Exception as e:  # onnx raises DecodeError, ValueError, ... for bad bytes
        raise ModelLoadError(f"{path} is not a readable ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})") from None
    if not model.graph.node and not model.graph.output:
        raise ModelLoadError(f"{path} holds no ONNX graph (empty or not an ONNX file)")
    return model


def _value_type(vi, input_shapes: dict[str, tuple[int, ...]]) -> TensorType:
    if not vi.type.HasField("tensor_type"):
        raise UnsupportedOpError(f"input {vi.name!r} is a {vi.type.WhichOneof('value')}, not a tensor")
    tt = vi.type.tensor_type
    dtype = tensor_dtype(tt.elem_type, f"input {vi.name!r}")
    if vi.name in input_shapes:
        shape = tuple(int(d) for d in input_shapes[vi.name])
        declared = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if len(declared) != len(shape) or any(d is not None and d != s for d, s in zip(declared, shape)):
            raise ShapeError(f"input {vi.name!r}: given shape {shape} does not fit the model's {tuple(d or '?' for d in declared)}")
        return TensorType(shape, dtype)
    dims = []
    for k, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):  # 0 is a legal (empty) dimension
            dims.append(int(d.dim_value))
        else:
            sym = d.dim_param or "?"
            raise ShapeError(
                f"input {vi.name!r} has dynamic dimension {k} ({sym}); bind it with --input-shape {vi.name}=..."
            )
    return TensorType(tuple(dims), dtype)


def from_onnx(model, *, input_shapes: dict[str, tuple[int, ...]] | None = None, name: str = "main") -> Graph:
    """Import an ONNX model (a path or a ModelProto) into a tilecraft Graph."""
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model)
    input_shapes = dict(input_shapes or {})
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    g = model.graph

    foreign = [n for n in g.node if n.domain not in ("", "ai.onnx")]
    unsupported = [n for n in g.node if n.op_type not in CONVERTERS] + foreign
    if unsupported:
        listed = sorted({f"{n.op_type} (node {n.name or n.output[0]!r})" for n in unsupported})
        raise UnsupportedOpError(f"unsupported ONNX op(s): {', '.join(listed)}")

    b = GraphBuilder(name)
    initializers = {t.name for t in g.initializer}
    for t in g.initializer:
        tensor_dtype(t.data_type, f"initializer {t.name!r}")
        try:
            array = numpy_helper.to_array(t)
        except Exception as e:  # external data missing, malformed bytes
            raise ModelLoadError(f"initializer {t.name!r} cannot be read: {e}") from None
        b.alias_const(t.name, array)
    unknown = set(input_shapes) - {vi.name for vi in g.input}
    if unknown:
        raise ShapeError(f"--input-shape names unknown input(s) {sorted(unknown)}; inputs are {[vi.name for vi in g.input if vi.name not in initializers]}")
    for vi in g.input:
        if vi.name not in initializers:
            b.add_input(vi.name, _value_type(vi, input_shapes))

    for node in g.node:
        ctx = Ctx(b, node, opset)
        try:
            outs = CONVERTERS[node.op_type](ctx)
        except TilecraftError as e:
            if isinstance(e, UnsupportedOpError):
                raise
            raise type(e)(f"{node.op_type} node {node.name or node.output[0]!r}: {e}") from None
        for want, got in zip(node.output, outs):
            if want and got != want:
                b.rename(got, want)
    return b.finish([o.name for o in g.output])
