"""The ATen converters of the torch frontend: one function per core ATen op (or family),
registered with `@converter` and looked up by `torch.find_converter`.  Each reads its node's
arguments through a `Ctx` and emits tilecraft ops with the GraphBuilder; the driver (torch.py)
checks every result against the shape and dtype torch recorded."""

from __future__ import annotations

import math

import numpy as np

from .torch import ATTENTION_OPS, Ctx, _axis, converter


# --------------------------------------------------------------------------- elementwise
UNARY = {
    "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "exp": "exp", "log": "log", "sqrt": "sqrt", "neg": "neg",
    "abs": "abs", "floor": "floor", "ceil": "ceil", "sin": "sin", "cos": "cos", "reciprocal": "reciprocal",
    "erf": "erf", "logical_not": "not",
}


@converter(*(f"aten.{k}" for k in UNARY))
def _unary(c: Ctx):
    op = UNARY[str(c.node.target.overloadpacket).split(".")[1]]
    x = c.tensor("self")
    return c.add(op, [x if op == "not" else c.cast(x, c.out_type.dtype)])


@converter("aten.rsqrt")
def _rsqrt(c: Ctx):
    return c.add("reciprocal", [c.add("sqrt", [c.cast(c.tensor("self"), c.out_type.dtype)], "_sqrt")])


@converter("aten.gelu")
def _gelu(c: Ctx):
    return c.add("gelu", [c.tensor("self")], approximate=c.arg("approximate"))


@converter("aten.leaky_relu")
def _leaky_relu(c: Ctx):
    return c.add("leaky_relu", [c.tensor("self")], alpha=float(c.arg("negative_slope")))


def _clip(c: Ctx, lo, hi) -> str:
    if c.is_tensor(lo) or c.is_tensor(hi):  # clamp.Tensor: elementwise bounds
        out = c.tensor("self")
        if lo is not None:
            out = c.add("maximum", [out, c.operand(lo, c.out_type.dtype)], "_lo")
        if hi is not None:
            out = c.add("minimum", [out, c.operand(hi, c.out_type.dtype)], "_hi")
        return out
    attrs = {k: float(v) for k, v in (("min", lo), ("max", hi)) if v is not None}
    return c.add("clip", [c.cast(c.tensor("self"), c.out_type.dtype)], **attrs)


@converter("aten.clamp")
def _clamp(c: Ctx):
    return _clip(c, c.arg("min"), c.arg("max"))


@converter("aten.hardtanh")
def _hardtanh(c: Ctx):
    return _clip(c, c.arg("min_val"), c.arg("max_val"))


BINARY = {
    "add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow", "minimum": "minimum", "maximum": "maximum",
    "fmod": "mod", "eq": "equal", "lt": "less", "le": "less_equal", "gt": "greater", "ge": "greater_equal",
    "logical_and": "logical_and", "logical_or": "logical_or", "logical_xor": "logical_xor",
}
COMPARE = {"eq", "ne", "lt", "le", "gt", "ge"}


@converter(*(f"aten.{k}" for k in BINARY), "aten.ne")
def _binary(c: Ctx):
    kind = str(c.node.target.overloadpacket).split(".")[1]
    b_key = "exponent" if kind == "pow" else "other"
    if kind in COMPARE:
        dtype = c.promoted("self", b_key)
    else:
        dtype = "bool" if kind.startswith("logical_") else c.out_type.dtype
    exponent = c.args.get("exponent")
    if kind == "pow" and not c.is_tensor(exponent) and exponent in (2, 0.5):
        x = c.operand("self", dtype)  # the common square and root, without a pow kernel
        return c.add("mul", [x, x]) if exponent == 2 else c.add("sqrt", [x])
    a, b = c.operand("self", dtype), c.operand(b_key, dtype)
    alpha = c.args.get("alpha", 1)
    if alpha is not None and alpha != 1:  # add(self, other, alpha) = self + alpha * other
        b = c.add("mul", [b, c.const(alpha, dtype, "_alpha")], "_alpha_mul")
    if kind == "ne":
        return c.add("not", [c.add("equal", [a, b], "_eq")])
    if kind == "div" and c.args.get("rounding_mode") is not None:
        return _rounded_div(c, a, b, c.arg("rounding_mode"))
    return c.add(BINARY[kind], [a, b])


def _rounded_div(c: Ctx, a: str, b: str, mode: str) -> str:
    dtype = c.b.type(a).dtype
    if not dtype.startswith("float"):
        if mode == "floor":
            return c.add("div", [a, b])  # our integer div floors, like torch's floor mode
        raise c.fail("integer division with rounding_mode='trunc' is not supported")
    q = c.add("div", [a, b], "_q")
    if mode == "floor":
        return c.add("floor", [q])
    neg = c.add("less", [q, c.const(0, dtype, "_zero")], "_neg")
    return c.add("where", [neg, c.add("ceil", [q], "_ceil"), c.add("floor", [q], "_floor")])


@converter("aten.round.default")
def _round(c: Ctx):
    """Round half to even, as torch does: floor(x + 0.5), minus one on ties that land on an odd number."""
    x = c.tensor("self")
    dtype = c.b.type(x).dtype
    half, one = c.const(0.5, dtype, "_half"), c.const(1, dtype, "_one")
    up = c.add("floor", [c.add("add", [x, half], "_shift")], "_up")
    tie = c.add("equal", [c.add("sub", [up, x], "_frac"), half], "_tie")
    up_half = c.add("mul", [up, half], "_uph")
    odd = c.add("not", [c.add("equal", [c.add("floor", [up_half], "_uphf"), up_half], "_even")], "_odd")
    return c.add("where", [c.add("logical_and", [tie, odd], "_fix"), c.add("sub", [up, one], "_down"), up])


@converter("aten.remainder")
def _remainder(c: Ctx):
    dtype = c.out_type.dtype
    if not dtype.startswith("float"):
        raise c.fail("integer remainder is not supported (fmod is)")
    a, b = c.operand("self", dtype), c.operand("other", dtype)
    q = c.add("floor", [c.add("div", [a, b], "_q")], "_floor")
    return c.add("sub", [a, c.add("mul", [q, b], "_qb")])


@converter("aten.bitwise_not", "aten.bitwise_and", "aten.bitwise_or", "aten.bitwise_xor")
def _bitwise(c: Ctx):
    if c.out_type.dtype != "bool":
        raise c.fail("bitwise ops are supported on bool tensors only")
    kind = str(c.node.target.overloadpacket).split("_")[-1]
    if kind == "not":
        return c.add("not", [c.tensor("self")])
    return c.add(f"logical_{kind}", [c.operand("self", "bool"), c.operand("other", "bool")])


@converter("aten.where.self")
def _where(c: Ctx):
    dtype = c.out_type.dtype
    return c.add("where", [c.cast(c.tensor("condition"), "bool"), c.operand("self", dtype), c.operand("other", dtype)])


@converter("aten._to_copy.default")
def _to_copy(c: Ctx):
    return c.cast(c.tensor("self"), c.out_type.dtype)


# --------------------------------------------------------------------------- anchors
@converter("aten.mm.default", "aten.bmm.default")
def _mm(c: Ctx):
    return c.add("matmul", [c.tensor("self"), c.tensor("mat2")])


@converter("aten.addmm.default")
def _addmm(c: Ctx):
    dtype = c.out_type.dtype
    out = c.add("matmul", [c.tensor("mat1"), c.tensor("mat2")], "_mm")
    if c.arg("alpha") != 1:
        out = c.add("mul", [out, c.const(c.arg("alpha"), dtype, "_alpha")], "_alpha_mul")
    if c.arg("beta") == 0:
        return out
    bias = c.tensor("self")
    if c.arg("beta") != 1:
        bias = c.add("mul", [bias, c.const(c.arg("beta"), dtype, "_beta")], "_beta_mul")
    return c.add("add", [out, bias])


def _as_2d(c: Ctx, x: str, what: str) -> str:
    """1-D convolution and pooling run as 2-D over a unit height."""
    shape = c.shape(x)
    return c.add("reshape", [x], f"_{what}2d", shape=shape[:-1] + (1, shape[-1]))


@converter("aten.convolution.default")
def _convolution(c: Ctx):
    if c.arg("transposed"):
        raise c.fail("transposed convolution is not supported")
    x, w = c.tensor("input"), c.tensor("weight")
    rank = len(c.shape(x)) - 2
    if rank not in (1, 2):
        raise c.fail(f"{rank}-D convolution is not supported (1-D and 2-D are)")
    stride, padding, dilation = (list(c.arg(k)) for k in ("stride", "padding", "dilation"))
    if rank == 1:
        x, w = _as_2d(c, x, "x"), _as_2d(c, w, "w")
        stride, padding, dilation = [1] + stride, [0] + padding, [1] + dilation
    bias = c.opt_tensor("bias")
    out = c.add("conv2d", [x, w] + ([bias] if bias else []), "_2d" if rank == 1 else "", strides=stride,
                pads=padding + padding, dilations=dilation, groups=int(c.arg("groups")))
    return c.reshape_to_out(out)


# --------------------------------------------------------------------------- normalization
@converter("aten._native_batch_norm_legit_no_training.default", "aten._native_batch_norm_legit.default")
def _batch_norm(c: Ctx):
    if c.args.get("training"):
        raise c.fail("batch norm in training mode is not supported (call module.eval())")
    x = c.tensor("input")
    dtype, channels = c.b.type(x).dtype, c.shape(x)[1]
    scale = c.opt_tensor("weight") or c.const(np.ones(channels), dtype, "_scale")
    bias = c.opt_tensor("bias") or c.const(np.zeros(channels), dtype, "_bias")
    out = c.add("batch_norm", [x, scale, bias, c.tensor("running_mean"), c.tensor("running_var")], epsilon=float(c.arg("eps")))
    return (out, None, None)


@converter("aten.native_layer_norm.default")
def _layer_norm(c: Ctx):
    x = c.tensor("input")
    norm_shape, dtype = tuple(c.arg("normalized_shape")), c.b.type(x).dtype
    scale = c.opt_tensor("weight") or c.const(np.ones(norm_shape), dtype, "_scale")
    ins = [x, scale] + ([c.tensor("bias")] if c.arg("bias") is not None else [])
    out = c.add("layer_norm", ins, axis=len(c.shape(x)) - len(norm_shape), epsilon=float(c.arg("eps")))
    return (out, None, None)


@converter("aten.native_group_norm.default")
def _group_norm(c: Ctx):
    """Normalize each group as a layer norm over (C/G, spatial), then apply the per-channel affine."""
    x = c.tensor("input")
    shape, dtype, groups = c.shape(x), c.b.type(x).dtype, int(c.arg("group"))
    flat = c.add("reshape", [x], "_groups", shape=(shape[0], groups, int(np.prod(shape[1:])) // groups))
    ones = c.const(np.ones(c.shape(flat)[2:]), dtype, "_ones")
    normed = c.add("layer_norm", [flat, ones], "_norm", axis=2, epsilon=float(c.arg("eps")))
    out = c.add("reshape", [normed], "_ungroup", shape=shape)
    affine = (shape[1],) + (1,) * (len(shape) - 2)
    if c.arg("weight") is not None:
        out = c.add("mul", [out, c.add("reshape", [c.tensor("weight")], "_w", shape=affine)], "_scaled")
    if c.arg("bias") is not None:
        out = c.add("add", [out, c.add("reshape", [c.tensor("bias")], "_b", shape=affine)], "_shifted")
    return (out, None, None)


@converter("aten._softmax.default", "aten._log_softmax.default")
def _softmax(c: Ctx):
    x = c.cast(c.tensor("self"), c.out_type.dtype)
    log = str(c.node.target) == "aten._log_softmax.default"
    return c.add("softmax", [x], axis=_axis(int(c.arg("dim")), len(c.shape(x))), log=log)


@converter(*ATTENTION_OPS)
def _attention(c: Ctx):
    q, k, v = c.tensor("query"), c.tensor("key"), c.tensor("value")
    if c.arg("dropout_p"):
        raise c.fail("attention dropout_p > 0 is not supported (it is random even in eval mode)")
    (*_, sq, d), sk = c.shape(q), c.shape(k)[-2]
    dtype = c.b.type(q).dtype
    if c.args.get("enable_gqa") and c.shape(k)[-3] != c.shape(q)[-3]:
        k, v = (_repeat_heads(c, t, c.shape(q)[-3], n) for t, n in ((k, "_k"), (v, "_v")))
    mask_key = "attn_mask" if "attn_mask" in c.args else "attn_bias"
    mask = c.opt_tensor(mask_key) if mask_key in c.args else None
    if mask is not None and c.b.type(mask).dtype == "bool":  # boolean masks say where to attend
        mask = c.add("where", [mask, c.const(0.0, dtype, "_keep"), c.const(-np.inf, dtype, "_drop")], "_mask")
    elif mask is not None:
        mask = c.cast(mask, dtype)
    causal = bool(c.arg("is_causal"))
    if causal and sq != sk:  # torch aligns the causal mask top-left, our op bottom-right: spell it out
        tril = np.tril(np.ones((sq, sk), dtype=bool))
        causal_mask = c.const(np.where(tril, 0.0, -np.inf), dtype, "_causal")
        mask = causal_mask if mask is None else c.add("add", [mask, causal_mask], "_masks")
        causal = False
    scale = c.args.get("scale")
    out = c.add("attention", [q, k, v] + ([mask] if mask is not None else []),
                scale=float(scale) if scale is not None else 1 / math.sqrt(d), causal=causal)
    meta = c.node.meta["val"]
    return (out,) + (None,) * (len(meta) - 1) if isinstance(meta, (tuple, list)) else out


def _repeat_heads(c: Ctx, t: str, heads: int, suffix: str) -> str:
    """Grouped-query attention: repeat each key/value head heads/kv_heads times (repeat_interleave)."""
    *batch, kv_heads, s, d = c.shape(t)
    grouped = c.add("reshape", [t], suffix + "_g", shape=(*batch, kv_heads, 1, s, d))
    wide = c.add("expand", [grouped], suffix + "_x", shape=(*batch, kv_heads, heads // kv_heads, s, d))
    return c.add("reshape", [wide], suffix + "_rep", shape=(*batch, heads, s, d))


# --------------------------------------------------------------------------- pooling, reductions
def _pool2d(c: Ctx, x: str, suffix: str = "", **attrs) -> str:
    rank = len(c.shape(x))
    if rank == 3:  # unbatched (C, H, W)
        x = c.add("reshape", [x], "_nchw", shape=(1,) + c.shape(x))
    elif rank != 4:
        raise c.fail(f"pooling a {rank}-D tensor is not supported")
    return c.reshape_to_out(c.add("pool2d", [x], suffix, **attrs), "_out")


def _ceil_pads(size, kernel, stride, pad, dilation) -> int:
    """Extra high padding that makes floor division give ceil_mode's output size (PyTorch's rule)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1  # the last window must start inside the input or its low pad
    return max(0, (out - 1) * stride - span)


def _pair(values) -> list[int]:
    values = [int(v) for v in values]
    return values * 2 if len(values) == 1 else values


def _pool_geometry(c: Ctx, x: str):
    spatial = c.shape(x)[-2:]
    kernel = _pair(c.arg("kernel_size"))
    stride = _pair(c.arg("stride") or kernel)
    pad = _pair(c.arg("padding"))
    dilation = _pair(c.args.get("dilation", [1, 1]))
    extra = [_ceil_pads(spatial[i], kernel[i], stride[i], pad[i], dilation[i]) if c.arg("ceil_mode") else 0 for i in range(2)]
    return kernel, stride, pad + [p + e for p, e in zip(pad, extra)], dilation, any(extra)


@converter("aten.max_pool2d_with_indices.default")
def _max_pool(c: Ctx):
    x = c.tensor("self")
    kernel, stride, pads, dilation, _ = _pool_geometry(c, x)
    out = _pool2d(c, x, kind="max", kernel=kernel, strides=stride, pads=pads, dilations=dilation, count_include_pad=False)
    return (out, None)


@converter("aten.avg_pool2d.default")
def _avg_pool(c: Ctx):
    x = c.tensor("self")
    if c.arg("divisor_override") is not None:
        raise c.fail("divisor_override is not supported")
    kernel, stride, pads, dilation, ceil_grew = _pool_geometry(c, x)
    include_pad = bool(c.arg("count_include_pad"))
    if include_pad and ceil_grew:
        if any(c.arg("padding")):  # torch counts the explicit padding but not the ceil overhang
            raise c.fail("ceil_mode with count_include_pad and padding is not supported")
        include_pad = False  # with no explicit padding the two counts agree
    return _pool2d(c, x, kind="avg", kernel=kernel, strides=stride, pads=pads, dilations=dilation,
                   count_include_pad=include_pad)


@converter("aten._adaptive_avg_pool2d.default", "aten.adaptive_max_pool2d.default")
def _adaptive_pool(c: Ctx):
    x = c.tensor("self")
    (h, w), (oh, ow) = c.shape(x)[-2:], tuple(c.arg("output_size"))
    kind = "max" if "max" in str(c.node.target) else "avg"
    if (oh, ow) == (1, 1):
        ndim = len(c.shape(x))
        out = c.add("reduce", [x], kind="mean" if kind == "avg" else "max", axes=(ndim - 2, ndim - 1), keepdims=True)
    elif h % oh == 0 and w % ow == 0:
        kernel = (h // oh, w // ow)
        out = _pool2d(c, x, kind=kind, kernel=kernel, strides=kernel, pads=(0, 0, 0, 0), dilations=(1, 1),
                      count_include_pad=False)
    else:
        raise c.fail(f"adaptive pooling {h}x{w} -> {oh}x{ow} is not supported (needs 1x1 or an even division)")
    return (out, None) if kind == "max" else out


def _axes(dims, ndim: int) -> tuple[int, ...]:
    """Reduction axes, sorted and non-negative; None or [] means all of them (as in ATen)."""
    dims = [dims] if isinstance(dims, int) else dims
    return tuple(sorted({_axis(int(d), ndim) for d in dims})) if dims else tuple(range(ndim))


def _reduce(c: Ctx, kind: str, dims, keepdim: bool) -> str:
    x = c.tensor("self")
    axes = _axes(dims, len(c.shape(x)))
    x = c.cast(x, c.out_type.dtype if kind in ("sum", "mean", "prod") else c.b.type(x).dtype)
    return c.add("reduce", [x], kind=kind, axes=axes, keepdims=bool(keepdim))


@converter("aten.sum.dim_IntList", "aten.mean.dim", "aten.mean.default", "aten.amax.default",
           "aten.amin.default", "aten.max.default", "aten.min.default", "aten.prod.dim_int", "aten.prod.default")
def _reductions(c: Ctx):
    packet = str(c.node.target.overloadpacket).split(".")[1]
    kind = {"amax": "max", "amin": "min"}.get(packet, packet)
    return _reduce(c, kind, c.args.get("dim"), c.args.get("keepdim", False))


@converter("aten.any.dim", "aten.any.dims", "aten.any.default", "aten.all.dim", "aten.all.dims", "aten.all.default")
def _any_all(c: Ctx):
    """any / all as max / min of 0-1 integers (reductions over bool are not in every backend)."""
    kind = "max" if str(c.node.target.overloadpacket) == "aten.any" else "min"
    x = c.tensor("self")
    flags = c.cast(c.cast(x, "bool"), "int32")
    reduced = c.add("reduce", [flags], "_" + kind, kind=kind, axes=_axes(c.args.get("dim"), len(c.shape(x))),
                    keepdims=bool(c.args.get("keepdim", False)))
    return c.add("cast", [reduced], to="bool")


@converter("aten.max.dim", "aten.min.dim")
def _max_dim(c: Ctx):
    kind = str(c.node.target.overloadpacket).split(".")[1]
    return (_reduce(c, kind, c.arg("dim"), c.arg("keepdim")), None)


@converter("aten.var.correction")
def _var(c: Ctx):
    x = c.cast(c.tensor("self"), c.out_type.dtype)
    axes = _axes(c.arg("dim"), len(c.shape(x)))
    count = int(np.prod([c.shape(x)[a] for a in axes]))
    correction = 1 if c.arg("correction") is None else c.arg("correction")
    centered = c.add("sub", [x, c.add("reduce", [x], "_mean", kind="mean", axes=axes, keepdims=True)], "_centered")
    squares = c.add("reduce", [c.add("mul", [centered, centered], "_sq")], "_ss", kind="sum", axes=axes,
                    keepdims=bool(c.arg("keepdim")))
    return c.add("div", [squares, c.const(max(count - correction, 0), c.out_type.dtype, "_n")])


# --------------------------------------------------------------------------- data movement
@converter("aten.view.default", "aten.reshape.default", "aten.unsqueeze.default", "aten.squeeze.dims")
def _reshape(c: Ctx):
    x = c.tensor("self")  # every view op reshapes to the shape torch recorded
    return c.add("reshape", [x], shape=c.out_shape)


@converter("aten.permute.default")
def _permute(c: Ctx):
    x = c.tensor("self")
    ndim = len(c.shape(x))
    return c.add("transpose", [x], perm=tuple(_axis(int(d), ndim) for d in c.arg("dims")))


@converter("aten.expand.default")
def _expand(c: Ctx):
    return c.add("expand", [c.tensor("self")], shape=c.out_shape)


@converter("aten.repeat.default")
def _repeat(c: Ctx):
    x, reps = c.tensor("self"), [int(r) for r in c.arg("repeats")]
    shape = (1,) * (len(reps) - len(c.shape(x))) + c.shape(x)
    spread = c.add("reshape", [x], "_spread", shape=tuple(d for s in shape for d in (1, s)))
    tiled = c.add("expand", [spread], "_tile", shape=tuple(d for r, s in zip(reps, shape) for d in (r, s)))
    return c.add("reshape", [tiled], shape=c.out_shape)


@converter("aten.cat.default")
def _cat(c: Ctx):
    dtype = c.out_type.dtype
    parts = [c.operand(t, dtype) for t in c.arg("tensors")]
    parts = [p for p in parts if c.b.type(p).size > 0 or c.b.type(p).ndim > 1] or parts[:1]  # legacy empty 1-D inputs
    return c.add("concat", parts, axis=_axis(int(c.arg("dim")), len(c.out_shape)))


def _slice(c: Ctx, x: str, axis: int, start: int, end: int, suffix: str = "") -> str:
    return c.add("slice", [x], suffix, starts=(start,), ends=(end,), axes=(axis,), steps=(1,))


@converter("aten.split_with_sizes.default")
def _split(c: Ctx):
    x = c.tensor("self")
    axis = _axis(int(c.arg("dim")), len(c.shape(x)))
    sizes = [int(n) for n in c.arg("split_sizes")]
    starts = np.cumsum([0] + sizes).tolist()
    return tuple(_slice(c, x, axis, s, s + n, f"_{k}") for k, (s, n) in enumerate(zip(starts, sizes)))


@converter("aten.slice.Tensor")
def _slice_tensor(c: Ctx):
    x = c.tensor("self")
    shape = c.shape(x)
    axis = _axis(int(c.arg("dim")), len(shape))
    dim, step = shape[axis], int(c.arg("step"))
    if step <= 0:
        raise c.fail(f"slice step {step} is not supported")
    start = 0 if c.arg("start") is None else int(c.arg("start"))
    end = dim if c.arg("end") is None else int(c.arg("end"))
    start, end = (min(max(v + dim if v < 0 else v, 0), dim) for v in (start, end))
    return c.add("slice", [x], starts=(start,), ends=(max(end, start),), axes=(axis,), steps=(step,))


@converter("aten.flip.default")
def _flip(c: Ctx):
    x = c.tensor("self")
    shape = c.shape(x)
    axes = sorted({_axis(int(d), len(shape)) for d in c.arg("dims")})
    return c.add("slice", [x], starts=tuple(shape[a] - 1 for a in axes), ends=(-1,) * len(axes), axes=tuple(axes),
                 steps=(-1,) * len(axes))


@converter("aten.select.int")
def _select(c: Ctx):
    x = c.tensor("self")
    shape = c.shape(x)
    axis = _axis(int(c.arg("dim")), len(shape))
    index = _axis(int(c.arg("index")), shape[axis])
    return c.reshape_to_out(_slice(c, x, axis, index, index + 1, "_slice"))


@converter("aten.index_select.default")
def _index_select(c: Ctx):
    x = c.tensor("self")
    return c.add("gather", [x, c.tensor("index")], axis=_axis(int(c.arg("dim")), len(c.shape(x))))


@converter("aten.index.Tensor")
def _index(c: Ctx):
    given = [(k, i) for k, i in enumerate(c.arg("indices")) if i is not None]
    if len(given) != 1 or c.b.type(c.tensor(given[0][1])).dtype == "bool":
        raise c.fail("only indexing with one integer index tensor is supported")
    axis, idx = given[0]
    return c.add("gather", [c.tensor("self"), c.tensor(idx)], axis=axis)


@converter("aten.embedding.default")
def _embedding(c: Ctx):
    return c.add("gather", [c.tensor("weight"), c.tensor("indices")], axis=0)


@converter("aten.constant_pad_nd.default")
def _pad(c: Ctx):
    x = c.tensor("self")
    ndim, pad = len(c.shape(x)), [int(p) for p in c.arg("pad")]
    if any(p < 0 for p in pad):
        raise c.fail("negative padding is not supported")
    before, after = [0] * ndim, [0] * ndim
    for k in range(len(pad) // 2):  # torch lists (low, high) pairs from the last dimension backwards
        before[ndim - 1 - k], after[ndim - 1 - k] = pad[2 * k], pad[2 * k + 1]
    return c.add("pad", [x], pads=tuple(before + after), mode="constant", value=float(c.arg("value")))


# --------------------------------------------------------------------------- constants and identities
@converter("aten.full.default", "aten.full_like.default", "aten.scalar_tensor.default")
def _full(c: Ctx):
    out = c.out_type
    fill = c.arg("s") if "s" in c.args else c.arg("fill_value")
    return c.b.const(np.full(out.shape, fill, dtype=out.dtype), c.name)


@converter("aten.arange.start_step")
def _arange(c: Ctx):
    out = c.out_type
    values = np.arange(c.arg("start"), c.arg("end"), c.arg("step")).astype(out.dtype)
    if values.shape != out.shape:
        raise c.fail(f"arange gave {values.shape}, torch recorded {out.shape}")
    return c.b.const(values, c.name)


@converter("aten.clone.default", "aten.alias.default", "aten.dropout.default")
def _identity(c: Ctx):
    return c.tensor("self" if "self" in c.args else "input")


@converter("aten.native_dropout.default")
def _native_dropout(c: Ctx):
    return (c.tensor("input"), None)  # inference: dropout is the identity, even when forced on


@converter("aten._assert_tensor_metadata.default", "aten._assert_scalar.default")
def _no_op(c: Ctx):
    return None
