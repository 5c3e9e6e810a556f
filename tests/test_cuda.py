"""CUDA: GPU sketch rules, the GPU default schedule, codegen checked with nvcc (no GPU needed).

Tiers: pure tile-size tests; schedules built to a CUDA source module (a function with no
thread binding would silently become host code, so every build asserts a "cuda" import);
the generated CUDA compiled by nvcc to SASS for sm_80 and sm_90 (one fatbin, so ptxas also
checks registers and static shared memory); numerics on a real GPU (`gpu` marker).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm.s_tir import Schedule, Trace
from tvm.support import nvcc
from tvm.tirx import For, ForKind

import tilecraft.api as api
from tilecraft.compiler.build import build_graph
from tilecraft.compiler.ir import TensorType
from tilecraft.frontends.builder import GraphBuilder
from tilecraft.search.builder import gpu_problem
from tilecraft.search.default_schedule_gpu import default_gpu_schedule, fallback_gpu_schedule, schedule_problem
from tilecraft.search.measure_types import Candidate
from tilecraft.search.rules_gpu import GpuLimits, default_gpu_tiles, sample_gpu_tiles
from tilecraft.search.sampling import sample_candidates
from tilecraft.targets.base import GPU_DEFAULT_LIMITS, resolve_target

from conftest import assert_close_scaled, model_inputs, ort_run

ARCHS = ("sm_80", "sm_90")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- workloads
def _w(*shape) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.1).astype("float32")


def _conv(b, x, w, *, stride=1, pad=1, groups=1):
    return b.add("conv2d", [x, b.const(w, "w")], strides=(stride, stride), pads=(pad,) * 4, dilations=(1, 1), groups=groups)


def _graph(op: str):
    b = GraphBuilder()
    if op == "matmul":
        y = b.add("matmul", [b.add_input("x", TensorType((256, 512), "float32")), b.const(_w(512, 384), "w")])
    elif op == "batch_matmul":
        y = b.add("matmul", [b.add_input("a", TensorType((4, 128, 64), "float32")), b.add_input("b", TensorType((4, 64, 128), "float32"))])
    elif op == "dense_bias_relu":
        mm = b.add("matmul", [b.add_input("x", TensorType((64, 256), "float32")), b.const(_w(256, 512), "w")])
        y = b.add("relu", [b.add("add", [mm, b.const(_w(512), "bias")])])
    elif op == "conv3x3":
        c = _conv(b, b.add_input("x", TensorType((1, 32, 28, 28), "float32")), _w(64, 32, 3, 3))
        y = b.add("relu", [b.add("add", [c, b.const(_w(1, 64, 1, 1), "bias")])])
    elif op == "conv1x1":
        y = _conv(b, b.add_input("x", TensorType((1, 64, 14, 14), "float32")), _w(128, 64, 1, 1), pad=0)
    elif op == "conv_strided":
        y = _conv(b, b.add_input("x", TensorType((1, 16, 32, 32), "float32")), _w(32, 16, 3, 3), stride=2)
    elif op == "depthwise":
        y = _conv(b, b.add_input("x", TensorType((1, 32, 28, 28), "float32")), _w(32, 1, 3, 3), groups=32)
    elif op == "softmax":
        y = b.add("softmax", [b.add_input("x", TensorType((8, 128, 256), "float32"))], axis=2)
    elif op == "layer_norm":
        x = b.add_input("x", TensorType((4, 128, 256), "float32"))
        y = b.add("layer_norm", [x, b.const(_w(256) + 1, "gamma"), b.const(_w(256), "beta")], axis=2, epsilon=1e-5)
    elif op == "reduce":  # global average pool: a row reduction + a division
        y = b.add("reduce", [b.add_input("x", TensorType((1, 256, 7, 7), "float32"))], axes=(2, 3), keepdims=True, kind="mean")
    else:
        raise ValueError(op)
    return b.finish([y])


OPS = ("matmul", "batch_matmul", "dense_bias_relu", "conv3x3", "conv1x1", "conv_strided", "depthwise", "softmax", "layer_norm", "reduce")
REDUCTIONS = ("softmax", "layer_norm", "reduce")


@pytest.fixture(scope="module")
def target():
    return resolve_target("cuda:sm_80")


@pytest.fixture(scope="module")
def tasks(target):
    out = {}
    for op in OPS:
        prepared = api.prepare(_graph(op), target=target)
        assert len(prepared.tasks) == 1, f"{op}: expected one fused kernel, got {[t.name for t in prepared.tasks]}"
        out[op] = prepared.tasks[0]
    return out


# --------------------------------------------------------------------------- helpers
def replay(candidate: Candidate, task) -> Schedule:
    # no debug_mask: TVM's debug re-verification rejects legal predicated cooperative fetches
    sch = Schedule(task.mod)
    Trace.apply_json_to_schedule(json.loads(candidate.trace_json), sch)
    return sch


def build_cuda(mod: tvm.IRModule, target) -> str:
    """Compile for CUDA; the kernels must be device code.  Returns the CUDA source."""
    ex = tvm.compile(mod, target=target.tvm_target)
    assert [m.kind for m in ex.mod.imports] == ["cuda"], "no device kernel: the function would run on the host"
    src = ex.mod.imports[0].inspect_source()
    assert "__global__" in src
    return src


def nvcc_compile(src: str, target) -> bytes:
    """SASS for every arch in ARCHS, in one nvcc run (ptxas checks registers and shared memory)."""
    arch = [flag for a in ARCHS for flag in ("-gencode", f"arch=compute_{a[3:]},code={a}")]
    with target.tvm_target:  # the nvcc wrapper reads Target.current()
        return bytes(nvcc.compile_cuda(src, target_format="fatbin", arch=arch, compiler="nvcc"))


def thread_extents_per_kernel(mod: tvm.IRModule) -> list[set[int]]:
    """For each kernel (blockIdx-bound root loop), the extents of its threadIdx.x loops."""
    kernels: list[set[int]] = []

    def visit(node):
        if isinstance(node, For) and node.kind == ForKind.THREAD_BINDING:
            tag = str(node.thread_binding.thread_tag)
            if tag == "blockIdx.x":
                kernels.append(set())
            elif tag == "threadIdx.x":
                kernels[-1].add(int(node.extent))

    tvm_ffi.structural_walk(mod["main"].body, (For, visit), order="pre")  # blockIdx loops come first
    return kernels


def assert_consistent_threads(mod: tvm.IRModule) -> None:
    # two threadIdx.x extents in one kernel compile silently into a wrong kernel
    for extents in thread_extents_per_kernel(mod):
        assert len(extents) <= 1, f"threadIdx.x extents {sorted(extents)} in one kernel"


LIMITS = dict(GPU_DEFAULT_LIMITS)


# --------------------------------------------------------------------------- tile sizes (pure)
def test_sampled_tiles_are_perfect_and_within_limits():
    rng = random.Random(0)
    limits = GpuLimits(max_threads=256, max_shared_bytes=49152, max_vthread=4)
    for spatial, reduce in [([1, 64, 56, 56], [64, 3, 3]), ([512, 384], [1024]), ([4, 128, 128], [64]), ([1, 1000], [512])]:
        for _ in range(50):
            s, r = sample_gpu_tiles(rng, spatial, reduce, limits)
            assert [int(np.prod(f)) for f in s] == spatial and [int(np.prod(f)) for f in r] == reduce
            assert all(len(f) == 5 for f in s) and all(len(f) == 3 for f in r)
            assert int(np.prod([f[2] for f in s])) <= 256 and int(np.prod([f[1] for f in s])) <= 4


def test_default_tiles_shrink_when_asked():
    limits = GpuLimits(1024, 49152, 8)
    big, _ = default_gpu_tiles([1, 64, 112, 112], [3, 7, 7], limits)
    small, _ = default_gpu_tiles([1, 64, 112, 112], [3, 7, 7], limits, shrink=3)
    per_block = lambda s: int(np.prod([f[1] * f[2] * f[3] * f[4] for f in s]))  # noqa: E731
    assert per_block(small) < per_block(big)
    assert int(np.prod([f[2] for f in big])) <= 1024


# --------------------------------------------------------------------------- sketches (no build)
EXPECTED_FIRST_SKETCH = {
    "matmul": "multi_level_tiling_gpu[shared](T_matmul)",
    "dense_bias_relu": "multi_level_tiling_gpu[shared](T_matmul)",
    "conv3x3": "multi_level_tiling_gpu[shared](conv2d_nchw)",
    "softmax": "cross_thread_reduction[group](T_softmax_norm)",
    "layer_norm": "cross_thread_reduction[group](T_layer_norm)",
    "reduce": "cross_thread_reduction[single](T_mean)",
}


@pytest.mark.parametrize("op", sorted(EXPECTED_FIRST_SKETCH))
def test_sketches_use_the_gpu_rules(op, tasks, target):
    from tilecraft.search.sketch import generate_sketches

    sketches = generate_sketches(tasks[op], target)
    assert EXPECTED_FIRST_SKETCH[op] in sketches[0].name
    if op in ("matmul", "conv3x3"):  # both tiling variants survive the limits
        assert any("[direct]" in s.name for s in sketches)


# --------------------------------------------------------------------------- default schedule
@needs_nvcc
@pytest.mark.parametrize("op", OPS)
def test_default_schedule_compiles_with_nvcc(op, tasks, target):
    task = tasks[op]
    sch = default_gpu_schedule(task, target)
    assert schedule_problem(sch, target) == ""
    assert_consistent_threads(sch.mod)
    src = build_cuda(sch.mod, target)
    if op in REDUCTIONS:
        assert "__shfl_down_sync" in src, "the row reduction should be a cross-thread all-reduce"
    elif op != "depthwise":
        assert "__shared__" in src, "the tiled kernel should stage operands in shared memory"
    assert len(nvcc_compile(src, target)) > 0


def test_fallback_schedule_binds_every_block(tasks, target):
    for op in ("conv3x3", "softmax", "reduce"):
        sch = fallback_gpu_schedule(tasks[op], target)
        assert schedule_problem(sch, target) == ""
        build_cuda(sch.mod, target)


# --------------------------------------------------------------------------- sampled candidates
@needs_nvcc
@pytest.mark.parametrize("op", OPS)
def test_sampled_candidates_build_and_compile_with_nvcc(op, tasks, target):
    task = tasks[op]
    cands = sample_candidates(task, target, n=4, rng_seed=3)
    assert len(cands) >= 2, f"only {len(cands)} candidates sampled"
    sources = []
    for cand in cands:
        sch = replay(cand, task)
        assert gpu_problem(sch.mod, target.tvm_target, LIMITS) == "", cand.sketch
        assert_consistent_threads(sch.mod)
        sources.append(build_cuda(sch.mod, target))
    assert len(set(sources)) >= 2, "sampling should give different programs"
    assert len(nvcc_compile(sources[0], target)) > 0


@pytest.mark.parametrize("op", ("conv3x3", "batch_matmul"))
def test_thread_extents_stay_consistent_when_a_tile_decision_mutates(op, tasks, target):
    """The cooperative fetch splits by the same ExprRVs as the compute's threads, so a changed
    thread tile changes every threadIdx.x of the kernel together."""
    task = tasks[op]
    cand = next(c for c in sample_candidates(task, target, n=4, rng_seed=5) if "[shared]" in c.sketch)
    sch = replay(cand, task)
    trace = sch.trace
    tiles = [i for i in trace.insts if i.kind.name == "SamplePerfectTile" and len(trace.decisions[i]) == 5]
    changed = 0
    for inst in tiles:
        decision = [int(x) for x in trace.decisions[inst]]
        src = next((k for k in (0, 3, 4) if decision[k] % 2 == 0), None)
        if src is None:
            continue
        decision[src] //= 2
        decision[2] *= 2  # twice the threads along this axis
        mutated = Schedule(task.mod)
        trace.with_decision(inst, decision, remove_postproc=True).apply_to_schedule(mutated, remove_postproc=True)
        assert_consistent_threads(mutated.mod)
        changed += 1
    assert changed > 0


def test_cross_thread_reductions_keep_their_init(tasks, target):
    """A thread-bound reduction must reach TVM with its init: decomposed, every thread would
    update the same accumulator (a silent race).  Needs sketch.decompose_reductions to skip them."""
    for op in REDUCTIONS:
        cands = [c for c in sample_candidates(tasks[op], target, n=6, rng_seed=1) if "cross_thread_reduction" in c.sketch]
        assert cands, op
        for cand in cands:
            src = build_cuda(replay(cand, tasks[op]).mod, target)
            assert "__shfl_down_sync" in src, f"{op}: {cand.sketch} lost its all-reduce"


# --------------------------------------------------------------------------- limits
def test_candidates_respect_a_small_thread_limit(tasks, target):
    small = dataclasses.replace(target, limits={**LIMITS, "max_threads_per_block": 64, "max_thread_x": 64})
    for op in ("matmul", "conv3x3", "softmax"):
        cands = sample_candidates(tasks[op], small, n=4, rng_seed=2)
        assert cands
        for cand in cands:
            assert gpu_problem(replay(cand, tasks[op]).mod, target.tvm_target, dict(small.limits)) == "", cand.sketch


def test_candidates_respect_a_small_shared_memory_limit(tasks, target):
    tight = dataclasses.replace(target, limits={**LIMITS, "max_shared_memory_per_block": 2048})
    cands = sample_candidates(tasks["conv3x3"], tight, n=6, rng_seed=4)
    assert cands
    for cand in cands:
        assert gpu_problem(replay(cand, tasks["conv3x3"]).mod, target.tvm_target, dict(tight.limits)) == ""


def test_over_limit_candidate_is_rejected_before_building(tasks, target):
    """A candidate whose thread tiles ask for 2048 threads per block: the builder's check says why."""
    task = tasks["matmul"]
    sch = default_gpu_schedule(task, target)
    trace = sch.trace
    inst = next(i for i in trace.insts if i.kind.name == "SamplePerfectTile" and len(trace.decisions[i]) == 5
                and int(np.prod([int(x) for x in trace.decisions[i]])) == 384)
    over = Schedule(task.mod)
    trace.with_decision(inst, [1, 1, 384, 1, 1], remove_postproc=True).apply_to_schedule(over, remove_postproc=True)
    problem = gpu_problem(over.mod, target.tvm_target, LIMITS)
    assert "exceeds" in problem
    assert "exceeds" in schedule_problem(over, target)
    assert gpu_problem(sch.mod, target.tvm_target, LIMITS) == ""
    host_only = Schedule(task.mod)  # no thread binding at all
    assert "no GPU kernel" in gpu_problem(host_only.mod, target.tvm_target, LIMITS)


# --------------------------------------------------------------------------- whole models
def _model_tasks(models_dir, name, target):
    return api.prepare(models_dir / f"{name}.onnx", target=target)


@pytest.mark.parametrize("name", ("resnet18", "bert_small"))
def test_every_model_task_builds_for_cuda(name, models_dir, target):
    prepared = _model_tasks(models_dir, name, target)
    by_kind = {}
    for task in prepared.tasks:
        sch = default_gpu_schedule(task, target)
        assert schedule_problem(sch, target) == "", task.name
        assert_consistent_threads(sch.mod)
        by_kind.setdefault(task.kind, build_cuda(sch.mod, target))
    if shutil.which("nvcc"):  # one kernel of each kind through nvcc; all of them in the slow test
        for src in list(by_kind.values())[:3]:
            assert len(nvcc_compile(src, target)) > 0


def test_whole_model_builds_one_cuda_module(models_dir, target):
    prepared = _model_tasks(models_dir, "bert_small", target)
    exe, report = build_graph(prepared.graph, target, table=prepared.table,
                              schedule=lambda task: default_gpu_schedule(task, target).mod["main"])
    kinds, stack = [], [exe.mod]
    while stack:
        mod = stack.pop()
        kinds.append(mod.kind)
        stack.extend(mod.imports)
    assert "cuda" in kinds and report.tasks == len(prepared.tasks)


@pytest.mark.slow
@needs_nvcc
@pytest.mark.parametrize("name", ("resnet18", "bert_small"))
def test_every_model_kernel_compiles_with_nvcc(name, models_dir, target):
    for task in _model_tasks(models_dir, name, target).tasks:
        src = build_cuda(default_gpu_schedule(task, target).mod, target)
        assert len(nvcc_compile(src, target)) > 0, task.name


# --------------------------------------------------------------------------- on a GPU
def _random_args(task, dev):
    rng = np.random.default_rng(1)
    host = [rng.standard_normal(t.shape).astype(t.dtype) for t in task.arg_types[:-1]]
    out = task.arg_types[-1]
    return host, [tvm.runtime.tensor(a, dev) for a in host] + [tvm.runtime.empty(out.shape, out.dtype, dev)]


def _reference(task, host):
    ex = tvm.compile(task.mod, target="llvm")  # the unscheduled function on the CPU
    out = task.arg_types[-1]
    args = [tvm.runtime.tensor(a) for a in host] + [tvm.runtime.empty(out.shape, out.dtype)]
    ex(*args)
    return args[-1].numpy()


@pytest.mark.gpu
@pytest.mark.parametrize("op", OPS)
def test_gpu_numerics_match_the_cpu_reference(op, tasks):
    target = resolve_target("cuda")  # the arch of the GPU present
    task = tasks[op]
    dev = tvm.cuda(0)
    host, args = _random_args(task, dev)
    want = _reference(task, host)
    schedules = [default_gpu_schedule(task, target)] + [replay(c, task) for c in sample_candidates(task, target, n=3, rng_seed=7)]
    for sch in schedules:
        ex = tvm.compile(sch.mod, target=target.tvm_target)
        ex(*args)
        dev.sync()
        assert_close_scaled(args[-1].numpy(), want, rel=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ("resnet18", "bert_small"))
def test_gpu_whole_model_matches_onnxruntime(name, models_dir):
    from tilecraft.compiler.module import Module

    target = resolve_target("cuda")
    prepared = _model_tasks(models_dir, name, target)
    exe, _ = build_graph(prepared.graph, target, table=prepared.table,
                         schedule=lambda task: default_gpu_schedule(task, target).mod["main"])
    module = Module(exe, device="cuda")
    feeds = model_inputs(name, prepared.graph.inputs, seed=0)
    got = module.run(feeds)
    want = ort_run(models_dir / f"{name}.onnx", feeds)
    for g, w in zip(got.values(), want):
        assert_close_scaled(g, w, rel=2e-3)
