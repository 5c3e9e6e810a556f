"""A candidate's decisions as genes: mutation and crossover for the evolutionary search.

A trace is instructions plus the decisions of its sampling instructions.  A *gene* is one
sampling instruction; its decision is what evolution changes.  Two ways to apply a change:

  replay        the decision is written into the trace, which is replayed onto a fresh
                schedule (cheap: a few ms).  Right for decisions the trace itself consumes:
                tile sizes (SamplePerfectTile -> Split) and annotations (SampleCategorical ->
                Annotate, e.g. auto-unroll).
  re-derive     the sketch's rules are run again with the parent's decisions, one changed
                (a sketch instantiation: tens of ms).  Needed where the decision steers the
                rules' Python code instead of an instruction: the parallel granularity (its
                categorical picks how many loops `fuse` takes) and compute locations (moving a
                block changes every later `get_loops`, so a replayed trace no longer fits).

Candidates made here carry a *pruned* trace: pure getters whose results are never used are
dropped (a third of a sketch's instructions), so replaying, hashing and featurizing are cheaper
and equal programs have equal traces.  Every child is replayed before it is returned: an
illegal one (tvm.s_tir.ScheduleError, or a failed internal check) is dropped, never raised.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace
import tvm
from tvm.s_tir import Schedule, Trace

from .measure_types import Candidate
from .sketch import SCHEDULE_ERRORS, SKETCH_RULES, Sketch, SketchContext, decompose_reductions, rules_for

TILE, CATEGORICAL, LOCATION = "SamplePerfectTile", "SampleCategorical", "SampleComputeLocation"
PURE_GETTERS = frozenset({"GetSBlock", "GetLoops", "GetChildBlocks", "GetProducers", "GetConsumers"})

# What replaying a changed trace raises when the change is illegal here (RuntimeError covers
# TVM's failed internal checks, e.g. a moved block whose `get_loops` now has another length).
REPLAY_ERRORS = (*SCHEDULE_ERRORS, RuntimeError)

Decision = "int | tuple[int, ...]"


@dataclass(frozen=True)
class Gene:
    index: int  # position of the sampling instruction in the (pruned) trace
    kind: str  # TILE | CATEGORICAL | LOCATION
    attrs: str  # the instruction's attrs as JSON: [n, max_innermost] or [candidates, probs]
    live: bool  # a later instruction reads the sampled value
    extent: int = 0  # TILE: the split loop's extent (product of any valid decision)

    @property
    def replayable(self) -> bool:
        """Changing it and replaying the trace changes the program consistently."""
        return self.live and self.kind != LOCATION

    @property
    def choices(self) -> int:
        return len(json.loads(self.attrs)[0]) if self.kind == CATEGORICAL else 0

    @property
    def max_innermost(self) -> int:
        return int(json.loads(self.attrs)[1]) if self.kind == TILE else 0


@dataclass(frozen=True)
class Genome:
    """A candidate as data evolution works on: instructions (JSON text) + one decision per gene."""

    insts: str
    genes: tuple[Gene, ...]
    decisions: tuple  # aligned with genes: tuple[int, ...] for tiles, int otherwise
    sketch: str = ""

    @property
    def trace_json(self) -> str:
        pairs = [[g.index, list(d) if isinstance(d, tuple) else d] for g, d in zip(self.genes, self.decisions)]
        return f"[{self.insts},{json.dumps(pairs, separators=(',', ':'))}]"

    @property
    def signature(self) -> tuple:
        """Parents with equal signatures share the decisions' meaning: crossover is position-wise."""
        return (self.sketch, tuple((g.kind, g.attrs, g.live, g.extent) for g in self.genes))

    def candidate(self) -> Candidate:
        return Candidate(self.trace_json, self.sketch)

    def with_decision(self, gene: int, decision) -> "Genome":
        return replace(self, decisions=self.decisions[:gene] + (decision,) + self.decisions[gene + 1:])


# --------------------------------------------------------------------------- parsing
def genome_of(candidate: Candidate) -> Genome:
    """Parse (and prune) a candidate's trace.  Raises ValueError on a trace that is not JSON."""
    try:
        insts, pairs = json.loads(candidate.trace_json)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"not a trace: {e}") from None
    insts, pairs = prune(insts, pairs)
    read = _reads(insts)
    genes, decisions = [], []
    for index, decision in sorted(pairs, key=lambda p: p[0]):
        kind, _, attrs, outputs = insts[index]
        live = any(read.get(o, -1) > index for o in outputs)
        if kind == TILE:
            decision = tuple(int(x) for x in decision)
            genes.append(Gene(index, kind, _dumps(attrs), live, math.prod(decision)))
        else:
            decision = int(decision)
            genes.append(Gene(index, kind, _dumps(attrs), live))
        decisions.append(decision)
    return Genome(_dumps(insts), tuple(genes), tuple(decisions), candidate.sketch)


def prune(insts: list, pairs: list) -> tuple[list, list]:
    """Drop pure getters whose outputs nothing reads (repeatedly: a getter may feed only dead ones)."""
    keep = list(range(len(insts)))
    while True:
        read = _reads([insts[i] for i in keep])
        dead = {i for i in keep if insts[i][0] in PURE_GETTERS and not any(o in read for o in insts[i][3])}
        if not dead:
            break
        keep = [i for i in keep if i not in dead]
    new_index = {old: new for new, old in enumerate(keep)}
    return [insts[i] for i in keep], [[new_index[i], d] for i, d in pairs if i in new_index]


def _reads(insts: list) -> dict[str, int]:
    """RV name -> index of the last instruction that reads it."""
    last: dict[str, int] = {}
    for i, inst in enumerate(insts):
        for name in _names(inst[1]):
            last[name] = i
    return last


def _names(inputs) -> list[str]:
    out = []
    for x in inputs:
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, list):
            out.extend(_names(x))
    return out


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


# --------------------------------------------------------------------------- replaying
def realize(genome: Genome, mod: tvm.IRModule) -> tuple[Genome, Candidate] | None:
    """Replay the genome onto a fresh schedule: (the genome as TVM recorded it, its candidate), or None if illegal."""
    for gene, decision in zip(genome.genes, genome.decisions):
        if gene.kind == TILE and (math.prod(decision) != gene.extent or decision[-1] > gene.max_innermost):
            return None  # TVM replays a wrong product silently (an imperfect split): reject it here
    sch = Schedule(mod, error_render_level="none")
    try:
        Trace.apply_json_to_schedule(json.loads(genome.trace_json), sch)
    except REPLAY_ERRORS:
        return None
    if any(g.kind == LOCATION for g in genome.genes):
        genome = _read_back(genome, sch)  # TVM moves an invalid location to the nearest valid one
    return genome, genome.candidate()


def _read_back(genome: Genome, sch: Schedule) -> Genome:
    trace = sch.trace
    recorded = [int(trace.decisions[inst]) for inst in trace.insts if inst.kind.name == LOCATION]
    out, k = list(genome.decisions), 0
    for i, gene in enumerate(genome.genes):
        if gene.kind == LOCATION and k < len(recorded):
            out[i], k = recorded[k], k + 1
    return replace(genome, decisions=tuple(out))


# --------------------------------------------------------------------------- mutation
def mutate_tile(decision: tuple[int, ...], max_innermost: int, rng: random.Random, *,
                local: float = 0.75) -> tuple[int, ...] | None:
    """Move a divisor of one level's factor to another level: the product (the loop extent) is kept.

    With probability `local` the divisor is a prime factor (a small step: 32 -> 16, not 32 -> 1),
    so repeated generations climb; otherwise any divisor (a jump)."""
    sources = [i for i, f in enumerate(decision) if f > 1]
    if len(decision) < 2 or not sources:
        return None
    for _ in range(8):
        src = rng.choice(sources)
        dst = rng.choice([j for j in range(len(decision)) if j != src])
        divisors = [f for f in range(2, decision[src] + 1) if decision[src] % f == 0]
        if rng.random() < local:
            divisors = [f for f in divisors if all(f % p for p in range(2, int(math.isqrt(f)) + 1))]
        factor = rng.choice(divisors)
        new = list(decision)
        new[src] //= factor
        new[dst] *= factor
        if new[-1] <= max_innermost:
            return tuple(new)
    return None


def mutate_categorical(decision: int, choices: int, rng: random.Random) -> int | None:
    others = [i for i in range(choices) if i != decision]
    return rng.choice(others) if others else None


def mutate(genome: Genome, rng: random.Random) -> Genome | None:
    """Change one replayable gene (not yet replayed: pass the result to `realize`)."""
    genes = [i for i, g in enumerate(genome.genes) if g.replayable and _mutable(g, genome.decisions[i])]
    if not genes:
        return None
    i = rng.choice(genes)
    gene, old = genome.genes[i], genome.decisions[i]
    new = mutate_tile(old, gene.max_innermost, rng) if gene.kind == TILE else mutate_categorical(old, gene.choices, rng)
    return None if new is None else genome.with_decision(i, new)


def _mutable(gene: Gene, decision) -> bool:
    if gene.kind == TILE:
        return len(decision) > 1 and gene.extent > 1
    return gene.kind != CATEGORICAL or gene.choices > 1


def structural_genes(genome: Genome) -> list[int]:
    """Genes only a re-derivation can change: dead categoricals (parallel granularity), compute locations."""
    return [i for i, g in enumerate(genome.genes)
            if not g.replayable and (g.kind == LOCATION or (g.kind == CATEGORICAL and g.choices > 1))]


def crossover(a: Genome, b: Genome, rng: random.Random) -> Genome | None:
    """Each replayable decision from either parent (a's structure); None if the child equals a parent."""
    if a.signature != b.signature:
        return None
    decisions = tuple(db if g.replayable and rng.random() < 0.5 else da for g, da, db in zip(a.genes, a.decisions, b.decisions))
    if decisions == a.decisions or decisions == b.decisions:
        return None
    return replace(a, decisions=decisions)


# --------------------------------------------------------------------------- re-deriving
class _ForcedSchedule(Schedule):
    """A Schedule whose sampling instructions take queued decisions (per kind, in order)."""

    __slots__ = ("queues",)

    def _next(self, kind: str):
        queue = self.queues.get(kind)
        return queue.pop(0) if queue else None

    def sample_perfect_tile(self, loop, n, max_innermost_factor=16, decision=None):
        forced = self._next(TILE)
        extent = self.get(loop).extent
        fits = (forced is not None and len(forced) == n and forced[-1] <= max_innermost_factor
                and isinstance(extent, tvm.tirx.IntImm) and math.prod(forced) == int(extent))
        return super().sample_perfect_tile(loop, n, max_innermost_factor, decision=list(forced) if fits else None)

    def sample_categorical(self, candidates, probs, decision=None):
        forced = self._next(CATEGORICAL)
        fits = forced is not None and 0 <= forced < len(candidates)
        return super().sample_categorical(candidates, probs, decision=forced if fits else None)

    def sample_compute_location(self, block, decision=None):
        return super().sample_compute_location(block, decision=self._next(LOCATION))  # TVM snaps it to a valid one


def mutate_structure(genome: Genome, gene: int, rng: random.Random) -> Genome | None:
    """Another decision for a structural gene (not replayable: pass the result to `rederive`)."""
    old, g = genome.decisions[gene], genome.genes[gene]
    if g.kind == CATEGORICAL:
        new = mutate_categorical(old, g.choices, rng)
    else:  # a compute location: -2 inline, -1 root, k = under the consumer's k-th loop (TVM snaps it to a valid one)
        new = rng.choice([x for x in range(-2, max(old, 0) + 4) if x != old])
    return None if new is None else genome.with_decision(gene, new)


def changes_unit_loops(parent: Genome, child: Genome) -> bool:
    """A tile level became 1 or stopped being 1.  Rules that move a block under a tile loop without
    preserving unit loops (`reverse_compute_at(..., preserve_unit_loops=False)`) then give the moved
    block another number of loops, so the replayed trace no longer fits: re-derive such a child."""
    return any(g.kind == TILE and [f == 1 for f in a] != [f == 1 for f in b]
               for g, a, b in zip(parent.genes, parent.decisions, child.decisions))


def rederive(genome: Genome, sketch: Sketch, task, target, *, seed: int) -> Genome | None:
    """Run the sketch's rules again, each sampling instruction taking the genome's decision (per kind, in
    order); where a decision no longer fits, TVM samples a fresh one.  None if the rules fail."""
    queues: dict[str, list] = {TILE: [], CATEGORICAL: [], LOCATION: []}
    for g, d in zip(genome.genes, genome.decisions):
        queues[g.kind].append(d)
    ctx = SketchContext(target, deterministic=False)
    sch = _ForcedSchedule(task.mod, seed=seed, error_render_level="none")
    sch.queues = queues
    try:
        _apply_sketch(sch, sketch, ctx)
    except REPLAY_ERRORS:
        return None
    return genome_of(Candidate.from_schedule(sch, sketch=sketch.name))


def _apply_sketch(sch: Schedule, sketch: Sketch, ctx: SketchContext) -> None:
    """sketch.instantiate's steps on a schedule we construct (it builds its own; see the report)."""
    _, annotations = rules_for(ctx.target)
    for step in sketch.steps:
        if step.rule != "skip":
            SKETCH_RULES[step.rule].apply(sch, step.block, ctx, step.variant)
    for rule in annotations:
        rule.apply(sch, ctx)
    decompose_reductions(sch)

