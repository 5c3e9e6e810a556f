#!/usr/bin/env bash
# Fresh machine -> a tuned, exported model: install, tune the bundled example CNN, run it,
# check it against ONNX Runtime, benchmark it.  Re-running reuses the tuning database.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

mkdir -p out
.venv/bin/tune examples/tiny_cnn.onnx --target llvm --input-shape input=1x3x32x32 \
    --trials 64 --db out/tiny_cnn.db -o out/tiny_cnn.so
.venv/bin/tilecraft info out/tiny_cnn.so
.venv/bin/python - <<'PY'
import numpy as np, onnxruntime as ort
import tilecraft as tc
x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype("float32")
got = tc.Module.load("out/tiny_cnn.so").run({"input": x})["logits"]
want = ort.InferenceSession("examples/tiny_cnn.onnx", providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
err = float(np.abs(got - want).max())
print(f"max |tilecraft - onnxruntime| = {err:.2e}")
assert err <= 1e-3 * float(np.abs(want).max()), "mismatch against ONNX Runtime"
PY
.venv/bin/tilecraft bench out/tiny_cnn.so
.venv/bin/tilecraft db list --db out/tiny_cnn.db
