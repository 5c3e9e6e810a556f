"""Ansor's GPU sketch rules on TensorIR: SSSRRSRS tiling, shared caches, cross-thread reduction.

Rules (selected by `target.rules`, see GPU_RULES):
  multi_level_tiling_gpu  blocks with data reuse (matmul, batch matmul, conv): spatial loops in
                          5 levels (blockIdx, vthread, threadIdx, 2 register levels), reductions in
                          3; a local write cache with the elementwise epilogue inlined into it at the
                          thread level; shared read caches fetched cooperatively ("shared" variant).
  cross_thread_reduction  row reductions (softmax, layer norm, reduce): threads reduce one row
                          together.  On the consumer of the reductions ("group": one kernel per row
                          group) or on a reduction alone ("single").
  thread_bind             annotation pass: every loop nest still unbound is fused and split over
                          blockIdx.x/threadIdx.x (elementwise, pools, small reductions); auto-unroll.

Two invariants keep candidates correct when the search mutates their decisions:
  * every threadIdx.x binding of one kernel derives from the same ExprRVs (TVM silently emits a
    wrong kernel for two different threadIdx.x extents), so extents are never Python literals
    computed from a decision;
  * tile sizes are sampled jointly in Python (seeded from the schedule) and passed to
    `sample_perfect_tile(decision=...)`, so the trace records them and every sample already
    respects the thread/vthread limits; shared memory is checked right after the caches exist.
A candidate over the limits raises GpuLimitError (a ScheduleError): the sampler drops it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tvm.s_tir import Schedule, ScheduleError
from tvm.tirx import For, ForKind

from ..targets.base import GPU_DEFAULT_LIMITS
from .sketch import (
    SCHEDULE_ERRORS,
    AnnotationRule,
    BlockInfo,
    Outcome,
    Rule,
    SketchContext,
    analyze,
    block_names,
    register_rule,
)

GPU_RULES = ("inline", "multi_level_tiling_gpu", "cross_thread_reduction", "thread_bind")
THREAD_CHOICES = (32, 64, 128, 256, 512, 1024)
UNROLL_STEPS = (0, 16, 64, 512, 1024)
VECTOR_CHOICES = (1, 2, 4)  # cooperative-fetch vector length (float4 at most)
MAX_INNER = 64  # largest innermost tile (spatial and reduction)
MAX_REGISTERS = 64  # accumulators per thread (vthread x both register levels)
MAX_REDUCE_TILE = 64  # reduction elements per shared-memory stage
CTR_MIN_REDUCE = 32  # shorter row reductions stay serial inside one thread
SAMPLE_TRIES = 64  # joint tile draws per attempt (cheap, pure Python)
TILE_ATTEMPTS = 6  # tilings tried on a schedule copy before the variant is given up


class GpuRuleError(ScheduleError):
    """A GPU rule does not apply here; sketch generation and sampling drop the state."""


class GpuLimitError(GpuRuleError):
    """A sampled GPU candidate exceeds the target's threads / vthreads / shared memory."""


@dataclass(frozen=True)
class GpuLimits:
    max_threads: int
    max_shared_bytes: int
    max_vthread: int

    @staticmethod
    def of(ctx: SketchContext) -> "GpuLimits":
        lim = {**GPU_DEFAULT_LIMITS, **dict(ctx.target.limits)}
        return GpuLimits(int(lim["max_threads_per_block"]), int(lim["max_shared_memory_per_block"]), int(lim["max_vthread"]))


# --------------------------------------------------------------------------- small helpers
def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _largest_divisor(n: int, limit: int) -> int:
    for f in range(max(1, min(n, limit)), 0, -1):
        if n % f == 0:
            return f
    return 1


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out + ([n] if n > 1 else [])


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _thread_choices(limits: GpuLimits, extent: int) -> list[int]:
    """Thread counts worth trying for `extent` work items (at least one warp)."""
    cap = max(THREAD_CHOICES[0], _next_pow2(extent))
    return [t for t in THREAD_CHOICES if t <= min(cap, limits.max_threads)] or [min(THREAD_CHOICES[0], limits.max_threads)]


def _choose_threads(sch: Schedule, ctx: SketchContext, extent: int, *, preferred: int = 256):
    choices = _thread_choices(GpuLimits.of(ctx), extent)
    target = min(preferred, max(32, _next_pow2(extent)))
    default = max((i for i, t in enumerate(choices) if t <= target), default=0)
    return ctx.choose(sch, choices, default_index=default)


def _is_bound(sch: Schedule, loop) -> bool:
    return sch.get(loop).kind == ForKind.THREAD_BINDING


def _buffer(region):
    """The buffer of a block's read/write region (TVM 0.27 calls it `source`)."""
    return region.source if hasattr(region, "source") else region.buffer


def _rng(sch: Schedule) -> random.Random:
    # seeded from the schedule's own random state, so a seed reproduces the candidate
    return random.Random(int(sch.fork_seed()))


# --------------------------------------------------------------------------- tile sizes
def _random_split(rng: random.Random, extent: int, n: int, max_inner: int) -> list[int]:
    """A random perfect tiling of `extent` into n factors, innermost <= max_inner."""
    parts = [1] * n
    for p in _prime_factors(extent):
        parts[rng.randrange(n)] *= p
    while parts[-1] > max_inner:
        p = _prime_factors(parts[-1])[0]
        parts[-1] //= p
        parts[0] *= p
    return parts


def _tiles_ok(spatial: list[list[int]], reduce: list[list[int]], limits: GpuLimits, min_threads: int) -> bool:
    threads = _prod(f[2] for f in spatial)
    registers = _prod(f[1] * f[3] * f[4] for f in spatial)
    return (
        min_threads <= threads <= limits.max_threads
        and _prod(f[1] for f in spatial) <= limits.max_vthread
        and registers <= MAX_REGISTERS
        and _prod(f[1] * f[2] for f in reduce) <= MAX_REDUCE_TILE
    )


def sample_gpu_tiles(rng: random.Random, spatial: list[int], reduce: list[int], limits: GpuLimits):
    """Joint random tiles: 5 factors per spatial loop, 3 per reduction loop, within the limits."""
    min_threads = min(32, _prod(spatial))
    for _ in range(SAMPLE_TRIES):
        s = [_random_split(rng, e, 5, MAX_INNER) for e in spatial]
        r = [_random_split(rng, e, 3, MAX_INNER) for e in reduce]
        if _tiles_ok(s, r, limits, min_threads):
            return s, r
    return default_gpu_tiles(spatial, reduce, limits)


def default_gpu_tiles(spatial: list[int], reduce: list[int], limits: GpuLimits, *, shrink: int = 0):
    """Heuristic tiles: register tiles and warps on the innermost (contiguous) output axes,
    fewer threads and registers for small outputs so there are enough thread blocks.
    `shrink` > 0 halves the block and the reduction stage that many times (shared memory)."""
    total = _prod(spatial)
    regs, block = (16, 256) if total >= 1 << 19 else (4, 128) if total >= 1 << 15 else (1, 64)
    regs, block = max(1, regs >> (2 * shrink)), max(32, min(block, limits.max_threads) >> shrink)
    s = [[e, 1, 1, 1, 1] for e in spatial]
    for i in reversed(range(len(spatial))):
        e = spatial[i]
        inner = _largest_divisor(e, min(4, regs))
        regs //= inner
        threads = _largest_divisor(e // inner, min(block, 32))
        block = max(1, block // threads)
        s[i] = [e // inner // threads, 1, threads, 1, inner]
    stage = max(1, 8 >> shrink)
    r = []
    for e in reduce:
        if e <= 7 and shrink == 0:  # kernel windows: the whole window per shared-memory stage
            r.append([1, e, 1])
        else:
            k = _largest_divisor(e, stage)
            r.append([e // k, k, 1])
    while _prod(f[1] for f in r) > MAX_REDUCE_TILE:  # many window axes: shrink the largest stage
        i = max(range(len(r)), key=lambda j: r[j][1])
        p = _prime_factors(r[i][1])[0]
        r[i] = [r[i][0] * p, r[i][1] // p, 1]
    return s, r


# --------------------------------------------------------------------------- multi-level tiling
def _tileable(info: BlockInfo) -> bool:
    return info.reuse and info.trivial and info.root_level and set(info.iter_kinds) <= {"S", "R"}


def _epilogue(sch: Schedule, block: str) -> str | None:
    """The single elementwise consumer that reads the block's output at the same indices."""
    rv = sch.get_sblock(block)
    consumers = sch.get_consumers(rv)
    if len(consumers) != 1:
        return None
    info = analyze(sch, consumers[0])
    mine = analyze(sch, rv)
    if info.is_reduction or not info.trivial or not info.root_level or info.spatial_extent != mine.spatial_extent:
        return None
    return info.name


def _mlt_condition(sch: Schedule, block: str, ctx: SketchContext) -> Outcome:
    return Outcome.APPLY_AND_SKIP_REST if _tileable(analyze(sch, block)) else Outcome.SKIP


def _mlt_variants(sch: Schedule, block: str, ctx: SketchContext) -> tuple[str, ...]:
    return ("shared", "direct")  # direct: operands read from global memory (depthwise, tiny K)


def _mlt_apply(sch: Schedule, block: str, ctx: SketchContext, variant: str) -> None:
    """Tiles that fit the limits, found by trying them on a copy (only the fit is recorded)."""
    limits = GpuLimits.of(ctx)
    info = analyze(sch, block)
    spatial = [e for k, e in zip(info.loop_kinds, info.loop_extents) if k == "S"]
    reduce = [e for k, e in zip(info.loop_kinds, info.loop_extents) if k == "R"]
    rng = None if ctx.deterministic else _rng(sch)
    for attempt in range(TILE_ATTEMPTS):
        if rng is None:
            tiles = default_gpu_tiles(spatial, reduce, limits, shrink=attempt)
        else:
            tiles = sample_gpu_tiles(rng, spatial, reduce, limits)
        try:
            _tile_block(sch.copy(), block, ctx, variant, tiles, limits)
        except GpuLimitError:
            continue
        _tile_block(sch, block, ctx, variant, tiles, limits)
        return
    raise GpuLimitError(f"no tiling of {block} tried fits the target's shared memory")


def _tile_block(sch: Schedule, block: str, ctx: SketchContext, variant: str, tiles, limits: GpuLimits) -> None:
    """SSSRRSRS: blockIdx, vthread, threadIdx | R0 R1 | S3 | R2 | S4 (registers)."""
    rv = sch.get_sblock(block)
    info = analyze(sch, rv)
    inputs = list(dict.fromkeys(_buffer(r).name for r in sch.get(rv).reads))
    epilogue = _epilogue(sch, block)
    write_back = sch.cache_write(rv, 0, "local")
    if epilogue is not None and _can_reverse_inline(sch, epilogue):
        sch.reverse_compute_inline(sch.get_sblock(epilogue))  # bias/relu applied on the way out
    s_levels: list[list] = [[] for _ in range(5)]
    r_levels: list[list] = [[] for _ in range(3)]
    thread_rvs = []
    s_iter, r_iter = iter(tiles[0]), iter(tiles[1])
    for loop, kind in zip(sch.get_loops(rv), info.loop_kinds):
        decision, levels = (next(s_iter), s_levels) if kind == "S" else (next(r_iter), r_levels)
        factors = sch.sample_perfect_tile(loop, n=len(decision), max_innermost_factor=MAX_INNER, decision=decision)
        if kind == "S":
            thread_rvs.append(factors[2])
        for level, part in zip(levels, sch.split(loop, factors)):
            level.append(part)
    s0, s1, s2, s3, s4 = s_levels
    r0, r1, r2 = r_levels
    sch.reorder(*s0, *s1, *s2, *r0, *r1, *s3, *r2, *s4)
    threads = _prod(sch.get(f) for f in thread_rvs)
    if threads > limits.max_threads:
        raise GpuLimitError(f"{threads} threads per block > {limits.max_threads}")
    sch.bind(sch.fuse(*s0), "blockIdx.x")
    sch.bind(sch.fuse(*s1), "vthread.x")
    tx = sch.fuse(*s2)
    sch.bind(tx, "threadIdx.x")
    sch.reverse_compute_at(write_back, tx, preserve_unit_loops=True)  # loop count independent of the tiles
    if variant == "shared" and r0:
        _shared_caches(sch, rv, inputs, r0[-1], thread_rvs, ctx, limits)


def _can_reverse_inline(sch: Schedule, block: str) -> bool:
    probe = sch.copy()
    try:
        probe.reverse_compute_inline(probe.get_sblock(block))
    except SCHEDULE_ERRORS:
        return False
    return True


def _shared_caches(sch: Schedule, rv, inputs: list[str], at_loop, thread_rvs: list, ctx: SketchContext, limits: GpuLimits) -> None:
    """Each operand staged in shared memory per R0 step, loaded by all threads of the block."""
    at = sch.get(at_loop)
    depth = next(i for i, lp in enumerate(sch.get_loops(rv)) if sch.get(lp).same_as(at)) + 1
    caches, total = [], 0
    for name in inputs:
        cache = sch.cache_read(rv, name, "shared")
        sch.compute_at(cache, at_loop, preserve_unit_loops=True)  # one loop per dim, whatever the tiles
        own = sch.get_loops(cache)[depth:]
        total += _prod(sch.get(lp).extent for lp in own) * _buffer(sch.get(cache).writes[0]).dtype.bits // 8
        caches.append(cache)
    if total > limits.max_shared_bytes:
        raise GpuLimitError(f"{total} bytes of shared memory > {limits.max_shared_bytes}")
    for cache in caches:
        own = sch.get_loops(cache)[depth:]
        fused = sch.fuse(*own) if len(own) > 1 else own[0]
        vec = ctx.choose(sch, VECTOR_CHOICES, default_index=0)  # float4 loads need alignment: 1 by default
        parts = sch.split(fused, [None, *thread_rvs, vec])
        thread_part = sch.fuse(*parts[1:-1]) if len(parts) > 3 else parts[1]
        sch.bind(thread_part, "threadIdx.x")  # same ExprRVs as the compute's threadIdx.x
        sch.vectorize(parts[-1])


register_rule(Rule("multi_level_tiling_gpu", _mlt_condition, _mlt_apply, variants=_mlt_variants))


# --------------------------------------------------------------------------- cross-thread reduction
def _row_reduction(info: BlockInfo) -> bool:
    spatial_then_reduce = "R" not in "".join(info.loop_kinds).rstrip("R")
    return (
        info.is_reduction and not info.reuse and info.trivial and info.root_level and spatial_then_reduce
        and set(info.iter_kinds) <= {"S", "R"} and info.reduce_extent >= CTR_MIN_REDUCE
    )


def _row_group(sch: Schedule, block: str) -> tuple[int, list[str], list[str]] | None:
    """(k, inlined, reductions) when `block` consumes row reductions and its first k loops index
    the rows.  Elementwise blocks between (softmax's exp) are inlined first; the reductions
    (transitively: layer norm's variance reads the mean) must give one value per row, so
    computing them under the fused row loop costs no recomputation."""
    rv = sch.get_sblock(block)
    info = analyze(sch, rv)
    if info.is_reduction or not info.trivial or not info.root_level or "O" in info.iter_kinds:
        return None
    reductions, inlined, frontier = [], [], [rv]
    while frontier:
        for producer in sch.get_producers(frontier.pop()):
            p = analyze(sch, producer)
            if p.name in reductions or p.name in inlined:
                continue
            if _row_reduction(p):
                reductions.append(p.name)
            elif _inlinable(sch, p):
                inlined.append(p.name)
            else:
                continue
            frontier.append(producer)
    if not reductions:
        return None
    probe = sch.copy()  # the prefix is read off the consumer with the intermediates inlined
    try:
        for name in inlined:
            probe.compute_inline(probe.get_sblock(name))
    except SCHEDULE_ERRORS:
        return None
    k = _row_prefix(probe, probe.get_sblock(block), reductions)
    if k is None or not 1 <= k < len(info.loop_extents):
        return None
    rows = _prod(info.loop_extents[:k])
    if any(analyze(sch, g).spatial_extent != rows for g in reductions):
        return None
    order = [b for b in reversed(block_names(sch)) if b in reductions]  # consumers first, for compute_at
    return k, inlined, order


def _inlinable(sch: Schedule, info: BlockInfo) -> bool:
    return (not info.is_reduction and not info.is_output and info.root_level and "O" not in info.iter_kinds
            and bool(sch.get_consumers(sch.get_sblock(info.name))))


def _row_prefix(sch: Schedule, rv, producers: list[str]) -> int | None:
    """The number of leading loops used to index the producers' outputs (None if none are read)."""
    from .sketch import _vars_in  # noqa: PLC0415 - the shared index analysis

    stmt = sch.get(rv)
    ivars = [iv.var for iv in stmt.iter_vars]
    outputs = {_buffer(sch.get(sch.get_sblock(p)).writes[0]).name for p in producers}
    used: set[int] = set()
    for region in stmt.reads:
        if _buffer(region).name in outputs:
            for rng in region.region:
                found = _vars_in(rng.min)
                used |= {i for i, v in enumerate(ivars) if any(v.same_as(u) for u in found)}
    return max(used) + 1 if used else None


def _ctr_condition(sch: Schedule, block: str, ctx: SketchContext) -> Outcome:
    if _row_group(sch, block) is not None or _row_reduction(analyze(sch, block)):
        return Outcome.APPLY  # with and without: serial rows are better for many short rows
    return Outcome.SKIP


def _ctr_variants(sch: Schedule, block: str, ctx: SketchContext) -> tuple[str, ...]:
    return ("group",) if _row_group(sch, block) is not None else ("single",)


def _ctr_apply(sch: Schedule, block: str, ctx: SketchContext, variant: str) -> None:
    if variant == "group":
        _ctr_group(sch, block, ctx)
    else:
        _ctr_single(sch, block, ctx)


def _ctr_group(sch: Schedule, block: str, ctx: SketchContext) -> None:
    """One thread block per row: the reductions (in shared memory) and the consumer's row."""
    found = _row_group(sch, block)
    if found is None:
        raise GpuRuleError(f"{block} is no longer the consumer of a row reduction")
    k, inlined, group = found
    for name in inlined:
        sch.compute_inline(sch.get_sblock(name))
    rv = sch.get_sblock(block)
    reduce = max(analyze(sch, g).reduce_extent for g in group)
    threads = _choose_threads(sch, ctx, reduce)
    loops = sch.get_loops(rv)
    row = sch.fuse(*loops[:k]) if k > 1 else loops[0]
    cols = sch.fuse(*loops[k:]) if len(loops) - k > 1 else loops[k]
    _, tx = sch.split(cols, [None, threads])
    sch.bind(row, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    for name in group:
        producer = sch.get_sblock(name)
        sch.compute_at(producer, row)
        sch.set_scope(producer, 0, "shared")  # every thread of the row reads the result
        _bind_reduction(sch, producer, threads)


def _ctr_single(sch: Schedule, block: str, ctx: SketchContext) -> None:
    """A reduction alone: rows over blockIdx.x, each row reduced by all threads of the block."""
    rv = sch.get_sblock(block)
    info = analyze(sch, rv)
    loops = sch.get_loops(rv)
    n_spatial = info.loop_kinds.count("S")
    if n_spatial == 0:  # a reduction to one value: a single thread block
        row = sch.add_unit_loop(loops[0])
    else:
        row = sch.fuse(*loops[:n_spatial]) if n_spatial > 1 else loops[0]
    threads = _choose_threads(sch, ctx, info.reduce_extent)
    sch.bind(row, "blockIdx.x")
    _bind_reduction(sch, rv, threads)


def _bind_reduction(sch: Schedule, rv, threads) -> None:
    info = analyze(sch, rv)
    loops = [lp for lp, kind in zip(sch.get_loops(rv), info.loop_kinds) if kind == "R"]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    _, tx = sch.split(fused, [None, threads])
    sch.bind(tx, "threadIdx.x")  # lowered by TVM to a warp-shuffle all-reduce


register_rule(Rule("cross_thread_reduction", _ctr_condition, _ctr_apply, variants=_ctr_variants))


# --------------------------------------------------------------------------- thread binding + unroll
def _annotate_gpu(sch: Schedule, ctx: SketchContext) -> None:
    """Bind every loop nest no rule bound; sample auto-unroll on each kernel's outer loop."""
    for nest in _root_nests(sch):
        block = sch.get_sblock(nest)
        loops = sch.get_loops(block)
        if not loops:  # a scalar block at the root: a one-thread kernel
            sch.bind(sch.add_unit_loop(block), "blockIdx.x")
            continue
        outer = loops[0] if _nest_bound(sch, loops[0]) else _bind_fallback(sch, loops, ctx)
        has_reduction = any(analyze(sch, b).is_reduction for b in sch.get_child_blocks(outer))
        step = ctx.choose(sch, UNROLL_STEPS, default_index=UNROLL_STEPS.index(64) if has_reduction else 0)
        sch.annotate(outer, "pragma_auto_unroll_max_step", step)
        sch.annotate(outer, "pragma_unroll_explicit", 1)
    _localize_nested_buffers(sch)


def _root_nests(sch: Schedule) -> list[str]:
    """One block per loop nest directly under the root block (nested blocks ride along)."""
    names, roots = [], []
    for rv in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(rv)
        root = sch.get(loops[0]) if loops else None
        if root is not None and any(root.same_as(r) for r in roots):
            continue
        if root is not None:
            roots.append(root)
        names.append(sch.get(rv).name_hint)
    return names


def _localize_nested_buffers(sch: Schedule) -> None:
    """Buffers a block allocates inside a kernel (hand-written TIR such as the fused attention)
    become per-thread: a kernel cannot allocate global memory.  Root allocations stay global."""
    names = block_names(sch)
    writers = {name: [_buffer(w).name for w in sch.get(sch.get_sblock(name)).writes] for name in names}
    for owner in names:
        for buf in sch.get(sch.get_sblock(owner)).alloc_buffers:
            writer = next((w for w in names if buf.scope() == "global" and buf.name in writers[w]), None)
            if writer is not None:
                sch.set_scope(sch.get_sblock(writer), writers[writer].index(buf.name), "local")


def _nest_bound(sch: Schedule, root) -> bool:
    return any(_is_bound(sch, lp) for b in sch.get_child_blocks(root) for lp in sch.get_loops(b))


def _bind_fallback(sch: Schedule, loops, ctx: SketchContext):
    """Fuse the leading loops that are spatial for every block inside; threads over the result."""
    prefix = _spatial_prefix(sch, loops)
    if not prefix:  # nothing parallel (a full reduction kept serial): one thread
        unit = sch.add_unit_loop(loops[0])
        sch.bind(unit, "blockIdx.x")
        return unit
    extent = _prod(sch.get(lp).extent for lp in prefix)
    fused = sch.fuse(*prefix) if len(prefix) > 1 else prefix[0]
    threads = _choose_threads(sch, ctx, extent)
    bx, tx = sch.split(fused, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    return bx


def _spatial_prefix(sch: Schedule, loops) -> list:
    """Leading loops that are perfectly nested and spatial for every block inside."""
    prefix = []
    for loop in loops:
        stmt = sch.get(loop)
        if stmt.kind != ForKind.SERIAL or not _spatial_for_all(sch, loop):
            break
        prefix.append(loop)
        if not isinstance(stmt.body, For):
            break
    return prefix


def _spatial_for_all(sch: Schedule, loop) -> bool:
    var = sch.get(loop).loop_var
    for block in sch.get_child_blocks(loop):
        info = analyze(sch, block)
        for lp, kind in zip(sch.get_loops(block), info.loop_kinds):
            if sch.get(lp).loop_var.same_as(var) and kind != "S":
                return False
    return True


register_rule(AnnotationRule("thread_bind", _annotate_gpu))
