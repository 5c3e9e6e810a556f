"""End-to-end latency, batch 1, 2 threads: tilecraft (untuned defaults, and tuned from a
database when --db is given) vs ONNX Runtime and PyTorch eager, measured in the same run.

    python bench/e2e.py [--models resnet18 ...] [--db bench/work/tuned.db | --db resnet18=r.db ...] [--repeat 30] [--rounds 5]

A database spec may name the layout its tasks were tuned for (`resnet18=r.db@NCHW`, tilecraft's
`--layout`; default auto), and `+direct` for 3x3 convs without Winograd (`r.db@NCHWc+direct`,
`--no-winograd`); a model given several specs gets one tuned build each, all in the same rounds.
A spec naming an exported module (`gpt2_2layer=old.so`) times that module as it is: a build of
another tilecraft version (`tune --trials 0 --db ... -o old.so` in its checkout) against this one's.
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


def model_databases(specs: list[str], models: list[str]) -> dict[str, list[tuple[str, str]]]:
    """`--db FILE[@LAYOUT]` serves every model; `--db MODEL=FILE[@LAYOUT]` one model (it wins over a
    plain FILE).  Returns model -> [(database, layout)]."""
    def parse(spec: str) -> tuple[str, str]:
        path, _, layout = spec.partition("@")
        return path, layout or "auto"

    shared = [s for s in specs if "=" not in s]
    if len(shared) > 1:
        sys.exit(f"e2e.py: more than one --db without MODEL=: {shared}")
    out: dict[str, list[tuple[str, str]]] = {}
    for spec in specs:
        if "=" in spec:
            model, path = spec.split("=", 1)
            if model not in models:
                sys.exit(f"e2e.py: --db {spec}: {model} is not among --models {models}")
            out.setdefault(model, []).append(parse(path))
    for m in models:
        if shared and m not in out:
            out[m] = [parse(shared[0])]
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
        builds = [("untuned", None, "auto")] + [
            ("tuned" if layout == "auto" else f"tuned@{layout}", db, layout) for db, layout in databases.get(name, [])]
        for label, db, layout in builds:
            layout, _, direct = layout.partition("+")
            if db is not None and db.endswith(".so"):
                label, module = f"module {Path(db).name}", tc.Module.load(db)
            else:
                module = tc.compile(graph, target="llvm", database=db, layout=layout, winograd=direct != "direct")
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
    tuned = any(len(r[3]) > 1 for r in rows)
    head = "| model | ONNX Runtime ms | PyTorch eager ms | tilecraft untuned ms | untuned / ORT |"
    if tuned:
        head += " tilecraft tuned ms | tuned / ORT | max rel err |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, ort_ms, torch_ms, res in rows:
        u = res["untuned"][0]
        builds = [label for label in res if label != "untuned"] or [None]
        first = name if builds[0] in (None, "tuned") else f"{name} ({builds[0]})"
        line = f"| {first} | {ort_ms:.2f} | {torch_ms:.2f} | {u:.2f} | {u / ort_ms:.2f} |"
        for k, label in enumerate(builds):
            if k:  # a second tuned build of the same model (another layout): its own row
                line = f"| {name} ({label}) | {ort_ms:.2f} | | | |"
            if tuned:
                t, err = res.get(label, (float("nan"), float("nan")))
                line += f" {t:.2f} | {t / ort_ms:.2f} | {err:.1e} |"
            print(line)


if __name__ == "__main__":
    main()
