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
from tvm.sym.pattern import detect_linear_equation
from tvm.tirx import For, ForKind, IntImm

from .measure_types import Candidate
from .sketch import (
    SCHEDULE_ERRORS,
    AnnotationRule,
    SketchContext,
    _get_realize,
    _vars_in,
    analyze,
    block_names,
    generate_sketches,
    instantiate,
    register_rule,
)

UNROLL_STEPS = (0, 16, 64, 512)


def _iter_values(sch: Schedule, block):
    return _get_realize(sch, block).iter_values
MAX_VECTOR = 64  # longest vectorized loop sampled (elements)


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
        if _work(trial, name) <= work:
            sch.compute_at(block, sch.get_loops(consumer)[depth - 1])
            return


def _work(sch: Schedule, name: str) -> int:
    """Iterations of a block's body, counting every enclosing loop."""
    total = 1
    for extent in analyze(sch, name).loop_extents:
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
        if len(sch.get_child_blocks(loops[-1])) != 1 or sch.get(loops[-1]).kind != ForKind.SERIAL:
            continue
        inner = loops[-1]
        extent = info.loop_extents[-1]
        if not info.reuse and extent > MAX_VECTOR:  # a whole row is too long for one vector op
            default = _vector_split(extent, ctx.lanes)
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
    if any(len(sch.get_child_blocks(lp)) != 1 or sch.get(lp).kind != ForKind.SERIAL for lp in loops[s:]):
        return False
    stmt = sch.get(block)
    var = sch.get(loops[s]).loop_var
    bound = [iv.var for iv, value in zip(stmt.iter_vars, _iter_values(sch, block)) if any(var.same_as(v) for v in _vars_in(value))]
    if len(bound) != 1:
        return False
    if not any(region.region and _unit_stride(region.region[-1].min, bound[0]) for region in stmt.reads):
        return False  # strided (pooling with stride 2) vector loads were slower than scalar code
    try:
        sch.reorder(*loops[s + 1 :], loops[s])
    except SCHEDULE_ERRORS:
        return False
    return True


def _unit_stride(index, var) -> bool:
    coeffs = detect_linear_equation(index, [var])
    return len(coeffs) == 2 and isinstance(coeffs[0], IntImm) and int(coeffs[0]) == 1


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
        root = sch.get(loops[0])
        if any(root.same_as(r) for r in seen_roots) or not analyze(sch, block).root_level:
            continue
        seen_roots.add(root)
        prefix = _parallel_prefix(sch, loops)
        outer = loops[0]
        if prefix:
            extents = [int(sch.get(lp).extent) for lp in prefix]
            default = _default_parallel(extents, ctx.cores)
            k = ctx.choose(sch, list(range(1, len(prefix) + 1)), default_index=default - 1)
            fused = sch.fuse(*prefix[: int(sch.get(k))]) if int(sch.get(k)) > 1 else prefix[0]
            if _prod(extents[: int(sch.get(k))]) > 1:
                sch.parallel(fused)
            outer = fused
        has_reduction = any(analyze(sch, b).is_reduction for b in sch.get_child_blocks(outer))
        default_unroll = UNROLL_STEPS.index(64) if has_reduction else 0
        step = ctx.choose(sch, UNROLL_STEPS, default_index=default_unroll)
        sch.annotate(outer, "pragma_auto_unroll_max_step", step)
        sch.annotate(outer, "pragma_unroll_explicit", 1)


def _parallel_prefix(sch: Schedule, loops) -> list:
    """Leading loops that are perfectly nested, serial, and spatial for every block inside."""
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
        block_loops = sch.get_loops(block)
        for lp, kind in zip(block_loops, info.loop_kinds):
            if sch.get(lp).loop_var.same_as(var) and kind != "S":
                return False
    return True


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


def _annotate_cpu(sch: Schedule, ctx: SketchContext) -> None:
    _compute_locations(sch, ctx)
    _vectorize(sch, ctx)
    _parallel_unroll(sch, ctx)


register_rule(AnnotationRule("parallel_vectorize_unroll", _annotate_cpu))


# --------------------------------------------------------------------------- random candidates
def sample_candidates(task, target, *, n: int, rng_seed: int = 0, max_tries_per_candidate: int = 8) -> list[Candidate]:
    """Up to n distinct random candidates, taken round-robin over the task's sketches."""
    sketches = generate_sketches(task, target)
    ctx = SketchContext(target, deterministic=False)
    seen: set[str] = set()
    out: list[Candidate] = []
    attempts = 0
    seed = int(rng_seed) * 1_000_003 + 1
    while len(out) < n and attempts < n * max_tries_per_candidate and sketches:
        sketch = sketches[attempts % len(sketches)]
        attempts += 1
        seed = (seed * 48271) % 2_147_483_647 or 1
        try:
            sch = instantiate(sketch, task.mod, ctx, seed=seed)
        except SCHEDULE_ERRORS:
            continue  # an illegal combination of sampled decisions: drop it
        cand = Candidate.from_schedule(sch, sketch=sketch.name)
        if cand.trace_json not in seen:
            seen.add(cand.trace_json)
            out.append(cand)
    return out
