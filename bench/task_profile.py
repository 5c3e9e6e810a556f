"""Where a built model spends its time: each task's kernel as the build schedules it (best record
or default), timed alone warm (activations are hot in a model run), times its occurrences.

    python bench/task_profile.py bench/work/models/mobilenet_v2.onnx --db bench/work/v3/mobilenet.db [--top 20] [--layout NCHWc]

The sum approximates the model's latency without the VM's dispatch; the default schedule of each
task is timed beside it, so the gain of tuning shows per task.  Bottleneck chains are counted the
way the build chooses them (fused or as their parts).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import tvm  # noqa: E402

import tilecraft as tc  # noqa: E402
from tilecraft.compiler.fusion_bottleneck import choose_bottlenecks  # noqa: E402
from tilecraft.search.runner import arg_specs, random_inputs  # noqa: E402
from tilecraft.search.schedules import ScheduleSource, default_schedule_func  # noqa: E402


def time_kernel(func, target, args, dev) -> float:
    lib = tvm.compile(func, target=target.tvm_target).mod
    return lib.time_evaluator("main", dev, number=20, repeat=5, min_repeat_ms=20)(*args).median * 1e3


def random_args(task, dev) -> list:
    return [tvm.runtime.tensor(a, dev) for a in random_inputs(arg_specs(task), np.random.default_rng(0))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--db", required=True)
    ap.add_argument("--target", default="llvm")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--layout", default="auto", choices=["auto", "NCHW", "NCHWc"], help="as tune's --layout")
    args = ap.parse_args()
    prepared = tc.api.prepare(args.model, target=args.target, layout=args.layout)
    source = ScheduleSource(prepared.target, database=args.db)
    dev = tvm.cpu()
    rows = []
    try:
        _, table, chains = choose_bottlenecks(prepared.graph, prepared.table, source.best_cost)
        for task in table.tasks:
            kernel_args = random_args(task, dev)
            tuned = time_kernel(source.schedule(task), prepared.target, kernel_args, dev)
            default = time_kernel(default_schedule_func(task, prepared.target), prepared.target, kernel_args, dev)
            shapes = " ".join("x".join(map(str, t.shape)) for t in task.arg_types[:2])
            rows.append((tuned * task.weight, task.weight, tuned, default, task.flops / tuned / 1e6, task.name, shapes))
    finally:
        source.close()
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"{args.model}: {len(rows)} tasks, bottleneck chains {chains}")
    print(f"sum of kernels: tuned {total:.3f} ms, default {sum(r[3] * r[1] for r in rows):.3f} ms")
    print("| ms in model | share | count | tuned ms | default ms | GFLOP/s | task | input, weight |")
    print("|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows[: args.top]:
        print(f"| {r[0]:.3f} | {100 * r[0] / total:.0f}% | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.0f} | {r[5]} | {r[6]} |")


if __name__ == "__main__":
    main()
