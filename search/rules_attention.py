"""Schedules for the fused attention kernel (`compiler/lower_attention.py`).

The kernel is hand-written TensorIR: one `attention_tile` block per (batch..., query
tile), inside it the online-softmax steps as named blocks.  The generic rules know none of
that, so two sketch rules take it over:

  attention_cpu   parallel over batch x heads x query tiles; register tiles for the two
                  matmuls (R keys x a vector of query rows for the transposed scores K.Q^T,
                  R rows x a vector of Dv for P.V) with the accumulator tile computed at the
                  row-tile loop so it lives in registers; the elementwise steps and the row
                  max / sum (vertical over the transposed scores) vectorized; auto-unroll.
                  Holes: R and the vector tile of each matmul, the unroll depth.
  attention_gpu   one thread block per query tile, one thread per query row (the per-row
                  state in registers / local memory), the K tile in shared memory loaded by
                  all threads.
  attention_inner claims every inner block (no-op) so that the generic rules, which run per
                  block, leave the hand-written structure alone.

`default_attention_schedule(task, target)` is the deterministic schedule (the rule with the
heuristic decisions); the search samples the same holes through `SketchContext`.
The query/key tile sizes themselves are fixed when the kernel is generated.
"""

from __future__ import annotations

from tvm.s_tir import Schedule

from ..compiler.lower_attention import FUNC_ATTR, TILE_BLOCK
from ..targets.base import Target
from .sketch import Outcome, SketchContext, pattern_default_schedule, register_pattern_rules

UNROLL_STEPS = (0, 16)  # hot loops are unrolled explicitly; deeper auto-unroll costs up to 20 s of LLVM per build
MAX_REGISTER_ROWS = 8
VECTORIZED = ("q_load", "acc_init", "k_load", "prob", "acc_copy", "store")  # elementwise steps
ROW_REDUCTIONS = ("row_max", "row_sum")  # loops (key, query row) over the transposed scores: vertical
# the position from the end of each step's query-row loop (the GPU binds it to threadIdx.x)
PER_ROW_GPU = {"q_load": 1, "state_init": 1, "acc_init": 2, "score": 1, "logits": 1, "row_max": 1, "prob": 1,
               "row_sum": 1, "state_update": 1, "pv": 3, "acc_update": 2, "acc_copy": 2, "state_copy": 1, "store": 2}


def is_attention(sch: Schedule) -> bool:
    attrs = sch.mod["main"].attrs
    return attrs is not None and FUNC_ATTR in attrs


def _extent(sch: Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _largest_divisor(n: int, limit: int) -> int:
    return next(f for f in range(min(n, limit), 0, -1) if n % f == 0)


# --------------------------------------------------------------------------- CPU
def schedule_attention_cpu(sch: Schedule, ctx: SketchContext) -> None:
    tile = sch.get_sblock(TILE_BLOCK)
    loops = sch.get_loops(tile)
    outer = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.parallel(outer)
    step = ctx.choose(sch, UNROLL_STEPS, default_index=1)
    sch.annotate(outer, "pragma_auto_unroll_max_step", step)
    sch.annotate(outer, "pragma_unroll_explicit", 1)
    _register_tile(sch, ctx, "score", consumer="logits")  # loops: kj, d (reduce), qi
    _register_tile(sch, ctx, "pv", consumer="acc_update")  # loops: qi, kj (reduce), dv
    for name in ROW_REDUCTIONS:  # a vector of query rows per key: no horizontal reduction
        block = sch.get_sblock(name)
        key, row = sch.get_loops(block)[-2:]
        if _extent(sch, row) > 1:
            sch.vectorize(row)
        sch.decompose_reduction(block, key)
    for name in VECTORIZED:
        inner = sch.get_loops(sch.get_sblock(name))[-1]
        if _extent(sch, inner) > 1:
            sch.vectorize(inner)


def _register_tile(sch: Schedule, ctx: SketchContext, name: str, *, consumer: str) -> None:
    """Tile a [rows x cols] += a[rows, r] * b[r, cols] block (loops: rows, r, cols) into
    row_o, col_o, r, R rows, a vector of cols; the consumer (which reads the accumulator) is
    computed per (row_o, col_o) tile, so the accumulator shrinks to R x vector: registers."""
    block = sch.get_sblock(name)
    rows, reduce_loop, col = sch.get_loops(block)[-3:]
    n_rows, n_cols = _extent(sch, rows), _extent(sch, col)
    r = _largest_divisor(n_rows, 4)
    row_o, row_i = sch.split(rows, ctx.tile(sch, rows, 2, max_innermost=MAX_REGISTER_ROWS, default=[n_rows // r, r]))
    lanes = max(ctx.lanes, 1)
    vec = _largest_divisor(n_cols, 4 * lanes)
    col_o, col_i = sch.split(col, ctx.tile(sch, col, 2, max_innermost=4 * lanes, default=[n_cols // vec, vec]))
    sch.reorder(row_o, col_o, reduce_loop, row_i, col_i)
    cons = sch.get_sblock(consumer)
    sch.reverse_compute_at(cons, col_o, preserve_unit_loops=True)  # keeps its own (row, col) loops
    for loop in (sch.get_loops(cons)[-1], col_i):
        if _extent(sch, loop) > 1:
            sch.vectorize(loop)
    sch.unroll(row_i)
    sch.decompose_reduction(block, reduce_loop)


# --------------------------------------------------------------------------- GPU
# buffer -> the block that writes it: set_scope goes through a writer
SHARED = {"ks": "k_load"}  # read by every row's thread
LOCAL = {"qs": "q_load", "sacc": "score", "s": "logits", "p": "prob",
         "m": "state_init", "l": "state_init", "mnew": "row_max", "lsum": "row_sum", "alpha": "state_update", "lnew": "state_update",
         "oblk": "pv", "accn": "acc_update", "acc": "acc_init"}  # one query row's state: its thread's own


def schedule_attention_gpu(sch: Schedule, ctx: SketchContext) -> None:
    """blockIdx.x = (batch, query tile); threadIdx.x = query row; the K tile in shared memory."""
    tile = sch.get_sblock(TILE_BLOCK)
    loops = sch.get_loops(tile)
    outer = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    sch.bind(outer, "blockIdx.x")
    rows = None
    for name, from_end in PER_ROW_GPU.items():
        loop = sch.get_loops(sch.get_sblock(name))[-from_end]
        rows = rows or _extent(sch, loop)
        sch.bind(loop, "threadIdx.x")
    k_load = sch.get_sblock("k_load")
    _, tx = sch.split(sch.fuse(*sch.get_loops(k_load)[-2:]), [None, rows])
    sch.bind(tx, "threadIdx.x")
    for table, scope in ((SHARED, "shared"), (LOCAL, "local")):
        for buffer, writer in table.items():
            block = sch.get_sblock(writer)
            index = next(i for i, r in enumerate(sch.get(block).writes) if r.source.name == buffer)
            sch.set_scope(block, index, scope)
    step = ctx.choose(sch, UNROLL_STEPS, default_index=1)
    sch.annotate(outer, "pragma_auto_unroll_max_step", step)
    sch.annotate(outer, "pragma_unroll_explicit", 1)


# --------------------------------------------------------------------------- rules
def _main_condition(gpu: bool):
    def condition(sch: Schedule, block: str, ctx: SketchContext) -> Outcome:
        if block != TILE_BLOCK or not is_attention(sch) or ctx.target.is_gpu != gpu:
            return Outcome.SKIP
        return Outcome.APPLY_AND_SKIP_REST

    return condition


def _inner_condition(sch: Schedule, block: str, ctx: SketchContext) -> Outcome:
    return Outcome.APPLY_AND_SKIP_REST if block != TILE_BLOCK and is_attention(sch) else Outcome.SKIP


# priority 0: before every generic rule (inline would reach into the kernel's nested blocks)
ATTENTION_RULES = register_pattern_rules("attention", _main_condition, _inner_condition, cpu=schedule_attention_cpu, gpu=schedule_attention_gpu)


def default_attention_schedule(task, target: Target) -> Schedule:
    """The deterministic schedule of an attention task (the rule with its default decisions)."""
    return pattern_default_schedule(task, target, cpu=schedule_attention_cpu, gpu=schedule_attention_gpu)
