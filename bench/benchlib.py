"""What the kernel benchmarks share: the CPU's name for their reports, tuning a prepared graph
into a fresh database, and writing a report."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (reports compare ratios within one machine)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def tune_fresh(prepared, *, trials: int, database: str):
    """Tune every task of `prepared` into `database` (a new file); returns the module built from
    it and each task's best measured seconds per call, by task name."""
    import tilecraft as tc
    from tilecraft.search.schedules import ScheduleSource

    tc.tune(prepared, trials=trials, database=database, progress=False)
    module, _ = tc.api.build_prepared(prepared, database=database)
    source = ScheduleSource(prepared.target, database=database)
    try:
        best = {t.name: source.best_cost(t.workload_key) for t in prepared.table.tasks}
    finally:
        source.close()
    return module, best


def write_report(path: Path, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    print(text)
