"""Tuning a whole model: a task scheduler hands measurement rounds to per-task search policies.

    for each round:
        task   = scheduler.pick()                 # where a trial cuts end-to-end latency most
        batch  = policy[task].propose(n)          # random, or cost-model-guided evolution
        result = measurer.measure(task, batch)    # build + run in isolated workers
        database.commit(records); policy[task].observe(batch, result); scheduler.observe(...)

The measurer, database and policies are injected, so this loop is tested with fakes.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from .. import __version__
from ..compiler.task import Task
from ..targets.base import Target
from .measure_types import Candidate, MeasureResult, Record
from .progress_bar import Progress


class SearchPolicy(Protocol):
    def propose(self, n: int) -> list[Candidate]: ...

    def observe(self, candidates: Sequence[Candidate], results: Sequence[MeasureResult]) -> None: ...


class Measurer(Protocol):
    def measure(self, task: Task, candidates: Sequence[Candidate]) -> list[MeasureResult]: ...


@dataclass(frozen=True)
class TuneConfig:
    trials: int = 200
    batch_size: int = 16
    seed: int = 0
    strategy: str = "evolutionary"  # or "random"
    scheduler: str = "gradient"  # or "round_robin"
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    progress: bool = True
    time_budget_s: float | None = None
    early_stop_rounds: int | None = None  # stop after this many rounds without any improvement
    cost_model_path: str | None = None  # where the learned model is saved for the next run


@dataclass
class TaskState:
    task: Task
    trials: int = 0
    best_cost: float = math.inf
    history: list[float] = field(default_factory=list)  # best cost after each round
    errors: int = 0

    @property
    def weighted(self) -> float:
        return self.task.weight * self.best_cost


class TaskScheduler:
    """Ansor's gradient task scheduler: pick the task whose next trials are expected to cut the
    weighted end-to-end latency most; every task first gets one warm-up round."""

    def __init__(self, states: list[TaskState], *, strategy: str = "gradient", window: int = 3, alpha: float = 0.2,
                 seed: int = 0):
        self.states = states
        self.strategy = strategy
        self.window = window
        self.alpha = alpha
        self._next = 0
        self._rng = np.random.default_rng(seed)

    def pick(self) -> int:
        unstarted = [i for i, s in enumerate(self.states) if not s.history]
        if unstarted:
            return unstarted[0]
        if self.strategy == "round_robin":
            i = self._next % len(self.states)
            self._next += 1
            return i
        grads = [self._gradient(s) for s in self.states]
        best = max(grads)
        if best <= 0 or not math.isfinite(best):
            return int(self._rng.integers(len(self.states)))
        return int(np.argmax(grads))

    def _gradient(self, s: TaskState) -> float:
        if not math.isfinite(s.best_cost):
            return math.inf  # nothing valid yet: any success is worth everything
        h = s.history
        back = (h[-1 - self.window] - h[-1]) / self.window if len(h) > self.window else (h[0] - h[-1]) / max(len(h), 1)
        back = back if math.isfinite(back) else s.best_cost
        forward = s.best_cost / max(len(h), 1)  # optimistic: the cost could still shrink like 1/rounds
        return s.task.weight * (self.alpha * back + (1 - self.alpha) * forward)


@dataclass
class TuneResult:
    tasks: list[TaskState]
    curve: list[tuple[int, float]]  # (trials so far, estimated end-to-end latency in seconds)
    trials: int
    seconds: float
    stopped: str = ""

    @property
    def estimated_latency_s(self) -> float:
        return sum(s.weighted for s in self.tasks)

    def summary(self) -> str:
        lines = [f"tuned {len(self.tasks)} tasks with {self.trials} trials in {self.seconds:.0f}s"
                 + (f" ({self.stopped})" if self.stopped else "")]
        for s in sorted(self.tasks, key=lambda s: -s.weighted if math.isfinite(s.weighted) else 0):
            gflops = s.task.flops / s.best_cost / 1e9 if math.isfinite(s.best_cost) else 0.0
            lines.append(f"  {s.task.name[:48]:48s} x{s.task.weight:<2d} trials {s.trials:4d}  best "
                         f"{s.best_cost * 1e6:10.1f} us  {gflops:7.1f} GFLOP/s")
        lat = self.estimated_latency_s
        if math.isfinite(lat):
            lines.append(f"  estimated end-to-end kernel time: {lat * 1e3:.3f} ms")
        return "\n".join(lines)

    def plot_curve(self, path: str) -> str | None:
        """Best estimated end-to-end latency vs trials, as a PNG (skipped without matplotlib)."""
        points = [(t, lat * 1e3) for t, lat in self.curve if math.isfinite(lat)]
        if not points:
            return None
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
        ax.step([p[0] for p in points], [p[1] for p in points], where="post")
        ax.set_xlabel("trials")
        ax.set_ylabel("estimated latency (ms)")
        ax.set_title("tilecraft tuning curve")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


PolicyFactory = Callable[[Task, int], SearchPolicy]


def tune_tasks(tasks: Sequence[Task], target: Target, *, measurer: Measurer, database, policy_factory: PolicyFactory,
               config: TuneConfig, on_round: Callable[[TaskState, list[MeasureResult]], None] | None = None) -> TuneResult:
    """The tuning loop.  Every measured batch is committed before the next one starts."""
    t0 = time.time()
    states = [TaskState(t) for t in tasks]
    for s in states:  # resume: what earlier runs measured counts as the starting point
        prior = database.best(s.task.workload_key, target.key, k=1)
        if prior:
            s.best_cost = prior[0].result.mean
    policies = [policy_factory(t, config.seed + k) for k, t in enumerate(tasks)]
    scheduler = TaskScheduler(states, strategy=config.scheduler, seed=config.seed)
    progress = Progress(total=config.trials, enabled=config.progress, time_budget_s=config.time_budget_s)
    curve: list[tuple[int, float]] = [(0, sum(s.weighted for s in states))]
    done, idle_rounds, stopped = 0, 0, ""
    while done < config.trials:
        if config.time_budget_s is not None and time.time() - t0 > config.time_budget_s:
            stopped = "time budget reached"
            break
        i = scheduler.pick()
        state, policy = states[i], policies[i]
        n = min(config.batch_size, config.trials - done)
        unstarted = sum(1 for s in states if not s.history)
        if unstarted and not state.history:  # warm-up: a small budget still reaches every task
            n = max(1, min(n, (config.trials - done) // unstarted))
        batch = policy.propose(n)
        if not batch:  # this task's space is exhausted
            state.history.append(state.best_cost)
            if all(not p.propose(1) for p in policies):
                stopped = "search space exhausted"
                break
            continue
        results = measurer.measure(state.task, batch)
        database.commit([Record(state.task.workload_key, target.key, c, r, state.task.name, f"tilecraft {__version__}")
                         for c, r in zip(batch, results)])
        policy.observe(batch, results)
        before = state.best_cost
        for r in results:
            if r.ok:
                state.best_cost = min(state.best_cost, r.mean)
            else:
                state.errors += 1
        state.trials += len(batch)
        state.history.append(state.best_cost)
        done += len(batch)
        idle_rounds = 0 if state.best_cost < before else idle_rounds + 1
        curve.append((done, sum(s.weighted for s in states)))
        progress.update(done, state.task.name, state.best_cost, state.task.flops, curve[-1][1])
        if on_round is not None:
            on_round(state, results)
        if config.early_stop_rounds and idle_rounds >= config.early_stop_rounds:
            stopped = f"no improvement in {idle_rounds} rounds"
            break
    progress.close()
    return TuneResult(states, curve, done, time.time() - t0, stopped)


def tune_prepared(prepared, *, database: "str | os.PathLike", config: TuneConfig) -> TuneResult:
    """Real parts: SQLite database, worker-process measurer (local or RPC), the chosen policy."""
    from .database import Database
    from .measure import Measurer as RealMeasurer
    from .policies import make_policy_factory

    target = prepared.target
    with Database(os.fspath(database)) as db:
        for task in prepared.tasks:
            db.add_workload(task)
        measurer = _make_measurer(target, config, RealMeasurer)
        try:
            factory, finish = make_policy_factory(target, db, config)
            result = tune_tasks(prepared.tasks, target, measurer=measurer, database=db, policy_factory=factory, config=config)
            finish()
        finally:
            measurer.close()
    return result


def _make_measurer(target: Target, config: TuneConfig, measurer_cls):
    if config.rpc_tracker:
        from .measure import RPCConfig
        from .runner import RPCRunner
        from .builder import LocalBuilder

        host, _, port = config.rpc_tracker.rpartition(":")
        runner = RPCRunner(RPCConfig(tracker_host=host or "127.0.0.1", tracker_port=int(port), key=config.rpc_key or target.name,
                                     devices=_count_devices(host or "127.0.0.1", int(port), config.rpc_key or target.name)))
        return measurer_cls(target, builder=LocalBuilder(), runner=runner)
    return measurer_cls.local(target)


def _count_devices(host: str, port: int, key: str) -> int:
    """How many servers are registered under `key`: measurement runs one session per device."""
    from tvm import rpc

    try:
        summary = rpc.connect_tracker(host, port).summary()
    except (RuntimeError, OSError, ConnectionError) as e:
        from ..errors import TargetError

        raise TargetError(f"cannot reach the RPC tracker at {host}:{port} ({e})") from None
    queue = summary.get("queue_info", {}).get(key, {})
    return max(1, int(queue.get("free", 0)) + int(queue.get("pending", 0)))
