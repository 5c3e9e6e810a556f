"""Measurement with real TVM builds: the builder pool, the local runner, the RPC runner.

The workers are started once per module (fixtures) because each costs ~2.5 s of `import tvm`.
Kernels that crash or hang are hand-written TIR; they are run as artifacts of a task with
the same signature, so the reference (the task's unscheduled build) stays healthy.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import signal
import time

import numpy as np
import pytest
import tvm
from tvm import te
from tvm.s_tir import Schedule
from tvm.script import tirx as T

from tilecraft.compiler.ir import TensorType
from tilecraft.compiler.task import Task, workload_key
from tilecraft.search.builder import LocalBuilder
from tilecraft.search.measure import (
    BuilderConfig, BuildResult, Measurer, RPCConfig, RunnerConfig, first_useful_line,
)
from tilecraft.search.measure_types import Candidate, ErrorKind, MeasureResult
from tilecraft.search.runner import INT_HIGH, LocalRunner, RPCRunner, compare, random_inputs
from tilecraft.targets.base import resolve_target

N = 64  # elementwise tasks: float32[N] -> float32[N]
EMPTY = Candidate("[[],[]]")  # the unscheduled function, as a candidate


def make_task(name: str, func: tvm.tirx.PrimFunc, types: tuple[TensorType, ...], flops: float = 0.0) -> Task:
    mod = tvm.IRModule({"main": func})
    return Task(name, workload_key(mod, types), mod, types, flops)


def matmul_task(n: int = 128, *, transpose_b: bool = False) -> Task:
    A = te.placeholder((n, n), name="A"); B = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), "k")
    b = (lambda j, k: B[j, k]) if transpose_b else (lambda j, k: B[k, j])
    C = te.compute((n, n), lambda i, j: te.sum(A[i, k] * b(j, k), axis=k), name="C")
    types = tuple(TensorType((n, n), "float32") for _ in range(3))
    return make_task(f"matmul{n}", te.create_prim_func([A, B, C]), types, 2.0 * n**3)


def elementwise_task(name: str, fn) -> Task:
    A = te.placeholder((N,), name="A")
    C = te.compute((N,), lambda i: fn(A[i]), name="C")
    return make_task(name, te.create_prim_func([A, C]), (TensorType((N,), "float32"),) * 2, N)


def tiled(task: Task, ti: int, tj: int) -> Candidate:
    sch = Schedule(task.mod)
    c = sch.get_sblock("C")
    i, j, k = sch.get_loops(c)
    i0, i1 = sch.split(i, [None, ti]); j0, j1 = sch.split(j, [None, tj])
    sch.reorder(i0, j0, k, i1, j1)
    sch.parallel(i0); sch.vectorize(j1); sch.decompose_reduction(c, k)
    return Candidate.from_schedule(sch)


@T.prim_func
def abort_kernel(A: T.Buffer((N,), "float32"), C: T.Buffer((N,), "float32")):
    T.evaluate(T.call_extern("int32", "abort"))
    C[0] = A[0]


@T.prim_func
def hanging_kernel(A: T.Buffer((N,), "float32"), C: T.Buffer((N,), "float32")):
    C[0] = T.float32(0)
    while C[0] >= T.float32(0):  # never false: +1 stops changing C[0] at 2**24
        C[0] = C[0] + A[0] * A[0] + T.float32(1)


@T.prim_func
def half_kernel(A: T.Buffer((N,), "float32"), C: T.Buffer((N,), "float32")):
    for i in range(N // 2):  # right where it writes, but leaves half the output alone
        C[i] = A[i] * T.float32(2)


ELEM_TYPES = (TensorType((N,), "float32"),) * 2
DOUBLE = elementwise_task("double", lambda x: x * 2.0)
PLUS_ONE = elementwise_task("plus_one", lambda x: x + 1.0)
ABORT = make_task("abort", abort_kernel, ELEM_TYPES)
HANG = make_task("hang", hanging_kernel, ELEM_TYPES)
HALF = make_task("half", half_kernel, ELEM_TYPES)
LLVM = resolve_target("llvm")
FAST = RunnerConfig(number=2, repeat=2, min_repeat_ms=5, timeout_s=4.0, cache_flush_min_bytes=0)


@pytest.fixture(scope="module")
def builder():
    with LocalBuilder(BuilderConfig(workers=2, timeout_s=30.0)) as b:
        yield b


@pytest.fixture(scope="module")
def runner():
    with LocalRunner(FAST) as r:
        yield r


@pytest.fixture(scope="module")
def measurer(builder, runner):
    return Measurer(LLVM, builder=builder, runner=runner)  # closed by the part fixtures


def build_one(builder: LocalBuilder, task: Task, cand: Candidate = EMPTY, target=LLVM) -> BuildResult:
    (result,) = builder.build(task, [cand], target)
    assert result.ok, result
    return result


# ---------------------------------------------------------------- pure helpers (no build)


def test_first_useful_line_skips_dumps_and_tracebacks():
    dump = "ScheduleError: An error occurred.\n\n@I.ir_module\nclass Module:\n  ...\nError message: no block C"
    assert first_useful_line(RuntimeError(dump)) == "RuntimeError: no block C"
    tb = "Traceback (most recent call last):\n  File \"x.py\", line 1\nInternalError: Check failed: x"
    assert first_useful_line(RuntimeError(tb)) == "RuntimeError: InternalError: Check failed: x"
    assert first_useful_line(ValueError("")) == "ValueError"


def test_compare_scales_tolerance_with_the_output():
    ref = np.array([1000.0, 0.001, -3.0], "float32")
    assert compare(ref + np.float32(0.5), ref) == ""  # 0.5 << 1e-3 * 1000
    assert "differ" in compare(ref + np.float32(2.0), ref)
    assert "differ" in compare(np.full(3, np.nan, "float32"), ref)
    assert compare(np.array([1, 2], "int32"), np.array([1, 2], "int32")) == ""
    assert "1 of 2" in compare(np.array([1, 3], "int32"), np.array([1, 2], "int32"))
    assert "reference" in compare(np.zeros(2, "float32"), np.zeros(3, "float32"))


def test_random_inputs_ranges():
    ints, floats = random_inputs([((1000,), "int64"), ((1000,), "float32")], np.random.default_rng(0))
    assert ints.dtype == np.int64 and ints.min() >= 0 and ints.max() < INT_HIGH
    assert floats.dtype == np.float32 and -1 <= floats.min() < floats.max() <= 1


class FakeBuilder:
    def __init__(self, folder):
        self.folder = folder

    def build(self, task, candidates, target):
        out = []
        for i, c in enumerate(candidates):
            if c.sketch == "bad":
                out.append(BuildResult(None, ErrorKind.BUILD, "boom", 0.5))
            else:
                path = self.folder / f"{i}.so"
                path.write_bytes(b"")
                out.append(BuildResult(str(path), None, "", 0.25))
        return out


class FakeRunner:
    def __init__(self):
        self.seen = []

    def run(self, task, builds, target):
        self.seen.append([os.path.basename(b.artifact) for b in builds])
        return [MeasureResult(costs=(1e-3,)) for _ in builds]


def test_measurer_merges_build_failures_and_run_results(tmp_path):
    fake_runner = FakeRunner()
    with Measurer(LLVM, builder=FakeBuilder(tmp_path), runner=fake_runner) as m:
        results = m.measure(DOUBLE, [EMPTY, Candidate("[[],[]]", "bad"), EMPTY])
        all_bad = m.measure(DOUBLE, [Candidate("[[],[]]", "bad")])
    assert fake_runner.seen == [["0.so", "2.so"]]  # only what built, and nothing for an all-bad batch
    assert [r.error for r in results] == [None, ErrorKind.BUILD, None]
    assert results[0].costs == (1e-3,) and results[0].build_secs == 0.25
    assert results[1].message == "boom" and results[1].build_secs == 0.5
    assert all_bad[0].error is ErrorKind.BUILD
    assert list(tmp_path.iterdir()) == []  # artifacts removed after running


# ---------------------------------------------------------------- build + run on this CPU


def test_scheduled_matmul_candidates_measure(measurer, builder):
    task = matmul_task()
    results = measurer.measure(task, [tiled(task, 4, 16), tiled(task, 8, 32), EMPTY])
    for r in results:
        assert r.ok, r
        # cache-flushed timing (the default on CPUs) times number x repeat single calls
        assert len(r.costs) == FAST.number * FAST.repeat and all(c > 0 for c in r.costs)
        assert r.build_secs > 0
    assert os.listdir(builder._dir) == []  # artifacts are deleted once run


def test_warm_cache_timing_keeps_repeats_of_number_calls(builder):
    task = matmul_task()
    warm = dataclasses.replace(FAST, cache_flush=False)
    with LocalRunner(warm) as runner:
        (r,) = Measurer(LLVM, builder=builder, runner=runner).measure(task, [tiled(task, 4, 16)])
    assert r.ok, r
    assert len(r.costs) == warm.repeat and all(c > 0 for c in r.costs)


def test_small_weights_are_timed_warm(builder):
    # a 64 KiB B stays cached across a model run: no flush below the threshold, flush above it
    task = matmul_task()
    for threshold, expected in ((1 << 20, FAST.repeat), (64 * 1024, FAST.number * FAST.repeat)):
        config = dataclasses.replace(FAST, cache_flush_min_bytes=threshold)
        with LocalRunner(config) as runner:
            (r,) = Measurer(LLVM, builder=builder, runner=runner).measure(task, [tiled(task, 4, 16)])
        assert r.ok, r
        assert len(r.costs) == expected


def test_trace_that_does_not_replay_is_instantiate(measurer):
    task = matmul_task()
    wrong_block = Candidate('[[["GetSBlock",[],["nope","main"],["b0"]]],[]]')
    garbage = Candidate("not json")
    results = measurer.measure(task, [wrong_block, garbage, tiled(task, 4, 16)])
    assert [r.error for r in results] == [ErrorKind.INSTANTIATE, ErrorKind.INSTANTIATE, None]
    assert "nope" in results[0].message and results[0].mean == float("inf")


def test_compile_failure_is_build(measurer):
    task = matmul_task()
    sch = Schedule(task.mod)
    sch.bind(sch.get_loops(sch.get_sblock("C"))[0], "threadIdx.x")  # GPU binding on a CPU target
    (result,) = measurer.measure(task, [Candidate.from_schedule(sch)])
    assert result.error is ErrorKind.BUILD and result.message


def test_crashing_kernel_is_crash_and_runner_recovers(builder, runner):
    crash, good = build_one(builder, ABORT), build_one(builder, DOUBLE)
    results = runner.run(DOUBLE, [crash, good], LLVM)
    assert results[0].error is ErrorKind.CRASH and "SIGABRT" in results[0].message
    assert results[1].ok, results[1]


def test_hanging_kernel_is_run_timeout_and_next_one_measures(builder, runner):
    hang, good = build_one(builder, HANG), build_one(builder, DOUBLE)
    t0 = time.monotonic()
    results = runner.run(DOUBLE, [hang, good], LLVM)
    assert results[0].error is ErrorKind.RUN_TIMEOUT
    assert results[1].ok, results[1]
    assert time.monotonic() - t0 < 60  # killed, not waited for


def test_wrong_kernels_are_wrong_result(builder, runner):
    other_task = build_one(builder, PLUS_ONE)  # same signature, different function
    skips_half = build_one(builder, HALF)  # writes correct values, but only half of them
    good = build_one(builder, DOUBLE)
    results = runner.run(DOUBLE, [other_task, skips_half, good], LLVM)
    assert [r.error for r in results] == [ErrorKind.WRONG_RESULT, ErrorKind.WRONG_RESULT, None]
    assert results[0].costs == () and "differ" in results[0].message


def test_task_that_crashes_fails_its_candidates_then_pool_goes_on(measurer):
    """Here the task itself aborts: its reference cannot be computed, so nothing gets costs."""
    assert [r.error for r in measurer.measure(ABORT, [EMPTY, EMPTY])] == [ErrorKind.CRASH] * 2
    (after,) = measurer.measure(DOUBLE, [EMPTY])
    assert after.ok, after


def test_dead_build_worker_is_replaced(builder):
    victim = builder._workers[0]
    victim.wait_ready()
    os.kill(victim.pid, signal.SIGKILL)
    time.sleep(0.2)
    results = builder.build(DOUBLE, [EMPTY, EMPTY, EMPTY], LLVM)
    assert results[0].error is ErrorKind.CRASH, results[0]
    assert all(r.ok for r in results[1:]), results
    assert all(r.ok for r in builder.build(DOUBLE, [EMPTY] * 3, LLVM))


def test_build_timeout():
    with LocalBuilder(BuilderConfig(workers=1, timeout_s=0.01)) as slow:
        results = slow.build(matmul_task(), [EMPTY, EMPTY], LLVM)
    assert [r.error for r in results] == [ErrorKind.BUILD_TIMEOUT] * 2


# ---------------------------------------------------------------- other targets (build only)


def cuda_candidate(task: Task, threads: int) -> Candidate:
    sch = Schedule(task.mod)
    i, j, k = sch.get_loops(sch.get_sblock("C"))
    ij = sch.fuse(i, j)
    bx, tx = sch.split(ij, [None, threads])
    sch.bind(bx, "blockIdx.x"); sch.bind(tx, "threadIdx.x")
    return Candidate.from_schedule(sch)


def test_cuda_candidates_build_or_are_invalid(builder):
    task = matmul_task(256)
    cuda = resolve_target("cuda:sm_80")
    ok, too_many, unbound = builder.build(task, [cuda_candidate(task, 256), cuda_candidate(task, 2048), EMPTY], cuda)
    assert ok.ok and os.path.getsize(ok.artifact) > 0, ok
    assert too_many.error is ErrorKind.INVALID and "main_kernel" in too_many.message
    assert unbound.error is ErrorKind.INVALID and "binds no threads" in unbound.message
    os.remove(ok.artifact)


def test_arm_cross_build(builder):
    arm = resolve_target("arm")
    (result,) = builder.build(DOUBLE, [EMPTY], arm)
    if shutil.which(arm.cross_compiler):
        assert result.ok, result
        with open(result.artifact, "rb") as f:
            assert f.read(20)[18] == 183  # ELF e_machine = EM_AARCH64
        os.remove(result.artifact)
    else:  # no cross compiler on this machine: a build error, not an exception
        assert result.error is ErrorKind.BUILD and result.message


# ---------------------------------------------------------------- RPC


@pytest.fixture(scope="module")
def rpc_devices():
    from tvm.rpc.server import Server
    from tvm.rpc.tracker import Tracker

    base = random.Random(os.getpid()).randrange(20000, 40000, 100)  # avoid parallel test runs
    tracker = Tracker(host="127.0.0.1", port=base, port_end=base + 50, silent=True)
    servers = [
        Server(host="127.0.0.1", port=base + 50, port_end=base + 100, tracker_addr=("127.0.0.1", tracker.port),
               key="tc-test", silent=True)
        for _ in range(2)
    ]
    yield tracker.port
    for s in servers:  # servers first, or they log reconnect errors
        s.terminate()
    tracker.terminate()


def test_rpc_runner(builder, rpc_devices):
    config = RPCConfig(tracker_port=rpc_devices, key="tc-test", devices=2, session_timeout_s=5.0,
                       request_timeout_s=20.0, max_tries=2)
    task = matmul_task()
    builds = builder.build(task, [tiled(task, 4, 16), tiled(task, 8, 32), EMPTY], LLVM)
    wrong = build_one(builder, matmul_task(transpose_b=True))  # same signature, B transposed
    with RPCRunner(config, FAST) as rpc_runner:
        results = rpc_runner.run(task, [*builds, wrong], LLVM)
        assert [r.ok for r in results] == [True, True, True, False], results
        assert all(c > 0 for r in results[:3] for c in r.costs)
        assert results[3].error is ErrorKind.WRONG_RESULT
        hang = build_one(builder, HANG)
        (timed_out,) = rpc_runner.run(DOUBLE, [hang], LLVM)
        assert timed_out.error is ErrorKind.RUN_TIMEOUT, timed_out
        crash = build_one(builder, ABORT)  # kills the server process serving it: re-queued, then CRASH
        (crashed,) = rpc_runner.run(DOUBLE, [crash], LLVM)
        assert crashed.error is ErrorKind.CRASH and "2 times" in crashed.message, crashed
    for b in [*builds, wrong, hang, crash]:
        os.remove(b.artifact)



def test_worker_whose_parent_left_before_it_was_ready_exits_quietly():
    # tuning ended while a replacement worker was still importing: no BrokenPipe traceback on stderr
    import socket
    import subprocess
    import sys

    parent, child = socket.socketpair()
    code = f"from tilecraft.search.measure import worker_main; worker_main({child.fileno()}, 'json:loads')"
    proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(child.fileno(),), stderr=subprocess.PIPE)
    child.close()
    parent.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
