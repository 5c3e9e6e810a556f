"""The cost-model interface, and the pieces every model shares.

A cost model scores candidates of a task: higher = predicted faster. It learns online
from measured batches and can be saved, loaded, and warm-started from a tuning database.

    model.update(task, candidates, results)      # after each measured batch
    model.predict(task, candidates) -> scores    # np.ndarray, one float per candidate
    model.save(path); model.load(path)
    model.pretrain_from_database(db, target_key) # learn from every stored record first

Scores are only comparable within one task. A candidate the model cannot read (its trace
does not replay onto the task) scores -inf.
"""

from __future__ import annotations

import math
from typing import Iterator, Protocol, Sequence

import numpy as np

from ..compiler.task import Task
from ..search.measure_types import Candidate, MeasureResult


class CostModel(Protocol):
    def update(self, task: Task, candidates: Sequence[Candidate], results: Sequence[MeasureResult]) -> None: ...

    def predict(self, task: Task, candidates: Sequence[Candidate]) -> np.ndarray: ...

    def save(self, path: str) -> None: ...

    def load(self, path: str) -> None: ...

    def pretrain_from_database(self, db, target_key: str) -> int: ...


def normalized_throughput(costs: Sequence[float]) -> np.ndarray:
    """best cost / cost within one task, in [0, 1]: 1 for the fastest, 0 for failures (inf cost).

    The task's FLOPs cancel out (throughput = flops / cost, divided by the best), so this is
    also right for tasks whose FLOP count is 0 or unknown."""
    c = np.asarray(costs, dtype=np.float64)
    ok = np.isfinite(c) & (c > 0)
    out = np.zeros(len(c))
    if ok.any():
        out[ok] = c[ok].min() / c[ok]
    return out


def cost_of(result: MeasureResult, statistic: str = "mean") -> float:
    """Seconds of a successful measurement, inf for a failure: the mean of its timed repeats (what
    the tuner records and ranks by), or with statistic="min" their minimum (the run least disturbed
    by the rest of the host: a cleaner training label)."""
    if not (result.ok and math.isfinite(result.mean) and result.mean > 0):
        return math.inf
    return float(min(result.costs)) if statistic == "min" else result.mean


def database_batches(db, target_key: str) -> Iterator[tuple[Task, list[Candidate], list[MeasureResult]]]:
    """(task, candidates, results) per stored workload with records on `target_key`, failures included."""
    keys = sorted({w.workload_key for w in db.workloads() if w.target_key == target_key})
    for key in keys:
        entry = db.workload(key)
        if entry is None:  # records of a workload whose definition was never stored: cannot featurize
            continue
        records = db.records(key, target_key, include_errors=True)
        if records:
            yield entry.to_task(), [r.candidate for r in records], [r.result for r in records]
