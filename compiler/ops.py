"""tilecraft's operator set: for each op, its kind (for fusion), its type rule and a
numpy evaluation (for constant folding and as the reference interpreter in tests).

Frontends translate ONNX / ATen operators into these; lowering to TensorIR lives
in `lower.py`.  Attribute values are always concrete (axes normalized, pads
explicit), so every rule here is plain arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import GraphError, ShapeError
from .ir import TensorType

# Fusion kinds, from "cheapest to fuse" to "anchor":
ELEMWISE = "elemwise"  # out[i] depends on in[i] (with broadcasting)
INJECTIVE = "injective"  # out[i] depends on one element of each input (reshape, slice...)
REDUCTION = "reduction"  # softmax, layer norm, reduce, pool
ANCHOR = "anchor"  # conv, matmul, fused attention: the heavy op of a kernel
OPAQUE = "opaque"  # fused groups


@dataclass(frozen=True)
class OpDef:
    name: str
    kind: str
    infer: Callable[[list[TensorType], dict], TensorType]
    evaluate: Callable[[list[np.ndarray], dict], np.ndarray]


OPS: dict[str, OpDef] = {}


def register(name: str, kind: str, infer, evaluate) -> None:
    OPS[name] = OpDef(name, kind, infer, evaluate)


def infer_type(op: str, inputs: list[TensorType], attrs: dict) -> TensorType:
    if op not in OPS:
        raise GraphError(f"unknown op {op!r}")
    return OPS[op].infer(inputs, attrs)


def evaluate(op: str, inputs: list[np.ndarray], attrs: dict) -> np.ndarray:
    out = OPS[op].evaluate(inputs, attrs)
    return np.asarray(out)


def op_kind(op: str) -> str:
    return OPS[op].kind


# ---------------------------------------------------------------------------
# helpers
def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(f"shapes {' and '.join(map(str, shapes))} do not broadcast") from None


def _same(inputs, attrs):
    return inputs[0]


def _to(dtype):
    return lambda inputs, attrs: TensorType(inputs[0].shape, dtype)


def _erf(x):
    return np.vectorize(math.erf, otypes=[x.dtype])(x) if x.size else x


def _sigmoid(x):
    return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype)


UNARY: dict[str, Callable[[np.ndarray, dict], np.ndarray]] = {
    "relu": lambda x, a: np.maximum(x, 0).astype(x.dtype),
    "sigmoid": lambda x, a: _sigmoid(x),
    "tanh": lambda x, a: np.tanh(x),
    "exp": lambda x, a: np.exp(x),
    "log": lambda x, a: np.log(x),
    "sqrt": lambda x, a: np.sqrt(x),
    "neg": lambda x, a: -x,
    "abs": lambda x, a: np.abs(x),
    "floor": lambda x, a: np.floor(x),
    "ceil": lambda x, a: np.ceil(x),
    "sin": lambda x, a: np.sin(x),
    "cos": lambda x, a: np.cos(x),
    "reciprocal": lambda x, a: (1 / x).astype(x.dtype),
    "erf": lambda x, a: _erf(x),
    "not": lambda x, a: np.logical_not(x),
    "clip": lambda x, a: np.clip(x, a.get("min", -np.inf), a.get("max", np.inf)).astype(x.dtype),
    "leaky_relu": lambda x, a: np.where(x >= 0, x, x * a["alpha"]).astype(x.dtype),
    "hard_sigmoid": lambda x, a: np.clip(x * a["alpha"] + a["beta"], 0, 1).astype(x.dtype),
    "hard_swish": lambda x, a: (x * np.clip(x / 6 + 0.5, 0, 1)).astype(x.dtype),
    "silu": lambda x, a: (x * _sigmoid(x)).astype(x.dtype),
    "gelu": lambda x, a: (
        (0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))))
        if a.get("approximate") == "tanh"
        else (0.5 * x * (1 + _erf(x / math.sqrt(2))))
    ).astype(x.dtype),
    "cast": lambda x, a: x.astype(a["to"]),
}


def _one_input(name: str, infer):
    """Unary ops read their parameters (clip's bounds, leaky_relu's alpha) from attributes: an extra
    input would be ignored by the lowering and the interpreter alike, so it is an error."""

    def checked(inputs, attrs):
        if len(inputs) != 1:
            raise GraphError(f"{name} takes one input and its parameters as attributes, got {len(inputs)} inputs")
        return infer(inputs, attrs)

    return checked


for _name, _fn in UNARY.items():
    register(
        _name,
        ELEMWISE,
        _one_input(_name, (lambda inputs, attrs: TensorType(inputs[0].shape, attrs["to"])) if _name == "cast" else (_to("bool") if _name == "not" else _same)),
        (lambda fn: lambda inputs, attrs: fn(inputs[0], attrs))(_fn),
    )

def _int_div(a, b, rounding: str):
    """Integer division: numpy's floor by default (PyTorch's `//`), or toward zero (ONNX, C) with rounding="trunc"."""
    q = a // b
    if rounding == "trunc":
        q = (q + ((a % b != 0) & ((a < 0) != (b < 0)))).astype(q.dtype)
    return q


def _pow(a, b):
    if np.issubdtype(a.dtype, np.integer):  # integer bases: computed in double, like ONNX Runtime
        return np.power(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)
    return np.power(a, b).astype(a.dtype)


BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "pow": lambda a, b: _pow(a, b),
    "minimum": np.minimum,
    "maximum": np.maximum,
    "mod": np.fmod,
    "equal": np.equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}
COMPARISONS = {"equal", "less", "less_equal", "greater", "greater_equal", "logical_and", "logical_or", "logical_xor"}


def _binary_infer(name):
    def infer(inputs, attrs):
        a, b = inputs
        if a.dtype != b.dtype and name != "pow":
            raise ShapeError(f"{name}: operand dtypes differ ({a.dtype} vs {b.dtype})")
        return TensorType(broadcast_shapes(a.shape, b.shape), "bool" if name in COMPARISONS else a.dtype)

    return infer


for _name, _fn in BINARY.items():
    register(_name, ELEMWISE, _binary_infer(_name), (lambda fn: lambda inputs, attrs: fn(inputs[0], inputs[1]))(_fn))


def _div_eval(inputs, attrs):
    a, b = inputs
    if np.issubdtype(a.dtype, np.integer):
        return _int_div(a, b, attrs.get("rounding", "floor"))
    return np.divide(a, b)


register("div", ELEMWISE, _binary_infer("div"), _div_eval)


def _where_infer(inputs, attrs):
    c, x, y = inputs
    if x.dtype != y.dtype:
        raise ShapeError(f"where: branch dtypes differ ({x.dtype} vs {y.dtype})")
    return TensorType(broadcast_shapes(c.shape, x.shape, y.shape), x.dtype)


register("where", ELEMWISE, _where_infer, lambda i, a: np.where(i[0], i[1], i[2]))


# ---------------------------------------------------------------------------
# matmul: numpy semantics for >= 2-D operands, optional transposed B (Gemm, linear)
def unpack_matmul_weight(w: np.ndarray, layout: str | None) -> np.ndarray:
    """KN{b}n = [N/b, K, b] -> [K, N] (the inverse of passes.pack_weights); as it is otherwise."""
    if not layout:
        return w
    nb, k, b = w.shape
    return w.transpose(1, 0, 2).reshape(k, nb * b)


def _matmul_infer(inputs, attrs):
    a, b = inputs
    if attrs.get("weight_layout"):
        if b.ndim != 3:
            raise ShapeError(f"matmul: weight layout {attrs['weight_layout']} needs a 3-D weight, got {b}")
        b = TensorType((b.shape[1], b.shape[0] * b.shape[2]), b.dtype)
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError("matmul operands must be at least 2-D (frontends reshape vectors)")
    bk, bn = (b.shape[-1], b.shape[-2]) if attrs.get("transpose_b") else (b.shape[-2], b.shape[-1])
    if a.shape[-1] != bk:
        raise ShapeError(f"matmul: inner dimensions differ ({a.shape} x {b.shape})")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return TensorType(batch + (a.shape[-2], bn), a.dtype)


def _matmul_eval(inputs, attrs):
    a, b = inputs
    b = unpack_matmul_weight(b, attrs.get("weight_layout"))
    if attrs.get("transpose_b"):
        b = np.swapaxes(b, -1, -2)
    return np.matmul(a, b)


register("matmul", ANCHOR, _matmul_infer, _matmul_eval)


def _bn_eval(inputs, attrs):
    x, scale, bias, mean, var = inputs
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale / np.sqrt(var + attrs["epsilon"])
    return ((x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)).astype(x.dtype)


register("batch_norm", ELEMWISE, _same, _bn_eval)




# ---------------------------------------------------------------------------
# reductions, softmax, layer norm
def _reduce_infer(inputs, attrs):
    x = inputs[0]
    axes, keep = attrs["axes"], attrs.get("keepdims", True)
    shape = tuple((1 if i in axes else d) for i, d in enumerate(x.shape) if keep or i not in axes)
    return TensorType(shape, x.dtype)


_REDUCERS = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod}


def reduce_identity(kind: str, dtype: str):
    """max / min of an empty set: -inf / +inf for floats, the type's bounds for integers."""
    if dtype == "bool":
        return kind == "min"
    if dtype.startswith("float"):
        return -np.inf if kind == "max" else np.inf
    info = np.iinfo(dtype)
    return int(info.min if kind == "max" else info.max)


def _reduce_eval(inputs, attrs):
    x, kind = inputs[0], attrs["kind"]
    kwargs = {"initial": reduce_identity(kind, str(x.dtype))} if kind in ("max", "min") else {}
    with np.errstate(invalid="ignore", divide="ignore"):  # the mean of an empty set is NaN, as in ONNX
        out = _REDUCERS[kind](x, axis=tuple(attrs["axes"]), keepdims=attrs.get("keepdims", True), **kwargs)
    return np.asarray(out).astype(x.dtype)


register("reduce", REDUCTION, _reduce_infer, _reduce_eval)


def _softmax_eval(inputs, attrs):
    x = inputs[0].astype(np.float64)
    e = np.exp(x - x.max(axis=attrs["axis"], keepdims=True))
    out = e / e.sum(axis=attrs["axis"], keepdims=True)
    if attrs.get("log"):
        out = np.log(out)
    return out.astype(inputs[0].dtype)


register("softmax", REDUCTION, _same, _softmax_eval)


def _layer_norm_eval(inputs, attrs):
    x = inputs[0].astype(np.float64)
    axes = tuple(range(attrs["axis"], x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    out = (x - mean) / np.sqrt(var + attrs["epsilon"]) * inputs[1]
    if len(inputs) > 2:
        out = out + inputs[2]
    return out.astype(inputs[0].dtype)


register("layer_norm", REDUCTION, _same, _layer_norm_eval)


# ---------------------------------------------------------------------------
# data movement
def _reshape_infer(inputs, attrs):
    shape = tuple(attrs["shape"])
    if int(np.prod(shape, dtype=np.int64)) != inputs[0].size:
        raise ShapeError(f"cannot reshape {inputs[0]} to {shape}")
    return TensorType(shape, inputs[0].dtype)


register("reshape", INJECTIVE, _reshape_infer, lambda i, a: i[0].reshape(a["shape"]))


def _transpose_infer(inputs, attrs):
    x, perm = inputs[0], attrs["perm"]
    if sorted(perm) != list(range(x.ndim)):
        raise ShapeError(f"transpose: perm {perm} does not fit rank {x.ndim}")
    return TensorType(tuple(x.shape[p] for p in perm), x.dtype)


register("transpose", INJECTIVE, _transpose_infer, lambda i, a: np.transpose(i[0], a["perm"]))


def _concat_infer(inputs, attrs):
    axis = attrs["axis"]
    base = inputs[0]
    for t in inputs[1:]:
        if t.ndim != base.ndim or any(d != e for k, (d, e) in enumerate(zip(t.shape, base.shape)) if k != axis):
            raise ShapeError(f"concat: shapes {base.shape} and {t.shape} differ off axis {axis}")
    shape = list(base.shape)
    shape[axis] = sum(t.shape[axis] for t in inputs)
    return TensorType(tuple(shape), base.dtype)


register("concat", INJECTIVE, _concat_infer, lambda i, a: np.concatenate(i, axis=a["axis"]))


def _slice_infer(inputs, attrs):
    x = inputs[0]
    shape = list(x.shape)
    for s, e, ax, st in zip(attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"]):
        shape[ax] = len(range(s, e, st))
    return TensorType(tuple(shape), x.dtype)


def _slice_eval(inputs, attrs):
    index = [slice(None)] * inputs[0].ndim
    for s, e, ax, st in zip(attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"]):
        index[ax] = slice(s, e if e >= 0 else None, st)
    return inputs[0][tuple(index)]


register("slice", INJECTIVE, _slice_infer, _slice_eval)


def _gather_infer(inputs, attrs):
    x, idx, axis = inputs[0], inputs[1], attrs["axis"]
    if idx.dtype not in ("int64", "int32"):
        raise ShapeError(f"gather indices must be integers, got {idx.dtype}")
    return TensorType(x.shape[:axis] + idx.shape + x.shape[axis + 1 :], x.dtype)


def _gather_eval(inputs, attrs):
    x, idx, axis = inputs[0], inputs[1], attrs["axis"]
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return np.take(x, idx, axis=axis)


register("gather", INJECTIVE, _gather_infer, _gather_eval)


def _expand_infer(inputs, attrs):
    return TensorType(broadcast_shapes(inputs[0].shape, tuple(attrs["shape"])), inputs[0].dtype)


register(
    "expand",
    INJECTIVE,
    _expand_infer,
    lambda i, a: np.broadcast_to(i[0], broadcast_shapes(i[0].shape, tuple(a["shape"]))).copy(),
)


def _pad_infer(inputs, attrs):
    x, pads = inputs[0], attrs["pads"]  # pads: (before_0.., after_0..)
    n = x.ndim
    return TensorType(tuple(d + pads[i] + pads[i + n] for i, d in enumerate(x.shape)), x.dtype)


def _pad_eval(inputs, attrs):
    x, pads, n = inputs[0], attrs["pads"], inputs[0].ndim
    width = [(pads[i], pads[i + n]) for i in range(n)]
    mode = attrs.get("mode", "constant")
    if mode == "constant":
        return np.pad(x, width, constant_values=attrs.get("value", 0))
    return np.pad(x, width, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])


register("pad", INJECTIVE, _pad_infer, _pad_eval)


def _resize_infer(inputs, attrs):
    return TensorType(tuple(attrs["sizes"]), inputs[0].dtype)


# Resize, per ONNX (opset 19): each resized axis maps output index o to a source coordinate x
# (`resize_source_index`), then samples the input with a small kernel around x.  Attributes:
# sizes / scales (per axis), mode (nearest | linear | cubic), coord_mode, nearest_mode, cubic_a,
# exclude_outside, antialias, roi (starts + ends, tf_crop_and_resize only), extrapolation_value.
RESIZE_SUPPORT = {"linear": 1.0, "cubic": 2.0}  # kernel radius


def resize_source_index(o, n_in: int, n_out: int, scale: float, coord_mode: str, roi=(0.0, 1.0)):
    """Source coordinate of output index `o` (a float64 numpy array or PrimExpr), in the ONNX reference's
    operation order so that nearest rounding ties break the same way.  Arithmetic only."""
    width = scale * n_in  # the unrounded output size
    if coord_mode == "align_corners":
        return o * 0.0 if width == 1 else o * (n_in - 1) / (width - 1)
    if coord_mode == "asymmetric":
        return o / scale
    if coord_mode == "pytorch_half_pixel":
        return o * 0.0 - 0.5 if width == 1 else (o + 0.5) / scale - 0.5
    if coord_mode == "tf_crop_and_resize":
        lo, hi = roi
        start = lo * (n_in - 1)
        if width == 1:
            return o * 0.0 + ((hi - lo) * (n_in - 1) / 2 + start)
        return o * (hi - lo) * (n_in - 1) / (width - 1) + start
    if coord_mode == "half_pixel_symmetric":  # half_pixel, re-centred when the size was rounded
        offset = n_in / 2 * (1 - n_out / width)
        return offset + ((o + 0.5) / scale - 0.5)
    return (o + 0.5) / scale - 0.5  # half_pixel


def resize_window(mode: str, scale: float, antialias: bool) -> tuple[float, int, int]:
    """(kernel stretch s, first tap offset from floor(x), tap count) for linear / cubic."""
    s = min(scale, 1.0) if antialias else 1.0  # antialias widens the kernel when downsampling
    start = int(math.floor(-RESIZE_SUPPORT[mode] / s)) + 1
    return s, start, 2 - 2 * start


def resize_axis_is_identity(n_in: int, n_out: int, scale: float, coord_mode: str, roi) -> bool:
    return n_in == n_out and math.isclose(scale, 1.0) and (
        coord_mode != "tf_crop_and_resize" or (math.isclose(roi[0], 0.0) and math.isclose(roi[1], 1.0)))


def _nearest(src, mode):
    if mode == "floor":
        return np.floor(src).astype(np.int64)
    if mode == "ceil":
        return np.ceil(src).astype(np.int64)
    if mode == "round_prefer_ceil":
        return np.floor(src + 0.5).astype(np.int64)
    return np.ceil(src - 0.5).astype(np.int64)  # round_prefer_floor


def _kernel(d, mode: str, a: float):
    d = np.abs(d)
    if mode == "linear":
        return np.maximum(1 - d, 0)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _resize_axis(x: np.ndarray, axis: int, n_out: int, attrs: dict, roi) -> np.ndarray:
    n_in, scale = x.shape[axis], attrs["scales"][axis]
    src = resize_source_index(np.arange(n_out, dtype=np.float64), n_in, n_out, scale, attrs["coord_mode"], roi)
    mode = attrs["mode"]
    if mode == "nearest":
        idx = np.clip(_nearest(src, attrs.get("nearest_mode", "round_prefer_floor")), 0, n_in - 1)[:, None]
        w = np.ones(idx.shape)
    else:
        s, start, taps = resize_window(mode, scale, attrs.get("antialias", False))
        idx = np.floor(src).astype(np.int64)[:, None] + start + np.arange(taps)[None, :]
        w = _kernel(s * (idx - src[:, None]), mode, attrs.get("cubic_a", -0.75))
        if attrs.get("exclude_outside"):
            w = np.where((idx < 0) | (idx >= n_in), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
        idx = np.clip(idx, 0, n_in - 1)
    gathered = np.take(x, idx, axis=axis)  # [..., n_out, taps, ...]
    out = (gathered * w.reshape((1,) * axis + w.shape + (1,) * (x.ndim - axis - 1))).sum(axis=axis + 1)
    if attrs["coord_mode"] == "tf_crop_and_resize":
        outside = ((src < 0) | (src > n_in - 1)).reshape((1,) * axis + (n_out,) + (1,) * (x.ndim - axis - 1))
        out = np.where(outside, attrs.get("extrapolation_value", 0.0), out)
    return out


def _resize_eval(inputs, attrs):
    x = inputs[0]
    out = x.astype(np.float64)
    roi = attrs.get("roi") or (0.0,) * x.ndim + (1.0,) * x.ndim
    for axis, (n_in, n_out) in enumerate(zip(x.shape, attrs["sizes"])):
        axis_roi = (roi[axis], roi[axis + x.ndim])
        if not resize_axis_is_identity(n_in, n_out, attrs["scales"][axis], attrs["coord_mode"], axis_roi):
            out = _resize_axis(out, axis, n_out, attrs, axis_roi)
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(x.dtype)


register("resize", INJECTIVE, _resize_infer, _resize_eval)


# ---------------------------------------------------------------------------
# fused groups: `body` is a Graph whose inputs are the group's inputs, in order
def _fused_infer(inputs, attrs):
    body = attrs["body"]
    got = [t for _, t in body.inputs]
    if got != list(inputs):
        raise ShapeError(f"fused group inputs {list(map(str, inputs))} do not match its body {list(map(str, got))}")
    return body.type_of(body.outputs[0])


def _fused_eval(inputs, attrs):
    from .interpret import run_graph

    body = attrs["body"]
    return run_graph(body, {n: v for (n, _), v in zip(body.inputs, inputs)})[0]


register("fused", OPAQUE, _fused_infer, _fused_eval)



# ---------------------------------------------------------------------------
# fused attention: softmax(q @ k^T * scale + mask [causal]) @ v, per batch and head.
# q: [..., Sq, D], k: [..., Sk, D], v: [..., Sk, Dv], optional additive mask broadcast to [..., Sq, Sk]
def _attention_infer(inputs, attrs):
    q, k, v = inputs[:3]
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ShapeError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit")
    batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if len(inputs) > 3:
        broadcast_shapes(inputs[3].shape, batch + (q.shape[-2], k.shape[-2]))
    return TensorType(batch + (q.shape[-2], v.shape[-1]), q.dtype)


def _attention_eval(inputs, attrs):
    q, k, v = (x.astype(np.float64) for x in inputs[:3])
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * attrs["scale"]
    if len(inputs) > 3:
        s = s + inputs[3]
    if attrs.get("causal"):
        sq, sk = s.shape[-2:]
        s = np.where(np.tril(np.ones((sq, sk), dtype=bool), k=sk - sq), s, -np.inf)
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    return (np.matmul(p / p.sum(axis=-1, keepdims=True), v)).astype(inputs[0].dtype)


register("attention", ANCHOR, _attention_infer, _attention_eval)


from . import ops_conv  # noqa: E402,F401  (registers conv2d, its NCHWc / Winograd forms, pool2d)
