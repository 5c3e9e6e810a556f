"""Attention fusion: the exported form of scaled-dot-product attention becomes one node.

    s = matmul(q, kᵀ)            kᵀ: a transpose of k, or transpose_b=True
    s = s * c  |  s / c          scalar constant: scale (absent: 1)
    s = s + mask                 optional additive mask, broadcastable, float
    s = where(keep, s, -big)     optional; constant lower-triangular `keep` -> causal=True,
                                 any other `keep` -> the additive mask where(keep, 0, -big)
    p = softmax(s, axis=-1)
    o = matmul(p, v)         ==>  o = attention(q, k, v[, mask]; scale, causal)

Every intermediate (scores, scaled, masked, softmax) must have no other reader and not be
a graph output, so nothing is computed twice.  `match_attention` returns a Match or None
(a failed match is a value, not an exception); `fuse_attention` applies every match and
`count_attention` reports how many attention nodes a graph has.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..errors import GraphError, ShapeError
from .ir import Graph, Node, TensorType, values_read
from .ops import broadcast_shapes, infer_type

FLOATS = ("float16", "float32", "float64")
BIG_NEGATIVE = -1e4  # a where's fill value at or below this acts as "masked out"


@dataclass(frozen=True)
class Match:
    """One attention pattern: the new node, the helper nodes/constants it needs, what it replaces."""

    node: Node  # the attention node; it takes the output matmul's name
    helpers: tuple[Node, ...]  # k / v transposes, mask computations (placed just before `node`)
    constants: tuple[tuple[str, np.ndarray], ...]
    removed: frozenset[str]  # matched nodes (scores ... output matmul), plus a now-dead k transpose


@dataclass(frozen=True)
class _Env:
    """The graph with its producer / reader maps, built once per pass."""

    graph: Graph
    producers: dict[str, Node]
    users: dict[str, list[Node]]
    outputs: frozenset[str]

    @staticmethod
    def of(graph: Graph) -> "_Env":
        return _Env(graph, graph.node_map(), graph.consumers(), frozenset(graph.outputs))

    def private(self, value: str) -> Node | None:
        """The producer of an intermediate that only one node reads and that is not an output."""
        node = self.producers.get(value)
        if node is None or value in self.outputs or len(self.users.get(value, [])) != 1:
            return None
        return node

    def scalar(self, value: str) -> float | None:
        c = self.graph.constants.get(value)
        return float(c.reshape(-1)[0]) if c is not None and c.size == 1 else None


def count_attention(graph: Graph) -> int:
    """Attention nodes in the graph, also those inside fused groups (for the compiler's report)."""
    total = 0
    for n in graph.nodes:
        if n.op == "attention":
            total += 1
        elif n.op == "fused":
            total += count_attention(n.attr("body"))
    return total


def fuse_attention(graph: Graph) -> Graph:
    """Replace every matched attention subgraph by one `attention` node."""
    env = _Env.of(graph)
    matches: dict[str, Match] = {}
    claimed: set[str] = set()
    for node in graph.nodes:
        m = _match(env, node)
        if m is not None and not (m.removed & claimed):
            matches[node.name] = m
            claimed |= m.removed
    if not matches:
        return graph
    nodes: list[Node] = []
    constants = dict(graph.constants)
    for node in graph.nodes:
        m = matches.get(node.name)
        if m is not None:
            nodes.extend(m.helpers)
            nodes.append(m.node)
            constants.update(m.constants)
        elif node.name not in claimed:
            nodes.append(node)
    used = values_read(nodes) | set(graph.outputs)
    return dataclasses.replace(graph, nodes=tuple(nodes), constants={k: v for k, v in constants.items() if k in used})


# --------------------------------------------------------------------------- matching
def match_attention(graph: Graph, out: Node) -> Match | None:
    """The attention pattern ending at `out` (the P·V matmul), or None."""
    return _match(_Env.of(graph), out)


def _match(env: _Env, out: Node) -> Match | None:
    if out.op != "matmul" or out.type.dtype not in FLOATS:
        return None
    soft = env.private(out.inputs[0])
    if soft is None or soft.op != "softmax" or soft.attr("log") or soft.attr("axis") != soft.type.ndim - 1:
        return None
    chain = _logits(env, soft.inputs[0], masks_allowed=True)
    if chain is None:
        return None
    scores, scale, masks, between = chain
    names = _Names(env.graph, out.name)
    helpers: list[Node] = []
    constants: dict[str, np.ndarray] = {}
    removed = {out.name, soft.name, scores.name} | {n.name for n in between}
    k, dead_transpose = _k_operand(env, scores, names, helpers)
    if dead_transpose is not None:
        removed.add(dead_transpose)
    v = out.inputs[1]
    if out.attr("transpose_b"):
        v = _swap_last(env.graph.type_of(v), v, names.fresh("v"), helpers)
    mask = _mask_operand(env, masks, scores.type, names, helpers, constants)
    if mask is None:
        return None
    mask_value, causal = mask
    inputs = [scores.inputs[0], k, v] + ([mask_value] if mask_value is not None else [])
    known = {n.name: n.type for n in helpers}
    try:
        out_type = infer_type("attention", [known.get(i) or env.graph.type_of(i) for i in inputs], {})
    except (ShapeError, GraphError):
        return None
    if out_type != out.type:
        return None
    node = Node.make(out.name, "attention", inputs, out.type, scale=float(scale), causal=bool(causal))
    return Match(node, tuple(helpers), tuple(constants.items()), frozenset(removed))


_Chain = tuple[Node, float, list[tuple[Node, int]], list[Node]]


def _logits(env: _Env, value: str, *, masks_allowed: bool, depth: int = 0) -> _Chain | None:
    """Walk back from softmax's input through mask ops (add / where), then scale ops (mul / div
    by a scalar constant), to the scores matmul.  Returns (scores, scale, [(mask op, index of
    its mask input)], the nodes in between), or None.  Both sides of an add are tried."""
    node = env.private(value)
    if node is None or depth > 4:
        return None
    if node.op == "matmul":
        return (node, 1.0, [], []) if node.type.dtype in FLOATS else None
    if node.op in ("mul", "div"):
        for c_index in ((1, 0) if node.op == "mul" else (1,)):
            c = env.scalar(node.inputs[c_index])
            if c is None or c == 0:
                continue
            rest = _logits(env, node.inputs[1 - c_index], masks_allowed=False, depth=depth + 1)
            if rest is not None:
                scores, scale, masks, between = rest
                return scores, scale * c if node.op == "mul" else scale / c, masks, between + [node]
        return None
    if node.op not in ("add", "where") or not masks_allowed:
        return None
    for mask_index, chain_index in _mask_sides(env, node):
        rest = _logits(env, node.inputs[chain_index], masks_allowed=True, depth=depth + 1)
        if rest is not None:
            scores, scale, masks, between = rest
            return scores, scale, masks + [(node, mask_index)], between + [node]
    return None


def _mask_sides(env: _Env, node: Node) -> list[tuple[int, int]]:
    """(mask input, chain input) candidates: for a where, the fill value's position."""
    if node.op == "add":
        return [(m, 1 - m) for m in (1, 0) if env.graph.type_of(node.inputs[m]).dtype == node.type.dtype]
    if env.graph.type_of(node.inputs[0]).dtype != "bool":
        return []
    sides = []
    for fill, chain in ((2, 1), (1, 2)):
        c = env.scalar(node.inputs[fill])
        if c is not None and c <= BIG_NEGATIVE:
            sides.append((fill, chain))
    return sides


class _Names:
    """Fresh names for helper values, derived from the attention output's name."""

    def __init__(self, graph: Graph, base: str):
        self.taken = {n for n, _ in graph.inputs} | set(graph.constants) | {n.name for n in graph.nodes}
        self.base = base

    def fresh(self, hint: str) -> str:
        name, k = f"{self.base}.{hint}", 0
        while name in self.taken:
            k += 1
            name = f"{self.base}.{hint}{k}"
        self.taken.add(name)
        return name


def _swap_last(t: TensorType, value: str, name: str, helpers: list[Node]) -> str:
    perm = tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2)
    shape = tuple(t.shape[p] for p in perm)
    helpers.append(Node.make(name, "transpose", [value], TensorType(shape, t.dtype), perm=perm))
    return name


def _k_operand(env: _Env, scores: Node, names: _Names, helpers: list[Node]) -> tuple[str, str | None]:
    """k as [.., Sk, D]: the matmul's b if transpose_b, else undo the transpose that made kᵀ
    (composing permutations, so no new copy when kᵀ = transpose(k, swap))."""
    b = scores.inputs[1]
    if scores.attr("transpose_b"):
        return b, None
    producer = env.private(b)
    if producer is None or producer.op != "transpose":
        return _swap_last(env.graph.type_of(b), b, names.fresh("k"), helpers), None
    perm = list(producer.attr("perm"))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    src = producer.inputs[0]
    if perm == list(range(len(perm))):
        return src, producer.name
    t = env.graph.type_of(src)
    name = names.fresh("k")
    helpers.append(Node.make(name, "transpose", [src], TensorType(tuple(t.shape[p] for p in perm), t.dtype), perm=tuple(perm)))
    return name, producer.name


def _mask_operand(env: _Env, masks, scores_t: TensorType, names: _Names, helpers: list[Node], constants: dict):
    """(additive mask value or None, causal flag); None if the masks cannot be expressed."""
    parts: list[str] = []
    causal = False
    dtype = scores_t.dtype
    for node, index in masks:
        if node.type.shape != scores_t.shape:  # the mask would broadcast the scores up: not attention
            return None
        if node.op == "add":
            m = node.inputs[index]
            if env.graph.type_of(m).dtype != dtype:
                return None
            parts.append(m)
            continue
        fill = env.scalar(node.inputs[index])
        keep = node.inputs[0]
        keep_const = env.graph.constants.get(keep)
        if index == 1:  # where(cond, -big, s): the kept entries are where cond is False
            keep_const = None if keep_const is None else ~keep_const
        if keep_const is not None:
            if not causal and _is_causal(keep_const, scores_t.shape):
                causal = True
                continue
            name = names.fresh("mask")
            constants[name] = np.where(keep_const, 0.0, fill).astype(dtype)
            parts.append(name)
            continue
        zero, big = names.fresh("mask_zero"), names.fresh("mask_fill")
        constants[zero], constants[big] = np.zeros((), dtype), np.asarray(fill, dtype)
        name = names.fresh("mask")
        t = TensorType(env.graph.type_of(keep).shape, dtype)
        branches = [zero, big] if index == 2 else [big, zero]
        helpers.append(Node.make(name, "where", [keep, *branches], t))
        parts.append(name)
    if not parts:
        return None, causal
    known = {h.name: h.type for h in helpers}
    known.update({k: TensorType(tuple(int(d) for d in c.shape), str(c.dtype)) for k, c in constants.items()})
    mask = parts[0]
    for other in parts[1:]:  # two masks (e.g. a where and a padding add): one additive mask
        a, b = (known.get(x) or env.graph.type_of(x) for x in (mask, other))
        name = names.fresh("mask")
        known[name] = TensorType(broadcast_shapes(a.shape, b.shape), dtype)
        helpers.append(Node.make(name, "add", [mask, other], known[name]))
        mask = name
    return mask, causal


def _is_causal(keep: np.ndarray, scores_shape: tuple[int, ...]) -> bool:
    """keep == tril (bottom-right aligned, as `attention`'s causal flag) in every batch slice."""
    sq, sk = scores_shape[-2:]
    if keep.ndim < 2 or keep.shape[-2:] != (sq, sk):
        return False
    tril = np.tril(np.ones((sq, sk), dtype=bool), k=sk - sq)
    return bool(np.all(keep.reshape(-1, sq, sk) == tril))
