"""Features and cost models, on real TensorIR schedules (no builds: nothing here compiles or runs a kernel)."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tvm
from tvm import te
from tvm.s_tir import Schedule

from tilecraft.compiler.ir import TensorType
from tilecraft.compiler.task import Task, workload_key
from tilecraft.cost_model.base import normalized_throughput
from tilecraft.cost_model.features import (FEATURE_NAMES, NUM_FEATURES, STORE_FEATURE_NAMES, FeatureExtractor,
                                           features_of_module, store_features)
from tilecraft.cost_model.loop_nest import loop_nests, lower
from tilecraft.cost_model.random_model import RandomCostModel
from tilecraft.cost_model.xgb_model import CostModelError, XGBConfig, XGBCostModel, rank_label
from tilecraft.search.database import Database
from tilecraft.search.measure_types import Candidate, ErrorKind, MeasureResult, Record
from tilecraft.targets.base import resolve_target

LLVM = resolve_target("llvm")
N = 128


def matmul_task(n: int = N) -> Task:
    A = te.placeholder((n, n), name="A"); B = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), "k")
    C = te.compute((n, n), lambda i, j: te.sum(A[i, k] * B[k, j], axis=k), name="C")
    mod = tvm.IRModule({"main": te.create_prim_func([A, B, C])})
    types = tuple(TensorType((n, n), "float32") for _ in range(3))
    return Task(f"matmul{n}", workload_key(mod, types), mod, types, 2.0 * n**3, 1, "matmul")


def tiled(task: Task, ti: int, tj: int, *, parallel: bool = True, vectorize: bool = True) -> Candidate:
    sch = Schedule(task.mod)
    c = sch.get_sblock("C")
    i, j, k = sch.get_loops(c)
    i0, i1 = sch.split(i, [None, ti]); j0, j1 = sch.split(j, [None, tj])
    sch.reorder(i0, j0, k, i1, j1)
    if parallel:
        sch.parallel(i0)
    if vectorize:
        sch.vectorize(j1)
    sch.decompose_reduction(c, k)
    return Candidate.from_schedule(sch)


NAIVE = Candidate("[[],[]]")  # the unscheduled function


def feature(x: np.ndarray, name: str) -> float:
    return float(x[FEATURE_NAMES.index(name)])


@pytest.fixture(scope="module")
def task() -> Task:
    return matmul_task()


@pytest.fixture(scope="module")
def grid(task):
    """Distinct schedules with a known "speed": wider vectors and a parallel loop are faster."""
    cands, costs = [], []
    for ti, tj, par in itertools.product((1, 2, 4, 8, 16), (1, 2, 4, 8, 16, 32, 64), (True, False)):
        cands.append(tiled(task, ti, tj, parallel=par, vectorize=tj > 1))
        costs.append(1e-3 / (tj * (2.0 if par else 1.0)) * (1.0 + 0.01 * ti))
    return cands, costs


def results_of(costs) -> list[MeasureResult]:
    return [MeasureResult((c,)) if math.isfinite(c) else MeasureResult.failure(ErrorKind.BUILD, "failed") for c in costs]


def pairwise_accuracy(scores: np.ndarray, truth: np.ndarray) -> float:
    i, j = np.triu_indices(len(truth), 1)
    keep = truth[i] != truth[j]
    agree = np.sign(scores[i] - scores[j]) * np.sign(truth[i] - truth[j])
    return float(np.mean(np.where(agree[keep] == 0, 0.5, agree[keep] > 0)))


# --------------------------------------------------------------------------- features
def test_features_are_deterministic_fixed_length_and_finite(task, grid):
    cands = grid[0][:12] + [NAIVE]
    a = FeatureExtractor(LLVM).extract(task, cands)
    b = FeatureExtractor(LLVM).extract(task, cands)  # a fresh extractor: nothing cached
    assert a.shape == (len(cands), NUM_FEATURES) == (len(cands), len(FEATURE_NAMES))
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert len({row.tobytes() for row in a}) == len(cands)  # every schedule reads differently


def test_parallel_vectorized_schedule_differs_from_naive(task):
    fx = FeatureExtractor(LLVM)
    naive, fast = fx.extract(task, [NAIVE, tiled(task, 4, 16)])
    assert feature(naive, "mean.vectorized_num") == 0 and feature(fast, "mean.vectorized_num") > 0
    assert feature(fast, "max.vectorized_len") == pytest.approx(math.log2(1 + 16))
    assert feature(naive, "mean.parallel_num") == 0 and feature(fast, "mean.parallel_num") > 0
    assert feature(fast, "max.parallel_prod") == pytest.approx(math.log2(1 + N // 4))
    assert feature(fast, "func.vectorized_work_frac") == 1.0 and feature(naive, "func.vectorized_work_frac") == 0.0
    assert feature(fast, "func.parallel_work_frac") == 1.0 and feature(naive, "func.parallel_work_frac") == 0.0
    # the same arithmetic either way: N^3 multiply-adds
    assert feature(naive, "func.est_flops") == pytest.approx(feature(fast, "func.est_flops"), rel=1e-6)
    assert feature(fast, "func.est_flops") == pytest.approx(math.log2(1 + 2 * N**3), rel=1e-3)
    assert feature(fast, "max.b0_vec_stride") == pytest.approx(1.0)  # unit-stride vector access


def _inner_tiled(task: Task, *, vectorize: bool, unroll_step: int) -> Candidate:
    """i0 j0 k i1(4) j1(16): the 4x16 output tile innermost, under the reduction loop."""
    sch = Schedule(task.mod)
    c = sch.get_sblock("C")
    i, j, k = sch.get_loops(c)
    i0, i1 = sch.split(i, [None, 4]); j0, j1 = sch.split(j, [None, 16])
    sch.reorder(i0, j0, k, i1, j1)
    if vectorize:
        sch.vectorize(j1)
    if unroll_step:
        sch.annotate(i0, "pragma_auto_unroll_max_step", unroll_step)
    return Candidate.from_schedule(sch)


def test_body_features_follow_unrolling_and_say_how_the_lanes_are_filled(task):
    """The straight-line body code generation makes of the innermost loops, and the loop whose
    iterations become SIMD lanes: vectorized explicitly, by SLP over an unrolled body, or left to
    LLVM's loop vectorizer as the innermost loop after unrolling."""

    def update_store(cand):  # C[i, j] += A[i, k] * B[k, j]: the store that reads A and B
        stores, _ = loop_nests(lower(cand.apply(task.mod).mod))
        (store,) = [s for s in stores if len(s.accesses) >= 3]
        feats, _ = store_features(store, lanes=16)
        return dict(zip(STORE_FEATURE_NAMES, feats))

    vec = update_store(_inner_tiled(task, vectorize=True, unroll_step=64))
    slp = update_store(_inner_tiled(task, vectorize=False, unroll_step=64))
    plain = update_store(_inner_tiled(task, vectorize=False, unroll_step=0))
    # vectorized j1 costs no unroll steps, so i1 (4) is unrolled; k (128 more) is not: a 4x16 body under k
    assert vec["body_iters"] == pytest.approx(math.log2(1 + 64))
    assert vec["body_outer_is_reduce"] == 1.0  # the outputs can stay in registers across k
    assert vec["body_out_vectors"] == pytest.approx(math.log2(1 + 64 / 16))
    assert vec["simd_explicit"] == 1.0 and vec["simd_lane_frac"] == 1.0
    # B[k, j] moves by 1 along the lanes, A[i, k] not at all (a broadcast)
    assert vec["simd_contig"] == pytest.approx(0.5) and vec["simd_bcast"] == pytest.approx(0.5)
    # 4 x 16 = 64 unrolled iterations fit the step: the same body, its lanes found by SLP along j1
    assert slp["body_iters"] == pytest.approx(math.log2(1 + 64))
    assert slp["simd_slp"] == 1.0 and slp["simd_explicit"] == 0.0
    # nothing unrolled: TVM leaves j1 innermost (LLVM's loop vectorizer sees unit stride along it) ...
    assert plain["body_iters"] == pytest.approx(1.0) and plain["simd_loop"] == 1.0  # log2(1 + 1)
    # ... and LLVM unrolls j1 itself (16 x 5 instructions fit its budget) but not i1 around it (x 4 do not)
    assert plain["llvm_body_iters"] == pytest.approx(math.log2(1 + 16))
    assert plain["llvm_simd_slp"] == 1.0 and plain["llvm_body_outer_is_reduce"] == 0.0


def test_line_traffic_is_at_least_the_byte_traffic(task, grid):
    """Whole cache lines moved can only exceed the bytes the loops touch, and do for a column walk."""
    x = FeatureExtractor(LLVM).extract(task, grid[0] + [NAIVE])
    for agg, level in itertools.product(("mean", "max"), ("reg", "l1", "l2")):
        lines = x[:, FEATURE_NAMES.index(f"{agg}.{level}_line_traffic")]
        nbytes = x[:, FEATURE_NAMES.index(f"{agg}.{level}_traffic")]
        assert (lines >= nbytes - 1e-9).all()
    column = tiled(task, 16, 1, parallel=False, vectorize=False)  # i1 innermost: A[i, k] down a column, a line per element
    y = FeatureExtractor(LLVM).extract(task, [column])[0]
    assert feature(y, "max.l1_line_traffic") > feature(y, "max.l1_traffic")


def test_loop_nest_reads_strides_reuse_and_compacted_temporaries(task):
    sch = Schedule(task.mod)
    c = sch.get_sblock("C")
    i, j, k = sch.get_loops(c)
    i0, i1 = sch.split(i, [None, 8]); j0, j1 = sch.split(j, [None, 16])
    sch.reorder(i0, j0, k, i1, j1)
    sch.reverse_compute_at(sch.cache_write(c, 0, "global"), j0)  # an 8x16 tile per (i0, j0)
    stores, allocs = loop_nests(lower(sch.mod))
    assert [a.bytes for a in allocs] == [8 * 16 * 4]
    update = [s for s in stores if any(a.kind == "readwrite" for a in s.accesses)][0]
    assert update.trip == N**3
    assert [lp.extent for lp in update.loops] == [N // 8, N // 16, N, 8, 16]
    names = {a.buffer: a for a in update.accesses}
    assert names["C_global"].shape == (8, 16) and names["A"].shape == (N, N)


def test_gpu_thread_bindings_are_features_and_not_double_counted():
    task = matmul_task(256)
    sch = Schedule(task.mod)
    c = sch.get_sblock("C")
    i, j, k = sch.get_loops(c)
    by, ty, yi = sch.split(i, [None, 16, 4]); bx, tx, xi = sch.split(j, [None, 16, 4]); ko, ki = sch.split(k, [None, 16])
    sch.reorder(by, bx, ty, tx, ko, ki, yi, xi)
    for loop, tag in ((by, "blockIdx.y"), (bx, "blockIdx.x"), (ty, "threadIdx.y"), (tx, "threadIdx.x")):
        sch.bind(loop, tag)
    shared = sch.cache_read(c, 0, "shared")
    sch.compute_at(shared, ko)
    _, t_y, t_x = sch.split(sch.fuse(*sch.get_loops(shared)[-2:]), [None, 16, 16])  # cooperative fetch
    sch.bind(t_y, "threadIdx.y"); sch.bind(t_x, "threadIdx.x")
    x = features_of_module(sch.mod, cores=1, lanes=4, is_gpu=True)
    assert feature(x, "max.thread_threadIdx.x") == pytest.approx(math.log2(1 + 16))  # rebinding = same threads
    assert feature(x, "max.thread_blockIdx.y") == pytest.approx(math.log2(1 + 4))
    assert feature(x, "func.is_gpu") == 1.0 and feature(x, "max.b0_is_shared") + feature(x, "max.b1_is_shared") >= 1
    stores, allocs = loop_nests(lower(sch.mod))
    assert [a.bytes for a in allocs] == [64 * 16 * 4]  # the shared tile, not the whole of A
    fetch = [s for s in stores if s.buffer.endswith("shared")][0]
    assert fetch.trip == 4 * 4 * 16 * (64 * 16)  # blocks x k-steps x one 64x16 tile per step


def test_unreadable_candidate_gets_nan_features_and_minus_inf_score(task, grid):
    bad = Candidate('[[["GetSBlock",[],["no_such_block","main"],["b0"]]],[]]')
    x = FeatureExtractor(LLVM).extract(task, [bad, NAIVE])
    assert np.isnan(x[0]).all() and np.isfinite(x[1]).all()
    scores = XGBCostModel(LLVM).predict(task, [bad, NAIVE])
    assert scores[0] == -math.inf and scores[1] == 0.0


def test_extractor_caches_by_trace(task, grid):
    fx = FeatureExtractor(LLVM)
    first = fx.extract(task, grid[0][:5])
    assert fx.misses == 5 and fx.hits == 0
    np.testing.assert_array_equal(fx.extract(task, grid[0][:5]), first)
    assert fx.misses == 5 and fx.hits == 5
    cand = grid[0][7]  # primed from a schedule the caller already has: no replay, same features
    fx.prime(task, cand, cand.apply(task.mod).mod)
    np.testing.assert_array_equal(fx.extract(task, [cand])[0], FeatureExtractor(LLVM).extract(task, [cand])[0])
    assert fx.misses == 5 and fx.hits == 6
    # replays start from copies of one unscheduled schedule: the copies must not leak into each other
    direct = features_of_module(grid[0][4].apply(task.mod).mod, cores=fx.cores, lanes=fx.lanes, task_flops=task.flops)
    np.testing.assert_array_equal(first[4], direct)


# --------------------------------------------------------------------------- models
@pytest.mark.parametrize("objective", ["rank", "regression"])
def test_learns_to_rank_a_known_cost_function(task, grid, objective):
    cands, costs = grid
    order = np.random.default_rng(0).permutation(len(cands))
    train, test = order[:49], order[49:]
    model = XGBCostModel(LLVM, config=XGBConfig(objective=objective))
    model.update(task, [cands[i] for i in train], results_of([costs[i] for i in train]))
    assert model.trained and model.num_samples == len(train)
    scores = model.predict(task, [cands[i] for i in test])
    truth = normalized_throughput([costs[i] for i in test])
    assert pairwise_accuracy(scores, truth) > 0.85
    random_scores = RandomCostModel(seed=1).predict(task, [cands[i] for i in test])
    assert pairwise_accuracy(random_scores, truth) < 0.7


def test_rank_pair_gradients_with_and_without_score_normalization_both_learn(task, grid):
    """The flag reaches XGBoost (the boosters differ) and either gradient ranks the known cost function."""
    cands, costs = grid
    order = np.random.default_rng(0).permutation(len(cands))
    train, test = order[:49], order[49:]
    scores = {}
    for normalized in (False, True):
        model = XGBCostModel(LLVM, config=XGBConfig(score_normalization=normalized, num_rounds=50))
        model.update(task, [cands[i] for i in train], results_of([costs[i] for i in train]))
        scores[normalized] = model.predict(task, [cands[i] for i in test])
        assert pairwise_accuracy(scores[normalized], normalized_throughput([costs[i] for i in test])) > 0.85
    assert not np.array_equal(scores[False], scores[True])


def test_empty_model_predicts_uniform_zeros(task, grid):
    model = XGBCostModel(LLVM)
    assert not model.trained
    np.testing.assert_array_equal(model.predict(task, grid[0][:4]), np.zeros(4))
    assert model.predict(task, []).shape == (0,)
    model.update(task, grid[0][:3], results_of(grid[1][:3]))  # fewer than min_samples: still uniform
    np.testing.assert_array_equal(model.predict(task, grid[0][:4]), np.zeros(4))
    with pytest.raises(ValueError):
        model.update(task, grid[0][:2], results_of(grid[1][:1]))


def test_save_load_round_trip_gives_identical_predictions(task, grid, tmp_path):
    cands, costs = grid
    model = XGBCostModel(LLVM, config=XGBConfig(objective="regression", num_rounds=30))
    model.update(task, cands[:40], results_of(costs[:40]))
    path = str(tmp_path / "model.npz")
    model.save(path)
    loaded = XGBCostModel.from_file(path, LLVM)
    assert loaded.config == model.config and loaded.num_samples == model.num_samples
    np.testing.assert_array_equal(loaded.predict(task, cands), model.predict(task, cands))
    loaded.update(task, cands[40:50], results_of(costs[40:50]))  # online learning goes on after a load
    assert loaded.num_samples == 50
    (tmp_path / "junk.npz").write_bytes(b"not a model")
    with pytest.raises(CostModelError):
        XGBCostModel(LLVM).load(str(tmp_path / "junk.npz"))


def test_rank_labels_are_levels_of_log_or_linear_throughput():
    y = np.asarray([1.0, 0.5, 0.25, 2.0**-6, 2.0**-7, 0.0])
    log = rank_label(y, XGBConfig(rank_levels=16, log_octaves=6))
    # one octave below the best is 1/6 of the way down; six octaves or more (and failures) are level 0
    np.testing.assert_array_equal(log, [15, 13, 10, 0, 0, 0])
    np.testing.assert_array_equal(rank_label(y, XGBConfig(rank_scale="linear")), np.floor(16 * y))
    np.testing.assert_array_equal(rank_label(y, XGBConfig(rank_levels=0)), y)
    with pytest.raises(ValueError):
        XGBConfig(rank_scale="cubic")
    with pytest.raises(ValueError):
        XGBConfig(label_cost="median")


def test_labels_come_from_the_chosen_statistic_of_the_repeats(task, grid):
    cands = grid[0][:2]
    results = [MeasureResult((3.0, 1.0, 2.0)), MeasureResult.failure(ErrorKind.RUN, "x")]
    for statistic, expected in (("min", 1.0), ("mean", 2.0)):
        model = XGBCostModel(LLVM, config=XGBConfig(label_cost=statistic))
        model.add(task, cands, results)
        assert model._costs == [expected, math.inf]


def test_ensemble_averages_its_boosters_and_survives_save_load(task, grid, tmp_path):
    cands, costs = grid
    one = XGBCostModel(LLVM, config=XGBConfig(num_rounds=20))
    three = XGBCostModel(LLVM, config=XGBConfig(num_rounds=20, ensemble=3))
    for model in (one, three):
        model.update(task, cands[:50], results_of(costs[:50]))
    assert len(three._boosters) == 3 and len(one._boosters) == 1
    assert not np.array_equal(three.predict(task, cands), one.predict(task, cands))
    truth = normalized_throughput(costs[50:])
    assert pairwise_accuracy(three.predict(task, cands[50:]), truth) > 0.85
    path = str(tmp_path / "ensemble.npz")
    three.save(path)
    loaded = XGBCostModel.from_file(path, LLVM)
    assert loaded.config.ensemble == 3 and len(loaded._boosters) == 3
    np.testing.assert_array_equal(loaded.predict(task, cands), three.predict(task, cands))


def test_random_model_interface(task, grid, tmp_path):
    model = RandomCostModel(seed=3)
    model.update(task, grid[0][:2], results_of(grid[1][:2]))
    scores = model.predict(task, grid[0])
    assert scores.shape == (len(grid[0]),) and ((scores >= 0) & (scores <= 1)).all() and scores.std() > 0
    model.save(str(tmp_path / "r.json"))
    other = RandomCostModel(seed=9)
    other.load(str(tmp_path / "r.json"))
    assert other.seed == 3 and other.pretrain_from_database(None, "") == 0


def test_pretrain_from_database(task, grid, tmp_path):
    cands, costs = grid
    costs = list(costs)
    costs[0] = math.inf  # a failed build: learned as zero throughput
    db = Database(str(tmp_path / "tune.db"))
    db.add_workload(task)
    db.commit([Record(task.workload_key, LLVM.key, c, r, task.name) for c, r in zip(cands, results_of(costs))])
    db.commit([Record(task.workload_key, "some-other-target", cands[0], results_of([1.0])[0], task.name)])
    model = XGBCostModel(LLVM)
    assert model.pretrain_from_database(db, LLVM.key) == len(cands)
    assert model.trained
    truth = normalized_throughput(costs)
    assert pairwise_accuracy(model.predict(task, cands), truth) > 0.9
    # a fresh model on a database without this target learns nothing and stays uniform
    empty = XGBCostModel(LLVM)
    assert empty.pretrain_from_database(db, "no-such-target") == 0 and not empty.trained
    db.close()


@pytest.fixture(scope="module")
def quality():
    """bench/cost_model_quality.py, the script whose evaluation helpers the tests below check."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import cost_model_quality

    return cost_model_quality


def test_quality_report_error_breakdown_bands_pairs_by_ratio_and_time(quality):
    """bench/cost_model_quality.py's breakdown: a model that orders like the measurement scores 1 in every
    band, a reversed one 0, and the bands' shares sum to 1; --truth min takes the fastest repeat."""
    costs = np.asarray([1.0, 1.01, 1.04, 1.08, 1.15, 1.3, 2.0, 4.0])
    repeats = [(c, c, c) for c in costs]
    stamps = np.arange(len(costs)) * 100.0
    task = SimpleNamespace(workload_key="w")
    data = [(task, [], costs, repeats)]
    test = np.arange(len(costs))
    for scores, expected in ((1 / costs, 1.0), (costs, 0.0)):
        ratio_rows, gap_rows = quality.error_breakdown(data, [(0, test, scores)], {"w": stamps}, truth="mean")
        assert [row[2] for row in ratio_rows] == [expected] * len(ratio_rows)
        assert [row[3] for row in ratio_rows] == [1.0] * len(ratio_rows)  # equal repeats: halves always agree
        assert math.isclose(sum(row[1] for row in ratio_rows), 1.0)
        assert math.isclose(sum(row[1] for row in gap_rows), 1.0)
        assert [row[2] for row in gap_rows] == [expected] * len(gap_rows)
    assert len(ratio_rows) == len(quality.RATIO_EDGES) - 1  # each band holds at least one pair here
    ok = MeasureResult((3.0, 1.0, 2.0))
    assert quality.cost_by(ok, "mean") == 2.0 and quality.cost_by(ok, "min") == 1.0
    assert quality.cost_by(MeasureResult.failure(ErrorKind.RUN, "x"), "min") == math.inf


def test_quality_select_tasks_keeps_benchmark_order_and_names_unknown_tasks(quality):
    """--tasks: the named tasks only (measured and evaluated alike), in benchmark order; a typo is an error."""
    tasks = [SimpleNamespace(name=n) for n in ("matmul", "dense", "conv")]
    assert quality.select_tasks(tasks, "") == tasks
    assert [t.name for t in quality.select_tasks(tasks, "conv, dense")] == ["dense", "conv"]
    with pytest.raises(ValueError, match="no benchmark task named convv"):
        quality.select_tasks(tasks, "dense,convv")


def test_quality_learning_curve_cuts_each_tasks_training_part_and_keeps_its_test_part(quality):
    """bench/cost_model_quality.py's learning curve: n training candidates per task (at most the task's
    70 %), then all of it; the test part is the same 30 % for every n."""
    rng = np.random.default_rng(0)
    costs = {n: rng.uniform(1, 2, n) for n in (100, 40)}
    data = [(SimpleNamespace(workload_key=f"w{n}"), list(range(n)), costs[n], [(c,) for c in costs[n]]) for n in (100, 40)]

    class Oracle:  # scores every candidate by its true throughput; remembers what it was given
        seen: list = []

        def __init__(self):
            self.trained, self.tested = {}, {}
            Oracle.seen.append(self)

        def add(self, task, cands, results):
            self.trained[task.workload_key] = list(cands)

        def retrain(self):
            pass

        def predict(self, task, cands):
            self.tested[task.workload_key] = list(cands)
            costs = dict(zip(*next((c, k) for t, c, k, _ in data if t is task)))
            return np.asarray([1 / costs[c] for c in cands])

    curve = quality.evaluate_learning_curve(data, Oracle, sizes=(25, 50, 100), seeds=2)
    assert [round(n) for n, _, _ in curve] == [25, 39, 49]  # (25+25)/2, (50+28)/2, all: (70+28)/2
    assert all(pairwise == 1.0 for _, pairwise, _ in curve)
    first, last = Oracle.seen[0], Oracle.seen[-2]  # seed 0 at n=25 and at "all"
    for key in ("w100", "w40"):
        assert first.tested[key] == last.tested[key]
        assert not set(first.trained[key]) & set(first.tested[key])
    assert len(last.trained["w100"]) == 70 and len(first.trained["w100"]) == 25
