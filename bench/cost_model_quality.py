"""Cost-model quality on real measurements of this CPU.

    python bench/cost_model_quality.py                 # collect (or reuse) the dataset, evaluate, write bench/cost_model.md
    python bench/cost_model_quality.py --collect-only  # only measure
    python bench/cost_model_quality.py --per-task 100  # a smaller dataset (a quick look)
    python bench/cost_model_quality.py --tasks A,B     # only these tasks, measured and evaluated (the 1024^3
                                                       # matmul's random candidates take 2-7 s each to measure)
    python bench/cost_model_quality.py --records-from bench/work/v2/tuned.db ... --out bench/cost_model_search.md
                                                       # the candidates tuning runs measured instead (no measuring;
                                                       # --remeasure-rounds 3: a less noisy truth for some of them;
                                                       # --truth min: a candidate's cost is its fastest repeat)

Dataset: random sampled candidates (`search.sampling.sample_candidates`) of a 1024^3 matmul,
ResNet-18's distinct 3x3/1x1 conv tasks, a dense layer (128x768x768 + bias + relu) and
ResNet-18's classifier, each measured by the real `Measurer.local`; stored in
`bench/work/cost_model.db`, which a re-run reuses (it only tops up missing trials). `--retest N`
candidates per task are measured once more, later, into `bench/work/cost_model.retest.db`: how
well two measurement sessions agree is the ceiling for any model on this shared machine.

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
        (a) is repeated with each task's training part cut to 25, 50, 100, ... candidates: a learning
        curve that says whether more measurements would still raise the accuracy.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from benchlib import cpu_name

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
    tasks = tc.api.prepare(b.finish([y]), layout="NCHW").tasks
    return max(tasks, key=lambda t: t.flops)


def benchmark_tasks(*, matmul_size: int = 1024) -> list:
    """The matmul, dense, ResNet-18 conv tasks (distinct 3x3 and 1x1 shapes) and ResNet-18's classifier."""
    import tilecraft as tc

    models = WORK / "models"
    if not (models / "resnet18.onnx").exists():
        import subprocess

        subprocess.run([sys.executable, "/work/shared/models/materialize.py", str(models)], check=True, capture_output=True)
    resnet = tc.api.prepare(models / "resnet18.onnx", layout="NCHW").tasks
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


def select_tasks(tasks: list, names: str) -> list:
    """The tasks named in the comma-separated `names` (all of them if it is empty), in benchmark order;
    ValueError naming any name that is not a benchmark task."""
    wanted = set(filter(None, (n.strip() for n in names.split(","))))
    if unknown := wanted - {t.name for t in tasks}:
        raise ValueError(f"no benchmark task named {', '.join(sorted(unknown))} (there are {', '.join(t.name for t in tasks)})")
    return [t for t in tasks if not wanted or t.name in wanted]


# --------------------------------------------------------------------------- dataset
def collect(tasks, target, db, *, per_task: int, batch: int = 32, seed: int = 0, repeat: int = 5,
            min_repeat_ms: int = 30) -> None:
    """Top up every task to `per_task` measured candidates (re-runs reuse what the database has)."""
    from tilecraft import __version__
    from tilecraft.search.database import trace_hash
    from tilecraft.search.measure import Measurer, RunnerConfig
    from tilecraft.search.measure_types import Record
    from tilecraft.search.sampling import sample_candidates

    runner = RunnerConfig(number=1, repeat=repeat, min_repeat_ms=min_repeat_ms, timeout_s=30.0)
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


def retest(tasks, target, db, retest_db, *, per_task: int, seed: int = 0, repeat: int = 5,
           min_repeat_ms: int = 30) -> None:
    """Measure `per_task` already measured candidates of each task a second time, later and in another
    order, into `retest_db`: how well two sessions on this (shared, busy) machine agree bounds any model."""
    from tilecraft import __version__
    from tilecraft.search.measure import Measurer, RunnerConfig
    from tilecraft.search.measure_types import Record

    rng = np.random.default_rng(seed)
    runner = RunnerConfig(number=1, repeat=repeat, min_repeat_ms=min_repeat_ms, timeout_s=30.0, check_correctness=False)
    with Measurer.local(target, runner_config=runner) as measurer:
        for task in tasks:
            if retest_db.count(task.workload_key, target.key) >= per_task:
                continue
            records = [r for r in db.records(task.workload_key, target.key)]
            picked = [records[i] for i in rng.permutation(len(records))[:per_task]]
            retest_db.add_workload(task)
            for start in range(0, len(picked), 32):
                batch = picked[start:start + 32]
                results = measurer.measure(task, [r.candidate for r in batch])
                retest_db.commit([Record(task.workload_key, target.key, r.candidate, res, task.name,
                                         f"tilecraft {__version__}") for r, res in zip(batch, results)])
            print(f"  retest {task.name}: {len(picked)} re-measured", flush=True)


def test_retest_agreement(task, target, db, retest_db) -> tuple[int, float]:
    """(candidates, pairwise agreement of the two sessions' mean costs)."""
    from tilecraft.cost_model.base import cost_of
    from tilecraft.search.database import trace_hash

    first = {trace_hash(r.candidate.trace_json): cost_of(r.result) for r in db.records(task.workload_key, target.key)}
    pairs = [(first[h], cost_of(r.result)) for r in retest_db.records(task.workload_key, target.key)
             if (h := trace_hash(r.candidate.trace_json)) in first]
    if len(pairs) < 10:
        return len(pairs), float("nan")
    a, b = (np.asarray(x) for x in zip(*pairs))
    with np.errstate(divide="ignore"):
        return len(pairs), pairwise_accuracy(1 / a, 1 / b)


# --------------------------------------------------------------------------- metrics
def pair_agreement(scores: np.ndarray, truth: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Per pair (i, j): 1 if the scores order it as the truth does, 0 if the other way, 1/2 for a score tie."""
    sign = np.sign(scores[i] - scores[j]) * np.sign(truth[i] - truth[j])
    return np.where(sign == 0, 0.5, sign > 0)


def pairwise_accuracy(scores: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of pairs with different true throughput that the scores order the same way (score ties: 1/2)."""
    i, j = np.triu_indices(len(truth), 1)
    keep = truth[i] != truth[j]
    if not keep.any():
        return float("nan")
    return float(np.mean(pair_agreement(scores, truth, i[keep], j[keep])))


def top_k_recall(scores: np.ndarray, truth: np.ndarray, k: int) -> float:
    """|true top-k  ∩  predicted top-k| / k over the test candidates (ties broken by index)."""
    k = min(k, len(truth))
    true_top = set(np.argsort(-truth, kind="stable")[:k])
    pred_top = set(np.argsort(-scores, kind="stable")[:k])
    return len(true_top & pred_top) / k


def best_of_top_k(scores: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Best true throughput among the predicted top-k, over the best of the test set."""
    pred_top = np.argsort(-scores, kind="stable")[:min(k, len(truth))]
    return float(truth[pred_top].max() / truth.max()) if truth.max() > 0 else float("nan")


def pairwise_accuracy_margin(scores: np.ndarray, truth: np.ndarray, margin: float = 1.1) -> float:
    """NOT the headline number: pairwise accuracy over the pairs whose throughputs differ by more than
    `margin` x (a failure vs a success always counts), i.e. pairs a measurement can tell apart."""
    i, j = np.triu_indices(len(truth), 1)
    hi, lo = np.maximum(truth[i], truth[j]), np.minimum(truth[i], truth[j])
    keep = (hi > margin * lo) & (hi > 0)
    if not keep.any():
        return float("nan")
    return float(np.mean(pair_agreement(scores, truth, i[keep], j[keep])))


METRICS = ("pairwise", "recall@1", "recall@5", "recall@10", "best@10", "pairwise >10% apart")


def metrics(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {"pairwise": pairwise_accuracy(scores, truth), "pairwise >10% apart": pairwise_accuracy_margin(scores, truth),
            "recall@1": top_k_recall(scores, truth, 1),
            "recall@5": top_k_recall(scores, truth, 5), "recall@10": top_k_recall(scores, truth, 10),
            "best@10": best_of_top_k(scores, truth, 10)}


# --------------------------------------------------------------------------- evaluation
def load_dataset(tasks, target, db) -> list[tuple]:
    """[(task, candidates, costs, repeats)] with costs in seconds (inf = failed)."""
    from tilecraft.cost_model.base import cost_of

    out = []
    for task in tasks:
        records = db.records(task.workload_key, target.key, include_errors=True)
        cands = [r.candidate for r in records]
        costs = np.asarray([cost_of(r.result) for r in records])
        out.append((task, cands, costs, [r.result.costs for r in records]))
    return out


TRUTHS = ("mean", "min")  # which statistic of a candidate's timed repeats is its cost


def cost_by(result, truth: str) -> float:
    """The cost of a measurement under `truth`: the mean of its repeats (what the tuner records) or
    their minimum (the run least disturbed by the rest of the host); inf for a failure."""
    from tilecraft.cost_model.base import cost_of

    return cost_of(result, truth)


def load_tuning_records(paths: list[str], target, *, min_records: int, truth: str = "mean",
                        timestamps: dict | None = None) -> list[tuple]:
    """The dataset of `load_dataset` from tuning databases: every workload of `target` with at least
    `min_records` distinct measured candidates (a workload in several databases is one task; a
    candidate measured in several keeps its first measurement, so no trace is in both a train and a
    test split).  These are the candidates a search chose to measure (evolved from the best,
    cost-model ranked, plus its epsilon-greedy random share), so they crowd near the best: the
    distribution the model ranks during tuning, and a harder one than uniform random.  `timestamps`, if
    given, receives {workload key: when each kept candidate was measured (seconds)}."""
    from tilecraft.search.database import Database, trace_hash

    tasks, records = {}, {}
    for path in paths:
        with Database(path, create=False) as db:
            for summary in db.workloads():
                key = summary.workload_key
                entry = db.workload(key)
                if summary.target_key != target.key or entry is None:
                    continue
                tasks.setdefault(key, entry)
                seen = records.setdefault(key, {})
                for r in db.records(key, target.key, include_errors=True):
                    seen.setdefault(trace_hash(r.candidate.trace_json), r)
    out = []
    for key, entry in tasks.items():
        kept = list(records[key].values())
        if len(kept) >= min_records:
            costs = np.asarray([cost_by(r.result, truth) for r in kept])
            out.append((entry.to_task(), [r.candidate for r in kept], costs, [r.result.costs for r in kept]))
            if timestamps is not None:
                timestamps[key] = np.asarray([r.result.timestamp for r in kept])
    return out


def remeasure(data, target, retest_db, *, tasks: int, per_task: int, rounds: int, seed: int = 0) -> dict:
    """Measure `per_task` successful candidates of each of the `tasks` largest tasks `rounds` more times,
    round by round over all of them (so the host's drift spreads over every task), into `retest_db`
    (a re-run reuses what is there).  Returns {workload key: {trace hash: [cost of each round]}}."""
    from tilecraft import __version__
    from tilecraft.cost_model.base import cost_of
    from tilecraft.search.database import trace_hash
    from tilecraft.search.measure import Measurer, RunnerConfig
    from tilecraft.search.measure_types import Record

    rng = np.random.default_rng(seed)
    picked = []
    for task, cands, costs, _ in sorted(data, key=lambda d: -len(d[1]))[:tasks]:
        ok = np.flatnonzero(np.isfinite(costs))
        picked.append((task, [cands[i] for i in rng.permutation(ok)[:per_task]]))
    with Measurer.local(target, runner_config=RunnerConfig(check_correctness=False)) as measurer:
        for round_ in range(rounds):
            for task, cands in picked:
                retest_db.add_workload(task)
                if retest_db.count(task.workload_key, target.key) >= (round_ + 1) * len(cands):
                    continue
                results = measurer.measure(task, cands)
                retest_db.commit([Record(task.workload_key, target.key, c, r, task.name, f"tilecraft {__version__}")
                                  for c, r in zip(cands, results)])
            print(f"  re-measured round {round_ + 1}/{rounds}", flush=True)
    out = {}
    for task, _ in picked:
        runs = out.setdefault(task.workload_key, {})
        for r in retest_db.records(task.workload_key, target.key):
            runs.setdefault(trace_hash(r.candidate.trace_json), []).append(cost_of(r.result))
    return out


def evaluate_remeasured(data, factories, remeasured: dict) -> tuple[dict, dict, float]:
    """(a'') the re-measured candidates as the test set, every other candidate of every task as training.
    Returns ({model: metrics against the tuning run's own measurement}, {model: metrics against the
    geometric mean of all sessions}, the pairwise agreement of the first session with the later ones)."""
    from tilecraft.cost_model.base import normalized_throughput
    from tilecraft.search.database import trace_hash

    tests, agree = [], []
    for task, cands, costs, _ in data:
        runs = remeasured.get(task.workload_key, {})
        test = [i for i, c in enumerate(cands) if len(runs.get(trace_hash(c.trace_json), [])) > 0]
        if len(test) < 10:
            continue
        later = np.asarray([runs[trace_hash(cands[i].trace_json)] for i in test])  # [candidates, rounds]
        all_sessions = np.exp(np.mean(np.log(np.column_stack([costs[test], later])), axis=1))
        tests.append((task, [cands[i] for i in test], set(test), normalized_throughput(costs[test]),
                      normalized_throughput(all_sessions)))
        with np.errstate(divide="ignore"):
            agree.append(pairwise_accuracy(1 / costs[test], 1 / np.exp(np.mean(np.log(later), axis=1))))
    held = {task.workload_key: test for task, _, test, _, _ in tests}
    first, everything = {}, {}
    for name, factory in factories.items():
        model = factory()
        for task, cands, costs, reps in data:
            train = [i for i in range(len(cands)) if i not in held.get(task.workload_key, set())]
            _add(model, task, [cands[i] for i in train], _results(costs[train], [reps[i] for i in train]))
        _retrain(model)
        one, many = [], []
        for task, test_cands, _, truth_one, truth_all in tests:
            scores = model.predict(task, test_cands)
            one.append(metrics(scores, truth_one))
            many.append(metrics(scores, truth_all))
        first[name] = {k: float(np.nanmean([r[k] for r in one])) for k in METRICS}
        everything[name] = {k: float(np.nanmean([r[k] for r in many])) for k in METRICS}
    return first, everything, float(np.mean(agree))


def search_report(*, data, seen, seen_tasks, unseen, ceiling, paths, command: str, seconds: float,
                  remeasured: tuple | None = None, breakdown: tuple = ([], []), truth: str = "mean") -> str:
    """The report of --records-from: splits (a) and (b) on tuning records, with their repeat-noise ceiling."""
    default = default_model()
    mean_ceiling = float(np.nanmean(list(ceiling.values())))
    out = [
        "# Cost-model quality on the candidates tuning runs measured",
        "",
        f"- machine: {machine()}",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- command: `{command}` ({seconds:.0f} s; records of {', '.join(f'`{p}`' for p in paths)}"
        + ("; measuring only for (a''), into `bench/work/`, reused by a re-run)" if remeasured else "; no measuring)"),
        "- dataset: every workload with enough records; the candidates the evolutionary search chose to",
        "  measure (near the best, plus its random share), measured over several tuning sessions",
        f"- a candidate's cost: the {truth} of its timed repeats"
        + (" (what the tuner records)" if truth == "mean" else " (the tuner records the mean)"),
        "",
        "## Summary",
        "",
        f"- {len(data)} tasks, {sum(len(c) for _, c, _, _ in data)} measured candidates. Pairwise accuracy, unseen "
        f"candidates of seen tasks: {default} {seen[default]['pairwise']:.3f}, random {seen['random']['pairwise']:.3f}; "
        f"unseen tasks: {unseen[default]['pairwise']:.3f}.",
        f"- Target 0.85 on seen tasks: {'met' if seen[default]['pairwise'] >= 0.85 else 'NOT met'} here either. "
        f"The measurements' own repeats agree on {mean_ceiling:.3f} of pairs (one repeat against the mean of the",
        f"  others, averaged over tasks): {default} reaches {seen[default]['pairwise'] / mean_ceiling:.0%} of that.",
        "",
        "## (a) Unseen candidates of seen tasks (70/30 split per task, mean of 3 splits, averaged over tasks)",
        "",
        _metrics_table(seen),
        "",
        "## (b) Unseen tasks (leave one task out, averaged over tasks)",
        "",
        _metrics_table(unseen),
        "",
        *(_remeasured_section(*remeasured) if remeasured else []),
        *(_breakdown_section(*breakdown, truth) if breakdown[0] else []),
        "## Per task",
        "",
        _table(["task", "workload", "candidates", "failed", "best GFLOP/s", "median / best", "repeats agree",
                f"{default} (a)"],
               [[t.name, t.workload_key[:10], len(c), int((~np.isfinite(k)).sum()),
                 float(t.flops / k[np.isfinite(k)].min() / 1e9),
                 float(np.median(k[np.isfinite(k)].min() / k[np.isfinite(k)])), ceiling[t.workload_key],
                 seen_tasks[default][t.workload_key]] for t, c, k, _ in data]),
        "",
        "Metrics as in `bench/cost_model.md`.",
        "",
    ]
    return "\n".join(out)


RATIO_EDGES = (1.0, 1.02, 1.05, 1.1, 1.2, 1.5, math.inf)
GAP_EDGES = (0.0, 30.0, 120.0, 600.0, 1800.0, math.inf)  # seconds between the two measurements


def _pair_arrays(scores, costs, repeats, stamps, rng, truth: str):
    """Over the pairs of one test set with different measured throughput: whether the model orders each
    like the measurement, and their throughput ratio; whether two halves of the measurement's own repeats
    order it alike, and the ratio by the first half; the time between the pair's two measurements."""
    from tilecraft.cost_model.base import normalized_throughput

    y = normalized_throughput(costs)
    stat = np.min if truth == "min" else np.mean
    half_a, half_b = np.zeros(len(y)), np.zeros(len(y))
    for n, reps in enumerate(repeats):
        if y[n] > 0 and len(reps) >= 2:
            order = rng.permutation(len(reps))
            half_a[n] = 1 / stat(np.asarray(reps)[order[: len(reps) // 2]])
            half_b[n] = 1 / stat(np.asarray(reps)[order[len(reps) // 2:]])
        else:
            half_a[n] = half_b[n] = y[n]
    i, j = np.triu_indices(len(y), 1)
    differ = y[i] != y[j]
    i, j = i[differ], j[differ]

    def apart(a):
        return np.maximum(a[i], a[j]) / np.maximum(np.minimum(a[i], a[j]), 1e-300)

    # the halves' column is banded by half a alone (split-half): banding it by the whole measurement,
    # of which both halves are part, would make them disagree on the close pairs by construction
    return (pair_agreement(scores, y, i, j), apart(y), pair_agreement(half_a, half_b, i, j), apart(half_a),
            np.abs(stamps[i] - stamps[j]))


def error_breakdown(data, kept, timestamps: dict, *, truth: str, seed: int = 0) -> tuple[list, list]:
    """Where the model's order differs from the measurement's, over split (a)'s test pairs (each task
    weighted equally, as in the headline number).  Returns the rows of two tables:
    by throughput ratio:  [bucket, share of pairs, model accuracy, halves of the repeats agree]
    by time apart (pairs 1.1-1.5x apart): [bucket, share of those pairs, model accuracy]."""
    rng = np.random.default_rng(seed)
    by_ratio = np.zeros((len(RATIO_EDGES) - 1, 4))
    by_gap = np.zeros((len(GAP_EDGES) - 1, 2))
    for index, test, scores in kept:
        task, _, costs, repeats = data[index]
        model, ratio, halves, halves_ratio, gap = _pair_arrays(np.asarray(scores), costs[test], [repeats[t] for t in test],
                                                 timestamps[task.workload_key][test], rng, truth)
        if not len(model):
            continue
        weight = 1.0 / len(model)
        for b, (lo, hi) in enumerate(zip(RATIO_EDGES, RATIO_EDGES[1:])):
            m = (ratio >= lo) & (ratio < hi)
            h = (halves_ratio >= lo) & (halves_ratio < hi)
            by_ratio[b] += [m.sum() * weight, model[m].sum() * weight, h.sum() * weight, halves[h].sum() * weight]
        mid = (ratio >= 1.1) & (ratio < 1.5)
        for b, (lo, hi) in enumerate(zip(GAP_EDGES, GAP_EDGES[1:])):
            m = mid & (gap >= lo) & (gap < hi)
            by_gap[b] += [m.sum() * weight, model[m].sum() * weight]
    name = lambda lo, hi, unit="": f"{lo:g}{unit} - {hi:g}{unit}" if math.isfinite(hi) else f">= {lo:g}{unit}"
    ratio_rows = [[name(lo, hi, "x"), n / by_ratio[:, 0].sum(), a / n, h / nh if nh else float("nan")]
                  for (lo, hi), (n, a, nh, h) in zip(zip(RATIO_EDGES, RATIO_EDGES[1:]), by_ratio) if n]
    gap_rows = [[name(lo, hi, " s"), n / by_gap[:, 0].sum(), a / n]
                for (lo, hi), (n, a) in zip(zip(GAP_EDGES, GAP_EDGES[1:]), by_gap) if n]
    return ratio_rows, gap_rows


def _breakdown_section(ratio_rows, gap_rows, truth: str) -> list[str]:
    return [
        "## Where the model and the measurement disagree (split (a), the default model)",
        "",
        f"Test pairs by how far apart their measured throughputs are ({truth} of the repeats), with the",
        "share of pairs in each band (tasks weighted equally) and the model's accuracy; beside them, how often",
        "the second half of each measurement's timed repeats orders a pair like the first half, for the pairs",
        "that the first half puts in the band (the noise within one measurement; from one measurement to the",
        "next, seconds or hours later, it is larger, see RESULTS.md):",
        "",
        _table(["apart", "share of pairs", "model", "repeat halves agree"], ratio_rows),
        "",
        "Pairs 1.1-1.5x apart, by the time between their two measurements (candidates measured close together",
        "are mostly mutants of one parent, alike in structure; far apart, from different stages of the search):",
        "",
        _table(["measured apart", "share", "model"], gap_rows),
        "",
    ]


def noise_ceiling(costs: np.ndarray, repeats, rng) -> float:
    """Pairwise agreement between two halves of the measurement itself: a random repeat vs the mean of the rest."""
    one, rest = [], []
    for c, reps in zip(costs, repeats):
        if not np.isfinite(c) or len(reps) < 2:
            one.append(0.0 if not np.isfinite(c) else 1 / c)
            rest.append(one[-1])
            continue
        k = rng.integers(len(reps))
        one.append(1 / reps[k])
        rest.append(1 / np.mean([r for i, r in enumerate(reps) if i != k]))
    return pairwise_accuracy(np.asarray(one), np.asarray(rest))


ENSEMBLE = "XGB-rank, 3 boosters"


def make_models(target, extractor, *, peer: bool):
    from tilecraft.cost_model.random_model import RandomCostModel
    from tilecraft.cost_model.xgb_model import XGBConfig, XGBCostModel

    models = {
        "XGB-rank": lambda: XGBCostModel(target, config=XGBConfig(objective="rank"), extractor=extractor),
        "XGB-regression": lambda: XGBCostModel(target, config=XGBConfig(objective="regression"), extractor=extractor),
        # not the default: 3x the retraining the tuner pays after every measured batch
        ENSEMBLE: lambda: XGBCostModel(target, config=XGBConfig(objective="rank", ensemble=3), extractor=extractor),
        "random": lambda: RandomCostModel(seed=0),
    }
    if peer:
        models["MetaSchedule XGB (peer)"] = lambda: MetaSchedulePeer(target)
    return models


class MetaSchedulePeer:
    """TVM MetaSchedule's PerStoreFeature + XGBModel behind our interface: a peer for this report only."""

    def __init__(self, target):
        import logging

        from tvm.s_tir import meta_schedule as ms

        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
        self.ms, self.target = ms, target
        self.model = ms.cost_model.XGBModel(extractor=ms.feature_extractor.PerStoreFeature(),
                                            adaptive_training=False, num_warmup_samples=0)
        self._contexts: dict[str, object] = {}
        self._pending: list[tuple] = []

    def _context(self, task):
        if task.workload_key not in self._contexts:
            self._contexts[task.workload_key] = self.ms.TuneContext(mod=task.mod, target=self.target.tvm_target,
                                                                    task_name=task.name)
        return self._contexts[task.workload_key]

    def _measure_candidates(self, task, candidates):
        from tilecraft.cost_model.features import replay

        out = []
        for c in candidates:
            sch = replay(task.mod, c.trace_json)
            out.append(self.ms.MeasureCandidate(sch, self.ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])))
        return out

    def add(self, task, candidates, results) -> None:
        self._pending.append((task, candidates, results))

    def retrain(self) -> None:  # MetaSchedule retrains on everything at each update: feed it one batch per task
        for task, candidates, results in self._pending:
            runner = [self.ms.runner.RunnerResult(run_secs=list(r.costs), error_msg=None) if r.ok
                      else self.ms.runner.RunnerResult(run_secs=None, error_msg=r.message or "failed") for r in results]
            self.model.update(self._context(task), self._measure_candidates(task, candidates), runner)
        self._pending.clear()

    def update(self, task, candidates, results) -> None:
        self.add(task, candidates, results)
        self.retrain()

    def predict(self, task, candidates) -> np.ndarray:
        return np.asarray(self.model.predict(self._context(task), self._measure_candidates(task, candidates)))


def _results(costs, repeats):
    """MeasureResults with each candidate's timed repeats (the model picks its label statistic from them)."""
    from tilecraft.search.measure_types import ErrorKind, MeasureResult

    return [MeasureResult(tuple(float(r) for r in reps) or (float(c),)) if np.isfinite(c)
            else MeasureResult.failure(ErrorKind.RUN, "failed") for c, reps in zip(costs, repeats)]


def _add(model, task, cands, results) -> None:
    """Buffer a batch; the learned models train once after all batches (update() would retrain per batch)."""
    if hasattr(model, "add"):
        model.add(task, cands, results)
    else:
        model.update(task, cands, results)


def _retrain(model) -> None:
    if hasattr(model, "retrain"):
        model.retrain()


def evaluate_seen(data, factories, *, seeds: int = 3, keep: str | None = None, kept: list | None = None,
                  train_size: int | None = None) -> tuple[dict, dict]:
    """(a) 70/30 split of every task; train on all tasks' 70 % (its first `train_size` candidates if
    given). Returns {model: {metric: mean}}, {model: {workload key: pairwise}}.  For model `keep`,
    appends (task index, test indices, scores) of every split to `kept`."""
    from tilecraft.cost_model.base import normalized_throughput

    table, per_task = {}, {}
    for name, factory in factories.items():
        rows, tasks_pw = [], {}
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            model = factory()
            splits = []
            for task, cands, costs, reps in data:
                order = rng.permutation(len(cands))
                cut = int(0.7 * len(cands))
                train = order[: cut if train_size is None else min(train_size, cut)]
                splits.append((task, train, order[cut:]))
                _add(model, task, [cands[i] for i in train], _results(costs[train], [reps[i] for i in train]))
            _retrain(model)
            for index, ((task, cands, costs, _), (_, _, test)) in enumerate(zip(data, splits)):
                truth = normalized_throughput(costs[test])
                scores = model.predict(task, [cands[i] for i in test])
                if name == keep and kept is not None:
                    kept.append((index, test, scores))
                m = metrics(scores, truth)
                rows.append(m)
                tasks_pw.setdefault(task.workload_key, []).append(m["pairwise"])
        table[name] = {k: float(np.nanmean([r[k] for r in rows])) for k in METRICS}
        per_task[name] = {t: float(np.mean(v)) for t, v in tasks_pw.items()}
    return table, per_task


CURVE_SIZES = (25, 50, 100, 200, 400, 800, 1050, 1600)  # training candidates per task for the learning curve


def evaluate_learning_curve(data, factory, *, sizes=CURVE_SIZES, seeds: int = 3) -> list[tuple[float, float, float]]:
    """(a) with less training data: `evaluate_seen`'s splits, each task's 70 % cut to its first n
    candidates.  Does more data still help, or has the model stopped?  Returns (mean training
    candidates per task, pairwise, recall@10) for each n, then for all of the 70 %."""
    cuts = [int(0.7 * len(c)) for _, c, _, _ in data]
    out = []
    for n in [*(n for n in sizes if n < max(cuts)), None]:
        table, _ = evaluate_seen(data, {"model": factory}, seeds=seeds, train_size=n)
        used = np.mean([cut if n is None else min(n, cut) for cut in cuts])
        out.append((float(used), table["model"]["pairwise"], table["model"]["recall@10"]))
    return out


def evaluate_retested(data, factories, sessions_costs) -> dict:
    """(a') like (a), but the test set is each task's re-measured candidates and their truth the geometric
    mean of both sessions (less noisy); training uses every other candidate of every task."""
    from tilecraft.cost_model.base import normalized_throughput
    from tilecraft.search.database import trace_hash

    table = {}
    for name, factory in factories.items():
        model, tests = factory(), []
        for task, cands, costs, reps in data:
            second = sessions_costs.get(task.name, {})
            test = [i for i, c in enumerate(cands) if trace_hash(c.trace_json) in second]
            train = [i for i in range(len(cands)) if i not in set(test)]
            _add(model, task, [cands[i] for i in train], _results(costs[train], [reps[i] for i in train]))
            truth_costs = np.sqrt(costs[test] * np.asarray([second[trace_hash(cands[i].trace_json)] for i in test]))
            tests.append((task, [cands[i] for i in test], normalized_throughput(truth_costs)))
        _retrain(model)
        rows = [metrics(model.predict(task, cands), truth) for task, cands, truth in tests if len(cands) >= 10]
        table[name] = {k: float(np.nanmean([r[k] for r in rows])) for k in METRICS}
    return table


def second_session_costs(data, target, retest_db) -> dict[str, dict[str, float]]:
    """{task name: {trace hash: mean cost of the re-measurement}}."""
    from tilecraft.cost_model.base import cost_of
    from tilecraft.search.database import trace_hash

    return {t.name: {trace_hash(r.candidate.trace_json): cost_of(r.result)
                     for r in retest_db.records(t.workload_key, target.key)} for t, _, _, _ in data}


def evaluate_unseen(data, factories) -> tuple[dict, dict]:
    """(b) leave one task out: train on every other task, test on all of its candidates."""
    from tilecraft.cost_model.base import normalized_throughput

    table, per_task = {}, {}
    for name, factory in factories.items():
        rows, tasks_pw = [], {}
        for held in range(len(data)):
            model = factory()
            for i, (task, cands, costs, reps) in enumerate(data):
                if i != held:
                    _add(model, task, cands, _results(costs, reps))
            _retrain(model)
            task, cands, costs, _ = data[held]
            m = metrics(model.predict(task, cands), normalized_throughput(costs))
            rows.append(m)
            tasks_pw[task.workload_key] = m["pairwise"]
        table[name] = {k: float(np.nanmean([r[k] for r in rows])) for k in METRICS}
        per_task[name] = tasks_pw
    return table, per_task


def feature_speed(data, target, *, tries: int = 2) -> list[tuple[str, int, float, float]]:
    """Cold-cache feature extraction per task: (task, candidates, candidates/s, load average then).

    The best of `tries` (a fresh extractor each): other jobs' load on this box only ever slows it down."""
    from tilecraft.cost_model.features import FeatureExtractor

    out = []
    for task, cands, _, _ in data:
        sample = cands[:100]
        best = 0.0
        for _ in range(tries):
            fx = FeatureExtractor(target)
            t0 = time.perf_counter()
            fx.extract(task, sample)
            best = max(best, len(sample) / (time.perf_counter() - t0))
        out.append((task.name, len(sample), best, os.getloadavg()[0]))
    return out


def training_speed(data, target, extractor) -> list[tuple[str, int, float, float]]:
    """(objective, samples, seconds to retrain on all of them, predictions/s over all candidates)."""
    from tilecraft.cost_model.xgb_model import XGBConfig, XGBCostModel

    out = []
    for objective in ("rank", "regression"):
        model = XGBCostModel(target, config=XGBConfig(objective=objective), extractor=extractor)
        for task, cands, costs, reps in data:
            model.add(task, cands, _results(costs, reps))
        t0 = time.perf_counter()
        model.retrain()
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        n = 0
        for task, cands, _, _ in data:
            model.predict(task, cands)  # features cached: this times the model
            n += len(cands)
        out.append((objective, model.num_samples, train_s, n / (time.perf_counter() - t0)))
    return out


# --------------------------------------------------------------------------- report
def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def _table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _metrics_table(by_model: dict) -> str:
    """{model: {metric: value}} as a table, one row per model."""
    return _table(["model", *METRICS], [[m, *[v[k] for k in METRICS]] for m, v in by_model.items()])


def _config_line() -> str:
    from tilecraft.cost_model.xgb_model import XGBConfig

    c = XGBConfig()
    return (f"{c.num_rounds} rounds, depth {c.max_depth}, eta {c.eta}, min_child_weight {c.min_child_weight or '3 (rank) or 1 (regression)'}, "
            f"colsample {c.colsample_bytree}, {c.pairs_per_sample} pairs per sample "
            f"({'score-normalized' if c.score_normalization else 'RankNet'} pair gradients), {c.rank_levels} {c.rank_scale} "
            f"label levels, labels from the {c.label_cost} of the repeats, {c.ensemble} booster(s)")


def default_model() -> str:
    from tilecraft.cost_model.xgb_model import XGBConfig

    return "XGB-rank" if XGBConfig().objective == "rank" else "XGB-regression"


def summary(*, seen, retested, unseen, sessions) -> list[str]:
    ceiling = float(np.nanmean([v[1] for v in sessions.values()]))
    default = default_model()
    other = "XGB-regression" if default == "XGB-rank" else "XGB-rank"
    peer = [m for m in seen if "peer" in m]
    lines = [
        f"- Default model: {default} (`XGBConfig().objective`). Pairwise accuracy, seen tasks: {default} "
        f"{seen[default]['pairwise']:.3f} vs {other} {seen[other]['pairwise']:.3f}; unseen tasks: "
        f"{unseen[default]['pairwise']:.3f} vs {unseen[other]['pairwise']:.3f}; random {seen['random']['pairwise']:.3f}.",
        f"- Target 0.85 on seen tasks: {'met' if seen[default]['pairwise'] >= 0.85 else 'NOT met'} "
        f"({seen[default]['pairwise']:.3f}). Two measurement sessions of the same candidates agree on only "
        f"{ceiling:.3f} of pairs on average on this 2-core box, so no model can score much above that against",
        f"  one session's labels; {default} reaches {seen[default]['pairwise'] / ceiling:.0%} of it. Against the "
        f"less noisy two-session truth (a') it scores {retested[default]['pairwise']:.3f}.",
    ]
    if ENSEMBLE in seen:
        lines.append(f"- {ENSEMBLE} (`XGBConfig(ensemble=3)`, averaged scores, 3x the training time): "
                     f"{seen[ENSEMBLE]['pairwise']:.3f} on seen tasks, {unseen[ENSEMBLE]['pairwise']:.3f} on unseen.")
    if peer:
        lines.append(f"- MetaSchedule's PerStoreFeature + XGBModel on the same splits: {seen[peer[0]]['pairwise']:.3f} "
                     f"(seen), {unseen[peer[0]]['pairwise']:.3f} (unseen).")
    return lines


def report(*, data, sessions, seen, retested, seen_tasks, unseen, unseen_tasks, curve, feat_speed, overall_speed, train_speed,
           ceiling, command: str, seconds: float) -> str:
    from tilecraft.cost_model.features import NUM_FEATURES

    out = [
        "# Cost-model quality",
        "",
        f"- machine: {machine()}",
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        f"- command: `{command}` ({seconds:.0f} s, dataset from `bench/work/cost_model.db`)",
        f"- features: {NUM_FEATURES} per candidate (cost_model/features.py); models: XGBoost, `XGBConfig()`: "
        f"{_config_line()}",
        "",
        "## Summary",
        "",
        *summary(seen=seen, retested=retested, unseen=unseen, sessions=sessions),
        "",
        "## Dataset (random sampled candidates, measured on this CPU)",
        "",
        _table(["task", "candidates", "failed", "best GFLOP/s", "median GFLOP/s", "repeats agree", "sessions agree (n)"],
               [[t.name, len(c), int((~np.isfinite(k)).sum()),
                 float(t.flops / k[np.isfinite(k)].min() / 1e9) if np.isfinite(k).any() else 0.0,
                 float(np.median(t.flops / k[np.isfinite(k)] / 1e9)) if np.isfinite(k).any() else 0.0, ceiling[t.name],
                 f"{sessions[t.name][1]:.3f} ({sessions[t.name][0]})"]
                for t, c, k, _ in data]),
        "",
        "How well the measurements rank themselves, i.e. a ceiling for any model's pairwise accuracy:",
        "- repeats agree: one random repeat of each measurement vs the mean of its other repeats (same moment);",
        "- sessions agree: the candidates re-measured later, in another order (`--retest`), vs the first session.",
        "  On a shared box other jobs' load changes between sessions, and a kernel parallel over both cores",
        "  slows down whenever anything else runs, so this is the ceiling that matters.",
        "",
        "## (a) Unseen candidates of seen tasks (70/30 split per task, mean of 3 splits, averaged over tasks)",
        "",
        _metrics_table(seen),
        "",
        f"### (a) with less training data ({default_model()}, the same splits, each task's 70 % cut to n candidates)",
        "",
        _table(["training candidates per task (mean)", "pairwise", "recall@10"],
               [[round(n), p, r] for n, p, r in curve]),
        "",
        "## (a') The same, tested on the re-measured candidates against both sessions' geometric mean",
        "",
        "Test set: each task's `--retest` candidates; truth: the geometric mean of their two measurements",
        "(less noisy than one); training: all other candidates of all tasks.",
        "",
        _metrics_table(retested),
        "",
        "## (b) Unseen tasks (leave one task out, averaged over tasks)",
        "",
        _metrics_table(unseen),
        "",
        "## Pairwise accuracy per task",
        "",
        _table(["task", *[f"{m} (a)" for m in seen_tasks], *[f"{m} (b)" for m in unseen_tasks]],
               [[t.name, *[seen_tasks[m][t.workload_key] for m in seen_tasks], *[unseen_tasks[m][t.workload_key] for m in unseen_tasks]]
                for t, _, _, _ in data]),
        "",
        "Metrics (per task over its test candidates; throughput = flops / mean cost, failures = 0):",
        "- pairwise: over all pairs with different measured throughput, the fraction the model orders the",
        "  same way (equal scores count 1/2);",
        "- recall@k: |true top-k ∩ predicted top-k| / k;",
        "- best@10: best measured throughput among the model's top 10, divided by the test set's best",
        "  (what measuring the model's top 10 would find);",
        "- pairwise >10% apart: NOT the headline; pairwise accuracy over only the pairs whose throughputs",
        "  differ by more than 10% (failure vs success always counted): pairs a measurement can tell apart.",
        "",
        "## Speed",
        "",
        _table(["task", "candidates", "features/s (cold cache: replay + lower + features)", "load average"],
               [[n, k, round(v, 1), round(load, 1)] for n, k, v, load in feat_speed]),
        "",
        f"All {sum(len(c) for _, c, _, _ in data)} candidates: {overall_speed:.1f} candidates/s (cold cache, one process).",
        "",
        _table(["objective", "samples", "retrain (s)", "predictions/s (cached features)"],
               [[o, n, round(t, 2), round(p)] for o, n, t, p in train_speed]),
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-task", type=int, default=300, help="measured candidates per task")
    parser.add_argument("--matmul-size", type=int, default=1024)
    parser.add_argument("--db", default=str(DB_PATH))
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--no-collect", action="store_true", help="evaluate on what the database has")
    parser.add_argument("--out", default=str(REPORT))
    parser.add_argument("--no-peer", action="store_true", help="skip the MetaSchedule PerStoreFeature+XGBModel peer")
    parser.add_argument("--retest", type=int, default=64, help="candidates per task measured a second time (noise)")
    parser.add_argument("--no-retest", action="store_true", help="skip the second session (e.g. run it later)")
    parser.add_argument("--tasks", "--collect-tasks", dest="tasks", default="",
                        help="comma-separated task names to measure, re-measure and evaluate (default: all)")
    parser.add_argument("--repeat", type=int, default=5, help="timed repeats per measured candidate")
    parser.add_argument("--min-repeat-ms", type=int, default=30)
    parser.add_argument("--records-from", nargs="+", metavar="DB", help="evaluate on these tuning databases' records "
                        "(workloads with >= --min-records candidates) instead of the random-candidate dataset")
    parser.add_argument("--min-records", type=int, default=150)
    parser.add_argument("--remeasure-rounds", type=int, default=0, help="--records-from: re-measure test candidates "
                        "this many more times (into bench/work/<OUT's stem>.remeasured.db) for a less noisy truth")
    parser.add_argument("--truth", choices=TRUTHS, default="mean", help="--records-from: a candidate's cost is this "
                        "statistic of its timed repeats (labels for training and truth for testing)")
    parser.add_argument("--remeasure-tasks", type=int, default=12)
    parser.add_argument("--remeasure-per-task", type=int, default=32)
    args = parser.parse_args(argv)
    started = time.time()
    if args.records_from:
        return main_tuning_records(args, argv, started)

    from tilecraft.cost_model.features import FeatureExtractor
    from tilecraft.search.database import Database
    from tilecraft.targets.base import resolve_target

    target = resolve_target("llvm")
    tasks = benchmark_tasks(matmul_size=args.matmul_size)
    try:
        tasks = select_tasks(tasks, args.tasks)
    except ValueError as e:
        parser.error(f"--tasks: {e}")
    with Database(args.db) as db, Database(str(Path(args.db).with_suffix(".retest.db"))) as retest_db:
        if not args.no_collect:
            collect(tasks, target, db, per_task=args.per_task, repeat=args.repeat, min_repeat_ms=args.min_repeat_ms)
            if not args.no_retest:
                retest(tasks, target, db, retest_db, per_task=args.retest, repeat=args.repeat,
                       min_repeat_ms=args.min_repeat_ms)
        if args.collect_only:
            return 0
        data = [d for d in load_dataset(tasks, target, db) if len(d[1]) >= 10]
        sessions = {t.name: test_retest_agreement(t, target, db, retest_db) for t, _, _, _ in data}
        second = second_session_costs(data, target, retest_db)
    print(f"dataset: {[(t.name, len(c)) for t, c, _, _ in data]}", flush=True)
    rng = np.random.default_rng(0)
    ceiling = {t.name: noise_ceiling(k, reps, rng) for t, _, k, reps in data}

    feat_speed = feature_speed(data, target)
    print("feature speed:", feat_speed, flush=True)
    extractor = FeatureExtractor(target)
    t0 = time.perf_counter()
    for task, cands, _, _ in data:
        extractor.extract(task, cands)
    overall = sum(len(c) for _, c, _, _ in data) / (time.perf_counter() - t0)

    factories = make_models(target, extractor, peer=not args.no_peer)
    seen, seen_tasks = evaluate_seen(data, factories)
    print("seen:", seen, flush=True)
    unseen, unseen_tasks = evaluate_unseen(data, factories)
    print("unseen:", unseen, flush=True)
    retested = evaluate_retested(data, factories, second)
    print("retested:", retested, flush=True)
    curve = evaluate_learning_curve(data, factories[default_model()])
    print("learning curve:", curve, flush=True)
    train_speed = training_speed(data, target, extractor)

    command = "python bench/cost_model_quality.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    text = report(data=data, sessions=sessions, seen=seen, retested=retested, seen_tasks=seen_tasks, unseen=unseen, unseen_tasks=unseen_tasks,
                  curve=curve, feat_speed=feat_speed, overall_speed=overall, train_speed=train_speed, ceiling=ceiling,
                  command=command.strip(), seconds=time.time() - started)
    Path(args.out).write_text(text)
    print(text)
    return 0


def _remeasured_section(first: dict, everything: dict, agree: float, tasks: int, per_task: int, rounds: int) -> list[str]:
    return [
        f"## (a'') Re-measured: {per_task} candidates of each of the {tasks} largest tasks, {rounds} more sessions",
        "",
        f"Test set: those candidates; training: every other candidate of every task. The later sessions'",
        f"mean ranks the candidates the same way as the tuning run's own measurement on {agree:.3f} of pairs:",
        "the noise of one measurement. The model against the tuning run's measurement (as in (a)), then",
        f"against the geometric mean of all {rounds + 1} sessions (closer to the candidates' true speed):",
        "",
        _table(["model", "truth", *METRICS], [[m, "one session", *[v[k] for k in METRICS]] for m, v in first.items()]
               + [[m, f"{rounds + 1} sessions", *[v[k] for k in METRICS]] for m, v in everything.items()]),
        "",
    ]


def main_tuning_records(args, argv, started: float) -> int:
    from tilecraft.cost_model.features import FeatureExtractor
    from tilecraft.targets.base import resolve_target

    target = resolve_target("llvm")
    timestamps: dict = {}
    data = load_tuning_records(args.records_from, target, min_records=args.min_records, truth=args.truth,
                               timestamps=timestamps)
    if not data:
        sys.exit(f"cost_model_quality.py: no workload of {target.key} with >= {args.min_records} records in {args.records_from}")
    print(f"dataset: {len(data)} tasks, {sum(len(c) for _, c, _, _ in data)} candidates", flush=True)
    rng = np.random.default_rng(0)
    ceiling = {t.workload_key: noise_ceiling(k, reps, rng) for t, _, k, reps in data}
    extractor = FeatureExtractor(target)
    factories = {k: v for k, v in make_models(target, extractor, peer=False).items() if k != "XGB-regression"}
    kept: list = []
    seen, seen_tasks = evaluate_seen(data, factories, keep="XGB-rank", kept=kept)
    print("seen:", seen, flush=True)
    unseen, _ = evaluate_unseen(data, factories)
    print("unseen:", unseen, flush=True)
    remeasured = None
    if args.remeasure_rounds:
        from tilecraft.search.database import Database

        WORK.mkdir(parents=True, exist_ok=True)
        with Database(str(WORK / f"{Path(args.out).stem}.remeasured.db")) as retest_db:
            runs = remeasure(data, target, retest_db, tasks=args.remeasure_tasks, per_task=args.remeasure_per_task,
                             rounds=args.remeasure_rounds)
        first, everything, agree = evaluate_remeasured(data, factories, runs)
        print("remeasured:", first, everything, agree, flush=True)
        remeasured = (first, everything, agree, args.remeasure_tasks, args.remeasure_per_task, args.remeasure_rounds)
    command = "python bench/cost_model_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = search_report(data=data, seen=seen, seen_tasks=seen_tasks, unseen=unseen, ceiling=ceiling,
                         paths=args.records_from, command=command.strip(), seconds=time.time() - started,
                         remeasured=remeasured, truth=args.truth,
                         breakdown=error_breakdown(data, kept, timestamps, truth=args.truth))
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
