"""Graph -> Graph passes.  Each is a pure function; `pipeline.py` lists them in order."""

from __future__ import annotations

import dataclasses

import numpy as np

from .ir import Graph, Node, TensorType, values_read
from .ops import BINARY, UNARY, evaluate
from .ops_conv import pack_conv_weight

FOLD_LIMIT = 1 << 26  # elements: bigger constant results stay as run-time nodes


def _rebuild(graph: Graph, nodes: list[Node], constants: dict[str, np.ndarray], rename: dict[str, str] | None = None) -> Graph:
    rename = rename or {}

    def r(v: str) -> str:
        while v in rename:
            v = rename[v]
        return v

    nodes = [dataclasses.replace(n, inputs=tuple(r(i) for i in n.inputs)) for n in nodes]
    outputs = tuple(r(o) for o in graph.outputs)
    used = values_read(nodes) | set(outputs)
    return dataclasses.replace(
        graph, nodes=tuple(nodes), outputs=outputs, constants={k: v for k, v in constants.items() if k in used}
    )


def fold_constants(graph: Graph) -> Graph:
    """Evaluate nodes whose inputs are all constants (shape subgraphs, weight transposes)."""
    constants = dict(graph.constants)
    nodes = []
    for node in graph.nodes:
        if node.op != "fused" and node.inputs and all(i in constants for i in node.inputs) and node.type.size <= FOLD_LIMIT:
            constants[node.name] = np.asarray(evaluate(node.op, [constants[i] for i in node.inputs], node.attr_dict))
        else:
            nodes.append(node)
    return _rebuild(graph, nodes, constants)


def fold_batch_norm(graph: Graph) -> Graph:
    """conv2d -> batch_norm (constant statistics) becomes one conv2d with scaled weights and a bias;
    any other batch_norm with constant statistics becomes mul + add (elementwise, fusable)."""
    constants = dict(graph.constants)
    users = graph.consumers()
    producers = graph.node_map()
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op != "batch_norm" or not all(i in constants for i in node.inputs[1:]):
            nodes.append(node)
            continue
        scale, bias, mean, var = (constants[i].astype(np.float64) for i in node.inputs[1:])
        inv = scale / np.sqrt(var + node.attr("epsilon"))
        shift = bias - mean * inv
        dtype = node.type.dtype
        conv = producers.get(node.inputs[0])
        if (
            conv is not None
            and conv.op == "conv2d"
            and len(users.get(conv.name, [])) == 1
            and conv.name not in graph.outputs
            and all(i in constants for i in conv.inputs[1:])
        ):
            w = constants[conv.inputs[1]].astype(np.float64) * inv.reshape(-1, 1, 1, 1)
            b = shift + (constants[conv.inputs[2]].astype(np.float64) * inv if len(conv.inputs) > 2 else 0)
            w_name, b_name = node.name + ".folded_weight", node.name + ".folded_bias"
            constants[w_name], constants[b_name] = w.astype(dtype), b.astype(dtype)
            fused = dataclasses.replace(conv, name=node.name, inputs=(conv.inputs[0], w_name, b_name))
            nodes = [n for n in nodes if n.name != conv.name] + [fused]
            continue
        shape = (-1,) + (1,) * (node.type.ndim - 2)
        s_name, t_name, m_name = node.name + ".scale", node.name + ".shift", node.name + ".scaled"
        constants[s_name], constants[t_name] = inv.reshape(shape).astype(dtype), shift.reshape(shape).astype(dtype)
        x_t = node.type
        nodes.append(Node.make(m_name, "mul", [node.inputs[0], s_name], x_t))
        nodes.append(Node.make(node.name, "add", [m_name, t_name], x_t))
    return _rebuild(graph, nodes, constants)


def simplify(graph: Graph) -> Graph:
    """Drop no-op nodes: reshape to the same shape, cast to the same dtype, transpose by the identity,
    and collapse reshape(reshape(x))."""
    rename: dict[str, str] = {}
    producers: dict[str, Node] = {}
    nodes: list[Node] = []
    outputs = set(graph.outputs)

    def src_type(v: str) -> TensorType:
        return producers[v].type if v in producers else graph.type_of(v)

    for node in graph.nodes:
        node = dataclasses.replace(node, inputs=tuple(rename.get(i, i) for i in node.inputs))
        src = node.inputs[0] if node.inputs else None
        noop = (
            (node.op == "reshape" and src_type(src).shape == node.type.shape)
            or (node.op == "cast" and src_type(src).dtype == node.type.dtype)
            or (node.op == "transpose" and tuple(node.attr("perm")) == tuple(range(node.type.ndim)))
        )
        if noop and node.name not in outputs:
            rename[node.name] = src
            continue
        if node.op == "reshape" and src in producers and producers[src].op == "reshape":
            node = dataclasses.replace(node, inputs=producers[src].inputs)
        producers[node.name] = node
        nodes.append(node)
    return _rebuild(graph, nodes, dict(graph.constants), rename)


def eliminate_dead_code(graph: Graph) -> Graph:
    live = set(graph.outputs)
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if node.name in live:
            kept.append(node)
            live.update(node.inputs)
    return _rebuild(graph, kept[::-1], dict(graph.constants))


# A 1x1 conv of few input channels over a large map runs as W[O, C] @ x[C, H*W]: vectorized along
# the pixels, with the output already in NCHW order.  The packed-weight conv (vectorized along output
# channels) accumulates only C products per output before its NCHWc -> NCHW write-back, which then
# dominates.  `python bench/conv1x1.py` (tuned, 32 trials each form): matmul form 2.24x at 16->96 on
# 112x112, 2.42x at 24->144 on 56x56, 1.43x at 32->192 on 28x28, 2.12x at 64->384 on 28x28; the conv
# form wins on 14x14 and 7x7 maps and with >= 96 input channels (0.65x-0.97x for the matmul form).
MATMUL_CONV_MAX_CHANNELS = 64
MATMUL_CONV_MIN_PIXELS = 28 * 28


def conv1x1_as_matmul(graph: Graph, *, block: int) -> Graph:
    """Rewrite eligible 1x1 convs (stride 1, no padding, one group, constant weight, batch 1, at most
    MATMUL_CONV_MAX_CHANNELS input channels, at least MATMUL_CONV_MIN_PIXELS pixels) with their
    elementwise epilogue chain (bias, activations, per-channel constants) as

        reshape(x, [C, H*W]) -> matmul(W[O, C], .) [-> add(bias[O, 1])] [-> epilogue in 2-D] -> reshape to NCHW

    The reshapes are free (no kernel); the last one keeps the chain's value name, so consumers are
    unchanged.  A bottleneck kernel stays as it is; its unfused alternative (`parts`) is rewritten
    the same way, so the build's fused-or-parts choice weighs the faster parts.
    `block` is pack_weights' vector width: 0 (GPU, ARM) leaves the graph as it is."""
    if block <= 0:
        return graph
    constants = dict(graph.constants)
    nodes = []
    for node in graph.nodes:
        if node.op == "fused" and node.attr("parts"):  # a bottleneck chain's unfused alternative
            parts = [new for part in node.attr("parts") for new in _part_as_matmul(part, constants)]
            node = node.with_attrs(parts=tuple(parts))
        nodes.append(node)
    return _convs_as_matmuls(dataclasses.replace(graph, nodes=tuple(nodes), constants=constants))


def _part_as_matmul(part: Node, constants: dict[str, np.ndarray]) -> list[Node]:
    """A bottleneck part (one fused conv group) rewritten like a top-level conv, as its fused groups:
    [reshape x, matmul + epilogue, reshape back] (the reshapes cost no kernel).  New constants go
    into `constants`."""
    from .fusion import fuse_epilogues  # fusion imports nothing from here; kept local for the read order

    body: Graph = part.attr("body")
    if sum(n.op == "conv2d" for n in body.nodes) != 1:
        return [part]
    outer = {n: constants[n] for n, _ in body.inputs if n in constants}
    mini = Graph(inputs=tuple((n, t) for n, t in body.inputs if n not in outer), nodes=body.nodes,
                 outputs=body.outputs, constants={**body.constants, **outer}, name=body.name)
    rewritten = _convs_as_matmuls(mini)
    if rewritten is mini:
        return [part]
    constants.update(rewritten.constants)
    return list(fuse_epilogues(rewritten).nodes)


def _convs_as_matmuls(graph: Graph) -> Graph:
    constants = dict(graph.constants)
    users = graph.consumers()
    outputs = set(graph.outputs)
    absorbed: set[str] = set()
    nodes: list[Node] = []
    rewritten = False

    def eligible(node: Node) -> bool:
        if node.op != "conv2d" or node.attr("weight_layout") or node.attr("groups", 1) != 1 or len(node.inputs) < 2:
            return False
        w = constants.get(node.inputs[1])
        x = graph.type_of(node.inputs[0])
        return (
            w is not None and w.ndim == 4 and w.shape[2:] == (1, 1) and x.ndim == 4 and x.shape[0] == 1
            and x.dtype == "float32" and tuple(node.attr("strides", (1, 1))) == (1, 1)
            and tuple(node.attr("dilations", (1, 1))) == (1, 1) and not any(node.attr("pads", (0, 0, 0, 0)))
            and x.shape[1] <= MATMUL_CONV_MAX_CHANNELS and x.shape[2] * x.shape[3] >= MATMUL_CONV_MIN_PIXELS
            and (len(node.inputs) < 3 or node.inputs[2] in constants)
        )

    def as_2d(value: str, o: int) -> str | None:
        """A constant operand of the epilogue in the [O, H*W] form: a scalar or one value per channel."""
        c = constants.get(value)
        if c is None:
            return None
        if c.size == 1:
            shaped = c.reshape(())
        elif c.shape in ((o, 1, 1), (1, o, 1, 1)):
            shaped = c.reshape(o, 1)
        else:
            return None
        name = f"{value}.2d"
        constants[name] = np.ascontiguousarray(shaped)
        return name

    for node in graph.nodes:
        if node.name in absorbed:
            continue
        if not eligible(node):
            nodes.append(node)
            continue
        rewritten = True
        x, w = node.inputs[:2]
        _, c, h, wd = graph.type_of(x).shape
        o, pixels = node.type.shape[1], h * wd
        flat = TensorType((o, pixels), node.type.dtype)
        constants[f"{w}.2d"] = np.ascontiguousarray(constants[w].reshape(o, c))
        nodes.append(Node.make(f"{node.name}.x2d", "reshape", [x], TensorType((c, pixels), node.type.dtype), shape=(c, pixels)))
        current = Node.make(f"{node.name}.2d", "matmul", [f"{w}.2d", f"{node.name}.x2d"], flat)
        nodes.append(current)
        if len(node.inputs) > 2:  # the conv's bias [O]: one value per row
            bias = f"{node.inputs[2]}.col"
            constants[bias] = np.ascontiguousarray(constants[node.inputs[2]].reshape(o, 1))
            current = Node.make(f"{node.name}.bias2d", "add", [current.name, bias], flat)
            nodes.append(current)
        last = node
        while last.name not in outputs and len(users.get(last.name, [])) == 1:
            nxt = users[last.name][0]
            if nxt.op in UNARY and len(nxt.inputs) == 1:
                inputs = (current.name,)
            elif nxt.op in BINARY and len(nxt.inputs) == 2 and nxt.type.shape == last.type.shape:
                other = nxt.inputs[1] if nxt.inputs[0] == last.name else nxt.inputs[0]
                other_2d = as_2d(other, o) if other != last.name else None
                if other_2d is None:
                    break
                inputs = (current.name, other_2d) if nxt.inputs[0] == last.name else (other_2d, current.name)
            else:
                break
            current = dataclasses.replace(nxt, name=f"{nxt.name}.2d", inputs=inputs, type=TensorType((o, pixels), nxt.type.dtype))
            nodes.append(current)
            absorbed.add(nxt.name)
            last = nxt
        nodes.append(Node.make(last.name, "reshape", [current.name], last.type, shape=last.type.shape))
    if not rewritten:
        return graph
    used = values_read(nodes) | set(graph.outputs)
    return dataclasses.replace(graph, nodes=tuple(nodes), constants={k: v for k, v in constants.items() if k in used})


def pack_weights(graph: Graph, *, block: int) -> Graph:
    """Constant weights re-laid out at compile time so that kernels vectorize along output channels
    with one contiguous vector load per weight element row, as MLAS (and TVM's NCHWc convs) do:

      conv2d (one group):  OIHW -> OIHW{b}o = [O/b, I, KH, KW, b]
      matmul (2-D weight): [K, N] (or [N, K] with transpose_b) -> KN{b}n = [N/b, K, b]

    A conv's activations stay NCHW whatever the image width (a 7x7 map would fill only 7 of 16
    lanes along the width); a matmul's weight panel is read as one sequential stream instead of
    K rows N floats apart.  The lowering computes an out-channel-blocked tile and writes it back
    in the plain layout.  Measured after equal trials: ResNet-18's 3x3 convs 180-217 GFLOP/s
    against 137-154 with OIHW weights; GPT-2's 128x768x3072 matmul 248 against 222.
    A bottleneck's fused kernel keeps OIHW; its unfused parts (the alternative the build may
    choose) are packed like any conv.  `block` is the target's fp32 vector width; 0: no change."""
    if block <= 0:
        return graph
    constants = dict(graph.constants)

    def packed_weight(node: Node) -> str | None:
        """The packed constant for this node's weight (made once, shared), or None if it stays as is."""
        weight = node.inputs[1] if node.op in ("conv2d", "matmul") and len(node.inputs) > 1 else None
        w = constants.get(weight) if weight is not None else None
        if w is None or node.attr("weight_layout"):
            return None
        if node.op == "conv2d" and (node.attr("groups", 1) != 1 or w.ndim != 4 or w.shape[0] % block):
            return None
        if node.op == "matmul" and (w.ndim != 2 or node.type.shape[-1] % block):
            return None
        name = f"{weight}.{_layout(node, block)}"
        if name not in constants:
            if node.op == "conv2d":
                packed = pack_conv_weight(w, block)
            else:
                kn = w.T if node.attr("transpose_b") else w
                packed = kn.reshape(kn.shape[0], kn.shape[1] // block, block).transpose(1, 0, 2)
            constants[name] = np.ascontiguousarray(packed)
        return name

    def pack(node: Node, name: str) -> Node:
        inputs = (node.inputs[0], name, *node.inputs[2:])
        node = dataclasses.replace(node, inputs=inputs).with_attrs(weight_layout=_layout(node, block))
        return node.with_attrs(transpose_b=False) if node.op == "matmul" else node

    def pack_part(part: Node) -> Node:
        body: Graph = part.attr("body")
        conv = next((n for n in body.nodes if n.op == "conv2d"), None)
        name = packed_weight(conv) if conv is not None else None
        if name is None:
            return part
        weight = conv.inputs[1]
        w_type = TensorType(tuple(int(d) for d in constants[name].shape), str(constants[name].dtype))
        body = dataclasses.replace(
            body,
            inputs=tuple((name, w_type) if n == weight else (n, t) for n, t in body.inputs),
            nodes=tuple(pack(n, name) if n is conv else n for n in body.nodes),
        )
        return dataclasses.replace(part, inputs=tuple(name if i == weight else i for i in part.inputs)).with_attrs(body=body)

    nodes: list[Node] = []
    for node in graph.nodes:
        if node.op == "fused" and node.attr("parts"):
            node = node.with_attrs(parts=tuple(pack_part(p) for p in node.attr("parts")))
        else:
            name = packed_weight(node)
            node = pack(node, name) if name is not None else node
        nodes.append(node)
    used = values_read(nodes) | set(graph.outputs)
    return dataclasses.replace(graph, nodes=tuple(nodes), constants={k: v for k, v in constants.items() if k in used})


def _layout(node: Node, block: int) -> str:
    return f"OIHW{block}o" if node.op == "conv2d" else f"KN{block}n"
