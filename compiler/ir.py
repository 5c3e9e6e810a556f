"""The graph IR: small immutable nodes, static shapes, numpy constants.

A Graph is a value: passes take one and return a new one (`dataclasses.replace`).
Every node has exactly one output, named after the node; a value is either a
graph input, a constant or a node.  Nodes are stored in topological order.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import GraphError

DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool")


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise GraphError(f"unsupported dtype {self.dtype!r}")
        if any((not isinstance(d, int)) or d < 0 for d in self.shape):
            raise GraphError(f"shape {self.shape} is not static")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"


def freeze(value: Any) -> Any:
    """Attribute values must be hashable: lists become tuples, dicts sorted tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, np.ndarray):
        return tuple(freeze(v) for v in value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    return value


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    type: TensorType
    attrs: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def make(name: str, op: str, inputs: Iterable[str], type: TensorType, **attrs) -> "Node":
        return Node(name, op, tuple(inputs), type, tuple(sorted((k, freeze(v)) for k, v in attrs.items())))

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    @property
    def attr_dict(self) -> dict[str, Any]:
        return dict(self.attrs)

    def with_attrs(self, **changes) -> "Node":
        merged = dict(self.attrs)
        merged.update({k: freeze(v) for k, v in changes.items()})
        return dataclasses.replace(self, attrs=tuple(sorted(merged.items())))

    def __str__(self) -> str:
        attrs = ", ".join(f"{k}={_short(v)}" for k, v in self.attrs)
        return f"%{self.name}: {self.type} = {self.op}({', '.join('%' + i for i in self.inputs)}){' {' + attrs + '}' if attrs else ''}"


def _short(value: Any) -> str:
    if isinstance(value, Graph):
        return f"<graph {len(value.nodes)} nodes>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, eq=False)
class Graph:
    """A dataflow graph.  `constants` hold numpy arrays; treat them as read-only."""

    inputs: tuple[tuple[str, TensorType], ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    constants: Mapping[str, np.ndarray] = field(default_factory=dict)
    name: str = "main"

    # -- lookups -------------------------------------------------------------
    @property
    def input_types(self) -> dict[str, TensorType]:
        return dict(self.inputs)

    def type_of(self, value: str) -> TensorType:
        for n, t in self.inputs:
            if n == value:
                return t
        if value in self.constants:
            c = self.constants[value]
            return TensorType(tuple(int(d) for d in c.shape), str(c.dtype))
        node = self.node_map().get(value)
        if node is None:
            raise GraphError(f"value %{value} is not defined in graph {self.name}")
        return node.type

    def node_map(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                users.setdefault(i, []).append(n)
        return users

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return dict(sorted(counts.items()))

    # -- value semantics -----------------------------------------------------
    def fingerprint(self) -> str:
        h = hashlib.sha256(str(self).encode())
        for k in sorted(self.constants):
            h.update(k.encode())
            h.update(np.ascontiguousarray(self.constants[k]).tobytes())
        return h.hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Graph) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __str__(self) -> str:
        lines = [f"graph {self.name}(" + ", ".join(f"%{n}: {t}" for n, t in self.inputs) + ") {"]
        for k in sorted(self.constants):
            c = self.constants[k]
            lines.append(f"  const %{k}: {c.dtype}[{','.join(map(str, c.shape))}]")
        lines += [f"  {n}" for n in self.nodes]
        lines.append("  return " + ", ".join("%" + o for o in self.outputs))
        lines.append("}")
        return "\n".join(lines)


def values_read(nodes: Iterable[Node]) -> set[str]:
    """Names the nodes read, counting the unfused alternative (`parts`) of a bottleneck node: its
    packed weights live only there, and a pass that drops unread constants must keep them."""
    read: set[str] = set()
    for n in nodes:
        read.update(n.inputs)
        for part in n.attr("parts") or ():
            read.update(part.inputs)
    return read


def verify(graph: Graph) -> Graph:
    """Check names are unique, every input is defined before use, outputs exist and
    each node's type matches what shape inference gives.  Returns the graph."""
    from .ops import infer_type  # late import: ops depends on ir

    defined: dict[str, TensorType] = dict(graph.inputs)
    for k, c in graph.constants.items():
        if k in defined:
            raise GraphError(f"constant %{k} shadows a graph input")
        defined[k] = TensorType(tuple(int(d) for d in c.shape), str(c.dtype))
    for node in graph.nodes:
        if node.name in defined:
            raise GraphError(f"node %{node.name} redefines a value")
        missing = [i for i in node.inputs if i not in defined]
        if missing:
            raise GraphError(f"node %{node.name} ({node.op}) uses undefined value(s) {missing}")
        expected = infer_type(node.op, [defined[i] for i in node.inputs], node.attr_dict)
        if expected != node.type:
            raise GraphError(f"node %{node.name} ({node.op}) has type {node.type}, shape inference says {expected}")
        defined[node.name] = node.type
    for o in graph.outputs:
        if o not in defined:
            raise GraphError(f"graph output %{o} is not defined")
    return graph
