"""Per-task search policies behind one interface: `propose(n)` candidates, `observe(results)`.

RandomPolicy samples sketches and annotations uniformly (issue 3's plain search, the baseline);
the cost-model-guided evolutionary policy (evolutionary.py) is the default strategy.
policy.tune_task drives one policy on one task (tuner.tune_tasks drives many).
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
    """Fresh uniform samples of the task's sketches on each `propose(n)`, none measured or proposed before.

    The first batch starts with the default schedule (so tuning never ends worse than untuned).
    An empty batch means the space looks exhausted: `max_rounds_without_new` sampling rounds in
    a row found nothing new."""

    def __init__(self, task: Task, target: Target, *, seed: int = 0, measured: set[str] | None = None,
                 include_default: bool = True, max_rounds_without_new: int = 4):
        self.task, self.target = task, target
        self.seed = seed
        self.measured = measured if measured is not None else set()  # trace hashes measured (database) or proposed
        self.include_default = include_default
        self.max_rounds_without_new = max_rounds_without_new
        self._round = 0
        self._sketches = None

    def propose(self, n: int) -> list[Candidate]:
        from .sampling import sample_candidates
        from .sketch import generate_sketches

        out: dict[str, Candidate] = {}
        if self._round == 0 and self.include_default and n > 0:
            first = default_candidate(self.task, self.target)
            if first is not None and trace_hash(first.trace_json) not in self.measured:
                out[trace_hash(first.trace_json)] = first
        if self._sketches is None:
            self._sketches = generate_sketches(self.task, self.target)
        for _ in range(self.max_rounds_without_new):
            if len(out) >= n:
                break
            self._round += 1
            fresh = sample_candidates(self.task, self.target, n=2 * n, rng_seed=self.seed * 100_003 + self._round,
                                      sketches=self._sketches)
            for cand in fresh:
                h = trace_hash(cand.trace_json)
                if len(out) < n and h not in self.measured and h not in out:
                    out[h] = cand
        self._round += 1
        self.measured.update(out)  # never proposed twice, even if the caller drops the batch
        return list(out.values())

    def observe(self, candidates: Sequence[Candidate], results: Sequence[MeasureResult]) -> None:
        """Random search learns nothing; it only remembers what was measured."""
        self.measured.update(trace_hash(c.trace_json) for c in candidates)


def make_policy_factory(target: Target, database, config) -> tuple[Callable[[Task, int], object], Callable[[], None]]:
    """(factory(task, seed) -> policy, finish()) for the configured strategy."""
    if config.strategy not in ("evolutionary", "random"):
        raise ValueError(f"unknown search strategy {config.strategy!r}: 'evolutionary' or 'random'")
    if config.strategy == "random":
        def factory(task: Task, seed: int):
            return RandomPolicy(task, target, seed=seed, measured=database.measured_hashes(task.workload_key, target.key))

        return factory, lambda: None
    from .evolutionary import make_evolutionary_factory

    return make_evolutionary_factory(target, database, config)
