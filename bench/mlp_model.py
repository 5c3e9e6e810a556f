"""A two-layer MLP as ONNX (128x768 -> 3072, bias, relu -> 768, bias): BERT/GPT-2's feed-forward
block with packed-weight matmuls and their epilogues, small enough to tune in two minutes.

    python bench/mlp_model.py bench/work/mlp.onnx
    tune bench/work/mlp.onnx --target llvm --trials 256 --seed 0 --db bench/work/mlp.db -o bench/work/mlp.so
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def mlp(*, tokens: int = 128, width: int = 768, hidden: int = 3072) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((width, hidden)).astype("float32") * 0.03, "w1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype("float32"), "b1"),
        numpy_helper.from_array(rng.standard_normal((hidden, width)).astype("float32") * 0.02, "w2"),
        numpy_helper.from_array(rng.standard_normal(width).astype("float32"), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Relu", ["hb"], ["a"], name="relu"),
        helper.make_node("MatMul", ["a", "w2"], ["o"], name="fc2"),
        helper.make_node("Add", ["o", "b2"], ["y"], name="bias2"),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [tokens, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [tokens, width])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    onnx.save(mlp(), sys.argv[1])
