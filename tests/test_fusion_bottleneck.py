"""Conv-bottleneck fusion: matching, fused == unfused numerics, tile-sized intermediates,
the build-time choice by measurement, the switch, and the real models against ONNX Runtime."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tvm

from tilecraft import api
from tilecraft.compiler.fusion import count_fused
from tilecraft.compiler.fusion_bottleneck import choose_bottlenecks, count_bottlenecks, prefer_fused
from tilecraft.compiler.interpret import run_graph
from tilecraft.compiler.pipeline import optimize
from tilecraft.frontends.onnx import from_onnx

from conftest import assert_close_scaled, model_inputs, ort_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bottleneck import inverted_residual, resnet_bottleneck  # noqa: E402

BLOCKS = {
    "mbv2_residual": lambda: inverted_residual(16, 6, 16, 16, 1, seed=3),
    "mbv2_stride2": lambda: inverted_residual(8, 6, 16, 16, 2, seed=4),
    "resnet": lambda: resnet_bottleneck(64, 16, 14, seed=5),
    "mbv2_matmul_expand": lambda: inverted_residual(16, 6, 16, 28, 1, seed=6),  # x86: its unfused expand is a matmul
}


def _x(graph, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal(graph.inputs[0][1].shape).astype("float32")}


def _force(prepared, fused: bool):
    keys = set(prepared.table.node_task.values())
    graph, table, counts = choose_bottlenecks(prepared.graph, prepared.table,
                                              lambda k: (1.0 if k in keys else None) if fused else None)
    return api.Prepared(graph, table, prepared.target), counts


@pytest.mark.parametrize("name", list(BLOCKS))
def test_fused_block_equals_unfused(name):
    graph = BLOCKS[name]()
    prepared = api.prepare(graph, layout="NCHW")
    assert count_bottlenecks(prepared.graph) == 1
    feeds = _x(graph)
    outs = {}
    for fused in (True, False):
        forced, counts = _force(prepared, fused)
        assert counts == ({"fused": 1, "unfused": 0} if fused else {"fused": 0, "unfused": 1})
        module, report = api.build_prepared(forced)
        outs[fused] = module.run(feeds)[graph.outputs[0]]
    assert_close_scaled(outs[True], outs[False], rel=1e-5)
    assert_close_scaled(outs[True], run_graph(graph, feeds)[0], rel=1e-5)


def test_no_fuse_bottleneck_switches_it_off():
    graph = BLOCKS["mbv2_residual"]()
    assert count_fused(optimize(graph)).get("bottleneck") == 1
    off = optimize(graph, no_fuse=frozenset({"bottleneck"}))
    assert "bottleneck" not in count_fused(off) and count_fused(off)["conv2d"] == 3
    prepared = api.prepare(graph, no_fuse=["bottleneck"], layout="NCHW")
    assert not prepared.table.part_tasks and "bottleneck" not in prepared.fusion_report()


def test_tasks_include_fused_and_parts():
    prepared = api.prepare(BLOCKS["resnet"](), layout="NCHW")
    kinds = sorted(t.kind for t in prepared.tasks)
    assert kinds == ["bottleneck", "conv2d", "conv2d", "conv2d"]
    (parts,) = prepared.table.part_tasks.values()
    assert len(parts) == 3 and all(k in prepared.table.by_key() for k in parts)
    # on x86 the parts' convs have packed weights (compiler/passes.pack_weights); the fused kernel keeps OIHW
    (node,) = [n for n in prepared.graph.nodes if n.attr("parts")]
    if api.weight_block(prepared.target):
        layouts = [n.attr("weight_layout") for p in node.attr("parts") for n in p.attr("body").nodes if n.op == "conv2d"]
        assert all(layouts) and not any(n.attr("weight_layout") for n in node.attr("body").nodes)


def _allocations(func) -> dict[str, int]:
    """Buffer name -> elements of each allocation after the lowering passes that place and compact them."""
    mod = tvm.IRModule({"main": func})
    seq = tvm.transform.Sequential([
        tvm.s_tir.transform.LowerCrossThreadReduction(),
        tvm.s_tir.transform.LowerInitBlock(),
        tvm.s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
        tvm.s_tir.transform.ConvertBlocksToOpaque(),
        tvm.s_tir.transform.CompactBufferAllocation(),
    ])
    found = {}

    def visit(block):
        for buf in block.alloc_buffers:
            size = 1
            for d in buf.shape:
                size *= int(d)
            found[buf.name] = size

    import tvm_ffi

    tvm_ffi.structural_walk(seq(mod)["main"].body, (tvm.s_tir.SBlock, visit), order="pre")
    return found


def test_default_schedule_keeps_the_intermediate_tile_sized():
    from tilecraft.search.schedules import default_schedule_func

    prepared = api.prepare(inverted_residual(16, 6, 16, 32, 1, seed=1), layout="NCHW")
    (task,) = [t for t in prepared.tasks if t.kind == "bottleneck"]
    full = 96 * 34 * 34  # the expanded, padded intermediate
    unscheduled = _allocations(task.func)
    assert max(unscheduled.values()) >= full
    scheduled = _allocations(default_schedule_func(task, prepared.target))
    assert scheduled and max(scheduled.values()) < full // 4, scheduled


def test_sketches_and_random_candidates_replay():
    from tilecraft.search.sampling import sample_candidates
    from tilecraft.search.sketch import generate_sketches

    prepared = api.prepare(BLOCKS["mbv2_residual"](), layout="NCHW")
    (task,) = [t for t in prepared.tasks if t.kind == "bottleneck"]
    sketches = generate_sketches(task, prepared.target)
    assert sketches and "bottleneck_cpu" in sketches[0].name
    cands = sample_candidates(task, prepared.target, n=4, rng_seed=1)
    assert cands
    for c in cands:
        c.apply(task.mod)


def test_parts_of_few_channel_expands_are_matmuls_between_views():
    prepared = api.prepare(BLOCKS["mbv2_matmul_expand"](), layout="NCHW")
    if not api.weight_block(prepared.target):
        pytest.skip("conv1x1_as_matmul is for x86 vector CPUs")
    (node,) = [n for n in prepared.graph.nodes if n.attr("parts")]
    anchors = [p.attr("anchor") or "view" for p in node.attr("parts")]
    assert anchors == ["view", "matmul", "view", "conv2d", "conv2d"]  # expand as x[C, HW] -> W @ x -> NCHW
    (keys,) = prepared.table.part_tasks.values()
    assert [prepared.table.by_key()[k].kind for k in keys] == ["matmul", "conv2d", "conv2d"]  # views get no task
    unfused, _ = _force(prepared, fused=False)
    assert {p.name for p in node.attr("parts") if not p.attr("anchor")} <= unfused.table.reshapes
    fused, _ = _force(prepared, fused=True)
    assert node.name not in fused.table.reshapes  # the fused kernel shares its name with the last view part


def test_build_choice_follows_the_records(tmp_path):
    from tilecraft.search.database import Database
    from tilecraft.search.measure_types import Candidate, MeasureResult, Record
    from tvm.s_tir import Schedule

    graph = BLOCKS["mbv2_residual"]()
    prepared = api.prepare(graph, layout="NCHW")
    (name, parts), = prepared.table.part_tasks.items()
    fused_key = prepared.table.node_task[name]
    tasks = prepared.table.by_key()
    target = prepared.target
    assert prefer_fused(None, [None]) is False and prefer_fused(1.0, [None, None]) is True
    assert prefer_fused(1.0, [0.2, 0.3]) is False and prefer_fused(0.4, [0.2, 0.3]) is True

    def record(key, cost):  # an empty trace replays as the unscheduled function: valid, just slow
        cand = Candidate.from_schedule(Schedule(tasks[key].mod))
        return Record(key, target.key, cand, MeasureResult(costs=(cost,)), tasks[key].name)

    feeds = _x(graph, 2)
    want = run_graph(graph, feeds)[0]
    for fused_cost, expect in ((1e-3, "fused"), (1.0, "unfused")):
        path = tmp_path / f"{expect}.db"
        with Database(path) as db:
            for t in tasks.values():
                db.add_workload(t)
            db.commit([record(fused_key, fused_cost)] + [record(k, 0.1) for k in parts])
        module, report = api.build_prepared(prepared, database=path)
        assert report.bottlenecks == {"fused": int(expect == "fused"), "unfused": int(expect == "unfused")}
        assert_close_scaled(module.run(feeds)[graph.outputs[0]], want, rel=1e-5)


def test_models_fuse_and_match_onnxruntime(models_dir):
    counts = {}
    for name in ("mobilenet_v2", "resnet18"):
        path = models_dir / f"{name}.onnx"
        graph = from_onnx(path)
        prepared = api.prepare(graph, layout="NCHW")
        counts[name] = count_bottlenecks(prepared.graph)
        feeds = model_inputs(name, graph.inputs, 1)
        want = ort_run(path, feeds)[0]
        if name == "mobilenet_v2":  # every chain forced fused: the fused kernels against ONNX Runtime
            forced, chains = _force(prepared, True)
            assert chains["fused"] == counts[name]
            module, _ = api.build_prepared(forced)
            assert_close_scaled(module.run(feeds)[graph.outputs[0]], want)
        module, report = api.build_prepared(prepared)  # no records: the parts
        assert_close_scaled(module.run(feeds)[graph.outputs[0]], want)
    # MobileNetV2: 16 inverted residuals (1x1 -> dw -> 1x1) + the first block's dw -> 1x1.
    # ResNet-18 has basic blocks (3x3 -> 3x3): no 1x1 in the chain, nothing to fuse.
    assert counts == {"mobilenet_v2": 17, "resnet18": 0}


def test_gpu_schedule_generates_valid_cuda():
    """No GPU needed: the default and sampled GPU schedules lower, fit the limits, and emit CUDA."""
    from tilecraft.search.builder import gpu_problem
    from tilecraft.search.sampling import sample_candidates
    from tilecraft.search.schedules import default_schedule_func
    from tilecraft.targets.base import resolve_target

    target = resolve_target("cuda:sm_80")
    prepared = api.prepare(BLOCKS["mbv2_residual"](), target=target, layout="NCHW")
    (task,) = [t for t in prepared.tasks if t.kind == "bottleneck"]
    mod = tvm.IRModule({"main": default_schedule_func(task, target)})
    assert gpu_problem(mod, target.tvm_target, target.limits) == ""
    source = tvm.compile(mod, target=target.tvm_target).mod.imports[0].inspect_source()
    assert "__shared__" in source and "__syncthreads" in source
    for cand in sample_candidates(task, target, n=3, rng_seed=2):
        assert gpu_problem(cand.apply(task.mod).mod, target.tvm_target, target.limits) == ""
