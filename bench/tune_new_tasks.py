"""Tune only the tasks of a model that a database holds no records for (e.g. after a lowering change
gave some tasks new workload keys), leaving every other task's records as they are.

    python bench/tune_new_tasks.py MODEL.onnx --db DB --trials N

Used to measure a change end to end on top of a full tuning run's database: copy the database,
tune the changed tasks into the copy, then time both builds (`bench/e2e.py` or the old exported module).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("TVM_NUM_THREADS", "2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--db", required=True)
    ap.add_argument("--trials", type=int, required=True, help="measurements in total across the new tasks")
    ap.add_argument("--target", default="llvm")
    ap.add_argument("--layout", default="auto", choices=["auto", "NCHW", "NCHWc"], help="as tune's --layout")
    args = ap.parse_args(argv)

    import tilecraft as tc
    from tilecraft.search.database import Database

    prepared = tc.api.prepare(args.model, target=args.target, layout=args.layout)
    with Database(args.db) as db:
        measured = {w.workload_key for w in db.workloads() if w.trials > 0 and w.target_key == prepared.target.key}
    new = tuple(t for t in prepared.table.tasks if t.workload_key not in measured)
    print(f"{len(new)} of {len(prepared.table.tasks)} tasks have no records: {[t.name for t in new]}", flush=True)
    if new:
        only_new = dataclasses.replace(prepared, table=dataclasses.replace(prepared.table, tasks=new))
        tc.tune(only_new, trials=args.trials, database=args.db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
