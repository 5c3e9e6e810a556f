"""ONNX ModelProto -> tilecraft Graph (opsets 13-18; older opsets where the op is unchanged).

Each converter reads attributes and constant inputs and emits our ops through a
GraphBuilder.  Shapes are static: every symbolic input dimension must be bound
by the caller (`input_shapes`), else a ShapeError names it.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from ..compiler.ir import Graph, TensorType
from ..errors import ModelLoadError, ShapeError, TilecraftError, UnsupportedOpError
from .builder import GraphBuilder

try:  # onnx is a hard dependency, but keep the import error readable
    import onnx
    from onnx import numpy_helper
except ImportError as e:  # pragma: no cover
    raise ImportError("tilecraft's ONNX frontend needs the 'onnx' package") from e

ONNX_DTYPES = {
    1: "float32", 10: "float16", 11: "float64", 7: "int64", 6: "int32", 3: "int8", 2: "uint8", 9: "bool",
}


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
        if a_t.dtype != b_t.dtype:
            ins = [ins[0], c.b.add("cast", [ins[1]], c.name + "_exp", to=a_t.dtype)]
    out = ins[0]
    for k, other in enumerate(ins[1:]):
        out = c.b.add(op, [out, other], c.name if k == len(ins) - 2 else c.name + f"_{k}")
    if len(ins) == 1:
        out = c.b.rename(out, c.name)
    return [out]


@converter("Where")
def _where(c: Ctx):
    return [c.b.add("where", c.inputs, c.name)]


@converter("Cast")
def _cast(c: Ctx):
    to = ONNX_DTYPES.get(c.attr("to"))
    if to is None:
        raise c.fail(f"cast to ONNX dtype {c.attr('to')} is not supported")
    return [c.b.add("cast", [c.input(0)], c.name, to=to)]


@converter("Identity", "Dropout")
def _identity(c: Ctx):
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
    if c.attr("training_mode", 0):
        raise c.fail("training_mode=1 is not supported (inference only)")
    return [c.b.add("batch_norm", c.inputs[:5], c.name, epsilon=float(c.attr("epsilon", 1e-5)))]


# --------------------------------------------------------------------------- pooling, reductions
@converter("MaxPool", "AveragePool")
def _pool(c: Ctx):
    if len(c.node.output) > 1 and c.node.output[1]:
        raise c.fail("MaxPool's Indices output is not supported")
    x = c.input(0)
    x_shape = c.b.shape(x)
    rank = len(x_shape) - 2
    kernel = list(c.attr("kernel_shape"))
    strides = list(c.attr("strides", [1] * rank))
    dilations = list(c.attr("dilations", [1] * rank))
    pads = _spatial_pads(c, x_shape[2:], kernel, strides, dilations)
    if c.attr("ceil_mode", 0):  # grow the high pads so floor division gives ceil's size
        for i in range(rank):
            size = x_shape[2 + i] + pads[i] + pads[i + rank] - dilations[i] * (kernel[i] - 1) - 1
            out = -(-size // strides[i]) + 1
            if (out - 1) * strides[i] >= x_shape[2 + i] + pads[i]:
                out -= 1  # the last window must start inside the input or its low pad
            pads[i + rank] += (out - 1) * strides[i] - size
    x = _as_2d(c, x, rank, "x")
    if rank == 1:
        kernel, strides, dilations, pads = [1] + kernel, [1] + strides, [1] + dilations, [0, pads[0], 0, pads[1]]
    kind = "max" if c.node.op_type == "MaxPool" else "avg"
    out = c.b.add("pool2d", [x], c.name + ("_2d" if rank == 1 else ""), kind=kind, kernel=kernel, strides=strides,
                  pads=pads, dilations=dilations, count_include_pad=bool(c.attr("count_include_pad", 0)))
    if rank == 1:
        s = c.b.shape(out)
        out = c.b.add("reshape", [out], c.name, shape=(s[0], s[1], s[3]))
    return [out]


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
    if any(o for o in c.node.output[1:]):
        raise c.fail("the Mean / InvStdDev outputs are not supported")
    ndim = len(c.b.shape(c.input(0)))
    return [c.b.add("layer_norm", c.inputs[:3], c.name, axis=_axis(int(c.attr("axis", -1)), ndim),
                    epsilon=float(c.attr("epsilon", 1e-5)))]


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
    if mode not in ("constant", "reflect", "edge"):
        raise c.fail(f"pad mode {mode!r} is not supported")
    value = 0.0 if value is None or np.size(value) == 0 else float(np.ravel(value)[0])
    return [c.b.add("pad", [x], c.name, pads=tuple(pads), mode=mode, value=value)]


@converter("Resize")
def _resize(c: Ctx):
    x = c.input(0)
    shape = c.b.shape(x)
    scales = c.const_input(2) if c.input(2) else None
    sizes = c.const_input(3) if c.input(3) else None
    if sizes is not None and np.size(sizes):
        out = tuple(int(s) for s in sizes)
    elif scales is not None and np.size(scales):
        out = tuple(int(np.floor(d * float(s))) for d, s in zip(shape, scales))
    else:
        raise c.fail("needs scales or sizes")
    mode = c.attr("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise c.fail(f"mode {mode!r} is not supported (nearest and linear are)")
    coord = c.attr("coordinate_transformation_mode", "half_pixel")
    if coord not in ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"):
        raise c.fail(f"coordinate_transformation_mode {coord!r} is not supported")
    if c.attr("antialias", 0) or c.attr("axes") is not None or c.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise c.fail("antialias / axes / keep_aspect_ratio_policy are not supported")
    return [c.b.add("resize", [x], c.name, sizes=out, mode=mode, coord_mode=coord,
                    nearest_mode=c.attr("nearest_mode", "round_prefer_floor"))]


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
            return [c.b.alias_const(c.name, np.asarray(v, dtype=dtype))]
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
    tt = vi.type.tensor_type
    dtype = ONNX_DTYPES.get(tt.elem_type)
    if dtype is None:
        raise UnsupportedOpError(f"input {vi.name!r} has unsupported ONNX element type {tt.elem_type}")
    if vi.name in input_shapes:
        shape = tuple(int(d) for d in input_shapes[vi.name])
        declared = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if len(declared) != len(shape) or any(d is not None and d != s for d, s in zip(declared, shape)):
            raise ShapeError(f"input {vi.name!r}: given shape {shape} does not fit the model's {tuple(d or '?' for d in declared)}")
        return TensorType(shape, dtype)
    dims = []
    for k, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
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
        try:
            b.alias_const(t.name, numpy_helper.to_array(t))
        except Exception as e:  # external data missing, unknown dtype
            raise ModelLoadError(f"initializer {t.name!r} cannot be read: {e}") from None
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
