"""Peer comparison: TVM MetaSchedule vs tilecraft's guided search at equal trial budgets, on this CPU.

    python bench/metaschedule_peer.py                    # all tasks, 64 trials each, write bench/metaschedule_peer.md
    python bench/metaschedule_peer.py --trials 32 --tasks matmul1024

For each task (the same ones as bench/search_efficiency.py):
  MetaSchedule  `tvm.s_tir.meta_schedule.tune_tir` (its own sketch rules, evolutionary search and
                XGBoost model), `max_trials_global = trials`, 16 per iteration, LocalBuilder with a
                `fast_build` (the default build imports tvm.s_tir.tensor_intrin in every fresh worker
                and times out, TVM notes §7), LocalRunner; work dir under bench/work/metaschedule/.
  tilecraft     `search.tuner.tune_tasks` with `make_evolutionary_factory` (fresh XGBCostModel, cold
                start) and the real `Measurer.local`, `trials` trials in batches of 16.
Both runners time 1 call x 3 repeats, min 20 ms per repeat.  Each side's best kernel is then built and
timed again in this process, alternating the two kernels, and the outputs are compared with each other.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from search_efficiency import CONVS, load_tasks, machine  # noqa: E402  (same tasks, same machine line)

WORK = REPO / "bench" / "work" / "metaschedule"
RESULTS = WORK.parent / "metaschedule_peer.json"
REPORT = REPO / "bench" / "metaschedule_peer.md"


def fast_build(mod, target, _params):
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm.compile(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target).mod


def run_metaschedule(task, target, trials: int) -> dict:
    from tvm.s_tir import meta_schedule as ms

    work = WORK / task.name
    shutil.rmtree(work, ignore_errors=True)
    tmp_before = set(Path(tempfile.gettempdir()).iterdir())
    t0 = time.time()
    db = ms.tune_tir(task.mod, target=target.tvm_target, work_dir=str(work), max_trials_global=trials,
                     num_trials_per_iter=16,
                     builder=ms.builder.LocalBuilder(f_build=fast_build, max_workers=2, timeout_sec=60),
                     runner=ms.runner.LocalRunner(evaluator_config=ms.runner.EvaluatorConfig(
                         number=1, repeat=3, min_repeat_ms=20)))
    seconds = time.time() - t0
    sch = ms.tir_integration.compile_tir(db, task.mod, target.tvm_target)
    records = db.get_all_tuning_records()
    costs = [float(np.mean([float(x) for x in r.run_secs])) for r in records if r.run_secs]
    costs = [c for c in costs if math.isfinite(c) and c < 1e9]
    _clean_tmp(tmp_before)
    return {"seconds": seconds, "trials": len(records), "own_best_s": min(costs, default=math.inf),
            "mod": None if sch is None else sch.mod}


def _clean_tmp(before: set) -> None:
    """MetaSchedule's builder leaves tvm_tmp_mod.* in fresh temp folders (TVM notes gotcha 15): ours only."""
    for path in set(Path(tempfile.gettempdir()).iterdir()) - before:
        if path.is_dir() and any(p.name.startswith("tvm_tmp_mod") for p in path.iterdir()):
            shutil.rmtree(path, ignore_errors=True)


def run_tilecraft(task, target, trials: int) -> dict:
    from tilecraft.cost_model.xgb_model import XGBCostModel
    from tilecraft.search.database import Database
    from tilecraft.search.evolutionary import make_evolutionary_factory
    from tilecraft.search.measure import Measurer, RunnerConfig
    from tilecraft.search.tuner import TuneConfig, tune_tasks

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"{task.name}.tilecraft.db"
    for suffix in ("", "-wal", "-shm", ".cost_model"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    config = TuneConfig(trials=trials, batch_size=16, progress=True)
    runner = RunnerConfig(number=1, repeat=3, min_repeat_ms=20, timeout_s=8.0, check_correctness=False)
    t0 = time.time()
    with Database(path) as db, Measurer.local(target, runner_config=runner) as measurer:
        db.add_workload(task)
        factory, finish = make_evolutionary_factory(target, db, config, cost_model=XGBCostModel(target))
        result = tune_tasks([task], target, measurer=measurer, database=db, policy_factory=factory, config=config)
        finish()
        best = db.best(task.workload_key, target.key, k=1)
    seconds = time.time() - t0
    stats = factory.searches[0].stats
    mod = best[0].candidate.apply(task.mod).mod if best else None
    return {"seconds": seconds, "trials": result.trials, "own_best_s": result.tasks[0].best_cost, "mod": mod,
            "search_s": stats.search_s, "candidates_per_s": stats.candidates_per_s}


def time_both(task, target, mods: dict, *, rounds: int = 3) -> dict:
    """Median seconds per call of each built kernel, the kernels timed alternately; outputs must agree.

    Each kernel is built as MetaSchedule's builder builds it (weight-layout rewrite blocks removed, the
    weights assumed pre-transformed); a kernel that had such a block is timed but not compared."""
    import tvm
    import tvm_ffi
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    dev = tvm.cpu(0)
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal(t.shape).astype(t.dtype), dev) for t in task.arg_types[:-1]]
    out_type = task.arg_types[-1]
    funcs, outs, unchecked = {}, {}, []
    for name, mod in mods.items():
        built = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        if not tvm_ffi.structural_equal(built, mod):
            unchecked.append(name)
        funcs[name] = tvm.compile(built, target=target.tvm_target).mod
        out = tvm.runtime.empty(out_type.shape, out_type.dtype, dev)
        funcs[name]["main"](*args, out)
        outs[name] = out.numpy()
    checked = [n for n in outs if n not in unchecked]
    for name in checked[1:]:
        ref = outs[checked[0]]
        np.testing.assert_allclose(outs[name], ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max()))
    times: dict[str, list] = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, f in funcs.items():
            out = tvm.runtime.empty(out_type.shape, out_type.dtype, dev)
            times[name].append(f.time_evaluator("main", dev, number=1, repeat=5, min_repeat_ms=50)(*args, out).median)
    result = {name: float(np.median(ts)) for name, ts in times.items()}
    result["unchecked"] = unchecked
    return result


def write_report(results: dict) -> None:
    lines = [
        "# MetaSchedule vs tilecraft at equal trial budgets",
        "",
        f"Machine: {results['machine']}. Date: {results['date']}.",
        f"Command: `{results['command']}`",
        "",
        "Both tuners: batches of 16, 1 call x 3 repeats (min 20 ms) per candidate, 2 build workers. MetaSchedule: "
        "`tune_tir` with its default CPU rules, evolutionary search and XGBoost model (`fast_build`); tilecraft: "
        "`tune_tasks` + `EvolutionarySearch` + a fresh `XGBCostModel`. *final GFLOP/s* = the best kernel of each, "
        "rebuilt and timed again in one process, alternating the two (median of 3 x 5 repeats, outputs compared). "
        "*own best* = the best measurement the tuner itself recorded. The machine is shared with other jobs, so "
        "timings carry noise (load average shown).",
        "",
        "| task | trials | MetaSchedule final GFLOP/s | tilecraft final GFLOP/s | MetaSchedule own best | tilecraft own best | "
        "MetaSchedule time (s) | tilecraft time (s) | tilecraft search cand/s | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["tasks"].values():
        g = lambda s: r["flops"] / s / 1e9 if s and math.isfinite(s) else 0.0  # noqa: E731
        lines.append(
            f"| {r['task']} | {r['trials']} | {g(r['final_s'].get('metaschedule')):.1f}"
            f"{' (layout rewrite: not compared)' if 'metaschedule' in r['final_s'].get('unchecked', []) else ''} | "
            f"{g(r['final_s'].get('tilecraft')):.1f} | "
            f"{g(r['metaschedule']['own_best_s']):.1f} | {g(r['tilecraft']['own_best_s']):.1f} | "
            f"{r['metaschedule']['seconds']:.0f} | {r['tilecraft']['seconds']:.0f} | {r['tilecraft']['candidates_per_s']:.0f} | "
            f"{r['load'][0]:.1f}-{r['load'][1]:.1f} |")
    if results.get("notes"):
        lines += ["", "Notes:", "", *[f"- {n}" for n in results["notes"]]]
    REPORT.write_text("\n".join(lines) + "\n")


def main() -> None:
    import os

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(("matmul1024",) + CONVS[:2]))
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--note", action="append", default=[])
    args = p.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"tasks": {}}
    results["notes"] = sorted(set(results.get("notes", [])) | set(args.note))
    if not args.report_only:
        from tilecraft.targets.base import resolve_target

        target = resolve_target("llvm")
        results.update(machine=machine(), date=datetime.date.today().isoformat(),
                       command="python bench/metaschedule_peer.py " + " ".join(sys.argv[1:]))
        for task in load_tasks(args.tasks.split(",")):
            entry = results["tasks"].get(task.name, {})
            if entry.get("trials") != args.trials:
                load0 = os.getloadavg()[0]
                print(f"{task.name}: MetaSchedule, {args.trials} trials", flush=True)
                peer = run_metaschedule(task, target, args.trials)
                print(f"{task.name}: tilecraft, {args.trials} trials", flush=True)
                ours = run_tilecraft(task, target, args.trials)
                for side, run in (("metaschedule", peer), ("tilecraft", ours)):  # kept: the final timing can be redone
                    mod = run.pop("mod")
                    if mod is not None:
                        (WORK / f"{task.name}.{side}.best.py").write_text(mod.script())
                entry = {"task": task.name, "flops": task.flops, "trials": args.trials, "metaschedule": peer,
                         "tilecraft": ours, "load": [load0, os.getloadavg()[0]]}
                results["tasks"][task.name] = entry
                RESULTS.write_text(json.dumps(results, indent=1))
            if "final_s" not in entry:
                import tvm

                mods = {side: tvm.script.from_source((WORK / f"{task.name}.{side}.best.py").read_text())
                        for side in ("metaschedule", "tilecraft") if (WORK / f"{task.name}.{side}.best.py").exists()}
                entry["final_s"] = time_both(task, target, mods)
                RESULTS.write_text(json.dumps(results, indent=1))
    write_report(results)
    print(REPORT.read_text())


if __name__ == "__main__":
    main()
