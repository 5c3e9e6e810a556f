"""How repeatable is one measurement of a kernel on this host?  The noise that caps any cost model.

    python bench/measurement_noise.py bench/work/v2/tuned.db matmul_add_128x768 [--candidates 12] [--rounds 6]

Takes `--candidates` of the task's best records (spread over its top 4x that many), builds them, and
measures each `--rounds` times exactly as the tuner's runner does (`runner.measure_module` with the
default `RunnerConfig`: fresh random inputs, a warm-up call, then the timed repeats), round by round
over all candidates so that no candidate gets all the quiet or all the busy seconds.  Reports:
  within   the spread of the timed repeats inside one measurement (coefficient of variation of their
           mean: std / sqrt(repeats) / mean), i.e. what the repeats themselves suggest;
  between  the spread of the per-measurement means of the same kernel from round to round;
and how often two measurements (rounds) order a pair of candidates alike, against how often the two
halves of one measurement's repeats do.  Writes bench/measurement_noise.md (or --out).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402

from benchlib import cpu_name  # noqa: E402
from cost_model_quality import pairwise_accuracy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("db")
    parser.add_argument("task", help="task name as the database stores it (the first workload of that name)")
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", default=str(REPO / "bench" / "measurement_noise.md"))
    args = parser.parse_args(argv)

    import tvm

    from tilecraft.errors import TilecraftError
    from tilecraft.search.database import Database
    from tilecraft.search.measure import RunnerConfig
    from tilecraft.search.runner import _timing, arg_specs, measure_module
    from tilecraft.targets.base import resolve_target

    target = resolve_target("llvm")
    try:
        db = Database(args.db, create=False)
    except TilecraftError as e:
        sys.exit(f"measurement_noise.py: {e}")
    with db:
        keys = [w.workload_key for w in db.workloads() if w.task_name == args.task and w.target_key == target.key]
        if not keys:
            sys.exit(f"measurement_noise.py: no workload named {args.task!r} for llvm in {args.db}")
        task = db.workload(keys[0]).to_task()
        top = db.best(keys[0], target.key, k=4 * args.candidates)
    step = max(len(top) // args.candidates, 1)  # spread the picks over the top records
    records = top[::step][: args.candidates]
    if len(records) < 2:
        sys.exit(f"measurement_noise.py: {args.task} has {len(top)} successful records; need 2 or more")
    dev, specs, config = tvm.cpu(), arg_specs(task), _timing(RunnerConfig())
    with tempfile.TemporaryDirectory() as tmp:
        libs = []
        for n, record in enumerate(records):
            path = os.path.join(tmp, f"c{n}.so")
            tvm.compile(record.candidate.apply(task.mod).mod, target=target.tvm_target).export_library(path)
            libs.append(tvm.runtime.load_module(path))
        started = time.time()
        runs = np.zeros((len(libs), args.rounds), dtype=object)
        for r in range(args.rounds):
            for n, lib in enumerate(libs):
                reply = measure_module(lib, dev, specs, None, config)
                runs[n, r] = np.asarray(reply[1])
            print(f"round {r + 1}/{args.rounds} done ({time.time() - started:.0f} s)", flush=True)
    means = np.asarray([[c.mean() for c in row] for row in runs])  # [candidate, round] seconds
    within = np.mean([[c.std() / np.sqrt(len(c)) / c.mean() for c in row] for row in runs], axis=1)
    between = means.std(axis=1) / means.mean(axis=1)
    rounds_agree = np.mean([pairwise_accuracy(1 / means[:, a], 1 / means[:, b])
                            for a in range(args.rounds) for b in range(a + 1, args.rounds)])
    rng = np.random.default_rng(0)
    halves = []
    for r in range(args.rounds):
        split = [rng.permutation(len(c)) for c in runs[:, r]]
        a = np.asarray([1 / c[s[: len(c) // 2]].mean() for c, s in zip(runs[:, r], split)])
        b = np.asarray([1 / c[s[len(c) // 2:]].mean() for c, s in zip(runs[:, r], split)])
        halves.append(pairwise_accuracy(a, b))
    lines = [
        f"# Measurement noise: {task.name}",
        "",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores; TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; load average at the end "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- command: `python bench/measurement_noise.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- {len(libs)} of the task's best {len(top)} records, each measured {args.rounds} times as the tuner's runner "
        f"does ({len(runs[0, 0])} timed repeats per measurement), round by round; {time.time() - started:.0f} s",
        "",
        "| candidate (record rank) | mean of the rounds µs | min / max of the rounds µs | within one measurement (CV of its mean) | between measurements (CV) |",
        "|---|---|---|---|---|",
        *[f"| {n * step + 1} | {m.mean() * 1e6:.1f} | {m.min() * 1e6:.1f} / {m.max() * 1e6:.1f} "
          f"| {w:.3f} | {b:.3f} |" for n, (m, w, b) in enumerate(zip(means, within, between))],
        "",
        f"Pairs ordered alike by two halves of one measurement's repeats: **{np.mean(halves):.3f}**; "
        f"by two measurements of the same candidates: **{rounds_agree:.3f}**.",
        f"Mean spread: within one measurement {within.mean():.3f}, between measurements {between.mean():.3f} "
        f"({between.mean() / within.mean():.1f}x).",
        "",
    ]
    text = "\n".join(lines)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
