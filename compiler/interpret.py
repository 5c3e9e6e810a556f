"""A numpy interpreter for the graph IR: the reference that passes are checked against."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .ir import Graph
from .ops import evaluate


def run_graph(graph: Graph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    values: dict[str, np.ndarray] = dict(graph.constants)
    for name, t in graph.inputs:
        if name not in feeds:
            raise InputError(f"missing input {name!r}")
        values[name] = np.asarray(feeds[name]).astype(t.dtype).reshape(t.shape)
    for node in graph.nodes:
        values[node.name] = evaluate(node.op, [values[i] for i in node.inputs], node.attr_dict)
    return [values[o] for o in graph.outputs]
