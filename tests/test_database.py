"""The tuning database: storage, queries, maintenance, crash safety, concurrency, and `tilecraft db`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import tvm
import tvm_ffi
from tvm import te
from tvm.s_tir import Schedule

from tilecraft.compiler.ir import TensorType
from tilecraft.compiler.task import Task, workload_key
from tilecraft.errors import DatabaseError
from tilecraft.search.database import Database, trace_hash
from tilecraft.search.db_commands import add_db_parser, run_db, target_label
from tilecraft.search.measure_types import SCHEMA_VERSION, Candidate, ErrorKind, MeasureResult, Record

TARGET = json.dumps({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}, sort_keys=True)
OTHER_TARGET = json.dumps({"kind": "cuda", "arch": "sm_80"}, sort_keys=True)


def ok(key: str, trace: str, *costs: float, target: str = TARGET, ts: float = 1000.0) -> Record:
    return Record(key, target, Candidate(trace, "sketch0"), MeasureResult(tuple(costs), None, "", 0.1, ts), "task", "v1")


def failed(key: str, trace: str, kind: ErrorKind = ErrorKind.BUILD, target: str = TARGET) -> Record:
    result = MeasureResult((), kind, "boom", 0.2, 1000.0)
    return Record(key, target, Candidate(trace, "sketch0"), result, "task", "v1")


@pytest.fixture(scope="module")
def matmul_task() -> Task:
    A = te.placeholder((64, 32), name="A")
    B = te.placeholder((32, 48), name="B")
    k = te.reduce_axis((0, 32), name="k")
    C = te.compute((64, 48), lambda i, j: te.sum(A[i, k] * B[k, j], axis=k), name="C")
    mod = tvm.IRModule({"main": te.create_prim_func([A, B, C])})
    types = (TensorType((64, 32), "float32"), TensorType((32, 48), "float32"), TensorType((64, 48), "float32"))
    return Task("matmul_64x48", workload_key(mod, types), mod, types, 2.0 * 64 * 48 * 32, 1, "matmul")


def real_trace(task: Task, factor: int) -> str:
    sch = Schedule(task.mod)
    i, _, _ = sch.get_loops(sch.get_sblock("C"))
    sch.split(i, [None, factor])
    return Candidate.from_schedule(sch).trace_json


# ---- storage and queries ---------------------------------------------------------------------------


def test_commit_and_query_roundtrip():
    with Database(":memory:") as db:
        batch = [ok("w1", "[1]", 3e-3, 5e-3), ok("w1", "[2]", 1e-3), failed("w1", "[3]"), ok("w2", "[1]", 2e-3)]
        assert db.commit(batch) == 4
        assert db.records() == batch  # every field survives, in commit order
        assert db.records("w1", TARGET, include_errors=False) == [batch[0], batch[1]]
        assert db.records(target_key=OTHER_TARGET) == []
        assert db.count("w1", TARGET) == 3 and db.count("w1", OTHER_TARGET) == 0
        assert db.records()[2].result.error is ErrorKind.BUILD and db.records()[2].result.message == "boom"


def test_best_orders_by_mean_skips_errors_and_repeats():
    with Database(":memory:") as db:
        db.commit([ok("w", "[1]", 4e-3), ok("w", "[2]", 1e-3, 3e-3), failed("w", "[0]", ErrorKind.RUN),
                   ok("w", "[3]", 1e-3), ok("w", "[3]", 1.5e-3, ts=2000.0), ok("w", "[9]", 1e-4, target=OTHER_TARGET)])
        best = db.best("w", TARGET, k=10)
        assert [r.candidate.trace_json for r in best] == ["[3]", "[2]", "[1]"]  # [3] once, at its best
        assert best[0].result.mean == pytest.approx(1e-3)
        assert [r.candidate.trace_json for r in db.best("w", TARGET)] == ["[3]"]
        assert db.best("w", OTHER_TARGET)[0].result.mean == pytest.approx(1e-4)
        assert db.best("nope", TARGET) == []


def test_duplicates_are_skipped_and_candidates_known():
    with Database(":memory:") as db:
        assert db.commit([ok("w", "[[1, 2], []]", 1e-3)]) == 1
        assert db.commit([ok("w", "[[1, 2], []]", 1e-3)]) == 0  # the very same measurement
        assert db.commit([ok("w", "[[1,2],[]]", 1e-3, ts=5.0)]) == 1  # a re-measurement is a new row
        assert db.commit([]) == 0
        assert db.has_candidate("w", TARGET, "[[1,2],[]]")  # JSON formatting does not matter
        assert db.has_candidate("w", TARGET, "[[1, 2], []]")
        assert not db.has_candidate("w", TARGET, "[[1,3],[]]")
        assert not db.has_candidate("w", OTHER_TARGET, "[[1,2],[]]")
        db.commit([failed("w", "[[7],[]]")])
        assert db.has_candidate("w", TARGET, "[[7],[]]")  # failures count as measured too
        assert db.measured_hashes("w", TARGET) == {trace_hash("[[1,2],[]]"), trace_hash("[[7],[]]")}


def test_file_database_uses_wal_and_reopens(tmp_path):
    path = tmp_path / "sub" / "tune.db"
    with Database(path) as db:
        db.commit([ok("w", "[1]", 1e-3)])
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    raw.close()
    with Database(path, create=False) as db:
        assert db.count("w", TARGET) == 1


def test_refuses_other_schema_version(tmp_path):
    path = tmp_path / "old.db"
    Database(path).close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    with pytest.raises(DatabaseError, match="schema version 999"):
        Database(path)


def test_refuses_corrupt_foreign_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(DatabaseError, match="garbage.db"):
        Database(garbage)
    text = tmp_path / "notes.db"
    text.write_text("hello, I am not a database\n" * 200)
    with pytest.raises(DatabaseError, match="notes.db"):
        Database(text)
    foreign = tmp_path / "foreign.db"
    raw = sqlite3.connect(foreign)
    raw.execute("CREATE TABLE people (name TEXT)")
    raw.commit()
    raw.close()
    with pytest.raises(DatabaseError, match="not a tilecraft"):
        Database(foreign)
    with pytest.raises(DatabaseError, match="no such"):
        Database(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_workloads_stored_once_and_rebuild_a_task(matmul_task):
    with Database(":memory:") as db:
        assert db.add_workload(matmul_task) is True
        assert db.add_workload(matmul_task) is False
        [summary] = db.workloads()
        assert (summary.workload_key, summary.target_key, summary.trials) == (matmul_task.workload_key, "", 0)
        entry = db.workload(matmul_task.workload_key)
        task = entry.to_task()
        assert tvm_ffi.structural_equal(task.mod, matmul_task.mod)
        assert workload_key(task.mod, task.arg_types) == matmul_task.workload_key
        assert (task.name, task.flops, task.kind, task.arg_types) == (
            matmul_task.name, matmul_task.flops, "matmul", matmul_task.arg_types)
        assert db.workload("nope") is None


def test_workload_summaries(matmul_task):
    key = matmul_task.workload_key
    with Database(":memory:") as db:
        db.add_workload(matmul_task)
        db.commit([ok(key, "[1]", 2e-6), ok(key, "[2]", 1e-6), failed(key, "[3]"), ok(key, "[1]", 9e-6, target=OTHER_TARGET),
                   ok("orphan", "[1]", 1e-3)])  # records whose workload was never stored still show
        rows = {(s.workload_key, s.target_key): s for s in db.workloads()}
        assert set(rows) == {(key, TARGET), (key, OTHER_TARGET), ("orphan", TARGET)}
        cpu = rows[key, TARGET]
        assert (cpu.task_name, cpu.trials, cpu.errors, cpu.best_cost) == ("matmul_64x48", 3, 1, 1e-6)
        assert cpu.gflops == pytest.approx(matmul_task.flops / 1e-6 / 1e9)
        assert rows["orphan", TARGET].task_name == "task" and rows["orphan", TARGET].gflops == 0.0


# ---- maintenance -------------------------------------------------------------------------------------


def _populate(db: Database, task: Task) -> None:
    db.add_workload(task)
    key = task.workload_key
    db.commit([ok(key, f"[{i}]", (10 - i) * 1e-4) for i in range(6)] + [failed(key, "[99]")])
    db.commit([ok(key, "[1]", 5e-4, target=OTHER_TARGET), ok(key, "[2]", 4e-4, target=OTHER_TARGET),
               failed("w_only_errors", "[0]")])


def test_distill_to_new_file_and_in_place(tmp_path, matmul_task):
    key = matmul_task.workload_key
    src = tmp_path / "full.db"
    with Database(src) as db:
        _populate(db, matmul_task)
        assert db.distill(tmp_path / "best2.db", k=2) == 4
        assert len(db.records()) == 10  # the source is untouched
        with pytest.raises(DatabaseError, match="same file"):
            db.distill(src)
    with Database(tmp_path / "best2.db") as out:
        assert [r.candidate.trace_json for r in out.records(key, TARGET)] == ["[5]", "[4]"]
        assert len(out.records(key, OTHER_TARGET)) == 2 and out.count("w_only_errors", TARGET) == 0
        assert out.workload(key) is not None  # workloads travel along
    with Database(src) as db:
        assert db.distill(k=1) == 2
        assert [(r.target_key, r.candidate.trace_json) for r in db.records()] == [(TARGET, "[5]"), (OTHER_TARGET, "[2]")]
    with sqlite3.connect(src) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_export_import_roundtrip_is_idempotent(tmp_path, matmul_task):
    with Database(":memory:") as db:
        _populate(db, matmul_task)
        lines = db.export_jsonl(tmp_path / "log.jsonl")
        original = db.records()
    assert lines == 1 + 10
    first = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert first["type"] == "workload" and first["schema"] == SCHEMA_VERSION
    with Database(tmp_path / "copy.db") as copy:
        assert copy.import_jsonl(tmp_path / "log.jsonl") == 10
        assert copy.import_jsonl(tmp_path / "log.jsonl") == 0
        assert copy.records() == original
        assert copy.workload(matmul_task.workload_key).script == matmul_task.mod.script()
        copy.commit([ok("new", "[1]", 1e-3)])
        copy.export_jsonl(tmp_path / "log2.jsonl")
    with Database(":memory:") as db:  # importing a superset adds only what is missing
        _populate(db, matmul_task)
        assert db.import_jsonl(tmp_path / "log2.jsonl") == 1


@pytest.mark.parametrize("line, message", [
    ("{not json", "log.jsonl:2"),
    ('{"type": "record", "schema": 1}', "missing field"),
    ('{"type": "record", "schema": 42}', "schema version 42"),
    ('{"type": "hat", "schema": 1}', "unknown line type"),
    ("[1, 2]", "not a JSON object"),
])
def test_import_rejects_bad_lines_without_partial_writes(tmp_path, line, message):
    good = {"type": "record", "schema": SCHEMA_VERSION, "workload_key": "w", "target_key": TARGET, "task_name": "t",
            "trace_json": "[1]", "sketch": "", "costs": [1e-3], "error": None, "message": "", "build_secs": 0.1,
            "timestamp": 1.0, "version": "v"}
    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps(good) + "\n" + line + "\n")
    with Database(":memory:") as db:
        with pytest.raises(DatabaseError, match=message):
            db.import_jsonl(path)
        assert db.records() == []  # the good first line was not committed alone
        with pytest.raises(DatabaseError, match="cannot read"):
            db.import_jsonl(tmp_path / "absent.jsonl")


def test_commit_waits_for_a_lock_held_by_another_connection(tmp_path):
    path = tmp_path / "locked.db"
    Database(path).close()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another writer, mid-transaction
    released = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    released.start()
    with Database(path, busy_timeout_ms=50, retry_secs=20.0) as db:  # busy timeout runs out; the retry loop waits
        db.commit([ok("w", "[1]", 1e-3)])
        assert db.count("w", TARGET) == 1
    released.join()
    holder.execute("BEGIN IMMEDIATE")
    with Database(path, busy_timeout_ms=50, retry_secs=0.3) as db:
        with pytest.raises(DatabaseError, match="locked"):
            db.commit([ok("w", "[2]", 1e-3)])
        assert db.count("w", TARGET) == 1
    holder.execute("ROLLBACK")
    holder.close()


# ---- several processes -----------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import os, sys, time
    from tilecraft.search.database import Database
    from tilecraft.search.measure_types import Candidate, MeasureResult, Record
    path, tag, batches, size, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    with Database(path) as db:
        print("ready", flush=True)
        while go != "-" and not os.path.exists(go):
            time.sleep(0.01)
        for b in range(batches):
            db.commit([Record("w", "t", Candidate(f'[["{tag}",{b},{i}]]', tag), MeasureResult((1e-3 + i * 1e-6,)),
                              f"{tag}:{b}") for i in range(size)])
            print(f"committed {b}", flush=True)
""")


def _writer(tmp_path, db_path, tag: str, batches: int, size: int, go: str = "-") -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen([sys.executable, str(script), str(db_path), tag, str(batches), str(size), go],
                            stdout=subprocess.PIPE, text=True)


def _batches(db_path) -> dict[str, int]:
    """task_name ("tag:batch") -> rows, read with plain sqlite3 (what survives on disk)."""
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return dict(raw.execute("SELECT task_name, COUNT(*) FROM records GROUP BY task_name").fetchall())


def test_sigkill_loses_no_committed_batch(tmp_path):
    db_path, size = tmp_path / "crash.db", 300
    for round_, wait in enumerate((0.0, 0.013)):
        proc = _writer(tmp_path, db_path, f"r{round_}", 10_000, size)
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(8):  # let it commit a few batches, then kill it wherever it is
            assert proc.stdout.readline().startswith("committed")
        time.sleep(wait)
        proc.send_signal(signal.SIGKILL)
        reported = {int(line.split()[1]) for line in proc.stdout.read().splitlines() if line.startswith("committed")}
        reported |= set(range(8))
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        on_disk = _batches(db_path)
        assert all(on_disk.get(f"r{round_}:{b}") == size for b in reported)  # nothing committed was lost
        assert all(n == size for n in on_disk.values())  # and no batch is half there
    with Database(db_path) as db:  # reopens normally and takes new work
        db.commit([ok("w", "[1]", 1e-3)])
        assert db.count("w", TARGET) == 1


def test_two_processes_commit_concurrently(tmp_path):
    db_path, go, batches, size = tmp_path / "shared.db", tmp_path / "go", 40, 25
    procs = [_writer(tmp_path, db_path, tag, batches, size, str(go)) for tag in ("a", "b")]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    go.touch()  # both connections are open: start writing at the same moment
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        assert out.count("committed") == batches
    on_disk = _batches(db_path)
    assert on_disk == {f"{tag}:{b}": size for tag in ("a", "b") for b in range(batches)}
    with Database(db_path) as db:
        assert db.count("w", "t") == 2 * batches * size


# ---- tilecraft db ------------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tilecraft")
    add_db_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    assert args.func is run_db
    return run_db(args)


@pytest.fixture
def tuned_db(tmp_path, matmul_task):
    path = tmp_path / "tuned.db"
    key = matmul_task.workload_key
    with Database(path) as db:
        db.add_workload(matmul_task)
        db.commit([ok(key, real_trace(matmul_task, 8), 2e-6), ok(key, real_trace(matmul_task, 16), 4e-6),
                   failed(key, real_trace(matmul_task, 4)), ok(key, "[[], []]", 8e-6)])
    return path


def test_cli_list(tuned_db, matmul_task, capsys):
    assert run_cli("db", "list", "--db", str(tuned_db)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["workload", "task", "target", "trials", "errors", "best", "µs", "GFLOP/s"]
    row = out[2].split()
    assert row[0] == matmul_task.workload_key and row[1] == "matmul_64x48"
    assert row[-4:] == ["4", "1", "2.00", f"{matmul_task.flops / 2e-6 / 1e9:.1f}"]
    assert target_label(TARGET) == "llvm skylake-avx512"


def test_cli_show_prints_traces_as_python(tuned_db, matmul_task, capsys):
    assert run_cli("db", "show", "--db", str(tuned_db), matmul_task.workload_key[:8], "--k", "3") == 0
    out = capsys.readouterr().out
    assert "#1  2.00 µs" in out and "#3  8.00 µs" in out and "#4" not in out
    assert 'sch.get_sblock(name="C", func_name="main")' in out
    assert "factors=[None, 8]" in out.split("#2")[0] and "factors=[None, 16]" in out.split("#2")[1]
    assert "trace does not replay" not in out.split("#3")[0]
    with pytest.raises(DatabaseError, match="no workload"):
        run_cli("db", "show", "--db", str(tuned_db), "zzz")


def test_cli_distill_export_import(tuned_db, tmp_path, matmul_task, capsys):
    best = tmp_path / "best.db"
    assert run_cli("db", "distill", "--db", str(tuned_db), "-o", str(best)) == 0
    with Database(best) as db:
        assert [r.result.mean for r in db.records()] == [2e-6]
    with pytest.raises(DatabaseError, match="already exists"):
        run_cli("db", "distill", "--db", str(tuned_db), "-o", str(best))
    log = tmp_path / "log.jsonl"
    assert run_cli("db", "export", "--db", str(tuned_db), "-o", str(log)) == 0
    assert len(log.read_text().splitlines()) == 5
    fresh = tmp_path / "fresh.db"
    assert run_cli("db", "import", "--db", str(fresh), str(log)) == 0
    assert run_cli("db", "import", "--db", str(fresh), str(log)) == 0
    assert "imported 0 new records" in capsys.readouterr().out
    with Database(fresh) as db:
        assert db.count(matmul_task.workload_key, TARGET) == 4


def test_cli_errors_are_database_errors(tmp_path):
    with pytest.raises(DatabaseError, match="no such"):
        run_cli("db", "list", "--db", str(tmp_path / "missing.db"))
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"\x00junk" * 1000)
    with pytest.raises(DatabaseError, match="bad.db"):
        run_cli("db", "list", "--db", str(bad))
    with pytest.raises(DatabaseError, match="missing.jsonl"):
        run_cli("db", "import", "--db", str(tmp_path / "x.db"), str(tmp_path / "missing.jsonl"))
