"""One task, one policy: the measure-commit loop, random search by default (the baseline).

    while trials remain:
        batch   = policy.propose(n)                  # policies.RandomPolicy unless given
        results = measurer.measure(task, batch)      # injected: real workers or a fake
        database.commit(records); policy.observe(batch, results); keep the best; report progress

The measurer, database and progress reporter are injected, so the loop is tested with fakes
and no compilation. `tuner.tune_tasks` is the many-task loop (with a task scheduler); both
drive the same policies (policies.py).
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
from .policies import RandomPolicy


class Measurer(Protocol):
    def measure(self, task: Task, candidates: Sequence[Candidate]) -> list[MeasureResult]: ...


class Database(Protocol):
    def commit(self, records) -> int: ...

    def measured_hashes(self, workload_key: str, target_key: str) -> set[str]: ...

    def best(self, workload_key: str, target_key: str, k: int = 1) -> list[Record]: ...


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
    defaults to a RandomPolicy that skips what the database measured.  The best covers earlier
    runs too (the database's best record).
    """
    if policy is None:
        policy = RandomPolicy(task, target, seed=seed, measured=set(database.measured_hashes(task.workload_key, target.key)))
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
