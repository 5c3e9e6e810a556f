"""PyTorch -> tilecraft Graph, through torch.export and core ATen.

`from_torch` exports a module with `torch.export.export`, decomposes it to core ATen
(keeping scaled_dot_product_attention whole, so it maps onto our fused `attention`)
and translates each `call_function` node with a GraphBuilder.  Parameters, buffers
and lifted constants become numpy constants; user inputs keep the example inputs'
static shapes.  Every converted value is checked against the shape torch recorded
in `node.meta["val"]`, and cast to torch's dtype where type promotion changed it.

torch is optional: it is imported only when a function here is called.  The per-op converters
live in torch_converters.py; this file is the driver (export, decompose, check, translate).
"""

from __future__ import annotations

import dataclasses
import operator
import os
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..compiler.ir import Graph, TensorType
from ..errors import ModelLoadError, ShapeError, TilecraftError, UnsupportedOpError
from .builder import GraphBuilder

if TYPE_CHECKING:  # pragma: no cover
    import torch

TORCH_DTYPES = {
    "torch.float32": "float32", "torch.float16": "float16", "torch.float64": "float64", "torch.int64": "int64",
    "torch.int32": "int32", "torch.int8": "int8", "torch.uint8": "uint8", "torch.bool": "bool",
}
# Fused attention kernels that core ATen would otherwise decompose into matmul + softmax.
ATTENTION_OPS = (
    "aten.scaled_dot_product_attention.default", "aten._scaled_dot_product_flash_attention_for_cpu.default",
    "aten._scaled_dot_product_attention_math.default", "aten._scaled_dot_product_efficient_attention.default",
    "aten._scaled_dot_product_flash_attention.default", "aten._scaled_dot_product_cudnn_attention.default",
)


def _require_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("tilecraft's PyTorch frontend needs torch (pip install 'tilecraft[torch]')") from e
    return torch


def _dtype(torch_dtype) -> str:
    dtype = TORCH_DTYPES.get(str(torch_dtype))
    if dtype is None:
        raise UnsupportedOpError(f"dtype {torch_dtype} is not supported (supported: {', '.join(TORCH_DTYPES.values())})")
    return dtype


def _tensor_type(val, what: str) -> TensorType:
    shape = tuple(val.shape)
    if not all(isinstance(d, int) for d in shape):
        raise ShapeError(f"{what} has dynamic shape {tuple(str(d) for d in shape)}; export with static shapes")
    return TensorType(shape, _dtype(val.dtype))


def _op_name(target) -> str:
    return str(target) if hasattr(target, "_schema") else getattr(target, "__name__", str(target))


def _axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


class Ctx:
    """What a converter sees: the builder, the FX node, its arguments bound by the op's schema
    (defaults filled in) and helpers that turn them into our values."""

    def __init__(self, builder: GraphBuilder, node, env: dict[str, Any], torch):
        self.b, self.node, self.env, self.torch = builder, node, env, torch
        self.name = node.name
        self.args: dict[str, Any] = {}
        for k, a in enumerate(node.target._schema.arguments):
            if k < len(node.args) and not a.kwarg_only:
                self.args[a.name] = node.args[k]
            elif a.name in node.kwargs:
                self.args[a.name] = node.kwargs[a.name]
            else:
                self.args[a.name] = a.default_value if a.has_default_value() else None

    def fail(self, why: str) -> TilecraftError:
        return UnsupportedOpError(f"{_op_name(self.node.target)} (node {self.name!r}): {why}")

    def is_tensor(self, value) -> bool:
        return isinstance(value, self.torch.fx.Node)

    def arg(self, key: str):
        return self.args[key]

    def tensor(self, key_or_node) -> str:
        node = self.args[key_or_node] if isinstance(key_or_node, str) else key_or_node
        if not self.is_tensor(node):
            raise self.fail(f"argument {key_or_node!r} must be a tensor, got {node!r}")
        value = self.env[node.name]
        if not isinstance(value, str):
            raise self.fail(f"argument {node.name!r} is not a single tensor")
        return value

    def opt_tensor(self, key: str) -> str | None:
        return None if self.args[key] is None else self.tensor(key)

    @property
    def out_type(self) -> TensorType:
        """torch's recorded type of the (first) output."""
        val = self.node.meta["val"]
        return _tensor_type(val[0] if isinstance(val, (tuple, list)) else val, f"node {self.name!r}")

    @property
    def out_shape(self) -> tuple[int, ...]:
        return self.out_type.shape

    def shape(self, value: str) -> tuple[int, ...]:
        return self.b.shape(value)

    def add(self, op: str, inputs: list[str], suffix: str = "", **attrs) -> str:
        return self.b.add(op, inputs, self.name + suffix, **attrs)

    def const(self, value, dtype: str, suffix: str = "_c") -> str:
        return self.b.const(np.asarray(value, dtype=dtype), self.name + suffix)

    def cast(self, value: str, dtype: str) -> str:
        return value if self.b.type(value).dtype == dtype else self.add("cast", [value], "_cast", to=dtype)

    def operand(self, key_or_value, dtype: str) -> str:
        """A tensor argument cast to `dtype`, or a Python scalar as a 0-d constant of `dtype`."""
        value = self.args[key_or_value] if isinstance(key_or_value, str) and key_or_value in self.args else key_or_value
        if self.is_tensor(value):
            return self.cast(self.tensor(value), dtype)
        if isinstance(value, (bool, int, float)):
            return self.const(value, dtype, "_scalar")
        raise self.fail(f"operand {value!r} is neither a tensor nor a number")

    def reshape_to_out(self, value: str, suffix: str = "") -> str:
        shape = self.out_shape
        return value if self.shape(value) == shape else self.add("reshape", [value], suffix, shape=shape)

    def promoted(self, *keys: str) -> str:
        """torch's type promotion of the named operands (0-d tensors count as scalars, as in torch)."""
        probes = []
        for k in keys:
            v = self.args[k]
            if self.is_tensor(v):
                val = v.meta["val"]
                probes.append(self.torch.empty((1,) * val.ndim, dtype=val.dtype))
            else:
                probes.append(v)
        if not any(isinstance(p, self.torch.Tensor) for p in probes):
            raise self.fail("needs at least one tensor operand")
        return _dtype(self.torch.result_type(*probes))


Converter = Callable[[Ctx], Any]  # returns a value name, a tuple of them (None = unused output) or None
CONVERTERS: dict[str, Converter] = {}


def converter(*names: str):
    """Register for exact overloads ("aten.add.Tensor") or every overload of a packet ("aten.add")."""

    def deco(fn):
        for name in names:
            CONVERTERS[name] = fn
        return fn

    return deco


def find_converter(target) -> Converter | None:
    from . import torch_converters  # noqa: F401  (registers every converter on first use)

    if not hasattr(target, "_schema"):
        return None
    return CONVERTERS.get(str(target)) or CONVERTERS.get(str(target.overloadpacket))


# =========================================================================== driver
def _decompose(ep):
    """Core ATen, except that fused attention stays whole."""
    torch = _require_torch()
    table = torch.export.default_decompositions()
    for op in [op for op in table if str(op) in ATTENTION_OPS]:
        del table[op]
    return ep.run_decompositions(table)


def _check_supported(ep) -> None:
    missing = []
    for n in ep.graph.nodes:
        if n.op == "call_function" and n.target is not operator.getitem and find_converter(n.target) is None:
            what = _op_name(n.target)
            if what == "with_effects" and len(n.args) > 1:  # effectful op wrapper: name the op inside
                what = f"with_effects({_op_name(n.args[1])})"
            missing.append(f"{what} (node {n.name!r})")
        elif n.op in ("call_module", "call_method", "get_attr"):
            missing.append(f"{n.op} {n.target} (node {n.name!r})")
    if missing:
        raise UnsupportedOpError(f"unsupported ATen op(s): {', '.join(missing)}")


def _add_inputs(ep, b: GraphBuilder, env: dict[str, Any]) -> None:
    from torch.export.graph_signature import InputKind

    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    specs = ep.graph_signature.input_specs
    for spec in specs:  # user inputs first, so they keep their names
        if spec.kind == InputKind.USER_INPUT:
            node = placeholders[spec.arg.name]
            val = node.meta.get("val")
            if not hasattr(val, "shape"):
                raise UnsupportedOpError(f"user input {node.name!r} is not a tensor ({type(val).__name__})")
            env[node.name] = b.add_input(b.fresh(node.name), _tensor_type(val, f"input {node.name!r}"))
    for spec in specs:
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            tensor = ep.state_dict[spec.target] if spec.target in ep.state_dict else ep.constants[spec.target]
            _dtype(tensor.dtype)
            array = tensor.detach().cpu().numpy().copy()  # the graph must not alias the module's memory
            env[spec.arg.name] = b.alias_const(b.fresh(spec.target), array)
        elif spec.kind == InputKind.TOKEN:
            env[spec.arg.name] = None
        elif spec.kind != InputKind.USER_INPUT:
            raise UnsupportedOpError(f"input {spec.arg.name!r} of kind {spec.kind.name} is not supported")


def _conform(c: Ctx, out):
    """Check our value against torch's recorded shape, and adopt torch's dtype."""
    meta = c.node.meta.get("val")
    if isinstance(out, tuple):
        return tuple(v if v is None else _conform_one(c, v, m, k) for k, (v, m) in enumerate(zip(out, meta)))
    return out if out is None else _conform_one(c, out, meta, None)


def _conform_one(c: Ctx, value: str, meta, index: int | None) -> str:
    want = _tensor_type(meta, f"node {c.name!r}")
    got = c.b.type(value)
    if got.shape != want.shape:
        where = c.name if index is None else f"{c.name}[{index}]"
        raise ShapeError(f"{_op_name(c.node.target)} (node {where!r}): converted to {got}, torch says {want}")
    return c.cast(value, want.dtype)


def _convert(ep, name: str) -> Graph:
    torch = _require_torch()
    from torch.export.graph_signature import OutputKind

    b = GraphBuilder(name)
    env: dict[str, Any] = {}
    _add_inputs(ep, b, env)  # first: a dynamic input shape explains the sym_size ops it brings
    _check_supported(ep)
    for n in ep.graph.nodes:
        if n.op != "call_function":
            continue
        if n.target is operator.getitem:
            src, index = n.args
            value = env[src.name][index]
            if value is None:
                raise UnsupportedOpError(f"output {index} of node {src.name!r} ({_op_name(src.target)}) is not supported")
            env[n.name] = value
            continue
        c = Ctx(b, n, env, torch)
        try:
            env[n.name] = _conform(c, find_converter(n.target)(c))
        except TilecraftError as e:
            if isinstance(e, UnsupportedOpError) or str(e).startswith(_op_name(n.target)):
                raise
            raise type(e)(f"{_op_name(n.target)} (node {n.name!r}): {e}") from None
    outputs = []
    for spec in ep.graph_signature.output_specs:
        if spec.kind != OutputKind.USER_OUTPUT:
            continue  # tokens and buffer mutations have no place in an inference graph
        value = env.get(getattr(spec.arg, "name", None))
        if not isinstance(value, str):
            raise UnsupportedOpError(f"output {spec.arg} is not a tensor")
        outputs.append(value)
    return _prune(b.finish(outputs))


def _prune(graph: Graph) -> Graph:
    """Drop nodes no output depends on (the unused chunks of a split, say)."""
    live, keep = set(graph.outputs), []
    for node in reversed(graph.nodes):
        if node.name in live:
            keep.append(node)
            live.update(node.inputs)
    constants = {k: v for k, v in graph.constants.items() if k in live}
    return dataclasses.replace(graph, nodes=tuple(reversed(keep)), constants=constants)


def from_exported_program(ep: "torch.export.ExportedProgram", *, name: str = "main") -> Graph:
    """Import a torch.export ExportedProgram (decomposed to core ATen here) into a tilecraft Graph."""
    _require_torch()
    return _convert(_decompose(ep), name)


def from_torch(module: "torch.nn.Module", example_inputs: tuple, *, name: str = "main") -> Graph:
    """Export `module` in eval mode with `example_inputs` (their shapes become the graph's) and import it."""
    torch = _require_torch()
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    try:
        ep = torch.export.export(module.eval(), tuple(example_inputs))
    except Exception as e:  # torch.export raises many types (UserError, RuntimeError, ...) for untraceable code
        first = str(e).strip().splitlines()[0] if str(e).strip() else "no detail"
        raise ModelLoadError(f"torch.export failed ({type(e).__name__}: {first})") from e
    return from_exported_program(ep, name=name)


def load_pt2(path: str | os.PathLike, *, name: str = "main") -> Graph:
    """Import an ExportedProgram saved with `torch.export.save`; input shapes come from the program."""
    torch = _require_torch()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"model file not found: {path}")
    try:
        ep = torch.export.load(path)
    except Exception as e:  # zipfile, pickle and schema errors all mean "not a readable .pt2"
        raise ModelLoadError(f"{path} is not a readable torch.export program ({type(e).__name__}: {e})") from None
    return from_exported_program(ep, name=name)
