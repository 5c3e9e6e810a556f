"""Schedules for fused conv bottlenecks (`compiler/fusion_bottleneck.py`).

The kernel is the chain's convs + epilogues in one PrimFunc (`lower_body`): per stage a
(pad) -> conv -> bias / act blocks, the last stage ending in the output block (residual
add).  The rules tile the LAST conv's output spatially and compute every earlier stage
under that spatial tile, so each intermediate is produced only for the tile plus its halo
(TVM's region inference sizes it; after lowering, `CompactBufferAllocation` shrinks the
buffer to the tile) and stays in cache / on chip:

  bottleneck_cpu    loops  n, y0, x0 (fused, parallel) | o0 y1 | rc ry rx | o1 y2 x1
                    (o1 x y2 accumulator rows of one vector x1 in registers); every
                    intermediate stage computed at x0, its conv with 8 channels x 2 rows of
                    a vectorized row in registers; the output epilogue at y1.  The default x
                    tile keeps each intermediate row, halo included, within one vector.
                    Holes: the y (3 levels), x and o tiles of the last conv, the unroll depth.
  bottleneck_gpu    blockIdx = (n, y0, x0) spatial tiles, threadIdx = the tile's output
                    elements; the intermediate stages computed at the block loop in shared
                    memory, their loops bound to the same threads.  The default is the
                    largest tile whose intermediates fit the shared memory; chains too wide
                    for any tile (hundreds of channels) raise, and the build falls back.
  bottleneck_inner  claims every other block (no-op) so the generic rules leave them alone.

Epilogue blocks are inlined first: bias / clip of a stage into the next stage's pad (or
into the block the next 1x1 conv reads), so one intermediate buffer remains per stage.
`default_bottleneck_schedule(task, target)` is the deterministic schedule.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import Schedule, ScheduleError
from tvm.sym.pattern import detect_linear_equation

from ..targets.base import GPU_DEFAULT_LIMITS, Target
from .sketch import (
    SCHEDULE_ERRORS,
    Outcome,
    SketchContext,
    analyze,
    block_names,
    pattern_default_schedule,
    register_pattern_rules,
    stmt_of,
)

FUNC_ATTR = "tilecraft.bottleneck"  # set on the fused PrimFunc by compiler/lower.py
UNROLL_STEPS = (0, 16, 64)
MAX_VECTOR_X = 16


def is_bottleneck(sch: Schedule) -> bool:
    attrs = sch.mod["main"].attrs
    return attrs is not None and FUNC_ATTR in attrs


def _extent(sch: Schedule, loop) -> int:
    return int(stmt_of(sch, loop).extent)


def _divisor(n: int, limit: int) -> int:
    return next(f for f in range(min(n, limit), 0, -1) if n % f == 0)


def _is_reduction(sch: Schedule, name: str) -> bool:
    return stmt_of(sch, sch.get_sblock(name)).init is not None


def _inline_epilogues(sch: Schedule) -> None:
    """Inline every elementwise block whose readers are all non-reductions (bias into clip,
    clip into the next pad); what is left: per stage the block the next conv reads."""
    for name in block_names(sch):
        block = sch.get_sblock(name)
        if _is_reduction(sch, name) or analyze(sch, block).is_output:
            continue
        consumers = sch.get_consumers(block)
        if not consumers or any(stmt_of(sch, c).init is not None for c in consumers):
            continue
        try:
            sch.compute_inline(block)
        except SCHEDULE_ERRORS:
            continue


def _structure(sch: Schedule) -> tuple[list[str], str]:
    """(blocks in program order after inlining, the output block)."""
    names = block_names(sch)
    output = next(n for n in reversed(names) if analyze(sch, sch.get_sblock(n)).is_output)
    return names, output


class NotABottleneck(ScheduleError):
    """The kernel does not have the (pad) conv ... conv structure these rules expect."""


def _conv_loops(sch: Schedule, conv):
    """The conv's 7 loops n, o, y, x, rc, ry, rx (as create_prim_func made them)."""
    loops = sch.get_loops(conv)
    if len(loops) != 7:
        raise NotABottleneck("bottleneck: expected a 7-loop conv")
    return loops


# --------------------------------------------------------------------------- CPU
STAGE_REGISTER_CHANNELS = 8  # an intermediate conv accumulates this many channels x a row in registers


def schedule_bottleneck_cpu(sch: Schedule, ctx: SketchContext) -> None:
    _inline_epilogues(sch)
    names, output = _structure(sch)
    convs = [n for n in names if _is_reduction(sch, n)]
    last = sch.get_sblock(convs[-1])
    n, o, y, x, rc, ry, rx = _conv_loops(sch, last)
    ho, wo, co = _extent(sch, y), _extent(sch, x), _extent(sch, o)
    # x: tile = one vector row; y: spatial tile (the intermediate's) / register rows
    xv = _x_tile(sch, convs, wo, min(MAX_VECTOR_X, ctx.lanes))
    x0, x1 = sch.split(x, ctx.tile(sch, x, 2, max_innermost=MAX_VECTOR_X, default=[wo // xv, xv]))
    yr = _divisor(ho, 2)
    tiles_x = wo // xv
    # rows per spatial tile: a multiple of the register rows, about 64 outputs, enough tiles for the cores
    fits = [t for t in range(yr, ho + 1, yr) if ho % t == 0 and t <= max(yr, 64 // xv)]
    busy = [t for t in fits if (ho // t) * tiles_x >= 4 * ctx.cores]
    yt = max(busy or [min(fits)])
    y0, y1, y2 = sch.split(y, ctx.tile(sch, y, 3, max_innermost=4, default=[ho // yt, yt // yr, yr]))
    orr = _divisor(co, 4)
    o0, o1 = sch.split(o, ctx.tile(sch, o, 2, max_innermost=8, default=[co // orr, orr]))
    sch.reorder(n, y0, x0, o0, y1, rc, ry, rx, o1, y2, x1)
    if output != convs[-1]:
        sch.reverse_compute_at(sch.get_sblock(output), y1, preserve_unit_loops=True)
        _vectorize_inner(sch, sch.get_sblock(output))
    # every earlier block, consumers first, computed per spatial tile (with its halo)
    for name in reversed(names[: names.index(convs[-1])]):
        block = sch.get_sblock(name)
        sch.compute_at(block, x0, preserve_unit_loops=True)
        if _is_reduction(sch, name):
            _order_stage_conv(sch, block)
        else:
            _vectorize_inner(sch, block)
    sch.vectorize(x1)
    sch.unroll(y2)
    sch.unroll(o1)
    outer = sch.fuse(n, y0, x0)
    sch.parallel(outer)
    step = ctx.choose(sch, UNROLL_STEPS, default_index=1)
    sch.annotate(outer, "pragma_auto_unroll_max_step", step)
    sch.annotate(outer, "pragma_unroll_explicit", 1)


def _x_tile(sch: Schedule, convs: list[str], width: int, lanes: int) -> int:
    """The widest output x tile (a divisor of the width, at most one vector) for which every
    intermediate row, halo included, still fits one vector: stride s, kernel k turn a row of
    w outputs into s (w - 1) + k inputs.  Strided chains get narrower tiles."""
    steps = [_stride_kernel(sch, c) for c in convs[1:]]
    for t in range(min(width, lanes), 0, -1):
        if width % t:
            continue
        w, fits = t, True
        for stride, kernel in reversed(steps):
            w = stride * (w - 1) + kernel
            fits = fits and w <= lanes
        if fits:
            return t
    return _divisor(width, lanes)


def _stride_kernel(sch: Schedule, conv: str) -> tuple[int, int]:
    stmt = stmt_of(sch, sch.get_sblock(conv))
    x_var, rx = stmt.iter_vars[3].var, stmt.iter_vars[6]
    stride = 1
    for region in stmt.reads:
        if len(region.region) == 4:
            coeffs = detect_linear_equation(region.region[-1].min, [x_var])
            if len(coeffs) == 2 and isinstance(coeffs[0], tvm.tirx.IntImm):
                stride = max(stride, int(coeffs[0]))
    return stride, int(rx.dom.extent)


def _order_stage_conv(sch: Schedule, conv) -> None:
    """An intermediate conv under the tile loop: a few channels x one row accumulate in registers
    (reductions outside them), the row vectorized."""
    loops = sch.get_loops(conv)
    n, o, y, x, rc, ry, rx = loops[-7:]
    channels = _extent(sch, o)
    if _extent(sch, rc) > 1 and channels % STAGE_REGISTER_CHANNELS == 0:
        oo, oi = sch.split(o, [None, STAGE_REGISTER_CHANNELS])
        rows = _extent(sch, y)
        if rows % 2 == 0:  # two rows share each weight broadcast: 2 x channels accumulators
            yo, yi = sch.split(y, [None, 2])
            sch.reorder(n, oo, yo, rc, ry, rx, oi, yi, x)
            sch.unroll(yi)
        else:
            sch.reorder(n, oo, y, rc, ry, rx, oi, x)
        sch.unroll(oi)
    else:  # depthwise: each channel reduces over its own window only
        sch.reorder(n, o, y, rc, ry, rx, x)
    if _extent(sch, x) > 1:  # strided (stride-2 depthwise) rows too: measured as fast as scalar code
        sch.vectorize(x)


def _vectorize_inner(sch: Schedule, block) -> None:
    inner = sch.get_loops(block)[-1]
    if _extent(sch, inner) > 1:
        sch.vectorize(inner)


# --------------------------------------------------------------------------- GPU
class GpuTooLarge(ScheduleError):
    """The tile's intermediates do not fit the block's shared memory, or too many threads."""


def schedule_bottleneck_gpu(sch: Schedule, ctx: SketchContext) -> None:
    _inline_epilogues(sch)
    if not ctx.deterministic:
        _gpu_tiled(sch, ctx, None)
        return
    names, _ = _structure(sch)
    convs = [n for n in names if _is_reduction(sch, n)]
    n, o, y, x = _conv_loops(sch, sch.get_sblock(convs[-1]))[:4]
    ho, wo, co = _extent(sch, y), _extent(sch, x), _extent(sch, o)
    # the default: the largest tile (x first: coalesced rows) whose intermediates fit shared memory
    for xt in [t for t in range(min(wo, 16), 0, -1) if wo % t == 0]:
        for yt in [t for t in range(min(ho, 8), 0, -1) if ho % t == 0]:
            ot = _divisor(co, max(1, 256 // (xt * yt)))
            trial = sch.copy()
            try:
                _gpu_tiled(trial, ctx, (yt, xt, ot))
            except GpuTooLarge:
                continue
            _gpu_tiled(sch, ctx, (yt, xt, ot))
            return
    raise GpuTooLarge("bottleneck: no spatial tile fits the shared memory")


def _gpu_tiled(sch: Schedule, ctx: SketchContext, tiles) -> None:
    """blockIdx = (n, y0, x0), threadIdx = (o1, y1, x1); tiles = (y, x, o) inner sizes or None: sampled."""
    limits = {**GPU_DEFAULT_LIMITS, **dict(ctx.target.limits)}
    names, output = _structure(sch)
    convs = [n for n in names if _is_reduction(sch, n)]
    last = sch.get_sblock(convs[-1])
    n, o, y, x, rc, ry, rx = _conv_loops(sch, last)
    ho, wo, co = _extent(sch, y), _extent(sch, x), _extent(sch, o)
    if tiles is None:
        y_t = ctx.tile(sch, y, 2, max_innermost=8, default=[ho, 1])
        x_t = ctx.tile(sch, x, 2, max_innermost=16, default=[wo, 1])
        o_t = ctx.tile(sch, o, 2, max_innermost=64, default=[co, 1])
    else:
        yt, xt, ot = tiles
        y_t, x_t, o_t = [ho // yt, yt], [wo // xt, xt], [co // ot, ot]
    y0, y1 = sch.split(y, y_t)
    x0, x1 = sch.split(x, x_t)
    o0, o1 = sch.split(o, o_t)
    sch.reorder(n, y0, x0, o0, o1, y1, x1, rc, ry, rx)
    bx = sch.fuse(n, y0, x0)
    tx = sch.fuse(o1, y1, x1)
    threads = _extent(sch, tx)
    if threads > int(limits["max_threads_per_block"]):
        raise GpuTooLarge(f"{threads} threads")
    if output != convs[-1]:
        sch.reverse_compute_at(sch.get_sblock(output), tx)
        sch.set_scope(last, 0, "local")  # each thread accumulates its own output element
    shared = 0
    for name in reversed(names[: names.index(convs[-1])]):
        block = sch.get_sblock(name)
        sch.compute_at(block, bx, preserve_unit_loops=True)
        own = sch.get_loops(block)[1:]
        kinds = analyze(sch, block).loop_kinds[1:]
        spatial = [lp for lp, k in zip(own, kinds) if k == "S"]
        elements = 1
        for lp in spatial:
            elements *= _extent(sch, lp)
        shared += 4 * elements
        if shared > int(limits["max_shared_memory_per_block"]):
            raise GpuTooLarge(f"{shared} bytes of shared memory")
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        _, t = sch.split(fused, [None, threads])
        sch.bind(t, "threadIdx.x")
        sch.set_scope(block, 0, "shared")  # the tile (+ halo) of every intermediate, shared by the block
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    step = ctx.choose(sch, UNROLL_STEPS, default_index=1)
    sch.annotate(bx, "pragma_auto_unroll_max_step", step)
    sch.annotate(bx, "pragma_unroll_explicit", 1)


# --------------------------------------------------------------------------- rules
def _main_condition(gpu: bool):
    def condition(sch: Schedule, block: str, ctx: SketchContext) -> Outcome:
        if not is_bottleneck(sch) or ctx.target.is_gpu != gpu or not analyze(sch, sch.get_sblock(block)).is_output:
            return Outcome.SKIP
        return Outcome.APPLY_AND_SKIP_REST

    return condition


def _inner_condition(sch: Schedule, block: str, ctx: SketchContext) -> Outcome:
    if not is_bottleneck(sch) or analyze(sch, sch.get_sblock(block)).is_output:
        return Outcome.SKIP
    return Outcome.APPLY_AND_SKIP_REST


BOTTLENECK_RULES = register_pattern_rules("bottleneck", _main_condition, _inner_condition, cpu=schedule_bottleneck_cpu, gpu=schedule_bottleneck_gpu)


def default_bottleneck_schedule(task, target: Target) -> Schedule:
    """The deterministic schedule of a bottleneck task (the rule with its default decisions)."""
    return pattern_default_schedule(task, target, cpu=schedule_bottleneck_cpu, gpu=schedule_bottleneck_gpu)
