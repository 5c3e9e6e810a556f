"""Scheduled TensorIR -> plain Python loop nests: the input of the feature formulas.

We lower the scheduled module only as far as the features need (blocks become plain
loop nests with their iteration variables substituted, init blocks become stores,
allocations move to where they are used) and stop before FlattenBuffer, VectorizeLoop
and UnrollLoop: multi-dimensional indices keep strides easy to read off, and vectorized,
unrolled and parallel loops are still loops with a kind. This subset costs ~2 ms per
conv candidate; the full default pipeline ~80 ms. CompactBufferAllocation (shrinking a
temporary to the region its loops touch) alone costs ~30 ms and StmtSimplify ~15 ms, so
we skip both and compact temporaries ourselves (`_compact`) from the index ranges.

The walk turns every BufferStore into a `Store`: its enclosing loops (outermost first),
the arithmetic it does per iteration by kind, and the buffers it touches with their index
expressions as small tuples (`("v", loop_key)`, `("c", 7)`, `("+", a, b)`, ...) that the
feature code evaluates without calling back into TVM.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import tvm
from tvm import s_tir, tirx
from tvm.ir.expr import Call, TensorLoad

# Arithmetic counted per store iteration (Ansor's MathOpCounter categories).
OP_KINDS = (
    "float_mad", "float_addsub", "float_mul", "float_divmod", "float_cmp", "float_math_func", "float_other_func",
    "int_mad", "int_addsub", "int_mul", "int_divmod", "int_cmp", "int_other_func",
    "bool_op", "select_op",
)
# Call op names without their "tirx." / "prim." prefix
MATH_FUNCS = frozenset(("exp", "exp2", "exp10", "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "tanh", "sigmoid",
                        "erf", "pow", "sin", "cos", "tan", "atan", "fabs", "floor", "ceil", "round", "trunc", "fmod"))

_LOWER = tvm.transform.Sequential([
    s_tir.transform.CanonicalizeLoop(),
    s_tir.transform.LowerCrossThreadReduction(),
    s_tir.transform.LowerInitBlock(),
    s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
    s_tir.transform.ConvertBlocksToOpaque(),
    s_tir.transform.LowerMatchBuffer(),
    s_tir.transform.LowerOpaqueBlock(),
])


@dataclass(frozen=True)
class Loop:
    key: int  # identity of the loop variable (the Var's handle)
    name: str
    extent: int
    kind: str  # "serial" | "parallel" | "vectorized" | "unrolled" | "thread"
    thread: str = ""  # "blockIdx.x", "threadIdx.y", "vthread", ... for kind "thread"
    unroll_step: int = 0  # pragma_auto_unroll_max_step annotated on this loop


@dataclass(frozen=True)
class Access:
    buffer: str
    key: int  # identity of the buffer (its handle)
    shape: tuple[int, ...]
    elem_bytes: int
    scope: str  # "global", "local", "shared", ...
    kind: str  # "read" | "write" | "readwrite"
    indices: tuple[tuple, ...]  # one index tree per dimension
    count: int = 1  # how many loads of this buffer one iteration does


@dataclass(frozen=True)
class Alloc:
    buffer: str
    key: int
    bytes: int
    scope: str
    outer_prod: int  # iterations of the loops around the allocation
    outer: frozenset[int]  # keys of the loops around the allocation


@dataclass(frozen=True)
class Store:
    buffer: str
    loops: tuple[Loop, ...]  # outermost first
    ops: tuple[int, ...]  # per iteration, in OP_KINDS order
    accesses: tuple[Access, ...]  # the written buffer first, then the reads
    alloc: Alloc | None  # the allocation of the written buffer, when the function allocates it

    @property
    def trip(self) -> int:
        out = 1
        for lp in self.loops:
            out *= lp.extent
        return out


def lower(mod: tvm.IRModule) -> tvm.IRModule:
    """The partial lowering the features read (see the module docstring)."""
    return _LOWER(mod)


def loop_nests(mod: tvm.IRModule) -> tuple[list[Store], list[Alloc]]:
    """Stores and allocations of the lowered module's functions, in program order."""
    walker = _Walker()
    for _, func in mod.functions.items():
        if isinstance(func, tirx.PrimFunc):
            walker.stmt(func.body, ())
    return _compact(walker.stores, walker.allocs)


def prod(xs) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


# --------------------------------------------------------------------------- index arithmetic
def span(t: tuple, active: dict[int, int]) -> tuple[int, int, int]:
    """(lo, hi, distinct values) of an index tree while the `active` loops (key -> extent) run, others at 0."""
    op = t[0]
    if op == "v":
        e = active.get(t[1], 0)
        return (0, e - 1, e) if e else (0, 0, 1)
    if op == "c":
        return (t[1], t[1], 1)
    if op == "?":
        n = prod(active.get(k, 1) for k in t[1])
        return (0, n - 1, n)
    a0, a1, an = span(t[1], active)
    b0, b1, bn = span(t[2], active)
    if op == "+":
        lo, hi, n = a0 + b0, a1 + b1, an * bn
    elif op == "-":
        lo, hi, n = a0 - b1, a1 - b0, an * bn
    elif op == "*":
        corners = (a0 * b0, a0 * b1, a1 * b0, a1 * b1)
        lo, hi, n = min(corners), max(corners), an * bn
    elif op == "//":
        k = b0 if b0 == b1 and b0 > 0 else 1
        lo, hi, n = a0 // k, a1 // k, an
    elif op == "%":
        k = b0 if b0 == b1 and b0 > 0 else max(b1, 1)
        if a1 - a0 < k and a0 // k == a1 // k:
            lo, hi = a0 % k, a1 % k
        else:
            lo, hi = 0, k - 1
        n = an
    else:  # min, max
        lo, hi, n = min(a0, b0), max(a1, b1), an + bn
    return lo, hi, max(1, min(n, hi - lo + 1))


def value(t: tuple, env: dict[int, int]) -> int:
    op = t[0]
    if op == "v":
        return env.get(t[1], 0)
    if op == "c":
        return t[1]
    if op == "?":
        return 0  # unknown (a load, a call): assume it does not move
    a, b = value(t[1], env), value(t[2], env)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "//":
        return a // b if b else 0
    if op == "%":
        return a % b if b else 0
    return min(a, b) if op == "min" else max(a, b)


def tree_vars(t: tuple, out: set[int]) -> set[int]:
    if t[0] == "v":
        out.add(t[1])
    elif t[0] == "?":
        out.update(t[1])
    elif t[0] != "c":
        tree_vars(t[1], out)
        tree_vars(t[2], out)
    return out


def _compact(stores: list[Store], allocs: dict[int, Alloc]) -> tuple[list[Store], list[Alloc]]:
    """Shrink each temporary to the box its accesses touch inside its allocation (CompactBufferAllocation's job)."""
    boxes: dict[int, list[list[int]]] = {}
    for st in stores:
        for a in st.accesses:
            al = allocs.get(a.key)
            if al is None:
                continue
            active = {lp.key: lp.extent for lp in st.loops if lp.key not in al.outer}
            spans = [span(t, active) for t in a.indices]
            box = boxes.setdefault(a.key, [[lo, hi] for lo, hi, _ in spans])
            for d, (lo, hi, _) in enumerate(spans):
                box[d] = [min(box[d][0], lo), max(box[d][1], hi)]
    shapes, elem_bytes = {}, {}
    for st in stores:
        for a in st.accesses:
            if a.key in boxes and a.key not in shapes:
                shapes[a.key] = tuple(max(1, min(full, hi - lo + 1)) for full, (lo, hi) in zip(a.shape, boxes[a.key]))
                elem_bytes[a.key] = a.elem_bytes
    new_allocs = {k: replace(al, bytes=prod(shapes[k]) * elem_bytes[k]) if k in shapes else al for k, al in allocs.items()}
    out = []
    for st in stores:
        accesses = tuple(replace(a, shape=shapes[a.key]) if a.key in shapes else a for a in st.accesses)
        out.append(replace(st, accesses=accesses, alloc=new_allocs.get(st.accesses[0].key)))
    return out, list(new_allocs.values())


# --------------------------------------------------------------------------- the statement walk
_FOR_KINDS = {
    tirx.ForKind.SERIAL: "serial", tirx.ForKind.PARALLEL: "parallel", tirx.ForKind.VECTORIZED: "vectorized",
    tirx.ForKind.UNROLLED: "unrolled", tirx.ForKind.THREAD_BINDING: "thread",
}


class _Walker:
    def __init__(self):
        self.stores: list[Store] = []
        self.allocs: dict[int, Alloc] = {}
        self.pending_unroll: dict[int, int] = {}  # loop var -> pragma_auto_unroll_max_step (AttrStmt before its For)

    def stmt(self, s, loops: tuple[Loop, ...]) -> None:
        t = type(s)
        if t is tirx.SeqStmt:
            for child in s.seq:
                self.stmt(child, loops)
        elif t is tirx.For:
            loop = self._loop(s)
            self.stmt(s.body, _bind(loops, loop) if loop.kind == "thread" else loops + (loop,))
        elif t is tirx.BufferStore:
            self.stores.append(self._store(s, loops))
        elif t is tirx.AttrStmt:
            self._attr(s, loops)
        elif t is tirx.IfThenElse:
            self.stmt(s.then_case, loops)
            if s.else_case is not None:
                self.stmt(s.else_case, loops)
        elif t is tirx.AllocBuffer:
            self._alloc(s.buffer, loops)
            if getattr(s, "body", None) is not None:
                self.stmt(s.body, loops)
        elif t is tirx.While:
            self.stmt(s.body, loops + (Loop(0, "while", 1, "serial"),))
        elif hasattr(s, "body") and isinstance(s.body, tirx.Stmt):  # DeclBuffer, LetStmt, AssertStmt, ...
            self.stmt(s.body, loops)

    def _loop(self, s) -> Loop:
        var = s.loop_var
        key = hash(var)
        extent = _int(s.extent, default=1)
        kind = _FOR_KINDS.get(s.kind, "serial")
        thread = s.thread_binding.thread_tag if kind == "thread" and s.thread_binding is not None else ""
        step = self.pending_unroll.pop(key, 0)
        if "pragma_auto_unroll_max_step" in s.annotations:
            step = _int(s.annotations["pragma_auto_unroll_max_step"], default=0)
        return Loop(key, str(var.name), extent, kind, str(thread), step)

    def _attr(self, s, loops: tuple[Loop, ...]) -> None:
        key = str(s.attr_key)
        if key == "pragma_auto_unroll_max_step":
            self.pending_unroll[hash(s.node)] = _int(s.value, default=0)
            self.stmt(s.body, loops)
        elif key in ("thread_extent", "virtual_thread"):  # a thread binding lowered to an attribute
            iv = s.node
            tag = str(iv.thread_tag) or "vthread"
            loop = Loop(hash(iv.var), str(iv.var.name), _int(s.value, default=1), "thread", tag)
            self.stmt(s.body, _bind(loops, loop))
        else:
            self.stmt(s.body, loops)

    def _alloc(self, buf, loops: tuple[Loop, ...]) -> None:
        outer = 1
        for lp in loops:
            outer *= lp.extent
        key = hash(buf)  # buffers are Vars: their handle is their identity
        self.allocs[key] = Alloc(str(buf.name), key, _numel(buf) * _elem_bytes(buf), str(buf.scope()), outer,
                                 frozenset(lp.key for lp in loops))

    def _store(self, s, loops: tuple[Loop, ...]) -> Store:
        counter = _ExprWalker()
        counter.expr(s.value)
        write_index = tuple(counter.index(i) for i in s.indices)
        buf = s.buffer
        wkey = hash(buf)
        accesses = [Access(str(buf.name), wkey, _shape(buf), _elem_bytes(buf), str(buf.scope()), "write", write_index)]
        for key, (rbuf, idx, count) in counter.loads.items():
            if key == wkey:
                accesses[0] = Access(accesses[0].buffer, wkey, accesses[0].shape, accesses[0].elem_bytes,
                                     accesses[0].scope, "readwrite", write_index, 1 + count)
            else:
                accesses.append(Access(str(rbuf.name), key, _shape(rbuf), _elem_bytes(rbuf), str(rbuf.scope()),
                                       "read", idx, count))
        return Store(str(buf.name), loops, tuple(counter.ops), tuple(accesses), self.allocs.get(wkey))


def _bind(loops: tuple[Loop, ...], thread: Loop) -> tuple[Loop, ...]:
    """Enter a thread binding. A tag bound again inside (a cooperative fetch re-splitting threadIdx.x)
    is the same hardware thread: the inner binding replaces the outer one rather than multiplying."""
    return tuple(lp for lp in loops if lp.kind != "thread" or lp.thread != thread.thread) + (thread,)


# --------------------------------------------------------------------------- expressions
_BINARY = {
    tirx.Add: "+", tirx.Sub: "-", tirx.Mul: "*", tirx.FloorDiv: "//", tirx.Div: "//", tirx.FloorMod: "%",
    tirx.Mod: "%", tirx.Min: "min", tirx.Max: "max",
}
_ARITH_KIND = {"+": "addsub", "-": "addsub", "min": "addsub", "max": "addsub", "*": "mul", "//": "divmod", "%": "divmod"}
_COMPARE = (tirx.EQ, tirx.NE, tirx.LT, tirx.LE, tirx.GT, tirx.GE)
_BOOL = (tirx.And, tirx.Or, tirx.Not)
_OP_INDEX = {k: i for i, k in enumerate(OP_KINDS)}


class _ExprWalker:
    """Counts arithmetic by kind and collects buffer loads (with index trees) of one store."""

    def __init__(self):
        self.ops = [0] * len(OP_KINDS)
        self.loads: dict[int, tuple] = {}  # buffer data key -> (buffer, index trees, count)

    def _count(self, kind: str, n: int = 1) -> None:
        self.ops[_OP_INDEX[kind]] += n

    def expr(self, e) -> None:
        t = type(e)
        op = _BINARY.get(t)
        if op is not None:
            prefix = "float_" if _is_float(e) else "int_"
            if op == "+" and (type(e.a) is tirx.Mul or type(e.b) is tirx.Mul):  # a*b+c: one fused multiply-add
                self._count(prefix + "mad")
                mul, other = (e.a, e.b) if type(e.a) is tirx.Mul else (e.b, e.a)
                self.exprs(mul.a, mul.b, other)
                return
            self._count(prefix + _ARITH_KIND[op])
            self.exprs(e.a, e.b)
        elif t is TensorLoad:
            buf = e.source
            key = hash(buf)
            idx = tuple(self.index(i) for i in e.indices)
            old = self.loads.get(key)
            self.loads[key] = (buf, old[1], old[2] + 1) if old else (buf, idx, 1)
        elif t in _COMPARE:
            self._count("float_cmp" if _is_float(e.a) else "int_cmp")
            self.exprs(e.a, e.b)
        elif t in _BOOL:
            self._count("bool_op")
            self.expr(e.a)
            if t is not tirx.Not:
                self.expr(e.b)
        elif t is tirx.Select:
            self._count("select_op")
            self.exprs(e.condition, e.true_value, e.false_value)
        elif t is Call:
            name = str(e.op.name).rsplit(".", 1)[-1] if hasattr(e.op, "name") else ""
            if name == "if_then_else":
                self._count("select_op")
            elif name in MATH_FUNCS:
                self._count("float_math_func" if _is_float(e) else "int_other_func")
            else:
                self._count("float_other_func" if _is_float(e) else "int_other_func")
            for arg in e.args:
                self.expr(arg)
        elif t is tirx.Cast:
            self.expr(e.value)
        elif t is tirx.Let:
            self.exprs(e.value, e.body)

    def exprs(self, *es) -> None:
        for e in es:
            self.expr(e)

    def index(self, e) -> tuple:
        """An index expression as a tree the feature code evaluates; its integer ops are counted."""
        t = type(e)
        if t is tirx.Var:
            return ("v", hash(e))
        if t is tirx.IntImm:
            return ("c", int(e.value))
        op = _BINARY.get(t)
        if op is not None:
            self._count("int_" + _ARITH_KIND[op])
            return (op, self.index(e.a), self.index(e.b))
        if t is tirx.Cast:
            return self.index(e.value)
        # Anything else (a load, a call): varies with whichever loop variables it mentions.
        self.expr(e)
        return ("?", frozenset(_vars(e)))


def _vars(e) -> set[int]:
    out: set[int] = set()
    stack = [e]
    while stack:
        x = stack.pop()
        t = type(x)
        if t is tirx.Var:
            out.add(hash(x))
        elif t in _BINARY or t in _COMPARE or t in (tirx.And, tirx.Or):
            stack += (x.a, x.b)
        elif t is TensorLoad:
            stack += list(x.indices)
        elif t is Call:
            stack += list(x.args)
        elif t in (tirx.Cast, tirx.Not):
            stack.append(x.value if t is tirx.Cast else x.a)
        elif t is tirx.Select:
            stack += (x.condition, x.true_value, x.false_value)
    return out


def _is_float(e) -> bool:
    return str(e.ty.dtype).startswith(("float", "bfloat"))


def _int(x, *, default: int) -> int:
    if isinstance(x, int):
        return x
    value = getattr(x, "value", None)
    return int(value) if isinstance(value, int) else default


def _shape(buf) -> tuple[int, ...]:
    return tuple(_int(d, default=1) for d in buf.shape)


def _numel(buf) -> int:
    n = 1
    for d in _shape(buf):
        n *= d
    return n


def _elem_bytes(buf) -> int:
    dt = buf.dtype
    return max(1, (int(dt.bits) * int(dt.lanes) + 7) // 8)
