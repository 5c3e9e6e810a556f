"""Tuning end to end with the real builder, runner and SQLite database (CPU)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te

import tilecraft as tc
from tilecraft.cli import tune_main
from tilecraft.compiler.ir import TensorType
from tilecraft.compiler.task import Task, workload_key
from tilecraft.search.database import Database
from tilecraft.search.measure import Measurer
from tilecraft.search.policies import make_policy_factory
from tilecraft.search.tuner import TuneConfig, tune_tasks
from tilecraft.targets import resolve_target

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "tiny_cnn.onnx"
TARGET = resolve_target("llvm")


def matmul_task(n: int = 512) -> Task:
    a = te.placeholder((n, n), name="A")
    b = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="T_matmul")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b, c])})
    types = (TensorType((n, n), "float32"),) * 3
    return Task("matmul_512", workload_key(mod, types), mod, types, 2.0 * n**3, 1, "matmul")


def test_tune_matmul_reload_best_and_check_numerics(tmp_path):
    task = matmul_task()
    config = TuneConfig(trials=32, batch_size=16, progress=False)
    with Database(str(tmp_path / "mm.db")) as db, Measurer.local(TARGET) as measurer:
        db.add_workload(task)
        factory, finish = make_policy_factory(TARGET, db, config)
        result = tune_tasks([task], TARGET, measurer=measurer, database=db, policy_factory=factory, config=config)
        finish()
        assert result.trials == 32
        records = db.records(task.workload_key, TARGET.key)
        assert len(records) == 32
        default = [r for r in records if r.candidate.sketch == "default"]
        assert default and default[0].result.ok  # the default schedule is measured first
        best = db.best(task.workload_key, TARGET.key, k=1)[0]
        assert best.result.mean <= default[0].result.mean  # tuning never ends worse than the default
    # reload the best record from the file, rebuild, check numerics on fresh inputs
    with Database(str(tmp_path / "mm.db")) as db:
        best = db.best(task.workload_key, TARGET.key, k=1)[0]
    sch = best.candidate.apply(task.mod)
    lib = tvm.compile(sch.mod, target=TARGET.tvm_target)
    rng = np.random.default_rng(123)
    a, b = (rng.uniform(-1, 1, (512, 512)).astype("float32") for _ in range(2))
    c = tvm.runtime.empty((512, 512), "float32", tvm.cpu())
    lib(tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    np.testing.assert_allclose(c.numpy(), a @ b, rtol=1e-3, atol=1e-3)


def test_tune_then_rebuild_from_records_without_measuring(tmp_path, capsys):
    db, out = tmp_path / "t.db", tmp_path / "tiny.so"
    assert tune_main([str(EXAMPLE), "--input-shape", "input=1x3x32x32", "--trials", "24", "--db", str(db),
                      "-o", str(out), "--quiet"]) == 0
    assert (tmp_path / "tiny.tuning.png").exists()
    with Database(str(db)) as d:
        n_records = len(d.records())
    assert n_records == 24
    prepared = tc.prepare(str(EXAMPLE), input_shapes={"input": (1, 3, 32, 32)})
    module, report = tc.api.build_prepared(prepared, database=str(db))
    assert report.tuned >= 1  # at least one task built from a record
    with Database(str(db)) as d:
        assert len(d.records()) == n_records  # --trials 0 measures nothing
    x = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype("float32")
    import onnxruntime as ort

    want = ort.InferenceSession(str(EXAMPLE), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(module.run({"input": x})["logits"], want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_sigkill_midway_loses_no_committed_record_and_resumes(tmp_path):
    db = tmp_path / "kill.db"
    cmd = [sys.executable, "-c", "import sys; from tilecraft.cli import tune_main; sys.exit(tune_main(sys.argv[1:]))",
           str(EXAMPLE), "--input-shape", "input=1x3x32x32", "--trials", "2000", "--db", str(db), "-o",
           str(tmp_path / "never.so"), "--quiet", "--strategy", "random"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        deadline = time.time() + 240
        seen = 0
        while time.time() < deadline and seen < 32:  # wait until a few batches are committed
            time.sleep(2)
            if db.exists():
                with sqlite3.connect(str(db), timeout=30) as con:
                    try:
                        seen = con.execute("select count(*) from records").fetchone()[0]
                    except sqlite3.OperationalError:
                        seen = 0
        assert seen >= 32, "tuning committed nothing within the time limit"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the tuner and its worker processes
        proc.wait()
    with sqlite3.connect(str(db)) as con:
        assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    with Database(str(db)) as d:
        before = {(r.workload_key, r.candidate.trace_json) for r in d.records()}
    assert len(before) >= seen
    # the next run resumes: it keeps every record and measures only new candidates
    assert tune_main([str(EXAMPLE), "--input-shape", "input=1x3x32x32", "--trials", "16", "--db", str(db),
                      "-o", str(tmp_path / "resumed.so"), "--quiet", "--strategy", "random"]) == 0
    with Database(str(db)) as d:
        after = [(r.workload_key, r.candidate.trace_json) for r in d.records()]
    assert before <= set(after)
    assert len(after) == len(before) + 16 and len(set(after)) == len(after)
