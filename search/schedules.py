"""Which schedule each task is built with: its best database record, else the target's default."""

from __future__ import annotations

import os

import tvm
from tvm.s_tir import ScheduleError

from ..compiler.task import Task
from ..targets.base import Target
from .measure_types import Candidate


def default_schedule_func(task: Task, target: Target) -> tvm.tirx.PrimFunc:
    if task.kind == "attention":  # the generic defaults would vectorize into its online-softmax loops
        from .rules_attention import default_attention_schedule

        return default_attention_schedule(task, target).mod["main"]
    if task.kind == "bottleneck":  # a fused conv chain: spatial tiles with the intermediate computed per tile
        from .rules_bottleneck import default_bottleneck_schedule

        try:
            return default_bottleneck_schedule(task, target).mod["main"]
        except (ScheduleError, tvm.error.InternalError):
            pass  # an unusual chain: the generic defaults below still build it, stage by stage
    if target.is_gpu:
        from .default_schedule_gpu import default_gpu_schedule

        return default_gpu_schedule(task, target).mod["main"]
    from .default_schedule import default_schedule

    return default_schedule(task, target).mod["main"]


class ScheduleSource:
    """`schedule(task)` for the compiler.  Opens the database read-only-ish (it only reads)."""

    def __init__(self, target: Target, *, database: "str | os.PathLike | object | None" = None):
        self.target = target
        self.sources: dict[str, str] = {}  # workload key -> "record" | "default" (names repeat)
        self._db = None
        self._owns_db = False
        if database is not None:
            if isinstance(database, (str, os.PathLike)):
                from .database import Database

                self._db = Database(os.fspath(database))
                self._owns_db = True
            else:
                self._db = database

    @property
    def tuned_count(self) -> int:
        return sum(1 for s in self.sources.values() if s == "record")

    def schedule(self, task: Task) -> tvm.tirx.PrimFunc:
        if self._db is not None:
            for record in self._db.best(task.workload_key, self.target.key, k=3):
                func = self._replay(record.candidate, task)
                if func is not None:
                    self.sources[task.workload_key] = "record"
                    return func
        self.sources[task.workload_key] = "default"
        return default_schedule_func(task, self.target)

    def best_cost(self, workload_key: str) -> float | None:
        """The best measured seconds per call of a workload on this target, None if never measured."""
        if self._db is None:
            return None
        best = self._db.best(workload_key, self.target.key, k=1)
        return best[0].result.mean if best else None

    @staticmethod
    def _replay(candidate: Candidate, task: Task) -> tvm.tirx.PrimFunc | None:
        try:
            return candidate.apply(task.mod).mod["main"]
        except (ScheduleError, RuntimeError):  # a record from an older rule set that no longer replays
            return None

    def close(self) -> None:
        if self._owns_db and self._db is not None:
            self._db.close()
