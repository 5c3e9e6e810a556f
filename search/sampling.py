"""Annotation sampling on the CPU, and drawing random candidates from the sketches.

The CPU annotation rule fills the holes a sketch leaves, each through a TVM sampling
instruction so the trace records the decision:
  1. compute location of producers that were neither inlined nor tiled
     (`sample_compute_location`; e.g. softmax/layer-norm row reductions under the row loop),
  2. vectorization of each block's innermost spatial loop, split to a sampled length,
  3. parallel granularity: how many outer spatial loops are fused and parallelized,
  4. auto-unroll max step (`pragma_auto_unroll_max_step` from [0, 16, 64, 512]).
"""

from __future__ import annotations

from tvm.s_tir import Schedule
from tvm.tirx import For, ForKind

from .measure_types import Candidate
from .sketch import (
    SCHEDULE_ERRORS,
    AnnotationRule,
    Sketch,
    SketchContext,
    _get_realize,
    _vars_in,
    analyze,
    block_names,
    generate_sketches,
    instantiate,
    register_rule,
    stmt_of,
    unit_stride,
)

UNROLL_STEPS = (0, 16, 64, 512)
MAX_VECTOR = 64  # longest vectorized loop sampled (elements)
MIN_PARALLEL_WORK = 4096  # the default runs smaller nests on one core (a parallel launch costs ~5-10 us)


# --------------------------------------------------------------------------- 1. compute location
def _compute_locations(sch: Schedule, ctx: SketchContext) -> None:
    for name in reversed(block_names(sch)):
        block = sch.get_sblock(name)
        info = analyze(sch, block)
        if info.is_output or info.reuse or not info.root_level or not sch.get_consumers(block):
            continue
        if ctx.deterministic:
            _best_location(sch, name)
            continue
        try:
            sch.compute_at(block, sch.sample_compute_location(block))
        except SCHEDULE_ERRORS:
            continue  # this location is illegal after all: leave the block at the root


def _best_location(sch: Schedule, name: str) -> None:
    """The deepest loop of the first consumer where the producer is not recomputed."""
    block = sch.get_sblock(name)
    work = _work(sch, name)
    consumer = sch.get_consumers(block)[0]
    kinds = analyze(sch, consumer).loop_kinds
    spatial_depth = next((i for i, k in enumerate(kinds) if k != "S"), len(kinds))
    for depth in range(spatial_depth, 0, -1):
        trial = sch.copy()
        try:
            trial.compute_at(trial.get_sblock(name), trial.get_loops(trial.get_consumers(trial.get_sblock(name))[0])[depth - 1])
        except SCHEDULE_ERRORS:
            continue
        outer = _prod(int(stmt_of(trial, lp).extent) for lp in trial.get_loops(trial.get_sblock(name))[:depth])
        if _work(trial, name) <= work and outer > 1:  # a unit loop would only block the parallel fuse
            sch.compute_at(block, sch.get_loops(consumer)[depth - 1])
            return


def _work(sch: Schedule, block) -> int:
    """Iterations of a block's body, counting every enclosing loop."""
    total = 1
    for extent in analyze(sch, block).loop_extents:
        total *= max(extent, 1)
    return total


# --------------------------------------------------------------------------- 2. vectorize
def _vectorize(sch: Schedule, ctx: SketchContext) -> None:
    for name in block_names(sch):
        block = sch.get_sblock(name)
        info = analyze(sch, block)
        loops = sch.get_loops(block)
        if loops and info.loop_kinds[-1] == "R" and not info.reuse and _spatial_inside(sch, block, info):
            info = analyze(sch, block)
            loops = sch.get_loops(block)
        if not loops or info.loop_kinds[-1] != "S" or info.loop_extents[-1] <= 1:
            continue
        if len(sch.get_child_blocks(loops[-1])) != 1 or stmt_of(sch, loops[-1]).kind != ForKind.SERIAL:
            continue
        if sch.get_child_blocks(block):  # a block with blocks inside (fused attention): not a vector body
            continue
        inner = loops[-1]
        extent = info.loop_extents[-1]
        if not info.reuse and extent > ctx.lanes:  # sampled vector length; a whole row is too long
            default = [1, extent] if extent <= MAX_VECTOR else _vector_split(extent, ctx.lanes)
            if default[1] == 1 and ctx.deterministic:
                continue  # no vector length divides the row (a prime extent): leave it scalar
            _, inner = sch.split(inner, ctx.tile(sch, inner, 2, max_innermost=MAX_VECTOR, default=default))
        elif info.reuse and extent > MAX_VECTOR:
            continue
        try:
            sch.vectorize(inner)
        except SCHEDULE_ERRORS:
            continue


def _spatial_inside(sch: Schedule, block, info) -> bool:
    """Move the last spatial loop inside the reduction loops when it walks the contiguous
    dimension of a read (pooling's x, rfactor's lanes), so it can be vectorized."""
    loops = sch.get_loops(block)
    s = max((i for i, k in enumerate(info.loop_kinds) if k == "S"), default=None)
    if s is None or any(k != "R" for k in info.loop_kinds[s + 1 :]) or info.loop_extents[s] <= 1:
        return False
    if any(len(sch.get_child_blocks(lp)) != 1 or stmt_of(sch, lp).kind != ForKind.SERIAL for lp in loops[s:]):
        return False
    stmt = stmt_of(sch, block)
    var = stmt_of(sch, loops[s]).loop_var
    bound = [iv.var for iv, value in zip(stmt.iter_vars, _iter_values(sch, block)) if any(var.same_as(v) for v in _vars_in(value))]
    if len(bound) != 1:
        return False
    if not any(region.region and unit_stride(region.region[-1].min, bound[0]) for region in stmt.reads):
        return False  # strided (pooling with stride 2) vector loads were slower than scalar code
    try:
        sch.reorder(*loops[s + 1 :], loops[s])
    except SCHEDULE_ERRORS:
        return False
    return True


def _iter_values(sch: Schedule, block):
    return _get_realize(sch, block).iter_values


def _vector_split(extent: int, lanes: int) -> list[int]:
    for f in (4 * lanes, 2 * lanes, lanes, lanes // 2, 4, 2):
        if f and extent % f == 0:
            return [extent // f, f]
    return [extent, 1]


# --------------------------------------------------------------------------- 3. parallel, 4. unroll
def _parallel_unroll(sch: Schedule, ctx: SketchContext) -> None:
    seen_roots = set()
    for name in block_names(sch):
        block = sch.get_sblock(name)
        loops = sch.get_loops(block)
        if not loops:
            continue
        root = stmt_of(sch, loops[0])
        if any(root.same_as(r) for r in seen_roots) or not analyze(sch, block).root_level:
            continue
        seen_roots.add(root)
        prefix = _parallel_prefix(sch, loops)
        outer = loops[0]
        small = sum(_work(sch, b) for b in sch.get_child_blocks(loops[0])) < MIN_PARALLEL_WORK
        if prefix and not (ctx.deterministic and small):  # k = how many outer loops are fused and parallelized
            extents = [int(stmt_of(sch, lp).extent) for lp in prefix]
            default = _default_parallel(extents, ctx.cores)
            k = stmt_of(sch, ctx.choose(sch, list(range(1, len(prefix) + 1)), default_index=default - 1))
            if k > 1:
                outer = sch.fuse(*prefix[:k])
            if _prod(extents[:k]) > 1:
                sch.parallel(outer)
        if not any(analyze(sch, b).is_reduction for b in sch.get_child_blocks(outer)):
            continue  # nothing to gain in elementwise nests; unrolled vector gathers took minutes to build
        step = ctx.choose(sch, UNROLL_STEPS, default_index=UNROLL_STEPS.index(64))
        sch.annotate(outer, "pragma_auto_unroll_max_step", step)
        sch.annotate(outer, "pragma_unroll_explicit", 1)


def _parallel_prefix(sch: Schedule, loops) -> list:
    """Leading loops that are perfectly nested, serial, and spatial for every block inside."""
    not_spatial = set()  # loop vars that some block under the nest uses as a reduction (or worse)
    for block in sch.get_child_blocks(loops[0]):
        info = analyze(sch, block)
        for lp, kind in zip(sch.get_loops(block), info.loop_kinds):
            if kind != "S":
                not_spatial.add(stmt_of(sch, lp).loop_var)
    prefix = []
    for loop in loops:
        stmt = stmt_of(sch, loop)
        if stmt.kind != ForKind.SERIAL or any(stmt.loop_var.same_as(v) for v in not_spatial):
            break
        prefix.append(loop)
        if not isinstance(stmt.body, For):
            break
    return prefix


def _default_parallel(extents: list[int], cores: int) -> int:
    """Fewest outer loops whose product keeps every core busy (a few chunks each)."""
    total = 1
    for k, e in enumerate(extents, start=1):
        total *= e
        if total >= 8 * cores:
            return k
    return len(extents)


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def annotate_cpu(sch: Schedule, ctx: SketchContext) -> None:
    _compute_locations(sch, ctx)
    _vectorize(sch, ctx)
    _parallel_unroll(sch, ctx)


register_rule(AnnotationRule("parallel_vectorize_unroll", annotate_cpu))


# --------------------------------------------------------------------------- random candidates
def sample_candidates(
    task, target, *, n: int, rng_seed: int = 0, max_tries_per_candidate: int = 8, sketches: list[Sketch] | None = None
) -> list[Candidate]:
    """Up to n distinct random candidates, taken round-robin over the task's sketches
    (pass `sketches` to reuse a generated list)."""
    sketches = generate_sketches(task, target) if sketches is None else sketches
    ctx = SketchContext(target, deterministic=False)
    seen: set[str] = set()
    out: list[Candidate] = []
    attempts = since_new = 0
    seed = int(rng_seed) * 1_000_003 + 1
    give_up = max(32, 4 * len(sketches))  # attempts in a row with nothing new: a small space is used up
    while len(out) < n and attempts < n * max_tries_per_candidate and since_new < give_up and sketches:
        sketch = sketches[attempts % len(sketches)]
        attempts += 1
        since_new += 1
        seed = (seed * 48271) % 2_147_483_647 or 1
        try:
            sch = instantiate(sketch, task.mod, ctx, seed=seed)
        except SCHEDULE_ERRORS:
            continue  # an illegal combination of sampled decisions: drop it
        cand = Candidate.from_schedule(sch, sketch=sketch.name)
        if cand.trace_json not in seen:
            seen.add(cand.trace_json)
            out.append(cand)
            since_new = 0
    return out
