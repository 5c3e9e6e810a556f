"""Each tilecraft op as a TE compute.  `LOWER[op](inputs, attrs, out_type) -> te.Tensor`.
Convolutions, their layouts and pooling are in lower_conv.py (imported at the end: it registers here).

Block names mirror topi's (`pad_temp`, `conv2d_nchw`, `T_matmul`...) so sketch rules
and people reading TensorIR see familiar stages.
"""

from __future__ import annotations

import math
from typing import Callable

import tvm
from tvm import te, tirx, topi

from .ir import TensorType
from .ops import reduce_identity, resize_axis_is_identity, resize_source_index, resize_window

Lowering = Callable[[list[te.Tensor], dict, TensorType], te.Tensor]
LOWER: dict[str, Lowering] = {}


def lowering(*ops: str):
    def deco(fn):
        for op in ops:
            LOWER[op] = fn
        return fn

    return deco


def _const(value, dtype: str):
    if "int" in dtype and isinstance(value, float):
        value = int(value)
    return tirx.const(value, dtype)


def _dt(expr) -> str:
    """dtype of a tensor element or a PrimExpr (TVM 0.27 PrimExprs carry `.ty`, not `.dtype`)."""
    dtype = getattr(expr, "dtype", None)
    return str(dtype if dtype is not None else expr.ty)


def _bcast_index(shape, out_shape, idx):
    """Index into a tensor broadcast (numpy rules) to out_shape."""
    offset = len(out_shape) - len(shape)
    return [0 if d == 1 and out_shape[offset + k] != 1 else idx[offset + k] for k, d in enumerate(shape)]


def _elementwise(fn, out_type: TensorType, *tensors: te.Tensor, name: str):
    shape = out_type.shape

    def body(*idx):
        return fn(*[t(*_bcast_index(t.shape, shape, idx)) if len(t.shape) else t() for t in tensors])

    return te.compute(shape, body, name=name)


# --------------------------------------------------------------------------- elementwise
def _clip(x, lo, hi):
    if lo is not None:  # absent bounds stay absent: integer types cannot hold +-3.4e38
        x = tirx.max(x, _const(lo, _dt(x)))
    if hi is not None:
        x = tirx.min(x, _const(hi, _dt(x)))
    return x


def _erf(x):
    """erf as vectorizable float32 arithmetic: Eigen's rational approximation on [-4, 4] (abs. error
    ~1e-7; erf is +-1 in float32 beyond).  LLVM has no vector erf: `tirx.erf` is one scalar erff call
    per element, which made BERT's GELU epilogue 7x slower than the matmul it follows."""
    if _dt(x) != "float32":
        return tirx.erf(x)
    c = lambda v: _const(v, "float32")  # noqa: E731
    x = tirx.max(tirx.min(x, c(4.0)), c(-4.0))
    x2 = x * x
    p = c(-2.72614225801306e-10)
    for coef in (2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05, -7.34990630326855e-04,
                 -2.95459980854025e-03, -1.60960333262415e-02):
        p = p * x2 + c(coef)
    q = c(-1.45660718464996e-05)
    for coef in (-2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03, -1.42647390514189e-02):
        q = q * x2 + c(coef)
    return tirx.max(tirx.min(x * p / q, c(1.0)), c(-1.0))  # the rational overshoots 1 by an ulp at |x| = 4


def fast_exp(x):
    """exp as vectorizable float32 arithmetic: 2^n * a degree-7 polynomial (TOPI's fast_exp,
    rel. error ~1e-7).  LLVM turns a vector exp into one scalar expf call per lane."""
    dt = _dt(x)
    if dt != "float32":
        return tirx.exp(x)
    c = lambda v: _const(v, dt)  # noqa: E731
    xc = tirx.max(tirx.min(x, c(88.72283)), c(-88.376262664795))  # float32 exp is finite up to 88.7228
    n = tirx.min(tirx.floor(xc * c(1.4426950408889634) + c(0.5)), c(127.0))  # 2^128 would be inf
    f = xc - n * c(0.6931471805599453)
    poly = c(1.9875691500e-4)
    for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        poly = poly * f + c(coef)
    two_n = tirx.reinterpret("float32", (n.astype("int32") + 127) << 23)
    return two_n * (poly * f * f + f + c(1.0))


def _sigmoid(x):
    if _dt(x) == "float32":
        return _const(1, "float32") / (_const(1, "float32") + fast_exp(-x))
    return tirx.sigmoid(x)


def _tanh(x):
    if _dt(x) == "float32":  # 1 - 2 / (e^2x + 1) saturates cleanly at +-1; near 0 its Taylor series keeps precision
        c = lambda v: _const(v, "float32")  # noqa: E731
        far = c(1) - c(2) / (fast_exp(x * c(2)) + c(1))
        x2 = x * x
        near = x * (c(1) + x2 * (c(-1 / 3) + x2 * c(2 / 15)))
        return tirx.Select(tirx.abs(x) < c(0.1), near, far)
    return tirx.tanh(x)


UNARY = {
    "relu": lambda x, a: tirx.max(x, _const(0, _dt(x))),
    "sigmoid": lambda x, a: _sigmoid(x),
    "tanh": lambda x, a: _tanh(x),
    "exp": lambda x, a: fast_exp(x),
    "log": lambda x, a: tirx.log(x),
    "sqrt": lambda x, a: tirx.sqrt(x),
    "neg": lambda x, a: -x,
    "abs": lambda x, a: tirx.abs(x),
    "floor": lambda x, a: tirx.floor(x),
    "ceil": lambda x, a: tirx.ceil(x),
    "sin": lambda x, a: tirx.sin(x),
    "cos": lambda x, a: tirx.cos(x),
    "reciprocal": lambda x, a: _const(1, _dt(x)) / x,
    "erf": lambda x, a: _erf(x),
    "not": lambda x, a: tirx.Not(x),
    "clip": lambda x, a: _clip(x, a.get("min"), a.get("max")),
    "leaky_relu": lambda x, a: tirx.Select(x >= _const(0, _dt(x)), x, x * _const(a["alpha"], _dt(x))),
    "hard_sigmoid": lambda x, a: tirx.min(tirx.max(x * _const(a["alpha"], _dt(x)) + _const(a["beta"], _dt(x)), _const(0, _dt(x))), _const(1, _dt(x))),
    "hard_swish": lambda x, a: x * tirx.min(tirx.max(x / _const(6, _dt(x)) + _const(0.5, _dt(x)), _const(0, _dt(x))), _const(1, _dt(x))),
    "silu": lambda x, a: x * _sigmoid(x),
    "gelu": lambda x, a: (
        _const(0.5, _dt(x)) * x * (_const(1, _dt(x)) + _tanh(_const(math.sqrt(2 / math.pi), _dt(x)) * (x + _const(0.044715, _dt(x)) * x * x * x)))
        if a.get("approximate") == "tanh"
        else _const(0.5, _dt(x)) * x * (_const(1, _dt(x)) + _erf(x * _const(1 / math.sqrt(2), _dt(x))))
    ),
    "cast": lambda x, a: x.astype(a["to"]),
}


def _make_unary(op):
    fn = UNARY[op]

    def lower(inputs, attrs, out_type):
        return _elementwise(lambda x: fn(x, attrs), out_type, inputs[0], name=f"T_{op}")

    return lower


for _op in UNARY:
    LOWER[_op] = _make_unary(_op)




def _pow(a, b):
    if "int" in _dt(a):  # integer powers in double, as ONNX Runtime computes them
        return tirx.power(a.astype("float64"), b.astype("float64")).astype(_dt(a))
    return tirx.power(a, b.astype(_dt(a)) if _dt(b) != _dt(a) else b)


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "pow": _pow,
    "minimum": tirx.min,
    "maximum": tirx.max,
    "mod": lambda a, b: tirx.truncmod(a, b) if "int" in str(_dt(a)) else tirx.fmod(a, b),
    "equal": lambda a, b: a == b,
    "less": lambda a, b: a < b,
    "less_equal": lambda a, b: a <= b,
    "greater": lambda a, b: a > b,
    "greater_equal": lambda a, b: a >= b,
    "logical_and": tirx.And,
    "logical_or": tirx.Or,
    "logical_xor": lambda a, b: tirx.Or(tirx.And(a, tirx.Not(b)), tirx.And(tirx.Not(a), b)),
}


def _make_binary(op):
    fn = BINARY[op]

    def lower(inputs, attrs, out_type):
        return _elementwise(fn, out_type, inputs[0], inputs[1], name=f"T_{op}")

    return lower


for _op in BINARY:
    LOWER[_op] = _make_binary(_op)


def _baked_scalar(t: te.Tensor) -> float | None:
    """The value of a constant that lower_body baked into the kernel as a one-value compute, else None."""
    op = t.op
    if isinstance(op, te.ComputeOp) and op.name == "T_const" and isinstance(op.body[0], (tirx.FloatImm, tirx.IntImm)):
        return float(op.body[0].value)
    return None


@lowering("pow")
def _pow_op(inputs, attrs, out_type):
    """x ** c for a constant scalar c as multiplies or a sqrt: powf is a scalar libm call per
    element (GPT-2's GELU computes x ** 3)."""
    e = _baked_scalar(inputs[1])
    if e is None or "float" not in _dt(inputs[0]) or e not in (0.5, 1.0, 2.0, 3.0, 4.0, -1.0):
        return _elementwise(_pow, out_type, inputs[0], inputs[1], name="T_pow")

    def power(a, _b):
        if e == 0.5:
            return tirx.sqrt(a)
        if e == -1.0:
            return _const(1, _dt(a)) / a
        r = a
        for _ in range(int(e) - 1):
            r = r * a
        return r

    return _elementwise(power, out_type, inputs[0], inputs[1], name="T_pow")


@lowering("div")
def _div(inputs, attrs, out_type):
    def div(a, b):
        if "int" not in _dt(a):
            return a / b
        return tirx.truncdiv(a, b) if attrs.get("rounding", "floor") == "trunc" else tirx.floordiv(a, b)

    return _elementwise(div, out_type, inputs[0], inputs[1], name="T_div")


@lowering("where")
def _where(inputs, attrs, out_type):
    return _elementwise(lambda c, x, y: tirx.Select(c.astype("bool"), x, y), out_type, *inputs, name="T_where")


@lowering("batch_norm")
def _batch_norm(inputs, attrs, out_type):
    x, scale, bias, mean, var = inputs
    eps = attrs["epsilon"]

    def body(*idx):
        c = idx[1]
        inv = scale[c] / tirx.sqrt(var[c] + _const(eps, _dt(x)))
        return (x(*idx) - mean[c]) * inv + bias[c]

    return te.compute(out_type.shape, body, name="T_batch_norm")


# --------------------------------------------------------------------------- anchors
@lowering("matmul")
def _matmul(inputs, attrs, out_type):
    a, b = inputs
    if attrs.get("weight_layout"):
        return _matmul_packed(a, b, out_type)
    shape = out_type.shape
    k_extent = a.shape[-1]
    k = te.reduce_axis((0, k_extent), name="k")
    trans_b = attrs.get("transpose_b", False)
    batch = shape[:-2]

    def body(*idx):
        bi, i, j = idx[:-2], idx[-2], idx[-1]
        a_idx = _bcast_index(a.shape[:-2], batch, bi) + [i, k]
        b_idx = _bcast_index(b.shape[:-2], batch, bi) + ([j, k] if trans_b else [k, j])
        return te.sum(a(*a_idx) * b(*b_idx), axis=k)

    return te.compute(shape, body, name="T_matmul")


def _matmul_packed(a, w, out_type):
    """A @ W with a KN{b}n weight [N/b, K, b] (compiler/passes.pack_weights): the reduction writes
    a column-blocked tile [..., M, N/b, b], whose innermost axis the sketch vectorizes, and the
    plain [..., M, N] result reads it back (the write-back inlines into the epilogue)."""
    nb, k_extent, b = (int(d) for d in w.shape)
    shape = tuple(out_type.shape)
    k = te.reduce_axis((0, k_extent), name="k")

    def body(*idx):
        bi, i, jo, ji = idx[:-3], idx[-3], idx[-2], idx[-1]
        return te.sum(a(*(_bcast_index(a.shape[:-2], shape[:-2], bi) + [i, k])) * w[jo, k, ji], axis=k)

    blocked = te.compute(shape[:-1] + (nb, b), body, name="T_matmul_blocked")
    return te.compute(shape, lambda *idx: blocked(*idx[:-1], idx[-1] // b, idx[-1] % b), name="T_unblock")


# --------------------------------------------------------------------------- reductions
@lowering("reduce")
def _reduce(inputs, attrs, out_type):
    x = inputs[0]
    axes, keep, kind = list(attrs["axes"]), attrs.get("keepdims", True), attrs["kind"]
    raxes = [te.reduce_axis((0, x.shape[a]), name=f"r{a}") for a in axes]
    reducer = {"sum": te.sum, "mean": te.sum, "max": te.max, "min": te.min}.get(kind)

    def src_index(idx):
        out, it, r = [], iter(idx), iter(raxes)
        for a in range(len(x.shape)):
            if a in axes:
                out.append(next(r))
                if keep:
                    next(it)
            else:
                out.append(next(it))
        return out

    if any(int(x.shape[a]) == 0 for a in axes):  # an empty reduction is its identity (mean: NaN)
        fill = {"sum": 0, "prod": 1, "mean": float("nan")}.get(kind) if kind not in ("max", "min") else reduce_identity(kind, _dt(x))
        return te.compute(out_type.shape, lambda *i: _const(fill, _dt(x)), name=f"T_{kind}")
    if _dt(x) == "bool":  # reduce as int8: max is any, min is all
        as_int = te.compute(x.shape, lambda *i: x(*i).astype("int8"), name="T_cast")
        red = _reduce([as_int], attrs, TensorType(out_type.shape, "int8"))
        return te.compute(out_type.shape, lambda *i: red(*i).astype("bool"), name="T_cast")
    if kind == "prod":
        prod = te.comm_reducer(lambda a, b: a * b, lambda t: tirx.const(1, t), name="prod")
        return te.compute(out_type.shape, lambda *i: prod(x(*src_index(i)), axis=raxes), name="T_prod")
    red = te.compute(out_type.shape, lambda *i: reducer(x(*src_index(i)), axis=raxes), name=f"T_{kind}")
    if kind == "mean":
        n = 1
        for a in axes:
            n *= int(x.shape[a])
        return te.compute(out_type.shape, lambda *i: red(*i) / _const(n, _dt(x)), name="T_mean")
    return red


@lowering("softmax")
def _softmax(inputs, attrs, out_type):
    x = inputs[0]
    axis = attrs["axis"]
    k = te.reduce_axis((0, x.shape[axis]), name="k")

    def at(idx, j):
        idx = list(idx)
        idx[axis] = j
        return idx

    red_shape = tuple(1 if a == axis else d for a, d in enumerate(out_type.shape))
    mx = te.compute(red_shape, lambda *i: te.max(x(*at(i, k)), axis=k), name="T_softmax_maxelem")
    ex = te.compute(out_type.shape, lambda *i: fast_exp(x(*i) - mx(*at(i, 0))), name="T_softmax_exp")
    k2 = te.reduce_axis((0, x.shape[axis]), name="k2")
    sm = te.compute(red_shape, lambda *i: te.sum(ex(*at(i, k2)), axis=k2), name="T_softmax_expsum")
    if attrs.get("log"):
        return te.compute(out_type.shape, lambda *i: x(*i) - mx(*at(i, 0)) - tirx.log(sm(*at(i, 0))), name="T_log_softmax")
    return te.compute(out_type.shape, lambda *i: ex(*i) / sm(*at(i, 0)), name="T_softmax_norm")


@lowering("layer_norm")
def _layer_norm(inputs, attrs, out_type):
    x, gamma = inputs[0], inputs[1]
    beta = inputs[2] if len(inputs) > 2 else None
    axis, eps = attrs["axis"], attrs["epsilon"]
    shape = out_type.shape
    norm_axes = list(range(axis, len(shape)))
    n = 1
    for a in norm_axes:
        n *= shape[a]
    red_shape = tuple(1 if a in norm_axes else d for a, d in enumerate(shape))
    r1 = [te.reduce_axis((0, shape[a]), name=f"r{a}") for a in norm_axes]
    r2 = [te.reduce_axis((0, shape[a]), name=f"s{a}") for a in norm_axes]

    def full(i, rs):
        return list(i[:axis]) + list(rs)

    inv_n = _const(1.0 / n, _dt(x))
    total = te.compute(red_shape, lambda *i: te.sum(x(*full(i, r1)), axis=r1), name="T_ln_sum")
    sq = te.compute(
        red_shape,
        lambda *i: te.sum((x(*full(i, r2)) - total(*i) * inv_n) * (x(*full(i, r2)) - total(*i) * inv_n), axis=r2),
        name="T_ln_sqsum",
    )

    def body(*i):
        red = list(i[:axis]) + [0] * len(norm_axes)
        y = (x(*i) - total(*red) * inv_n) / tirx.sqrt(sq(*red) * inv_n + _const(eps, _dt(x)))
        g_idx = _bcast_index(gamma.shape, shape, i)
        y = y * gamma(*g_idx)
        if beta is not None:
            y = y + beta(*_bcast_index(beta.shape, shape, i))
        return y

    return te.compute(shape, body, name="T_layer_norm")


# --------------------------------------------------------------------------- data movement
@lowering("reshape")
def _reshape(inputs, attrs, out_type):
    return topi.reshape(inputs[0], out_type.shape)


@lowering("transpose")
def _transpose(inputs, attrs, out_type):
    return topi.transpose(inputs[0], list(attrs["perm"]))


@lowering("concat")
def _concat(inputs, attrs, out_type):
    return topi.concatenate(inputs, attrs["axis"])


@lowering("slice")
def _slice(inputs, attrs, out_type):
    x = inputs[0]
    start = {a: s for s, a in zip(attrs["starts"], attrs["axes"])}
    step = {a: st for st, a in zip(attrs["steps"], attrs["axes"])}

    def body(*idx):
        return x(*[start.get(a, 0) + i * step.get(a, 1) for a, i in enumerate(idx)])

    return te.compute(out_type.shape, body, name="T_slice")


@lowering("gather")
def _gather(inputs, attrs, out_type):
    x, idx = inputs
    axis = attrs["axis"]
    n_idx = len(idx.shape)
    dim = x.shape[axis]

    def body(*i):
        j = idx(*i[axis : axis + n_idx]) if n_idx else idx()
        j = j.astype("int64")
        j = tirx.Select(j < 0, j + tirx.const(int(dim), "int64"), j)
        j = tirx.max(tirx.min(j, tirx.const(int(dim) - 1, "int64")), tirx.const(0, "int64"))
        return x(*(list(i[:axis]) + [j] + list(i[axis + n_idx :])))

    return te.compute(out_type.shape, body, name="T_gather")


@lowering("expand")
def _expand(inputs, attrs, out_type):
    return _elementwise(lambda v: v, out_type, inputs[0], name="T_expand")


@lowering("pad")
def _pad(inputs, attrs, out_type):
    x = inputs[0]
    pads, mode, value = attrs["pads"], attrs.get("mode", "constant"), attrs.get("value", 0.0)
    nd = len(x.shape)
    before = pads[:nd]
    sizes = [int(d) for d in x.shape]

    def body(*idx):
        src = [i - b for i, b in zip(idx, before)]
        if mode == "constant":
            conds = [tirx.all(s >= 0, s < n) for s, n in zip(src, sizes) if True]
            safe = [tirx.max(tirx.min(s, n - 1), 0) for s, n in zip(src, sizes)]
            return tirx.if_then_else(tirx.all(*conds) if conds else True, x(*safe), _const(value, _dt(x)))
        if mode == "edge":
            return x(*[tirx.max(tirx.min(s, n - 1), 0) for s, n in zip(src, sizes)])
        if mode == "wrap":
            return x(*[tirx.floormod(s, n) for s, n in zip(src, sizes)])
        # reflect: mirror around the edges (without repeating the edge element)
        out = []
        for s, n in zip(src, sizes):
            s = tirx.abs(s)
            s = tirx.Select(s >= n, 2 * (n - 1) - s, s)
            out.append(s)
        return x(*out)

    return te.compute(out_type.shape, body, name="T_pad")


@lowering("resize")
def _resize(inputs, attrs, out_type):
    """Separable resampling with the taps of `ops._resize_axis`.  Linear and cubic axes get small
    [out, taps] index and weight tables, and the output is a reduction over the taps, which keeps
    the expressions small (inlining 4^2 cubic taps, each with its weight, swamps TVM's simplifier)."""
    x = inputs[0]
    nd, dtype = len(x.shape), _dt(x)
    in_shape, out_shape = [int(d) for d in x.shape], out_type.shape
    roi = attrs.get("roi") or (0.0,) * nd + (1.0,) * nd
    mode, coord = attrs["mode"], attrs["coord_mode"]
    acc = "float64" if dtype == "float64" else "float32"  # interpolation; coordinates are float64

    def src_of(a, i):
        return resize_source_index(i.astype("float64"), in_shape[a], out_shape[a], attrs["scales"][a], coord, (roi[a], roi[a + nd]))

    def clamp(j, n):
        return tirx.max(tirx.min(j, tirx.const(n - 1, "int64")), tirx.const(0, "int64"))

    resized = [a for a in range(nd) if not resize_axis_is_identity(in_shape[a], out_shape[a], attrs["scales"][a], coord, (roi[a], roi[a + nd]))]
    tables = {a: _resize_tables(a, src_of, in_shape[a], out_shape[a], attrs) for a in resized if mode != "nearest"}
    taps = {a: te.reduce_axis((0, int(tables[a][0].shape[1])), name=f"t{a}") for a in tables}

    def source(idx):
        index, weight = [], None
        for a, i in enumerate(idx):
            if a not in resized:
                index.append(i)
            elif a in tables:
                index.append(tables[a][0][i, taps[a]])
                w = tables[a][1][i, taps[a]]
                weight = w if weight is None else weight * w
            else:
                near = _nearest(src_of(a, i), attrs.get("nearest_mode", "round_prefer_floor"))
                index.append(clamp(near.astype("int64"), in_shape[a]))
        return index, weight

    if tables:
        value = te.compute(out_shape, lambda *i: te.sum(x(*source(i)[0]).astype(acc) * source(i)[1], axis=list(taps.values())),
                           name="T_resize")
    else:  # nearest: a gather, in the input's type
        value = te.compute(out_shape, lambda *i: x(*source(i)[0]), name="T_resize")
    outside = coord == "tf_crop_and_resize"
    if not outside and value.dtype == dtype:
        return value

    def finish(*i):
        v = value(*i)
        if "int" in dtype and v.dtype != dtype:  # round and saturate, as ONNX casts back to integers
            lo, hi = tvm.tirx.min_value(dtype).value, tvm.tirx.max_value(dtype).value
            v = tirx.min(tirx.max(tirx.round(v), _const(float(lo), acc)), _const(float(hi), acc))
        v = v.astype(dtype)
        if outside:  # tf_crop_and_resize: samples outside the input take extrapolation_value
            far = [tirx.Or(src_of(a, i[a]) < 0.0, src_of(a, i[a]) > float(in_shape[a] - 1)) for a in resized]
            v = tirx.Select(tirx.any(*far), _const(attrs.get("extrapolation_value", 0.0), dtype), v)
        return v

    return te.compute(out_shape, finish, name="T_resize_out")


def _resize_tables(a: int, src_of, n_in: int, n_out: int, attrs) -> tuple[te.Tensor, te.Tensor]:
    """Clamped source indices and normalized weights [n_out, taps] of a linear / cubic axis."""
    mode = attrs["mode"]
    s, start, n_taps = resize_window(mode, attrs["scales"][a], attrs.get("antialias", False))
    acc = "float32"

    def tap(o, t):  # unclamped
        return tirx.floor(src_of(a, o)).astype("int64") + (t.astype("int64") + start)

    def kernel(o, t):
        d = tirx.abs(((tap(o, t).astype("float64") - src_of(a, o)) * s).astype(acc))
        if mode == "linear":
            w = tirx.max(_const(1, acc) - d, _const(0, acc))
        else:
            k = attrs.get("cubic_a", -0.75)
            near = ((k + 2) * d - (k + 3)) * d * d + 1.0
            far = ((k * d - 5 * k) * d + 8 * k) * d - 4 * k
            w = tirx.Select(d <= 1.0, near, tirx.Select(d < 2.0, far, _const(0, acc)))
        if attrs.get("exclude_outside"):
            w = tirx.Select(tirx.all(tap(o, t) >= 0, tap(o, t) < n_in), w, _const(0, acc))
        return w

    index = te.compute((n_out, n_taps), lambda o, t: tirx.max(tirx.min(tap(o, t), tirx.const(n_in - 1, "int64")),
                                                                tirx.const(0, "int64")), name=f"T_resize_index{a}")
    weight = te.compute((n_out, n_taps), kernel, name=f"T_resize_weight{a}")
    if attrs.get("exclude_outside") or attrs.get("antialias"):  # else the weights already sum to 1
        r = te.reduce_axis((0, n_taps), name="r")
        total = te.compute((n_out,), lambda o: te.sum(weight[o, r], axis=r), name=f"T_resize_wsum{a}")
        weight = te.compute((n_out, n_taps), lambda o, t: weight[o, t] / tirx.Select(total[o] == 0.0, _const(1, acc), total[o]),
                            name=f"T_resize_wnorm{a}")
    return index, weight


def _nearest(src, mode: str):
    if mode == "floor":
        return tirx.floor(src)
    if mode == "ceil":
        return tirx.ceil(src)
    if mode == "round_prefer_ceil":
        return tirx.floor(src + 0.5)
    return tirx.ceil(src - 0.5)  # round_prefer_floor


# --------------------------------------------------------------------------- attention (unfused form)
@lowering("attention")
def _attention(inputs, attrs, out_type):
    """Reference lowering: scores -> softmax -> matmul in one PrimFunc (materializes S x S).
    The tiled online-softmax kernel lives in `lower_attention.py`."""
    q, k, v = inputs[:3]
    mask = inputs[3] if len(inputs) > 3 else None
    shape = out_type.shape
    batch = shape[:-2]
    sq, sk, d = int(q.shape[-2]), int(k.shape[-2]), int(q.shape[-1])
    scale = attrs["scale"]
    rd = te.reduce_axis((0, d), name="rd")
    s_shape = batch + (sq, sk)

    def scores(*idx):
        b, i, j = idx[:-2], idx[-2], idx[-1]
        s = te.sum(q(*(_bcast_index(q.shape[:-2], batch, b) + [i, rd])) * k(*(_bcast_index(k.shape[:-2], batch, b) + [j, rd])), axis=rd)
        return s

    s = te.compute(s_shape, scores, name="T_scores")

    def masked(*idx):
        val = s(*idx) * _const(scale, q.dtype)
        if mask is not None:
            val = val + mask(*_bcast_index(mask.shape, s_shape, idx))
        if attrs.get("causal"):
            val = tirx.Select(idx[-1] <= idx[-2] + (sk - sq), val, _const(-3.4e38, q.dtype))
        return val

    logits = te.compute(s_shape, masked, name="T_logits")
    probs = _softmax([logits], {"axis": len(s_shape) - 1}, TensorType(tuple(s_shape), out_type.dtype))
    rk = te.reduce_axis((0, sk), name="rk")

    def out(*idx):
        b, i, j = idx[:-2], idx[-2], idx[-1]
        return te.sum(probs(*(list(b) + [i, rk])) * v(*(_bcast_index(v.shape[:-2], batch, b) + [rk, j])), axis=rk)

    return te.compute(shape, out, name="T_attention")


from . import lower_conv  # noqa: E402,F401  (registers conv2d, conv2d_nchwc, layout changes, pool2d)
