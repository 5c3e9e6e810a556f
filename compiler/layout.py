"""NCHWc activations: convs and their elementwise epilogues keep feature maps as [N, C/b, H, W, b]
between them, the layout MLAS (ONNX Runtime) and TVM's x86 conv schedules use.

In NCHW a conv vectorized along output channels writes each vector back as a 16-lane transpose,
and a depthwise conv can only vectorize along the width (7 of 16 lanes on a 7x7 map, a gather
at stride 2).  In NCHWc every conv reads and writes whole channel vectors, and the layout changes
only where the chain meets an op that stays NCHW (a global reduce, flatten, the graph's outputs).

`to_nchwc` rewrites
  conv2d (one group, or depthwise: groups = in = out channels) with a constant weight
      -> conv2d_nchwc, weights packed here (see ops_conv.py for the layouts), channels padded to b;
      a 3x3 stride-1 conv on a large NCHWc map -> three Winograd kernels (winograd.py)
  an elementwise op whose tensor operands are all NCHWc values of its own shape (scalar constants
      may join) and that maps finite values to finite values -> the same op on the 5-D values
  max / average pooling of an NCHWc value -> the same pooling on the 5-D value
and converts at the borders: `to_nchwc` before a depthwise conv whose input is NCHW (a dense conv
reads NCHW input directly: the 3-channel stem would waste 13 of 16 lanes), `from_nchwc` wherever an
NCHW consumer or a graph output reads a rewritten value.  That node takes the value's old name, so
the rest of the graph is untouched.  Padded channels: zero weights and zero bias make them
epilogue(0), finite, and every later conv multiplies them by zero weights.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .ir import Graph, Node, TensorType, values_read
from . import winograd
from .ops import infer_type
from .ops_conv import pack_conv_weight

# elementwise ops that keep finite values finite (log(0) or 1/0 in a padded channel would become
# NaN after the next conv's 0 * inf)
FINITE_ELEMENTWISE = frozenset({
    "add", "sub", "mul", "maximum", "minimum", "relu", "clip", "leaky_relu", "sigmoid", "tanh",
    "hard_sigmoid", "hard_swish", "silu", "gelu", "neg", "abs",
})


def to_nchwc(graph: Graph, *, block: int, winograd_convs: bool = True) -> Graph:
    """Rewrite convs and their epilogues to NCHWc with `block` channels per vector; 0: no change.
    `winograd_convs`: 3x3 stride-1 convs on large NCHWc maps as Winograd kernels (compiler/winograd.py)."""
    if block <= 0 or not any(_convertible_conv(n, graph) for n in graph.nodes):
        return graph
    constants = dict(graph.constants)
    blocked: dict[str, str] = {}  # NCHW value -> its NCHWc twin
    replaced: dict[str, TensorType] = {}  # rewritten NCHW values (their NCHW form only on demand)
    nodes: list[Node] = []

    def as_blocked(value: str) -> str:
        if value not in blocked:
            name = f"{value}.nchwc"
            nodes.append(Node.make(name, "to_nchwc", [value], _blocked_type(graph.type_of(value), block), block=block))
            blocked[value] = name
        return blocked[value]

    def as_plain(value: str) -> str:
        if value in replaced:
            t = replaced.pop(value)
            nodes.append(Node.make(value, "from_nchwc", [blocked[value]], t, channels=t.shape[1]))
        return value

    for node in graph.nodes:
        if _convertible_conv(node, graph):
            *before, new = _conv(node, graph, constants, blocked, as_blocked, block, winograd_convs)
            nodes.extend(before)
        elif _convertible_elementwise(node, graph, blocked) or (
                node.op == "pool2d" and node.attr("kind") in ("max", "avg") and node.inputs[0] in blocked):
            inputs = [blocked.get(i, i) for i in node.inputs]
            n, c, h, w = node.type.shape
            t = TensorType((n, -(-c // block), h, w, block), node.type.dtype)
            new = dataclasses.replace(node, name=f"{node.name}.nchwc", inputs=tuple(inputs), type=t)
        else:
            nodes.append(dataclasses.replace(node, inputs=tuple(as_plain(i) for i in node.inputs)))
            continue
        nodes.append(new)
        blocked[node.name] = new.name
        replaced[node.name] = node.type
    for value in graph.outputs:
        as_plain(value)
    used = values_read(nodes) | set(graph.outputs)
    return dataclasses.replace(graph, nodes=tuple(nodes), constants={k: v for k, v in constants.items() if k in used})


def _convertible_conv(node: Node, graph: Graph) -> bool:
    if node.op != "conv2d" or node.attr("weight_layout") or node.type.dtype != "float32":
        return False
    w = graph.constants.get(node.inputs[1])
    if w is None or w.ndim != 4 or (len(node.inputs) > 2 and node.inputs[2] not in graph.constants):
        return False
    groups, c_in = node.attr("groups", 1), graph.type_of(node.inputs[0]).shape[1]
    return groups == 1 or (groups == c_in == w.shape[0] and w.shape[1] == 1)


def _convertible_elementwise(node: Node, graph: Graph, blocked: dict[str, str]) -> bool:
    if node.op not in FINITE_ELEMENTWISE or node.type.ndim != 4 or node.type.dtype != "float32":
        return False
    tensors = [i for i in node.inputs if not (i in graph.constants and graph.constants[i].size == 1)]
    return bool(tensors) and all(i in blocked and graph.type_of(i).shape == node.type.shape for i in tensors)


def _conv(node: Node, graph: Graph, constants: dict, blocked: dict[str, str], as_blocked, block: int,
          winograd_convs: bool) -> list[Node]:
    """conv2d -> conv2d_nchwc with its weight (and bias) packed for the input's layout, or the
    three Winograd kernels; the last node writes the conv's NCHWc value."""
    w = graph.constants[node.inputs[1]]
    tile = winograd_convs and node.inputs[0] in blocked and winograd.tile_for(
        _blocked_type(graph.type_of(node.inputs[0]), block).shape, w.shape, node.attr_dict, node.type.shape)
    if tile:
        return _winograd(node, graph, constants, blocked, block, tile)
    o, c, kh, kw = w.shape
    ob = -(-o // block)
    w = np.pad(w, ((0, ob * block - o), (0, 0), (0, 0), (0, 0)))  # zero output channels up to the block
    depthwise = node.attr("groups", 1) != 1
    x = node.inputs[0]
    if depthwise:
        x, layout = as_blocked(x), "dw"
        packed = w[:, 0].reshape(ob, block, kh, kw).transpose(0, 2, 3, 1)
    elif x in blocked:
        x, layout = blocked[x], "blocked"
        cb = -(-c // block)
        w = np.pad(w, ((0, 0), (0, cb * block - c), (0, 0), (0, 0)))
        packed = w.reshape(ob, block, cb, block, kh, kw).transpose(0, 2, 4, 5, 3, 1)
    else:
        layout, packed = "plain", pack_conv_weight(w, block)
    w_name = f"{node.inputs[1]}.nchwc{block}{layout}"
    constants.setdefault(w_name, np.ascontiguousarray(packed))
    inputs = [x, w_name]
    if len(node.inputs) > 2:
        inputs.append(_packed_bias(node, graph, constants, block))
    n, _, oh, ow = node.type.shape
    attrs = {k: v for k, v in node.attr_dict.items() if k != "groups"}
    return [Node.make(f"{node.name}.nchwc", "conv2d_nchwc", inputs, TensorType((n, ob, oh, ow, block), node.type.dtype),
                      **attrs, **({"depthwise": True} if depthwise else {}))]


def _packed_bias(node: Node, graph: Graph, constants: dict, block: int) -> str:
    """A conv's bias as [O/b, b], zeros in the padded channels; returns its constant's name."""
    bias = graph.constants[node.inputs[2]].reshape(-1)
    ob = -(-bias.size // block)
    name = f"{node.inputs[2]}.nchwc{block}"
    constants.setdefault(name, np.pad(bias, (0, ob * block - bias.size)).reshape(ob, block))
    return name


def _blocked_type(t: TensorType, block: int) -> TensorType:
    n, c, h, w = t.shape
    return TensorType((n, -(-c // block), h, w, block), t.dtype)


def _winograd(node: Node, graph: Graph, constants: dict, blocked: dict[str, str], block: int, tile: int) -> list[Node]:
    """The conv as winograd_input -> winograd_gemm -> winograd_output (weights transformed here)."""
    w = graph.constants[node.inputs[1]]
    bt, _, at = winograd.MATRICES[tile]
    bt_name, at_name = f"winograd{tile}.BT", f"winograd{tile}.AT"
    constants.setdefault(bt_name, bt.astype(np.float32))
    constants.setdefault(at_name, at.astype(np.float32))
    u_name = f"{node.inputs[1]}.winograd{tile}x{block}"
    constants.setdefault(u_name, winograd.transform_weight(w, block, tile))
    x = blocked[node.inputs[0]]
    x_type = _blocked_type(graph.type_of(node.inputs[0]), block)
    v_type = infer_type("winograd_input", [x_type, TensorType(bt.shape, "float32")], {})
    v = Node.make(f"{node.name}.wino_v", "winograd_input", [x, bt_name], v_type)
    u_type = TensorType(constants[u_name].shape, "float32")
    m = Node.make(f"{node.name}.wino_m", "winograd_gemm", [v.name, u_name],
                  infer_type("winograd_gemm", [v_type, u_type], {}))
    inputs = [m.name, at_name]
    if len(node.inputs) > 2:
        inputs.append(_packed_bias(node, graph, constants, block))
    out = Node.make(f"{node.name}.nchwc", "winograd_output", inputs,
                    infer_type("winograd_output", [m.type, TensorType(at.shape, "float32")], {"block": block}), block=block)
    return [v, m, out]
