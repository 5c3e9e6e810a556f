"""Pure-IR tests: passes keep the numpy semantics, the verifier catches malformed graphs,
fusion groups what it should.  No TVM build here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tilecraft.compiler.fusion import count_fused, fuse_epilogues
from tilecraft.compiler.interpret import run_graph
from tilecraft.compiler.ir import Graph, Node, TensorType, verify
from tilecraft.compiler.passes import (
    MATMUL_CONV_MAX_CHANNELS,
    MATMUL_CONV_MIN_PIXELS,
    conv1x1_as_matmul,
    eliminate_dead_code,
    fold_batch_norm,
    fold_constants,
    pack_weights,
    simplify,
)
from tilecraft.compiler.ops_conv import unpack_conv_weight
from tilecraft.compiler.pipeline import PIPELINE, optimize
from tilecraft.errors import GraphError, ShapeError
from tilecraft.frontends.builder import GraphBuilder

rng = np.random.default_rng(0)


def conv_bn_relu_graph(residual: bool = True) -> Graph:
    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, 8, 10, 10), "float32"))
    w = b.const(rng.standard_normal((8, 8, 3, 3)).astype("float32"), "w")
    bn = [b.const(v.astype("float32"), n) for v, n in ((1 + 0.1 * rng.standard_normal(8), "g"), (rng.standard_normal(8), "beta"),
                                                        (rng.standard_normal(8), "mean"), (1 + rng.random(8), "var"))]
    c = b.add("conv2d", [x, w], "conv", strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1)
    y = b.add("batch_norm", [c, *bn], "bn", epsilon=1e-5)
    if residual:
        y = b.add("add", [y, x], "res")
    y = b.add("relu", [y], "relu")
    dead = b.add("exp", [x], "dead")
    del dead
    return b.finish([y])


def feeds(graph):
    return {n: rng.standard_normal(t.shape).astype(t.dtype) for n, t in graph.inputs}


def test_batch_norm_folds_into_conv_and_keeps_values():
    g = conv_bn_relu_graph()
    folded = verify(fold_batch_norm(g))
    assert "batch_norm" not in folded.op_counts()
    conv = next(n for n in folded.nodes if n.op == "conv2d")
    assert len(conv.inputs) == 3  # gained a bias
    f = feeds(g)
    np.testing.assert_allclose(run_graph(folded, f)[0], run_graph(g, f)[0], rtol=1e-4, atol=1e-4)


def test_standalone_batch_norm_becomes_mul_add():
    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, 4, 3, 3), "float32"))
    params = [b.const(v.astype("float32")) for v in (rng.random(4) + 0.5, rng.random(4), rng.random(4), rng.random(4) + 0.5)]
    g = b.finish([b.add("batch_norm", [x, *params], "bn", epsilon=1e-3)])
    out = verify(fold_batch_norm(g))
    assert out.op_counts() == {"add": 1, "mul": 1}
    f = feeds(g)
    np.testing.assert_allclose(run_graph(out, f)[0], run_graph(g, f)[0], rtol=1e-5, atol=1e-5)


def test_dead_code_is_removed():
    g = conv_bn_relu_graph()
    assert "exp" in g.op_counts()
    assert "exp" not in eliminate_dead_code(g).op_counts()


def test_constant_folding_folds_only_constant_subgraphs():
    g0 = conv_bn_relu_graph()
    k = Node.make("k", "mul", ["w", "w"], g0.type_of("w"))
    node_using_k = Node.make("conv2", "conv2d", ["relu", "k"], g0.type_of("relu"), strides=(1, 1), pads=(1, 1, 1, 1),
                             dilations=(1, 1), groups=1)
    g = dataclasses.replace(g0, nodes=g0.nodes + (k, node_using_k), outputs=("conv2",))
    folded = verify(fold_constants(g))
    assert "k" in folded.constants and "conv2" in folded.node_map()
    np.testing.assert_allclose(folded.constants["k"], g.constants["w"] ** 2)


def test_simplify_drops_noop_reshape_and_cast():
    b = GraphBuilder()
    x = b.add_input("x", TensorType((2, 3), "float32"))
    r = b.add("reshape", [x], "r", shape=(2, 3))
    c = b.add("cast", [r], "c", to="float32")
    r2 = b.add("reshape", [c], "r2", shape=(3, 2))
    r3 = b.add("reshape", [r2], "r3", shape=(6,))
    g = b.finish([b.add("relu", [r3], "out")])
    s = eliminate_dead_code(simplify(g))
    assert s.op_counts() == {"relu": 1, "reshape": 1}
    f = feeds(g)
    np.testing.assert_array_equal(run_graph(s, f)[0], run_graph(g, f)[0])


def test_verifier_catches_malformed_graphs():
    g = conv_bn_relu_graph()
    bad_input = dataclasses.replace(g, nodes=(Node.make("y", "relu", ["nowhere"], TensorType((1,), "float32")),), outputs=("y",))
    with pytest.raises(GraphError, match="undefined"):
        verify(bad_input)
    relu = next(n for n in g.nodes if n.op == "relu")
    wrong_type = dataclasses.replace(g, nodes=tuple(dataclasses.replace(n, type=TensorType((2, 2), "float32")) if n is relu else n for n in g.nodes))
    with pytest.raises(GraphError, match="shape inference"):
        verify(wrong_type)
    with pytest.raises(GraphError, match="output"):
        verify(dataclasses.replace(g, outputs=("missing",)))
    with pytest.raises(ShapeError):
        GraphBuilder().add_input  # noqa: B018
        b = GraphBuilder()
        a = b.add_input("a", TensorType((2, 3), "float32"))
        c = b.add_input("c", TensorType((4, 3), "float32"))
        b.add("add", [a, c])
    b = GraphBuilder()
    x = b.add_input("x", TensorType((2, 3), "float32"))
    with pytest.raises(GraphError, match="clip takes one input"):  # bounds as inputs would be ignored
        b.add("clip", [x, b.const(np.float32(0)), b.const(np.float32(6))])


def test_fusion_groups_conv_with_its_epilogue():
    original = conv_bn_relu_graph()
    g = optimize(original, verify_each=True)
    assert [n.op for n in g.nodes] == ["fused"]
    body = g.nodes[0].attr("body")
    assert [n.op for n in body.nodes] == ["conv2d", "add", "relu"]
    assert count_fused(g) == {"conv2d": 1}
    f = feeds(g)
    np.testing.assert_allclose(run_graph(g, f)[0], run_graph(original, f)[0], rtol=1e-4, atol=1e-4)


def test_fusion_takes_an_elementwise_dag_like_gelu():
    b = GraphBuilder()
    x = b.add_input("x", TensorType((4, 16), "float32"))
    w = b.const(rng.standard_normal((16, 16)).astype("float32"))
    m = b.add("matmul", [x, w], "mm")
    half = b.add("mul", [m, b.const(np.float32(0.5))], "half")
    erf = b.add("erf", [b.add("div", [m, b.const(np.float32(1.4142135))], "scaled")], "erf")
    out = b.add("mul", [half, b.add("add", [erf, b.const(np.float32(1.0))], "one_plus")], "gelu")
    g = b.finish([out])
    fused = fuse_epilogues(g)
    assert len(fused.nodes) == 1 and fused.nodes[0].attr("anchor") == "matmul"
    assert len(fused.nodes[0].attr("body").constants) == 3  # scalars baked into the kernel
    f = feeds(g)
    np.testing.assert_allclose(run_graph(fused, f)[0], run_graph(g, f)[0], rtol=1e-6)


def test_values_used_twice_are_not_recomputed():
    b = GraphBuilder()
    x = b.add_input("x", TensorType((4, 16), "float32"))
    w = b.const(rng.standard_normal((16, 16)).astype("float32"))
    m = b.add("matmul", [x, w], "mm")
    r = b.add("relu", [m], "r")
    s = b.add("matmul", [r, w], "mm2")
    g = b.finish([r, s])  # r is an output AND feeds mm2
    fused = fuse_epilogues(g)
    names = [n.name for n in fused.nodes]
    assert "r" in names and "mm2" in names
    verify(fused)


def conv_zoo() -> Graph:
    """Convs that pack (strided, dilated, padded, biased, shared weight) and two that must not."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, 8, 13, 11), "float32"))
    w = b.const(rng.standard_normal((16, 8, 3, 3)).astype("float32"), "w")
    bias = b.const(rng.standard_normal(16).astype("float32"), "bias")
    a = b.add("conv2d", [x, w, bias], "strided", strides=(2, 1), pads=(1, 0, 2, 1), dilations=(1, 2), groups=1)
    c = b.add("conv2d", [x, w], "same_weight", strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1)
    odd = b.add("conv2d", [c, b.const(rng.standard_normal((12, 16, 1, 1)).astype("float32"), "w12")], "odd",
                strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1)
    dw = b.add("conv2d", [c, b.const(rng.standard_normal((16, 1, 3, 3)).astype("float32"), "wdw")], "depthwise",
               strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=16)
    return b.finish([a, odd, dw])


def test_conv_weights_pack_by_the_block_and_keep_values():
    g = conv_zoo()
    packed = pack_weights(g, block=8)
    verify(packed)
    layouts = {n.name: n.attr("weight_layout") for n in packed.nodes}
    assert layouts == {"strided": "OIHW8o", "same_weight": "OIHW8o", "odd": None, "depthwise": None}
    weights = {n.inputs[1] for n in packed.nodes if n.attr("weight_layout")}
    assert len(weights) == 1 and packed.constants[weights.pop()].shape == (2, 8, 3, 3, 8)  # packed once, shared
    assert "w" not in packed.constants  # the OIHW copy is gone
    f = feeds(g)
    for got, want in zip(run_graph(packed, f), run_graph(g, f)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert pack_weights(g, block=0) is g
    assert pack_weights(packed, block=8).constants.keys() == packed.constants.keys()  # idempotent


def test_packed_weight_unpacks_exactly():
    w = rng.standard_normal((32, 3, 5, 7)).astype("float32")
    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, 3, 9, 9), "float32"))
    g = b.finish([b.add("conv2d", [x, b.const(w, "w")], "c", strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1)])
    packed = pack_weights(g, block=16)
    node = packed.nodes[0]
    np.testing.assert_array_equal(unpack_conv_weight(packed.constants[node.inputs[1]], node.attr("weight_layout")), w)


def test_pipeline_packs_conv_weights_only_when_asked():
    g = conv_zoo()
    plain, packed = optimize(g), optimize(g, weight_block=8)

    def layouts(graph):
        return sorted(str(n.attr("weight_layout")) for fused in graph.nodes for n in fused.attr("body").nodes if n.op == "conv2d")

    assert layouts(plain) == ["None"] * 4
    assert layouts(packed) == ["None", "None", "OIHW8o", "OIHW8o"]


def conv1x1_graph(*, cin: int = 16, size: int = 28, strides=(1, 1), kernel: int = 1, output_conv: bool = False) -> Graph:
    """1x1 conv (+bias) -> clip -> per-channel scale -> + another tensor -> relu."""
    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, cin, size, size), "float32"))
    w = b.const(rng.standard_normal((24, cin, kernel, kernel)).astype("float32"), "w")
    bias = b.const(rng.standard_normal(24).astype("float32"), "bias")
    c = b.add("conv2d", [x, w, bias], "conv", strides=strides, pads=(0, 0, 0, 0), dilations=(1, 1), groups=1)
    y = b.add("clip", [c], "clip", min=0.0, max=6.0)
    y = b.add("mul", [b.const(rng.standard_normal((1, 24, 1, 1)).astype("float32"), "scale"), y], "scale_mul")
    out = c if output_conv else y
    osize = (size - 1) // strides[0] + 1 - (kernel - 1)
    other = b.add("relu", [b.add_input("z", TensorType((1, 24, osize, osize), "float32"))], "other")
    y = b.add("relu", [b.add("add", [out, other], "res")], "relu")
    return b.finish([y, c] if output_conv else [y])


def test_few_channel_1x1_convs_become_matmuls_with_their_epilogue():
    g = conv1x1_graph()
    assert MATMUL_CONV_MAX_CHANNELS >= 16 and 28 * 28 >= MATMUL_CONV_MIN_PIXELS
    rewritten = conv1x1_as_matmul(g, block=16)
    verify(rewritten)
    ops = [n.op for n in rewritten.nodes]
    assert "conv2d" not in ops and ops.count("matmul") == 1
    by_name = rewritten.node_map()
    assert by_name["scale_mul"].op == "reshape" and by_name["scale_mul"].type.shape == (1, 24, 28, 28)  # the chain's name, NCHW
    chain = [n for n in rewritten.nodes if n.type.shape == (24, 28 * 28)]
    assert [n.op for n in chain] == ["matmul", "add", "clip", "mul"]  # bias, clip and the per-channel scale ride along
    assert by_name["res"].op == "add" and by_name["res"].inputs[0] == "scale_mul"  # a run-time operand ends the chain
    f = feeds(g)
    for got, want in zip(run_graph(rewritten, f), run_graph(g, f)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert conv1x1_as_matmul(g, block=0) is g  # GPU / ARM: unchanged


def test_conv_whose_value_is_an_output_keeps_it():
    g = conv1x1_graph(output_conv=True)
    rewritten = conv1x1_as_matmul(g, block=16)
    assert rewritten.outputs == g.outputs and rewritten.node_map()["conv"].op == "reshape"
    assert rewritten.node_map()["clip"].op == "clip"  # nothing absorbed past a graph output
    f = feeds(g)
    for got, want in zip(run_graph(rewritten, f), run_graph(g, f)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [dict(cin=96), dict(size=14), dict(strides=(2, 2)), dict(kernel=3)])
def test_other_convs_stay_convs(case):
    g = conv1x1_graph(**case)
    assert conv1x1_as_matmul(g, block=16).nodes == g.nodes


def test_pipeline_rewrites_1x1_convs_only_on_vector_cpus():
    g = conv1x1_graph()

    def ops(graph):
        return sorted({n.op for fused in graph.nodes for n in fused.attr("body").nodes})

    assert "conv2d" in ops(optimize(g)) and "matmul" not in ops(optimize(g))
    assert "matmul" in ops(optimize(g, weight_block=16)) and "conv2d" not in ops(optimize(g, weight_block=16))


def test_pipeline_is_one_named_list():
    names = [n for n, _ in PIPELINE]
    assert names[-1] == "fuse_epilogues" and "fold_batch_norm" in names and len(set(names)) == len(names)


def test_graph_is_a_printable_value():
    g1, g2 = conv_bn_relu_graph(False), conv_bn_relu_graph(False)
    assert str(g1).startswith("graph main(") and "conv2d" in str(g1)
    assert g1 == g1 and hash(g1) == hash(g1)
    assert g1 != g2  # different random weights
