"""Module: the built artifact.  One shared library (kernels + weights + Relax VM bytecode +
our metadata); a fresh process loads it with the TVM runtime and this small loader."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..errors import InputError, ModuleLoadError
from .build import META_FUNC


@contextlib.contextmanager
def _quiet_scope_warnings():
    """TVM's VM serializer logs one 'Scope Saving' warning per constant (harmless, dozens per
    model) straight to fd 2; drop those lines and pass every other line through."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().decode(errors="replace").splitlines(keepends=True)
            kept = [line for line in lines if "Scope Saving" not in line]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@dataclass(frozen=True)
class BenchResult:
    median_ms: float
    mean_ms: float
    min_ms: float
    p90_ms: float
    repeats: int

    def __str__(self) -> str:
        return f"median {self.median_ms:.3f} ms  mean {self.mean_ms:.3f} ms  min {self.min_ms:.3f} ms  p90 {self.p90_ms:.3f} ms  ({self.repeats} runs)"


class Module:
    def __init__(self, executable, *, path: str | None = None, device: str | None = None):
        self._exe = executable
        self.path = path
        try:
            vm_meta = relax.VirtualMachine(executable, tvm.cpu())
            self.meta: dict = json.loads(bytes(vm_meta[META_FUNC]().numpy()).decode())
        except (AttributeError, KeyError, ValueError, RuntimeError) as e:
            raise ModuleLoadError(f"{path or 'module'} is not a tilecraft module ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        self.device_type = device or self.meta.get("device", "cpu")
        self.device = tvm.device(self.device_type, 0)
        if self.device_type != "cpu" and not self.device.exist:
            raise ModuleLoadError(f"{path or 'module'} was built for {self.device_type}, which this machine does not have")
        # a CPU module reuses the VM that read the metadata (each VM uploads every constant)
        self.vm = vm_meta if self.device_type == "cpu" else relax.VirtualMachine(executable, self.device)

    # -- loading / saving ------------------------------------------------------
    @staticmethod
    def load(path: str | os.PathLike, *, device: str | None = None) -> "Module":
        path = os.fspath(path)
        if not os.path.exists(path):
            raise ModuleLoadError(f"module file not found: {path}")
        try:
            lib = tvm.runtime.load_module(os.path.abspath(path))
        except RuntimeError as e:
            raise ModuleLoadError(f"cannot load {path}: {str(e).strip().splitlines()[-1]}") from None
        return Module(lib, path=path, device=device)

    def export(self, path: str | os.PathLike, *, cross_compiler: str | None = None) -> str:
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        kwargs = {}
        if cross_compiler:
            from tvm.support import cc

            kwargs["fcompile"] = cc.cross_compiler(cross_compiler)
        with _quiet_scope_warnings():
            self._exe.export_library(path, **kwargs)
        return path

    # -- running -----------------------------------------------------------------
    @property
    def input_specs(self) -> list[dict]:
        return self.meta["inputs"]

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.meta["outputs"]]

    def _arguments(self, inputs: dict[str, np.ndarray]) -> list:
        expected = {s["name"] for s in self.input_specs}
        unknown = sorted(set(inputs) - expected)
        if unknown:
            raise InputError(f"unexpected input(s) {unknown}; the model takes {sorted(expected)}")
        args = []
        for spec in self.input_specs:
            name = spec["name"]
            if name not in inputs:
                raise InputError(f"missing input {name!r} ({spec['dtype']}{spec['shape']})")
            value = np.asarray(inputs[name])
            if list(value.shape) != spec["shape"]:
                raise InputError(f"input {name!r} has shape {list(value.shape)}, the model expects {spec['shape']}")
            if str(value.dtype) != spec["dtype"]:
                raise InputError(f"input {name!r} has dtype {value.dtype}, the model expects {spec['dtype']}")
            # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
            value = value if value.flags.c_contiguous else value.copy(order="C")
            args.append(tvm.runtime.tensor(value, self.device))
        return args

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.vm["main"](*self._arguments(inputs))
        return {name: t.numpy() for name, t in zip(self.output_names, out)}

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        return self.run(inputs)

    def random_inputs(self, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {}
        for spec in self.input_specs:
            shape, dtype = spec["shape"], spec["dtype"]
            if dtype.startswith("float"):
                out[spec["name"]] = rng.standard_normal(shape).astype(dtype)
            elif dtype == "bool":
                out[spec["name"]] = rng.integers(0, 2, shape).astype(bool)
            else:  # token ids / masks: small non-negative values are valid for every model we ship
                out[spec["name"]] = rng.integers(0, 2, shape).astype(dtype)
        return out

    def benchmark(self, inputs: dict[str, np.ndarray] | None = None, *, warmup: int = 3, repeat: int = 30,
                  min_seconds: float = 0.5) -> BenchResult:
        args = self._arguments(inputs if inputs is not None else self.random_inputs())
        main = self.vm["main"]
        for _ in range(warmup):
            main(*args)
        self.device.sync()
        times = []
        start = time.perf_counter()
        while len(times) < repeat or (time.perf_counter() - start < min_seconds and len(times) < 10 * repeat):
            t0 = time.perf_counter()
            main(*args)
            self.device.sync()
            times.append((time.perf_counter() - t0) * 1e3)
        times.sort()
        return BenchResult(statistics.median(times), statistics.fmean(times), times[0], times[int(0.9 * (len(times) - 1))], len(times))
