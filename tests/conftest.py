"""Shared fixtures: the materialized real models, ONNX Runtime references, fresh inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = Path(os.environ.get("TILECRAFT_SHARED_MODELS", REPO.parent / "shared" / "models"))
MODEL_NAMES = ("resnet18", "mobilenet_v2", "bert_small", "gpt2_2layer", "attn_block")
VOCAB = {"bert_small": 30522, "gpt2_2layer": 8192}


def has_gpu() -> bool:
    import tvm

    try:
        return bool(tvm.cuda(0).exist)
    except (RuntimeError, ValueError, AttributeError, OSError):  # no CUDA runtime in this TVM build
        return False


def pytest_collection_modifyitems(config, items):
    if not has_gpu():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """The shared models with their weights rebuilt (deterministic), once per test session."""
    if not (SHARED_MODELS / "materialize.py").exists():
        pytest.skip(f"shared models not found at {SHARED_MODELS}")
    out = tmp_path_factory.mktemp("models")
    subprocess.run([sys.executable, str(SHARED_MODELS / "materialize.py"), str(out)], check=True, capture_output=True)
    return out


def model_inputs(name: str, specs, seed: int) -> dict[str, np.ndarray]:
    """Fresh random inputs valid for the model: token ids within the vocabulary, 0/1 masks."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for n, t in specs:
        if t.dtype.startswith("float"):
            feeds[n] = rng.standard_normal(t.shape).astype(t.dtype)
        elif "mask" in n:
            m = np.ones(t.shape, dtype=t.dtype)
            m[..., rng.integers(t.shape[-1] // 2, t.shape[-1]):] = 0  # padded tail
            feeds[n] = m
        elif "type" in n:
            feeds[n] = rng.integers(0, 2, t.shape).astype(t.dtype)
        else:
            feeds[n] = rng.integers(0, VOCAB.get(name, 1000), t.shape).astype(t.dtype)
    return feeds


def ort_run(path, feeds) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_close_scaled(got: np.ndarray, want: np.ndarray, rel: float = 1e-3) -> None:
    """max |got - want| <= rel * scale of the output (its max magnitude)."""
    scale = max(float(np.abs(want).max()), 1e-6)
    err = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel} x output scale {scale:.3g}"
