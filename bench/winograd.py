"""3x3 convs direct or as Winograd F(4x4, 3x3) (compiler/winograd.py), both on NCHWc maps:
tuned kernel time of each form, same trials, same run.  The measurement behind the rewrite and
its thresholds (`WINOGRAD_MIN_PIXELS` for F(4x4, 3x3), `MIN_PIXELS_F2` for F(2x2, 3x3) where 4 does not
tile the map).

    python bench/winograd.py [--trials 96] [--out bench/winograd.md]

Each shape is ResNet-18's basic-block second conv: a 1x1 conv + ReLU makes the NCHWc input, then
the 3x3 conv + bias + residual add + ReLU.  The graph is compiled twice for this CPU (the rewrite
off, then forced on), each tuned with --trials measurements into its own fresh database; the table
gives the 3x3 conv's kernels' best measured time (direct: one kernel; Winograd: input transform,
36 matmuls, output transform with the epilogue) and the outputs are compared.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchlib import cpu_name, tune_fresh, write_report

HERE = Path(__file__).resolve().parent
SHAPES = ((64, 56), (128, 28), (256, 14))  # (channels, map size): ResNet-18's stages that a tile side divides


def block_graph(channels: int, size: int):
    from tilecraft.compiler.ir import TensorType
    from tilecraft.frontends.builder import GraphBuilder

    rng = np.random.default_rng(channels * 1000 + size)
    b = GraphBuilder(f"block_{channels}_{size}")
    x = b.add_input("x", TensorType((1, channels, size, size), "float32"))
    w1 = b.const((rng.standard_normal((channels, channels, 1, 1)) / np.sqrt(channels)).astype("float32"), "w1")
    h = b.add("relu", [b.add("conv2d", [x, w1], "c1", strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1)], "r1")
    w2 = b.const((rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype("float32"), "w2")
    bias = b.const(rng.standard_normal(channels).astype("float32"), "b2")
    y = b.add("conv2d", [h, w2, bias], "c2", strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1)
    return b.finish([b.add("relu", [b.add("add", [y, h], "res")], "out")])


def tuned_form(graph, *, winograd_on: bool, trials: int, work: str):
    """(best seconds of the 3x3 conv's kernels, {task name: seconds}, module) of one form."""
    import tilecraft as tc
    from tilecraft.compiler import winograd

    saved = winograd.WINOGRAD_MIN_PIXELS, winograd.MIN_PIXELS_F2
    winograd.WINOGRAD_MIN_PIXELS = winograd.MIN_PIXELS_F2 = 0  # every shape here, whatever its size
    try:
        prepared = tc.api.prepare(graph, target="llvm", layout="NCHWc", winograd=winograd_on)
    finally:
        winograd.WINOGRAD_MIN_PIXELS, winograd.MIN_PIXELS_F2 = saved
    db = os.path.join(work, f"{graph.name}_{'wino' if winograd_on else 'direct'}.db")
    module, best = tune_fresh(prepared, trials=trials, database=db)
    # the 3x3 conv's kernels: everything but the 1x1 producer and the layout change at the end
    times = {name: s for name, s in best.items() if "winograd" in name or "add" in name}
    assert len(times) == (3 if winograd_on else 1), times
    return sum(times.values()), times, module


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=96)
    ap.add_argument("--shapes", type=int, nargs="*", help="channel counts of SHAPES to run (default: all)")
    ap.add_argument("--out", type=Path, default=HERE / "winograd.md")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for channels, size in SHAPES:
            if args.shapes and channels not in args.shapes:
                continue
            graph = block_graph(channels, size)
            direct_s, _, direct_mod = tuned_form(graph, winograd_on=False, trials=args.trials, work=work)
            wino_s, parts, wino_mod = tuned_form(graph, winograd_on=True, trials=args.trials, work=work)
            feeds = direct_mod.random_inputs()
            ref = direct_mod.run(feeds)["out"]
            np.testing.assert_allclose(wino_mod.run(feeds)["out"], ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
            flops = 2.0 * channels * channels * 9 * size * size
            rows.append((channels, size, direct_s * 1e6, wino_s * 1e6, flops, parts))
            split = ", ".join(f"{name.split('_')[1]} {s * 1e6:.0f}" for name, s in parts.items())
            print(f"{channels} ch {size}x{size}: direct {direct_s * 1e6:.0f} us, winograd {wino_s * 1e6:.0f} us ({split})",
                  flush=True)
    load = os.getloadavg()
    lines = [
        "# 3x3 convs: direct vs Winograd F(m x m, 3x3), NCHWc (CPU)",
        "",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; load average at the end {load[0]:.1f}; 2 threads",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores",
        f"- command: `{' '.join(['python bench/winograd.py', *(argv if argv is not None else sys.argv[1:])])}`",
        f"- each form tuned with {args.trials} trials (the whole block graph) into a fresh database; best measured time "
        "of the 3x3 conv's kernels (conv + bias + residual add + ReLU); GFLOP/s counts the direct conv's multiply-adds",
        "",
        "| channels | map | direct us | direct GFLOP/s | Winograd | us (input + matmuls + output) | effective GFLOP/s | speedup |",
        "|---:|---|---:|---:|---|---|---:|---:|",
    ]
    for channels, size, direct_us, wino_us, flops, parts in rows:
        split = " + ".join(f"{v * 1e6:.0f}" for v in parts.values())
        tile = 4 if size % 4 == 0 else 2
        lines.append(f"| {channels} | {size}x{size} | {direct_us:.0f} | {flops / direct_us / 1e3:.0f} | F({tile}x{tile}, 3x3) | "
                     f"{wino_us:.0f} ({split}) | {flops / wino_us / 1e3:.0f} | {direct_us / wino_us:.2f}x |")
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
