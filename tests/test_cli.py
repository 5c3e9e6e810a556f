"""The CLI as a new user meets it: the happy path, and bad input -> one line + exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tilecraft.cli import main, tune_main

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "tiny_cnn.onnx"


def _one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize("flags", [["--layout", "NCHW"], ["--layout", "NCHWc"], ["--layout", "NCHWc", "--no-winograd"]])
def test_tune_run_bench_round_trip(tmp_path, capsys, flags):
    out = tmp_path / "tiny.so"
    code = tune_main([str(EXAMPLE), "--input-shape", "input=1x3x32x32", "-o", str(out), "--db", str(tmp_path / "t.db"),
                      *flags])
    assert code == 0 and out.exists()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--input", f"input={tmp_path / 'x.npy'}", "--output", str(tmp_path / "y.npz")]) == 0
    y = np.load(tmp_path / "y.npz")["logits"]
    import onnxruntime as ort

    ref = ort.InferenceSession(str(EXAMPLE), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert main(["bench", str(out), "--repeat", "5"]) == 0
    assert "median" in capsys.readouterr().out


def test_export_does_not_flood_stderr(tmp_path, capfd):
    """TVM logs a 'Scope Saving' warning per constant when it serializes the VM; the user sees none."""
    import tilecraft as tc

    module = tc.compile(tc.load_model(EXAMPLE, input_shapes={"input": (1, 3, 32, 32)}), target="llvm")
    capfd.readouterr()
    module.export(tmp_path / "tiny.so")
    err = capfd.readouterr().err
    assert "Scope Saving" not in err and (tmp_path / "tiny.so").exists()


def test_missing_model_file(tmp_path, capsys):
    _one_line_error(capsys, tune_main([str(tmp_path / "nope.onnx")]), "not found", "nope.onnx")


def test_garbage_and_truncated_onnx(tmp_path, capsys):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(3000))
    _one_line_error(capsys, tune_main([str(garbage)]), "garbage.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(EXAMPLE.read_bytes()[:5000])
    _one_line_error(capsys, tune_main([str(truncated)]), "truncated.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    _one_line_error(capsys, tune_main([str(empty)]), "empty.onnx")


def test_unsupported_ops_are_all_listed(tmp_path, capsys):
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("NonMaxSuppression", ["a"], ["b"], name="nms1"),
        helper.make_node("TopK", ["b", "k"], ["c", "d"], name="topk1"),
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])],
                          initializer=[numpy_helper.from_array(np.array([2], dtype=np.int64), "k")])
    path = tmp_path / "bad_ops.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    _one_line_error(capsys, tune_main([str(path)]), "NonMaxSuppression", "nms1", "TopK", "topk1")


def test_unbound_dynamic_dimension(capsys):
    _one_line_error(capsys, tune_main([str(EXAMPLE)]), "input", "batch", "--input-shape")


def test_bad_input_shape_flag(capsys):
    _one_line_error(capsys, tune_main([str(EXAMPLE), "--input-shape", "input=1x3x32"]), "input")
    _one_line_error(capsys, tune_main([str(EXAMPLE), "--input-shape", "nosuch=1x3x32x32"]), "nosuch")


def test_unknown_target(capsys):
    _one_line_error(capsys, tune_main([str(EXAMPLE), "--input-shape", "input=1x3x32x32", "--target", "tpu"]), "tpu")


@pytest.fixture(scope="module")
def tiny_module(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "tiny.so"
    assert tune_main([str(EXAMPLE), "--input-shape", "input=1x3x32x32", "-o", str(out), "--quiet",
                      "--db", str(out.parent / "t.db")]) == 0
    return out


def test_wrong_input_shape_dtype_and_name_at_run_time(tiny_module, tmp_path, capsys):
    np.save(tmp_path / "bad_shape.npy", np.zeros((1, 3, 16, 16), np.float32))
    _one_line_error(capsys, main(["run", str(tiny_module), "--input", f"input={tmp_path / 'bad_shape.npy'}"]), "shape", "input")
    np.save(tmp_path / "bad_dtype.npy", np.zeros((1, 3, 32, 32), np.float64))
    _one_line_error(capsys, main(["run", str(tiny_module), "--input", f"input={tmp_path / 'bad_dtype.npy'}"]), "dtype", "float32")
    _one_line_error(capsys, main(["run", str(tiny_module), "--input", f"other={tmp_path / 'bad_dtype.npy'}"]), "other")
    _one_line_error(capsys, main(["run", str(tiny_module), "--input", f"input={tmp_path / 'missing.npy'}"]), "missing.npy")


def test_run_on_a_non_module(tmp_path, capsys):
    bogus = tmp_path / "bogus.so"
    bogus.write_bytes(b"not a library")
    _one_line_error(capsys, main(["run", str(bogus)]), "bogus.so")
    _one_line_error(capsys, main(["bench", str(tmp_path / "absent.so")]), "absent.so")


def test_console_scripts_exit_code(tmp_path):
    """The installed entry points, as a shell sees them."""
    proc = subprocess.run([sys.executable, "-c", "import sys; from tilecraft.cli import tune_main; sys.exit(tune_main(sys.argv[1:]))",
                           str(tmp_path / "absent.onnx")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and len(proc.stderr.strip().splitlines()) == 1
