"""Command line: `tune MODEL ...` and `tilecraft {run,bench,db,info} ...`.

Every error about the user's input prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from .errors import InputError, TilecraftError

EXIT_USAGE = 2


def _parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        shape = tuple(int(d) for d in dims.lower().replace(",", "x").split("x") if d)
        if any(d <= 0 for d in shape):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input-shape wants NAME=1x3x224x224, got {text!r}") from None
    return name, shape


def _tune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tune", description="Compile (and tune) a model into one loadable module.")
    p.add_argument("model", help="model file: .onnx, or a saved torch ExportedProgram .pt2")
    p.add_argument("--target", default="llvm", help="llvm (this CPU), cuda[:sm_XX], arm, or a TVM target JSON object")
    p.add_argument("--trials", type=int, default=0, help="measurement trials in total across tasks (0: build only)")
    p.add_argument("--db", default="tilecraft.db", help="tuning database (SQLite); reused by later runs")
    p.add_argument("-o", "--output", default=None, help="exported module path (default: MODEL stem + .so)")
    p.add_argument("--input-shape", action="append", type=_parse_shape, default=[], metavar="NAME=DIMS",
                   help="bind an input's shape, e.g. input=1x3x224x224 (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-fuse", action="append", default=[], choices=["epilogue", "attention", "bottleneck"],
                   help="switch a fusion off (ablation)")
    p.add_argument("--layout", default="auto", choices=["auto", "NCHW", "NCHWc"],
                   help="feature maps between convs: NCHWc (channel-blocked) where conv weights are packed (x86), "
                        "else NCHW (auto); or NCHW everywhere")
    p.add_argument("--no-winograd", action="store_true",
                   help="keep 3x3 convs direct (default: Winograd F(4x4, 3x3) or F(2x2, 3x3) on large NCHWc maps)")
    p.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT", help="measure on devices registered at this TVM RPC tracker")
    p.add_argument("--rpc-key", default=None, help="device key at the RPC tracker")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="stop tuning after this long")
    p.add_argument("--strategy", default="evolutionary", choices=["evolutionary", "random"],
                   help="search policy per task: cost-model-guided evolution, or plain random sampling")
    p.add_argument("--scheduler", default="gradient", choices=["gradient", "round_robin"],
                   help="how trials are split across tasks")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def tune_command(args: argparse.Namespace) -> int:
    from . import api

    t0 = time.time()
    prepared = api.prepare(args.model, target=args.target, no_fuse=args.no_fuse, input_shapes=dict(args.input_shape),
                           layout=args.layout, winograd=not args.no_winograd)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    fused = prepared.fusion_report()
    say(f"imported {args.model}: {len(prepared.graph.nodes)} kernels, {len(prepared.tasks)} unique tasks, "
        f"fused groups {fused}  [{time.time() - t0:.1f}s]")
    if args.trials < 0:
        raise InputError("--trials must be >= 0")
    if args.trials > 0:
        result = api.tune(prepared, trials=args.trials, database=args.db, seed=args.seed, rpc_tracker=args.rpc_tracker,
                          rpc_key=args.rpc_key, progress=not args.quiet, time_budget_s=args.time_budget,
                          strategy=args.strategy, scheduler=args.scheduler)
        say(result.summary() if hasattr(result, "summary") else result)
    db = args.db if (args.trials > 0 or os.path.exists(args.db)) else None
    module, report = api.build_prepared(prepared, database=db)
    out = args.output or os.path.splitext(os.path.basename(args.model))[0] + ".so"
    module.export(out)
    if args.trials > 0 and hasattr(result, "plot_curve"):
        result.plot_curve(os.path.splitext(out)[0] + ".tuning.png")
    say(f"built {report.kernels} kernels ({report.tuned}/{report.tasks} tasks from tuning records) "
        f"for {prepared.target.name} -> {out}  [{time.time() - t0:.1f}s]")
    return 0


def _load_inputs(specs: list[str]) -> dict[str, np.ndarray]:
    inputs = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise InputError(f"--input wants NAME=FILE.npy, got {spec!r}")
        if not os.path.exists(path):
            raise InputError(f"input file not found: {path}")
        try:
            inputs[name] = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise InputError(f"{path} is not a .npy array ({e})") from None
    return inputs


def run_command(args: argparse.Namespace) -> int:
    from .compiler.module import Module

    module = Module.load(args.module)
    inputs = _load_inputs(args.input) if args.input else module.random_inputs(args.seed)
    outputs = module.run(inputs)
    if args.output:
        np.savez(args.output, **outputs)
        print(f"wrote {', '.join(outputs)} to {args.output}")
    for name, value in outputs.items():
        print(f"{name}: {value.dtype}{list(value.shape)}  mean {float(np.mean(value)):.6g}  std {float(np.std(value)):.6g}")
    return 0


def bench_command(args: argparse.Namespace) -> int:
    from .compiler.module import Module

    module = Module.load(args.module)
    inputs = _load_inputs(args.input) if args.input else None
    result = module.benchmark(inputs, warmup=args.warmup, repeat=args.repeat)
    print(f"{args.module}: {result}")
    return 0


def info_command(args: argparse.Namespace) -> int:
    from .compiler.module import Module

    module = Module.load(args.module)
    meta = module.meta
    print(f"{args.module}: tilecraft {meta['version']} (TVM {meta['tvm']}), target {meta['target']}")
    for spec in meta["inputs"]:
        print(f"  input  {spec['name']}: {spec['dtype']}{spec['shape']}")
    for spec in meta["outputs"]:
        print(f"  output {spec['name']}: {spec['dtype']}{spec['shape']}")
    return 0


def _main_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tilecraft", description="Run, benchmark and inspect tilecraft modules and databases.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run an exported module")
    r.add_argument("module")
    r.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    r.add_argument("--output", default=None, metavar="FILE.npz")
    r.add_argument("--seed", type=int, default=0, help="seed for random inputs when no --input is given")
    r.set_defaults(fn=run_command)
    b = sub.add_parser("bench", help="time an exported module (warm-up, repeats, median)")
    b.add_argument("module")
    b.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--repeat", type=int, default=30)
    b.set_defaults(fn=bench_command)
    i = sub.add_parser("info", help="show a module's inputs, outputs and target")
    i.add_argument("module")
    i.set_defaults(fn=info_command)
    t = sub.add_parser("tune", help="same as the `tune` command", add_help=False)
    t.set_defaults(fn=None)
    try:
        from .search.db_commands import add_db_parser, run_db

        add_db_parser(sub)
        db_fn = run_db
    except ImportError:  # pragma: no cover - the db commands ship with the package
        db_fn = None
    p.set_defaults(db_fn=db_fn)
    return p


def _guarded(fn, args) -> int:
    try:
        return fn(args)
    except TilecraftError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug of ours, not bad input: still one line, traceback on request
        if os.environ.get("TILECRAFT_DEBUG"):
            raise
        first = (str(e).strip().splitlines() or [""])[-1]
        print(f"internal error: {type(e).__name__}: {first} (set TILECRAFT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def tune_main(argv: list[str] | None = None) -> int:
    args = _tune_parser().parse_args(argv)
    return _guarded(tune_command, args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "tune":
        return tune_main(argv[1:])
    args = _main_parser().parse_args(argv)
    if args.command == "db":
        return _guarded(args.db_fn, args)
    return _guarded(args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
