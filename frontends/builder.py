"""GraphBuilder: what every frontend uses to emit tilecraft IR.

It infers each node's type as the node is added, and folds a node whose inputs
are all constants straight into a constant, so that shape-computing subgraphs
(Shape -> Gather -> Concat -> Reshape, as transformer exports write them)
resolve to the concrete attributes our static-shaped ops need.
"""

from __future__ import annotations

import re

import numpy as np

from ..compiler.ir import Graph, Node, TensorType, freeze
from ..compiler.ops import evaluate, infer_type
from ..errors import GraphError

# Keep folded constants below this many elements; bigger results stay as nodes.
FOLD_LIMIT = 1 << 26


def _contiguous(array) -> np.ndarray:
    # np.ascontiguousarray would turn a 0-d array into shape (1,)
    array = np.asarray(array)
    return array if array.flags.c_contiguous else array.copy()


class GraphBuilder:
    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[tuple[str, TensorType]] = []
        self.nodes: list[Node] = []
        self.constants: dict[str, np.ndarray] = {}
        self.types: dict[str, TensorType] = {}
        self._taken: set[str] = set()

    # -- naming ---------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.:/-]", "_", hint) or "v"
        name, k = base, 0
        while name in self._taken:
            k += 1
            name = f"{base}_{k}"
        self._taken.add(name)
        return name

    # -- values ---------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> str:
        self._taken.add(name)
        self.inputs.append((name, type))
        self.types[name] = type
        return name

    def const(self, value, name: str = "const", dtype: str | None = None) -> str:
        array = np.asarray(value, dtype=dtype) if dtype else np.asarray(value)
        if array.dtype == np.float64 and dtype is None:
            array = array.astype(np.float32)
        name = self.fresh(name)
        self.constants[name] = _contiguous(array)
        self.types[name] = TensorType(tuple(int(d) for d in array.shape), str(array.dtype))
        return name

    def alias_const(self, name: str, array: np.ndarray) -> str:
        """Register a constant under an exact name (ONNX initializers)."""
        self._taken.add(name)
        self.constants[name] = _contiguous(array)
        self.types[name] = TensorType(tuple(int(d) for d in array.shape), str(array.dtype))
        return name

    def type(self, name: str) -> TensorType:
        if name not in self.types:
            raise GraphError(f"value {name!r} is used before it is defined")
        return self.types[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.type(name).shape

    def value(self, name: str) -> np.ndarray | None:
        """The constant value of `name`, or None when it is computed at run time."""
        return self.constants.get(name)

    def add(self, op: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        in_types = [self.type(i) for i in inputs]
        attrs = {k: freeze(v) for k, v in attrs.items()}
        out_type = infer_type(op, in_types, attrs)
        out = self.fresh(name or op)
        if all(i in self.constants for i in inputs) and out_type.size <= FOLD_LIMIT and op != "fused":
            self.constants[out] = _contiguous(evaluate(op, [self.constants[i] for i in inputs], attrs))
            self.types[out] = out_type
            return out
        self.nodes.append(Node.make(out, op, inputs, out_type, **attrs))
        self.types[out] = out_type
        return out

    def rename(self, value: str, name: str) -> str:
        """Make `value` available under `name` (an identity, recorded as a cheap reshape)."""
        if value == name:
            return value
        if value in self.constants:
            return self.alias_const(name, self.constants[value])
        self._taken.add(name)
        t = self.type(value)
        self.nodes.append(Node.make(name, "reshape", [value], t, shape=t.shape))
        self.types[name] = t
        return name

    def finish(self, outputs: list[str]) -> Graph:
        used = {i for n in self.nodes for i in n.inputs} | set(outputs)
        constants = {k: v for k, v in self.constants.items() if k in used}
        return Graph(tuple(self.inputs), tuple(self.nodes), tuple(outputs), constants, self.name)
