"""Writes examples/tiny_cnn.onnx: a small ResNet-style CNN (conv-BN-relu, a residual block,
max pool, global average pool, Gemm) with deterministic random weights.  No downloads."""

from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = []

    def weight(name, *shape, scale=None):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        w = (rng.standard_normal(shape) * (scale or np.sqrt(2.0 / fan_in))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, name))
        return name

    def bn(name, c):
        for suffix, value in (("scale", 1 + 0.1 * rng.standard_normal(c)), ("bias", 0.1 * rng.standard_normal(c)),
                              ("mean", 0.1 * rng.standard_normal(c)), ("var", 1 + 0.1 * rng.random(c))):
            inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}.{suffix}"))
        return [f"{name}.{s}" for s in ("scale", "bias", "mean", "var")]

    nodes = [
        helper.make_node("Conv", ["input", weight("stem.w", 16, 3, 3, 3)], ["c0"], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("BatchNormalization", ["c0", *bn("stem.bn", 16)], ["b0"], name="stem_bn"),
        helper.make_node("Relu", ["b0"], ["r0"], name="stem_relu"),
        helper.make_node("MaxPool", ["r0"], ["p0"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
        helper.make_node("Conv", ["p0", weight("blk.w1", 16, 16, 3, 3)], ["c1"], pads=[1, 1, 1, 1], name="blk_conv1"),
        helper.make_node("BatchNormalization", ["c1", *bn("blk.bn1", 16)], ["b1"], name="blk_bn1"),
        helper.make_node("Relu", ["b1"], ["r1"], name="blk_relu1"),
        helper.make_node("Conv", ["r1", weight("blk.w2", 16, 16, 3, 3)], ["c2"], pads=[1, 1, 1, 1], name="blk_conv2"),
        helper.make_node("BatchNormalization", ["c2", *bn("blk.bn2", 16)], ["b2"], name="blk_bn2"),
        helper.make_node("Add", ["b2", "p0"], ["s2"], name="blk_residual"),
        helper.make_node("Relu", ["s2"], ["r2"], name="blk_relu2"),
        helper.make_node("Conv", ["r2", weight("down.w", 32, 16, 1, 1)], ["c3"], strides=[2, 2], name="down"),
        helper.make_node("Relu", ["c3"], ["r3"], name="down_relu"),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["f", weight("fc.w", 10, 32), weight("fc.b", 10, scale=0.1)], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tilecraft-example")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_cnn.onnx")
    onnx.save(build(), out)
    print(f"wrote {out}")
