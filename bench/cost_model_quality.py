"""Cost-model quality on real measurements of this CPU.

    python bench/cost_model_quality.py                 # collect (or reuse) the dataset, evaluate, write bench/cost_model.md
    python bench/cost_model_quality.py --collect-only  # only measure
    python bench/cost_model_quality.py --per-task 100  # a smaller dataset (a quick look)

Dataset: random sampled candidates (`search.sampling.sample_candidates`) of a 1024^3 matmul,
ResNet-18's distinct 3x3/1x1 conv tasks, a dense layer (128x768x768 + bias + relu) and
ResNet-18's classifier, each measured by the real `Measurer.local`; stored in
`bench/work/cost_model.db`, which a re-run reuses (it only tops up missing trials).

Metrics, per task, then averaged over tasks (a candidate's throughput is flops/cost; failed = 0):
  pairwise accuracy  over all pairs of test candidates with different measured throughput, the
                     fraction the model orders the same way as the measurement (ties in the
                     prediction count 1/2);
  top-k recall       |true top-k ∩ predicted top-k| / k, where both top-k are taken over the test
                     candidates (true: by measured throughput, predicted: by model score);
  best-of-top-k      throughput of the best measured candidate among the predicted top-k, divided
                     by the best throughput of the test set (what a search that measures the
                     model's top k would get).
Splits: (a) seen tasks: a random 70/30 split of each task's candidates, train on all tasks' 70%;
        (b) unseen tasks: leave one task out, train on all others, test on all of its candidates.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work"
DB_PATH = WORK / "cost_model.db"
REPORT = REPO / "bench" / "cost_model.md"


# --------------------------------------------------------------------------- tasks
def _dense_task(m: int, k: int, n: int, *, name: str):
    import tilecraft as tc
    from tilecraft.compiler.ir import TensorType
    from tilecraft.frontends.builder import GraphBuilder

    rng = np.random.default_rng(0)
    b = GraphBuilder(name)
    x = b.add_input("x", TensorType((m, k), "float32"))
    w = b.const(rng.standard_normal((k, n)).astype("float32"), "w")
    y = b.add("matmul", [x, w])
    if name.startswith("dense"):
        y = b.add("relu", [b.add("add", [y, b.const(rng.standard_normal((n,)).astype("float32"), "bias")])])
    tasks = tc.api.prepare(b.finish([y])).tasks
    return max(tasks, key=lambda t: t.flops)


def benchmark_tasks(*, matmul_size: int = 1024) -> list:
    """The matmul, dense, ResNet-18 conv tasks (distinct 3x3 and 1x1 shapes) and ResNet-18's classifier."""
    import tilecraft as tc

    models = WORK / "models"
    if not (models / "resnet18.onnx").exists():
        import subprocess

        subprocess.run([sys.executable, "/work/shared/models/materialize.py", str(models)], check=True, capture_output=True)
    resnet = tc.api.prepare(models / "resnet18.onnx").tasks
    wanted = ("conv2d_relu_1x64x56x56", "conv2d_relu_1x128x28x28", "conv2d_1x128x28x28",
              "conv2d_add_relu_1x256x14x14", "conv2d_relu_1x512x7x7")
    convs, seen = [], set()
    for t in resnet:
        if t.name in wanted and t.name not in seen:
            seen.add(t.name)
            convs.append(t)
    fc = [t for t in resnet if t.kind == "matmul"]
    return [_dense_task(matmul_size, matmul_size, matmul_size, name=f"matmul{matmul_size}"),
            _dense_task(128, 768, 768, name="dense"), *convs, *fc]


# --------------------------------------------------------------------------- dataset
def collect(tasks, target, db, *, per_task: int, batch: int = 32, seed: int = 0) -> None:
    """Top up every task to `per_task` measured candidates (re-runs reuse what the database has)."""
    from tilecraft import __version__
    from tilecraft.search.database import trace_hash
    from tilecraft.search.measure import Measurer, RunnerConfig
    from tilecraft.search.measure_types import Record
    from tilecraft.search.sampling import sample_candidates

    runner = RunnerConfig(number=1, repeat=3, min_repeat_ms=30, timeout_s=20.0)
    with Measurer.local(target, runner_config=runner) as measurer:
        for task in tasks:
            db.add_workload(task)
            have = db.count(task.workload_key, target.key)
            round_ = 0
            while have < per_task and round_ < 50:
                measured = db.measured_hashes(task.workload_key, target.key)
                n = min(batch, per_task - have)
                fresh = sample_candidates(task, target, n=2 * n, rng_seed=seed * 100_003 + have * 7 + round_)
                cands = [c for c in fresh if trace_hash(c.trace_json) not in measured][:n]
                round_ += 1
                if not cands:
                    continue
                t0 = time.time()
                results = measurer.measure(task, cands)
                db.commit([Record(task.workload_key, target.key, c, r, task.name, f"tilecraft {__version__}")
                           for c, r in zip(cands, results)])
                have = db.count(task.workload_key, target.key)
                ok = [r for r in results if r.ok]
                best = max((task.flops / r.mean / 1e9 for r in ok), default=0.0)
                print(f"  {task.name}: {have}/{per_task} measured ({len(ok)}/{len(cands)} ok, "
                      f"batch best {best:.1f} GFLOP/s, {time.time() - t0:.1f} s)", flush=True)


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-task", type=int, default=300, help="measured candidates per task")
    parser.add_argument("--matmul-size", type=int, default=1024)
    parser.add_argument("--db", default=str(DB_PATH))
    parser.add_argument("--collect-only", action="store_true")
    args = parser.parse_args(argv)

    from tilecraft.search.database import Database
    from tilecraft.targets.base import resolve_target

    target = resolve_target("llvm")
    tasks = benchmark_tasks(matmul_size=args.matmul_size)
    with Database(args.db) as db:
        collect(tasks, target, db, per_task=args.per_task)
    return 0


if __name__ == "__main__":
    sys.exit(main())
