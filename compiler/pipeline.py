"""The compiler's pass pipeline, in order, on one screen."""

from __future__ import annotations

import functools
from typing import Callable

from .fusion import fuse_epilogues
from .fusion_attention import fuse_attention
from .fusion_bottleneck import fuse_bottleneck
from .ir import Graph, verify
from .layout import to_nchwc
from .passes import conv1x1_as_matmul, eliminate_dead_code, fold_batch_norm, fold_constants, pack_weights, simplify

Pass = Callable[[Graph], Graph]

PIPELINE: tuple[tuple[str, Pass], ...] = (
    ("fold_constants", fold_constants),
    ("fold_batch_norm", fold_batch_norm),
    ("fold_constants_after_bn", fold_constants),
    ("simplify", simplify),
    ("eliminate_dead_code", eliminate_dead_code),
    ("fuse_attention", fuse_attention),
    ("to_nchwc", to_nchwc),  # x86: convs and their epilogues in NCHWc (off: nchwc_block=0), large 3x3 as Winograd
    ("fuse_bottleneck", fuse_bottleneck),  # before fuse_epilogues: it groups its chains' epilogues itself
    ("conv1x1_as_matmul", conv1x1_as_matmul),  # few-channel 1x1 convs outside bottleneck chains (x86)
    ("pack_weights", pack_weights),  # convs outside bottleneck chains; needs the target's vector width
    ("fuse_epilogues", fuse_epilogues),
)

FUSION_PASSES = {"fuse_attention": "attention", "fuse_bottleneck": "bottleneck", "fuse_epilogues": "epilogue"}


def optimize(graph: Graph, *, no_fuse: frozenset[str] = frozenset(), verify_each: bool = False,
             weight_block: int = 0, nchwc_block: int = 0, winograd: bool = True) -> Graph:
    """Run the pipeline.  `no_fuse` names fusions to switch off ("epilogue", "attention", "bottleneck")
    for ablation; the unfused ops then become one kernel each.  `weight_block` is the target's
    fp32 vector width for pack_weights and conv1x1_as_matmul (0: neither, the target-independent graph);
    `nchwc_block` the channel block of NCHWc activations (0: feature maps stay NCHW); `winograd`:
    3x3 convs on large NCHWc maps as Winograd kernels (compiler/winograd.py)."""
    for name, fn in PIPELINE:
        if FUSION_PASSES.get(name) in no_fuse:
            continue
        if fn in (pack_weights, conv1x1_as_matmul):
            fn = functools.partial(fn, block=weight_block)
        elif fn is to_nchwc:
            fn = functools.partial(fn, block=nchwc_block, winograd_convs=winograd)
        graph = fn(graph)
        if verify_each:
            verify(graph)
    return graph
