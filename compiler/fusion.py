"""Fusion: group nodes into kernels.  After `fuse_epilogues` every compute node of the
graph is a `fused` node whose `body` attribute is the group's own small Graph.

Rules, as the math reads:
  anchor(conv, matmul, attention) / reduction (softmax, layer norm, pool, reduce)
      -> elementwise ops of the same shape      : one kernel (epilogue fusion)
  elementwise / injective -> elementwise / injective : one kernel (chains of cheap ops)
A node joins its producer's group only if that producer's value has no other
consumer and is not a graph output, so no value is computed twice.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .ir import Graph, Node
from .ops import ANCHOR, ELEMWISE, INJECTIVE, OPAQUE, REDUCTION, op_kind

SCALAR_LIMIT = 1  # constants of at most this many elements are baked into the kernel


@dataclasses.dataclass
class _Group:
    nodes: list[Node]
    anchor: str  # op of the heaviest node, "" for elementwise / injective-only groups

    @property
    def output(self) -> Node:
        return self.nodes[-1]


def _can_join(group: _Group, node: Node, producer: Node) -> bool:
    kind = op_kind(node.op)
    if kind not in (ELEMWISE, INJECTIVE):
        return False
    if not group.anchor:
        return True
    # after an anchor or a reduction only same-shaped elementwise epilogues join
    return kind == ELEMWISE and node.type.shape == producer.type.shape


def fuse_epilogues(graph: Graph) -> Graph:
    users = graph.consumers()
    outputs = set(graph.outputs)
    group_of: dict[str, _Group] = {}
    groups: list[_Group] = []
    for node in graph.nodes:
        if node.op == "fused":  # already fused (a pass ran twice): keep as is
            group = _Group([node], node.attr("anchor", ""))
            groups.append(group)
            group_of[node.name] = group
            continue
        joined = None
        for i in node.inputs:
            group = group_of.get(i)
            if (
                group is not None
                and group.output.name == i
                and len(users.get(i, [])) == 1
                and i not in outputs
                and _can_join(group, node, group.output)
            ):
                joined = group
                break
        if joined is None:
            kind = op_kind(node.op)
            joined = _Group([], node.op if kind in (ANCHOR, REDUCTION, OPAQUE) else "")
            groups.append(joined)
        joined.nodes.append(node)
        group_of[node.name] = joined
    # a group is emitted where its output node stood: every value it reads is defined before that
    position = {n.name: k for k, n in enumerate(graph.nodes)}
    groups = _merge_elementwise_dags(groups, group_of, users, outputs, position)
    groups.sort(key=lambda g: position[g.output.name])
    return dataclasses.replace(graph, nodes=tuple(_to_fused(g, graph) for g in groups))


def _merge_elementwise_dags(groups, group_of, users, outputs, position) -> list[_Group]:
    """Let an anchor absorb an elementwise DAG (GELU reads x twice: x * 0.5 * (1 + erf(x / sqrt 2))).
    First an anchor-less group whose output only one other anchor-less group reads melts into it;
    then an anchor whose readers all sit in ONE same-shaped elementwise group takes it as epilogue.
    Neither step can create a cycle: the absorbed output has no reader outside the merged group."""
    gone: set[int] = set()

    def frozen(group: _Group) -> bool:  # an already fused node (optimize ran twice) stays as it is
        return any(n.op == "fused" for n in group.nodes)

    def absorb(into: _Group, other: _Group) -> None:
        into.nodes = sorted(into.nodes + other.nodes, key=lambda n: position[n.name])
        for n in other.nodes:
            group_of[n.name] = into
        gone.add(id(other))

    def reader_groups(group: _Group) -> list[_Group]:
        found = {id(group_of[u.name]): group_of[u.name] for u in users.get(group.output.name, [])}
        return list(found.values())

    for group in groups:  # in topological order, so chains melt front to back
        if group.anchor or id(group) in gone or group.output.name in outputs or frozen(group):
            continue
        readers = reader_groups(group)
        if len(readers) == 1 and not readers[0].anchor and readers[0] is not group and not frozen(readers[0]):
            absorb(readers[0], group)
    for group in groups:
        if not group.anchor or id(group) in gone or group.output.name in outputs or frozen(group):
            continue
        readers = reader_groups(group)
        if len(readers) != 1 or readers[0] is group or frozen(readers[0]):
            continue
        epilogue, out = readers[0], group.output
        if epilogue.anchor or any(op_kind(n.op) != ELEMWISE or n.type.shape != out.type.shape for n in epilogue.nodes):
            continue
        absorb(group, epilogue)
    return [g for g in groups if id(g) not in gone]


def _to_fused(group: _Group, graph: Graph) -> Node:
    if len(group.nodes) == 1 and group.nodes[0].op == "fused":
        return group.nodes[0]
    inside = {n.name for n in group.nodes}
    inputs: list[str] = []
    baked: dict[str, np.ndarray] = {}
    for n in group.nodes:
        for i in n.inputs:
            if i in inside or i in inputs or i in baked:
                continue
            c = graph.constants.get(i)
            if c is not None and c.size <= SCALAR_LIMIT:
                baked[i] = c
            else:
                inputs.append(i)
    body = Graph(
        inputs=tuple((i, graph.type_of(i)) for i in inputs),
        nodes=tuple(group.nodes),
        outputs=(group.output.name,),
        constants=baked,
        name="_".join(dict.fromkeys(n.op for n in group.nodes)),
    )
    out = group.output
    return Node.make(out.name, "fused", inputs, out.type, body=body, anchor=group.anchor)


def count_fused(graph: Graph) -> dict[str, int]:
    """How many kernels of each anchor kind the graph has (for the compiler's report)."""
    counts: dict[str, int] = {}
    for n in graph.nodes:
        key = n.attr("anchor") or "elementwise" if n.op == "fused" else n.op
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
