"""End-to-end latency, batch 1, 2 threads: tilecraft (untuned defaults, and tuned from a
database when --db is given) vs ONNX Runtime and PyTorch eager, measured in the same run.

    python bench/e2e.py [--models resnet18 ...] [--db bench/work/tuned.db | --db resnet18=r.db ...] [--repeat 30] [--rounds 5]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from conftest import MODEL_NAMES, SHARED_MODELS, model_inputs  # noqa: E402

THREADS = 2
ROUNDS = 5


def timeit(fn, repeat: int, min_seconds: float = 1.0) -> float:
    for _ in range(3):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start < min_seconds and len(times) < 10 * repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def materialize(out: Path) -> Path:
    if not (out / "resnet18.onnx").exists():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(SHARED_MODELS / "materialize.py"), str(out)], check=True, capture_output=True)
    return out


def model_databases(specs: list[str], models: list[str]) -> dict[str, str]:
    """`--db FILE` serves every model; `--db MODEL=FILE` one model (it wins over a plain FILE)."""
    shared = [s for s in specs if "=" not in s]
    if len(shared) > 1:
        sys.exit(f"e2e.py: more than one --db without MODEL=: {shared}")
    out = {m: shared[0] for m in models} if shared else {}
    for spec in specs:
        if "=" in spec:
            model, path = spec.split("=", 1)
            if model not in models:
                sys.exit(f"e2e.py: --db {spec}: {model} is not among --models {models}")
            out[model] = path
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=list(MODEL_NAMES))
    ap.add_argument("--db", nargs="*", default=[], metavar="[MODEL=]FILE",
                    help="tuning database(s): also measure the tuned build; MODEL=FILE gives one model its own")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="alternating rounds of ORT and the builds (median over them)")
    ap.add_argument("--work", default=str(HERE / "work"))
    args = ap.parse_args()
    databases = model_databases(args.db, args.models)
    os.environ.setdefault("TVM_NUM_THREADS", str(THREADS))

    import onnxruntime as ort
    import torch

    import tilecraft as tc
    from tilecraft.frontends.onnx import from_onnx
    from torch_eager import TorchEager

    torch.set_num_threads(THREADS)
    models = materialize(Path(args.work) / "models")
    rows = []
    for name in args.models:
        path = models / f"{name}.onnx"
        graph = from_onnx(path)
        feeds = model_inputs(name, graph.inputs, 0)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        eager = TorchEager(graph)
        torch_ms = timeit(lambda: eager(feeds), args.repeat)
        ref = sess.run(None, feeds)
        # ONNX Runtime and both builds are timed in alternating rounds, so that the machine's drift
        # (a shared host) lands on all of them alike rather than on whichever ran last.
        runs, errors = {"ort": lambda: sess.run(None, feeds)}, {"ort": 0.0}
        for label, db in (("untuned", None), ("tuned", databases.get(name))):
            if label == "tuned" and not db:
                continue
            module = tc.compile(graph, target="llvm", database=db)
            out = module.run(feeds)
            errors[label] = max(float(np.abs(out[o] - r).max() / max(np.abs(r).max(), 1e-6)) for o, r in zip(module.output_names, ref))
            args_ = module._arguments(feeds)
            runs[label] = functools.partial(module.vm["main"], *args_)
        samples = {label: [] for label in runs}
        for _ in range(args.rounds):
            for label, fn in runs.items():
                samples[label].append(timeit(fn, max(args.repeat // args.rounds, 3), min_seconds=0.2))
        results = {label: (statistics.median(samples[label]), errors[label]) for label in runs}
        ort_ms = results.pop("ort")[0]
        rows.append((name, ort_ms, torch_ms, results))
        print(name, f"ort {ort_ms:.2f} ms torch {torch_ms:.2f} ms", {k: f"{v[0]:.2f} ms" for k, v in results.items()}, flush=True)

    print()
    print(f"Machine: {platform.node()} ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), "
          f"{THREADS} threads, batch 1; {datetime.date.today()}")
    print(f"Command: python bench/e2e.py {' '.join(sys.argv[1:])}")
    print()
    tuned = any("tuned" in r[3] for r in rows)
    head = "| model | ONNX Runtime ms | PyTorch eager ms | tilecraft untuned ms | untuned / ORT |"
    if tuned:
        head += " tilecraft tuned ms | tuned / ORT | max rel err |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, ort_ms, torch_ms, res in rows:
        u = res["untuned"][0]
        line = f"| {name} | {ort_ms:.2f} | {torch_ms:.2f} | {u:.2f} | {u / ort_ms:.2f} |"
        if tuned:
            t, err = res.get("tuned", (float("nan"), float("nan")))
            line += f" {t:.2f} | {t / ort_ms:.2f} | {err:.1e} |"
        print(line)


if __name__ == "__main__":
    main()
