"""The tuning loop and the task scheduler with fakes: no compilation, no timing."""

from __future__ import annotations

import hashlib
import math

import pytest

from tilecraft.compiler.task import Task
from tilecraft.search.database import Database
from tilecraft.search.measure_types import Candidate, ErrorKind, MeasureResult
from tilecraft.search.tuner import TaskScheduler, TaskState, TuneConfig, tune_tasks
from tilecraft.targets import resolve_target

TARGET = resolve_target("llvm")


def fake_task(name: str, weight: int, base_cost: float) -> Task:
    return Task(name=name, workload_key=hashlib.sha1(name.encode()).hexdigest()[:20], mod=None, arg_types=(),
                flops=base_cost * 1e9, weight=weight, kind="matmul")


class FakePolicy:
    """Candidate k of a task costs base * (1 + 1/(k+1)): later candidates are better."""

    def __init__(self, task: Task, seed: int):
        self.task, self.k = task, 0

    def propose(self, n: int) -> list[Candidate]:
        out = [Candidate(f'["{self.task.name}", {self.k + i}]', "fake") for i in range(n)]
        self.k += n
        return out

    def observe(self, candidates, results) -> None:
        pass


class FakeMeasurer:
    def __init__(self, base: dict[str, float], fail_every: int = 0):
        self.base, self.calls, self.fail_every = base, 0, fail_every

    def measure(self, task, candidates):
        out = []
        for c in candidates:
            self.calls += 1
            if self.fail_every and self.calls % self.fail_every == 0:
                out.append(MeasureResult.failure(ErrorKind.BUILD, "injected"))
                continue
            k = int(c.trace_json.split(",")[1].strip(" ]"))
            out.append(MeasureResult((self.base[task.name] * (1 + 1 / (k + 1)),)))
        return out


def run(tasks, *, trials=96, scheduler="gradient", db=None, fail_every=0, **kw):
    db = db or Database(":memory:")
    base = {t.name: t.flops / 1e9 for t in tasks}
    result = tune_tasks(tasks, TARGET, measurer=FakeMeasurer(base, fail_every), database=db, policy_factory=FakePolicy,
                        config=TuneConfig(trials=trials, batch_size=8, scheduler=scheduler, progress=False, **kw))
    return result, db


def test_every_batch_is_committed_and_failures_are_recorded():
    tasks = [fake_task("a", 1, 1e-3), fake_task("b", 1, 1e-3)]
    result, db = run(tasks, trials=48, fail_every=5)
    assert result.trials == 48
    records = db.records()
    assert len(records) == 48
    assert sum(1 for r in records if r.result.error == ErrorKind.BUILD) == 48 // 5
    assert all(math.isfinite(s.best_cost) for s in result.tasks)


def test_gradient_scheduler_spends_trials_where_latency_is():
    heavy, light = fake_task("heavy", 10, 5e-3), fake_task("light", 1, 1e-4)
    result, _ = run([heavy, light], trials=160)
    trials = {s.task.name: s.trials for s in result.tasks}
    assert trials["heavy"] > 2 * trials["light"]
    rr, _ = run([heavy, light], trials=160, scheduler="round_robin")
    assert abs(rr.tasks[0].trials - rr.tasks[1].trials) <= 8


def test_curve_never_gets_worse_and_ends_at_the_estimate():
    result, _ = run([fake_task("a", 2, 1e-3), fake_task("b", 3, 2e-3)], trials=80)
    lat = [v for _, v in result.curve if math.isfinite(v)]
    assert all(x >= y for x, y in zip(lat, lat[1:]))
    assert result.curve[-1][1] == pytest.approx(result.estimated_latency_s)
    assert "estimated end-to-end" in result.summary()


def test_a_second_run_starts_from_the_database():
    db = Database(":memory:")
    tasks = [fake_task("a", 1, 1e-3)]
    first, _ = run(tasks, trials=32, db=db)
    second, _ = run(tasks, trials=8, db=db)
    assert second.curve[0][1] == pytest.approx(first.tasks[0].best_cost)  # resumed, not from infinity
    assert len(db.records()) == 40


def test_time_budget_and_early_stop():
    result, _ = run([fake_task("a", 1, 1e-3)], trials=10_000, time_budget_s=0.0)
    assert result.trials <= 8 and "time budget" in result.stopped

    class Flat(FakePolicy):
        def propose(self, n):
            return [Candidate(f'["flat", 0, {self.k + i}]', "fake") for i in range(n)] if not setattr(self, "k", self.k + n) else []

    db = Database(":memory:")
    res = tune_tasks([fake_task("a", 1, 1e-3)], TARGET, measurer=_ConstMeasurer(), database=db, policy_factory=Flat,
                     config=TuneConfig(trials=1000, batch_size=4, progress=False, early_stop_rounds=3))
    assert res.trials < 1000 and "no improvement" in res.stopped


class _ConstMeasurer:
    def measure(self, task, candidates):
        return [MeasureResult((1e-3,)) for _ in candidates]


def test_scheduler_warms_up_every_task_first():
    states = [TaskState(fake_task(n, 1, 1e-3)) for n in "abc"]
    sched = TaskScheduler(states)
    picked = []
    for _ in range(3):
        i = sched.pick()
        picked.append(i)
        states[i].history.append(1.0)
        states[i].best_cost = 1.0
    assert sorted(picked) == [0, 1, 2]


def test_tuning_curve_plot(tmp_path):
    result, _ = run([fake_task("a", 1, 1e-3)], trials=32)
    png = result.plot_curve(str(tmp_path / "curve.png"))
    assert png and (tmp_path / "curve.png").stat().st_size > 1000
