"""Distributed measurement through TVM's RPC tracker: two servers on 127.0.0.1, one killed
while the tuning runs; the tuning goes on with the other and no record is lost."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time

import pytest

from tilecraft.search.database import Database
from tilecraft.search.measure import Measurer
from tilecraft.search.measure_types import ErrorKind
from tilecraft.search.policies import make_policy_factory
from tilecraft.search.tuner import TuneConfig, _make_measurer, tune_tasks
from tilecraft.targets import resolve_target

from test_tune_e2e import matmul_task

TARGET = resolve_target("llvm")
KEY = "tc-rpc-tune"


def _free_port_base() -> int:
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(41000, 60000, 100)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base))
                return base
            except OSError:
                continue
    raise RuntimeError("no free port range")


def _wait_for_servers(port: int, n: int, timeout_s: float = 60.0) -> None:
    from tvm import rpc

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            queue = rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"].get(KEY, {})
            if int(queue.get("free", 0)) >= n:
                return
        except (RuntimeError, OSError, ConnectionError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{n} RPC servers did not register with the tracker in {timeout_s:g} s")


@pytest.fixture()
def tracker_with_two_servers():
    base = _free_port_base()
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                               "--port", str(base), "--port-end", str(base + 50)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(1.5)
        servers = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                                     "--port", str(base + 50 + 20 * k), "--port-end", str(base + 70 + 20 * k),
                                     "--tracker", f"127.0.0.1:{base}", "--key", KEY],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for k in range(2)]
        procs += servers
        _wait_for_servers(base, 2)
        yield base, servers
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait(timeout=10)


def test_tuning_survives_a_server_killed_midway(tmp_path, tracker_with_two_servers):
    port, servers = tracker_with_two_servers
    task = matmul_task(128)
    config = TuneConfig(trials=24, batch_size=8, progress=False, strategy="random",
                        rpc_tracker=f"127.0.0.1:{port}", rpc_key=KEY)
    killed = []

    def kill_one_after_the_first_round(state, results):
        if not killed:
            servers[0].kill()
            servers[0].wait(timeout=10)
            killed.append(time.time())

    with Database(str(tmp_path / "rpc.db")) as db:
        db.add_workload(task)
        measurer = _make_measurer(TARGET, config, Measurer)
        try:
            factory, finish = make_policy_factory(TARGET, db, config)
            result = tune_tasks([task], TARGET, measurer=measurer, database=db, policy_factory=factory,
                                config=config, on_round=kill_one_after_the_first_round)
            finish()
        finally:
            measurer.close()
        assert killed, "the server was never killed"
        records = db.records(task.workload_key, TARGET.key)
        # every proposed candidate was committed, measured or recorded as an error
        assert len(records) == result.trials == 24
        after = [r for r in records if r.result.timestamp >= killed[0]]
        assert after, "no round ran after the kill"
        # the surviving server measured the later rounds: no candidate lost to "no device"
        assert sum(r.result.ok for r in after) >= len(after) // 2, [r.result for r in after]
        assert not any(r.result.error is ErrorKind.RUN and "no device" in r.result.message for r in after)
        assert db.best(task.workload_key, TARGET.key, k=1)[0].result.ok
