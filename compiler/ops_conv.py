"""Convolutions, their NCHWc and Winograd forms, and pooling: fusion kind, type rule and numpy
semantics of each, as in ops.py, into whose registry they go (ops.py imports this module at its
end); split out only to keep each file readable, as lower_conv.py is from lower_ops.py."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from . import winograd
from .ir import TensorType
from .ops import ANCHOR, INJECTIVE, REDUCTION, register


# ---------------------------------------------------------------------------
# conv2d: NCHW input, OIHW weight, optional bias; pads = (top, left, bottom, right)
def conv_out_dim(size: int, k: int, stride: int, pad_lo: int, pad_hi: int, dilation: int) -> int:
    return (size + pad_lo + pad_hi - dilation * (k - 1) - 1) // stride + 1


def _packed_weight_type(w: TensorType, attrs) -> TensorType:
    """The OIHW type of a weight that pack_weights stored as OIHW{b}o."""
    if not attrs.get("weight_layout"):
        return w
    if w.ndim != 5:
        raise ShapeError(f"conv2d: weight layout {attrs['weight_layout']} needs a 5-D weight, got {w}")
    ob, i, kh, kw, b = w.shape
    return TensorType((ob * b, i, kh, kw), w.dtype)


def pack_conv_weight(w: np.ndarray, block: int) -> np.ndarray:
    """OIHW -> OIHW{b}o = [O/b, I, KH, KW, b] (O a multiple of b)."""
    o, i, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(o // block, block, i, kh, kw).transpose(0, 2, 3, 4, 1))


def unpack_conv_weight(w: np.ndarray, layout: str | None) -> np.ndarray:
    """OIHW{b}o -> OIHW (the inverse of passes.pack_weights); OIHW as it is."""
    if not layout:
        return w
    ob, i, kh, kw, b = w.shape
    return w.transpose(0, 4, 1, 2, 3).reshape(ob * b, i, kh, kw)


def _conv_infer(inputs, attrs):
    x, w = inputs[0], _packed_weight_type(inputs[1], attrs)
    if x.ndim != 4 or w.ndim != 4:
        raise ShapeError(f"conv2d expects 4-D input and weight, got {x} and {w}")
    groups = attrs.get("groups", 1)
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise ShapeError(f"conv2d: channels {x.shape[1]} do not match weight {w.shape} with groups={groups}")
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = attrs["strides"], attrs["pads"], attrs["dilations"]
    oh = conv_out_dim(x.shape[2], w.shape[2], sh, pt, pb, dh)
    ow = conv_out_dim(x.shape[3], w.shape[3], sw, pl, pr, dw)
    if oh <= 0 or ow <= 0:
        raise ShapeError(f"conv2d output would be empty ({oh}x{ow})")
    return TensorType((x.shape[0], w.shape[0], oh, ow), x.dtype)


def _conv_eval(inputs, attrs):
    x, w = inputs[0], inputs[1]
    if attrs.get("weight_layout"):
        w = unpack_conv_weight(w, attrs["weight_layout"])
        attrs = {k: v for k, v in attrs.items() if k != "weight_layout"}
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = attrs["strides"], attrs["pads"], attrs["dilations"]
    g = attrs.get("groups", 1)
    n, c, _, _ = x.shape
    o, ci, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    out_t = _conv_infer([TensorType(x.shape, str(x.dtype)), TensorType(w.shape, str(w.dtype))], attrs)
    _, _, oh, ow = out_t.shape
    out = np.zeros(out_t.shape, dtype=np.float64)
    xg = xp.reshape(n, g, ci, *xp.shape[2:])
    wg = w.reshape(g, o // g, ci, kh, kw)
    for r in range(kh):
        for s in range(kw):
            patch = xg[:, :, :, r * dh : r * dh + sh * (oh - 1) + 1 : sh, s * dw : s * dw + sw * (ow - 1) + 1 : sw]
            out += np.einsum("ngchw,goc->ngohw", patch, wg[:, :, :, r, s]).reshape(out.shape)
    if len(inputs) > 2:
        out += inputs[2].reshape(1, -1, 1, 1)
    return out.astype(x.dtype)


register("conv2d", ANCHOR, _conv_infer, _conv_eval)


# ---------------------------------------------------------------------------
# NCHWc activations (compiler/layout.py): [N, C/b, H, W, b], channels zero-padded to a multiple of b.
# conv2d_nchwc reads NCHW (4-D) or NCHWc (5-D) input and writes NCHWc.  Weights, packed by the pass:
#   dense, NCHW input   [O/b, C, KH, KW, b]        dense, NCHWc input  [O/b, C/b, KH, KW, b_in, b_out]
#   depthwise (groups = channels, NCHWc input)   [C/b, KH, KW, b]
# bias [O/b, b].  The padded output channels hold epilogue(0) and meet zero weights downstream.
def to_blocked(x: np.ndarray, block: int) -> np.ndarray:
    n, c, h, w = x.shape
    cb = -(-c // block)
    x = np.pad(x, ((0, 0), (0, cb * block - c), (0, 0), (0, 0)))
    return np.ascontiguousarray(x.reshape(n, cb, block, h, w).transpose(0, 1, 3, 4, 2))


def from_blocked(x: np.ndarray, channels: int) -> np.ndarray:
    n, cb, h, w, b = x.shape
    return np.ascontiguousarray(x.transpose(0, 1, 4, 2, 3).reshape(n, cb * b, h, w)[:, :channels])


def _to_nchwc_infer(inputs, attrs):
    x, b = inputs[0], attrs["block"]
    if x.ndim != 4:
        raise ShapeError(f"to_nchwc expects a 4-D input, got {x}")
    return TensorType((x.shape[0], -(-x.shape[1] // b), x.shape[2], x.shape[3], b), x.dtype)


def _from_nchwc_infer(inputs, attrs):
    x, c = inputs[0], attrs["channels"]
    if x.ndim != 5 or not 0 < c <= x.shape[1] * x.shape[4]:
        raise ShapeError(f"from_nchwc: {c} channels do not fit {x}")
    return TensorType((x.shape[0], c, x.shape[2], x.shape[3]), x.dtype)


register("to_nchwc", INJECTIVE, _to_nchwc_infer, lambda i, a: to_blocked(i[0], a["block"]))
register("from_nchwc", INJECTIVE, _from_nchwc_infer, lambda i, a: from_blocked(i[0], a["channels"]))


def _nchwc_conv_as_oihw(inputs, attrs) -> tuple[TensorType, TensorType, dict]:
    """conv2d_nchwc's input and weight types as the plain conv2d they compute, and its attrs."""
    x, w = inputs[0], inputs[1]
    plain = {k: v for k, v in attrs.items() if k != "depthwise"}
    if attrs.get("depthwise"):
        if x.ndim != 5 or w.ndim != 4 or w.shape[0] != x.shape[1] or w.shape[3] != x.shape[4]:
            raise ShapeError(f"conv2d_nchwc (depthwise): input {x} does not match weight {w}")
        c = x.shape[1] * x.shape[4]
        return (TensorType((x.shape[0], c, *x.shape[2:4]), x.dtype), TensorType((c, 1, *w.shape[1:3]), w.dtype),
                {**plain, "groups": c})
    if x.ndim == 5 and w.ndim == 6 and w.shape[1] == x.shape[1] and w.shape[4] == x.shape[4]:
        xc = TensorType((x.shape[0], x.shape[1] * x.shape[4], *x.shape[2:4]), x.dtype)
        return xc, TensorType((w.shape[0] * w.shape[5], w.shape[1] * w.shape[4], *w.shape[2:4]), w.dtype), plain
    if x.ndim == 4 and w.ndim == 5 and w.shape[1] == x.shape[1]:
        return x, TensorType((w.shape[0] * w.shape[4], *w.shape[1:4]), w.dtype), plain
    raise ShapeError(f"conv2d_nchwc: input {x} does not match weight {w}")


def _conv_nchwc_infer(inputs, attrs):
    x, w, plain = _nchwc_conv_as_oihw(inputs, attrs)
    n, o, oh, ow = _conv_infer([x, w], plain).shape
    b = inputs[1].shape[-1]
    return TensorType((n, o // b, oh, ow, b), x.dtype)


def _conv_nchwc_eval(inputs, attrs):
    x, w = inputs[0], inputs[1]
    b = w.shape[-1]
    if attrs.get("depthwise"):
        w = w.transpose(0, 3, 1, 2).reshape(-1, 1, *w.shape[1:3])
    elif w.ndim == 6:
        ob, cb, kh, kw, bi, bo = w.shape
        w = w.transpose(0, 5, 1, 4, 2, 3).reshape(ob * bo, cb * bi, kh, kw)
    else:
        w = unpack_conv_weight(w, "OIHWo")
    if x.ndim == 5:
        x = from_blocked(x, x.shape[1] * x.shape[4])
    plain = {k: v for k, v in attrs.items() if k != "depthwise"}
    if attrs.get("depthwise"):
        plain["groups"] = w.shape[0]
    bias = [inputs[2].reshape(-1)] if len(inputs) > 2 else []
    return to_blocked(_conv_eval([x, w, *bias], plain), b)


register("conv2d_nchwc", ANCHOR, _conv_nchwc_infer, _conv_nchwc_eval)


# Winograd F(m x m, 3x3) on NCHWc maps (m = 4 or 2): the three kernels a 3x3 conv becomes (compiler/winograd.py)
def _winograd_input_infer(inputs, attrs):
    x, bt = inputs
    a = bt.shape[0]
    if x.ndim != 5 or bt.shape not in ((6, 6), (4, 4)) or x.shape[2] % (a - 2) or x.shape[3] % (a - 2):
        raise ShapeError(f"winograd_input: input {x} (NCHWc, H and W multiples of the tile) or transform {bt} is off")
    return TensorType((x.shape[2] // (a - 2), x.shape[3] // (a - 2), a * a, x.shape[1], x.shape[4]), x.dtype)


def _winograd_gemm_infer(inputs, attrs):
    v, u = inputs
    if v.ndim != 5 or u.ndim != 4 or u.shape[:3] != v.shape[2:]:
        raise ShapeError(f"winograd_gemm: transformed input {v} does not match transformed weight {u}")
    return TensorType((*v.shape[:3], u.shape[3]), v.dtype)


def _winograd_output_infer(inputs, attrs):
    mm, at, b = inputs[0], inputs[1], attrs["block"]
    m, a = at.shape
    if mm.ndim != 4 or mm.shape[3] % b or at.shape not in ((4, 6), (2, 4)) or mm.shape[2] != a * a or (
            len(inputs) > 2 and inputs[2].shape != (mm.shape[3] // b, b)):
        raise ShapeError(f"winograd_output: products {mm}, transform {at} or bias do not fit")
    return TensorType((1, mm.shape[3] // b, mm.shape[0] * m, mm.shape[1] * m, b), mm.dtype)


register("winograd_input", ANCHOR, _winograd_input_infer, lambda i, a: winograd.input_eval(*i))
register("winograd_gemm", ANCHOR, _winograd_gemm_infer, lambda i, a: winograd.gemm_eval(*i))
register("winograd_output", ANCHOR, _winograd_output_infer,
         lambda i, a: winograd.output_eval(i[0], i[1], i[2] if len(i) > 2 else None, a["block"]))


# ---------------------------------------------------------------------------
# pooling (NCHW); pads = (top, left, bottom, right), already adjusted for ceil_mode.  ceil_extra =
# (bottom, right): the part of those pads added only to reach ceil_mode's output size, which
# count_include_pad does not count (ONNX Runtime, PyTorch)
def _pool_infer(inputs, attrs):
    x = inputs[0]
    if x.ndim != 4 and not (x.ndim == 5 and attrs["kind"] in ("max", "avg")):
        raise ShapeError(f"pool2d ({attrs['kind']}) expects an NCHW input (or NCHWc for max / avg), got {x}")
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = attrs["kernel"], attrs["strides"], attrs["pads"], attrs["dilations"]
    oh = conv_out_dim(x.shape[2], kh, sh, pt, pb, dh)
    ow = conv_out_dim(x.shape[3], kw, sw, pl, pr, dw)
    return TensorType((x.shape[0], x.shape[1], oh, ow, *x.shape[4:]), "int64" if attrs["kind"] == "argmax" else x.dtype)


def _pool_eval(inputs, attrs):
    if inputs[0].ndim == 5:  # NCHWc: pool every (padded) channel, block again
        x = inputs[0]
        return to_blocked(_pool_eval([from_blocked(x, x.shape[1] * x.shape[4])], attrs), x.shape[4])
    x = inputs[0].astype(np.float64)
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = attrs["kernel"], attrs["strides"], attrs["pads"], attrs["dilations"]
    kind = attrs["kind"]
    fill = -np.inf if kind in ("max", "argmax") else 0.0
    pb, pr = max(pb, 0), max(pr, 0)  # a negative high pad (ceil_mode) only shortens the output
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=fill)
    if attrs.get("count_include_pad"):
        eb, er = attrs.get("ceil_extra", (0, 0))
        ones = np.pad(np.ones((x.shape[2] + pt + pb - eb, x.shape[3] + pl + pr - er)), ((0, eb), (0, er)))
    else:
        ones = np.pad(np.ones(x.shape[2:]), ((pt, pb), (pl, pr)))
    out_t = _pool_infer([TensorType(x.shape, "float32")], attrs)
    oh, ow = out_t.shape[2:]
    acc = np.full((x.shape[0], x.shape[1], oh, ow), fill)
    cnt = np.zeros((oh, ow))
    where = np.zeros(acc.shape, dtype=np.int64)  # argmax: row-major position in the image
    for r in range(kh):
        for s in range(kw):
            sl = (slice(r * dh, r * dh + sh * (oh - 1) + 1, sh), slice(s * dw, s * dw + sw * (ow - 1) + 1, sw))
            patch = xp[(slice(None), slice(None)) + sl]
            if kind == "argmax":  # strictly greater: the first maximum in window order wins
                pos = (np.arange(oh) * sh + r * dh - pt)[:, None] * x.shape[3] + (np.arange(ow) * sw + s * dw - pl)[None, :]
                where = np.where(patch > acc, pos, where)
            acc = np.maximum(acc, patch) if kind in ("max", "argmax") else acc + patch
            cnt += ones[sl]
    if kind == "argmax":
        return _flat_index(where, x.shape, attrs.get("storage_order", 0))
    if kind == "avg":
        acc = acc / np.maximum(cnt, 1)
    return acc.astype(inputs[0].dtype)


def _flat_index(pos, shape, storage_order: int):
    """ONNX MaxPool Indices: flat index into the NCHW input (column-major within an image if storage_order)."""
    n, c, h, w = shape
    if storage_order:
        pos = pos % w * h + pos // w
    base = (np.arange(n)[:, None] * c + np.arange(c)[None, :]) * h * w
    return pos + base[:, :, None, None]


register("pool2d", REDUCTION, _pool_infer, _pool_eval)
