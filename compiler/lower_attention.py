"""Fused attention as one TensorIR kernel: FlashAttention's tiled online softmax.

For every (batch..., query tile of BQ rows) the kernel keeps, per row, a running max
`m`, a running sum `l` and an accumulator `acc[BQ, Dv]`, and walks the keys in tiles
of BK:

    S   = (Q_tile * scale) . K_tile^T (+ mask)          masked entries: invalid
    m'  = max(m, rowmax S);  P = exp(S - m')  (0 where invalid)
    l   = l * exp(m - m') + rowsum P;   acc = acc * exp(m - m') + P . V_tile;   m = m'
    out = acc / l    (0 for a row with no valid key: no NaN, m stays finite)

Every buffer it allocates is sized by the tile (BQ x BK, BQ x Dv, D x BK), never by
Sq x Sk.  Rows past Sq and keys past Sk (ragged last tiles) read clamped indices and are
masked out / not stored.  A causal kernel skips key tiles that lie wholly in the future.

Two structural notes.  The matmul steps sit in wrapper blocks (`qk`, `pv_acc`) whose scopes are
stage pipelines, so the schedule can compute the accumulator's consumer per register tile
(the online-softmax state updates elsewhere in a key step are not a pipeline).  Each wrapper
sits under a unit loop: TVM 0.27's copy-on-write misses a block placed directly in a sequence
inside another block, and scheduling it would then edit the caller's IRModule in place.

The function is generated as TVMScript text from the shapes (broadcast batch dims make
the index expressions shape-dependent) and parsed; its blocks are named so the attention
schedule rules (`search/rules_attention.py`) find them.  The tile sizes are generation
parameters, not schedule knobs: `choose_blocks` picks them.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm

from ..errors import ShapeError
from .ir import Graph, TensorType
from .ops import broadcast_shapes

NEG = -3.4028234663852886e38  # finite "minus infinity": keeps m finite for fully masked rows
TILE_BLOCK = "attention_tile"  # the per (batch, query tile) block; its loops are the parallel ones
STEP_BLOCK = "kv_step"  # one key tile of the online softmax
FUNC_ATTR = "tilecraft.attention"  # function attribute: marks the kernel for the schedule rules

# 64 x 64 tiles: a K tile of 64 x D and the 64 x 64 scores stay in L1/L2.  With the scores kept
# transposed (see attention_script) 64 x 64 beat 128 x 128, 64 x 128, 128 x 64 and 256 x 64 at seq 2048,
# D 64 on 2 threads (53 ms against 55-61 ms), and it fits a GPU's shared memory for D up to 128.
DEFAULT_BLOCK_Q = 64
DEFAULT_BLOCK_K = 64


@dataclass(frozen=True)
class AttentionSpec:
    """Everything the kernel's code depends on."""

    q: TensorType
    k: TensorType
    v: TensorType
    out: TensorType
    mask: TensorType | None
    scale: float
    causal: bool
    block_q: int
    block_k: int

    @property
    def batch(self) -> tuple[int, ...]:
        return self.out.shape[:-2]

    @property
    def sq(self) -> int:
        return self.q.shape[-2]

    @property
    def sk(self) -> int:
        return self.k.shape[-2]

    @property
    def d(self) -> int:
        return self.q.shape[-1]

    @property
    def dv(self) -> int:
        return self.v.shape[-1]


def choose_blocks(sq: int, sk: int, *, block_q: int | None = None, block_k: int | None = None) -> tuple[int, int]:
    """Tile sizes: 64 x 64 unless given, never larger than the sequence itself (decoding: Sq = 1
    gives BQ = 1)."""
    bq = min(block_q or DEFAULT_BLOCK_Q, sq)
    bk = min(block_k or DEFAULT_BLOCK_K, sk)
    if bq < 1 or bk < 1:
        raise ShapeError(f"attention: empty sequence (Sq={sq}, Sk={sk})")
    return bq, bk


def lower_attention(
    q: TensorType,
    k: TensorType,
    v: TensorType,
    out: TensorType,
    *,
    mask: TensorType | None = None,
    scale: float,
    causal: bool = False,
    block_q: int | None = None,
    block_k: int | None = None,
    fast_exp: bool = True,
    name: str = "main",
) -> tvm.tirx.PrimFunc:
    """The PrimFunc (q, k, v[, mask], out) computing attention with tiles of block_q x block_k.
    `fast_exp=False` uses `T.exp` (LLVM: one scalar expf call per lane) instead of the polynomial."""
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ShapeError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} do not fit")
    batch = broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if out.shape != batch + (q.shape[-2], v.shape[-1]):
        raise ShapeError(f"attention: output {out.shape} does not match q/k/v")
    if mask is not None:
        broadcast_shapes(mask.shape, out.shape[:-2] + (q.shape[-2], k.shape[-2]))
    bq, bk = choose_blocks(q.shape[-2], k.shape[-2], block_q=block_q, block_k=block_k)
    spec = AttentionSpec(q, k, v, out, mask, float(scale), bool(causal), bq, bk)
    func = tvm.script.from_source(attention_script(spec, fast=fast_exp))
    return func.with_attr("global_symbol", name)


def lower_attention_body(body: Graph, *, name: str = "main") -> tuple[tvm.tirx.PrimFunc, tuple[TensorType, ...]] | None:
    """A fused group whose body is one attention node -> (PrimFunc, argument types); None if the
    body is anything else (the caller falls back to the generic lowering)."""
    if len(body.nodes) != 1 or body.nodes[0].op != "attention" or body.outputs != (body.nodes[0].name,):
        return None
    node = body.nodes[0]
    names = [n for n, _ in body.inputs]
    if list(node.inputs) != names:  # shared or baked inputs (q is k, a scalar mask): generic lowering
        return None
    types = [t for _, t in body.inputs]
    func = lower_attention(
        *types[:3],
        node.type,
        mask=types[3] if len(types) > 3 else None,
        scale=node.attr("scale"),
        causal=bool(node.attr("causal", False)),
        name=name,
    )
    return func, tuple(types) + (node.type,)


# --------------------------------------------------------------------------- the template
def _index(shape: tuple[int, ...], batch: tuple[int, ...], bvars: list[str], tail: list[str]) -> str:
    """Index of a (broadcast) operand: its own batch dims from the output's batch vars."""
    lead = shape[: len(shape) - len(tail)]
    offset = len(batch) - len(lead)
    idx = ["0" if d == 1 and batch[offset + j] != 1 else bvars[offset + j] for j, d in enumerate(lead)]
    return ", ".join(idx + tail)


def _mask_index(spec: AttentionSpec, bvars: list[str], row: str, col: str) -> str:
    shape = spec.mask.shape
    full = spec.batch + (spec.sq, spec.sk)
    offset = len(full) - len(shape)
    names = bvars + [row, col]
    return ", ".join("0" if d == 1 and full[offset + j] != 1 else names[offset + j] for j, d in enumerate(shape))


def _buffer(name: str, t: TensorType) -> str:
    shape = ", ".join(map(str, t.shape)) + ("," if len(t.shape) == 1 else "")
    return f'{name}: T.Buffer(({shape}), "{t.dtype}")'


def fast_exp(x: str, dtype: str) -> str:
    """exp as vectorizable arithmetic (TOPI's fast_exp: 2^n * polynomial, rel. error ~1e-7).
    LLVM would turn a vector `T.exp` into one scalar `expf` call per lane."""
    if dtype != "float32":
        return f"T.exp({x})"
    c = lambda v: f"T.float32({v!r})"  # noqa: E731
    xc = f"T.max(T.min({x}, {c(88.376262664795)}), {c(-88.376262664795)})"
    n = f"T.floor({xc} * {c(1.4426950408889634)} + {c(0.5)})"
    f = f"({xc} - {n} * {c(0.6931471805599453)})"
    poly = c(1.9875691500e-4)
    for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        poly = f"({poly} * {f} + {c(coef)})"
    two_n = f'T.reinterpret("float32", T.shift_left(T.Cast("int32", {n}) + 127, 23))'
    return f"({two_n} * ({poly} * {f} * {f} + {f} + {c(1.0)}))"


def attention_script(spec: AttentionSpec, *, fast: bool = True) -> str:
    """TVMScript source of the kernel (readable on purpose: print it to see the algorithm)."""
    s = spec
    acc_t = "float64" if s.q.dtype == "float64" else "float32"
    bvars = [f"vb{j}" for j in range(len(s.batch))]
    nq, nk = -(-s.sq // s.block_q), -(-s.sk // s.block_k)
    row = f"vqo * {s.block_q} + vi"  # the query row of tile row vi (may pass Sq on the last tile)
    col = f"vkb * {s.block_k} + vj"  # the key of tile column vj
    crow, ccol = f"T.min({row}, {s.sq - 1})", f"T.min({col}, {s.sk - 1})"
    neg, zero = f"T.{acc_t}({NEG!r})", f"T.{acc_t}(0)"
    exp = (lambda x: fast_exp(x, acc_t)) if fast else (lambda x: f"T.exp({x})")

    def load(buf: str, t: TensorType, tail: list[str]) -> str:
        expr = f"{buf}[{_index(t.shape, s.batch, bvars, tail)}]"
        return expr if t.dtype == acc_t else f'T.Cast("{acc_t}", {expr})'

    conds = []
    if s.sk % s.block_k:
        conds.append(f"{col} < {s.sk}")
    if s.causal:
        conds.append(f"{col} <= {row} + {s.sk - s.sq}")
    valid = " and ".join(conds)
    logit = "sacc[vj, vi]"
    if s.mask is not None:  # rows and columns clamped like q's and k's
        mask = f"mask[{_mask_index(s, bvars, crow, ccol)}]"
        logit += " + " + (mask if s.mask.dtype == acc_t else f'T.Cast("{acc_t}", {mask})')
    if valid:
        logit = f"T.Select({valid}, {logit}, {neg})"
    prob = exp("s[vj, vi] - mnew[vi]")
    if valid:
        prob = f"T.Select({valid}, {prob}, {zero})"
    # causal: the key tiles wholly after the query tile's last row are not visited (a loop bound,
    # not a predicate: the same for every row of the tile, so GPU threads can sync inside)
    steps = str(nk)
    if s.causal:
        last = f"vqo * {s.block_q} + {s.block_q - 1 + s.sk - s.sq}"  # the tile's last visible key
        steps = f"T.max(T.min(T.floordiv({last}, {s.block_k}) + 1, {nk}), 0)"
    ragged = f"\n                    T.where(vqo * {s.block_q} + qi < {s.sq})" if s.sq % s.block_q else ""
    out_val = f"T.Select(l[vi] > {zero}, acc[vi, vdv] / l[vi], {zero})"
    if s.out.dtype != acc_t:
        out_val = f'T.Cast("{s.out.dtype}", {out_val})'
    params = [_buffer("q", s.q), _buffer("k", s.k), _buffer("v", s.v)]
    if s.mask is not None:
        params.append(_buffer("mask", s.mask))
    params.append(_buffer("out", s.out))
    grid = ", ".join([str(b) for b in s.batch] + [str(nq)])
    loop_vars = ", ".join([f"b{j}" for j in range(len(s.batch))] + ["qo"])
    block_vars = ", ".join(bvars + ["vqo"])
    iters = "S" * (len(s.batch) + 1)
    bq, bk, d, dv = s.block_q, s.block_k, s.d, s.dv
    out_index = _index(s.out.shape, s.batch, bvars, [row, "vdv"])
    return f"""
@T.prim_func(s_tir=True)
def main({", ".join(params)}):
    T.func_attr({{"tirx.noalias": True, "{FUNC_ATTR}": T.int32(1)}})
    for {loop_vars} in T.grid({grid}):
        with T.sblock("{TILE_BLOCK}"):
            {block_vars} = T.axis.remap("{iters}", [{loop_vars}])
            qs = T.sblock_alloc_buffer(({d}, {bq}), "{acc_t}")
            ks = T.sblock_alloc_buffer(({bk}, {d}), "{acc_t}")
            s = T.sblock_alloc_buffer(({bk}, {bq}), "{acc_t}")
            p = T.sblock_alloc_buffer(({bk}, {bq}), "{acc_t}")
            m = T.sblock_alloc_buffer(({bq},), "{acc_t}")
            mnew = T.sblock_alloc_buffer(({bq},), "{acc_t}")
            l = T.sblock_alloc_buffer(({bq},), "{acc_t}")
            lsum = T.sblock_alloc_buffer(({bq},), "{acc_t}")
            lnew = T.sblock_alloc_buffer(({bq},), "{acc_t}")
            alpha = T.sblock_alloc_buffer(({bq},), "{acc_t}")
            accn = T.sblock_alloc_buffer(({bq}, {dv}), "{acc_t}")
            acc = T.sblock_alloc_buffer(({bq}, {dv}), "{acc_t}")
            for d, qi in T.grid({d}, {bq}):
                with T.sblock("q_load"):
                    vd, vi = T.axis.remap("SS", [d, qi])
                    qs[vd, vi] = {load("q", s.q, [crow, "vd"])} * T.{acc_t}({s.scale!r})
            for qi in range({bq}):
                with T.sblock("state_init"):
                    vi = T.axis.remap("S", [qi])
                    m[vi] = {neg}
                    l[vi] = {zero}
            for qi, dv in T.grid({bq}, {dv}):
                with T.sblock("acc_init"):
                    vi, vdv = T.axis.remap("SS", [qi, dv])
                    acc[vi, vdv] = {zero}
            for kb in range({steps}):
                with T.sblock("{STEP_BLOCK}"):
                    vkb = T.axis.reduce({nk}, kb)
                    for kj, d in T.grid({bk}, {d}):
                        with T.sblock("k_load"):
                            vj, vd = T.axis.remap("SS", [kj, d])
                            ks[vj, vd] = {load("k", s.k, [ccol, "vd"])}
                    for z in range(1):  # a loop above each wrapper block: see the note at the top
                        with T.sblock("qk"):
                            sacc = T.sblock_alloc_buffer(({bk}, {bq}), "{acc_t}")
                            for kj, d, qi in T.grid({bk}, {d}, {bq}):
                                with T.sblock("score"):
                                    vj, vd, vi = T.axis.remap("SRS", [kj, d, qi])
                                    with T.init():
                                        sacc[vj, vi] = {zero}
                                    sacc[vj, vi] = sacc[vj, vi] + ks[vj, vd] * qs[vd, vi]
                            for kj, qi in T.grid({bk}, {bq}):
                                with T.sblock("logits"):
                                    vj, vi = T.axis.remap("SS", [kj, qi])
                                    s[vj, vi] = {logit}
                    for kj, qi in T.grid({bk}, {bq}):
                        with T.sblock("row_max"):
                            vj, vi = T.axis.remap("RS", [kj, qi])
                            with T.init():
                                mnew[vi] = m[vi]
                            mnew[vi] = T.max(mnew[vi], s[vj, vi])
                    for kj, qi in T.grid({bk}, {bq}):
                        with T.sblock("prob"):
                            vj, vi = T.axis.remap("SS", [kj, qi])
                            p[vj, vi] = {prob}
                    for kj, qi in T.grid({bk}, {bq}):
                        with T.sblock("row_sum"):
                            vj, vi = T.axis.remap("RS", [kj, qi])
                            with T.init():
                                lsum[vi] = {zero}
                            lsum[vi] = lsum[vi] + p[vj, vi]
                    for qi in range({bq}):
                        with T.sblock("state_update"):
                            vi = T.axis.remap("S", [qi])
                            alpha[vi] = {exp("m[vi] - mnew[vi]")}
                            lnew[vi] = l[vi] * {exp("m[vi] - mnew[vi]")} + lsum[vi]
                    for z in range(1):
                        with T.sblock("pv_acc"):
                            oblk = T.sblock_alloc_buffer(({bq}, {dv}), "{acc_t}")
                            for qi, kj, dv in T.grid({bq}, {bk}, {dv}):
                                with T.sblock("pv"):
                                    vi, vj, vdv = T.axis.remap("SRS", [qi, kj, dv])
                                    with T.init():
                                        oblk[vi, vdv] = {zero}
                                    oblk[vi, vdv] = oblk[vi, vdv] + p[vj, vi] * {load("v", s.v, [ccol, "vdv"])}
                            for qi, dv in T.grid({bq}, {dv}):
                                with T.sblock("acc_update"):
                                    vi, vdv = T.axis.remap("SS", [qi, dv])
                                    accn[vi, vdv] = acc[vi, vdv] * alpha[vi] + oblk[vi, vdv]
                    for qi, dv in T.grid({bq}, {dv}):
                        with T.sblock("acc_copy"):
                            vi, vdv = T.axis.remap("SS", [qi, dv])
                            acc[vi, vdv] = accn[vi, vdv]
                    for qi in range({bq}):
                        with T.sblock("state_copy"):
                            vi = T.axis.remap("S", [qi])
                            m[vi] = mnew[vi]
                            l[vi] = lnew[vi]
            for qi, dv in T.grid({bq}, {dv}):
                with T.sblock("store"):
                    vi, vdv = T.axis.remap("SS", [qi, dv]){ragged}
                    out[{out_index}] = {out_val}
"""
