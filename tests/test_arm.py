"""aarch64: cross-compiled kernels and models, checked as ELF files and for NEON code, then run
on an emulated aarch64 device (qemu-user + Debian's arm64 Python + TVM's aarch64 wheels).

Needs Debian's cross toolchain and qemu (the tests skip with this reason when they are missing):
    apt-get update && apt-get install -y g++-aarch64-linux-gnu qemu-user-static
The qemu run (slow) also needs scripts/setup_arm_qemu.sh (run by the test if needed; cached in
~/.cache/tilecraft-arm; ~2 min the first time, then ~1 min per run: `import tvm` under qemu).
"""

from __future__ import annotations

import re
import shutil
import sys

import numpy as np
import pytest
import tvm
from tvm.support import cc

import tilecraft.api as api
from tilecraft.compiler.interpret import run_graph
from tilecraft.compiler.ir import TensorType
from tilecraft.frontends.builder import GraphBuilder
from tilecraft.search.default_schedule import default_schedule
from tilecraft.targets.arm import DeviceJob, QemuDevice, elf_description, is_aarch64_elf, run_on_device, setup_qemu_device
from tilecraft.targets.base import resolve_target

CROSS = "aarch64-linux-gnu-g++"
INSTALL = "apt-get update && apt-get install -y g++-aarch64-linux-gnu qemu-user-static"
needs_cross = pytest.mark.skipif(shutil.which(CROSS) is None, reason=f"{CROSS} not found; install with: {INSTALL}")
NEON_FMA = re.compile(r"fmla\s+v\d+\.4s")  # a 4-lane fp32 fused multiply-add: vectorized NEON code


def matmul_graph():
    rng = np.random.default_rng(0)
    b = GraphBuilder()
    y = b.add("matmul", [b.add_input("x", TensorType((64, 128), "float32")), b.const(rng.standard_normal((128, 96)).astype("float32"), "w")])
    return b.finish([y])


def small_model():
    """conv 3x3 + relu -> global average pool -> flatten -> dense + bias (a tiny CNN)."""
    rng = np.random.default_rng(1)
    b = GraphBuilder()
    x = b.add_input("x", TensorType((1, 3, 16, 16), "float32"))
    w = b.const((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype("float32"), "w")
    c = b.add("relu", [b.add("conv2d", [x, w], strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), groups=1)])
    pooled = b.add("reduce", [c], axes=(2, 3), keepdims=True, kind="mean")
    flat = b.add("reshape", [pooled], shape=(1, 8))
    dense = b.add("matmul", [flat, b.const(rng.standard_normal((8, 10)).astype("float32"), "wd")])
    y = b.add("add", [dense, b.const(rng.standard_normal(10).astype("float32"), "bias")])
    return b.finish([y])


def test_arm_target_is_aarch64_with_neon():
    target = resolve_target("arm")
    attrs = target.tvm_target.attrs
    assert str(attrs["mtriple"]).startswith("aarch64") and "+neon" in [str(a) for a in attrs["mattr"]]
    assert target.tvm_target.features.is_aarch64
    assert target.cross_compiler == CROSS and target.device_type == "cpu" and not target.is_gpu


@needs_cross
def test_matmul_kernel_cross_compiles_to_neon(tmp_path):
    prepared = api.prepare(matmul_graph(), target="arm")
    task = prepared.tasks[0]
    sch = default_schedule(task, prepared.target)
    ex = tvm.compile(sch.mod, target=prepared.target.tvm_target)
    asm = ex.mod.inspect_source("asm")
    assert NEON_FMA.search(asm), "expected vectorized NEON fmla in the kernel"
    path = tmp_path / "matmul_arm.so"
    ex.export_library(str(path), fcompile=cc.cross_compiler(CROSS))
    assert is_aarch64_elf(path), elf_description(path)


@needs_cross
def test_small_model_builds_and_exports_for_arm(tmp_path):
    prepared = api.prepare(small_model(), target="arm")
    module, report = api.build_prepared(prepared)
    assert report.tasks == len(prepared.tasks) and set(report.sources.values()) == {"default"}
    path = module.export(tmp_path / "model_arm.so")
    assert is_aarch64_elf(path), elf_description(path)
    with pytest.raises(RuntimeError, match="export it and run it there"):
        module.run({"x": np.zeros((1, 3, 16, 16), "float32")})


@pytest.mark.slow
@needs_cross
@pytest.mark.skipif(shutil.which("qemu-aarch64-static") is None, reason=f"qemu-aarch64-static not found; install with: {INSTALL}")
def test_cross_compiled_code_runs_under_qemu_and_matches_numpy(tmp_path):
    try:
        device = QemuDevice.find() or setup_qemu_device(python=sys.executable)
    except RuntimeError as e:  # no network / not root: the emulated device cannot be prepared
        pytest.skip(f"no emulated aarch64 device: {e}")
    rng = np.random.default_rng(2)
    # a single kernel (default CPU schedule, parallel + NEON) ...
    mm = api.prepare(matmul_graph(), target="arm")
    kernel = tvm.compile(default_schedule(mm.tasks[0], mm.target).mod, target=mm.target.tvm_target)
    kernel.export_library(str(tmp_path / "matmul.so"), fcompile=cc.cross_compiler(CROSS))
    a = rng.standard_normal((64, 128)).astype("float32")
    w = matmul_graph().constants["w"]  # the kernel takes (x, w, out)
    # ... and a whole model (Relax VM, weights inside the library)
    graph = small_model()
    module, _ = api.build_prepared(api.prepare(graph, target="arm"))
    module.export(tmp_path / "model.so")
    x = rng.standard_normal((1, 3, 16, 16)).astype("float32")

    (mm_out,), (model_out,) = run_on_device(device, [
        DeviceJob("kernel", str(tmp_path / "matmul.so"), (a, w), out_shape=(64, 96)),
        DeviceJob("vm", str(tmp_path / "model.so"), (x,)),
    ], timeout_s=600)
    np.testing.assert_allclose(mm_out, a @ w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(model_out, run_graph(graph, {"x": x})[0], rtol=1e-4, atol=1e-5)
