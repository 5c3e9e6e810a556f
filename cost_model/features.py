"""Ansor-style features of a scheduled candidate: one fixed-length vector per candidate.

Per buffer store (loop_nest.py gives us the stores of the partially lowered function):
  ops        arithmetic by kind (loop_nest.OP_KINDS) times the store's trip count
  loops      nest depth, trip count, innermost/outermost extent; for vectorized, unrolled and
             parallel loops: how many, their product, the innermost one's length, and where it
             sits (inner/middle/outer spatial or reduction loop, Ansor's 8-way position);
             auto-unroll max step and how many iterations it would unroll; GPU thread extents
  buffers    up to 5 accessed buffers, largest traffic first: read/write/read-write, bytes and
             unique bytes touched, cache lines and unique lines, reuse (a loop whose variable
             the index ignores: its distance in iterations and bytes, and its count), the four
             traffic numbers divided by the reuse count, the stride of the innermost loop that
             moves the index, of the innermost loop, and of the vectorized loop; local/shared
  intensity  float ops / unique bytes touched, as a curve over the loop levels (inner->outer),
             read at 10 fixed amounts of work (2^2 .. 2^38 float ops) so candidates line up
  traffic    bytes moved into a register file / L1 / L2 sized store: the outermost loop level whose
             footprint fits, times the iterations of the loops around it; and per float op; in bytes
             touched and again in whole cache lines
  registers  accumulators: the spatial iterations inside the innermost reduction loop (elements
             and vectors) and that loop's extent
  alloc      size, and loops outside/inside the allocation, when the store writes a temporary
  body       the straight-line code generation makes of the innermost loops (vectorized ones, and
             those TVM's auto-unroll flattens; again with the small loops LLVM then fully unrolls
             itself, "llvm_"): its iterations, work, bytes and registers touched, whether a
             reduction loop surrounds it (outputs stay in registers), and the loop whose iterations
             fill the SIMD lanes (explicitly vectorized / SLP over the unrolled body / LLVM's loop
             vectorizer on the loop around it) with how each buffer moves along it
Large values go through log2(1 + x). The candidate's vector is the work-weighted mean and
the max of its stores' vectors, plus whole-function features (FEATURE_NAMES lists them all).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .loop_nest import OP_KINDS, Access, Loop, Store, loop_nests, lower
from .loop_nest import prod as _prod, span as _span, tree_vars as _tree_vars, value as _value

BUFFERS_PER_STORE = 5
CACHE_LINE_BYTES = 64
INTENSITY_SAMPLES = 10
INTENSITY_GRID = tuple(2.0 + 4.0 * i for i in range(INTENSITY_SAMPLES))  # log2(float ops) where the curve is read
CACHE_BYTES = (32 * 1024, 1024 * 1024)  # L1, L2: typical x86 / Cortex-A sizes (the features only need the scale)
ANNOTATIONS = ("vectorized", "unrolled", "parallel")
POSITIONS = ("none", "inner_spatial", "middle_spatial", "outer_spatial",
             "inner_reduce", "middle_reduce", "outer_reduce", "mixed")
THREAD_TAGS = ("blockIdx.x", "blockIdx.y", "blockIdx.z", "threadIdx.x", "threadIdx.y", "threadIdx.z", "vthread")
BUFFER_FIELDS = (
    "is_read", "is_write", "is_readwrite", "bytes", "unique_bytes", "lines", "unique_lines",
    "loop_reuse", "no_reuse", "reuse_dis_iter", "reuse_dis_bytes", "reuse_ct",
    "bytes_d_reuse_ct", "unique_bytes_d_reuse_ct", "lines_d_reuse_ct", "unique_lines_d_reuse_ct",
    "stride", "inner_stride", "vec_stride", "is_local", "is_shared",
)


LLVM_UNROLL_BUDGET = 300  # instructions: LLVM -O3 fully unrolls a constant-trip loop up to about this size
BODY_FIELDS = (
    "body_iters", "body_flops", "body_bytes", "body_intensity", "body_regs", "body_out_vectors",
    "body_outer_is_reduce", "body_outer_extent", "simd_none", "simd_explicit", "simd_slp", "simd_loop",
    "simd_width", "simd_lane_frac", "simd_out_contig", "simd_contig", "simd_bcast", "simd_gather",
    "body_runs", "body_insts", "insts",
)


def _store_feature_names() -> tuple[str, ...]:
    names = list(OP_KINDS)
    names += ["num_loops", "trip", "innermost_extent", "outermost_extent"]
    for ann in ANNOTATIONS:
        names += [f"{ann}_num", f"{ann}_prod", f"{ann}_len"] + [f"{ann}_pos_{p}" for p in POSITIONS]
    names += ["unroll_max_step", "unroll_effective"] + [f"thread_{t}" for t in THREAD_TAGS]
    for b in range(BUFFERS_PER_STORE):
        names += [f"b{b}_{f}" for f in BUFFER_FIELDS]
    names += [f"intensity_{i}" for i in range(INTENSITY_SAMPLES)]
    for level in ("reg", "l1", "l2"):
        names += [f"{level}_traffic", f"{level}_bytes_per_flop", f"{level}_line_traffic", f"{level}_line_bytes_per_flop"]
    names += ["acc_elems", "acc_vectors", "inner_reduce_extent"]
    names += ["alloc_bytes", "alloc_outer_prod", "alloc_inner_prod", "is_alloc"]
    names += list(BODY_FIELDS) + [f"llvm_{f}" for f in BODY_FIELDS]
    return tuple(names)


STORE_FEATURE_NAMES = _store_feature_names()
GLOBAL_FEATURE_NAMES = (
    "est_flops", "task_flops", "num_stores", "num_allocs", "alloc_bytes_total",
    "parallel_extent_d_cores", "parallel_balance", "parallel_work_frac", "vectorized_work_frac",
    "vector_len_d_lanes", "max_unroll_step", "is_gpu",
)
FEATURE_NAMES = (tuple(f"mean.{n}" for n in STORE_FEATURE_NAMES) + tuple(f"max.{n}" for n in STORE_FEATURE_NAMES)
                 + tuple(f"func.{n}" for n in GLOBAL_FEATURE_NAMES))
NUM_FEATURES = len(FEATURE_NAMES)


def _log(x: float) -> float:
    return math.log2(1.0 + x) if x > 0 else 0.0


@dataclass(frozen=True)
class _AccessInfo:
    access: Access
    unique: list[int]  # unique elements touched per level (level j: loops[j:] run); len = n + 1
    unique_lines: list[int]
    vars: set[int]
    strides: dict[int, int]  # loop key -> elements the flat offset moves per iteration of that loop


def _access_info(a: Access, loops: Sequence[Loop], line_elems: int) -> _AccessInfo:
    n = len(loops)
    numel = max(1, _prod(a.shape))
    dim_vars = [_tree_vars(t, set()) for t in a.indices]
    variables = set().union(*dim_vars)
    # Level j = loops[j:] run. Walk outward; a loop the index ignores leaves the footprint as it was,
    # and a loop only changes the span of the dimensions that mention it.
    unique, lines = [0] * (n + 1), [0] * (n + 1)
    active: dict[int, int] = {}
    spans = [_span(t, active) for t in a.indices] or [(0, 0, 1)]
    elems = n_lines = 0
    for j in range(n, -1, -1):
        if j < n:
            lp = loops[j]
            if lp.key not in variables or lp.extent <= 1:
                unique[j], lines[j] = elems, n_lines
                continue
            active[lp.key] = lp.extent
            for d, vs in enumerate(dim_vars):
                if lp.key in vs:
                    spans[d] = _span(a.indices[d], active)
        elems = min(numel, _prod(s[2] for s in spans))
        lo, hi, last = spans[-1]
        last_lines = min(last, -(-(hi - lo + 1) // line_elems))
        n_lines = max(1, min(elems, _prod(s[2] for s in spans[:-1]) * last_lines))
        unique[j], lines[j] = elems, n_lines
    flat = [_prod(a.shape[d + 1:]) for d in range(len(a.shape))]
    base = [_value(t, {}) for t in a.indices]
    strides = {}
    for lp in loops:
        if lp.key in variables and lp.extent > 1:
            env = {lp.key: 1}
            strides[lp.key] = abs(sum((_value(t, env) - b) * f
                                      for t, b, f, vs in zip(a.indices, base, flat, dim_vars) if lp.key in vs))
    return _AccessInfo(a, unique, lines, variables, strides)


# --------------------------------------------------------------------------- per store
def _flops_per_iter(ops: Sequence[int]) -> int:
    k = {name: v for name, v in zip(OP_KINDS, ops)}
    return (2 * k["float_mad"] + k["float_addsub"] + k["float_mul"] + k["float_divmod"] + k["float_cmp"]
            + k["float_math_func"] + k["float_other_func"])


def _position(loops: Sequence[Loop], kind: str, spatial: set[int]) -> str:
    idx = [i for i, lp in enumerate(loops) if lp.kind == kind]
    if not idx:
        return "none"
    if len({loops[i].key in spatial for i in idx}) > 1:
        return "mixed"
    i = idx[-1]
    is_spatial = loops[i].key in spatial
    same = [j for j, lp in enumerate(loops) if (lp.key in spatial) == is_spatial and lp.extent > 1] or [i]
    where = "inner" if i >= same[-1] else "outer" if i <= same[0] else "middle"
    return f"{where}_{'spatial' if is_spatial else 'reduce'}"


def _loop_features(store: Store, spatial: set[int]) -> list[float]:
    loops = store.loops
    trip = store.trip
    out = [len(loops), _log(trip), _log(loops[-1].extent if loops else 1), _log(loops[0].extent if loops else 1)]
    for kind in ANNOTATIONS:
        ext = [lp.extent for lp in loops if lp.kind == kind]
        pos = _position(loops, kind, spatial)
        out += [len(ext), _log(_prod(ext)) if ext else 0.0, _log(ext[-1]) if ext else 0.0]
        out += [1.0 if p == pos else 0.0 for p in POSITIONS]
    step = max((lp.unroll_step for lp in loops), default=0)
    unrolled = 1
    for lp in reversed(loops):  # what UnrollLoop would unroll: the innermost loops within the step budget
        if lp.kind in ("vectorized", "thread", "parallel"):
            if lp.kind == "vectorized":
                continue
            break
        if unrolled * lp.extent > step:
            break
        unrolled *= lp.extent
    out += [_log(step), _log(unrolled) if step else 0.0]
    for tag in THREAD_TAGS:
        ext = [lp.extent for lp in loops if lp.kind == "thread" and lp.thread.startswith(tag)]
        out.append(_log(_prod(ext)) if ext else 0.0)
    return out


def _buffer_features(info: _AccessInfo, loops: Sequence[Loop], infos: Sequence[_AccessInfo], trip: int) -> list[float]:
    a = info.access
    eb = a.elem_bytes
    line_elems = max(1, CACHE_LINE_BYTES // eb)
    n = len(loops)
    accesses = trip * a.count
    moving = [lp for lp in loops if lp.key in info.strides]
    stride = info.strides[moving[-1].key] if moving else 0
    inner_stride = info.strides.get(loops[-1].key, 0) if loops else 0
    vec = [lp for lp in loops if lp.kind == "vectorized"]
    vec_stride = info.strides.get(vec[-1].key, 0) if vec else 0
    # touched lines: consecutive accesses `stride` apart share a line while stride < line_elems
    lines = accesses * min(1.0, stride / line_elems) if stride else 1.0
    reuse_level = next((k for k in range(n - 1, -1, -1) if loops[k].extent > 1 and loops[k].key not in info.vars), None)
    if reuse_level is None:
        reuse = [0.0, 1.0, 0.0, 0.0, 0.0]
        ct = 1
    else:
        ct = loops[reuse_level].extent
        dis_iter = _prod(lp.extent for lp in loops[reuse_level + 1:])
        dis_bytes = sum(o.unique[reuse_level + 1] * o.access.elem_bytes for o in infos)
        reuse = [1.0, 0.0, _log(dis_iter), _log(dis_bytes), _log(ct)]
    kind = a.kind
    scope = a.scope
    return [
        float(kind == "read"), float(kind == "write"), float(kind == "readwrite"),
        _log(accesses * eb), _log(info.unique[0] * eb), _log(lines), _log(info.unique_lines[0]),
        *reuse,
        _log(accesses * eb / ct), _log(info.unique[0] * eb / ct), _log(lines / ct), _log(info.unique_lines[0] / ct),
        _log(stride), _log(inner_stride), _log(vec_stride),
        float(scope.startswith("local")), float(scope.startswith("shared")),
    ]


def _intensity(flops_iter: int, loops: Sequence[Loop], infos: Sequence[_AccessInfo]) -> list[float]:
    n = len(loops)
    work, curve = [], []  # inner -> outer
    for j in range(n, -1, -1):
        ops = flops_iter * _prod(lp.extent for lp in loops[j:])
        traffic = sum(i.unique[j] * i.access.elem_bytes for i in infos)
        work.append(_log(ops))
        curve.append(ops / traffic if traffic else 0.0)
    xs = np.maximum.accumulate(np.asarray(work))  # non-decreasing, as np.interp needs
    return [_log(v) for v in np.interp(INTENSITY_GRID, xs, curve)]


def _traffic(flops: float, loops: Sequence[Loop], infos: Sequence[_AccessInfo], register_bytes: int) -> list[float]:
    """Bytes a store moves into memories of growing size, and per float op (a roofline-style data-movement
    estimate); counted once in touched bytes and once in whole cache lines (a strided tile drags in
    lines it uses a quarter of)."""
    n = len(loops)
    footprint = [sum(i.unique[j] * i.access.elem_bytes for i in infos) for j in range(n + 1)]
    line_footprint = [sum(i.unique_lines[j] * CACHE_LINE_BYTES for i in infos) for j in range(n + 1)]
    out = []
    for size in (register_bytes, *CACHE_BYTES):
        for fp in (footprint, line_footprint):
            j = next((j for j in range(n + 1) if fp[j] <= size), n)  # outermost level that fits
            moved = fp[j] * _prod(lp.extent for lp in loops[:j])
            out += [_log(moved), _log(moved / flops) if flops else 0.0]
    return out


def _accumulators(loops: Sequence[Loop], spatial: set[int], lanes: int) -> list[float]:
    """Output elements updated inside the innermost reduction loop: what must stay in registers."""
    reduce = [k for k, lp in enumerate(loops) if lp.key not in spatial and lp.extent > 1]
    if not reduce:
        return [0.0, 0.0, 0.0]
    r = reduce[-1]
    acc = _prod(lp.extent for lp in loops[r + 1:] if lp.key in spatial)
    return [_log(acc), _log(acc / lanes), _log(loops[r].extent)]


def _body_start(loops: Sequence[Loop], *, llvm_budget: int = 0, insts_per_iter: int = 1) -> int:
    """Index of the first loop of the straight-line body code generation makes of the innermost loops:
    vectorized ones become vector instructions, unrolled ones (explicit or within the auto-unroll
    step) are flattened; LLVM's SLP vectorizer then works on that body."""
    step = max((lp.unroll_step for lp in loops), default=0)
    k, unrolled = len(loops), 1
    for idx in range(len(loops) - 1, -1, -1):
        lp = loops[idx]
        if lp.kind == "vectorized" or lp.extent <= 1:
            k = idx
            continue
        if lp.kind in ("thread", "parallel"):
            break
        if lp.kind == "unrolled" or (step and unrolled * lp.extent <= step):
            unrolled *= lp.extent
            k = idx
            continue
        break
    if llvm_budget:  # LLVM then fully unrolls small constant-trip loops itself
        size = insts_per_iter * _prod(lp.extent for lp in loops[k:] if lp.kind != "vectorized")
        while k > 0 and loops[k - 1].kind == "serial" and size * loops[k - 1].extent <= llvm_budget:
            size *= loops[k - 1].extent
            k -= 1
    return k


@dataclass(frozen=True)
class _Lanes:
    """The loop whose iterations fill the SIMD lanes, and how code generation gets there."""
    how: int  # 0 none, 1 explicitly vectorized, 2 SLP over the unrolled body, 3 LLVM's loop vectorizer
    width: int  # the loop's extent
    out_contig: bool  # the output moves by one element along it
    contig: float  # shares of the reads (by count) that move by 1 / stay put / jump along it
    bcast: float
    gather: float


def _lanes(loops: Sequence[Loop], infos: Sequence[_AccessInfo], k: int) -> _Lanes:
    """An explicitly vectorized loop; else the unit-stride output loop inside the unrolled body
    loops[k:] (SLP); else the loop around the body, LLVM's innermost loop after unrolling, when the
    output moves by 1 along it."""
    out = infos[0]
    vec = [lp for lp in loops if lp.kind == "vectorized"]
    slp = [lp for lp in loops[k:] if out.strides.get(lp.key) == 1 and lp.kind != "vectorized"]
    if vec:
        simd, how = vec[-1], 1
    elif slp:
        simd, how = slp[-1], 2
    elif k > 0 and out.strides.get(loops[k - 1].key) == 1:
        simd, how = loops[k - 1], 3
    else:
        return _Lanes(0, 1, False, 0.0, 0.0, 0.0)
    moves = [0.0, 0.0, 0.0]  # contig, bcast, gather
    for i in infos[1:]:
        stride = i.strides.get(simd.key, 0)
        moves[0 if stride == 1 else 1 if stride == 0 else 2] += i.access.count
    total = sum(moves) or 1.0
    return _Lanes(how, simd.extent, out.strides.get(simd.key, 0) == 1, *(m / total for m in moves))


def _body(flops_iter: int, loops: Sequence[Loop], infos: Sequence[_AccessInfo], spatial: set[int], lanes: int,
          llvm_budget: int = 0) -> list[float]:
    """The innermost straight-line body (BODY_FIELDS): its work, the data it touches (registers it
    needs), the loop around it (a reduction loop there keeps the outputs in registers), and how its
    SIMD lanes are filled."""
    k = _body_start(loops, llvm_budget=llvm_budget, insts_per_iter=max(1, flops_iter) + len(infos))
    iters = _prod(lp.extent for lp in loops[k:])
    runs = _prod(lp.extent for lp in loops[:k])  # how often the body runs
    flops = flops_iter * iters
    nbytes = sum(i.unique[k] * i.access.elem_bytes for i in infos)
    outer = loops[k - 1] if k > 0 else None
    simd = _lanes(loops, infos, k)
    lanes_used = min(simd.width, lanes) if simd.how in (1, 2) else 1
    insts = iters * (flops_iter + sum(i.access.count for i in infos)) / lanes_used  # operations and loads
    feats = [
        _log(iters), _log(flops), _log(nbytes), _log(flops / nbytes) if nbytes else 0.0,
        _log(sum(i.unique[k] for i in infos) / lanes), _log(infos[0].unique[k] / lanes),
        float(outer is not None and outer.key not in spatial and outer.extent > 1),
        _log(outer.extent) if outer is not None else 0.0,
        *(float(simd.how == h) for h in range(4)), _log(simd.width), min(simd.width, lanes) / lanes,
        float(simd.out_contig), simd.contig, simd.bcast, simd.gather,
        _log(runs), _log(insts), _log(insts * runs),
    ]
    return feats


def store_features(store: Store, *, lanes: int = 8) -> tuple[list[float], float]:
    """A store's feature vector (STORE_FEATURE_NAMES) and its weight (work) for aggregation."""
    trip = store.trip
    loops = store.loops
    write = store.accesses[0]
    spatial = set()
    for t in write.indices:
        _tree_vars(t, spatial)
    feats = [_log(v * trip) for v in store.ops]
    feats += _loop_features(store, spatial)
    infos = [_access_info(a, loops, max(1, CACHE_LINE_BYTES // a.elem_bytes)) for a in store.accesses]
    ranked = sorted(infos, key=lambda i: (-i.access.count * i.access.elem_bytes, -i.unique[0], i.access.buffer))
    for info in ranked[:BUFFERS_PER_STORE]:
        feats += _buffer_features(info, loops, infos, trip)
    feats += [0.0] * (len(BUFFER_FIELDS) * (BUFFERS_PER_STORE - min(len(ranked), BUFFERS_PER_STORE)))
    flops_iter = _flops_per_iter(store.ops)
    feats += _intensity(flops_iter, loops, infos)
    feats += _traffic(float(flops_iter * trip), loops, infos, register_bytes=32 * lanes * 4)
    feats += _accumulators(loops, spatial, lanes)
    if store.alloc is not None:
        outer = max(1, store.alloc.outer_prod)
        feats += [_log(store.alloc.bytes), _log(outer), _log(trip / outer), 1.0]
    else:
        feats += [0.0, 0.0, 0.0, 0.0]
    feats += _body(flops_iter, loops, infos, spatial, lanes)
    feats += _body(flops_iter, loops, infos, spatial, lanes, llvm_budget=LLVM_UNROLL_BUDGET)
    weight = trip * (1 + flops_iter + len(store.accesses))
    return feats, float(weight)


# --------------------------------------------------------------------------- per candidate
def _global_features(stores: Sequence[Store], allocs, weights: np.ndarray, *, task_flops: float, cores: int,
                     lanes: int, is_gpu: bool) -> list[float]:
    total = float(weights.sum()) or 1.0
    flops = sum(_flops_per_iter(s.ops) * s.trip for s in stores)
    heaviest = stores[int(np.argmax(weights))]
    par = [lp.extent for lp in heaviest.loops if lp.kind == "parallel"]
    p = _prod(par) if par else 1
    balance = p / (math.ceil(p / cores) * cores) if par else 1.0 / cores
    par_work = sum(w for s, w in zip(stores, weights) if any(lp.kind == "parallel" for lp in s.loops)) / total
    vec_work = sum(w for s, w in zip(stores, weights) if any(lp.kind == "vectorized" for lp in s.loops)) / total
    vec = [lp.extent for lp in heaviest.loops if lp.kind == "vectorized"]
    return [
        _log(flops), _log(task_flops), len(stores), len(allocs), _log(sum(a.bytes for a in allocs)),
        _log(p / cores), balance, par_work, vec_work, (vec[-1] / lanes) if vec else 0.0,
        _log(max((lp.unroll_step for s in stores for lp in s.loops), default=0)), float(is_gpu),
    ]


def features_of_module(mod, *, cores: int, lanes: int, is_gpu: bool = False, task_flops: float = 0.0) -> np.ndarray:
    """The feature vector (FEATURE_NAMES) of a scheduled IRModule."""
    stores, allocs = loop_nests(lower(mod))
    if not stores:
        return np.zeros(NUM_FEATURES)
    rows, weights = zip(*(store_features(s, lanes=lanes) for s in stores))
    x = np.asarray(rows, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    mean = (w / w.sum()) @ x if w.sum() > 0 else x.mean(axis=0)
    glob = _global_features(stores, allocs, w, task_flops=task_flops, cores=cores, lanes=lanes, is_gpu=is_gpu)
    return np.concatenate([mean, x.max(axis=0), np.asarray(glob, dtype=np.float64)])


class FeatureExtractor:
    """Features of candidates of a target, cached per (workload, trace)."""

    def __init__(self, target, *, cache_size: int = 100_000):
        from ..search.sketch import vector_lanes

        self.target = target
        self.cores = max(1, int(target.num_cores))
        self.lanes = vector_lanes(target)
        self.is_gpu = bool(target.is_gpu)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], np.ndarray | None] = OrderedDict()
        self._bases: OrderedDict[str, object] = OrderedDict()  # workload key -> unscheduled Schedule to copy
        self.hits = self.misses = 0

    def extract(self, task, candidates: Sequence) -> np.ndarray:
        """(len(candidates), NUM_FEATURES); a candidate that does not replay onto the task gets a row of NaN."""
        out = np.full((len(candidates), NUM_FEATURES), np.nan)
        for i, cand in enumerate(candidates):
            row = self._one(task, cand)
            if row is not None:
                out[i] = row
        return out

    def prime(self, task, cand, scheduled_mod) -> None:
        """Featurize a candidate from its scheduled module when the caller has already replayed it
        (a search that validates its mutants): a later extract/predict then skips the replay."""
        key = (task.workload_key, cand.trace_json)
        if key not in self._cache:
            self._remember(key, self._features(task, scheduled_mod))

    def _one(self, task, cand) -> np.ndarray | None:
        key = (task.workload_key, cand.trace_json)
        if key in self._cache:
            self.hits += 1
            self._cache.move_to_end(key)
            return self._cache[key]
        self.misses += 1
        base = self._bases.pop(task.workload_key, None) or fresh_schedule(task.mod)
        self._bases[task.workload_key] = base  # most recently used last
        if len(self._bases) > 32:
            self._bases.popitem(last=False)
        sch = replay(task.mod, cand.trace_json, base=base)
        row = None if sch is None else self._features(task, sch.mod)
        self._remember(key, row)
        return row

    def _features(self, task, mod) -> np.ndarray:
        return features_of_module(mod, cores=self.cores, lanes=self.lanes, is_gpu=self.is_gpu, task_flops=float(task.flops))

    def _remember(self, key: tuple[str, str], row: np.ndarray | None) -> None:
        self._cache[key] = row
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def replay(mod, trace_json: str, *, base=None):
    """The trace replayed onto a fresh schedule of `mod` (or a copy of `base`, an unscheduled
    Schedule of it: copying skips building the schedule state, ~4 ms for a conv), or None when
    it does not fit.

    Unlike Candidate.apply this skips the schedule's debug verification (6x faster): the
    candidates were verified when they were sampled, and a bad one only loses its features."""
    from tvm.s_tir import Trace

    from ..search.sketch import SCHEDULE_ERRORS

    sch = (base or fresh_schedule(mod)).copy()
    try:
        Trace.apply_json_to_schedule(json.loads(trace_json), sch)
    except (*SCHEDULE_ERRORS, RuntimeError, ValueError, json.JSONDecodeError):
        return None
    return sch


def fresh_schedule(mod):
    from tvm.s_tir import Schedule

    return Schedule(mod, seed=1, debug_mask=0, error_render_level="none")
