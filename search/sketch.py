"""Sketches: Ansor's search space as small named rules over TensorIR blocks.

A *rule* looks at one block (a condition) and rewrites it (an apply step), maybe in
several *variants*.  Sketch generation walks the blocks of a task in reverse
topological order and applies the target's rules, forking one state per variant,
like Ansor's derivation tree.  A *sketch* is the resulting list of
`Step(block, rule, variant)`: structure with holes.  Instantiating a sketch replays its
steps on a fresh schedule; every hole (tile sizes, parallel granularity, unroll
depth, compute location) is a TVM sampling instruction, so the trace records each
decision and a Candidate replays deterministically.  With a deterministic context the
same code fills the holes with fixed heuristic decisions (the default schedule).

The framework is target-agnostic: rules live in a registry by name, `target.rules`
picks them; CPU rules are in `rules_cpu.py` and `sampling.py`, GPU rules plug in from
`rules_gpu.py` the same way.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Callable, Sequence

import tvm
import tvm_ffi
from tvm.s_tir import Schedule, ScheduleError
from tvm.s_tir.schedule import LoopRV, SBlockRV
from tvm.s_tir.schedule.analysis import is_output_block
from tvm.sym.pattern import detect_linear_equation
from tvm.tirx import ForKind

from ..targets.base import Target

# Errors a schedule primitive raises for an illegal transform (TVM 0.27 has no tvm.TVMError:
# failed internal checks surface as tvm.error.InternalError); anything else is a bug.
SCHEDULE_ERRORS = (ScheduleError, tvm.error.InternalError)

_get_realize = tvm_ffi.get_global_func("s_tir.schedule.GetSBlockRealize")
_schedule_get = tvm_ffi.get_global_func("s_tir.schedule.ScheduleGet")


def stmt_of(sch: Schedule, rv):
    """`sch.get(rv)` without its Python-side type check (which was half of the sampling time)."""
    result = _schedule_get(sch, rv)
    return int(result.value) if isinstance(result, tvm.tirx.IntImm) else result


# --------------------------------------------------------------------------- context
@dataclass(frozen=True)
class SketchContext:
    """What rules may read: the target's shape, and whether holes are sampled or fixed."""

    target: Target
    deterministic: bool = False  # True: fixed heuristic decisions (default schedule)

    @property
    def cores(self) -> int:
        return max(1, self.target.num_cores)

    @property
    def lanes(self) -> int:
        """fp32 lanes of one vector register: 16 for AVX-512, 8 for AVX2, 4 for NEON."""
        return vector_lanes(self.target)

    def tile(self, sch: Schedule, loop: LoopRV, n: int, *, max_innermost: int, default: Sequence[int]):
        """Split factors for `loop`: sampled perfect tile, or the given default decision."""
        decision = [int(x) for x in default] if self.deterministic else None
        return sch.sample_perfect_tile(loop, n=n, max_innermost_factor=max_innermost, decision=decision)

    def choose(self, sch: Schedule, candidates: Sequence[int], *, default_index: int, probs=None):
        """A categorical decision (an ExprRV usable in annotate; stmt_of(sch, rv) gives its value)."""
        probs = list(probs) if probs is not None else [1.0 / len(candidates)] * len(candidates)
        decision = default_index if self.deterministic else None
        return sch.sample_categorical([int(c) for c in candidates], probs, decision=decision)


def vector_lanes(target: Target) -> int:
    tgt = target.tvm_target
    if tgt.kind.name != "llvm":
        return 4
    try:
        bits = int(tvm.target.codegen.llvm_get_vector_width(tgt))
    except SCHEDULE_ERRORS:  # unknown cpu for this LLVM: assume 128-bit vectors
        bits = 128
    return max(4, bits // 32)


# --------------------------------------------------------------------------- rules
class Outcome(enum.Enum):
    SKIP = "skip"  # the rule does not apply to this block
    APPLY = "apply"  # fork: states with the rule applied, and the state without it
    APPLY_AND_SKIP_REST = "apply_and_skip_rest"  # only the applied states go on
    MAY_APPLY = "may_apply"  # fork like APPLY, but the state without the rule comes first (the default)


@dataclass(frozen=True)
class Rule:
    """One sketch rule.  `apply` raises a SCHEDULE_ERROR when the variant is illegal here."""

    name: str
    condition: Callable[[Schedule, str, SketchContext], Outcome]
    apply: Callable[[Schedule, str, SketchContext, str], None]
    variants: Callable[[Schedule, str, SketchContext], tuple[str, ...]] = lambda sch, block, ctx: ("",)
    terminal: bool = True  # the block is finished after this rule (else later rules still see it)
    priority: int = 50  # rules are tried in this order (Ansor's fixed order), whatever target.rules says


@dataclass(frozen=True)
class AnnotationRule:
    """A whole-function pass run after the sketch steps: fills annotation holes."""

    name: str
    apply: Callable[[Schedule, SketchContext], None]


SKETCH_RULES: dict[str, Rule] = {}
ANNOTATION_RULES: dict[str, AnnotationRule] = {}
_RULE_MODULES = ("rules_cpu", "sampling", "rules_gpu", "rules_attention", "rules_bottleneck")


def register_rule(rule: "Rule | AnnotationRule") -> None:
    table = SKETCH_RULES if isinstance(rule, Rule) else ANNOTATION_RULES
    table[rule.name] = rule


def register_pattern_rules(name: str, main_condition, inner_condition, *, cpu, gpu) -> tuple[str, ...]:
    """The three rules of a pattern kernel (attention, bottleneck): `NAME_cpu` / `NAME_gpu` schedule the
    whole kernel from its output block; `NAME_inner` claims its other blocks so that no generic rule
    reaches into them.  Priority 0: before every generic rule.  Returns the names for target.rules."""
    register_rule(Rule(f"{name}_cpu", main_condition(False), lambda sch, block, ctx, variant: cpu(sch, ctx), priority=0))
    register_rule(Rule(f"{name}_gpu", main_condition(True), lambda sch, block, ctx, variant: gpu(sch, ctx), priority=0))
    register_rule(Rule(f"{name}_inner", inner_condition, lambda sch, block, ctx, variant: None, priority=0))
    return (f"{name}_inner", f"{name}_cpu", f"{name}_gpu")


def pattern_default_schedule(task, target, *, cpu, gpu):
    """A pattern kernel's deterministic schedule: its rule with the default decisions."""
    ctx = SketchContext(target, deterministic=True)
    sch = new_schedule(task.mod)
    (gpu if target.is_gpu else cpu)(sch, ctx)
    decompose_reductions(sch)
    return sch


def _load_rule_modules() -> None:
    for name in _RULE_MODULES:  # rules_gpu is optional: another engineer's file
        full = f"{__package__}.{name}"
        if importlib.util.find_spec(full) is not None:
            importlib.import_module(full)


def rules_for(target: Target) -> tuple[list[Rule], list[AnnotationRule]]:
    _load_rule_modules()
    sketch = sorted((SKETCH_RULES[n] for n in target.rules if n in SKETCH_RULES), key=lambda r: r.priority)
    annotation = [ANNOTATION_RULES[n] for n in target.rules if n in ANNOTATION_RULES]
    return sketch, annotation


# --------------------------------------------------------------------------- block analysis
@dataclass(frozen=True)
class BlockInfo:
    name: str
    iter_kinds: tuple[str, ...]  # "S" data parallel, "R" reduction, "O" other, per block iter
    extents: tuple[int, ...]  # per block iter (-1 if not constant)
    loop_kinds: tuple[str, ...]  # per enclosing loop: "S", "R", "M" (both) or "O"
    loop_extents: tuple[int, ...]
    trivial: bool  # one loop per iter, bound directly, in iter order
    is_reduction: bool
    is_output: bool
    reuse: bool  # some read ignores a spatial iter: tiling gives data reuse (matmul, conv)
    root_level: bool  # its outermost loop (or itself) sits directly under the root block

    @property
    def spatial_extent(self) -> int:
        return _prod(e for k, e in zip(self.iter_kinds, self.extents) if k == "S")

    @property
    def reduce_extent(self) -> int:
        return _prod(e for k, e in zip(self.iter_kinds, self.extents) if k == "R")


def _prod(xs) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _vars_in(expr) -> set:
    found = set()
    tvm_ffi.structural_walk(expr, (tvm.tirx.Var, found.add), order="post")
    return found


def unit_stride(index, var) -> bool:
    """`index` walks memory contiguously along `var` (coefficient 1)."""
    coeffs = detect_linear_equation(index, [var])
    return len(coeffs) == 2 and isinstance(coeffs[0], tvm.tirx.IntImm) and int(coeffs[0]) == 1


def _as_int(expr) -> int:
    return int(expr.value) if isinstance(expr, tvm.tirx.IntImm) else -1


_ITER_KIND = {0: "S", 2: "R"}


def analyze(sch: Schedule, block: "SBlockRV | str") -> BlockInfo:
    rv = sch.get_sblock(block) if isinstance(block, str) else block
    stmt = stmt_of(sch, rv)
    realize = _get_realize(sch, rv)
    kinds = tuple(_ITER_KIND.get(int(iv.iter_type), "O") for iv in stmt.iter_vars)
    extents = tuple(_as_int(iv.dom.extent) for iv in stmt.iter_vars)
    loops = [stmt_of(sch, lp) for lp in sch.get_loops(rv)]
    uses = [_vars_in(v) for v in realize.iter_values]
    loop_kinds = []
    for lp in loops:
        used = {kinds[i] for i, vs in enumerate(uses) if any(v.same_as(lp.loop_var) for v in vs)}
        loop_kinds.append("S" if used <= {"S"} else "R" if used == {"R"} else "M" if used == {"S", "R"} else "O")
    trivial = len(loops) == len(uses) and all(
        isinstance(v, tvm.tirx.Var) and v.same_as(lp.loop_var) for v, lp in zip(realize.iter_values, loops)
    )
    spatial_vars = [iv.var for iv, k, e in zip(stmt.iter_vars, kinds, extents) if k == "S" and e != 1]
    reduce_vars = [iv.var for iv, k in zip(stmt.iter_vars, kinds) if k == "R"]
    reuse = False
    for region in stmt.reads:  # an operand read along the reduction but not along some spatial axis
        used = set()
        for rng in region.region:
            used |= _vars_in(rng.min)
        along_reduction = any(any(v.same_as(u) for u in used) for v in reduce_vars)
        if along_reduction and any(not any(v.same_as(u) for u in used) for v in spatial_vars):
            reuse = True
    parent = sch.get_sref(rv).parent if not loops else sch.get_sref(sch.get_loops(rv)[0]).parent
    root_level = parent is not None and parent.parent is None
    return BlockInfo(
        name=stmt.name_hint,
        iter_kinds=kinds,
        extents=extents,
        loop_kinds=tuple(loop_kinds),
        loop_extents=tuple(_as_int(lp.extent) for lp in loops),
        trivial=trivial,
        is_reduction=stmt.init is not None or "R" in kinds,
        is_output=bool(is_output_block(sch, rv)),
        reuse=reuse and "R" in kinds,
        root_level=root_level,
    )


def block_names(sch: Schedule) -> list[str]:
    """All blocks under the root, in program (topological) order."""
    names: list[str] = []

    def visit(node):
        if isinstance(node, tvm.s_tir.SBlock) and node.name_hint != "root":
            names.append(node.name_hint)

    tvm_ffi.structural_walk(sch.mod["main"].body, (tvm.s_tir.SBlock, visit), order="pre")
    return names


def has_block(sch: Schedule, name: str) -> bool:
    return name in block_names(sch)


# --------------------------------------------------------------------------- sketches
@dataclass(frozen=True)
class Step:
    block: str
    rule: str
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.rule}{'[' + self.variant + ']' if self.variant else ''}({self.block})"


@dataclass(frozen=True)
class Sketch:
    """A task's schedule structure with holes: rule steps, replayed before annotation."""

    steps: tuple[Step, ...]

    @property
    def name(self) -> str:
        applied = [str(s) for s in self.steps if s.rule != "skip"]
        return " ".join(applied) or "skip"


def new_schedule(mod: tvm.IRModule, seed: int = 1) -> Schedule:
    return Schedule(mod, seed=max(1, int(seed)), error_render_level="none")


def generate_sketches(task, target: Target, *, max_sketches: int = 16) -> list[Sketch]:
    """Ansor's derivation: every block, consumers first, through the target's rules.

    States are built with fixed decisions (only legality matters here).  The result is in
    preference order (applied variants first, except MAY_APPLY forks), so `sketches[0]` is
    the one the default schedule uses.
    """
    rules, _ = rules_for(target)
    ctx = SketchContext(target, deterministic=True)
    start = new_schedule(task.mod)
    states: list[tuple[Schedule, tuple[Step, ...]]] = [(start, ())]
    for block in reversed(block_names(start)):
        grown: list[tuple[Schedule, tuple[Step, ...]]] = []
        for sch, steps in states:
            grown.extend(_expand(sch, steps, block, rules, ctx))
        states = grown[:max_sketches]
    return [Sketch(steps) for _, steps in states]


def _expand(sch: Schedule, steps: tuple[Step, ...], block: str, rules: list[Rule], ctx: SketchContext, start: int = 0):
    """The states that come out of rules[start:] applied to `block`, in preference order."""
    if not has_block(sch, block):  # inlined or merged away by an earlier step
        return [(sch, steps)]
    for index in range(start, len(rules)):
        rule = rules[index]
        outcome = rule.condition(sch, block, ctx)
        if outcome is Outcome.SKIP:
            continue
        applied = []
        for variant in rule.variants(sch, block, ctx):
            child = sch.copy()
            try:
                rule.apply(child, block, ctx, variant)
            except SCHEDULE_ERRORS:
                continue
            child_steps = steps + (Step(block, rule.name, variant),)
            if rule.terminal:
                applied.append((child, child_steps))
            else:
                applied.extend(_expand(child, child_steps, block, rules, ctx, index + 1))
        if not applied:
            continue
        if outcome is Outcome.APPLY_AND_SKIP_REST:
            return applied
        rest = _expand(sch, steps, block, rules, ctx, index + 1)
        return rest + applied if outcome is Outcome.MAY_APPLY else applied + rest
    return [(sch, steps + (Step(block, "skip"),))]


def instantiate(sketch: Sketch, mod: tvm.IRModule, ctx: SketchContext, *, seed: int = 1) -> Schedule:
    """Replay the sketch's steps, fill the holes (annotation rules), then finish the reductions.

    Raises a SCHEDULE_ERROR when a sampled decision turns out illegal; callers drop the sample.
    """
    _, annotations = rules_for(ctx.target)
    sch = new_schedule(mod, seed)
    for step in sketch.steps:
        if step.rule != "skip":
            SKETCH_RULES[step.rule].apply(sch, step.block, ctx, step.variant)
    for rule in annotations:
        rule.apply(sch, ctx)
    decompose_reductions(sch)
    return sch


def decompose_reductions(sch: Schedule) -> None:
    """Split each reduction's init out of its loop nest, so inner loops have no `if k == 0`."""
    for name in block_names(sch):
        block = sch.get_sblock(name)
        if stmt_of(sch, block).init is None:
            continue
        info = analyze(sch, block)
        loops = sch.get_loops(block)
        first_r = next((i for i, k in enumerate(info.loop_kinds) if k in ("R", "M")), None)
        if first_r is None:
            continue
        if any(stmt_of(sch, lp).kind == ForKind.THREAD_BINDING for lp in loops[first_r:]):
            continue  # a cross-thread reduction: TVM lowers it to an all-reduce only with its init inside
        try:
            sch.decompose_reduction(block, loops[first_r])
        except SCHEDULE_ERRORS:  # e.g. the reduction loop is shared with another block: keep the init inside
            continue
