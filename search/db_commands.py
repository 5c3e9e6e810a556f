"""`tilecraft db ...`: look into, distill, export and import tuning databases.

    tilecraft db list    --db FILE                 workloads: trials, errors, best latency, GFLOP/s
    tilecraft db show    --db FILE KEY [--k 5]     the best records of a workload, traces as Python
    tilecraft db distill --db FILE -o OUT [--k 1]  keep the best k per (workload, target)
    tilecraft db export  --db FILE -o FILE.jsonl
    tilecraft db import  --db FILE FILE.jsonl

Problems (missing file, not a database, unknown key) raise DatabaseError; the CLI prints
it as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os

from ..errors import DatabaseError
from .database import Database, WorkloadEntry
from .measure_types import Record


def add_db_parser(subparsers) -> None:
    """Register `db` and its subcommands on the CLI's top-level subparsers."""
    db = subparsers.add_parser("db", help="inspect and maintain tuning databases")
    db.set_defaults(func=run_db)
    sub = db.add_subparsers(dest="db_command", required=True, metavar="{list,show,distill,export,import}")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--db", required=True, metavar="FILE", help="the tuning database (SQLite)")
        return p

    command("list", "list workloads with their trials and best latency")
    show = command("show", "show the best records of one workload")
    show.add_argument("key", metavar="KEY", help="workload key (a unique prefix is enough)")
    show.add_argument("--k", type=int, default=5, help="how many records per target (default 5)")
    distill = command("distill", "write a copy with only the best records")
    distill.add_argument("-o", "--output", required=True, metavar="OUT", help="the distilled database")
    distill.add_argument("--k", type=int, default=1, help="records kept per workload and target (default 1)")
    export = command("export", "write the database as JSON lines")
    export.add_argument("-o", "--output", required=True, metavar="FILE.jsonl")
    imp = command("import", "add the records of a JSON-lines export (skips those present)")
    imp.add_argument("jsonl", metavar="FILE.jsonl")


def run_db(args: argparse.Namespace) -> int:
    """Run one `db` subcommand; returns the exit code. Raises DatabaseError on bad input."""
    if args.db_command == "import":  # the one command that may create the database
        with Database(args.db) as db:
            before = len(db.records())
            added = db.import_jsonl(args.jsonl)
            print(f"imported {added} new records into {args.db} ({before + added} in all)")
        return 0
    with Database(args.db, create=False) as db:
        if args.db_command == "list":
            print(_list_table(db))
        elif args.db_command == "show":
            print(_show(db, args.key, args.k))
        elif args.db_command == "distill":
            if os.path.exists(args.output):
                raise DatabaseError(f"{args.output}: already exists; distill writes a new database")
            kept = db.distill(args.output, k=args.k)
            print(f"kept {kept} records of {len(db.records())} in {args.output}")
        elif args.db_command == "export":
            lines = db.export_jsonl(args.output)
            print(f"wrote {lines} lines to {args.output}")
        else:
            raise DatabaseError(f"unknown db command {args.db_command!r}")
    return 0


# ---- list ----------------------------------------------------------------------------------------


def target_label(target_key: str) -> str:
    """A short name for a target key (the target's JSON): kind plus mcpu/arch/mtriple."""
    if not target_key:
        return "-"
    try:
        config = json.loads(target_key)
    except json.JSONDecodeError:
        return target_key[:24]
    if not isinstance(config, dict):
        return target_key[:24]
    parts = [str(config.get("kind", "?"))] + [str(config[k]) for k in ("arch", "mcpu", "mtriple") if config.get(k)]
    return " ".join(parts)


def _list_table(db: Database) -> str:
    header = ("workload", "task", "target", "trials", "errors", "best µs", "GFLOP/s")
    rows = [(s.workload_key, s.task_name, target_label(s.target_key), str(s.trials), str(s.errors),
             _micros(s.best_cost), f"{s.gflops:.1f}" if s.gflops else "-")
            for s in db.workloads()]
    if not rows:
        return f"{db.path}: no workloads"
    return _table(header, rows, right=(3, 4, 5, 6))


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: tuple[int, ...]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)]).rstrip()


def _micros(seconds: float) -> str:
    return f"{seconds * 1e6:.2f}" if math.isfinite(seconds) else "-"


# ---- show ----------------------------------------------------------------------------------------


def _resolve_key(db: Database, key: str) -> str:
    keys = sorted({s.workload_key for s in db.workloads()})
    if key in keys:
        return key
    matches = [k for k in keys if k.startswith(key)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DatabaseError(f"{db.path}: no workload {key!r}")
    raise DatabaseError(f"{db.path}: {key!r} matches {len(matches)} workloads; give more of the key")


def _show(db: Database, key: str, k: int) -> str:
    key = _resolve_key(db, key)
    entry = db.workload(key)
    summaries = [s for s in db.workloads() if s.workload_key == key]
    name = entry.task_name if entry else summaries[0].task_name
    lines = [f"workload {key}  {name}"]
    if entry:
        shapes = ", ".join(f"{d}[{','.join(map(str, s))}]" for s, d in entry.arg_types)
        lines.append(f"  args: {shapes}   flops: {entry.flops:.4g}   kind: {entry.kind}")
    for s in summaries:
        if not s.target_key:
            lines.append("  (never measured)")
            continue
        lines.append(f"\ntarget {target_label(s.target_key)}: {s.trials} trials, {s.errors} errors")
        lines.append(f"  key: {s.target_key}")
        for rank, record in enumerate(db.best(key, s.target_key, k), 1):
            lines.extend(_show_record(rank, record, entry, s.flops))
    return "\n".join(lines)


def _show_record(rank: int, record: Record, entry: WorkloadEntry | None, flops: float) -> list[str]:
    res = record.result
    when = datetime.datetime.fromtimestamp(res.timestamp).isoformat(sep=" ", timespec="seconds")
    gflops = f"  {flops / res.mean / 1e9:.1f} GFLOP/s" if flops else ""
    head = (f"\n  #{rank}  {_micros(res.mean)} µs{gflops}  (runs: {len(res.costs)}, build {res.build_secs:.2f} s,"
            f" sketch {record.candidate.sketch or '-'}, {when}, {record.version or 'no version'})")
    return [head, *("    " + line for line in trace_as_python(record.candidate.trace_json, entry))]


def trace_as_python(trace_json: str, entry: WorkloadEntry | None) -> list[str]:
    """The trace as TVM's Python schedule text; the raw JSON when it cannot be replayed."""
    if entry is None:
        return ["# workload not stored; raw trace:", trace_json]
    # TVM only here: printing needs a schedule to replay the trace onto.
    from tvm.s_tir import Schedule, Trace

    try:
        sch = Schedule(entry.to_task().mod)
        Trace.apply_json_to_schedule(json.loads(trace_json), sch)
        return list(sch.trace.as_python())
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as e:  # TVM errors map to these
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return [f"# trace does not replay ({first[:120]}); raw trace:", trace_json]
