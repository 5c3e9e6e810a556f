"""Runners: time built artifacts and check them against the unscheduled task.

LocalRunner runs every artifact in one warm worker process: a segfaulting kernel kills only
that worker (CRASH) and a hanging one is killed after the timeout (RUN_TIMEOUT); either way
the worker is replaced.  RPCRunner runs them on devices handed out by a TVM RPC tracker.

Correctness: the first time a task is seen, its UNSCHEDULED module is built for the host CPU
and run on fixed random inputs, in a worker (a broken task must not kill the tuner); the
output is cached per workload key.  Each candidate first runs on the same inputs; only a
candidate whose output matches is timed (on fresh random inputs, after a warm-up call).
"""

from __future__ import annotations

import os
import queue
import threading
from typing import Sequence

import numpy as np
import tvm
from tvm import rpc

from ..compiler.task import Task
from ..targets.base import Target, host_cpu_target
from .measure import RPCConfig, RunnerConfig, BuildResult, WorkerDied, WorkerProcess, first_useful_line
from .measure_types import ErrorKind, MeasureResult

REFERENCE_SEED = 20240607  # the fixed inputs every candidate of a task is checked on
INT_HIGH = 4  # integer inputs are drawn from [0, INT_HIGH): small enough to be valid indices

Spec = tuple[tuple[int, ...], str]  # (shape, dtype) of one PrimFunc argument


def arg_specs(task: Task) -> list[Spec]:
    return [(tuple(t.shape), t.dtype) for t in task.arg_types]


def random_inputs(specs: Sequence[Spec], rng: np.random.Generator) -> list[np.ndarray]:
    arrays = []
    for shape, dtype in specs:
        if dtype == "bool":
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        elif np.issubdtype(np.dtype(dtype), np.integer):
            arrays.append(rng.integers(0, INT_HIGH, shape).astype(dtype))
        else:
            arrays.append(rng.uniform(-1.0, 1.0, shape).astype(dtype))
    return arrays


def poisoned(spec: Spec) -> np.ndarray:
    """An output buffer full of garbage, so a kernel that skips elements cannot pass."""
    shape, dtype = spec
    if np.issubdtype(np.dtype(dtype), np.floating):
        return np.full(shape, np.nan, dtype)
    return np.full(shape, 1 if dtype == "bool" else np.iinfo(np.dtype(dtype)).max, dtype)


def compare(out: np.ndarray, ref: np.ndarray) -> str:
    """"" if `out` matches `ref`, else why not.  Float tolerance scales with the output."""
    if out.shape != ref.shape or out.dtype != ref.dtype:
        return f"output {out.dtype}{list(out.shape)} but reference {ref.dtype}{list(ref.shape)}"
    if not np.issubdtype(ref.dtype, np.floating):
        bad = out != ref
        return f"{int(bad.sum())} of {ref.size} elements differ" if bad.any() else ""
    rtol = 1e-2 if ref.dtype == np.float16 else 1e-3
    finite = np.abs(ref[np.isfinite(ref)].astype(np.float64))
    atol = rtol * float(finite.max(initial=0.0))
    bad = ~np.isclose(out, ref, rtol=rtol, atol=atol, equal_nan=True)
    if not bad.any():
        return ""
    err = np.abs(out.astype(np.float64) - ref)[bad].max()
    return f"{int(bad.sum())} of {ref.size} elements differ, max |error| {err:.3g} (atol {atol:.3g}, rtol {rtol:g})"


CPU_DEVICE_TYPE = 1  # kDLCPU
RPC_SESSION_MASK = 128  # a remote device's type is its local type + 128 * (session index + 1)


def measure_module(lib, dev, specs: Sequence[Spec], reference: np.ndarray | None, config: dict) -> tuple:
    """Check, then time, main() of a loaded module on `dev` (local or remote).

    Returns ("ok", costs) or ("error", kind, message); TVM errors propagate (RuntimeError),
    so the caller decides what they mean.
    """
    func = lib["main"]
    if reference is not None:
        inputs = random_inputs(specs[:-1], np.random.default_rng(REFERENCE_SEED))
        args = [tvm.runtime.tensor(a, dev) for a in inputs] + [tvm.runtime.tensor(poisoned(specs[-1]), dev)]
        func(*args)
        problem = compare(args[-1].numpy(), reference)
        if problem:
            return ("error", ErrorKind.WRONG_RESULT.value, problem)
    inputs = random_inputs(specs[:-1], np.random.default_rng())
    args = [tvm.runtime.tensor(a, dev) for a in inputs] + [tvm.runtime.empty(specs[-1][0], specs[-1][1], dev)]
    func(*args)  # warm-up: first-touch page faults, lazy initialisation
    if _flushes(config, specs) and dev.dlpack_device_type() % RPC_SESSION_MASK == CPU_DEVICE_TYPE:
        timer = lib.time_evaluator("main", dev, number=1, repeat=config["number"] * config["repeat"], min_repeat_ms=0,
                                   f_preproc="cache_flush_cpu_non_first_arg")
    else:
        timer = lib.time_evaluator(
            "main", dev, number=config["number"], repeat=config["repeat"], min_repeat_ms=config["min_repeat_ms"]
        )
    return ("ok", tuple(float(x) for x in timer(*args).results))


def _flushes(config: dict, specs: Sequence[Spec]) -> bool:
    """Cold timing when the arguments that a model reads from memory (all but the first input and
    the output) are big enough not to stay cached between runs."""
    if not config.get("cache_flush"):
        return False
    flushed = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in specs[1:-1])
    return flushed >= config.get("cache_flush_min_bytes", 0)


def _timing(config: RunnerConfig) -> dict:
    return {"number": config.number, "repeat": config.repeat, "min_repeat_ms": config.min_repeat_ms,
            "cache_flush": config.cache_flush, "cache_flush_min_bytes": config.cache_flush_min_bytes}


def _failure(reply: tuple) -> MeasureResult:
    return MeasureResult.failure(ErrorKind(reply[1]), reply[2])


class _References:
    """Reference outputs per workload key, computed once in a worker; failures are kept too."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._outputs: dict[str, np.ndarray | MeasureResult] = {}

    def get(self, task: Task, worker: WorkerProcess) -> np.ndarray | MeasureResult:
        key = task.workload_key
        if key not in self._outputs:
            request = {"op": "reference", "key": key, "mod_json": tvm.ir.save_json(task.mod), "specs": arg_specs(task)}
            try:
                reply = worker.call(request, self.timeout_s)
            except TimeoutError:
                reply = ("error", ErrorKind.RUN_TIMEOUT.value, f"reference took over {self.timeout_s:g} s")
            except WorkerDied as e:
                reply = ("error", ErrorKind.CRASH.value, f"reference: {e}")
            if reply[0] == "ok":
                worker.known.add(key)  # the worker keeps it as well
            self._outputs[key] = reply[1] if reply[0] == "ok" else _failure(reply)
        return self._outputs[key]


class LocalRunner:
    """Runs artifacts on this machine, one at a time, in a warm worker process."""

    def __init__(self, config: RunnerConfig = RunnerConfig()):
        self.config = config
        self._worker = WorkerProcess(f"{__name__}:serve")
        self._references = _References(config.reference_timeout_s)

    def run(self, task: Task, builds: Sequence[BuildResult], target: Target) -> list[MeasureResult]:
        if not any(b.ok for b in builds):
            return [b.as_failure() for b in builds]
        reference = self._references.get(task, self._worker) if self.config.check_correctness else None
        results = []
        for b in builds:
            if not b.ok:
                results.append(b.as_failure())
            elif isinstance(reference, MeasureResult):  # the task itself does not run
                results.append(reference)
            else:
                results.append(self._run_one(task, b, target, reference))
        return results

    def _run_one(self, task: Task, build: BuildResult, target: Target, reference: np.ndarray | None) -> MeasureResult:
        w, key = self._worker, task.workload_key
        request = {
            "op": "run", "key": key, "artifact": build.artifact, "specs": arg_specs(task),
            "device": target.device_type, "timing": _timing(self.config), "check": reference is not None,
            "reference": reference if reference is not None and key not in w.known else None,
        }
        if reference is not None:
            w.known.add(key)
        try:
            reply = w.call(request, self.config.timeout_s)
        except TimeoutError:
            return MeasureResult.failure(ErrorKind.RUN_TIMEOUT, f"run took over {self.config.timeout_s:g} s")
        except WorkerDied as e:
            return MeasureResult.failure(ErrorKind.CRASH, str(e))
        return MeasureResult(costs=reply[1]) if reply[0] == "ok" else _failure(reply)

    def close(self) -> None:
        self._worker.close()

    def __enter__(self) -> "LocalRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RPCRunner:
    """Runs artifacts on RPC devices: one worker thread per device, one session per candidate.

    A session per candidate because the server's session timeout counts from the session's
    start: it is what kills a hanging kernel.  A candidate whose device drops out (the
    session dies: the server crashed or went away) is re-queued, up to `max_tries` tries.
    """

    def __init__(self, rpc_config: RPCConfig = RPCConfig(), config: RunnerConfig = RunnerConfig()):
        self.rpc = rpc_config
        self.config = config
        self._local = WorkerProcess(f"{__name__}:serve")  # computes references on the host
        self._references = _References(config.reference_timeout_s)

    def run(self, task: Task, builds: Sequence[BuildResult], target: Target) -> list[MeasureResult]:
        if not any(b.ok for b in builds):
            return [b.as_failure() for b in builds]
        reference = self._references.get(task, self._local) if self.config.check_correctness else None
        results: list[MeasureResult | None] = [b.as_failure() if not b.ok else None for b in builds]
        if isinstance(reference, MeasureResult):
            return [r or reference for r in results]
        jobs: queue.Queue = queue.Queue()
        for i, r in enumerate(results):
            if r is None:
                jobs.put((i, 1))
        lock = threading.Lock()

        def device_loop() -> None:
            while True:
                with lock:
                    if all(r is not None for r in results):
                        return
                try:
                    i, tries = jobs.get(timeout=0.05)
                except queue.Empty:
                    continue
                status, value = self._measure_remote(task, builds[i], target, reference)
                if status == "dropped" and tries < self.rpc.max_tries:
                    jobs.put((i, tries + 1))
                    continue
                if status == "dropped":
                    value = MeasureResult.failure(ErrorKind.CRASH, f"device dropped out {tries} times: {value}")
                with lock:
                    results[i] = value
                if status == "no_device":
                    return  # this slot has no device; the others go on

        threads = [threading.Thread(target=device_loop, daemon=True) for _ in range(max(1, self.rpc.devices))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        lost = MeasureResult.failure(ErrorKind.RUN, f"no device {self.rpc.key!r} available")
        return [r or lost for r in results]

    def _session(self):
        tracker = rpc.connect_tracker(self.rpc.tracker_host, self.rpc.tracker_port)
        # TrackerSession.request waits forever when no server is left; bound the wait on its
        # socket (private attribute) and give up after one try.
        tracker._sock.settimeout(self.rpc.request_timeout_s)
        try:
            return tracker.request(self.rpc.key, priority=1, session_timeout=self.rpc.session_timeout_s, max_retry=1)
        finally:
            tracker.close()

    def _measure_remote(self, task: Task, build: BuildResult, target: Target, reference) -> tuple[str, object]:
        """("done", MeasureResult) | ("dropped", message) | ("no_device", MeasureResult)."""
        try:
            remote = self._session()
        except (RuntimeError, OSError) as e:
            return ("no_device", MeasureResult.failure(ErrorKind.RUN, f"no device: {first_useful_line(e)}"))
        name = os.path.basename(build.artifact)  # unique; the session's folder goes with it
        try:
            remote.upload(build.artifact, target=name)
            lib = remote.load_module(name)
            dev = remote.device(target.device_type, 0)
            reply = measure_module(lib, dev, arg_specs(task), reference, _timing(self.config))
        except tvm.error.RPCSessionTimeoutError:
            timeout = self.rpc.session_timeout_s
            return ("done", MeasureResult.failure(ErrorKind.RUN_TIMEOUT, f"session passed {timeout:g} s"))
        except RuntimeError as e:
            if _alive(remote):
                return ("done", MeasureResult.failure(ErrorKind.RUN, first_useful_line(e)))
            return ("dropped", first_useful_line(e))
        result = MeasureResult(costs=reply[1]) if reply[0] == "ok" else _failure(reply)
        return ("done", result)

    def close(self) -> None:
        self._local.close()

    def __enter__(self) -> "RPCRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _alive(remote) -> bool:
    """Does the session still answer?  (A kernel error leaves it usable; a crash does not.)"""
    try:
        tvm.runtime.empty((1,), "float32", remote.cpu(0)).numpy()
    except RuntimeError:
        return False
    return True


# ---------------------------------------------------------------- worker side


def serve(request: dict, cache: dict) -> tuple:
    refs = cache.setdefault("references", {})
    if request["op"] == "reference":
        return _reference(request, refs)
    if request["reference"] is not None:
        refs[request["key"]] = request["reference"]
    reference = refs.get(request["key"]) if request["check"] else None
    if request["check"] and reference is None:
        return ("error", ErrorKind.RUN.value, "the runner worker has no reference output for this task")
    try:
        lib = tvm.runtime.load_module(request["artifact"])
    except (RuntimeError, OSError, ValueError) as e:
        return ("error", ErrorKind.RUN.value, f"cannot load: {first_useful_line(e)}")
    try:
        return measure_module(lib, tvm.device(request["device"], 0), request["specs"], reference, request["timing"])
    except RuntimeError as e:
        return ("error", ErrorKind.RUN.value, first_useful_line(e))


def _reference(request: dict, refs: dict) -> tuple:
    """Build the unscheduled task for the host CPU and run it on the fixed inputs."""
    specs = request["specs"]
    try:
        executable = tvm.compile(tvm.ir.load_json(request["mod_json"]), target=host_cpu_target())
        inputs = random_inputs(specs[:-1], np.random.default_rng(REFERENCE_SEED))
        args = [tvm.runtime.tensor(a) for a in inputs] + [tvm.runtime.empty(specs[-1][0], specs[-1][1])]
        executable["main"](*args)
    except RuntimeError as e:
        return ("error", ErrorKind.RUN.value, f"reference: {first_useful_line(e)}")
    refs[request["key"]] = args[-1].numpy()
    return ("ok", refs[request["key"]])
