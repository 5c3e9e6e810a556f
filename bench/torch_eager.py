"""Run a tilecraft Graph op by op with PyTorch eager ops: the "PyTorch eager" baseline for
models we have as ONNX (torchvision cannot be installed beside the CPU torch wheel here).
It executes exactly the imported computation, with torch's own kernels (oneDNN, MKL)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from tilecraft.compiler.ir import Graph

DT = {"float32": torch.float32, "float16": torch.float16, "float64": torch.float64, "int64": torch.int64,
      "int32": torch.int32, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool}


def _conv(x, w, b=None, *, strides, pads, dilations, groups):
    pt, pl, pb, pr = pads
    if (pt, pl) != (pb, pr):
        x = F.pad(x, (pl, pr, pt, pb))
        pt = pl = 0
    return F.conv2d(x, w, b, stride=tuple(strides), padding=(pt, pl), dilation=tuple(dilations), groups=groups)


def _pool(x, *, kind, kernel, strides, pads, dilations, count_include_pad=False, ceil_extra=(0, 0), **_):
    pt, pl, pb, pr = pads
    if kind == "max":
        x = F.pad(x, (pl, max(pr, 0), pt, max(pb, 0)), value=float("-inf"))
        return F.max_pool2d(x, tuple(kernel), tuple(strides), dilation=tuple(dilations))
    if count_include_pad:
        x = F.pad(x, (pl, max(pr, 0), pt, max(pb, 0)))
        return F.avg_pool2d(x, tuple(kernel), tuple(strides))
    # average over the real pixels only: pool the padded input and a padded mask of ones
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype)
    pad = (pl, max(pr, 0), pt, max(pb, 0))
    num = F.avg_pool2d(F.pad(x, pad), tuple(kernel), tuple(strides), divisor_override=1)
    den = F.avg_pool2d(F.pad(ones, pad), tuple(kernel), tuple(strides), divisor_override=1)
    return num / den


def _reduce(x, *, kind, axes, keepdims=True):
    fn = {"sum": torch.sum, "mean": torch.mean, "max": torch.amax, "min": torch.amin}[kind]
    return fn(x, dim=tuple(axes), keepdim=keepdims)


def _slice(x, *, starts, ends, axes, steps):
    idx = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        idx[a] = slice(s, e, st)
    return x[tuple(idx)]


def _layer_norm(x, g, b=None, *, axis, epsilon):
    return F.layer_norm(x, x.shape[axis:], g, b, epsilon)


def _attention(q, k, v, mask=None, *, scale, causal=False):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)


OPS = {
    "relu": lambda x: torch.relu(x), "sigmoid": torch.sigmoid, "tanh": torch.tanh, "exp": torch.exp, "log": torch.log,
    "sqrt": torch.sqrt, "neg": torch.neg, "abs": torch.abs, "erf": torch.erf, "reciprocal": torch.reciprocal,
    "not": torch.logical_not, "floor": torch.floor, "ceil": torch.ceil, "sin": torch.sin, "cos": torch.cos,
    "clip": lambda x, min=None, max=None: torch.clamp(x, min, max),
    "leaky_relu": lambda x, alpha: F.leaky_relu(x, alpha), "hard_swish": F.hardswish, "silu": F.silu,
    "hard_sigmoid": lambda x, alpha, beta: torch.clamp(x * alpha + beta, 0, 1),
    "gelu": lambda x, approximate="none": F.gelu(x, approximate=approximate),
    "cast": lambda x, to: x.to(DT[to]),
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow, "minimum": torch.minimum,
    "maximum": torch.maximum, "equal": torch.eq, "less": torch.lt, "less_equal": torch.le, "greater": torch.gt,
    "greater_equal": torch.ge, "logical_and": torch.logical_and, "logical_or": torch.logical_or,
    "logical_xor": torch.logical_xor, "where": torch.where, "mod": torch.fmod,
    "matmul": lambda a, b, transpose_b=False: torch.matmul(a, b.transpose(-1, -2) if transpose_b else b),
    "conv2d": _conv, "pool2d": _pool, "reduce": _reduce,
    "softmax": lambda x, axis, log=False: (torch.log_softmax if log else torch.softmax)(x, axis),
    "layer_norm": _layer_norm, "reshape": lambda x, shape: x.reshape(shape), "transpose": lambda x, perm: x.permute(perm),
    "concat": lambda *xs, axis: torch.cat(xs, axis), "slice": _slice,
    "gather": lambda x, i, axis: torch.index_select(x, axis, i.reshape(-1)).reshape(x.shape[:axis] + i.shape + x.shape[axis + 1:]),
    "expand": lambda x, shape: x.expand(torch.broadcast_shapes(x.shape, shape)),
    "batch_norm": lambda x, s, b, m, v, epsilon: F.batch_norm(x, m, v, s, b, False, 0.0, epsilon),
    "attention": _attention,
}


class TorchEager:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.consts = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in graph.constants.items()}

    @torch.inference_mode()
    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        env = dict(self.consts)
        env.update({n: torch.from_numpy(feeds[n]) for n, _ in self.graph.inputs})
        for node in self.graph.nodes:
            env[node.name] = OPS[node.op](*[env[i] for i in node.inputs], **node.attr_dict)
        return [env[o].numpy() for o in self.graph.outputs]
