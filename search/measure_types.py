"""The data that flows through tuning: candidates, measure results, records.

A Candidate is a schedule *as data*: the TensorIR trace (schedule instructions with
their sampled decisions) serialized as JSON, replayable onto a fresh copy of its task.
Failures are data too: a MeasureResult carries an ErrorKind and message, cost = inf.
"""

from __future__ import annotations

import enum
import json
import math
import time
from dataclasses import dataclass, field

SCHEMA_VERSION = 1


class ErrorKind(str, enum.Enum):
    INSTANTIATE = "instantiate"  # the trace does not replay onto the task
    INVALID = "invalid"  # over the target's limits (threads, shared memory), caught before building
    BUILD = "build"  # compilation failed
    BUILD_TIMEOUT = "build_timeout"
    RUN = "run"  # the kernel raised at run time
    RUN_TIMEOUT = "run_timeout"  # the kernel hung
    CRASH = "crash"  # the worker process died (segfault, abort)
    WRONG_RESULT = "wrong_result"  # output differs from the task's reference


def _plain(obj):
    """TVM containers/IntImm -> JSON-able Python values (gotcha: json.dumps fails on IntImm)."""
    if isinstance(obj, (str, bool, int, float)) or obj is None:
        return obj
    if hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "Array":
        return [_plain(x) for x in obj]
    if hasattr(obj, "value"):
        return obj.value
    return str(obj)


@dataclass(frozen=True)
class Candidate:
    """A sketch with its holes filled: the trace JSON, plus which sketch it came from."""

    trace_json: str
    sketch: str = ""

    @staticmethod
    def from_schedule(sch, sketch: str = "") -> "Candidate":
        return Candidate(json.dumps(_plain(sch.trace.as_json(remove_postproc=False)), separators=(",", ":")), sketch)

    def apply(self, mod, seed: int = 1):
        """Replay onto a fresh tvm.s_tir.Schedule of `mod`; raises ScheduleError / TVMError if it does not fit."""
        from tvm.s_tir import Schedule, Trace  # lazily: the database must not pay for importing TVM

        # default debug mask: "all" rejects legal shared-memory loads whose thread count does not divide the tile
        sch = Schedule(mod, seed=max(1, seed))
        Trace.apply_json_to_schedule(json.loads(self.trace_json), sch)
        return sch


@dataclass(frozen=True)
class MeasureResult:
    costs: tuple[float, ...] = ()  # seconds per run, one per repeat
    error: ErrorKind | None = None
    message: str = ""
    build_secs: float = 0.0
    timestamp: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.costs)

    @property
    def mean(self) -> float:
        return sum(self.costs) / len(self.costs) if self.ok else math.inf

    @staticmethod
    def failure(kind: ErrorKind, message: str) -> "MeasureResult":
        first = (message or "").strip().splitlines()
        return MeasureResult((), kind, (first[-1] if first else "")[:500])


@dataclass(frozen=True)
class Record:
    """One measurement, as the database stores it."""

    workload_key: str
    target_key: str
    candidate: Candidate
    result: MeasureResult
    task_name: str = ""
    version: str = ""  # tilecraft version + TVM version (part of what can invalidate a result)
