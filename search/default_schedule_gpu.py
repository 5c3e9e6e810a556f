"""The GPU schedule the compiler uses where no tuning record exists (any task, deterministic).

Same rules as the GPU search (`rules_gpu.py`) with fixed heuristic decisions.  Each level
falls back to a simpler one, and every result is checked the way the builder checks a
candidate (lowered kernels against the target's limits, every block inside a kernel):
  1. the sketches in order (tiled + shared memory, tiled, cross-thread reductions ...),
  2. `fallback_gpu_schedule`: every loop nest fused and bound to blockIdx.x/threadIdx.x,
     reductions serial inside each thread.
A function left without thread bindings would silently compile to host code reading device
memory, so there is no unscheduled last resort: the fallback binds even scalar blocks.
"""

from __future__ import annotations

import tvm
from tvm.s_tir import Schedule
from tvm.tirx import ForKind

from ..targets.base import GPU_DEFAULT_LIMITS, Target
from .rules_gpu import _annotate_gpu
from .sketch import (
    SCHEDULE_ERRORS,
    SKETCH_RULES,
    Sketch,
    SketchContext,
    analyze,
    block_names,
    generate_sketches,
    new_schedule,
    rules_for,
)


def default_gpu_schedule(task, target: Target) -> Schedule:
    ctx = SketchContext(target, deterministic=True)
    try:
        sketches = generate_sketches(task, target)
    except SCHEDULE_ERRORS:
        sketches = []
    for sketch in sketches:
        try:
            sch = instantiate_gpu(sketch, task.mod, ctx)
        except SCHEDULE_ERRORS:
            continue
        if not schedule_problem(sch, target):
            return sch
    return fallback_gpu_schedule(task, target)


def fallback_gpu_schedule(task, target: Target) -> Schedule:
    """Fuse + bind of every loop nest; no tiling, no shared memory."""
    sch = new_schedule(task.mod)
    _annotate_gpu(sch, SketchContext(target, deterministic=True))
    decompose_gpu_reductions(sch)
    return sch


def instantiate_gpu(sketch: Sketch, mod: tvm.IRModule, ctx: SketchContext, *, seed: int = 1) -> Schedule:
    """`sketch.instantiate`, except that cross-thread reductions keep their init.

    (TVM lowers a thread-bound reduction to an all-reduce only from the block with its init;
    decomposed, every thread updates the same accumulator: a silent race.)
    """
    _, annotations = rules_for(ctx.target)
    sch = new_schedule(mod, seed)
    for step in sketch.steps:
        if step.rule != "skip":
            SKETCH_RULES[step.rule].apply(sch, step.block, ctx, step.variant)
    for rule in annotations:
        rule.apply(sch, ctx)
    decompose_gpu_reductions(sch)
    return sch


def decompose_gpu_reductions(sch: Schedule) -> None:
    for name in block_names(sch):
        block = sch.get_sblock(name)
        if sch.get(block).init is None:
            continue
        info = analyze(sch, block)
        loops = sch.get_loops(block)
        if any(k in ("R", "M") and sch.get(lp).kind == ForKind.THREAD_BINDING for lp, k in zip(loops, info.loop_kinds)):
            continue
        first_r = next((i for i, k in enumerate(info.loop_kinds) if k in ("R", "M")), None)
        if first_r is None:
            continue
        try:
            sch.decompose_reduction(block, loops[first_r])
        except SCHEDULE_ERRORS:  # the reduction loop is shared with another block: keep the init inside
            continue


# --------------------------------------------------------------------------- checks
def unbound_blocks(sch: Schedule) -> list[str]:
    """Blocks outside any blockIdx-bound loop: they would run on the host."""
    out = []
    for rv in sch.get_child_blocks(sch.get_sblock("root")):  # nested blocks sit inside these
        loops = sch.get_loops(rv)
        if not any(sch.get(lp).kind == ForKind.THREAD_BINDING and "blockIdx" in str(sch.get(lp).thread_binding.thread_tag) for lp in loops):
            out.append(sch.get(rv).name_hint)
    return out


def schedule_problem(sch: Schedule, target: Target) -> str:
    """Why this GPU schedule cannot run ("" if it can): host-side blocks, or kernels over the limits."""
    from .builder import gpu_problem  # noqa: PLC0415 - the builder's check, shared with the search

    unbound = unbound_blocks(sch)
    if unbound:
        return f"blocks outside a kernel: {', '.join(unbound)}"
    limits = {**GPU_DEFAULT_LIMITS, **dict(target.limits)}
    try:
        return gpu_problem(sch.mod, target.tvm_target, limits)
    except (RuntimeError, ValueError) as e:  # lowering rejected it (TVM errors are RuntimeErrors)
        return f"lowering failed: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
