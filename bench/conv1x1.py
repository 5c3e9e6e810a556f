"""1x1 convs as convs (packed OIHW16o weights, vectorized along output channels) or as matmuls
W[O, C] @ x[C, H*W] (vectorized along pixels): tuned kernel time of each form, same trials, same run.
This is the measurement behind `compiler/passes.conv1x1_as_matmul`'s thresholds.

    python bench/conv1x1.py [--trials 32] [--out bench/conv1x1.md]

Each shape (MobileNetV2's expand and project convs: conv + bias + ReLU6) is one small graph,
compiled twice by tilecraft for this CPU: once with the rewrite switched off (the conv form) and
once forced on, each tuned with --trials measurements into its own fresh database; the table gives
each form's best measured kernel time and the outputs are compared.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchlib import tune_fresh, write_report

HERE = Path(__file__).resolve().parent
SHAPES = (  # (input channels, output channels, map size)
    (16, 96, 112), (24, 144, 56), (32, 192, 28), (64, 384, 28), (64, 384, 14), (96, 576, 14),
    (160, 960, 7), (144, 24, 56), (576, 96, 14),
)


def conv_graph(cin: int, cout: int, size: int):
    from tilecraft.compiler.ir import TensorType
    from tilecraft.frontends.builder import GraphBuilder

    rng = np.random.default_rng(cin * 1000 + cout)
    b = GraphBuilder(f"conv1x1_{cin}_{cout}_{size}")
    x = b.add_input("x", TensorType((1, cin, size, size), "float32"))
    w = b.const((rng.standard_normal((cout, cin, 1, 1)) / np.sqrt(cin)).astype("float32"), "w")
    bias = b.const(rng.standard_normal(cout).astype("float32"), "bias")
    c = b.add("conv2d", [x, w, bias], "conv", strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1)
    return b.finish([b.add("clip", [c], "relu6", min=0.0, max=6.0)])


def tuned_form(graph, *, as_matmul: bool, trials: int, work: str):
    """(best seconds per call, module, task name) of one form, tuned into a fresh database."""
    import tilecraft as tc
    from tilecraft.compiler import passes

    saved = passes.MATMUL_CONV_MAX_CHANNELS, passes.MATMUL_CONV_MIN_PIXELS
    passes.MATMUL_CONV_MAX_CHANNELS, passes.MATMUL_CONV_MIN_PIXELS = (1 << 30, 0) if as_matmul else (0, 1 << 30)
    try:
        prepared = tc.api.prepare(graph, target="llvm", layout="NCHW")
    finally:
        passes.MATMUL_CONV_MAX_CHANNELS, passes.MATMUL_CONV_MIN_PIXELS = saved
    (task,) = prepared.table.tasks
    assert ("matmul" in task.name) == as_matmul, task.name
    module, best = tune_fresh(prepared, trials=trials, database=os.path.join(work, f"{graph.name}_{'mm' if as_matmul else 'conv'}.db"))
    return best[task.name], module, task.name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--out", type=Path, default=HERE / "conv1x1.md")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for cin, cout, size in SHAPES:
            graph = conv_graph(cin, cout, size)
            conv_s, conv_mod, _ = tuned_form(graph, as_matmul=False, trials=args.trials, work=work)
            mm_s, mm_mod, _ = tuned_form(graph, as_matmul=True, trials=args.trials, work=work)
            feeds = conv_mod.random_inputs()
            np.testing.assert_allclose(mm_mod.run(feeds)["relu6"], conv_mod.run(feeds)["relu6"], rtol=1e-4, atol=1e-4)
            rows.append((cin, cout, size, conv_s * 1e6, mm_s * 1e6))
            print(f"{cin}->{cout} at {size}x{size}: conv {conv_s * 1e6:.0f} us, matmul {mm_s * 1e6:.0f} us", flush=True)
    from tilecraft.compiler.passes import MATMUL_CONV_MAX_CHANNELS, MATMUL_CONV_MIN_PIXELS

    load = os.getloadavg()
    lines = [
        "# 1x1 convs: conv form vs matmul form (CPU)",
        "",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; load average at the end {load[0]:.1f}; 2 threads",
        f"- command: `{' '.join(['python bench/conv1x1.py', *(argv if argv is not None else sys.argv[1:])])}`",
        f"- each form tuned with {args.trials} trials into a fresh database; best measured kernel time (conv + bias + ReLU6)",
        f"- the compiler's rule (`conv1x1_as_matmul`): matmul form when input channels <= {MATMUL_CONV_MAX_CHANNELS} "
        f"and pixels >= {MATMUL_CONV_MIN_PIXELS}",
        "",
        "| in -> out channels | map | conv form us | matmul form us | matmul speedup | rule picks |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for cin, cout, size, conv_us, mm_us in rows:
        rule = "matmul" if cin <= MATMUL_CONV_MAX_CHANNELS and size * size >= MATMUL_CONV_MIN_PIXELS else "conv"
        lines.append(f"| {cin} -> {cout} | {size}x{size} | {conv_us:.0f} | {mm_us:.0f} | {conv_us / mm_us:.2f}x | {rule} |")
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
