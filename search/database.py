"""The tuning database: an append-only SQLite store of measured candidates.

One file holds three tables:
  meta       the schema version (a file of another version is refused, not misread)
  workloads  one row per workload key: task name, the PrimFunc as TVMScript, FLOPs
  records    one row per measurement, keyed by workload key + target key

Rows are only ever inserted (`distill` is the one operation that deletes). Each row
carries a hash of its content, so committing or importing the same record twice is a
no-op, and a hash of its trace, so the search can ask "was this candidate measured?".

Several processes may write one file at once: WAL mode, a busy timeout, and each
batch is one `BEGIN IMMEDIATE` transaction retried while the file is locked. A batch
is durable once `commit` returns (synchronous=FULL), even if the process is SIGKILLed.

The database knows only serialized forms (trace JSON, TVMScript text); it does not
import TVM itself (measure_types does, for the Candidate helpers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from ..errors import DatabaseError
from .measure_types import SCHEMA_VERSION, Candidate, ErrorKind, MeasureResult, Record

APPLICATION = "tilecraft-tuning-db"

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workloads (
    workload_key TEXT PRIMARY KEY,
    task_name    TEXT NOT NULL,
    script       TEXT NOT NULL,          -- mod.script(): the unscheduled {"main": PrimFunc}
    flops        REAL NOT NULL,
    arg_types    TEXT NOT NULL,          -- JSON [[shape, dtype], ...], output last
    kind         TEXT NOT NULL,
    created      REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    record_hash  TEXT NOT NULL UNIQUE,   -- content hash: makes commit/import idempotent
    workload_key TEXT NOT NULL,
    target_key   TEXT NOT NULL,
    task_name    TEXT NOT NULL,
    trace_hash   TEXT NOT NULL,
    trace_json   TEXT NOT NULL,
    sketch       TEXT NOT NULL,
    costs        TEXT NOT NULL,          -- JSON list of seconds
    mean_cost    REAL,                   -- NULL unless the measurement succeeded
    error_kind   TEXT,
    message      TEXT NOT NULL,
    build_secs   REAL NOT NULL,
    timestamp    REAL NOT NULL,
    version      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_trace ON records (workload_key, target_key, trace_hash);
CREATE INDEX IF NOT EXISTS records_best ON records (workload_key, target_key, mean_cost);
"""

_RECORD_COLUMNS = (
    "record_hash, workload_key, target_key, task_name, trace_hash, trace_json, sketch,"
    " costs, mean_cost, error_kind, message, build_secs, timestamp, version"
)
_SELECT_RECORD = (
    "SELECT workload_key, target_key, task_name, trace_json, sketch, costs, error_kind,"
    " message, build_secs, timestamp, version FROM records"
)


def trace_hash(trace_json: str) -> str:
    """Hash of a trace, insensitive to JSON formatting (the same schedule hashes the same)."""
    try:
        text = json.dumps(json.loads(trace_json), separators=(",", ":"), sort_keys=True)
    except json.JSONDecodeError:
        text = trace_json.strip()  # not JSON: still a stable identity for the row
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class WorkloadEntry:
    """A stored workload: enough to rebuild its Task (see `to_task`)."""

    workload_key: str
    task_name: str
    script: str
    flops: float
    arg_types: tuple[tuple[tuple[int, ...], str], ...]
    kind: str

    def to_task(self):
        """Parse the TVMScript back into a Task (imports TVM, unlike the rest of this module)."""
        import tvm

        from ..compiler.ir import TensorType
        from ..compiler.task import Task

        mod = tvm.script.from_source(self.script)
        if not isinstance(mod, tvm.IRModule):
            mod = tvm.IRModule({"main": mod})
        types = tuple(TensorType(tuple(shape), dtype) for shape, dtype in self.arg_types)
        return Task(self.task_name, self.workload_key, mod, types, self.flops, 1, self.kind)


@dataclass(frozen=True)
class WorkloadSummary:
    """One line of `tilecraft db list`: a workload on one target (target_key "" if never measured)."""

    workload_key: str
    target_key: str
    task_name: str
    flops: float
    trials: int
    errors: int
    best_cost: float  # seconds; inf when nothing succeeded

    @property
    def gflops(self) -> float:
        return self.flops / self.best_cost / 1e9 if self.flops and math.isfinite(self.best_cost) else 0.0


class Database:
    """`Database(path)` opens or creates a tuning database; `Database(":memory:")` for tests."""

    def __init__(self, path: str | os.PathLike, *, create: bool = True, busy_timeout_ms: int = 30_000,
                 retry_secs: float = 120.0):
        self.path = str(path)
        self._retry_secs = retry_secs
        in_memory = self.path == ":memory:"
        if not in_memory and not create and not os.path.isfile(self.path):
            raise DatabaseError(f"{self.path}: no such tuning database")
        if not in_memory and create:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per batch.
            self._conn = sqlite3.connect(self.path, timeout=busy_timeout_ms / 1000, isolation_level=None)
        except sqlite3.Error as e:
            raise DatabaseError(f"{self.path}: cannot open ({e})") from None
        try:
            self._setup(busy_timeout_ms)
        except BaseException:
            self._conn.close()
            raise

    # ---- opening -------------------------------------------------------------------------

    def _setup(self, busy_timeout_ms: int) -> None:
        with self._errors("not a readable SQLite database"):
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            self._retry(lambda: self._conn.execute("PRAGMA journal_mode = WAL").fetchone())
            self._conn.execute("PRAGMA synchronous = FULL")
            tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:
            raise DatabaseError(f"{self.path}: an SQLite file, but not a tilecraft tuning database")
        if not tables:
            with self._transaction() as conn:
                for statement in _statements(_TABLES):
                    conn.execute(statement)
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('application', ?)", (APPLICATION,))
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        with self._errors("cannot read the meta table"):
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("application") != APPLICATION:
            raise DatabaseError(f"{self.path}: not a tilecraft tuning database")
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise DatabaseError(
                f"{self.path}: schema version {meta.get('schema_version')}, this tilecraft reads version "
                f"{SCHEMA_VERSION}; re-tune, or export/convert it with the tilecraft that wrote it"
            )

    # ---- writing -------------------------------------------------------------------------

    def commit(self, records: Iterable[Record]) -> int:
        """Append a batch in one transaction; returns how many rows were new (duplicates are skipped)."""
        rows = [_record_row(r) for r in records]
        if not rows:
            return 0
        with self._transaction() as conn:
            before = conn.total_changes
            conn.executemany(f"INSERT OR IGNORE INTO records ({_RECORD_COLUMNS}) VALUES ({_marks(14)})", rows)
            return conn.total_changes - before

    def add_workload(self, task) -> bool:
        """Store a Task's workload once (idempotent); returns True if it was new."""
        types = tuple((tuple(t.shape), t.dtype) for t in task.arg_types)
        entry = WorkloadEntry(task.workload_key, task.name, task.mod.script(), float(task.flops), types, task.kind)
        return self._insert_workloads([entry]) == 1

    def _insert_workloads(self, entries: list[WorkloadEntry]) -> int:
        rows = [(e.workload_key, e.task_name, e.script, e.flops,
                 json.dumps([[list(s), d] for s, d in e.arg_types]), e.kind, time.time()) for e in entries]
        with self._transaction() as conn:
            before = conn.total_changes
            conn.executemany(f"INSERT OR IGNORE INTO workloads VALUES ({_marks(7)})", rows)
            return conn.total_changes - before

    # ---- reading -------------------------------------------------------------------------

    def best(self, workload_key: str, target_key: str, k: int = 1) -> list[Record]:
        """The k fastest distinct candidates that succeeded, lowest mean cost first."""
        return [record for _, record in self._best_rows(workload_key, target_key, k)]

    def _best_rows(self, workload_key: str, target_key: str, k: int) -> list[tuple[int, Record]]:
        sql = (_SELECT_RECORD.replace("SELECT ", "SELECT id, trace_hash, ", 1) +
               " WHERE workload_key = ? AND target_key = ? AND mean_cost IS NOT NULL ORDER BY mean_cost, id")
        out, seen = [], set()
        with self._errors("cannot read records"):
            for row_id, t_hash, *row in self._conn.execute(sql, (workload_key, target_key)):
                if len(out) >= k:
                    break
                if t_hash not in seen:  # the same trace measured twice counts once
                    seen.add(t_hash)
                    out.append((row_id, _row_record(tuple(row))))
        return out

    def records(self, workload_key: str | None = None, target_key: str | None = None, *,
                include_errors: bool = True) -> list[Record]:
        """All records (optionally of one workload / target), in commit order."""
        where, args = _where(workload_key, target_key)
        if not include_errors:
            where.append("mean_cost IS NOT NULL")
        sql = f"{_SELECT_RECORD}{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY id"
        with self._errors("cannot read records"):
            return [_row_record(r) for r in self._conn.execute(sql, args)]

    def count(self, workload_key: str, target_key: str) -> int:
        """Trials of a workload on a target, failed ones included."""
        with self._errors("cannot read records"):
            return self._conn.execute("SELECT COUNT(*) FROM records WHERE workload_key = ? AND target_key = ?",
                                      (workload_key, target_key)).fetchone()[0]

    def has_candidate(self, workload_key: str, target_key: str, trace_json: str) -> bool:
        """Was this trace already measured (successfully or not) for this workload and target?"""
        sql = "SELECT 1 FROM records WHERE workload_key = ? AND target_key = ? AND trace_hash = ? LIMIT 1"
        with self._errors("cannot read records"):
            return self._conn.execute(sql, (workload_key, target_key, trace_hash(trace_json))).fetchone() is not None

    def measured_hashes(self, workload_key: str, target_key: str) -> set[str]:
        """`trace_hash` of every measured candidate: one query instead of one per candidate."""
        sql = "SELECT DISTINCT trace_hash FROM records WHERE workload_key = ? AND target_key = ?"
        with self._errors("cannot read records"):
            return {r[0] for r in self._conn.execute(sql, (workload_key, target_key))}

    def workload(self, workload_key: str) -> WorkloadEntry | None:
        with self._errors("cannot read workloads"):
            row = self._conn.execute("SELECT workload_key, task_name, script, flops, arg_types, kind"
                                     " FROM workloads WHERE workload_key = ?", (workload_key,)).fetchone()
        return None if row is None else _row_workload(row)

    def workloads(self) -> list[WorkloadSummary]:
        """One row per (workload, target) measured, plus stored workloads never measured."""
        sql = """
            SELECT r.workload_key, r.target_key, COALESCE(w.task_name, MAX(r.task_name)), COALESCE(w.flops, 0),
                   COUNT(*), SUM(r.mean_cost IS NULL), MIN(r.mean_cost)
              FROM records r LEFT JOIN workloads w ON w.workload_key = r.workload_key
             GROUP BY r.workload_key, r.target_key
            UNION ALL
            SELECT w.workload_key, '', w.task_name, w.flops, 0, 0, NULL FROM workloads w
             WHERE NOT EXISTS (SELECT 1 FROM records r WHERE r.workload_key = w.workload_key)
            ORDER BY 3, 1, 2"""
        with self._errors("cannot read workloads"):
            rows = self._conn.execute(sql).fetchall()
        return [WorkloadSummary(key, target, name, float(flops), trials, errors, math.inf if best is None else best)
                for key, target, name, flops, trials, errors, best in rows]

    # ---- maintenance ---------------------------------------------------------------------

    def distill(self, path_out: str | os.PathLike | None = None, *, k: int = 1) -> int:
        """Keep only the best k successful candidates per (workload, target), and every workload.

        Into a new database at `path_out`, or in place when it is None. Returns the records kept.
        """
        keep = [row for key, target in self._pairs() for row in self._best_rows(key, target, k)]
        if path_out is None:
            with self._transaction() as conn:  # the one place rows are deleted
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS keep (id INTEGER PRIMARY KEY)")
                conn.execute("DELETE FROM keep")
                conn.executemany("INSERT INTO keep VALUES (?)", [(row_id,) for row_id, _ in keep])
                conn.execute("DELETE FROM records WHERE id NOT IN (SELECT id FROM keep)")
            with self._errors("cannot vacuum"):
                self._retry(lambda: self._conn.execute("VACUUM"))
            return len(keep)
        if os.path.abspath(path_out) == os.path.abspath(self.path):
            raise DatabaseError(f"{self.path}: distill into the same file; pass no output to distill in place")
        with Database(path_out, retry_secs=self._retry_secs) as out:
            out._insert_workloads(self._workload_entries())
            out.commit(record for _, record in keep)
        return len(keep)

    def export_jsonl(self, path: str | os.PathLike) -> int:
        """Write workloads, then records, one JSON object per line; returns the lines written."""
        lines = [json.dumps({"type": "workload", "schema": SCHEMA_VERSION, **_workload_json(e)})
                 for e in self._workload_entries()]
        lines += [json.dumps({"type": "record", "schema": SCHEMA_VERSION, **_record_json(r)})
                  for r in self.records()]
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)
            os.replace(tmp, path)  # never leave a half-written export behind
        except OSError as e:
            raise DatabaseError(f"{path}: cannot write ({e.strerror})") from None
        return len(lines)

    def import_jsonl(self, path: str | os.PathLike) -> int:
        """Add the workloads and records of a JSONL export; rows already present are skipped.

        The whole file is validated first, then committed in one transaction per table.
        Returns the number of new records.
        """
        workloads, records = [], []
        try:
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        _parse_line(line, f"{path}:{n}", workloads, records)
        except OSError as e:
            raise DatabaseError(f"{path}: cannot read ({e.strerror})") from None
        except UnicodeDecodeError:
            raise DatabaseError(f"{path}: not a UTF-8 JSON-lines file") from None
        self._insert_workloads(workloads)
        return self.commit(records)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- helpers -------------------------------------------------------------------------

    def _pairs(self) -> list[tuple[str, str]]:
        with self._errors("cannot read records"):
            return self._conn.execute("SELECT DISTINCT workload_key, target_key FROM records ORDER BY 1, 2").fetchall()

    def _workload_entries(self) -> list[WorkloadEntry]:
        with self._errors("cannot read workloads"):
            rows = self._conn.execute("SELECT workload_key, task_name, script, flops, arg_types, kind"
                                      " FROM workloads ORDER BY created, workload_key").fetchall()
        return [_row_workload(r) for r in rows]

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """sqlite3 errors become one DatabaseError that names the file."""
        try:
            yield
        except sqlite3.Error as e:
            raise DatabaseError(f"{self.path}: {what} ({e})") from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock up front (no read->write upgrade deadlock).

        The body must only execute statements: on a lock error it is not re-run, the whole
        transaction is, which is why callers pass their rows in, fully prepared.
        """
        with self._errors("write failed"):
            self._retry(lambda: self._conn.execute("BEGIN IMMEDIATE"))
            try:
                yield self._conn
                self._retry(lambda: self._conn.execute("COMMIT"))
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _retry(self, step):
        """Run `step`, retrying while another process holds the lock past the busy timeout."""
        deadline, delay = time.monotonic() + self._retry_secs, 0.01
        while True:
            try:
                return step()
            except sqlite3.OperationalError as e:
                if not _is_locked(e) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


# ---- row <-> value conversions ---------------------------------------------------------------


def _statements(script: str) -> list[str]:
    """Split the schema into statements (executescript would COMMIT our open transaction)."""
    lines = [line.split("--")[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _is_locked(e: sqlite3.OperationalError) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def _where(workload_key: str | None, target_key: str | None) -> tuple[list[str], list[str]]:
    pairs = [("workload_key = ?", workload_key), ("target_key = ?", target_key)]
    return [c for c, v in pairs if v is not None], [v for _, v in pairs if v is not None]


def _record_json(r: Record) -> dict[str, Any]:
    res = r.result
    return {"workload_key": r.workload_key, "target_key": r.target_key, "task_name": r.task_name,
            "trace_json": r.candidate.trace_json, "sketch": r.candidate.sketch,
            "costs": [float(c) for c in res.costs],  # floats: the content hash must survive a round trip
            "error": res.error.value if res.error else None, "message": res.message,
            "build_secs": float(res.build_secs), "timestamp": float(res.timestamp), "version": r.version}


def _record_row(r: Record) -> tuple:
    d = _record_json(r)
    t_hash = trace_hash(d["trace_json"])
    content = {**d, "trace_json": t_hash}  # formatting of the trace does not make a new record
    r_hash = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return (r_hash, d["workload_key"], d["target_key"], d["task_name"], t_hash, d["trace_json"], d["sketch"],
            json.dumps(d["costs"]), r.result.mean if r.result.ok else None, d["error"], d["message"],
            float(d["build_secs"]), float(d["timestamp"]), d["version"])


def _row_record(row: tuple) -> Record:
    workload_key, target_key, task_name, trace_json, sketch, costs, error, message, build_secs, ts, version = row
    result = MeasureResult(tuple(json.loads(costs)), ErrorKind(error) if error else None, message, build_secs, ts)
    return Record(workload_key, target_key, Candidate(trace_json, sketch), result, task_name, version)


def _row_workload(row: tuple) -> WorkloadEntry:
    key, name, script, flops, arg_types, kind = row
    types = tuple((tuple(shape), dtype) for shape, dtype in json.loads(arg_types))
    return WorkloadEntry(key, name, script, float(flops), types, kind)


def _workload_json(e: WorkloadEntry) -> dict[str, Any]:
    return {"workload_key": e.workload_key, "task_name": e.task_name, "script": e.script, "flops": e.flops,
            "arg_types": [[list(s), d] for s, d in e.arg_types], "kind": e.kind}


def _parse_line(line: str, where: str, workloads: list[WorkloadEntry], records: list[Record]) -> None:
    """Validate one JSONL line and append what it holds; any problem is a DatabaseError at `where`."""
    try:
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise TypeError("not a JSON object")
        if obj.get("schema") != SCHEMA_VERSION:
            raise DatabaseError(f"{where}: schema version {obj.get('schema')}, expected {SCHEMA_VERSION}")
        kind = obj.get("type")
        if kind == "workload":
            types = tuple((tuple(int(d) for d in s), str(t)) for s, t in obj["arg_types"])
            workloads.append(WorkloadEntry(str(obj["workload_key"]), str(obj["task_name"]), str(obj["script"]),
                                           float(obj["flops"]), types, str(obj["kind"])))
        elif kind == "record":
            error = ErrorKind(obj["error"]) if obj["error"] is not None else None
            result = MeasureResult(tuple(float(c) for c in obj["costs"]), error, str(obj["message"]),
                                   float(obj["build_secs"]), float(obj["timestamp"]))
            candidate = Candidate(str(obj["trace_json"]), str(obj["sketch"]))
            records.append(Record(str(obj["workload_key"]), str(obj["target_key"]), candidate, result,
                                  str(obj["task_name"]), str(obj["version"])))
        else:
            raise ValueError(f"unknown line type {kind!r}")
    except (ValueError, TypeError, KeyError) as e:  # JSONDecodeError is a ValueError
        detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
        raise DatabaseError(f"{where}: not a tuning record ({detail})") from None
