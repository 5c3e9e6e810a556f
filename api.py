"""The Python API, mirroring the CLI:

    import tilecraft as tc
    graph = tc.load_model("model.onnx", input_shapes={"input": (1, 3, 224, 224)})
    tc.tune(graph, target="llvm", trials=200, database="tuning.db")        # measure, record
    module = tc.compile(graph, target="llvm", database="tuning.db")       # best records -> Module
    module.export("model.so")
    outputs = tc.Module.load("model.so").run({"input": x})
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from .compiler.build import BuildReport, build_graph
from .compiler.fusion import count_fused
from .compiler.ir import Graph
from .compiler.lower import TaskTable, extract_tasks
from .compiler.module import Module
from .compiler.pipeline import optimize
from .compiler.task import Task
from .errors import ModelLoadError
from .targets.base import Target, resolve_target

FUSIONS = ("epilogue", "attention", "bottleneck")
# feature maps between convs.  "auto": NCHWc where conv weights are packed by the vector width (x86),
# NCHW elsewhere (GPU, ARM).  MobileNetV2 tuned 30 min each way, timed against ONNX Runtime in the
# same rounds: NCHW 5.71 ms, NCHWc 3.91 ms (ORT 4.21); see bench/RESULTS.md.
LAYOUTS = ("auto", "NCHW", "NCHWc")


def load_model(model, *, input_shapes: dict[str, tuple[int, ...]] | None = None, example_inputs: tuple | None = None) -> Graph:
    """An ONNX file or ModelProto, a saved torch ExportedProgram (.pt2), or a torch.nn.Module
    (with `example_inputs`) -> Graph."""
    if isinstance(model, Graph):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if path.endswith((".pt2", ".pt")):
            from .frontends.torch import load_pt2

            return load_pt2(path)
        if not os.path.exists(path):
            raise ModelLoadError(f"model file not found: {path}")
        from .frontends.onnx import from_onnx

        return from_onnx(path, input_shapes=input_shapes)
    if type(model).__name__ == "ModelProto":
        from .frontends.onnx import from_onnx

        return from_onnx(model, input_shapes=input_shapes)
    if example_inputs is not None:
        from .frontends.torch import from_torch

        return from_torch(model, example_inputs)
    raise ModelLoadError(f"cannot import a model of type {type(model).__name__} (pass example_inputs for torch modules)")


@dataclass(frozen=True)
class Prepared:
    """A model ready to tune or build: the optimized graph and its task table."""

    graph: Graph
    table: TaskTable
    target: Target

    @property
    def tasks(self) -> tuple[Task, ...]:
        return self.table.tasks

    def fusion_report(self) -> dict[str, int]:
        return count_fused(self.graph)


def weight_block(target: Target) -> int:
    """Pack conv weights by the vector width on x86 (AVX2: 8, AVX-512: 16 lanes), where it was
    measured to pay; ARM (4 lanes) and GPUs keep OIHW weights."""
    if target.is_gpu:
        return 0
    from .search.sketch import vector_lanes

    lanes = vector_lanes(target)
    return lanes if lanes >= 8 else 0


def prepare(model, *, target: "str | Target" = "llvm", no_fuse: Iterable[str] = (),
            input_shapes: dict[str, tuple[int, ...]] | None = None, example_inputs: tuple | None = None,
            layout: str = "auto", winograd: bool = True) -> Prepared:
    """The optimized graph and its tasks.  `winograd`: 3x3 convs on large NCHWc maps as Winograd
    F(4x4, 3x3) or F(2x2, 3x3) kernels (compiler/winograd.py; x86 in the NCHWc layout only)."""
    graph = load_model(model, input_shapes=input_shapes, example_inputs=example_inputs)
    tgt = resolve_target(target)
    unknown = set(no_fuse) - set(FUSIONS)
    if unknown:
        raise ValueError(f"unknown fusion(s) {sorted(unknown)}; choose from {FUSIONS}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")
    block = weight_block(tgt)
    optimized = optimize(graph, no_fuse=frozenset(no_fuse), weight_block=block,
                         nchwc_block=block if layout in ("auto", "NCHWc") else 0, winograd=winograd)
    return Prepared(optimized, extract_tasks(optimized), tgt)


def compile(model, *, target: "str | Target" = "llvm", database: "str | os.PathLike | None" = None,
            no_fuse: Iterable[str] = (), input_shapes: dict[str, tuple[int, ...]] | None = None,
            example_inputs: tuple | None = None, layout: str = "auto", winograd: bool = True) -> Module:
    """Build a model with the best schedules the database holds (the target's default schedule elsewhere)."""
    prepared = model if isinstance(model, Prepared) else prepare(
        model, target=target, no_fuse=no_fuse, input_shapes=input_shapes, example_inputs=example_inputs, layout=layout,
        winograd=winograd)
    module, _ = build_prepared(prepared, database=database)
    return module


def build_prepared(prepared: Prepared, *, database=None) -> tuple[Module, BuildReport]:
    from .search.schedules import ScheduleSource

    from .compiler.fusion_bottleneck import choose_bottlenecks

    source = ScheduleSource(prepared.target, database=database)
    try:
        # fused conv chains: fused or as their parts, whichever measured faster (unfused if unmeasured)
        graph, table, chains = choose_bottlenecks(prepared.graph, prepared.table, source.best_cost)
        exe, report = build_graph(graph, prepared.target, schedule=source.schedule, table=table)
    finally:
        source.close()
    report.tuned, report.sources, report.bottlenecks = source.tuned_count, dict(source.sources), chains
    module = Module(exe, device="cpu" if not prepared.target.is_gpu else None) if not prepared.target.cross_compiler else _Unrunnable(exe, prepared)
    return module, report


class _Unrunnable(Module):
    """A cross-compiled module (e.g. aarch64): it can be exported, not run here."""

    def __init__(self, executable, prepared: Prepared):  # noqa: D401 - no VM on this host
        from .compiler.build import graph_metadata

        self._exe = executable
        self.path = None
        self.meta = graph_metadata(prepared.graph, prepared.target)
        self.cross_compiler = prepared.target.cross_compiler

    def export(self, path, *, cross_compiler: str | None = None) -> str:
        return super().export(path, cross_compiler=cross_compiler or self.cross_compiler)

    def run(self, inputs):
        raise RuntimeError(f"this module is built for {self.meta['target']}; export it and run it there")


def tune(model, *, target: "str | Target" = "llvm", trials: int = 200, database: "str | os.PathLike" = "tilecraft.db",
         no_fuse: Iterable[str] = (), input_shapes: dict[str, tuple[int, ...]] | None = None,
         example_inputs: tuple | None = None, seed: int = 0, rpc_tracker: str | None = None,
         rpc_key: str | None = None, progress: bool = True, time_budget_s: float | None = None,
         strategy: str = "evolutionary", scheduler: str = "gradient", batch_size: int = 16, layout: str = "auto",
         winograd: bool = True):
    """Tune every task of a model for `trials` measurements in total; records go to `database`."""
    from .search.tuner import TuneConfig, tune_prepared

    prepared = model if isinstance(model, Prepared) else prepare(
        model, target=target, no_fuse=no_fuse, input_shapes=input_shapes, example_inputs=example_inputs, layout=layout,
        winograd=winograd)
    config = TuneConfig(trials=trials, seed=seed, rpc_tracker=rpc_tracker, rpc_key=rpc_key, progress=progress,
                        time_budget_s=time_budget_s, strategy=strategy, scheduler=scheduler, batch_size=batch_size)
    return tune_prepared(prepared, database=database, config=config)
