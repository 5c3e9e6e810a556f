"""Random search (policies.RandomPolicy driven by policy.tune_task) with a fake measurer and an in-memory database: no compilation at all.

The fake cost is a function of the trace's decisions, so "the best" is known and every
assertion can fail for a reason.  Candidates are real (sampled from the CPU sketches).
"""

from __future__ import annotations

import io
import json
import math

import pytest
import tvm
from tvm import te, topi

from tilecraft.compiler.ir import TensorType
from tilecraft.compiler.task import Task, workload_key
from tilecraft.search.measure_types import ErrorKind, MeasureResult
from tilecraft.search.database import trace_hash
from tilecraft.search.policies import RandomPolicy
from tilecraft.search.policy import TaskResult, tune_task
from tilecraft.search.progress_bar import Progress
from tilecraft.targets.base import resolve_target

TARGET = resolve_target("llvm")


def make_task(name, args, out, flops):
    mod = tvm.IRModule({"main": te.create_prim_func([*args, out])})
    types = tuple(TensorType(tuple(int(x) for x in t.shape), str(t.dtype)) for t in (*args, out))
    return Task(name, workload_key(mod, types), mod, types, flops)


@pytest.fixture(scope="module")
def matmul():
    A, B = te.placeholder((64, 64), name="A"), te.placeholder((64, 64), name="B")
    return make_task("matmul64", (A, B), topi.matmul(A, B), 2.0 * 64**3)


def fake_cost(trace_json: str) -> float:
    """Seconds: smaller when the innermost tiles are larger (a made-up but fixed preference)."""
    insts, decisions = json.loads(trace_json)
    inner = [d[-1] for _, d in decisions if isinstance(d, list) and d and all(isinstance(x, int) for x in d)]
    return 1e-3 / (1 + sum(inner)) + 1e-6 * (len(trace_json) % 7)


class FakeMeasurer:
    def __init__(self, fail_every: int = 0):
        self.fail_every = fail_every
        self.batches: list[int] = []
        self.seen: list[str] = []

    def measure(self, task, candidates):
        self.batches.append(len(candidates))
        out = []
        for cand in candidates:
            self.seen.append(cand.trace_json)
            if self.fail_every and len(self.seen) % self.fail_every == 0:
                out.append(MeasureResult.failure(ErrorKind.BUILD, "fake build error\nline 2"))
            else:
                out.append(MeasureResult((fake_cost(cand.trace_json),) * 3))
        return out


class MemoryDatabase:
    def __init__(self):
        self.records = []
        self.commits = 0

    def commit(self, records):
        self.commits += 1
        self.records.extend(records)
        return len(records)

    def has_candidate(self, workload_key, target_key, trace_json):
        return any(r.workload_key == workload_key and r.target_key == target_key and r.candidate.trace_json == trace_json
                   for r in self.records)

    def measured_hashes(self, workload_key, target_key):
        return {trace_hash(r.candidate.trace_json) for r in self.records
                if r.workload_key == workload_key and r.target_key == target_key}

    def best(self, workload_key, target_key, k=1):
        ok = [r for r in self.records if r.workload_key == workload_key and r.target_key == target_key and r.result.ok]
        return sorted(ok, key=lambda r: r.result.mean)[:k]

    def count(self, workload_key, target_key):
        return sum(1 for r in self.records if r.workload_key == workload_key and r.target_key == target_key)


def test_random_search_measures_distinct_candidates_and_keeps_the_best(matmul):
    measurer, db = FakeMeasurer(), MemoryDatabase()
    res = tune_task(matmul, TARGET, measurer=measurer, database=db, trials=40, batch_size=16, seed=1)
    assert isinstance(res, TaskResult)
    assert res.trials == 40 and measurer.batches == [16, 16, 8] and db.commits == 3
    assert len(set(measurer.seen)) == 40, "a candidate was measured twice"
    assert db.count(matmul.workload_key, TARGET.key) == 40
    assert res.best_cost == pytest.approx(min(fake_cost(t) for t in measurer.seen))
    assert res.best is not None and fake_cost(res.best.trace_json) == res.best_cost
    assert all(a >= b for a, b in zip(res.history, res.history[1:])) and len(res.history) == 3
    assert {r.candidate.sketch for r in db.records} >= {"multi_level_tiling_cpu[plain](T_matmul)"}


def test_a_second_run_skips_what_the_database_has(matmul):
    db = MemoryDatabase()
    first = FakeMeasurer()
    tune_task(matmul, TARGET, measurer=first, database=db, trials=24, batch_size=8, seed=3)
    second = FakeMeasurer()
    res = tune_task(matmul, TARGET, measurer=second, database=db, trials=24, batch_size=8, seed=3)  # same seed
    assert not set(first.seen) & set(second.seen)
    assert res.best_cost <= min(fake_cost(t) for t in first.seen)  # the earlier best still counts


def test_failures_are_data_not_crashes(matmul):
    measurer, db = FakeMeasurer(fail_every=3), MemoryDatabase()
    res = tune_task(matmul, TARGET, measurer=measurer, database=db, trials=12, batch_size=6, seed=2)
    assert res.trials == 12 and res.errors == 4
    failed = [r for r in db.records if not r.result.ok]
    assert len(failed) == 4 and all(r.result.error is ErrorKind.BUILD and math.isinf(r.result.mean) for r in failed)
    assert failed[0].result.message == "line 2"
    ok_costs = [r.result.mean for r in db.records if r.result.ok]
    assert res.best_cost == min(ok_costs)


def test_a_small_space_ends_early():
    A = te.placeholder((4, 8), name="A")
    task = make_task("tiny", (A,), topi.exp(A), 32.0)
    measurer, db = FakeMeasurer(), MemoryDatabase()
    res = tune_task(task, TARGET, measurer=measurer, database=db, trials=200, batch_size=16, seed=0)
    assert res.stopped == "search space exhausted"
    assert 0 < res.trials < 200 and len(set(measurer.seen)) == res.trials


def test_random_search_speaks_the_policy_protocol(matmul):
    policy = RandomPolicy(matmul, TARGET, seed=5)
    a, b = policy.propose(8), policy.propose(8)
    assert len(a) == len(b) == 8 and not {c.trace_json for c in a} & {c.trace_json for c in b}
    assert a[0].sketch == "default" and all(c.sketch != "default" for c in b)  # the untuned schedule first, once
    policy.observe(a, FakeMeasurer().measure(matmul, a))


def test_random_policy_skips_measured_hashes(matmul):
    first = RandomPolicy(matmul, TARGET, seed=5).propose(8)
    measured = {trace_hash(c.trace_json) for c in first}
    again = RandomPolicy(matmul, TARGET, seed=5, measured=set(measured)).propose(8)  # same seed, same samples offered
    assert len(again) == 8 and not {trace_hash(c.trace_json) for c in again} & measured


def test_strategy_names_are_checked():
    from tilecraft.search.policies import make_policy_factory
    from tilecraft.search.tuner import TuneConfig

    factory, finish = make_policy_factory(TARGET, MemoryDatabase(), TuneConfig(strategy="random"))
    assert isinstance(factory, object) and finish() is None
    with pytest.raises(ValueError, match="strategy"):
        make_policy_factory(TARGET, MemoryDatabase(), TuneConfig(strategy="annealing"))


def test_progress_plain_lines_off_a_terminal(matmul):
    stream = io.StringIO()
    progress = Progress(total=32, stream=stream, every_s=0.0)
    tune_task(matmul, TARGET, measurer=FakeMeasurer(), database=MemoryDatabase(), trials=32, batch_size=16, seed=4,
              progress=progress)
    lines = stream.getvalue().strip().splitlines()
    assert len(lines) == 2 and "\r" not in stream.getvalue()
    assert lines[-1].startswith("trials 32/32") and "GFLOP/s" in lines[-1] and "matmul64" in lines[-1]


def test_progress_single_line_on_a_terminal(matmul):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    tune_task(matmul, TARGET, measurer=FakeMeasurer(), database=MemoryDatabase(), trials=32, batch_size=16, seed=4,
              progress=Progress(total=32, stream=stream))
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1


def test_with_the_real_sqlite_database(matmul, tmp_path):
    from tilecraft.search.database import Database

    db = Database(str(tmp_path / "tune.db"))
    try:
        first = FakeMeasurer()
        tune_task(matmul, TARGET, measurer=first, database=db, trials=16, batch_size=8, seed=9)
        second = FakeMeasurer()
        res = tune_task(matmul, TARGET, measurer=second, database=db, trials=16, batch_size=8, seed=9)
        assert db.count(matmul.workload_key, TARGET.key) == 32
        assert not set(first.seen) & set(second.seen)
        assert res.best_cost == pytest.approx(min(fake_cost(t) for t in first.seen + second.seen))
    finally:
        db.close()
