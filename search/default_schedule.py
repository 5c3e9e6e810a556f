"""The schedule the compiler uses where no tuning record exists.

Same rules as the search, with fixed heuristic decisions (vector-width innermost tiles,
register tiles of up to 8 rows, parallel outer loops with a few chunks per core,
auto-unroll 64 in reductions).  It must work for any task, so each level falls back to
a simpler one: the preferred sketch, the other sketches, plain parallel + vectorize of
every block's spatial loops, and finally the unscheduled function.
"""

from __future__ import annotations

from tvm.s_tir import Schedule

from ..targets.base import Target
from .sampling import annotate_cpu
from .sketch import SCHEDULE_ERRORS, SketchContext, decompose_reductions, generate_sketches, instantiate, new_schedule


def default_schedule(task, target: Target) -> Schedule:
    if target.is_gpu:  # thread binding is a different problem: rules_gpu's deterministic sketch
        from .default_schedule_gpu import default_gpu_schedule

        return default_gpu_schedule(task, target)
    ctx = SketchContext(target, deterministic=True)
    try:
        sketches = generate_sketches(task, target)
    except SCHEDULE_ERRORS:
        sketches = []
    for sketch in sketches:
        try:
            return instantiate(sketch, task.mod, ctx)
        except SCHEDULE_ERRORS:
            continue
    return simple_schedule(task, target)


def simple_schedule(task, target: Target) -> Schedule:
    """Parallel outer spatial loops and vectorized inner ones, block by block; no tiling."""
    ctx = SketchContext(target, deterministic=True)
    sch = new_schedule(task.mod)
    try:
        annotate_cpu(sch, ctx)
        decompose_reductions(sch)
        return sch
    except SCHEDULE_ERRORS:
        return new_schedule(task.mod)
