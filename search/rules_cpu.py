"""Ansor's CPU sketch rules on TensorIR: inline, write cache, SSRSRS tiling, rfactor.

Each rule is a condition on one block plus an apply step.  Tile sizes are holes
(`ctx.tile` = `sample_perfect_tile`); the defaults given for the deterministic
context are the heuristic choices of the default schedule.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm.s_tir import Schedule

from ..compiler.lower_conv import KEEP_STAGE_ATTR
from .sketch import (
    SCHEDULE_ERRORS, Outcome, Rule, SketchContext, _as_int, _vars_in, analyze, register_rule, stmt_of, unit_stride,
)

MAX_INNER_SPATIAL = 64  # largest innermost spatial tile sampled (4 AVX-512 vectors)
MAX_INNER_REDUCE = 64
# an operand that the register-tile rows all share (a matmul's weight B[k, j]) and that is larger
# than a core's L2 comes from memory in a model: the default keeps every row inside its tile,
# so each block of it is read once (GPT-2's 128x768x3072: 2.3x faster with caches flushed, measured)
STREAMED_OPERAND_BYTES = 1 << 20


# --------------------------------------------------------------------------- inline
EXPENSIVE_CALLS = ("exp", "tanh", "erf", "log", "pow", "sigmoid", "sqrt", "sin", "cos")


def _inline_condition(sch: Schedule, block: str, ctx: SketchContext) -> Outcome:
    """Ansor inlines every strictly inlinable stage; two exceptions are kept as forks where
    not inlining is the default: a conditional (padding) read by a reduction, which would
    put a bounds check in the innermost loop (8x slower conv, 1.5x slower pooling, measured), and transcendental
    math read by several consumers, which inlining would compute several times (softmax's exp).
    """
    info = analyze(sch, block)
    if info.is_reduction or "O" in info.iter_kinds or info.is_output:
        return Outcome.SKIP
    rv = sch.get_sblock(block)
    consumers = sch.get_consumers(rv)
    if not consumers or KEEP_STAGE_ATTR in stmt_of(sch, rv).annotations:
        return Outcome.SKIP  # marked by its lowering: kept, the search computes it at a consumer's loop
    body = stmt_of(sch, rv).body
    if ctx.target.is_gpu:  # GPU rules fold padding into shared-memory fetches
        return Outcome.APPLY_AND_SKIP_REST
    if _calls(body, ("if_then_else",)) and any(analyze(sch, c).is_reduction for c in consumers):
        return Outcome.MAY_APPLY
    if len(consumers) > 1 and _calls(body, EXPENSIVE_CALLS):
        return Outcome.MAY_APPLY
    return Outcome.APPLY_AND_SKIP_REST


def _calls(stmt, names: tuple[str, ...]) -> bool:
    found = []

    def visit(call):
        op = getattr(call.op, "name", "")
        if any(op.endswith("." + n) or op == n for n in names):
            found.append(op)

    tvm_ffi.structural_walk(stmt, (tvm.ir.expr.Call, visit), order="post")
    return bool(found)


def _inline_apply(sch: Schedule, block: str, ctx: SketchContext, variant: str) -> None:
    sch.compute_inline(sch.get_sblock(block))


register_rule(Rule("inline", _inline_condition, _inline_apply, priority=10))


# --------------------------------------------------------------------------- tiling
def _tileable(info) -> bool:
    return info.reuse and info.trivial and info.root_level and set(info.iter_kinds) <= {"S", "R"}


def _fusible_consumer(sch: Schedule, block: str) -> str | None:
    """The single elementwise consumer that can be computed per output tile (bias, relu...)."""
    consumers = sch.get_consumers(sch.get_sblock(block))
    if len(consumers) != 1:
        return None
    info = analyze(sch, consumers[0])
    if info.is_reduction or not info.trivial or not info.root_level:
        return None
    mine = analyze(sch, block)
    if info.spatial_extent != mine.spatial_extent:
        return None
    return info.name


def _write_cache_condition(sch: Schedule, block: str, ctx: SketchContext) -> Outcome:
    info = analyze(sch, block)
    if not _tileable(info) or _fusible_consumer(sch, block) is not None:
        return Outcome.SKIP
    return Outcome.APPLY  # with and without the cache


def _write_cache_apply(sch: Schedule, block: str, ctx: SketchContext, variant: str) -> None:
    # the tile is accumulated in a small buffer and copied out once, fused at the tile level
    sch.cache_write(sch.get_sblock(block), 0, "global")


register_rule(Rule("write_cache", _write_cache_condition, _write_cache_apply, terminal=False, priority=20))


def _mlt_condition(sch: Schedule, block: str, ctx: SketchContext) -> Outcome:
    return Outcome.APPLY_AND_SKIP_REST if _tileable(analyze(sch, block)) else Outcome.SKIP


def _mlt_variants(sch: Schedule, block: str, ctx: SketchContext) -> tuple[str, ...]:
    consumer = _fusible_consumer(sch, block)
    if consumer is None:
        return ("plain",)
    if _is_write_cache(sch, consumer):
        return ("fused",)  # an unfused write cache is only a copy
    return ("fused", "plain")


def _is_write_cache(sch: Schedule, consumer: str) -> bool:
    stmt = stmt_of(sch, sch.get_sblock(consumer))
    return len(stmt.reads) == 1 and stmt.reads[0].source.name.endswith("_global")


def _mlt_apply(sch: Schedule, block: str, ctx: SketchContext, variant: str) -> None:
    """SSRSRS: spatial loops in 4 levels, reductions in 2; the register tile is innermost."""
    rv = sch.get_sblock(block)
    info = analyze(sch, rv)
    _pack_transposed_operands(sch, block, info)
    loops = sch.get_loops(rv)
    defaults = default_tiles(sch, block, ctx)
    levels_s: list[list] = [[], [], [], []]
    levels_r: list[list] = [[], []]
    for loop, kind, extent, default in zip(loops, info.loop_kinds, info.loop_extents, defaults):
        if kind == "S":
            factors = ctx.tile(sch, loop, 4, max_innermost=MAX_INNER_SPATIAL, default=default)
            for level, part in zip(levels_s, sch.split(loop, factors)):
                level.append(part)
        else:
            factors = ctx.tile(sch, loop, 2, max_innermost=MAX_INNER_REDUCE, default=default)
            for level, part in zip(levels_r, sch.split(loop, factors)):
                level.append(part)
    s0, s1, s2, s3 = levels_s
    r0, r1 = levels_r
    sch.reorder(*s0, *s1, *r0, *s2, *r1, *s3)
    if variant == "fused":
        consumer = _fusible_consumer(sch, block)
        if consumer is not None and _iterate_like_producer(sch, block, consumer):
            # computed once per S1 tile, while the tile is in cache
            sch.reverse_compute_at(sch.get_sblock(consumer), s1[-1], preserve_unit_loops=True)


def _iterate_like_producer(sch: Schedule, block: str, consumer: str) -> bool:
    """Make the consumer iterate over the indices at which it reads `block`'s output.

    reverse_compute_at gives the consumer the bounding box of the tile's output, in the
    consumer's own iteration space, and does not check that the box reads only the tile: a blocked
    matmul's output read as C[i, j // 16, j % 16] by a 1-D-column epilogue spans more columns than a
    tile that splits the 16 lanes, so it read columns no tile had computed yet (half of the fused
    dense candidates gave wrong results; the runner's check rejected them).  Remapping the
    consumer's iteration to (i, j // 16, j % 16) makes the box exactly the tile.  False when the
    read is not a one-to-one map (then the consumer is not fused).
    """
    rv = sch.get_sblock(consumer)
    stmt = stmt_of(sch, rv)
    produced = stmt_of(sch, sch.get_sblock(block)).writes[0].source
    reads = [r for r in stmt.reads if r.source.same_as(produced)]
    if len(reads) != 1 or any(_as_int(r.extent) != 1 for r in reads[0].region):
        return False
    indices = [r.min for r in reads[0].region]
    ivars = [iv.var for iv in stmt.iter_vars]
    if len(indices) == len(ivars) and all(i.same_as(v) for i, v in zip(indices, ivars)):
        return True
    try:
        sch.transform_block_layout(rv, tvm.tirx.IndexMap(ivars, indices, None))
    except SCHEDULE_ERRORS:  # not one-to-one (a broadcast read)
        return False
    return True


register_rule(Rule("multi_level_tiling_cpu", _mlt_condition, _mlt_apply, variants=_mlt_variants, priority=30))


def _pack_transposed_operands(sch: Schedule, block: str, info) -> None:
    """Copy an operand whose last dimension runs along the reduction but which is indexed by
    the vectorized axis elsewhere (dense's W[j, k], batch matmul's B[b, j, k]) into a buffer
    with that axis last, so the innermost loop reads contiguous vectors instead of gathers."""
    spatial = [i for i, (k, e) in enumerate(zip(info.iter_kinds, info.extents)) if k == "S" and e > 1]
    if not spatial:
        return
    stmt = stmt_of(sch, sch.get_sblock(block))
    vec_var = stmt.iter_vars[spatial[-1]].var
    reduce_vars = [iv.var for iv, k in zip(stmt.iter_vars, info.iter_kinds) if k == "R"]
    for index, region in enumerate(stmt.reads):
        dims = [_vars_in(rng.min) for rng in region.region]
        if len(dims) < 2 or not dims[-1] or not all(any(v.same_as(r) for r in reduce_vars) for v in dims[-1]):
            continue
        moved = [d for d, used in enumerate(dims[:-1]) if len(used) == 1 and any(vec_var.same_as(v) for v in used)]
        every = set().union(*dims)
        reused = any(not any(stmt.iter_vars[i].var.same_as(v) for v in every) for i in spatial)
        if len(moved) != 1 or not reused:  # without reuse (GEMV) the copy costs as much as the product
            continue
        d = moved[0]
        cache = sch.cache_read(sch.get_sblock(block), index, "global")
        sch.transform_layout(cache, ("write", 0), lambda *idx: (*idx[:d], *idx[d + 1 :], idx[d]))
        return  # one operand at most: the other is the broadcast one


def default_tiles(sch: Schedule, block: str, ctx: SketchContext) -> list[list[int]]:
    """Heuristic SSRSRS factors, one list per loop (4 for spatial, 2 for reduction).

    Innermost: the last spatial axis gets a vector-width tile (it is contiguous in the
    output), the spatial axis that the vectorized read does not use gets a register tile
    of up to 8 rows (matmul's i, conv's output channel); small reduction axes (kernel
    windows) go inside, so the register tile accumulates over them.
    """
    info = analyze(sch, block)
    spatial = [i for i, k in enumerate(info.loop_kinds) if k == "S"]
    vec_axis = next((i for i in reversed(spatial) if info.loop_extents[i] > 1), None)
    reg_axis = _register_axis(sch, block, info, vec_axis)
    rows_inside = reg_axis is not None and _shared_operand_bytes(sch, block, reg_axis) > STREAMED_OPERAND_BYTES
    out = []
    for i, (kind, extent) in enumerate(zip(info.loop_kinds, info.loop_extents)):
        if kind != "S":
            inner = extent if extent <= 7 else _largest_divisor(extent, 4)
            out.append([extent // inner, inner])
            continue
        inner = 1
        if i == vec_axis:
            inner = _vector_tile(extent, ctx.lanes)
        elif i == reg_axis:
            inner = _largest_divisor(extent, 8)
        rest = extent // inner
        if i == reg_axis and rows_inside:
            out.append([1, 1, rest, inner])
            continue
        mid = _largest_divisor(rest, 4) if i == vec_axis else 1
        out.append([rest // mid, mid, 1, inner])
    # keep enough outer (parallel) iterations for the cores: move S1 back into S0
    outer = _prod(f[0] * f[1] for f, k in zip(out, info.loop_kinds) if k == "S")
    if outer < 4 * ctx.cores:
        out = [[f[0] * f[1], 1, f[2], f[3]] if k == "S" else f for f, k in zip(out, info.loop_kinds)]
    return out


def _register_axis(sch: Schedule, block: str, info, vec_axis: int | None) -> int | None:
    """The spatial axis along which the vectorized operand is reused (not in its indices); of
    several, the innermost: a conv's output width rather than its height, whose rows are far
    apart in the input (ResNet-18's default schedules, sum of kernels: NCHWc 34 -> 23 ms,
    NCHW 27 -> 24 ms)."""
    if vec_axis is None:
        return None
    stmt = stmt_of(sch, sch.get_sblock(block))
    ivars = [iv.var for iv in stmt.iter_vars]
    vec_var = ivars[vec_axis]
    for region in stmt.reads:
        used = set()
        for rng in region.region:
            used |= _vars_in(rng.min)
        if not any(vec_var.same_as(u) for u in used):
            continue
        for i in reversed(range(len(ivars))):
            if i != vec_axis and info.iter_kinds[i] == "S" and info.extents[i] > 1 and not any(
                ivars[i].same_as(u) for u in used
            ):
                return i
    return None


def _shared_operand_bytes(sch: Schedule, block: str, axis: int) -> int:
    """Bytes of the largest operand whose indices do not use spatial axis `axis`."""
    stmt = stmt_of(sch, sch.get_sblock(block))
    var = stmt.iter_vars[axis].var
    largest = 0
    for region in stmt.reads:
        if any(any(var.same_as(u) for u in _vars_in(rng.min)) for rng in region.region):
            continue
        buf = region.source if hasattr(region, "source") else region.buffer
        size = _prod(int(d) for d in buf.shape) * tvm.runtime.DataType(str(buf.dtype)).bits // 8
        largest = max(largest, size)
    return largest


def _vector_tile(extent: int, lanes: int) -> int:
    """A multiple of the vector width up to two vectors if one divides, else the largest divisor <= lanes."""
    for f in (2 * lanes, lanes):
        if extent % f == 0:
            return f
    return _largest_divisor(extent, lanes)


def _largest_divisor(n: int, limit: int) -> int:
    for f in range(min(n, limit), 0, -1):
        if n % f == 0:
            return f
    return 1


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


# --------------------------------------------------------------------------- rfactor
RFACTOR_MIN_REDUCE = 64  # shorter reductions are not worth a second stage


def _rfactor_condition(sch: Schedule, block: str, ctx: SketchContext) -> Outcome:
    info = analyze(sch, block)
    if not info.is_reduction or info.reuse or not info.trivial or not info.root_level:
        return Outcome.SKIP
    if info.loop_kinds.count("R") != 1 or info.loop_kinds[-1] != "R":
        return Outcome.SKIP
    if info.reduce_extent < RFACTOR_MIN_REDUCE:
        return Outcome.SKIP
    if info.spatial_extent < 16 * ctx.cores or _contiguous_reduction(sch, block):
        return Outcome.APPLY  # with and without rfactor
    return Outcome.SKIP


def _rfactor_variants(sch: Schedule, block: str, ctx: SketchContext) -> tuple[str, ...]:
    """Few rows: split a row over the cores (outer) or over vector lanes (inner).  Many rows are
    parallel already; lanes still vectorize a contiguous row (layer norm 128x256: 7x faster, measured)."""
    return ("inner", "outer") if analyze(sch, block).spatial_extent < 16 * ctx.cores else ("inner",)


def _contiguous_reduction(sch: Schedule, block: str) -> bool:
    stmt = stmt_of(sch, sch.get_sblock(block))
    rvar = next(iv.var for iv in stmt.iter_vars if int(iv.iter_type) == 2)
    return any(region.region and unit_stride(region.region[-1].min, rvar) for region in stmt.reads)


def _rfactor_apply(sch: Schedule, block: str, ctx: SketchContext, variant: str) -> None:
    """inner: partial sums across a vector of lanes (vectorizable); outer: across chunks (parallel)."""
    rv = sch.get_sblock(block)
    loop = sch.get_loops(rv)[-1]
    extent = analyze(sch, rv).loop_extents[-1]
    if variant == "inner":
        inner = _largest_divisor(extent, ctx.lanes)
        default = [extent // inner, inner]
    else:
        chunks = _largest_divisor(extent, 8 * ctx.cores)
        default = [chunks, extent // chunks]
    outer_loop, inner_loop = sch.split(loop, ctx.tile(sch, loop, 2, max_innermost=MAX_INNER_REDUCE, default=default))
    sch.rfactor(inner_loop if variant == "inner" else outer_loop, factor_axis=0)


register_rule(Rule("rfactor", _rfactor_condition, _rfactor_apply, variants=_rfactor_variants, priority=40))
