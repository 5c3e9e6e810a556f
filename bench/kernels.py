"""Kernel GFLOP/s, one run: a 1024^3 fp32 matmul and ResNet-18's conv tasks, each as
(a) the default schedule, (b) tuned by tilecraft for --trials measurements, (c) OpenBLAS
through numpy (matmul: A @ B; conv: im2col + one GEMM, the classic BLAS path).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/kernels.py [--trials 200] [--convs 4] [--db bench/work/kernels.db]

(OPENBLAS_CORETYPE pins an older OpenBLAS kernel on some machines; unset it so numpy runs its best one.)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
THREADS = 2


def numpy_gflops(fn, flops: float, repeat: int = 10) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return flops / np.median(times) / 1e9


def im2col_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int):
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    wm = w.reshape(o, -1)

    def run():
        cols = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
        cols = cols.transpose(0, 1, 4, 5, 2, 3).reshape(c * kh * kw, oh * ow)
        return wm @ cols

    return run


def task_time(task, target, sch) -> float:
    import tvm

    lib = tvm.compile(sch.mod, target=target.tvm_target)
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.uniform(-1, 1, t.shape).astype(t.dtype)) for t in task.arg_types]
    return lib.mod.time_evaluator("main", tvm.cpu(), number=5, repeat=5, min_repeat_ms=100)(*args).median


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200, help="tuning trials per task")
    ap.add_argument("--convs", type=int, default=4, help="how many distinct ResNet-18 conv tasks")
    ap.add_argument("--db", default=str(HERE / "work" / "kernels.db"))
    ap.add_argument("--strategy", default="evolutionary")
    args = ap.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))
    import tvm
    from tvm import te

    import tilecraft as tc
    from tilecraft.compiler.ir import TensorType
    from tilecraft.compiler.task import Task, workload_key
    from tilecraft.search.database import Database
    from tilecraft.search.default_schedule import default_schedule
    from tilecraft.search.measure import Measurer
    from tilecraft.search.policies import make_policy_factory
    from tilecraft.search.tuner import TuneConfig, tune_tasks

    target = tc.api.resolve_target("llvm")
    n = 1024
    a, b = te.placeholder((n, n), name="A"), te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), "k")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b, te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="T_matmul")])})
    types = (TensorType((n, n), "float32"),) * 3
    tasks = [Task("matmul_1024", workload_key(mod, types), mod, types, 2.0 * n**3, 1, "matmul")]
    models = HERE / "work" / "models"
    if not (models / "resnet18.onnx").exists():
        models.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(HERE.parent.parent / "shared" / "models" / "materialize.py"), str(models)], check=True)
    prepared = tc.prepare(str(models / "resnet18.onnx"), layout="NCHW")
    convs = sorted((t for t in prepared.tasks if t.kind == "conv2d"), key=lambda t: -t.flops * t.weight)[: args.convs]
    tasks += convs
    conv_attrs = {}  # workload key -> (stride, pad) of its conv, for the im2col baseline
    for node in prepared.graph.nodes:
        key = prepared.table.node_task.get(node.name)
        conv = next((m for m in node.attr("body").nodes if m.op == "conv2d"), None) if key else None
        if conv is not None:
            conv_attrs[key] = (conv.attr("strides")[0], conv.attr("pads")[0])
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    config = TuneConfig(trials=args.trials, batch_size=16, progress=True, strategy=args.strategy, scheduler="round_robin")
    with Database(args.db) as db, Measurer.local(target) as measurer:
        for task in tasks:
            db.add_workload(task)
            factory, finish = make_policy_factory(target, db, config)
            t0 = time.time()
            tune_tasks([task], target, measurer=measurer, database=db, policy_factory=factory, config=config)
            finish()
            tune_s = time.time() - t0
            best = db.best(task.workload_key, target.key, k=1)[0]
            default_gf = task.flops / task_time(task, target, default_schedule(task, target)) / 1e9
            tuned_gf = task.flops / task_time(task, target, best.candidate.apply(task.mod)) / 1e9
            rng = np.random.default_rng(0)
            if task.kind == "matmul":
                x, y = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
                blas = numpy_gflops(lambda: x @ y, task.flops)
            else:
                xs, ws = task.arg_types[0].shape, task.arg_types[1].shape
                stride, pad = conv_attrs[task.workload_key]
                run = im2col_conv(rng.random(xs, dtype=np.float32), rng.random(ws, dtype=np.float32), stride, pad)
                blas = numpy_gflops(run, task.flops)
            rows.append((task.name, task.flops, default_gf, tuned_gf, blas, tune_s))
            print(rows[-1], flush=True)
    print()
    try:
        import threadpoolctl

        blas = next((f"OpenBLAS {i['version']} ({i['architecture']} kernels)" for i in threadpoolctl.threadpool_info()
                     if i.get("internal_api") == "openblas"), "numpy BLAS")
    except ImportError:
        blas = "numpy BLAS"
    print(f"Machine: {platform.node()} ({os.cpu_count()} cores), {THREADS} threads; {blas}; {datetime.date.today()}")
    print(f"Command: python bench/kernels.py {' '.join(sys.argv[1:])}  (strategy {args.strategy}, {args.trials} trials per task)")
    print()
    print("| kernel | GFLOP | default GFLOP/s | tuned GFLOP/s | OpenBLAS (numpy) GFLOP/s | tuned / OpenBLAS | tuned / default | tuning s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, fl, d, t, bl, s in rows:
        print(f"| {name} | {fl / 1e9:.2f} | {d:.1f} | {t:.1f} | {bl:.1f} | {t / bl:.2f} | {t / d:.2f} | {s:.0f} |")


if __name__ == "__main__":
    main()
