"""Random search over one task's sketches: the baseline every smarter policy must beat.

    while trials remain:
        batch   = random candidates the database has not measured yet
        results = measurer.measure(task, batch)      # injected: real workers or a fake
        database.commit(records); keep the best; report progress

The measurer, database and progress reporter are injected, so the loop is tested with
fakes and no compilation.  `RandomSearch` also speaks the tuner's policy protocol
(`propose(n)` / `observe(candidates, results)`), so `tuner.tune_tasks` can drive it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from .. import __version__
from ..compiler.task import Task
from ..targets.base import Target
from .measure_types import Candidate, MeasureResult, Record
from .sampling import sample_candidates
from .sketch import generate_sketches


class Measurer(Protocol):
    def measure(self, task: Task, candidates: Sequence[Candidate]) -> list[MeasureResult]: ...


class Database(Protocol):
    def commit(self, records) -> int: ...

    def has_candidate(self, workload_key: str, target_key: str, trace_json: str) -> bool: ...

    def best(self, workload_key: str, target_key: str, k: int = 1) -> list[Record]: ...


class RandomSearch:
    """Fresh random candidates on each call, none measured before (per the database)."""

    def __init__(self, task: Task, target: Target, *, database: Database, seed: int = 0, max_rounds_without_new: int = 4):
        self.task, self.target, self.database = task, target, database
        self.seed = seed
        self.max_rounds_without_new = max_rounds_without_new
        self._round = 0
        self._proposed: set[str] = set()  # this run's own candidates (measured or in flight)
        self._sketches = generate_sketches(task, target)

    def propose(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        for _ in range(self.max_rounds_without_new):
            self._round += 1
            seed = self.seed * 100_003 + self._round
            fresh = sample_candidates(self.task, self.target, n=2 * n, rng_seed=seed, sketches=self._sketches)
            for cand in fresh:
                if len(out) == n:
                    break
                if cand.trace_json in self._proposed or self._measured(cand):
                    continue
                self._proposed.add(cand.trace_json)
                out.append(cand)
            if out:
                return out
        return out  # empty: the space looks exhausted

    def observe(self, candidates: Sequence[Candidate], results: Sequence[MeasureResult]) -> None:
        """Random search learns nothing; the database already holds what was measured."""

    def _measured(self, cand: Candidate) -> bool:
        return self.database.has_candidate(self.task.workload_key, self.target.key, cand.trace_json)


@dataclass
class TaskResult:
    task_name: str
    workload_key: str
    trials: int = 0
    errors: int = 0
    best: Candidate | None = None
    best_cost: float = math.inf  # seconds
    history: list[float] = field(default_factory=list)  # best cost after each batch
    elapsed_s: float = 0.0
    stopped: str = ""  # why the loop ended early, if it did

    def gflops(self, flops: float) -> float:
        return flops / self.best_cost / 1e9 if math.isfinite(self.best_cost) and self.best_cost > 0 else 0.0


def tune_task(
    task: Task,
    target: Target,
    *,
    measurer: Measurer,
    database: Database,
    trials: int,
    batch_size: int = 16,
    seed: int = 0,
    progress=None,
    policy=None,
) -> TaskResult:
    """Measure up to `trials` new candidates in batches; records are committed after each batch.

    `progress` is a `progress_bar.Progress` (or anything with its `update`/`close`); `policy`
    defaults to RandomSearch.  The best covers earlier runs too (the database's best record).
    """
    policy = policy if policy is not None else RandomSearch(task, target, database=database, seed=seed)
    result = TaskResult(task.name, task.workload_key)
    prior = database.best(task.workload_key, target.key, k=1)
    if prior and prior[0].result.ok:
        result.best, result.best_cost = prior[0].candidate, prior[0].result.mean
    start = time.time()
    while result.trials < trials:
        batch = policy.propose(min(batch_size, trials - result.trials))
        if not batch:
            result.stopped = "search space exhausted"
            break
        measured = measurer.measure(task, batch)
        if len(measured) != len(batch):
            raise ValueError(f"the measurer returned {len(measured)} results for {len(batch)} candidates")
        database.commit(
            [Record(task.workload_key, target.key, c, r, task.name, f"tilecraft {__version__}") for c, r in zip(batch, measured)]
        )
        policy.observe(batch, measured)
        for cand, res in zip(batch, measured):
            if not res.ok:
                result.errors += 1
            elif res.mean < result.best_cost:
                result.best, result.best_cost = cand, res.mean
        result.trials += len(batch)
        result.history.append(result.best_cost)
        if progress is not None:
            progress.update(result.trials, task.name, result.best_cost, task.flops, result.best_cost * task.weight)
    result.elapsed_s = time.time() - start
    if progress is not None:
        progress.close()
    return result
