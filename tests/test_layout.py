"""NCHWc activations (compiler/layout.py): which nodes the pass rewrites, where it converts back,
and that the rewritten graph computes the same values, in numpy and compiled."""

from __future__ import annotations

import numpy as np
import pytest

import tilecraft as tc
import tilecraft.api  # noqa: F401
from tilecraft.compiler.interpret import run_graph
from tilecraft.compiler.ir import Graph, TensorType, verify
from tilecraft.compiler.layout import to_nchwc
from tilecraft.compiler.ops_conv import from_blocked, to_blocked
from tilecraft.compiler.pipeline import optimize
from tilecraft.frontends.builder import GraphBuilder

rng = np.random.default_rng(0)


def _conv(b, x, o, c, k, name, *, groups=1, strides=(1, 1), pads=None, dilations=(1, 1), bias=True):
    pad = (k // 2,) * 4 if pads is None else pads
    inputs = [x, b.const(rng.standard_normal((o, c // groups, k, k)).astype("float32"), f"{name}_w")]
    if bias:
        inputs.append(b.const(rng.standard_normal(o).astype("float32"), f"{name}_b"))
    return b.add("conv2d", inputs, name, strides=strides, pads=pad, dilations=dilations, groups=groups)


def mobile_block_graph() -> Graph:
    """A MobileNet-like chain with channel counts that are not multiples of the block, a residual,
    an op that must stay NCHW (log: not finite on padded channels), pooling, and an inner value
    that is also a graph output."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, 3, 17, 15), "float32"))
    stem = b.add("clip", [_conv(b, x, 24, 3, 3, "stem", strides=(2, 2))], "stem_relu6", min=0.0, max=6.0)
    dw = b.add("clip", [_conv(b, stem, 24, 24, 3, "dw", groups=24)], "dw_relu6", min=0.0, max=6.0)
    project = _conv(b, dw, 24, 24, 1, "project")
    res = b.add("add", [project, stem], "res")
    scaled = b.add("mul", [res, b.const(np.array(0.5, "float32"), "half")], "scaled")
    expand = _conv(b, scaled, 20, 24, 1, "expand", bias=False)
    dw2 = _conv(b, expand, 20, 20, 3, "dw2", groups=20, strides=(2, 2), pads=(0, 1, 1, 0), dilations=(1, 1))
    logged = b.add("log", [b.add("abs", [dw2], "abs")], "logged")
    pooled = b.add("pool2d", [logged], "pool", kind="max", kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0),
                   dilations=(1, 1))
    return b.finish([pooled, res])


def feeds(graph: Graph) -> dict[str, np.ndarray]:
    return {n: rng.standard_normal(t.shape).astype(t.dtype) for n, t in graph.inputs}


def test_blocked_layout_round_trips_with_zero_padded_channels():
    x = rng.standard_normal((2, 20, 3, 5)).astype("float32")
    blocked = to_blocked(x, 8)
    assert blocked.shape == (2, 3, 3, 5, 8)
    np.testing.assert_array_equal(blocked[:, 2, :, :, 4:], 0)
    np.testing.assert_array_equal(blocked[0, 1, 2, 3], x[0, 8:16, 2, 3])
    np.testing.assert_array_equal(from_blocked(blocked, 20), x)


@pytest.mark.parametrize("block", [8, 16])
def test_convs_and_their_epilogues_go_nchwc_and_keep_values(block):
    graph = mobile_block_graph()
    rewritten = verify(to_nchwc(graph, block=block))
    ops = {n.name: n.op for n in rewritten.nodes}
    assert sum(op == "conv2d_nchwc" for op in ops.values()) == 5 and "conv2d" not in ops.values()
    # rewritten: the epilogues with NCHWc operands (the scalar constant may join)
    for name in ("stem_relu6", "dw_relu6", "res", "scaled", "abs"):
        assert ops[f"{name}.nchwc"] == graph.node_map()[name].op and rewritten.type_of(f"{name}.nchwc").ndim == 5
    # back to NCHW only where an NCHW reader or a graph output needs it, under the old name
    assert {n for n, op in ops.items() if op == "from_nchwc"} == {"res", "abs"}
    assert ops["logged"] == "log" and "to_nchwc" not in ops.values()  # the stem reads NCHW input directly
    stem = rewritten.node_map()["stem.nchwc"]
    assert rewritten.type_of(stem.inputs[0]).ndim == 4 and rewritten.type_of(stem.inputs[1]).shape == (-(-24 // block), 3, 3, 3, block)
    f = feeds(graph)
    for got, want in zip(run_graph(rewritten, f), run_graph(graph, f)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_depthwise_conv_on_an_nchw_input_converts_it_once():
    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, 16, 9, 9), "float32"))
    a = _conv(b, x, 16, 16, 3, "a", groups=16)
    c = _conv(b, x, 16, 16, 5, "c", groups=16, strides=(2, 2), dilations=(2, 2), pads=(4, 4, 4, 4))
    graph = b.finish([a, c])
    rewritten = verify(to_nchwc(graph, block=8))
    assert [n.op for n in rewritten.nodes].count("to_nchwc") == 1
    f = feeds(graph)
    for got, want in zip(run_graph(rewritten, f), run_graph(graph, f)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_graphs_without_convertible_convs_are_unchanged():
    graph = mobile_block_graph()
    assert to_nchwc(graph, block=0) is graph
    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, 8, 6, 6), "float32"))
    grouped = _conv(b, x, 8, 8, 3, "grouped", groups=2)  # two groups of four: not depthwise
    plain = b.finish([b.add("relu", [grouped], "relu")])
    assert to_nchwc(plain, block=8) is plain
    assert "conv2d_nchwc" not in {n.op for f in optimize(graph, weight_block=8).nodes for n in f.attr("body").nodes}


@pytest.mark.parametrize("block", [8, 16])
def test_nchwc_graph_compiles_to_the_same_values(block):
    graph = mobile_block_graph()
    optimized = optimize(graph, weight_block=block, nchwc_block=block)
    anchors = [f.attr("body").name for f in optimized.nodes]
    assert "conv2d_nchwc_add" in anchors and "conv2d_nchwc_clip" in anchors  # epilogues fused on 5-D values
    module = tc.compile(optimized, target="llvm")
    f = feeds(graph)
    got = module.run(f)
    for name, want in zip(graph.outputs, run_graph(graph, f)):
        np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_prepare_takes_the_layout_by_name():
    graph = mobile_block_graph()
    prepared = tc.api.prepare(graph, target="llvm", layout="NCHWc")
    assert any(n.op == "conv2d_nchwc" for f in prepared.graph.nodes for n in f.attr("body").nodes)
    with pytest.raises(ValueError, match="unknown layout 'NHWC'"):
        tc.api.prepare(graph, target="llvm", layout="NHWC")


def test_nchwc_conv_flops_count_the_padded_channels_it_computes():
    from tilecraft.compiler.lower import _flops

    prepared = tc.api.prepare(mobile_block_graph(), target="llvm", layout="NCHWc")  # AVX-512 or AVX2: b = 16 or 8
    body = next(f.attr("body") for f in prepared.graph.nodes if f.name == "expand.nchwc")
    (conv,) = body.nodes
    b = conv.type.shape[-1]
    cin, cout = -(-24 // b) * b, -(-20 // b) * b  # 24 -> 20 channels, 1x1, on the stem's 9x8 map
    assert _flops(body) == 2 * cout * 9 * 8 * cin


def resnet_stem_graph() -> Graph:
    """conv -> relu -> max pool -> conv -> residual add -> relu -> average pool, all NCHWc-able."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, 3, 21, 19), "float32"))
    stem = b.add("relu", [_conv(b, x, 12, 3, 7, "stem", strides=(2, 2), pads=(3, 3, 3, 3))], "stem_relu")
    pool = b.add("pool2d", [stem], "maxpool", kind="max", kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1),
                 dilations=(1, 1))
    body = _conv(b, pool, 12, 12, 3, "body")
    out = b.add("relu", [b.add("add", [body, pool], "res")], "out")
    avg = b.add("pool2d", [out], "avgpool", kind="avg", kernel=(2, 2), strides=(2, 2), pads=(0, 0, 1, 1),
                dilations=(1, 1), count_include_pad=False)
    return b.finish([avg])


def test_pooling_keeps_nchwc_between_convs():
    graph = resnet_stem_graph()
    rewritten = verify(to_nchwc(graph, block=8))
    ops = [n.op for n in rewritten.nodes]
    assert ops.count("from_nchwc") == 1 and rewritten.nodes[-1].op == "from_nchwc"  # only for the output
    assert all(rewritten.type_of(n.name).ndim == 5 for n in rewritten.nodes if n.op == "pool2d")
    f = feeds(graph)
    want = run_graph(graph, f)[0]
    np.testing.assert_allclose(run_graph(rewritten, f)[0], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    module = tc.compile(optimize(graph, weight_block=8, nchwc_block=8), target="llvm")
    np.testing.assert_allclose(module.run(f)["avgpool"], want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_auto_layout_is_nchwc_where_weights_are_packed():
    graph = mobile_block_graph()

    def ops(target: str) -> set[str]:
        return {n.op for f in tc.api.prepare(graph, target=target).graph.nodes for n in f.attr("body").nodes}

    assert "conv2d_nchwc" in ops("llvm")  # x86 (AVX2 / AVX-512)
    assert "conv2d_nchwc" not in ops("arm") and "conv2d_nchwc" not in ops("cuda")
