"""LocalBuilder: replay candidates and compile them in a pool of warm worker processes.

Parent side: `LocalBuilder.build` hands one candidate at a time to each idle worker and
collects the replies; a worker that dies or passes the timeout is replaced and its candidate
recorded as CRASH / BUILD_TIMEOUT.  Worker side: `serve` replays the trace onto the task
(cached per workload key), checks GPU limits, compiles and exports a uniquely named artifact.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import tempfile
import time
import uuid
import weakref
from collections import deque
from multiprocessing.connection import wait
from typing import Sequence

import tvm
from tvm.support import cc

from ..compiler.task import Task
from ..targets.base import Target, _plain
from .measure import BuilderConfig, BuildResult, WorkerDied, WorkerProcess, first_useful_line
from .measure_types import Candidate, ErrorKind

# Errors a replay or a compile of one candidate may raise (TVM's errors are RuntimeErrors;
# a mangled trace gives ValueError/LookupError/TypeError).  Anything else is a bug and
# kills the worker, which the parent reports as CRASH with the traceback on stderr.
_CANDIDATE_ERRORS = (RuntimeError, ValueError, LookupError, TypeError)


class LocalBuilder:
    """A pool of `config.workers` compile processes, started once and kept warm."""

    def __init__(self, config: BuilderConfig = BuilderConfig()):
        self.config = config
        self._dir = tempfile.mkdtemp(prefix="tilecraft-build-")
        self._remove_dir = weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)  # if never closed
        self._workers = [WorkerProcess(f"{__name__}:serve") for _ in range(max(1, config.workers))]
        self._mod_json: dict[str, str] = {}  # workload key -> tvm.ir.save_json(task.mod)
        self._counter = itertools.count()

    def build(self, task: Task, candidates: Sequence[Candidate], target: Target) -> list[BuildResult]:
        results: list[BuildResult | None] = [None] * len(candidates)
        pending = deque(range(len(candidates)))
        busy: dict[WorkerProcess, tuple[int, str, float]] = {}  # worker -> (index, artifact, start)
        target_json = json.dumps(_plain(target.tvm_target.export()), sort_keys=True)
        while pending or busy:
            for w in self._workers:
                if pending and w.ready and w not in busy:
                    i = pending.popleft()
                    artifact = os.path.join(self._dir, f"{next(self._counter)}-{uuid.uuid4().hex[:8]}.so")
                    try:
                        w.conn.send(self._request(w, task, candidates[i], target, target_json, artifact))
                    except OSError:  # it died while idle
                        results[i] = self._failed((i, artifact, time.monotonic()), ErrorKind.CRASH, w.death_message())
                        w.restart()
                        continue
                    busy[w] = (i, artifact, time.monotonic())
            for w in self._wait(busy):
                job = busy.pop(w, None)
                try:
                    reply = w.receive()
                except WorkerDied as e:
                    if job is None:
                        raise RuntimeError(f"build worker failed to start: {e}") from None
                    w.restart()
                    results[job[0]] = self._failed(job, ErrorKind.CRASH, str(e))
                    continue
                if job is not None:
                    results[job[0]] = _build_result(reply, time.monotonic() - job[2])
            now = time.monotonic()
            for w, job in list(busy.items()):
                if now - job[2] > self.config.timeout_s:
                    del busy[w]
                    w.restart()
                    results[job[0]] = self._failed(job, ErrorKind.BUILD_TIMEOUT, f"build took over {self.config.timeout_s:g} s")
        return results  # type: ignore[return-value]  # every slot is filled by now

    def _request(self, w: WorkerProcess, task: Task, cand: Candidate, target: Target, target_json: str, artifact: str) -> dict:
        key = task.workload_key
        if key not in self._mod_json:
            self._mod_json[key] = tvm.ir.save_json(task.mod)
        mod_json = None if key in w.known else self._mod_json[key]
        w.known.add(key)
        return {
            "key": key, "mod_json": mod_json, "trace": cand.trace_json, "target": target_json,
            "gpu_limits": dict(target.limits) if target.is_gpu else None,
            "cross_compiler": target.cross_compiler, "artifact": artifact,
        }

    def _wait(self, busy: dict) -> list[WorkerProcess]:
        """Workers with something to read: replies from busy ones, handshakes from starting ones."""
        watched = {w.conn: w for w in self._workers if w in busy or not w.ready}
        if busy:
            timeout = max(0.0, min(start for _, _, start in busy.values()) + self.config.timeout_s - time.monotonic())
        else:
            limit = self._workers[0].startup_timeout_s
            timeout = max(0.0, min(w.started_at for w in watched.values()) + limit - time.monotonic())
            if timeout == 0.0:
                raise RuntimeError(f"no build worker started in {limit:.0f} s")
        return [watched[c] for c in wait(list(watched), timeout + 0.01)]

    @staticmethod
    def _failed(job: tuple[int, str, float], kind: ErrorKind, message: str) -> BuildResult:
        with contextlib.suppress(FileNotFoundError):  # a half-written artifact
            os.remove(job[1])
        return BuildResult(None, kind, message, time.monotonic() - job[2])

    def close(self) -> None:
        for w in self._workers:
            w.close()
        self._remove_dir()

    def __enter__(self) -> "LocalBuilder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _build_result(reply: tuple, secs: float) -> BuildResult:
    if reply[0] == "ok":
        return BuildResult(reply[1], None, "", secs)
    return BuildResult(None, ErrorKind(reply[1]), reply[2], secs)


# ---------------------------------------------------------------- worker side


def serve(request: dict, cache: dict) -> tuple:
    """Replay, check, compile, export one candidate: ("ok", path) or ("error", kind, message)."""
    mods = cache.setdefault("mods", {})
    if request["mod_json"] is not None:
        mods[request["key"]] = tvm.ir.load_json(request["mod_json"])
    targets = cache.setdefault("targets", {})
    if request["target"] not in targets:
        targets[request["target"]] = tvm.target.Target(json.loads(request["target"]))
    target = targets[request["target"]]
    try:
        sch = Candidate(request["trace"]).apply(mods[request["key"]])
    except _CANDIDATE_ERRORS as e:
        return ("error", ErrorKind.INSTANTIATE.value, first_useful_line(e))
    if request["gpu_limits"] is not None:
        try:
            problem = gpu_problem(sch.mod, target, request["gpu_limits"])
        except _CANDIDATE_ERRORS as e:
            return ("error", ErrorKind.BUILD.value, first_useful_line(e))
        if problem:
            return ("error", ErrorKind.INVALID.value, problem)
    try:
        executable = tvm.compile(sch.mod, target=target)
        fcompile = cc.cross_compiler(request["cross_compiler"]) if request["cross_compiler"] else None
        executable.export_library(request["artifact"], fcompile=fcompile)
    except (*_CANDIDATE_ERRORS, OSError) as e:  # OSError: linker or cross compiler missing
        return ("error", ErrorKind.BUILD.value, first_useful_line(e))
    return ("ok", request["artifact"])


def gpu_problem(mod: tvm.IRModule, target: tvm.target.Target, limits: dict) -> str:
    """Why a GPU candidate cannot run ("" if it can): lowered kernels checked against limits."""
    pipeline, _, _ = tvm.tirx.get_default_tir_pipeline(target)
    bound = target if target.host is not None else target.with_host(tvm.target.Target({"kind": "llvm"}))
    with target:
        lowered = pipeline(tvm.tirx.transform.BindTarget(bound)(mod))
    kernels = {
        gv.name_hint: f for gv, f in lowered.functions.items()
        if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and int(f.attrs.get("calling_conv", 0)) == 2
    }
    if not kernels:  # no thread bindings: it would silently compile to a host loop
        return "no GPU kernel: the schedule binds no threads"
    for name, func in kernels.items():
        if not tvm.s_tir.analysis.verify_gpu_code(func, limits):
            return f"kernel {name} exceeds the target limits {limits}"
    return ""
