"""The ONNX backend node tests (`onnx.backend.test.case.node`) for every ONNX op tilecraft claims.

Each case is imported with our frontend, compiled for llvm with the default schedules
(`tilecraft.compile`), run on each of its data sets and compared with the expected outputs.
One test per claimed op type records every case's outcome; it fails on wrong results and
on crashes that are not our own errors, and xfails (listing them) when the only failures are
features our frontend rejects with UnsupportedOpError.  A summary test asserts that at least
85% of all in-scope cases pass.  `python tests/test_onnx_backend.py --report bench/onnx_backend.md`
writes the per-op table and every remaining failure with its reason.

Scope: a case is in scope when every op in its graph is claimed; an `_expanded` case (the op
written as its ONNX function body) counts under the op it expands.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

CLAIMED_OPS = (
    "Conv", "BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf",
    "Gelu", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Neg", "Reciprocal", "Min", "Max", "Abs",
    "MatMul", "Gemm", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape",
    "Transpose", "Concat", "Split", "Slice", "Gather", "Squeeze", "Unsqueeze", "Expand", "Cast", "Where", "Equal",
    "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Not", "Xor", "Softmax", "LogSoftmax",
    "LayerNormalization", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "Shape", "Size",
    "ConstantOfShape", "Range", "Constant", "Identity", "Dropout", "Pad", "Resize", "Floor", "Ceil", "Sin", "Cos",
)

# Inputs our frontend needs as constants (target shapes, axes, pads, bounds, sizes...).  When a
# case feeds one as a graph input, it becomes an initializer holding the data set's value: a fair
# conversion, since ONNX Runtime too must know these values to plan static shapes.
CONST_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,), "Slice": (1, 2, 3, 4),
    "Pad": (1, 2, 3), "Clip": (1, 2), "Resize": (1, 2, 3), "ConstantOfShape": (0,), "Range": (0, 1, 2),
    "Dropout": (1, 2), "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceProd": (1,),
}

RTOL, ATOL = 1e-3, 1e-4

# Exceptions that are bugs (ours or TVM's) rather than our own TilecraftErrors: a case that raises
# one is recorded as a crash and the run goes on.
BUGS = (RuntimeError, ValueError, TypeError, AttributeError, KeyError, IndexError, AssertionError, ZeroDivisionError,
        NotImplementedError, OverflowError)


@dataclass(frozen=True)
class Outcome:
    case: str
    op: str
    status: str  # "pass" | "unsupported" (our UnsupportedOpError) | "error" | "crash" | "mismatch"
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "pass"


# --------------------------------------------------------------------------- collecting cases
def _graph_ops(graph) -> list[str]:
    ops = []
    for node in graph.node:
        ops.append(node.op_type)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                ops += _graph_ops(sub)
    return ops


@functools.cache
def cases_by_op() -> dict[str, tuple]:
    """Claimed op -> its in-scope backend test cases (each has .name, .model, .data_sets)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # the generators overflow casts on purpose
        warnings.simplefilter("ignore")
        cases = collect_testcases(None)
    by_name = {c.name: c for c in cases}
    out: dict[str, list] = {op: [] for op in CLAIMED_OPS}
    for case in cases:
        ops = _graph_ops(case.model.graph)
        if not ops or any(op not in CLAIMED_OPS for op in ops):
            continue
        base = by_name.get(re.sub(r"_expanded(_ver\d+)?$", "", case.name), case)
        base_ops = _graph_ops(base.model.graph)
        if len(base_ops) == 1 and base_ops[0] in out:
            out[base_ops[0]].append(case)
    return {op: tuple(cs) for op, cs in out.items()}


# --------------------------------------------------------------------------- one case
def _freeze_const_inputs(model, feeds: dict[str, np.ndarray]):
    """Copy of `model` where inputs that feed CONST_INPUTS slots are initializers; the other feeds."""
    import onnx
    from onnx import numpy_helper

    const_names = {n.input[k] for n in model.graph.node for k in CONST_INPUTS.get(n.op_type, ())
                   if k < len(n.input) and n.input[k] in feeds}
    if not const_names:
        return model, feeds
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    kept = [vi for vi in frozen.graph.input if vi.name not in const_names]
    del frozen.graph.input[:]
    frozen.graph.input.extend(kept)
    frozen.graph.initializer.extend(numpy_helper.from_array(np.asarray(feeds[n]), n) for n in sorted(const_names))
    return frozen, {k: v for k, v in feeds.items() if k not in const_names}


def _array(value) -> np.ndarray:
    """Data sets hold numpy arrays, or TensorProtos for types numpy lacks (float16 too, in some cases)."""
    from onnx import TensorProto, numpy_helper

    return numpy_helper.to_array(value) if isinstance(value, TensorProto) else np.asarray(value)


def _compare(got: np.ndarray, want: np.ndarray, name: str) -> str:
    """'' when `got` matches `want`, else why not."""
    want = np.asarray(want)
    if got.shape != want.shape:
        return f"output {name}: shape {got.shape}, expected {want.shape}"
    if got.dtype != want.dtype:
        return f"output {name}: dtype {got.dtype}, expected {want.dtype}"
    try:
        if want.dtype.kind in "fc":
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
        else:
            np.testing.assert_array_equal(got, want)
    except AssertionError as e:
        detail = " ".join(line.strip() for line in str(e).splitlines() if "Max" in line or "Mismatched" in line)
        return f"output {name}: {detail or 'values differ'}"
    return ""


def _short(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    # TVM errors end with the useful line; ours are one line
    text = lines[-1] if lines else ""
    return f"{type(e).__name__}: {text}"[:300]


class Runner:
    """Runs cases, importing and compiling each distinct (frozen) model once."""

    def __init__(self, *, target: str = "llvm"):
        self.target = target
        self._compiled: dict[bytes, tuple] = {}

    def compiled(self, model, feeds: dict[str, np.ndarray]):
        """(imported graph, compiled module)."""
        key = model.SerializeToString()
        if key not in self._compiled:
            import tilecraft as tc
            from tilecraft.frontends.onnx import from_onnx

            graph = from_onnx(model, input_shapes={k: v.shape for k, v in feeds.items()})
            self._compiled[key] = graph, tc.compile(graph, target=self.target)
        return self._compiled[key]

    def run_case(self, case, op: str) -> Outcome:
        from tilecraft.errors import TilecraftError, UnsupportedOpError

        graph = case.model.graph
        in_names = [vi.name for vi in graph.input if vi.name not in {t.name for t in graph.initializer}]
        out_names = [vi.name for vi in graph.output]
        for inputs, outputs in case.data_sets:
            inputs, outputs = [_array(v) for v in inputs], [_array(v) for v in outputs]
            model, feeds = _freeze_const_inputs(case.model, dict(zip(in_names, inputs)))
            try:
                graph, module = self.compiled(model, feeds)
                got = module.run(feeds)
            except UnsupportedOpError as e:
                return Outcome(case.name, op, "unsupported", _short(e))
            except TilecraftError as e:
                return Outcome(case.name, op, "error", _short(e))
            except BUGS as e:
                return Outcome(case.name, op, "crash", self._diagnose(model, feeds, _short(e)))
            for name, want in zip(out_names, outputs):
                why = _compare(got[name], want, name)
                if why:
                    return Outcome(case.name, op, "mismatch", self._diagnose(model, feeds, why, outputs, out_names))
            # the numpy interpreter (the passes' reference and the constant folder) must agree too
            from tilecraft.compiler.interpret import run_graph

            try:
                with np.errstate(all="ignore"):
                    ref = dict(zip(graph.outputs, run_graph(graph, feeds)))
            except BUGS as e:
                return Outcome(case.name, op, "crash", f"numpy interpreter: {_short(e)}")
            for name, want in zip(out_names, outputs):
                why = _compare(np.asarray(ref[name]), want, name)
                if why:
                    return Outcome(case.name, op, "mismatch", f"numpy interpreter: {why}")
        return Outcome(case.name, op, "pass")

    def _diagnose(self, model, feeds, why: str, outputs=None, out_names=()) -> str:
        """Tell a default-schedule bug (the unscheduled build is right) from a frontend/lowering one."""
        from tilecraft.compiler.build import build_graph
        from tilecraft.compiler.module import Module
        from tilecraft.compiler.pipeline import optimize
        from tilecraft.errors import TilecraftError
        from tilecraft.frontends.onnx import from_onnx
        from tilecraft.targets.base import resolve_target

        try:
            graph = optimize(from_onnx(model, input_shapes={k: v.shape for k, v in feeds.items()}))
            exe, _ = build_graph(graph, resolve_target(self.target), schedule=lambda t: t.func)
            got = Module(exe, device="cpu").run(feeds)
        except (TilecraftError, *BUGS):  # the unscheduled build fails too: not the schedule's fault
            return why
        if outputs is not None and any(_compare(got[n], w, n) for n, w in zip(out_names, outputs)):
            return why
        return f"default schedule: {why}"

    def run_op(self, op: str) -> tuple[Outcome, ...]:
        return tuple(self.run_case(case, op) for case in cases_by_op()[op])


_RUNNER = Runner()


@functools.cache
def results(op: str) -> tuple[Outcome, ...]:
    return _RUNNER.run_op(op)


def all_results(ops: Sequence[str] = CLAIMED_OPS) -> list[Outcome]:
    return [o for op in ops for o in results(op)]


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("op", CLAIMED_OPS)
def test_onnx_backend_op(op):
    outcomes = results(op)
    assert outcomes, f"no in-scope ONNX backend cases for {op}"
    bugs = [o for o in outcomes if o.status in ("mismatch", "crash", "error")]
    assert not bugs, "\n".join(f"{o.case}: {o.status}: {o.reason}" for o in bugs)
    rejected = [o for o in outcomes if o.status == "unsupported"]
    if rejected:
        pytest.xfail(f"{len(rejected)}/{len(outcomes)} cases use unsupported features: "
                     + "; ".join(f"{o.case} ({o.reason})" for o in rejected))


def test_onnx_backend_pass_rate():
    outcomes = all_results()
    passed = sum(o.ok for o in outcomes)
    assert len(outcomes) > 500, f"only {len(outcomes)} in-scope cases collected"
    assert passed / len(outcomes) >= 0.85, f"{passed}/{len(outcomes)} in-scope ONNX backend cases pass"


@pytest.mark.parametrize("rounding", ["floor", "trunc"])
def test_integer_div_rounding_compiled_matches_interpreter(rounding):
    """div floors integers by default (PyTorch's //) and truncates with rounding="trunc" (ONNX Div):
    the compiled kernel and the numpy interpreter must agree on negative operands."""
    import tilecraft as tc
    from tilecraft.compiler.interpret import run_graph
    from tilecraft.compiler.ir import TensorType
    from tilecraft.frontends.builder import GraphBuilder

    b = GraphBuilder()
    x = b.add_input("x", TensorType((6,), "int64"))
    q = b.add("div", [x, b.const(np.array(3, dtype=np.int64))], "q", **({"rounding": rounding} if rounding == "trunc" else {}))
    graph = b.finish([q])
    feeds = {"x": np.array([-7, -6, -1, 0, 5, 7], dtype=np.int64)}
    want = np.trunc(feeds["x"] / 3).astype(np.int64) if rounding == "trunc" else feeds["x"] // 3
    np.testing.assert_array_equal(run_graph(graph, feeds)[0], want)
    np.testing.assert_array_equal(tc.compile(graph, target="llvm").run(feeds)["q"], want)


# --------------------------------------------------------------------------- report
# Where a failure comes from, when its message says so (report only; the tests judge the outcome).
KNOWN_CAUSES = (
    (r"element type (INT16|UINT16|UINT32|UINT64)\b", "compiler/ir.py DTYPES lacks this type (the frontend maps it)"),
    (r"element type|is a (sequence|optional)_type", "a type outside the IR's dtypes (float8/4, int4/2, bfloat16, string, sequence)"),
    (r"expect Tensor with ndim 0 but get 1", "compiler/module.py: np.ascontiguousarray turns a 0-d input into 1-d"),
    (r"shape \(1,\), expected \(\)", "compiler/build.py: np.ascontiguousarray turns a 0-d constant output into 1-d"),
    (r"Reshape expects the new shape", "compiler/build.py: relax.op.reshape reads a 0 in the target shape as 'copy this dim'"),
    (r"random mask", "needs NumPy's random generator state"),
    (r"^default schedule", "search/default_schedule.py (the unscheduled build is right)"),
)


def cause(outcome: Outcome) -> str:
    return next((why for pattern, why in KNOWN_CAUSES if re.search(pattern, outcome.reason)), "")


def write_report(path: str) -> None:
    t0 = time.time()
    outcomes = all_results()
    seconds = time.time() - t0
    passed = sum(o.ok for o in outcomes)
    lines = [
        "# ONNX backend node tests",
        "",
        "Generated by `python tests/test_onnx_backend.py --report bench/onnx_backend.md`; do not edit by hand.",
        "",
        f"ONNX backend node cases whose graph uses only claimed ops (`_expanded` cases counted under the op they "
        f"expand), imported with `tilecraft.frontends.onnx.from_onnx`, compiled with `tilecraft.compile(target='llvm')` "
        f"(default schedules), every data set compared with `assert_allclose(rtol={RTOL}, atol={ATOL})` "
        f"(bool and integer outputs exactly).",
        "",
        f"**{passed}/{len(outcomes)} cases pass ({100 * passed / max(len(outcomes), 1):.1f}%)**, "
        f"run in {seconds:.0f} s.",
        "",
        "| op | cases | pass | unsupported | wrong / crash |",
        "|---|---|---|---|---|",
    ]
    for op in CLAIMED_OPS:
        rs = results(op)
        n_pass = sum(o.ok for o in rs)
        n_uns = sum(o.status == "unsupported" for o in rs)
        lines.append(f"| {op} | {len(rs)} | {n_pass} | {n_uns} | {len(rs) - n_pass - n_uns} |")
    failures = [o for o in outcomes if not o.ok]
    lines += ["", f"## Failures ({len(failures)})", "", "| case | op | status | reason | cause |", "|---|---|---|---|---|"]
    for o in failures:
        reason = o.reason.replace("|", "\\|")
        lines.append(f"| {o.case} | {o.op} | {o.status} | {reason} | {cause(o)} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{passed}/{len(outcomes)} pass; report written to {path}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", default="bench/onnx_backend.md", help="markdown file to write")
    parser.add_argument("--op", action="append", help="only these ops (prints failures, no report)")
    args = parser.parse_args(argv)
    if args.op:
        for o in all_results(args.op):
            print(f"{o.status:12s} {o.case}  {o.reason}  {cause(o)}")
        return 0
    write_report(args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
