"""aarch64 helpers: check cross-linked artifacts, and run them on an emulated device.

The emulated device is Debian's arm64 Python with TVM's aarch64 wheels under qemu-user
(`scripts/setup_arm_qemu.sh` builds it once into ~/.cache/tilecraft-arm).  Timings under
qemu mean nothing (~100x slower); it checks that what we cross-compile loads and computes
the right numbers on an aarch64 TVM runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = REPO / "scripts" / "setup_arm_qemu.sh"
CACHE_ENV = "TILECRAFT_ARM_CACHE"
QEMU = "qemu-aarch64-static"


def default_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "tilecraft-arm"))


def have_tool(name: str | None) -> bool:
    return bool(name) and shutil.which(name) is not None


def elf_description(path: "str | os.PathLike") -> str:
    """`file -b` of an artifact, e.g. 'ELF 64-bit LSB shared object, ARM aarch64, ...'."""
    return subprocess.run(["file", "-b", os.fspath(path)], capture_output=True, text=True, check=True).stdout.strip()


def is_aarch64_elf(path: "str | os.PathLike") -> bool:
    desc = elf_description(path)
    return desc.startswith("ELF 64-bit") and "ARM aarch64" in desc


@dataclass(frozen=True)
class QemuDevice:
    """An aarch64 Python (with TVM) run by qemu-user from a prepared cache folder."""

    cache: Path

    @property
    def sysroot(self) -> Path:
        return self.cache / "sysroot"

    @property
    def python(self) -> Path:
        return self.sysroot / "usr" / "bin" / "python3.11"

    def command(self, *args: str) -> list[str]:
        return [QEMU, "-L", str(self.sysroot), str(self.python), *args]

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.cache / "site"), "PYTHONDONTWRITEBYTECODE": "1"}

    def run(self, *args: str, timeout_s: float = 600.0) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=self.env(), capture_output=True, text=True, timeout=timeout_s)

    @staticmethod
    def find(cache: Path | None = None) -> "QemuDevice | None":
        """The prepared device, or None (no qemu, or the setup script has not finished)."""
        cache = cache or default_cache()
        if not have_tool(QEMU) or not (cache / ".ready").exists():
            return None
        return QemuDevice(cache)


def setup_qemu_device(*, python: str, timeout_s: float = 900.0) -> QemuDevice:
    """Run the (idempotent) setup script; RuntimeError with its last lines if it fails."""
    env = {**os.environ, "PYTHON": python}
    try:
        proc = subprocess.run(["bash", str(SETUP_SCRIPT)], env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{SETUP_SCRIPT.name} took over {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise RuntimeError(f"{SETUP_SCRIPT.name} failed ({proc.returncode}):\n{tail}")
    device = QemuDevice.find(Path(proc.stdout.strip().splitlines()[-1]))
    if device is None:
        raise RuntimeError(f"{SETUP_SCRIPT.name} finished but left no ready device")
    return device


# Runs on the device: each job loads a cross-linked library and calls it on .npy inputs.
#   "vm":     a tilecraft Module (Relax VM executable); outputs = the tuple `main` returns
#   "kernel": a plain kernel library; the last argument is the output buffer (given its shape)
DEVICE_RUNNER = r"""
import json, sys, numpy as np, tvm
from tvm import relax
for job in json.load(open(sys.argv[1])):
    lib = tvm.runtime.load_module(job["lib"])
    args = [tvm.runtime.tensor(np.load(p)) for p in job["inputs"]]
    if job["kind"] == "vm":
        out = relax.VirtualMachine(lib, tvm.cpu())["main"](*args)
        outs = [out[i].numpy() for i in range(len(out))]
    else:
        result = tvm.runtime.empty(job["out_shape"], job["out_dtype"])
        lib["main"](*args, result)
        outs = [result.numpy()]
    for path, value in zip(job["outputs"], outs):
        np.save(path, value)
print("ran", len(json.load(open(sys.argv[1]))), "jobs")
"""


@dataclass(frozen=True)
class DeviceJob:
    kind: str  # "vm" | "kernel"
    lib: str  # path of the cross-linked .so
    inputs: tuple[np.ndarray, ...]
    n_outputs: int = 1
    out_shape: tuple[int, ...] = ()  # "kernel" only
    out_dtype: str = "float32"


def run_on_device(device: QemuDevice, jobs: list[DeviceJob], *, timeout_s: float = 600.0) -> list[list[np.ndarray]]:
    """Run every job in ONE emulated process (importing TVM under qemu costs 25-60 s)."""
    with tempfile.TemporaryDirectory(prefix="tilecraft-arm-") as tmp:
        spec = []
        for j, job in enumerate(jobs):
            inputs = []
            for i, value in enumerate(job.inputs):
                inputs.append(os.path.join(tmp, f"in{j}_{i}.npy"))
                np.save(inputs[-1], np.ascontiguousarray(value))
            outputs = [os.path.join(tmp, f"out{j}_{i}.npy") for i in range(job.n_outputs)]
            spec.append({"kind": job.kind, "lib": os.path.abspath(job.lib), "inputs": inputs, "outputs": outputs,
                         "out_shape": list(job.out_shape), "out_dtype": job.out_dtype})
        with open(os.path.join(tmp, "jobs.json"), "w") as f:
            json.dump(spec, f)
        with open(os.path.join(tmp, "runner.py"), "w") as f:
            f.write(DEVICE_RUNNER)
        proc = device.run(os.path.join(tmp, "runner.py"), os.path.join(tmp, "jobs.json"), timeout_s=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"the aarch64 run failed ({proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
        return [[np.load(p) for p in job["outputs"]] for job in spec]
