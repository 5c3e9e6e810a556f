"""Task: one kernel to tune — a TensorIR function with its workload key, FLOPs and weight."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import tvm
import tvm_ffi

from .ir import TensorType


@dataclass(frozen=True)
class Task:
    name: str  # readable: the fused ops and the output shape
    workload_key: str  # structural hash of the PrimFunc + its argument types
    mod: tvm.IRModule  # {"main": PrimFunc}, unscheduled; arguments = inputs..., output
    arg_types: tuple[TensorType, ...]  # the PrimFunc's buffers, in order, output last
    flops: float  # floating-point operations of one call
    weight: int = 1  # how many times the model calls this kernel
    kind: str = "generic"  # the anchor op ("conv2d", "matmul", "attention", ...) or "elemwise"

    @property
    def func(self) -> tvm.tirx.PrimFunc:
        return self.mod["main"]

    def with_weight(self, weight: int) -> "Task":
        from dataclasses import replace

        return replace(self, weight=weight)


def workload_key(mod: tvm.IRModule, arg_types: tuple[TensorType, ...]) -> str:
    """Names do not matter (structural hash); shapes and dtypes do, spelled out for readability."""
    sig = ";".join(str(t) for t in arg_types)
    digest = hashlib.sha256(f"{tvm_ffi.structural_hash(mod)}|{sig}".encode()).hexdigest()[:20]
    return digest
