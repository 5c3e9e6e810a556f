"""Measurement: build candidates into artifacts, run the artifacts, return MeasureResults.

The parts are injected, so the search can be tested with fakes:

    Builder.build(task, candidates, target) -> list[BuildResult]      (builder.py: LocalBuilder)
    Runner.run(task, builds, target)        -> list[MeasureResult]    (runner.py: LocalRunner, RPCRunner)
    Measurer(target, builder=..., runner=...).measure(task, candidates)

Failures are data: a candidate that does not replay, compile, run or match the reference
becomes a MeasureResult with an ErrorKind, never an exception that stops tuning.

The real builder and runner work in long-lived child processes (WorkerProcess below), so a
kernel that segfaults or hangs kills only a worker, which is then replaced.  Workers are
plain `subprocess` children talking over a socketpair with multiprocessing's Connection
(pickled messages).  Why not multiprocessing's "spawn" or "fork": TVM is not fork-safe once
initialised, and "spawn" re-imports the parent's __main__ in every child, which re-runs an
unguarded user script; a `python -c` child imports only what it serves.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any, Protocol, Sequence

from ..compiler.task import Task
from ..targets.base import Target
from .measure_types import Candidate, ErrorKind, MeasureResult


# ---------------------------------------------------------------- configuration and data


@dataclass(frozen=True, kw_only=True)
class BuilderConfig:
    workers: int = 2  # warm compile processes; each costs ~2.5 s of `import tvm` once
    timeout_s: float = 30.0  # per candidate: replay + validity check + compile + export


@dataclass(frozen=True, kw_only=True)
class RunnerConfig:
    number: int = 3  # calls per timed repeat
    repeat: int = 3  # timed repeats: one cost each
    min_repeat_ms: int = 50  # a repeat is lengthened (more calls) until it takes this long
    # CPU only: flush the caches of every argument but the first before each timed call, and time
    # single calls (number x repeat of them).  In a model the weights come from memory, not from a
    # cache warmed by the previous call: timed warm, GPT-2's 9 MB matmuls looked 2.4x faster than
    # they run in the model, and the search picked tilings that re-read the weights per row block.
    cache_flush: bool = True
    # ...but only where those arguments (the output aside) exceed this: smaller weights stay in the
    # last-level cache across a model run (MobileNetV2's 14 MB all fit in this machine's 48 MB L3), and
    # cold single calls of a 50 us kernel are mostly thread wake-up and noise
    cache_flush_min_bytes: int = 1 << 20
    timeout_s: float = 10.0  # per candidate: load + correctness check + timing
    check_correctness: bool = True  # compare with the unscheduled task's output first
    reference_timeout_s: float = 120.0  # building and running the unscheduled reference


@dataclass(frozen=True, kw_only=True)
class RPCConfig:
    tracker_host: str = "127.0.0.1"
    tracker_port: int = 9190
    key: str = "x86"  # device key the servers registered with
    devices: int = 1  # parallel sessions, one worker thread each
    session_timeout_s: float = 60.0  # the server kills a session (one candidate) after this
    request_timeout_s: float = 30.0  # waiting for the tracker to hand out a free device
    max_tries: int = 2  # a candidate whose device drops out is re-queued up to this many tries


@dataclass(frozen=True)
class BuildResult:
    artifact: str | None  # path of the exported module; None when the build failed
    error: ErrorKind | None = None
    message: str = ""
    build_secs: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.artifact is not None

    def as_failure(self) -> MeasureResult:
        return replace(MeasureResult.failure(self.error or ErrorKind.BUILD, self.message), build_secs=self.build_secs)


class Builder(Protocol):
    def build(self, task: Task, candidates: Sequence[Candidate], target: Target) -> list[BuildResult]: ...


class Runner(Protocol):
    def run(self, task: Task, builds: Sequence[BuildResult], target: Target) -> list[MeasureResult]: ...


# ---------------------------------------------------------------- the Measurer


class Measurer:
    """Builder + runner for one target.  It owns both: close() closes them."""

    def __init__(self, target: Target, *, builder: Builder, runner: Runner):
        self.target = target
        self.builder = builder
        self.runner = runner

    @classmethod
    def local(
        cls, target: Target, *, builder_config: BuilderConfig = BuilderConfig(), runner_config: RunnerConfig = RunnerConfig()
    ) -> "Measurer":
        # Imported here: builder.py and runner.py import this module's types.
        from .builder import LocalBuilder
        from .runner import LocalRunner

        return cls(target, builder=LocalBuilder(builder_config), runner=LocalRunner(runner_config))

    def measure(self, task: Task, candidates: Sequence[Candidate]) -> list[MeasureResult]:
        builds = self.builder.build(task, candidates, self.target)
        good = [i for i, b in enumerate(builds) if b.ok]
        try:
            runs = self.runner.run(task, [builds[i] for i in good], self.target) if good else []
        finally:
            for b in builds:  # every artifact has a unique name and is used once
                if b.artifact:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(b.artifact)
        results = [b.as_failure() for b in builds]
        for i, r in zip(good, runs):
            results[i] = replace(r, build_secs=builds[i].build_secs)
        return results

    def close(self) -> None:
        for part in (self.builder, self.runner):
            close = getattr(part, "close", None)
            if close is not None:
                close()

    def __enter__(self) -> "Measurer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- error messages

_TRACE_LINE = re.compile(r"^(Traceback|File |\^+$|~+$|#|\d+: )")


def first_useful_line(exc: BaseException) -> str:
    """One line for the record: TVM errors carry tracebacks and whole IR dumps before the point."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("Error message:"):  # ScheduleError: the IR dump comes first
            return f"{type(exc).__name__}: {ln.removeprefix('Error message:').strip()}"
    useful = [ln for ln in lines if not _TRACE_LINE.match(ln)]
    line = useful[0] if useful else ""
    return line if line.startswith(type(exc).__name__) else f"{type(exc).__name__}: {line}".rstrip(": ")


# ---------------------------------------------------------------- worker processes


class WorkerDied(Exception):
    """The child process exited (segfault, abort, killed) instead of answering."""


class WorkerProcess:
    """One long-lived child that answers requests with `handler` ("module:function").

    The handler is called as handler(request, cache) -> reply, with a dict `cache` that lives
    as long as the process (loaded tasks, targets, references).  `known` is the parent's view
    of which workload keys that cache holds, so a task is sent only once per process.
    """

    def __init__(self, handler: str, *, startup_timeout_s: float = 180.0):
        self.handler = handler
        self.startup_timeout_s = startup_timeout_s
        self.known: set[str] = set()
        self.ready = False
        self.started_at = 0.0
        self._proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.start()

    def start(self) -> None:
        parent, child = socket.socketpair()
        code = f"from {__name__} import worker_main; worker_main({child.fileno()}, {self.handler!r})"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # import what we import
        # Own session: a timeout kills the whole group (the linker too), and Ctrl-C in a
        # terminal reaches only the parent; children exit when their socket closes.
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code], pass_fds=(child.fileno(),), env=env,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        child.close()
        self.conn = Connection(parent.detach())
        self.known = set()
        self.ready = False
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def kill(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        self.conn.close()
        self._proc = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        """Ask politely (close the socket: the child sees EOF and exits), then insist."""
        if self._proc is None:
            return
        self.conn.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def death_message(self) -> str:
        try:
            code = self._proc.wait(timeout=10) if self._proc is not None else None
        except subprocess.TimeoutExpired:  # closed its socket but lingers: killed on restart
            return "worker stopped answering"
        if code is not None and code < 0:
            return f"worker killed by {signal.Signals(-code).name}"
        return f"worker exited with code {code} (see its stderr)"

    def receive(self) -> Any | None:
        """The next message; None if it was the start-up handshake.  Raises WorkerDied."""
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            raise WorkerDied(self.death_message()) from None
        if isinstance(msg, tuple) and msg and msg[0] == "ready":
            self.ready = True
            return None
        return msg

    def wait_ready(self) -> None:
        """Block until the child has imported its handler (start-up is not a candidate's time)."""
        while not self.ready:
            left = self.started_at + self.startup_timeout_s - time.monotonic()
            if left <= 0 or not self.conn.poll(left):
                self.kill()
                raise RuntimeError(f"measurement worker {self.handler} did not start in {self.startup_timeout_s:.0f} s")
            try:
                self.receive()
            except WorkerDied as e:
                raise RuntimeError(f"measurement worker {self.handler} failed to start: {e}") from None

    def call(self, request: Any, timeout_s: float) -> Any:
        """Send one request and wait for its reply.  Raises WorkerDied or TimeoutError; the
        worker is replaced in both cases (a timed-out worker may be stuck in a kernel)."""
        self.wait_ready()
        try:
            self.conn.send(request)
        except OSError:  # it died while idle (killed, out of memory)
            message = self.death_message()
            self.restart()
            raise WorkerDied(message) from None
        if not self.conn.poll(timeout_s):
            self.restart()
            raise TimeoutError(f"no answer in {timeout_s:g} s")
        try:
            return self.receive()
        except WorkerDied:
            self.restart()
            raise


def worker_main(fd: int, handler_spec: str) -> None:
    """Entry point of a worker process: serve requests until the parent closes the socket."""
    conn = Connection(fd)
    module, name = handler_spec.split(":")
    handler = getattr(importlib.import_module(module), name)
    cache: dict = {}
    try:
        conn.send(("ready", os.getpid()))
    except OSError:  # the parent closed before this worker finished starting (tuning ended): nothing to serve
        return
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        reply = handler(request, cache)
        try:
            conn.send(reply)
        except OSError:  # the parent gave up on this request and closed the socket
            return
