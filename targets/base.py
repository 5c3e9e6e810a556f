"""Target descriptions: x86 CPU (llvm), CUDA GPUs and aarch64 (cross-compiled llvm).

A Target owns everything target-specific: the TVM target, the device type used to
run, the sketch rules that apply and the limits a candidate must respect.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import tvm
from tvm.target import codegen

from ..errors import TargetError

# attention rules first: otherwise the generic inline rule reaches into the attention kernel's nested blocks
# bottleneck rules likewise: a fused conv chain is scheduled as a whole (search/rules_bottleneck.py)
CPU_RULES = ("bottleneck_inner", "bottleneck_cpu", "attention_inner", "attention_cpu", "inline", "multi_level_tiling_cpu", "write_cache", "rfactor", "parallel_vectorize_unroll")
GPU_RULES = ("bottleneck_inner", "bottleneck_gpu", "attention_inner", "attention_cpu", "attention_gpu", "inline", "multi_level_tiling_gpu", "cross_thread_reduction", "thread_bind")


@dataclass(frozen=True)
class Target:
    name: str  # "llvm" | "cuda" | "arm"
    tvm_target: tvm.target.Target
    device_type: str  # "cpu" | "cuda": what tvm.device() and MetaSchedule-style runners call it
    rules: tuple[str, ...] = CPU_RULES
    limits: dict = field(default_factory=dict)  # GPU: max_threads_per_block, max_shared_memory_per_block...
    cross_compiler: str | None = None  # e.g. "aarch64-linux-gnu-g++" for ARM export

    @property
    def key(self) -> str:
        """Stable identity for the database: the target's JSON without host details that do not matter."""
        config = {k: v for k, v in _plain(self.tvm_target.export()).items() if k not in ("host",)}
        return json.dumps(config, sort_keys=True, separators=(",", ":"))

    @property
    def is_gpu(self) -> bool:
        return self.device_type == "cuda"

    @property
    def num_cores(self) -> int:
        return int(self.tvm_target.attrs.get("num-cores", os.cpu_count() or 1))

    def device(self):
        return tvm.device(self.device_type, 0)


def _plain(obj):
    if hasattr(obj, "items"):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "Array":
        return [_plain(x) for x in obj]
    if hasattr(obj, "value"):
        return obj.value
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def host_cpu_target(num_cores: int | None = None) -> tvm.target.Target:
    return tvm.target.Target(
        {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": int(num_cores or os.cpu_count() or 1)}
    )


GPU_DEFAULT_LIMITS = {
    "max_shared_memory_per_block": 49152,
    "max_threads_per_block": 1024,
    "max_thread_x": 1024,
    "max_thread_y": 1024,
    "max_thread_z": 64,
    "max_vthread": 8,
    "max_vector_bytes": 16,
}


def cuda_target(arch: str | None = None) -> Target:
    arch = arch or _detect_cuda_arch() or "sm_80"
    tgt = tvm.target.Target(
        {"kind": "cuda", "arch": arch, "max_shared_memory_per_block": 49152, "max_threads_per_block": 1024},
        host=host_cpu_target(),
    )
    return Target("cuda", tgt, "cuda", GPU_RULES, dict(GPU_DEFAULT_LIMITS))


def _detect_cuda_arch() -> str | None:
    try:
        dev = tvm.cuda(0)
        if dev.exist:
            return "sm_" + dev.compute_version.replace(".", "")
    except Exception:  # no CUDA runtime in this TVM build / no driver: fall back to the default arch
        return None
    return None


def arm_target(*, mattr: tuple[str, ...] = ("+neon",), mcpu: str = "cortex-a72", num_cores: int = 4) -> Target:
    tgt = tvm.target.Target(
        {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": list(mattr), "mcpu": mcpu, "num-cores": num_cores}
    )
    return Target("arm", tgt, "cpu", CPU_RULES, {}, cross_compiler="aarch64-linux-gnu-g++")


def resolve_target(spec: "str | Target") -> Target:
    """'llvm' (this CPU), 'cuda[:sm_XX]', 'arm' (aarch64 + NEON), or a TVM target JSON object."""
    if isinstance(spec, Target):
        return spec
    spec = spec.strip()
    if spec in ("llvm", "cpu", "x86"):
        return Target("llvm", host_cpu_target(), "cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        return cuda_target(spec.split(":", 1)[1] if ":" in spec else None)
    if spec in ("arm", "aarch64"):
        return arm_target()
    if spec.startswith("{"):
        try:
            config = json.loads(spec)
            tgt = tvm.target.Target(config)
        except (ValueError, RuntimeError) as e:
            raise TargetError(f"invalid target JSON {spec!r}: {str(e).splitlines()[0]}") from None
        kind = tgt.kind.name
        if kind == "cuda":
            return Target("cuda", tgt, "cuda", GPU_RULES, dict(GPU_DEFAULT_LIMITS))
        if kind == "llvm":
            is_arm = "aarch64" in str(config.get("mtriple", ""))
            return Target("arm" if is_arm else "llvm", tgt, "cpu", CPU_RULES, {},
                          cross_compiler="aarch64-linux-gnu-g++" if is_arm else None)
        raise TargetError(f"target kind {kind!r} is not supported (llvm, cuda, arm)")
    raise TargetError(f"unknown target {spec!r}: use llvm, cuda, arm or a TVM target JSON object")
