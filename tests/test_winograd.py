"""Winograd F(4x4, 3x3) and F(2x2, 3x3) convs (compiler/winograd.py): the transforms' numpy semantics against a
direct conv, which convs compiler/layout.py rewrites, and the compiled kernels against the NCHW
graph."""

from __future__ import annotations

import numpy as np
import pytest

import tilecraft as tc
import tilecraft.api  # noqa: F401
from tilecraft.compiler import winograd
from tilecraft.compiler.interpret import run_graph
from tilecraft.compiler.ir import Graph, TensorType, verify
from tilecraft.compiler.layout import to_nchwc
from tilecraft.compiler.ops import evaluate, infer_type
from tilecraft.compiler.ops_conv import from_blocked, to_blocked
from tilecraft.compiler.pipeline import optimize
from tilecraft.errors import ShapeError
from tilecraft.frontends.builder import GraphBuilder

rng = np.random.default_rng(0)
CONV = dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1)


@pytest.mark.parametrize("tile", [4, 2])
@pytest.mark.parametrize("cin,cout,h,w,block", [(20, 24, 8, 12, 8), (16, 16, 4, 4, 16), (5, 30, 12, 8, 16)])
def test_three_kernels_compute_the_conv(cin, cout, h, w, block, tile):
    x = rng.standard_normal((1, cin, h, w)).astype("float32")
    wt = rng.standard_normal((cout, cin, 3, 3)).astype("float32")
    bias = rng.standard_normal(cout).astype("float32")
    want = evaluate("conv2d", [x, wt, bias], CONV)
    ob = -(-cout // block)
    bt, _, at = (mat.astype("float32") for mat in winograd.MATRICES[tile])
    v = evaluate("winograd_input", [to_blocked(x, block), bt], {})
    assert v.shape == (h // tile, w // tile, (tile + 2) ** 2, -(-cin // block), block)
    m = evaluate("winograd_gemm", [v, winograd.transform_weight(wt, block, tile)], {})
    b = np.pad(bias, (0, ob * block - cout)).reshape(ob, block)
    y = evaluate("winograd_output", [m, at, b], {"block": block})
    assert y.shape == (1, ob, h, w, block)
    np.testing.assert_allclose(from_blocked(y, cout), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_array_equal(y[0, -1, :, :, cout - (ob - 1) * block:], np.broadcast_to(0, y[0, -1, :, :, cout - (ob - 1) * block:].shape))


def test_shape_errors_name_the_op():
    with pytest.raises(ShapeError, match="winograd_input"):
        infer_type("winograd_input", [TensorType((1, 2, 6, 8, 16), "float32"), TensorType((6, 6), "float32")], {})
    with pytest.raises(ShapeError, match="winograd_gemm"):
        infer_type("winograd_gemm", [TensorType((2, 2, 36, 4, 16), "float32"), TensorType((36, 3, 16, 64), "float32")], {})


def block_graph(channels: int = 16, size: int = 8, *, strides=(1, 1), pads=(1, 1, 1, 1)) -> Graph:
    """1x1 conv + relu (its output is NCHWc) -> 3x3 conv + bias -> residual add -> relu."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, channels, size, size), "float32"))
    w1 = b.const(rng.standard_normal((channels, channels, 1, 1)).astype("float32") / channels, "w1")
    h = b.add("relu", [b.add("conv2d", [x, w1], "c1", **{**CONV, "pads": (0, 0, 0, 0)})], "r1")
    w2 = b.const(rng.standard_normal((channels, channels, 3, 3)).astype("float32") / (3 * channels), "w2")
    bias = b.const(rng.standard_normal(channels).astype("float32"), "b2")
    y = b.add("conv2d", [h, w2, bias], "c2", **{**CONV, "strides": strides, "pads": pads})
    if strides == (1, 1) and pads == (1, 1, 1, 1):  # same size: the residual add
        y = b.add("add", [y, h], "res")
    return b.finish([b.add("relu", [y], "out")])


@pytest.fixture
def any_map_size(monkeypatch):
    monkeypatch.setattr(winograd, "WINOGRAD_MIN_PIXELS", 0)
    monkeypatch.setattr(winograd, "MIN_PIXELS_F2", 0)


def _ops(graph: Graph) -> list[str]:
    return [n.op for n in graph.nodes]


def test_which_convs_become_winograd(any_map_size, monkeypatch):
    ops = _ops(verify(to_nchwc(block_graph(), block=8)))
    assert ops.count("winograd_output") == 1 and ops.count("conv2d_nchwc") == 1  # the 3x3 conv; the 1x1 stays
    assert "winograd_input" not in _ops(to_nchwc(block_graph(), block=8, winograd_convs=False))
    assert "winograd_input" not in _ops(to_nchwc(block_graph(strides=(2, 2)), block=8))  # stride 2
    assert "winograd_input" not in _ops(to_nchwc(block_graph(pads=(0, 0, 0, 0)), block=8))  # not 'same' padded
    assert "winograd_input" not in _ops(to_nchwc(block_graph(size=7), block=8))  # 7 is tiled by neither 4 nor 2
    tiles = {n.type.shape[0] for n in to_nchwc(block_graph(size=14), block=8).nodes if n.op == "winograd_input"}
    assert tiles == {7}  # 14 is not tiled by 4: F(2x2, 3x3), 7x7 tiles
    monkeypatch.setattr(winograd, "WINOGRAD_MIN_PIXELS", 28 * 28)
    monkeypatch.setattr(winograd, "MIN_PIXELS_F2", 1 << 30)
    assert "winograd_input" not in _ops(to_nchwc(block_graph(), block=8))  # an 8x8 map: direct


@pytest.mark.parametrize("block,size", [(8, 12), (16, 12), (8, 10)])  # 10: F(2x2, 3x3)
def test_winograd_graph_keeps_values_in_numpy_and_compiled(any_map_size, block, size):
    graph = block_graph(channels=20, size=size)  # 20 channels: padded to the block
    optimized = optimize(graph, weight_block=block, nchwc_block=block)
    bodies = [f.attr("body").name for f in optimized.nodes]
    assert "winograd_output_add_relu" in bodies  # the residual add and relu fused into the output transform
    f = {"x": rng.standard_normal((1, 20, size, size)).astype("float32")}
    want = run_graph(graph, f)[0]
    np.testing.assert_allclose(run_graph(optimized, f)[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    got = tc.compile(optimized, target="llvm").run(f)["out"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_transform_first_pass_stays_a_stage_in_the_default_schedule(any_map_size):
    """Inlined, each first-pass value would be computed six times (rules_cpu.KEEP_STAGE_ATTR)."""
    from tilecraft.search.schedules import default_schedule_func

    prepared = tc.api.prepare(block_graph(), target="llvm", layout="NCHWc")
    for name in ("winograd_input", "winograd_output"):
        task = next(t for t in prepared.table.tasks if t.name.startswith(name))
        script = default_schedule_func(task, prepared.target).script()
        assert f'T.sblock("{name}_rows")' in script, name


def test_flops_count_the_transforms_and_the_products(any_map_size):
    from tilecraft.compiler.lower import _flops

    optimized = optimize(block_graph(channels=16, size=8), weight_block=16, nchwc_block=16)
    by_op = {n.op: _flops(f.attr("body")) for f in optimized.nodes for n in f.attr("body").nodes if "winograd" in n.op}
    tiles = 2 * 2
    assert by_op["winograd_gemm"] == 2 * tiles * 36 * 16 * 16  # 36 products per tile and channel pair
    assert by_op["winograd_input"] == 2 * tiles * 36 * 16 * 12
    optimized = optimize(block_graph(channels=16, size=6), weight_block=16, nchwc_block=16)  # F(2x2): 4x4 patches
    by_op = {n.op: _flops(f.attr("body")) for f in optimized.nodes for n in f.attr("body").nodes if "winograd" in n.op}
    assert by_op["winograd_input"] == 2 * 9 * 16 * 16 * 8  # 9 tiles, 16 values each, two 4-term passes
