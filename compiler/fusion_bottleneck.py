"""Conv-bottleneck fusion: chains of convolutions with a 1x1 conv in them become one kernel.

    pw  = 1x1 conv, stride 1, no padding, one group          (expand / reduce / project)
    kxk = any other conv: k x k, strided, depthwise, grouped

    [pw -> kxk -> pw]   ResNet bottleneck, MobileNetV2 inverted residual
    [pw -> kxk]         Inception 1x1 reduction -> 3x3
    [kxk -> pw]         depthwise -> project (MobileNetV2's first block)

Each stage is a conv with its epilogue (bias, relu / clip, the residual add) as
`fuse_epilogues` groups it.  An intermediate must have exactly one reader (the next
conv) and not be a graph output.  Two k x k convs are never chained: the second one's
halo would recompute a large part of the first.  Triples are matched before pairs.

The result is one `fused` node with anchor "bottleneck" whose `body` holds the whole
chain (one PrimFunc: the schedule in `search/rules_bottleneck.py` keeps the intermediate
tile, with its halo, local), and whose `parts` attribute holds the per-stage fused nodes.
Whether the chain runs fused or as its parts is decided at build time from measurements
(`choose_bottlenecks`): the tuner tunes the fused task and the part tasks alike.

The pass runs before `fuse_epilogues` (it groups the chain's epilogues itself and leaves
every other node to it), and `no_fuse={"bottleneck"}` switches it off.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from .fusion import _Group, _to_fused, fuse_epilogues
import numpy as np

from .ir import Graph, Node, TensorType, values_read
from .ops import infer_type

ANCHOR = "bottleneck"
PATTERNS = (("pw", "kxk", "pw"), ("pw", "kxk"), ("kxk", "pw"))  # in matching order


def _stage_kind(node: Node) -> str | None:
    """'pw' / 'kxk' for a fused conv group whose first body node is the conv on its data input, else None."""
    if node.op != "fused" or node.attr("anchor") != "conv2d":
        return None
    body: Graph = node.attr("body")
    conv = body.nodes[0]
    if conv.op != "conv2d" or any(n.op == "conv2d" for n in body.nodes[1:]) or conv.type.dtype != "float32":
        return None
    return _stage_kind_of_conv(conv, body)


def _data_input(node: Node) -> str:
    return node.attr("body").nodes[0].inputs[0]


def find_chains(fused: Graph) -> list[list[Node]]:
    """Chains of epilogue-fused conv nodes (in `fused`, a graph after fuse_epilogues) that match PATTERNS."""
    users = fused.consumers()
    outputs = set(fused.outputs)

    def next_stage(node: Node) -> Node | None:
        readers = users.get(node.name, [])
        if len(readers) != 1 or node.name in outputs:
            return None
        reader = readers[0]
        if _stage_kind(reader) is None or _data_input(reader) != node.name or list(reader.inputs).count(node.name) != 1:
            return None
        # the value must be read only by the conv, not also by the reader's epilogue
        body: Graph = reader.attr("body")
        inner = body.inputs[reader.inputs.index(node.name)][0]
        if sum(inner in n.inputs for n in body.nodes) != 1:
            return None
        return reader

    claimed: set[str] = set()
    chains: list[list[Node]] = []
    for pattern in PATTERNS:
        for node in fused.nodes:
            if node.name in claimed or _stage_kind(node) != pattern[0]:
                continue
            chain = [node]
            while len(chain) < len(pattern):
                nxt = next_stage(chain[-1])
                if nxt is None or nxt.name in claimed or _stage_kind(nxt) != pattern[len(chain)]:
                    break
                chain.append(nxt)
            if len(chain) == len(pattern):
                chains.append(chain)
                claimed.update(n.name for n in chain)
    return chains


def fuse_bottleneck(graph: Graph) -> Graph:
    """Replace every matched conv chain's nodes by one bottleneck node; other nodes stay as they are."""
    if any(n.op == "fused" and n.attr("anchor") != ANCHOR for n in graph.nodes):
        grouped = graph  # already epilogue-fused (the pipeline ran twice): match on it directly
    else:
        grouped = fuse_epilogues(graph)
    chains = find_chains(grouped)
    if not chains:
        return graph
    originals = graph.node_map()
    replace: dict[str, Node] = {}  # the chain output's name -> the bottleneck node
    removed: set[str] = set()
    constants = dict(graph.constants)
    for chain in chains:
        stages = [_members(part, originals) for part in chain]
        removed.update(m.name for stage in stages for m in stage)
        members = _pad_early(stages, dataclasses.replace(graph, constants=constants), constants)
        node = _to_fused(_Group(members, ANCHOR), dataclasses.replace(graph, constants=constants))
        node = node.with_attrs(parts=tuple(chain))
        replace[node.name] = node
    nodes = []
    for n in graph.nodes:
        if n.name in replace:
            nodes.append(replace[n.name])
        elif n.name not in removed:
            nodes.append(n)
    used = values_read(nodes) | set(graph.outputs)
    constants = {k: v for k, v in constants.items() if k in used or k in graph.constants}
    return dataclasses.replace(graph, nodes=tuple(nodes), constants=constants)


def _pad_early(stages: list[list[Node]], graph: Graph, constants: dict[str, np.ndarray]) -> list[Node]:
    """The chain's nodes, with every 1x1 stage that feeds a padded conv computed on the padded
    grid: pad(x) -> 1x1 conv -> epilogue -> where(inside, ., 0) -> conv without padding.
    Same values; but the intermediate then covers the next conv's whole read region, so a
    spatial tile's halo never leaves its domain (no clipped, predicated loops in the kernel)."""
    out: list[Node] = []
    rename: dict[str, str] = {}
    taken = {n for n, _ in graph.inputs} | set(constants) | {n.name for n in graph.nodes}

    def fresh(base: str) -> str:
        name, k = f"{base}.padded", 0
        while name in taken:
            k += 1
            name = f"{base}.padded{k}"
        taken.add(name)
        return name

    types = {}

    def type_of(v: str) -> TensorType:
        return types[v] if v in types else graph.type_of(v)

    def emit(node: Node) -> None:
        node = dataclasses.replace(node, inputs=tuple(rename.get(i, i) for i in node.inputs))
        types[node.name] = node.type
        out.append(node)

    for k, stage in enumerate(stages):
        nxt = stages[k + 1][0] if k + 1 < len(stages) else None
        pads = tuple(nxt.attr("pads")) if nxt is not None else (0, 0, 0, 0)
        full = stage[0].type.shape
        if not any(pads) or _stage_kind_of_conv(stage[0], graph) != "pw" or any(
            any(graph.type_of(i).shape == full for i in n.inputs if i not in {m.name for m in stage}) for n in stage[1:]
        ):
            for n in stage:
                emit(n)
            continue
        pt, pl, pb, pr = pads
        conv = stage[0]
        x = rename.get(conv.inputs[0], conv.inputs[0])
        xt = type_of(x)
        xp = fresh(x)
        emit(Node.make(xp, "pad", [x], infer_type("pad", [xt], {"pads": (0, 0, pt, pl, 0, 0, pb, pr)}),
                       pads=(0, 0, pt, pl, 0, 0, pb, pr), mode="constant", value=0.0))
        rename[conv.inputs[0]] = xp  # only for this conv: restored below
        for n in stage:
            new_name = fresh(n.name)
            ins = [rename.get(i, i) for i in n.inputs]
            attrs = n.attr_dict
            emit(Node.make(new_name, n.op, ins, infer_type(n.op, [type_of(i) for i in ins], attrs), **attrs))
            rename[n.name] = new_name
        rename.pop(conv.inputs[0], None)
        last = stage[-1]
        padded_t = type_of(rename[last.name])
        _, _, hp, wp = padded_t.shape
        inside = np.zeros((1, 1, hp, wp), dtype=bool)
        inside[..., pt : hp - pb, pl : wp - pr] = True
        mask, zero = fresh(last.name + ".inside"), fresh(last.name + ".zero")
        constants[mask], constants[zero] = inside, np.zeros((), dtype=padded_t.dtype)
        masked = fresh(last.name + ".masked")
        emit(Node.make(masked, "where", [mask, rename[last.name], zero], padded_t))
        rename[last.name] = masked
        stages[k + 1][0] = nxt.with_attrs(pads=(0, 0, 0, 0))
    return out


def _stage_kind_of_conv(conv: Node, graph: Graph) -> str:
    w = graph.type_of(conv.inputs[1])
    pointwise = (w.shape[2:] == (1, 1) and tuple(conv.attr("strides")) == (1, 1) and not any(conv.attr("pads"))
                 and conv.attr("groups", 1) == 1)
    return "pw" if pointwise else "kxk"


def _members(part: Node, originals: dict[str, Node]) -> list[Node]:
    """The original nodes a fused part stands for (the part itself if it was fused before)."""
    if part.name in originals and originals[part.name].op == "fused":
        return list(part.attr("body").nodes)
    return [originals[n.name] for n in part.attr("body").nodes]


def count_bottlenecks(graph: Graph) -> int:
    return sum(1 for n in graph.nodes if n.op == "fused" and n.attr("anchor") == ANCHOR)


# --------------------------------------------------------------------------- build-time choice
def prefer_fused(fused_cost: float | None, part_costs: list[float | None]) -> bool:
    """Fused or parts, from the best measured seconds per call (None: never measured).

    Both measured: the faster wins.  Only the fused kernel measured: fused (the tuner got to
    it and not to the parts).  Nothing measured for the fused kernel: unfused (each part's
    default schedule is the well-trodden path).
    """
    if fused_cost is None:
        return False
    known = [c for c in part_costs if c is not None]
    if not known:
        return True
    if len(known) < len(part_costs):
        return False
    return fused_cost < sum(known)


def unfuse(graph: Graph, keep: Callable[[Node], bool]) -> Graph:
    """The graph with every bottleneck node for which keep(node) is False replaced by its parts."""
    nodes: list[Node] = []
    changed = False
    for n in graph.nodes:
        if n.op == "fused" and n.attr("anchor") == ANCHOR and not keep(n):
            nodes.extend(n.attr("parts"))
            changed = True
        else:
            nodes.append(n)
    return dataclasses.replace(graph, nodes=tuple(nodes)) if changed else graph


def choose_bottlenecks(graph: Graph, table, cost: Callable[[str], "float | None"]):
    """Per bottleneck node: keep it fused or put its parts back, by `prefer_fused` on the best
    measured cost of each workload (`cost(key)`: seconds per call, None if never measured).
    Returns (graph, task table of only the kernels that graph calls, {"fused": n, "unfused": m})."""
    from .lower import TaskTable, is_pure_reshape

    if not table.part_tasks:
        return graph, table, {}
    decided: dict[str, bool] = {}
    for name, parts in table.part_tasks.items():
        decided[name] = prefer_fused(cost(table.node_task[name]), [cost(k) for k in parts])
    chosen = unfuse(graph, lambda n: decided.get(n.name, True))
    node_task = dict(table.node_task)
    reshapes = set(table.reshapes)
    for n in graph.nodes:
        if n.name in decided and not decided[n.name]:
            views = {p.name for p in n.attr("parts") if is_pure_reshape(p)}  # from conv1x1_as_matmul: no kernel
            reshapes |= views
            kernels = [p for p in n.attr("parts") if p.name not in views]
            node_task.update({p.name: k for p, k in zip(kernels, table.part_tasks[n.name])})
    node_task = {n.name: node_task[n.name] for n in chosen.nodes if n.name in node_task}
    used = set(node_task.values())
    tasks = tuple(t for t in table.tasks if t.workload_key in used)
    counts = {"fused": sum(decided.values()), "unfused": sum(not v for v in decided.values())}
    return chosen, TaskTable(tasks, node_task, frozenset(reshapes)), counts
