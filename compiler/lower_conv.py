"""Convolutions and pooling as TE computes: padding, conv2d (plain, deinterleaved stride-2
grouped, packed-weight), the NCHWc layout ops and conv (compiler/layout.py), pool2d.
Registered into `lower_ops.LOWER` like every op; split out only to keep each file readable."""

from __future__ import annotations

import tvm
from tvm import te, tirx

from .lower_ops import _const, _dt, lowering


# --------------------------------------------------------------------------- padding, conv2d
def pad_nchw(x: te.Tensor, pads, value=0.0, name="pad_temp") -> te.Tensor:
    """`value` around H and W (axes 2, 3) of an NCHW map, or an NCHWc one (its block rides along)."""
    pt, pl, pb, pr = pads
    if not any(pads):
        return x
    n, c, h, w, *block = x.shape

    def body(i, j, y, z, *lane):
        inside = tirx.all(y >= pt, y < h + pt, z >= pl, z < w + pl)
        return tirx.if_then_else(inside, x[(i, j, y - pt, z - pl, *lane)], _const(value, _dt(x)))

    return te.compute((n, c, h + pt + pb, w + pl + pr, *block), body, name=name)


# A stride-2 grouped (depthwise) conv vectorizes along the output width, where its input is read
# every other column: LLVM gets a lane-by-lane gather.  Padding into even and odd columns first
# makes those reads unit-stride.  MobileNetV2's depthwise convs, tuned 32-48 trials each way
# (fresh databases): 96 ch 112->56 396 -> 209 us, 192 ch 28->14 61 -> 38 us, 144 ch 56->28 136 -> 127 us,
# but 576 ch 14->7 43 -> 56 us: a 7-wide output fills half a vector either way.
DEINTERLEAVE_MIN_WIDTH = 14


def pad_nchw_deinterleaved(x: te.Tensor, pads, value=0.0, name="pad_temp") -> te.Tensor:
    """The padded map with its even and odd columns apart: [N, C, H', 2, ceil(W'/2)], so that a
    stride-2 conv reads unit-stride vectors along the output width."""
    pt, pl, pb, pr = pads
    n, c, h, w = x.shape
    wp = int(w) + pl + pr
    return te.compute(
        (n, c, h + pt + pb, 2, (wp + 1) // 2),
        lambda i, j, y, p, z: tirx.if_then_else(
            tirx.all(y >= pt, y < h + pt, 2 * z + p >= pl, 2 * z + p < w + pl), x[i, j, y - pt, 2 * z + p - pl],
            _const(value, _dt(x))),
        name=name,
    )


@lowering("conv2d")
def _conv2d(inputs, attrs, out_type):
    x, w = inputs[0], inputs[1]
    if attrs.get("weight_layout"):
        return _conv2d_packed(inputs, attrs, out_type)
    (sh, sw), (dh, dw), groups = attrs["strides"], attrs["dilations"], attrs.get("groups", 1)
    o_total, c_per_group, kh, kw = (int(d) for d in w.shape)
    o_per_group = o_total // groups
    rc = te.reduce_axis((0, c_per_group), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    if groups > 1 and sw == 2 and dw == 1 and int(out_type.shape[3]) >= DEINTERLEAVE_MIN_WIDTH:
        padded = pad_nchw_deinterleaved(x, attrs["pads"])

        def read(n, c, y, z):  # column 2z + rx of the padded map = parity rx % 2, position z + rx // 2
            return padded[n, c, y * sh + ry * dh, rx % 2, z + rx // 2]
    else:
        plain = pad_nchw(x, attrs["pads"])

        def read(n, c, y, z):
            return plain[n, c, y * sh + ry * dh, z * sw + rx * dw]

    def body(n, o, y, z):
        cin = rc if groups == 1 else (o // o_per_group) * c_per_group + rc
        return te.sum(read(n, cin, y, z) * w[o, rc, ry, rx], axis=[rc, ry, rx])

    out = te.compute(out_type.shape, body, name="conv2d_nchw")
    if len(inputs) > 2:
        bias = inputs[2]
        out = te.compute(out_type.shape, lambda n, o, y, z: out[n, o, y, z] + bias[o], name="T_add_bias")
    return out


def _conv2d_packed(inputs, attrs, out_type):
    """conv2d with an OIHW{b}o weight (compiler/passes.pack_weights): the reduction writes an
    out-channel-blocked tile [N, O/b, OH, OW, b], whose innermost axis the sketch vectorizes; the
    NCHW result (+ bias) reads it back.  One group only."""
    x, w = inputs[0], inputs[1]
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    ob, cin, kh, kw, b = (int(d) for d in w.shape)
    n, _, oh, ow = out_type.shape
    padded = pad_nchw(x, attrs["pads"])
    rc = te.reduce_axis((0, cin), name="rc")
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    blocked = te.compute(
        (n, ob, oh, ow, b),
        lambda i, o, y, z, c: te.sum(padded[i, rc, y * sh + ry * dh, z * sw + rx * dw] * w[o, rc, ry, rx, c], axis=[rc, ry, rx]),
        name="conv2d_nchwc",
    )
    def unblock(i, o, y, z):
        return blocked[i, o // b, y, z, o % b]

    if len(inputs) > 2:
        bias = inputs[2]
        return te.compute(out_type.shape, lambda i, o, y, z: unblock(i, o, y, z) + bias[o], name="T_add_bias")
    return te.compute(out_type.shape, unblock, name="T_unblock")


# --------------------------------------------------------------------------- NCHWc (compiler/layout.py)
@lowering("to_nchwc")
def _to_nchwc(inputs, attrs, out_type):
    x, b = inputs[0], attrs["block"]
    c = int(x.shape[1])
    if c % b == 0:
        return te.compute(out_type.shape, lambda n, o, y, z, i: x[n, o * b + i, y, z], name="T_to_nchwc")
    return te.compute(
        out_type.shape,
        lambda n, o, y, z, i: tirx.if_then_else(o * b + i < c, x[n, tirx.min(o * b + i, c - 1), y, z], _const(0, _dt(x))),
        name="T_to_nchwc",
    )


@lowering("from_nchwc")
def _from_nchwc(inputs, attrs, out_type):
    x = inputs[0]
    b = int(x.shape[4])
    return te.compute(out_type.shape, lambda n, c, y, z: x[n, c // b, y, z, c % b], name="T_from_nchwc")


@lowering("conv2d_nchwc")
def _conv2d_nchwc(inputs, attrs, out_type):
    """Output [N, O/b, OH, OW, b] from NCHW or NCHWc input; weight layouts in ops_conv.py."""
    x, w = inputs[0], inputs[1]
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    kh, kw = (int(d) for d in (w.shape[1:3] if attrs.get("depthwise") else w.shape[2:4]))
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    padded = pad_nchw(x, attrs["pads"])
    if attrs.get("depthwise"):
        def body(n, o, y, z, c):
            return te.sum(padded[n, o, y * sh + ry * dh, z * sw + rx * dw, c] * w[o, ry, rx, c], axis=[ry, rx])
    elif len(x.shape) == 5:
        rco = te.reduce_axis((0, int(w.shape[1])), name="rco")
        rci = te.reduce_axis((0, int(w.shape[4])), name="rci")

        def body(n, o, y, z, c):
            return te.sum(padded[n, rco, y * sh + ry * dh, z * sw + rx * dw, rci] * w[o, rco, ry, rx, rci, c],
                          axis=[rco, ry, rx, rci])
    else:
        rc = te.reduce_axis((0, int(w.shape[1])), name="rc")

        def body(n, o, y, z, c):
            return te.sum(padded[n, rc, y * sh + ry * dh, z * sw + rx * dw] * w[o, rc, ry, rx, c], axis=[rc, ry, rx])

    out = te.compute(out_type.shape, body, name="conv2d_nchwc")
    if len(inputs) > 2:
        bias = inputs[2]
        out = te.compute(out_type.shape, lambda n, o, y, z, c: out[n, o, y, z, c] + bias[o, c], name="T_add_bias")
    return out


# --------------------------------------------------------------------------- Winograd (compiler/winograd.py)
# The transforms are written as explicit sums, not reductions: then they are plain (injective)
# blocks, and the search computes the first pass inside the second's loop over tiles, where a
# tile's partial results stay in L1; as reduction blocks each pass was tiled on its own and the
# partial results went through memory (56x56x64 map, 64 trials: 237 us input transform).  The
# first pass is marked to stay a stage: inlined, each of its values would be computed a times.
KEEP_STAGE_ATTR = "tilecraft.keep_stage"  # a block annotation: search/rules_cpu.py does not inline it


def _dot(n: int, term) -> tirx.PrimExpr:
    total = term(0)
    for k in range(1, n):
        total = total + term(k)
    return total


@lowering("winograd_input")
def _winograd_input(inputs, attrs, out_type):
    """B^T d B in two passes (rows, then columns) of a-term dots, a = m + 2 the patch side."""
    x, bt = inputs
    a = int(bt.shape[0])
    m = a - 2
    padded = pad_nchw(x, (1, 1, 1, 1))
    ty, tx, _, cb, b = (int(d) for d in out_type.shape)
    rows = te.compute(
        (ty, tx, a, a, cb, b),
        lambda y, z, e, s, c, i: _dot(a, lambda r: padded[0, c, y * m + r, z * m + s, i] * bt[e, r]),
        name="winograd_input_rows",
        attrs={KEEP_STAGE_ATTR: 1},
    )
    return te.compute(
        out_type.shape,
        lambda y, z, t, c, i: _dot(a, lambda s: rows[y, z, t // a, s, c, i] * bt[t % a, s]),
        name="winograd_input",
    )


@lowering("winograd_gemm")
def _winograd_gemm(inputs, attrs, out_type):
    v, u = inputs
    rc = te.reduce_axis((0, int(u.shape[1])), name="rc")
    ri = te.reduce_axis((0, int(u.shape[2])), name="ri")
    return te.compute(
        out_type.shape,
        lambda y, z, t, k: te.sum(v[y, z, t, rc, ri] * u[t, rc, ri, k], axis=[rc, ri]),
        name="winograd_gemm",
    )


@lowering("winograd_output")
def _winograd_output(inputs, attrs, out_type):
    """A^T m A in two passes (rows, then columns), read as the NCHWc map (+ bias) for the epilogue."""
    mm, at, b = inputs[0], inputs[1], attrs["block"]
    m, a = (int(d) for d in at.shape)
    ty, tx = (int(d) for d in mm.shape[:2])
    kb = int(mm.shape[3]) // b
    rows = te.compute(
        (kb, ty, tx, m, a, b),
        lambda k, y, z, i, nu, o: _dot(a, lambda e: mm[y, z, e * a + nu, k * b + o] * at[i, e]),
        name="winograd_output_rows",
        attrs={KEEP_STAGE_ATTR: 1},
    )
    bias = inputs[2] if len(inputs) > 2 else None

    def body(n, k, h, w, o):
        value = _dot(a, lambda nu: rows[k, h // m, w // m, h % m, nu, o] * at[w % m, nu])
        return value + bias[k, o] if bias is not None else value

    return te.compute(out_type.shape, body, name="winograd_output")


# --------------------------------------------------------------------------- pooling
@lowering("pool2d")
def _pool2d(inputs, attrs, out_type):
    """NCHW, or NCHWc (5-D, compiler/layout.py: the channel block rides along as a trailing axis)."""
    x = inputs[0]
    kind = attrs["kind"]
    (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["strides"], attrs["dilations"]
    pt, pl, pb, pr = attrs["pads"]
    fill = tvm.tirx.min_value(_dt(x)).value if kind in ("max", "argmax") else 0.0
    padded = pad_nchw(x, attrs["pads"], fill)
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    h, w = int(x.shape[2]), int(x.shape[3])

    def window(n, c, y, z, *block):
        return padded[(n, c, y * sh + ry * dh, z * sw + rx * dw, *block)]

    if kind in ("max", "argmax"):
        mx = te.compute(out_type.shape, lambda *i: te.max(window(*i), axis=[ry, rx]), name="pool_max")
        return mx if kind == "max" else _pool_argmax(x, padded, mx, attrs, out_type)
    total = te.compute(out_type.shape, lambda *i: te.sum(window(*i), axis=[ry, rx]), name="pool_sum")
    if attrs.get("count_include_pad"):
        # the window is clipped to the explicitly padded input (not ceil_mode's extra), as ONNX Runtime does
        eb, er = attrs.get("ceil_extra", (0, 0))

        def count(y, z):
            ch = tirx.min(y * sh + (kh - 1) * dh + 1, h + pt + pb - eb) - y * sh
            cw = tirx.min(z * sw + (kw - 1) * dw + 1, w + pl + pr - er) - z * sw
            return ((ch + dh - 1) // dh * ((cw + dw - 1) // dw)).astype(_dt(x))
    else:
        def count(y, z):
            def inside(pos, k, d, lo, size):  # number of window taps landing in [lo, lo + size)
                first = tirx.max(0, (lo - pos + d - 1) // d)
                last = tirx.min(k - 1, (lo + size - 1 - pos) // d)
                return tirx.max(last - first + 1, 1)
            return (inside(y * sh, kh, dh, pt, h) * inside(z * sw, kw, dw, pl, w)).astype(_dt(x))
    return te.compute(out_type.shape, lambda *i: total[i] / count(i[2], i[3]), name="pool_avg")


def _pool_argmax(x, padded, mx, attrs, out_type):
    """MaxPool's Indices: the first (row-major) window position holding the maximum, as a flat NCHW index."""
    (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["strides"], attrs["dilations"]
    pt, pl = attrs["pads"][:2]
    _, ch, h, w = (int(d) for d in x.shape)
    ry, rx = te.reduce_axis((0, kh), name="ry"), te.reduce_axis((0, kw), name="rx")

    def first(n, c, y, z):
        yy, xx = (y * sh + ry * dh - pt).astype("int64"), (z * sw + rx * dw - pl).astype("int64")
        hit = tirx.all(yy >= 0, yy < h, xx >= 0, xx < w, padded[n, c, y * sh + ry * dh, z * sw + rx * dw] == mx[n, c, y, z])
        return te.min(tirx.Select(hit, yy * w + xx, tvm.tirx.max_value("int64")), axis=[ry, rx])

    pos = te.compute(out_type.shape, first, name="pool_argmax")

    def flat(n, c, y, z):
        p = pos[n, c, y, z]
        if attrs.get("storage_order", 0):
            p = tirx.floormod(p, w) * h + tirx.floordiv(p, w)
        return p + (n.astype("int64") * ch + c.astype("int64")) * (h * w)

    return te.compute(out_type.shape, flat, name="pool_indices")
