"""Fused vs unfused conv bottlenecks, tuned vs tuned in the same run.

    python bench/bottleneck.py                      # writes bench/bottleneck.md
    python bench/bottleneck.py --trials 64 --no-write   # a quick look

Blocks (batch 1, fp32, random weights, BN already folded into conv bias):
  mbv2_s1   MobileNetV2 inverted residual 24 -> 144 -> 24 at 56x56, stride 1, residual add
  mbv2_s2   MobileNetV2 inverted residual 24 -> 144 -> 32, 56x56 -> 28x28 (stride-2 depthwise)
  resnet    ResNet-50 bottleneck 256 -> 64 -> 64 -> 256 at 28x28 (1x1, 3x3, 1x1, residual, relu)
Each block is one bottleneck node; the tuner tunes the fused task AND its part tasks
(one database, one `tilecraft.api.tune` call per block with the same trial budget per
task).  Reported: best measured fused kernel vs the sum of the best measured parts, plus
the whole block built each way (`build_prepared` picks by those records) and timed end to end.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "bench" / "bottleneck.md"


def _conv(gb, rng, x, cin, cout, k=1, stride=1, groups=1, act="relu", name=""):
    w = gb.const((rng.standard_normal((cout, cin // groups, k, k)) * (2.0 / (cin // groups * k * k)) ** 0.5).astype("float32"), f"{name}_w")
    b = gb.const((rng.standard_normal(cout) * 0.1).astype("float32"), f"{name}_b")
    p = k // 2
    y = gb.add("conv2d", [x, w, b], strides=(stride, stride), pads=(p, p, p, p), dilations=(1, 1), groups=groups)
    if act == "relu":
        y = gb.add("relu", [y])
    elif act == "relu6":
        y = gb.add("clip", [y], min=0.0, max=6.0)  # the bounds are attributes (as the ONNX frontend imports Clip)
    return y


def inverted_residual(cin=24, expand=6, cout=24, hw=56, stride=1, seed=0):
    """MobileNetV2 block: 1x1 expand + relu6 -> 3x3 depthwise + relu6 -> 1x1 project (+ x)."""
    from tilecraft.compiler.ir import TensorType
    from tilecraft.frontends.builder import GraphBuilder

    rng = np.random.default_rng(seed)
    gb = GraphBuilder(f"mbv2_{cin}_{cout}_{hw}_s{stride}")
    x = gb.add_input("x", TensorType((1, cin, hw, hw), "float32"))
    mid = cin * expand
    h = _conv(gb, rng, x, cin, mid, 1, act="relu6", name="expand")
    h = _conv(gb, rng, h, mid, mid, 3, stride, groups=mid, act="relu6", name="dw")
    y = _conv(gb, rng, h, mid, cout, 1, act=None, name="project")
    if stride == 1 and cin == cout:
        y = gb.add("add", [x, y])
    return gb.finish([y])


def resnet_bottleneck(cin=256, mid=64, hw=28, seed=0):
    """ResNet-50 bottleneck: 1x1 reduce + relu -> 3x3 + relu -> 1x1 expand, + x, relu."""
    from tilecraft.compiler.ir import TensorType
    from tilecraft.frontends.builder import GraphBuilder

    rng = np.random.default_rng(seed)
    gb = GraphBuilder(f"resnet_bottleneck_{cin}_{mid}_{hw}")
    x = gb.add_input("x", TensorType((1, cin, hw, hw), "float32"))
    h = _conv(gb, rng, x, cin, mid, 1, name="reduce")
    h = _conv(gb, rng, h, mid, mid, 3, name="conv3x3")
    y = _conv(gb, rng, h, mid, cin, 1, act=None, name="expand")
    y = gb.add("relu", [gb.add("add", [y, x])])
    return gb.finish([y])


BLOCKS = {
    "mbv2_s1": lambda: inverted_residual(24, 6, 24, 56, 1),
    "mbv2_s2": lambda: inverted_residual(24, 6, 32, 56, 2),
    "resnet": lambda: resnet_bottleneck(256, 64, 28),
}


def _time_module(module, feeds, rounds=5, number=20) -> float:
    module.run(feeds)
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(number):
            module.run(feeds)
        samples.append((time.perf_counter() - t0) / number)
    return statistics.median(samples)


def run_block(name: str, trials_per_task: int, db_path: str, seed: int = 0) -> dict:
    from tilecraft import api
    from tilecraft.compiler.fusion_bottleneck import choose_bottlenecks
    from tilecraft.compiler.interpret import run_graph
    from tilecraft.search.database import Database

    graph = BLOCKS[name]()
    prepared = api.prepare(graph, target="llvm", layout="NCHW")  # x86's NCHWc convs form no chains
    (bneck,) = [n for n in prepared.graph.nodes if n.attr("anchor") == "bottleneck"]
    fused_key = prepared.table.node_task[bneck.name]
    part_keys = prepared.table.part_tasks[bneck.name]
    t0 = time.time()
    api.tune(prepared, trials=trials_per_task * len(prepared.tasks), database=db_path, progress=False, seed=seed)
    tune_s = time.time() - t0
    with Database(db_path) as db:
        key = prepared.target.key

        def best(k):
            b = db.best(k, key, k=1)
            return b[0].result.mean if b else None

        fused = best(fused_key)
        parts = [best(k) for k in part_keys]
        counts = {t.workload_key: db.count(t.workload_key, key) for t in prepared.tasks}
    feeds = {"x": np.random.default_rng(1).standard_normal(graph.inputs[0][1].shape).astype("float32")}
    want = run_graph(graph, feeds)[0]
    e2e = {}
    for label, force in (("fused", True), ("unfused", False)):
        forced = api.Prepared(*_forced(prepared, force, choose_bottlenecks))
        module, _ = api.build_prepared(forced, database=db_path)
        got = module.run(feeds)[graph.outputs[0]]
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))
        assert err < 1e-3, f"{name} {label}: relative error {err}"
        e2e[label] = _time_module(module, feeds)
    return dict(name=name, fused=fused, parts=parts, tune_s=tune_s, e2e=e2e, trials=counts[fused_key],
                part_trials=[counts[k] for k in part_keys])


def _forced(prepared, fused: bool, choose):
    """The prepared model with the chain forced fused / unfused (parts-only table), for timing both."""
    graph, table, _ = choose(prepared.graph, prepared.table, lambda k: (1.0 if k in set(prepared.table.node_task.values()) else None)
                             if fused else None)
    return graph, table, prepared.target  # the chosen table has no alternatives left


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=32, help="measured trials per task (fused and each part alike)")
    ap.add_argument("--blocks", nargs="*", default=list(BLOCKS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.blocks:
            r = run_block(name, args.trials, os.path.join(tmp, f"{name}.db"))
            rows.append(r)
            parts = sum(p for p in r["parts"] if p is not None)
            print(f"{name}: fused {r['fused'] * 1e3:.3f} ms  parts {parts * 1e3:.3f} ms  "
                  f"speedup {parts / r['fused']:.2f}x  e2e fused {r['e2e']['fused'] * 1e3:.3f} ms  "
                  f"unfused {r['e2e']['unfused'] * 1e3:.3f} ms  (tuning {r['tune_s']:.0f} s)", flush=True)
    if args.no_write:
        return
    lines = [
        "# Fused vs unfused conv bottlenecks (tuned vs tuned)",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores (shared with other jobs; timings are rough)",
        f"- command: `python bench/bottleneck.py --trials {args.trials}`",
        f"- budget: {args.trials} measured trials per task (the fused kernel and each of its parts alike), one database per block, same run",
        "",
        "Kernel columns: best measured time of the fused kernel vs the sum of the best measured parts.",
        "Block columns: the whole block built with the fused kernel / with the parts (the tuned records), timed through the VM.",
        "",
        "| block | fused kernel ms | parts ms (sum) | kernel speedup | block fused ms | block unfused ms | block speedup |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        parts = sum(p for p in r["parts"] if p is not None)
        lines.append(f"| {r['name']} | {r['fused'] * 1e3:.3f} | {parts * 1e3:.3f} ({' + '.join(f'{p * 1e3:.3f}' for p in r['parts'])}) | "
                     f"{parts / r['fused']:.2f}x | {r['e2e']['fused'] * 1e3:.3f} | {r['e2e']['unfused'] * 1e3:.3f} | "
                     f"{r['e2e']['unfused'] / r['e2e']['fused']:.2f}x |")
    lines += ["", "Blocks: " + "; ".join(f"{k}: {v.__doc__ or ''}".strip() for k, v in (("mbv2_s1", inverted_residual), ("resnet", resnet_bottleneck))), ""]
    REPORT.write_text("\n".join(lines))
    print("wrote", REPORT)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO.parent))
    main()
