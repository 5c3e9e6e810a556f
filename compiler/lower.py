"""Lowering: each fused group -> one TensorIR PrimFunc -> a Task; identical tasks deduplicated."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import te, tirx

from ..errors import GraphError
from .ir import Graph, Node, TensorType
from .lower_attention import lower_attention_body
from .lower_ops import LOWER
from .task import Task, workload_key


def _scalar(value: np.ndarray, dtype: str):
    v = value.reshape(()).item()
    return tirx.const(bool(v) if dtype == "bool" else v, dtype)


def lower_body(body: Graph, *, name: str = "main") -> tuple[tvm.tirx.PrimFunc, tuple[TensorType, ...]]:
    """Body graph (inputs -> nodes -> one output) -> PrimFunc(inputs..., output)."""
    values: dict[str, te.Tensor] = {}
    placeholders = []
    for k, (vname, t) in enumerate(body.inputs):
        ph = te.placeholder(t.shape, t.dtype, name=f"p{k}")
        values[vname] = ph
        placeholders.append(ph)
    for cname, c in body.constants.items():
        dtype = str(c.dtype)
        values[cname] = te.compute((), lambda: _scalar(c, dtype), name="T_const") if c.ndim == 0 else te.compute(
            tuple(int(d) for d in c.shape), lambda *i, c=c, dtype=dtype: _scalar(c, dtype), name="T_const"
        )
    for node in body.nodes:
        lower = LOWER.get(node.op)
        if lower is None:
            raise GraphError(f"no TensorIR lowering for op {node.op!r} (node %{node.name})")
        values[node.name] = lower([values[i] for i in node.inputs], node.attr_dict, node.type)
    out = values[body.outputs[0]]
    if isinstance(out.op, te.PlaceholderOp):  # the body forwards an input: copy it
        out = te.compute(out.shape, lambda *i: values[body.outputs[0]](*i), name="T_copy")
    func = te.create_prim_func(placeholders + [out]).with_attr("global_symbol", name)
    types = tuple(t for _, t in body.inputs) + (body.type_of(body.outputs[0]),)
    return func, types


def _flops(body: Graph) -> float:
    total = 0.0
    for n in body.nodes:
        out = n.type.size
        if n.op == "matmul":
            a = body.type_of(n.inputs[0])
            total += 2.0 * out * a.shape[-1]
        elif n.op == "conv2d":
            w = body.type_of(n.inputs[1])
            total += 2.0 * out * w.shape[1] * w.shape[2] * w.shape[3]
        elif n.op == "conv2d_nchwc":  # every weight layout of ops_conv.py: [out blocks, reduction..., b_out]
            total += 2.0 * out * float(np.prod(body.type_of(n.inputs[1]).shape[1:-1]))
        elif n.op == "winograd_gemm":  # [36, C/b, b, K] weights: a C-long dot per output
            u = body.type_of(n.inputs[1]).shape
            total += 2.0 * out * u[1] * u[2]
        elif n.op == "winograd_input":  # two a-term passes (B^T is [a, a]): 2a multiply-adds per value
            total += 2.0 * out * 2 * body.type_of(n.inputs[1]).shape[0]
        elif n.op == "winograd_output":  # A^T [m, a]: (m*a*a + m*m*a) / (m*m) multiply-adds per output
            m, a = body.type_of(n.inputs[1]).shape
            total += 2.0 * out * a * (a + m) / m
        elif n.op == "attention":
            q, v = body.type_of(n.inputs[0]), body.type_of(n.inputs[2])
            sk = v.shape[-2]
            total += 2.0 * out / v.shape[-1] * sk * (q.shape[-1] + v.shape[-1])
        elif n.op in ("softmax", "layer_norm", "reduce", "pool2d"):
            total += 4.0 * sum(body.type_of(i).size for i in n.inputs[:1])
        else:
            total += float(out)
    return total


def task_name(body: Graph, out: TensorType) -> str:
    ops = "_".join(dict.fromkeys(n.op for n in body.nodes))
    return f"{ops}_{'x'.join(map(str, out.shape)) or 'scalar'}"


BOTTLENECK_ATTR = "tilecraft.bottleneck"  # marks a fused conv chain for search/rules_bottleneck.py


def make_task(node: Node) -> Task:
    body: Graph = node.attr("body")
    func, types = lower_attention_body(body) or lower_body(body)
    name = task_name(body, node.type)
    if node.attr("anchor") == "bottleneck":
        func, name = func.with_attr(BOTTLENECK_ATTR, 1), "bottleneck_" + name
    mod = tvm.IRModule({"main": func})
    return Task(
        name=name,
        workload_key=workload_key(mod, types),
        mod=mod,
        arg_types=types,
        flops=_flops(body),
        weight=1,
        kind=node.attr("anchor") or "elemwise",
    )


@dataclass(frozen=True)
class TaskTable:
    """The model's kernels: one task per unique workload, and which task each graph node calls."""

    tasks: tuple[Task, ...]
    node_task: dict[str, str]  # fused node name -> workload key
    reshapes: frozenset[str]  # nodes that are pure reshapes: views, no kernel
    # bottleneck node name -> workload keys of its kernel parts (the unfused alternative; reshape
    # parts are views and have none), in order;
    # both are tuned, the build picks one per chain (compiler/fusion_bottleneck.choose_bottlenecks)
    part_tasks: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def by_key(self) -> dict[str, Task]:
        return {t.workload_key: t for t in self.tasks}


def is_pure_reshape(node: Node) -> bool:
    body = node.attr("body")
    return body is not None and all(n.op == "reshape" for n in body.nodes) and len(body.inputs) == 1


def extract_tasks(graph: Graph) -> TaskTable:
    """Lower every fused node; deduplicate by workload key (weight = occurrences)."""
    tasks: dict[str, Task] = {}
    node_task: dict[str, str] = {}
    reshapes = set()
    part_tasks: dict[str, tuple[str, ...]] = {}

    def add(task: Task) -> str:
        key = task.workload_key
        tasks[key] = tasks[key].with_weight(tasks[key].weight + 1) if key in tasks else task
        return key

    for node in graph.nodes:
        if node.op != "fused":
            raise GraphError(f"node %{node.name} ({node.op}) is not in a fused group: run the pipeline first")
        if is_pure_reshape(node):
            reshapes.add(node.name)
            continue
        node_task[node.name] = add(make_task(node))
        if node.attr("parts"):  # a fused bottleneck: its unfused parts are tasks too (reshape parts: no task)
            part_tasks[node.name] = tuple(add(make_task(p)) for p in node.attr("parts") if not is_pure_reshape(p))
    return TaskTable(tuple(tasks.values()), node_task, frozenset(reshapes), part_tasks)
