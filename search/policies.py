"""Per-task search policies behind one interface: `propose(n)` candidates, `observe(results)`.

RandomPolicy samples sketches and annotations uniformly (issue 3's plain search);
the cost-model-guided evolutionary policy lives in evolutionary.py.
"""

from __future__ import annotations

from typing import Callable, Sequence

from ..compiler.task import Task
from ..targets.base import Target
from .database import trace_hash
from .measure_types import Candidate, MeasureResult


def default_candidate(task: Task, target: Target) -> Candidate | None:
    """The untuned schedule as a candidate: measuring it first means tuning never ends worse than default."""
    from .default_schedule import default_schedule

    return Candidate.from_schedule(default_schedule(task, target), sketch="default")


class RandomPolicy:
    def __init__(self, task: Task, target: Target, *, seed: int, measured: set[str]):
        self.task, self.target = task, target
        self.seed = seed
        self.measured = measured  # trace hashes already in the database: never measured twice
        self._round = 0
        self._exhausted = False

    def propose(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        if self._round == 0:
            first = default_candidate(self.task, self.target)
            if first is not None and trace_hash(first.trace_json) not in self.measured:
                out.append(first)
        from .sampling import sample_candidates

        for attempt in range(4):
            if len(out) >= n or self._exhausted:
                break
            fresh = sample_candidates(self.task, self.target, n=2 * n, rng_seed=self.seed * 7919 + self._round * 131 + attempt)
            new = [c for c in fresh if trace_hash(c.trace_json) not in self.measured]
            for c in new:
                if len(out) < n and trace_hash(c.trace_json) not in {trace_hash(o.trace_json) for o in out}:
                    out.append(c)
            if not fresh:
                self._exhausted = True
        self._round += 1
        return out

    def observe(self, candidates: Sequence[Candidate], results: Sequence[MeasureResult]) -> None:
        self.measured.update(trace_hash(c.trace_json) for c in candidates)


def make_policy_factory(target: Target, database, config) -> tuple[Callable[[Task, int], object], Callable[[], None]]:
    """(factory(task, seed) -> policy, finish()) for the configured strategy."""
    try:
        from .evolutionary import make_evolutionary_factory
    except ImportError:  # TEMPORARY until search/evolutionary.py lands
        make_evolutionary_factory = None
    if config.strategy == "random" or make_evolutionary_factory is None:
        def factory(task: Task, seed: int):
            return RandomPolicy(task, target, seed=seed, measured=database.measured_hashes(task.workload_key, target.key))

        return factory, lambda: None
    return make_evolutionary_factory(target, database, config)
