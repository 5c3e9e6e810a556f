"""Build: a fused graph + a schedule per task -> one Relax VM executable with weights inside.

Why the Relax VM rather than one generated entry function: the VM gives us static memory
planning of intermediates (StaticPlanBlockMemory), zero-copy reshapes, constants embedded
in the exported library, and the same runtime on CPU, CUDA and over RPC; the per-kernel
call overhead is a few microseconds.  We run only Relax's *lowering* passes, never its
fusion or legalization, so every kernel is exactly one of our scheduled tasks.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from .. import __version__
from ..targets.base import Target
from .ir import Graph
from .lower import TaskTable, extract_tasks
from .task import Task

# Given a task, return its scheduled PrimFunc (best record, or the target's default schedule).
ScheduleFn = Callable[[Task], tvm.tirx.PrimFunc]

META_FUNC = "tilecraft_meta"


@dataclass
class BuildReport:
    tasks: int = 0
    kernels: int = 0
    tuned: int = 0  # tasks that used a record from the database
    seconds: float = 0.0
    sources: dict[str, str] = field(default_factory=dict)  # task name -> "record" | "default"
    bottlenecks: dict[str, int] = field(default_factory=dict)  # chains built {"fused": n, "unfused": m}


def graph_metadata(graph: Graph, target: Target) -> dict:
    return {
        "format": "tilecraft-module-1",
        "version": __version__,
        "tvm": tvm.__version__,
        "target": target.name,
        "target_json": target.key,
        "device": target.device_type,
        "inputs": [{"name": n, "shape": list(t.shape), "dtype": t.dtype} for n, t in graph.inputs],
        "outputs": [{"name": o, "shape": list(graph.type_of(o).shape), "dtype": graph.type_of(o).dtype} for o in graph.outputs],
    }


def _ttype(shape, dtype) -> relax.TensorType:
    return relax.TensorType(shape=tuple(int(d) for d in shape), dtype=dtype)


def build_relax_module(graph: Graph, table: TaskTable, scheduled: dict[str, tvm.tirx.PrimFunc], target: Target) -> tvm.IRModule:
    """The whole graph as one Relax function calling our kernels with call_tir."""
    bb = relax.BlockBuilder()
    params = [relax.Var(n, _ttype(t.shape, t.dtype)) for n, t in graph.inputs]
    env: dict[str, relax.Expr] = {n: p for (n, _), p in zip(graph.inputs, params)}
    gvars: dict[str, relax.GlobalVar] = {}
    with bb.function("main", params):
        with bb.dataflow():
            for k, task in enumerate(table.tasks):
                gvars[task.workload_key] = bb.add_func(scheduled[task.workload_key], f"k{k}_{task.name}"[:60])

            def value(name: str) -> relax.Expr:
                if name not in env:
                    array = np.asarray(graph.constants[name])  # not ascontiguousarray: it makes 0-d 1-d
                    array = array if array.flags.c_contiguous else array.copy(order="C")
                    # relax.const narrows int64 to int32 unless told the dtype
                    env[name] = relax.const(array, dtype=str(array.dtype))
                return env[name]

            for node in graph.nodes:
                if node.name in table.reshapes and 0 in node.type.shape:
                    # an empty result: relax's reshape rejects a 0 in the new shape and an empty
                    # constant does not serialize, so allocate the (empty) tensor directly
                    shape = relax.ShapeExpr([int(d) for d in node.type.shape])
                    env[node.name] = bb.emit(relax.op.builtin.alloc_tensor(shape, node.type.dtype, 0))
                    continue
                if node.name in table.reshapes:
                    env[node.name] = bb.emit(relax.op.reshape(value(node.inputs[0]), node.type.shape))
                    continue
                gv = gvars[table.node_task[node.name]]
                env[node.name] = bb.emit(relax.call_tir(gv, [value(i) for i in node.inputs], _ttype(node.type.shape, node.type.dtype)))
            out = bb.emit_output(relax.Tuple([value(o) for o in graph.outputs]))
        bb.emit_func_output(out)
    meta = json.dumps(graph_metadata(graph, target)).encode()
    with bb.function(META_FUNC, []):
        bb.emit_func_output(relax.const(np.frombuffer(meta, dtype="uint8")))
    return bb.get()


def relax_lowering(target: tvm.target.Target) -> tvm.transform.Pass:
    """Relax's lowering passes only: no LegalizeOps / FuseOps / FuseTIR, which would re-fuse our kernels."""
    passes = [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]
    return tvm.transform.Sequential(passes)


def build_graph(graph: Graph, target: Target, *, schedule: ScheduleFn,
                table: TaskTable | None = None) -> tuple["relax.VMExecutable", BuildReport]:
    """Compile a fused graph: each task gets `schedule(task)`; returns the executable and a report."""
    t0 = time.time()
    table = table or extract_tasks(graph)
    scheduled = {}
    for task in table.tasks:
        scheduled[task.workload_key] = schedule(task)
    mod = build_relax_module(graph, table, scheduled, target)
    tgt = target.tvm_target
    exe = tvm.compile(mod, target=tgt, relax_pipeline=relax_lowering(tgt))
    report = BuildReport(tasks=len(table.tasks), kernels=sum(n.name not in table.reshapes for n in graph.nodes), seconds=time.time() - t0)
    return exe, report
