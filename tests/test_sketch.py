"""The CPU search space: sketch rules, annotation sampling and the default schedule.

Real TVM: every schedule checked here is built with `tvm.compile` for the host and run on
fresh random inputs against numpy.  Shapes are small so the file stays well under 3 minutes;
one 512^3 matmul is only built.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from numpy.lib.stride_tricks import sliding_window_view
from tvm import te, topi
from tvm.s_tir import Schedule, Trace

from tilecraft.compiler.ir import TensorType
from tilecraft.compiler.lower_ops import LOWER
from tilecraft.compiler.ops import unpack_matmul_weight
from tilecraft.compiler.ops_conv import unpack_conv_weight
from tilecraft.compiler.task import Task, workload_key
from tilecraft.search.default_schedule import default_schedule, simple_schedule
from tilecraft.search.measure_types import Candidate
from tilecraft.search.sampling import sample_candidates
from tilecraft.search.sketch import SCHEDULE_ERRORS, SketchContext, analyze, generate_sketches, instantiate
from tilecraft.targets.base import resolve_target

TARGET = resolve_target("llvm")


# --------------------------------------------------------------------------- tasks + numpy references
def make_task(name: str, args, out, flops: float = 0.0) -> Task:
    mod = tvm.IRModule({"main": te.create_prim_func([*args, out])})
    types = tuple(TensorType(tuple(int(x) for x in t.shape), str(t.dtype)) for t in (*args, out))
    return Task(name, workload_key(mod, types), mod, types, flops)


def P(shape, name, dtype="float32"):
    return te.placeholder(shape, name=name, dtype=dtype)


def conv_ref(x, w, stride, pad, groups=1):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]  # n c y x kh kw
    if groups == 1:
        return np.einsum("ncyxhw,ochw->noyx", win, w)
    return np.einsum("ncyxhw,chw->ncyx", win, w[:, 0])


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def build_cases():
    """name -> (task, reference(inputs) -> output)."""
    cases = {}
    A, B = P((64, 48), "A"), P((48, 80), "B")
    cases["matmul"] = (make_task("matmul", (A, B), topi.matmul(A, B)), lambda a, b: a @ b)
    A, B = P((3, 32, 24), "A"), P((3, 40, 24), "B")
    cases["batch_matmul"] = (make_task("bmm", (A, B), topi.nn.batch_matmul(A, B)), lambda a, b: a @ b.transpose(0, 2, 1))
    A, W, b = P((16, 64), "A"), P((48, 64), "W"), P((48,), "b")
    cases["dense_bias_relu"] = (
        make_task("dense", (A, W, b), topi.nn.relu(topi.add(topi.nn.dense(A, W), b))),
        lambda a, w, b: np.maximum(a @ w.T + b, 0),
    )
    for name, (cin, hw, cout, k, s, p) in {
        "conv3x3": (8, 14, 16, 3, 1, 1),
        "conv1x1": (16, 14, 8, 1, 1, 0),
        "conv3x3_s2": (8, 14, 16, 3, 2, 1),
    }.items():
        X, Wt, bias = P((1, cin, hw, hw), "X"), P((cout, cin, k, k), "W"), P((cout, 1, 1), "bias")
        out = topi.nn.relu(topi.add(topi.nn.conv2d_nchw(X, Wt, s, p, 1), bias))
        cases[name] = (
            make_task(name, (X, Wt, bias), out),
            lambda x, w, b, s=s, p=p: np.maximum(conv_ref(x, w, s, p) + b[None], 0),
        )
    # OIHW8o weights (compiler/passes.pack_weights): a blocked reduction, then the NCHW write-back
    X, Wp, bias = P((1, 8, 14, 14), "X"), P((2, 8, 3, 3, 8), "W"), P((16,), "bias")
    attrs = {"strides": (2, 2), "pads": (1, 1, 1, 1), "dilations": (1, 1), "groups": 1, "weight_layout": "OIHW8o"}
    out = topi.nn.relu(LOWER["conv2d"]([X, Wp, bias], attrs, TensorType((1, 16, 7, 7), "float32")))
    cases["conv3x3_packed"] = (
        make_task("conv3x3_packed", (X, Wp, bias), out),
        lambda x, w, b: np.maximum(conv_ref(x, unpack_conv_weight(w, "OIHW8o"), 2, 1) + b[None, :, None, None], 0),
    )
    # KN16n weights (passes.pack_weights): a column-blocked reduction read back by the epilogue
    A, Wp, b = P((16, 64), "A"), P((3, 64, 16), "W"), P((48,), "b")
    out = topi.nn.relu(topi.add(LOWER["matmul"]([A, Wp], {"weight_layout": "KN16n"}, TensorType((16, 48), "float32")), b))
    cases["dense_packed"] = (
        make_task("dense_packed", (A, Wp, b), out),
        lambda a, w, b: np.maximum(a @ unpack_matmul_weight(w, "KN16n") + b, 0),
    )
    X, Wt = P((1, 16, 14, 14), "X"), P((16, 1, 3, 3), "W")
    cases["depthwise"] = (
        make_task("depthwise", (X, Wt), topi.nn.depthwise_conv2d_nchw(X, Wt, 1, 1, 1)),
        lambda x, w: conv_ref(x, w, 1, 1, groups=16),
    )
    A = P((4, 512), "A")
    cases["softmax"] = (make_task("softmax", (A,), topi.nn.softmax(A, axis=-1)), _softmax)
    A, g, be = P((6, 256), "A"), P((256,), "g"), P((256,), "be")
    cases["layer_norm"] = (
        make_task("layer_norm", (A, g, be), topi.nn.layer_norm(A, g, be, axis=[-1], epsilon=1e-5)),
        lambda a, g, b: (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-5) * g + b,
    )
    A = P((8, 4096), "A")
    cases["row_sum"] = (make_task("row_sum", (A,), topi.sum(A, axis=-1)), lambda a: a.sum(-1))
    A, B = P((4, 32, 24), "A"), P((4, 32, 24), "B")
    cases["elementwise"] = (
        make_task("elementwise", (A, B), topi.tanh(topi.add(topi.multiply(A, B), topi.exp(A)))),
        lambda a, b: np.tanh(a * b + np.exp(a)),
    )
    A = P((16, 12, 20), "A")
    cases["transpose"] = (make_task("transpose", (A,), topi.transpose(A, (2, 0, 1))), lambda a: a.transpose(2, 0, 1))
    return cases


CASES = build_cases()
NAMES = sorted(CASES)


def run_and_check(sch_mod: tvm.IRModule, name: str, seed: int) -> None:
    task, ref = CASES[name]
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(t.shape).astype(t.dtype) for t in task.arg_types[:-1]]
    out_t = task.arg_types[-1]
    ex = tvm.compile(sch_mod, target=TARGET.tvm_target)
    out = tvm.runtime.empty(out_t.shape, out_t.dtype)
    ex(*[tvm.runtime.tensor(x) for x in inputs], out)
    expected = ref(*[x.astype("float64") for x in inputs])
    np.testing.assert_allclose(out.numpy(), expected, rtol=2e-4, atol=2e-4, err_msg=name)


# --------------------------------------------------------------------------- sketches
def sketch_names(name: str) -> list[str]:
    return [s.name for s in generate_sketches(CASES[name][0], TARGET)]


def test_sketches_follow_the_rules():
    mm = sketch_names("matmul")
    assert len(mm) == 2 and "write_cache" in mm[0] and "multi_level_tiling_cpu[plain]" in mm[1]
    dense = sketch_names("dense_bias_relu")
    assert all("inline(T_add)" in s for s in dense)
    assert any("multi_level_tiling_cpu[fused]" in s for s in dense) and any("[plain]" in s for s in dense)
    conv = sketch_names("conv3x3")
    assert "inline(pad_temp)" not in conv[0] and any("inline(pad_temp)" in s for s in conv)  # padding kept by default
    assert all("inline(pad_temp)" in s for s in sketch_names("conv1x1"))  # a plain copy: always inlined
    rsum = sketch_names("row_sum")
    assert rsum == ["rfactor[inner](A_red)", "rfactor[outer](A_red)", "skip"]
    soft = sketch_names("softmax")
    assert any("rfactor" in s for s in soft) and any("inline(T_softmax_exp)" in s for s in soft)
    assert sketch_names("elementwise") == ["inline(T_add) inline(compute) inline(T_multiply)"]
    assert sketch_names("transpose") == ["skip"]


def test_block_analysis_finds_reuse():
    sch = Schedule(CASES["conv3x3"][0].mod)
    conv, pad, relu = analyze(sch, "conv2d_nchw"), analyze(sch, "pad_temp"), analyze(sch, "compute")
    assert conv.reuse and conv.is_reduction and conv.trivial and conv.iter_kinds == ("S",) * 4 + ("R",) * 3
    assert not pad.reuse and not pad.is_reduction and not pad.is_output
    assert relu.is_output and not relu.is_reduction
    sch = Schedule(CASES["softmax"][0].mod)
    assert not analyze(sch, "T_softmax_expsum").reuse  # a broadcast of the row max is not data reuse


@pytest.mark.parametrize("name", NAMES)
def test_every_sketch_builds_and_matches_numpy(name):
    task = CASES[name][0]
    sketches = generate_sketches(task, TARGET)
    cands = sample_candidates(task, TARGET, n=2 * len(sketches), rng_seed=7)
    by_sketch = {}
    for c in cands:
        by_sketch.setdefault(c.sketch, c)
    assert set(by_sketch) == {s.name for s in sketches}, "some sketch yields no legal candidate"
    for i, cand in enumerate(by_sketch.values()):  # one build per sketch keeps the file fast
        run_and_check(cand.apply(task.mod).mod, name, seed=i)


@pytest.mark.parametrize("name", ["dense_packed", "conv3x3_packed"])
def test_fused_epilogue_of_a_blocked_output_is_right_for_every_tiling(name):
    # the epilogue reads the blocked tile through j // 16, j % 16; reverse_compute_at alone gave
    # it columns of tiles not yet computed whenever a tiling split the 16 lanes (about half)
    task = CASES[name][0]
    fused = [c for c in sample_candidates(task, TARGET, n=40, rng_seed=11) if "[fused]" in c.sketch]
    assert len(fused) >= 10
    for i, cand in enumerate(fused):
        run_and_check(cand.apply(task.mod).mod, name, seed=i)


def test_epilogue_is_remapped_only_where_it_reads_its_producer_one_to_one():
    from tilecraft.search.rules_cpu import _iterate_like_producer

    A = P((8, 32), "A")
    plain = te.compute((8, 32), lambda i, j: A[i, j] * 2, name="C")
    blocked = te.compute((8, 2, 16), lambda i, jo, ji: A[i, jo * 16 + ji] * 2, name="C")
    # consumer -> (fusible, its iteration extents afterwards: the producer's shape, so that its
    # bounding box under a tile loop is the tile)
    cases = {
        "same": (lambda i, j: plain[i, j] + 1, True, [8, 32]),
        "blocked": (lambda i, j: blocked[i, j // 16, j % 16] + 1, True, [8, 2, 16]),
        "broadcast": (lambda i, j: plain[i // 2, j] + 1, False, None),
    }
    for name, (body, fusible, extents) in cases.items():
        D = te.compute((8, 32), body, name="D")
        sch = Schedule(te.create_prim_func([A, D]))
        assert _iterate_like_producer(sch, "C", "D") is fusible, name
        if fusible:
            stmt = sch.get(sch.get_sblock("D"))
            assert [int(iv.dom.extent) for iv in stmt.iter_vars] == extents, name


@pytest.mark.parametrize("name", NAMES)
def test_default_schedule_builds_and_matches_numpy(name):
    task = CASES[name][0]
    sch = default_schedule(task, TARGET)
    assert ("T.parallel" in sch.mod.script()) == (name not in SMALL_ELEMENTWISE)
    run_and_check(sch.mod, name, seed=11)


SMALL_ELEMENTWISE = ("elementwise", "transpose")  # 3072 and 3840 elements: below the parallel threshold


def test_default_schedule_is_deterministic_and_annotated():
    task = CASES["matmul"][0]
    a, b = default_schedule(task, TARGET), default_schedule(task, TARGET)
    tvm.ir.assert_structural_equal(a.mod, b.mod)
    script = a.mod.script()
    assert "T.parallel" in script and "T.vectorized" in script and "pragma_auto_unroll_max_step" in script
    softmax = default_schedule(CASES["softmax"][0], TARGET).mod.script()
    assert softmax.count("T.parallel") == 1, "row reductions are computed under the output's row loop"


def test_default_schedule_for_a_large_matmul_builds():
    A, B = P((512, 512), "A"), P((512, 512), "B")
    task = make_task("matmul512", (A, B), topi.matmul(A, B), 2 * 512**3)
    sch = default_schedule(task, TARGET)
    ex = tvm.compile(sch.mod, target=TARGET.tvm_target)
    assert ex is not None
    # register tile of the default: 8 rows x 32 columns, the inner 32 vectorized
    assert "T.vectorized(32)" in sch.mod.script()


@pytest.mark.parametrize(
    "maker",
    [
        lambda: (lambda X: (X, topi.nn.pool2d(X, (3, 3), (2, 2), (1, 1), (1, 1, 1, 1), "max", layout="NCHW")))(P((1, 4, 9, 9), "X")),
        lambda: (lambda X: (X, topi.nn.global_pool(X, "avg", layout="NCHW")))(P((1, 8, 5, 5), "X")),
        lambda: (lambda X: (X, topi.sum(X)))(P((37, 19), "X")),  # to a scalar
        lambda: (lambda X: (X, topi.reshape(X, (6, 10))))(P((3, 4, 5), "X")),
        lambda: (lambda X: (X, topi.nn.pad(X, (0, 1), (2, 0))))(P((5, 7), "X")),
        lambda: (lambda X: (X, topi.cast(topi.add(X, X), "int32")))(P((3, 70), "X")),
    ],
)
def test_default_schedule_handles_unusual_tasks(maker):
    X, out = maker()
    task = make_task("odd", (X,), out)
    rng = np.random.default_rng(0)
    x = rng.standard_normal([int(d) for d in X.shape]).astype("float32")
    expected = tvm.runtime.empty(task.arg_types[-1].shape, task.arg_types[-1].dtype)
    tvm.compile(task.mod, target="llvm")(tvm.runtime.tensor(x), expected)
    for sch in (default_schedule(task, TARGET), simple_schedule(task, TARGET)):
        got = tvm.runtime.empty(task.arg_types[-1].shape, task.arg_types[-1].dtype)
        tvm.compile(sch.mod, target=TARGET.tvm_target)(tvm.runtime.tensor(x), got)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_gather_and_concat_tasks():
    X, I = P((10, 6), "X"), P((4,), "I", "int32")
    gather = make_task("gather", (X, I), topi.take(X, I, axis=0))
    Y = P((10, 3), "Y")
    concat = make_task("concat", (X, Y), topi.concatenate([X, Y], axis=1))
    rng = np.random.default_rng(1)
    x, y, idx = rng.standard_normal((10, 6)).astype("float32"), rng.standard_normal((10, 3)).astype("float32"), np.array([3, 0, 9, 3], "int32")
    out = tvm.runtime.empty((4, 6), "float32")
    tvm.compile(default_schedule(gather, TARGET).mod, target=TARGET.tvm_target)(tvm.runtime.tensor(x), tvm.runtime.tensor(idx), out)
    np.testing.assert_allclose(out.numpy(), x[idx])
    out = tvm.runtime.empty((10, 9), "float32")
    tvm.compile(default_schedule(concat, TARGET).mod, target=TARGET.tvm_target)(tvm.runtime.tensor(x), tvm.runtime.tensor(y), out)
    np.testing.assert_allclose(out.numpy(), np.concatenate([x, y], 1))


# --------------------------------------------------------------------------- sampling and traces
def test_sample_candidates_distinct_balanced_and_reproducible():
    task = CASES["conv3x3"][0]
    n_sketches = len(generate_sketches(task, TARGET))
    cands = sample_candidates(task, TARGET, n=4 * n_sketches, rng_seed=5)
    assert len(cands) == 4 * n_sketches
    assert len({c.trace_json for c in cands}) == len(cands)
    counts = {}
    for c in cands:
        counts[c.sketch] = counts.get(c.sketch, 0) + 1
    assert len(counts) == n_sketches and max(counts.values()) - min(counts.values()) <= 2
    again = sample_candidates(task, TARGET, n=4 * n_sketches, rng_seed=5)
    assert [c.trace_json for c in again] == [c.trace_json for c in cands]
    other = sample_candidates(task, TARGET, n=4 * n_sketches, rng_seed=6)
    assert [c.trace_json for c in other] != [c.trace_json for c in cands]


@pytest.mark.parametrize("name", ["matmul", "softmax", "conv3x3_s2", "layer_norm"])
def test_candidate_json_round_trips_to_the_identical_schedule(name):
    task = CASES[name][0]
    for cand in sample_candidates(task, TARGET, n=3, rng_seed=2):
        sch = cand.apply(task.mod)
        again = Candidate(**json.loads(json.dumps(cand.__dict__)))
        tvm.ir.assert_structural_equal(again.apply(task.mod).mod, sch.mod)
        # and re-serializing the replayed schedule gives the same trace
        assert Candidate.from_schedule(sch, sketch=cand.sketch).trace_json == cand.trace_json


def test_decisions_are_recorded_and_mutable():
    task = CASES["matmul"][0]
    cand = sample_candidates(task, TARGET, n=1, rng_seed=3)[0]
    sch = cand.apply(task.mod)
    kinds = {inst.kind.name for inst in sch.trace.decisions}
    assert {"SamplePerfectTile", "SampleCategorical"} <= kinds
    tile = next(i for i in sch.trace.insts if i.kind.name == "SamplePerfectTile")
    extent = int(np.prod([int(x) for x in sch.trace.decisions[tile]]))
    new = [extent, 1, 1, 1]
    mutated = sch.trace.with_decision(tile, new, remove_postproc=False)
    fresh = Schedule(task.mod)
    mutated.apply_to_schedule(fresh, remove_postproc=False)
    assert [int(x) for x in fresh.trace.decisions[next(i for i in fresh.trace.insts if i.kind.name == "SamplePerfectTile")]] == new
    run_and_check(fresh.mod, "matmul", seed=4)


def test_deterministic_context_fills_holes_with_fixed_decisions():
    task = CASES["dense_bias_relu"][0]
    sketch = generate_sketches(task, TARGET)[0]
    ctx = SketchContext(TARGET, deterministic=True)
    a, b = instantiate(sketch, task.mod, ctx, seed=1), instantiate(sketch, task.mod, ctx, seed=99)
    tvm.ir.assert_structural_equal(a.mod, b.mod)
    rand = SketchContext(TARGET, deterministic=False)
    mods = set()
    for seed in range(1, 9):
        try:
            mods.add(Candidate.from_schedule(instantiate(sketch, task.mod, rand, seed=seed)).trace_json)
        except SCHEDULE_ERRORS:
            continue
    assert len(mods) >= 4, "random holes should give different candidates"


def test_trace_json_replays_with_tvm_directly():
    task = CASES["row_sum"][0]
    cand = sample_candidates(task, TARGET, n=1, rng_seed=1)[0]
    fresh = Schedule(task.mod)
    Trace.apply_json_to_schedule(json.loads(cand.trace_json), fresh)
    run_and_check(fresh.mod, "row_sum", seed=2)
