"""Lowerings chosen for speed keep the numbers: transcendental math as vectorizable arithmetic
(LLVM has no vector erf or pow: a libm call per element made BERT's and GPT-2's GELU epilogues
slower than their matmuls), and convs with pre-packed OIHW{b}o weights.  Compared with numpy or
the graph interpreter on fresh random inputs, edge values included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import te

import tilecraft as tc
import tilecraft.api  # noqa: F401
from tilecraft.compiler.interpret import run_graph
from tilecraft.compiler.ir import TensorType
from tilecraft.compiler.lower import lower_body
from tilecraft.compiler.pipeline import optimize
from tilecraft.compiler.lower_ops import _erf
from tilecraft.frontends.builder import GraphBuilder

rng = np.random.default_rng()
SHAPE = (8, 64)


def _erf64(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x.astype(np.float64))


def _matmul_then(build_epilogue):
    """x @ w followed by an epilogue; returns (module, w)."""
    weight = rng.standard_normal((SHAPE[1], SHAPE[1])).astype("float32")
    b = GraphBuilder()
    x = b.add_input("x", TensorType(SHAPE, "float32"))
    y = build_epilogue(b, b.add("matmul", [x, b.const(weight, "w")], "mm"))
    return tc.compile(b.finish([y]), target="llvm"), weight


def test_erf_is_accurate_everywhere_and_saturates():
    x = te.placeholder((1 << 14,), "float32", name="x")
    f = tvm.compile(te.create_prim_func([x, te.compute(x.shape, lambda i: _erf(x[i]), name="y")]), target="llvm")
    xs = np.concatenate([np.linspace(-10, 10, 8000), 3 * rng.standard_normal((1 << 14) - 8000)]).astype("float32")
    out = tvm.runtime.tensor(np.zeros_like(xs))
    f(tvm.runtime.tensor(xs), out)
    np.testing.assert_allclose(out.numpy(), _erf64(xs), atol=1e-6, rtol=0)
    assert np.all(np.abs(out.numpy()) <= 1.0)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_epilogue_matches_numpy(approximate):
    module, w = _matmul_then(lambda b, m: b.add("gelu", [m], "y", approximate=approximate))
    x = rng.standard_normal(SHAPE).astype("float32")
    m = x.astype(np.float64) @ w.astype(np.float64)
    if approximate == "tanh":
        want = 0.5 * m * (1 + np.tanh(math.sqrt(2 / math.pi) * (m + 0.044715 * m**3)))
    else:
        want = 0.5 * m * (1 + _erf64(m / math.sqrt(2)))
    np.testing.assert_allclose(module.run({"x": x})["y"], want, atol=1e-5 * np.abs(want).max(), rtol=1e-4)


@pytest.mark.parametrize("exponent", [0.5, 1.0, 2.0, 3.0, 4.0, -1.0, 1.7])
def test_pow_by_a_constant_matches_numpy(exponent):
    def epilogue(b, m):  # a base >= 1: near 0, x ** -1 would only measure the matmul's rounding
        base = b.add("add", [b.add("abs", [m], "a"), b.const(np.float32(1.0), "one")], "base")
        return b.add("pow", [base, b.const(np.float32(exponent), "e")], "y")

    module, w = _matmul_then(epilogue)
    x = rng.standard_normal(SHAPE).astype("float32")
    want = (np.abs(x.astype(np.float64) @ w.astype(np.float64)) + 1) ** exponent
    np.testing.assert_allclose(module.run({"x": x})["y"], want, rtol=1e-4, atol=1e-6 * want.max())


@pytest.mark.parametrize("op, exponent", [("erf", None), ("pow", 3.0), ("pow", 0.5)])
def test_no_libm_call_per_element(op, exponent):
    """The lowered function calls no scalar erf / pow intrinsic (what LLVM would scalarize)."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType(SHAPE, "float32"))
    inputs = [x] if exponent is None else [x, b.const(np.float32(exponent), "e")]
    func, _ = lower_body(b.finish([b.add(op, inputs, "y")]))
    text = func.script()
    assert "T.erf" not in text and "T.pow" not in text, text


@pytest.mark.parametrize("block", [8, 16])
def test_packed_weight_convs_match_the_interpreter(block):
    """Strided, dilated, asymmetric padding, bias + residual + relu epilogue, a 1x1; compiled with
    packed weights (and one depthwise conv that stays OIHW) against the unpacked graph's numpy."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, 8, 15, 13), "float32"))
    w = b.const(rng.standard_normal((32, 8, 3, 3)).astype("float32"), "w")
    bias = b.const(rng.standard_normal(32).astype("float32"), "bias")
    a = b.add("conv2d", [x, w, bias], "a", strides=(2, 1), pads=(1, 0, 2, 1), dilations=(1, 2), groups=1)
    a = b.add("relu", [a], "a_relu")
    c = b.add("conv2d", [a, b.const(rng.standard_normal((16, 32, 1, 1)).astype("float32"), "w1")], "c",
              strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1)
    d = b.add("conv2d", [c, b.const(rng.standard_normal((16, 1, 3, 3)).astype("float32"), "wd")], "d",
              strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=16)
    out = b.add("relu", [b.add("add", [d, c], "res")], "out")
    graph = b.finish([out])
    optimized = optimize(graph, weight_block=block, no_fuse=frozenset({"bottleneck"}))
    convs = [n for f in optimized.nodes for n in f.attr("body").nodes if n.op == "conv2d"]
    assert sorted(str(n.attr("weight_layout")) for n in convs) == ["None", f"OIHW{block}o", f"OIHW{block}o"]
    module = tc.compile(optimized, target="llvm")
    feeds = {"x": rng.standard_normal((1, 8, 15, 13)).astype("float32")}
    want = run_graph(graph, feeds)[0]
    np.testing.assert_allclose(module.run(feeds)["out"], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("transpose_b", [False, True])
def test_packed_weight_matmuls_match_numpy(transpose_b):
    """A batched activation times a packed [N/b, K, b] weight, with a bias + exact GELU epilogue."""
    w = rng.standard_normal((48, 40) if transpose_b else (40, 48)).astype("float32")
    bias = rng.standard_normal(48).astype("float32")
    b = GraphBuilder()
    x = b.add_input("x", TensorType((2, 7, 40), "float32"))
    m = b.add("matmul", [x, b.const(w, "w")], "mm", transpose_b=transpose_b)
    y = b.add("gelu", [b.add("add", [m, b.const(bias, "bias")], "biased")], "y")
    graph = b.finish([y])
    optimized = optimize(graph, weight_block=8)
    (node,) = optimized.nodes
    assert [n.attr("weight_layout") for n in node.attr("body").nodes if n.op == "matmul"] == ["KN8n"]
    feeds = {"x": rng.standard_normal((2, 7, 40)).astype("float32")}
    z = feeds["x"].astype(np.float64) @ (w.T if transpose_b else w).astype(np.float64) + bias
    want = 0.5 * z * (1 + _erf64(z / math.sqrt(2)))
    got = tc.compile(optimized, target="llvm").run(feeds)["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("width, pads, groups", [
    (29, (1, 1, 1, 1), 16),  # odd width: the last odd column is padding
    (32, (0, 0, 1, 1), 16),  # TF-style asymmetric padding (MobileNet exports)
    (30, (1, 2, 0, 1), 8),  # grouped, two channels per group
    (12, (1, 1, 1, 1), 16),  # 6 wide: below DEINTERLEAVE_MIN_WIDTH, the plain padded map
])
def test_stride2_grouped_convs_read_deinterleaved_columns(width, pads, groups):
    from tilecraft.compiler.lower_conv import DEINTERLEAVE_MIN_WIDTH

    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, 16, 9, width), "float32"))
    w = b.const(rng.standard_normal((16, 16 // groups, 3, 3)).astype("float32"), "w")
    bias = b.const(rng.standard_normal(16).astype("float32"), "bias")
    y = b.add("conv2d", [x, w, bias], "y", strides=(2, 2), pads=pads, dilations=(1, 1), groups=groups)
    graph = b.finish([b.add("relu", [y], "out")])
    out_width = graph.type_of("y").shape[3]
    (task,) = tc.api.prepare(graph, target="llvm", layout="NCHW").table.tasks  # NCHWc needs no deinterleaving
    pad = next(buf for buf in _allocated_buffers(task.mod["main"]) if buf.name == "pad_temp")
    assert len(pad.shape) == (5 if out_width >= DEINTERLEAVE_MIN_WIDTH else 4)
    module = tc.compile(graph, target="llvm", layout="NCHW")
    feeds = {"x": rng.standard_normal((1, 16, 9, width)).astype("float32")}
    np.testing.assert_allclose(module.run(feeds)["out"], run_graph(graph, feeds)[0], rtol=1e-5, atol=1e-5)


def _allocated_buffers(func) -> list:
    found = []
    tvm_ffi.structural_walk(func.body, (tvm.s_tir.SBlock, lambda block: found.extend(block.alloc_buffers)), order="post")
    return found
