"""Winograd F(m x m, 3x3) for 3x3 stride-1 convs on NCHWc feature maps (x86; compiler/layout.py).

Each m x m output tile of a 3x3 conv is  A^T [ (G g G^T) . (B^T d B) ] A  with d the tile's
a x a input patch (a = m + 2): for m = 4, 36 products per tile and channel pair instead of 144,
a 4x cut in multiplies (m = 2: 16 instead of 36).  The conv becomes three kernels, each an
ordinary op that the CPU sketch rules tile and vectorize:

    winograd_input   x [1, C/b, H, W, b], B^T [a, a]    ->  V [H/m, W/m, a*a, C/b, b]
                     V[y, x, a eps + nu] = (B^T d B)[eps, nu], d the padded patch at (m y, m x)
    winograd_gemm    V, U [a*a, C/b, b, K]              ->  M [H/m, W/m, a*a, K]
                     a*a matmuls over the input channels, U = G g G^T packed at compile time;
                     the output channels are one axis (K, padded to the block) so that the
                     register tile can span several vectors of them, as a matmul's does
    winograd_output  M, A^T [m, a], bias [K/b, b]       ->  y [1, K/b, H, W, b]
                     y[k, m y + i, m x + j] = (A^T M[y, x, :, k] A)[i, j] + bias[k]

B^T and A^T are small constant inputs; each transform runs as two passes of a-term dots, and
the layouts keep a tile's a*a values and a channel vector contiguous, the reads the next kernel
makes.  The output kernel writes the conv's NCHWc value, so its epilogue (relu, the residual
add) fuses into it as into a conv.

ONNX Runtime (MLAS) runs these convs direct.  The transforms cost memory traffic (V and M are
(a/m)^2 = 2.25x the feature map for m = 4) and the transformed weights are (a/3)^2 = 4x the
conv's, which is why the rewrite is for large maps (`WINOGRAD_MIN_PIXELS`; measured by
bench/winograd.py).  Exact up to fp32 rounding.
"""

from __future__ import annotations

import numpy as np

# F(m x m, 3x3) for m = 4 (6x6 patches; interpolation points 0, +-1, +-2, inf) and m = 2 (4x4
# patches; 0, +-1, inf): B^T [a, a], G [a, 3], A^T [m, a] with a = m + 2.
MATRICES = {
    4: (
        np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                  [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=np.float64),
    ),
    2: (
        np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64),
        np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]], dtype=np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64),
    ),
}
# output maps at least this large use F(4x4) (ResNet-18: the 56x56 and 28x28 stages); F(2x2) is
# for maps down to MIN_PIXELS_F2 that 4 does not tile (bench/winograd.py measures both against direct)
WINOGRAD_MIN_PIXELS = 28 * 28
MIN_PIXELS_F2 = 14 * 14  # ResNet-18's 14x14 stage (256 channels, 96 trials each: 1376 -> 990 us)


def transform_weight(w: np.ndarray, block: int, tile: int = 4) -> np.ndarray:
    """OIHW 3x3 weights -> U [a*a, C/b, b, K], channels zero-padded to the block."""
    g = MATRICES[tile][1]
    o, c = w.shape[:2]
    ob, cb = -(-o // block), -(-c // block)
    w = np.pad(w.astype(np.float64), ((0, ob * block - o), (0, cb * block - c), (0, 0), (0, 0)))
    u = np.einsum("ea,ocab,nb->enco", g, w, g).reshape(len(g) ** 2, cb, block, ob * block)
    return np.ascontiguousarray(u).astype(np.float32)


def tile_for(x_shape: tuple[int, ...], w_shape: tuple[int, ...], attrs: dict, out_shape: tuple[int, ...]) -> int:
    """The output tile side m for a 3x3, stride-1, 'same'-padded, one-group conv on an NCHWc map
    (4 or 2, whichever tiles the map and whose size threshold it meets), 0: stays direct."""
    _, _, oh, ow = out_shape
    if not (len(x_shape) == 5 and tuple(w_shape[2:]) == (3, 3) and attrs.get("groups", 1) == 1
            and tuple(attrs["strides"]) == (1, 1) and tuple(attrs["dilations"]) == (1, 1)
            and tuple(attrs["pads"]) == (1, 1, 1, 1)):
        return 0
    if oh % 4 == 0 and ow % 4 == 0 and oh * ow >= WINOGRAD_MIN_PIXELS:
        return 4
    if oh % 2 == 0 and ow % 2 == 0 and oh * ow >= MIN_PIXELS_F2:
        return 2
    return 0


# --------------------------------------------------------------------------- numpy semantics (ops_conv.py)
def input_eval(x: np.ndarray, bt: np.ndarray) -> np.ndarray:
    _, cb, h, w, blk = x.shape
    a = bt.shape[0]
    m = a - 2
    xp = np.pad(x[0], ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = np.arange(h // m)[:, None] * m + np.arange(a)[None, :]  # [tiles, a]
    cols = np.arange(w // m)[:, None] * m + np.arange(a)[None, :]
    patches = xp[:, rows[:, :, None, None], cols[None, None, :, :], :]  # [cb, ty, r, tx, s, blk]
    v = np.einsum("cyrxsi,er,ns->yxenci", patches, bt, bt)
    return v.reshape(h // m, w // m, a * a, cb, blk).astype(x.dtype)


def gemm_eval(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.einsum("yxtci,tcik->yxtk", v, u).astype(v.dtype)


def output_eval(m: np.ndarray, at: np.ndarray, bias: np.ndarray | None, block: int) -> np.ndarray:
    ty, tx, _, k = m.shape
    tile, a = at.shape
    kb = k // block
    m = m.reshape(ty, tx, a, a, kb, block).transpose(4, 0, 1, 2, 3, 5)
    y = np.einsum("kyxeno,ie,jn->kyixjo", m, at, at).reshape(1, kb, ty * tile, tx * tile, block)
    if bias is not None:
        y = y + bias[None, :, None, None, :]
    return y.astype(m.dtype)
