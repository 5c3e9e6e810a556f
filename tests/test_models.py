"""The shared real models import, compile untuned for llvm, export, reload in a fresh
process and match ONNX Runtime on fresh random inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import tilecraft as tc
import tilecraft.api  # noqa: F401
from tilecraft.compiler.interpret import run_graph
from tilecraft.compiler.ir import verify
from tilecraft.compiler.module import Module
from tilecraft.compiler.pipeline import optimize
from tilecraft.frontends.onnx import from_onnx

from conftest import MODEL_NAMES, assert_close_scaled, model_inputs, ort_run


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_compiles_and_matches_onnxruntime(name, models_dir, tmp_path):
    path = models_dir / f"{name}.onnx"
    graph = from_onnx(path)
    verify(graph)
    # as `tc.compile(path)` does it: conv weights packed and feature maps NCHWc by the host's vector width on x86
    block = tc.api.weight_block(tc.api.resolve_target("llvm"))
    optimized = optimize(graph, verify_each=True, weight_block=block, nchwc_block=block)
    module = tc.compile(optimized, target="llvm")
    for seed in (1, 2):
        feeds = model_inputs(name, graph.inputs, seed)
        got = module.run(feeds)
        want = ort_run(path, feeds)
        for out_name, ref in zip(graph.outputs, want):
            assert_close_scaled(got[out_name], ref)
    if name == "resnet18":  # the pipeline keeps the numpy semantics too
        feeds = model_inputs(name, graph.inputs, 3)
        assert_close_scaled(run_graph(optimized, feeds)[0], run_graph(graph, feeds)[0], rel=1e-5)
        if block:
            assert all(n.op != "conv2d" for f in optimized.nodes for n in f.attr("body").nodes)
            ops = [n.op for f in optimized.nodes for n in f.attr("body").nodes]
            # 20 convs: the stride-1 3x3 ones of the 56x56, 28x28 (F(4x4, 3x3)) and 14x14 (F(2x2, 3x3))
            # stages as Winograd kernels
            assert ops.count("conv2d_nchwc") == 10 and ops.count("winograd_output") == 10


def test_exported_module_runs_in_a_fresh_process(models_dir, tmp_path):
    path = models_dir / "resnet18.onnx"
    module = tc.compile(path, target="llvm")
    so = module.export(tmp_path / "resnet18.so")
    feeds = model_inputs("resnet18", [(s["name"], _T(s)) for s in module.input_specs], 7)
    np.save(tmp_path / "x.npy", feeds["input"])
    script = (
        "import sys, numpy as np\n"
        "from tilecraft.compiler.module import Module\n"
        f"m = Module.load({str(so)!r})\n"
        f"out = m.run({{'input': np.load({str(tmp_path / 'x.npy')!r})}})\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, out[m.output_names[0]])\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    assert_close_scaled(np.load(tmp_path / "y.npy"), ort_run(path, feeds)[0])


class _T:
    def __init__(self, spec):
        self.shape, self.dtype = tuple(spec["shape"]), spec["dtype"]


def test_tasks_are_deduplicated(models_dir):
    prepared = tc.api.prepare(models_dir / "resnet18.onnx")
    kernels = len(prepared.graph.nodes) - len(prepared.table.reshapes)
    assert len(prepared.tasks) < kernels
    assert sum(t.weight for t in prepared.tasks) == kernels
    assert len({t.workload_key for t in prepared.tasks}) == len(prepared.tasks)


def test_module_metadata_names_inputs_and_outputs(models_dir):
    module = tc.compile(models_dir / "bert_small.onnx", target="llvm")
    assert [s["name"] for s in module.input_specs] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(s["dtype"] == "int64" and s["shape"] == [1, 128] for s in module.input_specs)
    assert len(module.output_names) == 2
    json.dumps(module.meta)
