"""Fused attention: the pattern pass, the online-softmax kernel, its schedules, the real models.

Tiers: pattern tests are pure IR (interpreter numerics); kernel tests build with the default
attention schedule and compare with the numpy reference; model tests compile the shared
ONNX exports (attention with our kernel, every other task with its unscheduled reference
lowering, so they do not depend on the generic schedules) and compare with ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import tvm
import tvm_ffi

from tilecraft.compiler.build import build_graph
from tilecraft.compiler.fusion_attention import count_attention, fuse_attention
from tilecraft.compiler.interpret import run_graph
from tilecraft.compiler.ir import TensorType, verify
from tilecraft.compiler.lower import extract_tasks
from tilecraft.compiler.lower_attention import TILE_BLOCK, choose_blocks, lower_attention
from tilecraft.compiler.module import Module
from tilecraft.compiler.ops import _attention_eval
from tilecraft.compiler.pipeline import optimize
from tilecraft.compiler.task import Task
from tilecraft.frontends.builder import GraphBuilder
from tilecraft.frontends.onnx import from_onnx
from tilecraft.search.rules_attention import ATTENTION_RULES, default_attention_schedule
from tilecraft.search.sampling import sample_candidates
from tilecraft.targets.base import resolve_target

from conftest import assert_close_scaled, model_inputs, ort_run

F32 = "float32"
LLVM = resolve_target("llvm")


# --------------------------------------------------------------------------- helpers
def _attention_graph(*, sq=16, sk=16, d=8, heads=2, scale_op="mul", mask=None, k_form="transpose", extra_use=None):
    """The exported form: matmul(q, kᵀ) -> scale -> [mask] -> softmax -> matmul(·, v)."""
    gb = GraphBuilder()
    q = gb.add_input("q", TensorType((1, heads, sq, d), F32))
    k_in = gb.add_input("k", TensorType((1, sk, heads, d), F32))  # [B, S, H, D] as before head splitting
    v = gb.add_input("v", TensorType((1, heads, sk, d), F32))
    if k_form == "transpose":  # one transpose straight to kᵀ, as the ONNX exports do
        s = gb.add("matmul", [q, gb.add("transpose", [k_in], perm=(0, 2, 3, 1))])
    else:  # k as [B, H, S, D] and matmul(transpose_b=True), as Gemm-style exports do
        s = gb.add("matmul", [q, gb.add("transpose", [k_in], perm=(0, 2, 1, 3))], transpose_b=True)
    if scale_op == "mul":
        s = gb.add("mul", [s, gb.const(np.float32(0.25))])
    elif scale_op == "div":
        s = gb.add("div", [s, gb.const(np.float32(4.0))])
    if mask == "add":
        m = gb.add_input("mask", TensorType((1, 1, 1, sk), F32))
        s = gb.add("add", [m, s])  # the mask first: the matcher tries both sides
    elif mask == "causal":
        keep = np.tril(np.ones((sq, sk), dtype=bool), k=sk - sq)[None, None]
        s = gb.add("where", [gb.const(keep), s, gb.const(np.float32(-3.4e38))])
    elif mask == "keep":
        keep = gb.add_input("keep", TensorType((1, 1, sq, sk), "bool"))
        s = gb.add("where", [keep, s, gb.const(np.float32(-1e9))])
    p = gb.add("softmax", [s], axis=3)
    outputs = [gb.add("matmul", [p, v])]
    if extra_use == "scores":
        outputs.append(s)
    return gb.finish(outputs)


def _feeds(graph, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, t in graph.inputs:
        if t.dtype == "bool":
            feeds[name] = rng.random(t.shape) < 0.7
            feeds[name][..., 0] = True  # every row keeps a key
        elif name == "mask":
            feeds[name] = np.where(rng.random(t.shape) < 0.3, -1e4, 0).astype(t.dtype)
        else:
            feeds[name] = rng.standard_normal(t.shape).astype(t.dtype)
    return feeds


def _build_run(func, args, out_shape):
    sch = default_attention_schedule(Task("attention", "key", tvm.IRModule({"main": func}), (), 1.0), LLVM)
    ex = tvm.compile(sch.mod, target=LLVM.tvm_target)
    out = tvm.runtime.empty(out_shape, F32)
    ex(*[tvm.runtime.tensor(a) for a in args], out)
    return out.numpy()


def _kernel_case(*, heads, sq, sk, d, causal=False, mask_shape=None, kv_heads=None, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((1, heads, sq, d)).astype(F32)
    k = rng.standard_normal((1, kv_heads or heads, sk, d)).astype(F32)
    v = rng.standard_normal((1, kv_heads or heads, sk, d)).astype(F32)
    args = [q, k, v]
    if mask_shape is not None:
        args.append(np.where(rng.random(mask_shape) < 0.25, -1e9, rng.standard_normal(mask_shape)).astype(F32))
    attrs = {"scale": 1 / np.sqrt(d), "causal": causal}
    with np.errstate(invalid="ignore"):  # the reference gives NaN for rows without a visible key
        ref = _attention_eval(args, attrs)
    types = [TensorType(a.shape, F32) for a in args]
    func = lower_attention(*types[:3], TensorType(ref.shape, F32), mask=types[3] if mask_shape else None, **attrs)
    return _build_run(func, args, ref.shape), ref


# --------------------------------------------------------------------------- the pattern pass
@pytest.mark.parametrize(
    "scale_op, mask, k_form, causal, inputs",
    [
        ("mul", None, "transpose", False, 3),
        ("div", "add", "transpose", False, 4),
        ("mul", "causal", "transpose", True, 3),
        ("none", "keep", "transpose_b", False, 4),
    ],
)
def test_pattern_fuses_and_keeps_semantics(scale_op, mask, k_form, causal, inputs):
    graph = _attention_graph(scale_op=scale_op, mask=mask, k_form=k_form)
    fused = verify(fuse_attention(graph))
    assert count_attention(fused) == 1
    node = next(n for n in fused.nodes if n.op == "attention")
    assert node.attr("causal") is causal and len(node.inputs) == inputs
    assert node.attr("scale") == pytest.approx({"mul": 0.25, "div": 0.25, "none": 1.0}[scale_op])
    assert not {"softmax", "matmul"} & set(fused.op_counts())
    assert fused.type_of(node.inputs[1]).shape == (1, 2, 16, 8)  # k as [.., Sk, D]
    feeds = _feeds(graph)
    np.testing.assert_allclose(run_graph(fused, feeds)[0], run_graph(graph, feeds)[0], rtol=1e-5, atol=1e-6)


def test_k_transpose_is_composed_not_copied_twice():
    fused = fuse_attention(_attention_graph())
    assert fused.op_counts() == {"attention": 1, "transpose": 1}  # kᵀ's transpose became k's
    t = next(n for n in fused.nodes if n.op == "transpose")
    assert t.attr("perm") == (0, 2, 1, 3)


def test_runtime_keep_mask_becomes_a_broadcastable_additive_mask():
    fused = fuse_attention(_attention_graph(mask="keep"))
    node = next(n for n in fused.nodes if n.op == "attention")
    assert fused.type_of(node.inputs[3]) == TensorType((1, 1, 16, 16), F32)  # not materialized per head


@pytest.mark.parametrize("breaker", ["scores_used_twice", "softmax_other_axis", "scale_not_constant"])
def test_pattern_mismatch_leaves_graph_alone(breaker):
    if breaker == "scores_used_twice":
        graph = _attention_graph(extra_use="scores")
    else:
        gb = GraphBuilder()
        q = gb.add_input("q", TensorType((2, 8, 4), F32))
        k = gb.add_input("k", TensorType((2, 8, 4), F32))
        v = gb.add_input("v", TensorType((2, 8, 4), F32))
        s = gb.add("matmul", [q, k], transpose_b=True)
        if breaker == "scale_not_constant":
            s = gb.add("mul", [s, gb.add_input("c", TensorType((), F32))])
        p = gb.add("softmax", [s], axis=1 if breaker == "softmax_other_axis" else 2)
        graph = gb.finish([gb.add("matmul", [p, v])])
    assert fuse_attention(graph) == graph


def test_pipeline_fuses_and_no_fuse_switches_it_off():
    graph = _attention_graph(mask="add")
    assert count_attention(optimize(graph, verify_each=True)) == 1
    unfused = optimize(graph, no_fuse=frozenset({"attention"}), verify_each=True)
    assert count_attention(unfused) == 0
    table = extract_tasks(optimize(graph))
    assert [t.kind for t in table.tasks].count("attention") == 1


# --------------------------------------------------------------------------- the kernel
KERNEL_CASES = [  # heads, sq, sk, d, causal, mask shape
    (2, 1, 128, 64, False, None),  # decoding: one query row
    (2, 1, 77, 32, True, (1, 1, 1, 77)),
    (3, 7, 7, 32, True, None),
    (2, 7, 45, 128, False, (1, 1, 1, 45)),  # ragged key tile, padding mask
    (2, 128, 128, 64, False, (1, 1, 128, 128)),
    (2, 128, 128, 128, True, None),
    (2, 100, 300, 64, True, (1, 2, 100, 300)),  # ragged tiles both ways, per-head mask
    (2, 512, 512, 64, True, (1, 1, 1, 512)),
    (2, 512, 512, 32, False, None),
]


@pytest.mark.parametrize("heads, sq, sk, d, causal, mask", KERNEL_CASES)
def test_kernel_matches_numpy(heads, sq, sk, d, causal, mask):
    got, want = _kernel_case(heads=heads, sq=sq, sk=sk, d=d, causal=causal, mask_shape=mask)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_kernel_broadcasts_shared_kv_heads():
    got, want = _kernel_case(heads=4, sq=33, sk=70, d=32, kv_heads=1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_kernel_half_precision_inputs_accumulate_in_fp32():
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((2, 70, 32)).astype("float16") for _ in range(3))
    mask = rng.standard_normal((70, 70)).astype("float16")
    t = TensorType(q.shape, "float16")
    func = lower_attention(t, t, t, t, mask=TensorType(mask.shape, "float16"), scale=0.2, causal=True)
    sch = default_attention_schedule(Task("a", "k", tvm.IRModule({"main": func}), (), 1.0), LLVM)
    out = tvm.runtime.empty(q.shape, "float16")
    tvm.compile(sch.mod, target=LLVM.tvm_target)(*[tvm.runtime.tensor(a) for a in (q, k, v, mask)], out)
    want = _attention_eval([q, k, v, mask], {"scale": 0.2, "causal": True})
    np.testing.assert_allclose(out.numpy().astype(F32), want.astype(F32), rtol=2e-3, atol=2e-3)


def test_fully_masked_rows_give_zeros_not_nan():
    # causal with Sq > Sk: the first Sq - Sk rows see no key at all
    got, want = _kernel_case(heads=2, sq=80, sk=50, d=32, causal=True)
    assert np.isfinite(got).all()
    assert np.all(got[:, :, :30] == 0)
    np.testing.assert_allclose(got[:, :, 30:], want[:, :, 30:], rtol=1e-4, atol=1e-5)
    # an additive mask of -inf everywhere: no NaN either
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 1, 8, 16)).astype(F32) for _ in range(3))
    mask = np.full((1, 1, 8, 8), -np.inf, F32)
    t = TensorType((1, 1, 8, 16), F32)
    func = lower_attention(t, t, t, t, mask=TensorType(mask.shape, F32), scale=0.25)
    assert np.isfinite(_build_run(func, [q, k, v, mask], q.shape)).all()


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
def test_kernel_matches_numpy_at_2048(causal):
    got, want = _kernel_case(heads=2, sq=2048, sk=2048, d=64, causal=causal)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _allocated(func) -> list[tuple[str, int]]:
    found = []

    def visit(block):
        found.extend((b.name, int(np.prod([int(x) for x in b.shape]))) for b in block.alloc_buffers)

    tvm_ffi.structural_walk(func.body, (tvm.s_tir.SBlock, visit), order="pre")
    return found


def test_kernel_never_allocates_sq_by_sk():
    allocated = {}
    for seq in (256, 2048, 8192):
        t = TensorType((1, 12, seq, 64), F32)
        func = lower_attention(t, t, t, t, mask=TensorType((1, 1, seq, seq), F32), scale=0.125, causal=True)
        sizes = dict(_allocated(func))
        scheduled = dict(_allocated(default_attention_schedule(Task("a", "k", tvm.IRModule({"main": func}), (), 1.0), LLVM).mod["main"]))
        bq, bk = choose_blocks(seq, seq)
        assert bq <= 64 and bk <= 64
        for allocs in (sizes, scheduled):
            assert allocs and max(allocs.values()) <= max(bq * bk, bq * 64, 64 * bk)
        assert {"s", "p", "acc", "ks"} <= set(sizes)
        allocated[seq] = sizes
    assert allocated[2048] == allocated[8192]  # the same tiles however long the sequence grows


def test_tiles_are_clipped_to_the_sequence():
    assert choose_blocks(512, 512) == (64, 64)
    assert choose_blocks(2048, 2048) == (64, 64)  # the same tiles however long the sequence
    assert choose_blocks(1, 2048) == (1, 64)  # decoding: one query row, the usual key tile
    assert choose_blocks(7, 5) == (7, 5)
    assert choose_blocks(2048, 2048, block_q=32, block_k=128) == (32, 128)


# --------------------------------------------------------------------------- schedules and search
def test_search_samples_valid_attention_candidates():
    # the attention rules alone: the generic annotation pass would re-sample the unroll depth
    # (up to 512: 20 s of LLVM per candidate), see rules_attention.UNROLL_STEPS
    target = dataclasses.replace(LLVM, rules=ATTENTION_RULES)
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 2, 96, 32)).astype(F32) for _ in range(3))
    t = TensorType(q.shape, F32)
    task = Task("attention", "key", tvm.IRModule({"main": lower_attention(t, t, t, t, scale=0.2, causal=True)}), (), 1.0)
    want = _attention_eval([q, k, v], {"scale": 0.2, "causal": True})
    before = tvm_ffi.structural_hash(task.mod)
    cands = sample_candidates(task, target, n=3, rng_seed=1)
    assert tvm_ffi.structural_hash(task.mod) == before  # scheduling copies, never edits the task in place
    assert len(cands) == 3 and all("attention_cpu" in c.sketch for c in cands)
    assert len({c.trace_json for c in cands}) == 3  # the holes were sampled
    for cand in cands:
        ex = tvm.compile(cand.apply(task.mod).mod, target=LLVM.tvm_target)
        out = tvm.runtime.empty(want.shape, F32)
        ex(tvm.runtime.tensor(q), tvm.runtime.tensor(k), tvm.runtime.tensor(v), out)
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-5)


def test_default_schedule_parallelizes_the_tiles():
    t = TensorType((1, 4, 256, 64), F32)
    func = lower_attention(t, t, t, t, scale=0.125)
    sch = default_attention_schedule(Task("a", "k", tvm.IRModule({"main": func}), (), 1.0), LLVM)
    loops = sch.get_loops(sch.get_sblock(TILE_BLOCK))
    assert len(loops) == 1 and sch.get(loops[0]).kind == tvm.tirx.ForKind.PARALLEL
    assert int(sch.get(loops[0]).extent) == 4 * 256 // choose_blocks(256, 256)[0]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_kernel_generates_and_compiles_to_ptx():
    from tvm.support import nvcc

    cuda = resolve_target("cuda:sm_80")
    t = TensorType((1, 4, 100, 64), F32)
    func = lower_attention(t, t, t, t, mask=TensorType((1, 1, 100, 100), F32), scale=0.125, causal=True)
    sch = default_attention_schedule(Task("a", "k", tvm.IRModule({"main": func}), (), 1.0), cuda)
    ex = tvm.compile(sch.mod, target=cuda.tvm_target)
    assert [m.kind for m in ex.mod.imports] == ["cuda"]  # really a device kernel, not host code
    src = ex.mod.imports[0].inspect_source()
    assert "blockIdx.x" in src and "threadIdx.x" in src and "__shared__" in src
    with cuda.tvm_target:
        ptx = nvcc.compile_cuda(src, target_format="ptx", arch="sm_80", compiler="nvcc")
    assert b".entry" in bytes(ptx)


# --------------------------------------------------------------------------- the real models
def _kernel_schedule(task):
    """Attention: our schedule.  Everything else: its reference lowering, unscheduled."""
    if task.kind == "attention":
        return default_attention_schedule(task, LLVM).mod["main"]
    return task.func


@pytest.mark.parametrize("name, count", [("bert_small", 4), ("gpt2_2layer", 2), ("attn_block", 1)])
def test_models_fuse_attention_and_match_onnxruntime(name, count, models_dir):
    path = models_dir / f"{name}.onnx"
    graph = from_onnx(path)
    assert count_attention(optimize(graph, no_fuse=frozenset({"attention"}))) == 0
    optimized = optimize(graph, verify_each=True)
    assert count_attention(optimized) == count
    table = extract_tasks(optimized)
    assert any(t.kind == "attention" for t in table.tasks)
    exe, _ = build_graph(optimized, LLVM, schedule=_kernel_schedule, table=table)
    feeds = model_inputs(name, graph.inputs, 1)
    got = Module(exe, device="cpu").run(feeds)
    for out_name, want in zip(graph.outputs, ort_run(path, feeds)):
        assert_close_scaled(got[out_name], want)
