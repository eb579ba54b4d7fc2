"""Issue 10: weights files and `run` options from someone you do not trust: each a clear
error naming the file, tensor or option (exit 1 or 2), never a traceback or exit 3."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import cnndsl
from conftest import SPECS, run_cli

LENET = str(SPECS / "lenet5.cnn")


@pytest.fixture(scope="module")
def state():
    return cnndsl.load(LENET).to_torch().state_dict()


def _write(tmp_path, kind: str, state) -> str:
    from safetensors.torch import save_file
    path = tmp_path / f"w_{kind}"
    good = {k: v.clone() for k, v in state.items()}
    if kind == "garbage":
        path.write_bytes(b"\x00\x13garbage" * 100)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated_pt":
        torch.save(good, path)
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "truncated_safetensors":
        save_file(good, str(path))
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "safetensors_named_pt":
        path = tmp_path / "w.pt"
        save_file(good, str(path))
    elif kind == "bf16":
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v
                   for k, v in good.items()}, str(path))
    elif kind == "sparse":
        good["c1.weight"] = good["c1.weight"].to_sparse()
        torch.save(good, path)
    elif kind == "not_a_tensor":
        good["c1.bias"] = [0.0] * 6
        torch.save(good, path)
    elif kind == "not_a_state_dict":
        torch.save([1, 2, 3], path)
    elif kind in ("nan", "inf", "complex", "int", "bool"):
        value = {"nan": torch.full((6,), float("nan")), "inf": torch.full((6,), float("inf")),
                 "complex": torch.zeros(6, dtype=torch.complex64),
                 "int": torch.zeros(6, dtype=torch.int32),
                 "bool": torch.zeros(6, dtype=torch.bool)}[kind]
        good["c1.bias"] = value
        torch.save(good, path)
    return str(path)


@pytest.mark.parametrize("kind, message", [
    ("garbage", "neither a safetensors file nor a PyTorch checkpoint"),
    ("empty", "the file is empty"), ("truncated_pt", "not a readable PyTorch checkpoint"),
    ("truncated_safetensors", "damaged safetensors file"),
    ("sparse", "`c1.weight` is a sparse tensor"), ("not_a_tensor", "`c1.bias` is a list"),
    ("not_a_state_dict", "holds a list, not a state_dict"),
    ("nan", "`c1.bias` has 6 NaN or infinite values"),
    ("inf", "`c1.bias` has 6 NaN or infinite values"), ("complex", "`c1.bias` is complex"),
    ("int", "`c1.bias` holds int32 values"), ("bool", "`c1.bias` holds bool values"),
])
def test_bad_weights_are_refused_by_name(kind, message, tmp_path, state):
    path = _write(tmp_path, kind, state)
    result = run_cli("compile", LENET, "--to", "onnx", "-o", str(tmp_path / "m.onnx"),
                     "--weights", path)
    assert result.returncode == 1, result.stderr
    assert "error[E-weights]" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("kind", ["safetensors_named_pt", "bf16"])
def test_weights_are_read_by_content_and_bf16_widens(kind, tmp_path, state):
    path = _write(tmp_path, kind, state)
    result = run_cli("compile", LENET, "--to", "onnx", "-o", str(tmp_path / "m.onnx"),
                     "--weights", path)
    assert result.returncode == 0, result.stderr
    proto = onnx.load(tmp_path / "m.onnx")
    weight = next(i for i in proto.graph.initializer if i.name == "c1.weight")
    expected = state["c1.weight"]
    if kind == "bf16":
        expected = expected.to(torch.bfloat16).float()
    assert np.array_equal(onnx.numpy_helper.to_array(weight), expected.numpy())


def test_weights_with_to_torch_is_a_usage_error(tmp_path, state):
    path = tmp_path / "w.pt"
    torch.save(state, path)
    result = run_cli("compile", LENET, "--to", "torch", "-o", str(tmp_path / "m.py"),
                     "--weights", str(path))
    assert result.returncode == 2 and "apply to --to onnx" in result.stderr


@pytest.mark.parametrize("flags", [("--batch", "-1"), ("--bench", "-1"), ("--seed", "-1"),
                                   ("--threads", "100000"), ("--batch", "0")])
def test_run_options_out_of_range_are_usage_errors(flags):
    result = run_cli("run", LENET, *flags)
    assert result.returncode == 2 and "must be between" in result.stderr


def test_opset_out_of_range_is_a_usage_error(tmp_path):
    result = run_cli("compile", LENET, "--to", "onnx", "-o", str(tmp_path / "m.onnx"),
                     "--opset", "0")
    assert result.returncode == 2 and "must be between 13 and 21" in result.stderr


@pytest.mark.parametrize("content, message", [
    (np.array(["a", "b"]), "not numbers"),
    (np.zeros(2, dtype=[("a", "f4"), ("b", "f4")]), "not numbers"),
    ("huge_header", "more than the file holds"),
    ("devnull", "not a regular file"),
])
def test_bad_input_arrays_are_refused(content, message, tmp_path):
    path = tmp_path / "x.npy"
    if isinstance(content, np.ndarray):
        np.save(path, content)
    elif content == "huge_header":
        np.save(path, np.zeros((1, 1, 32, 32), np.float32))
        data = path.read_bytes().replace(b"(1, 1, 32, 32)", b"(99999999, 1, 32, 32)", 1)
        path.write_bytes(data)
    else:
        path = "/dev/null"
    result = run_cli("run", LENET, "--input", str(path))
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def _model(tmp_path, inputs, name="m.onnx"):
    nodes = [helper.make_node("Identity", [inputs[0].name], ["y"])] if inputs else [
        helper.make_node("Constant", [], ["y"], value=helper.make_tensor(
            "c", TensorProto.FLOAT, [1], [1.0]))]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(
        "y", inputs[0].type.tensor_type.elem_type if inputs else TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, tmp_path / name)
    return str(tmp_path / name)


@pytest.mark.parametrize("case, message", [
    ("no_inputs", "has no inputs"), ("symbolic", "has a symbolic size"),
    ("int64", "takes tensor(int64)"), ("fixed_batch", "takes batch 1 only, not 3"),
])
def test_onnx_models_run_cannot_feed_are_refused(case, message, tmp_path):
    inputs = {
        "no_inputs": [],
        "symbolic": [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                   ["n", 3, "h", "w"])],
        "int64": [helper.make_tensor_value_info("x", TensorProto.INT64, ["n", 4])],
        "fixed_batch": [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
    }[case]
    result = run_cli("run", _model(tmp_path, inputs), "--batch", "3")
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_symbolic_sizes_run_from_an_input_array(tmp_path):
    path = _model(tmp_path, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                           ["n", 3, "h", "w"])])
    np.save(tmp_path / "x.npy", np.ones((2, 3, 5, 7), np.float32))
    result = run_cli("run", path, "--input", str(tmp_path / "x.npy"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outputs"][0]["shape"] == [2, 3, 5, 7]


def _odd_weights(kind: str, state):
    good = {k: v.clone() for k, v in state.items()}
    if kind == "meta":
        good["f7.bias"] = torch.empty(10, device="meta")
    elif kind == "quantized":
        good["f7.bias"] = torch.quantize_per_tensor(torch.zeros(10), 0.1, 0, torch.qint8)
    elif kind == "float8":
        good["f7.bias"] = torch.zeros(10).to(torch.float8_e4m3fn)
    elif kind == "float64_huge":
        good["f7.bias"] = torch.full((10,), 1e300, dtype=torch.float64)
    return good


@pytest.mark.parametrize("kind, suffix, message", [
    ("meta", "pt", "`f7.bias` is on the meta device"),
    ("quantized", "pt", "`f7.bias` is a quantized tensor"),
    ("float8", "pt", "`f7.bias` holds float8_e4m3fn values"),
    ("float8", "safetensors", "`f7.bias` holds float8_e4m3fn values"),
    ("float64_huge", "pt", "`f7.bias` has 10 values too large for float32"),
])
def test_weights_without_usable_numbers_are_refused_by_name(kind, suffix, message, tmp_path,
                                                            state):
    """b17: meta and quantized tensors were an internal error, float8 "a damaged file",
    float64 beyond float32's range became inf in the ONNX model."""
    path = tmp_path / f"w.{suffix}"
    weights = _odd_weights(kind, state)
    if suffix == "pt":
        torch.save(weights, path)
    else:
        from safetensors.torch import save_file
        save_file(weights, str(path))
    result = run_cli("compile", LENET, "--to", "onnx", "-o", str(tmp_path / "m.onnx"),
                     "--weights", str(path))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error[E-weights]") and message in result.stderr
    assert not (tmp_path / "m.onnx").exists()
    if kind in ("meta", "quantized"):  # a state_dict given to the API: the same words
        with pytest.raises(cnndsl.CnnError, match=message):
            cnndsl.load(LENET).to_onnx(weights=weights)


BN_NET = ("network w() {\n    input image: 1 x 16 x 16\n    c1: conv(4, 3, padding=same, "
          "bias=false) -> bn: batchnorm -> relu\n    flatten\n    fc: linear(10)\n}\n")


@pytest.mark.parametrize("change, message", [
    ({"bn.running_var": -1.0}, "`bn.running_var` has 4 negative values"),
    ({"bn.weight": 1e38, "bn.running_var": 1e-30},
     "folding `bn` into `c1` gives weights too large for float32"),
])
def test_batch_norm_statistics_that_fold_into_nan_or_inf_are_refused(change, message, tmp_path):
    """b17: a negative running_var compiled (exit 0) to NaN folded weights."""
    spec = tmp_path / "w.cnn"
    spec.write_text(BN_NET)
    weights = cnndsl.load(spec).to_torch().state_dict()
    for name, value in change.items():
        weights[name] = torch.full((4,), value)
    torch.save(weights, tmp_path / "w.pt")
    result = run_cli("compile", str(spec), "--to", "onnx", "-o", str(tmp_path / "m.onnx"),
                     "--weights", str(tmp_path / "w.pt"))
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "m.onnx").exists()


def _save(path, inputs, outputs, nodes, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


def test_onnx_models_that_fail_in_onnxruntime_are_located_errors(tmp_path):
    """b18: a zero-size axis, a failure while running and a huge fixed input were
    internal errors (argmax of an empty sequence, Fail, MemoryError)."""
    value = helper.make_tensor_value_info
    zero = _save(tmp_path / "zero.onnx", [value("x", TensorProto.FLOAT, [1, 0])],
                 [value("y", TensorProto.FLOAT, [1, 0])], [helper.make_node("Relu", ["x"], ["y"])])
    failing = _save(tmp_path / "fail.onnx", [value("x", TensorProto.FLOAT, [1, 3])],
                    [value("y", TensorProto.FLOAT, None)],
                    [helper.make_node("Reshape", ["x", "s"], ["y"])],
                    [helper.make_tensor("s", TensorProto.INT64, [1], [7])])
    huge = _save(tmp_path / "huge.onnx", [value("x", TensorProto.FLOAT, [1, 100000, 100000])],
                 [value("y", TensorProto.FLOAT, [1, 100000, 100000])],
                 [helper.make_node("Relu", ["x"], ["y"])])
    for path, start in ((zero, "error[E-run]: input `x` has an axis of size 0"),
                        (failing, "error[E-run]: onnxruntime failed running the model"),
                        (huge, "error[E-limit]: the model's inputs (1 x 100000 x 100000) need "
                               "37.25 GiB")):
        for flags in ((), ("--bench", "2"), ("--json",)):
            result = run_cli("run", path, *flags)
            assert result.returncode == 1, (path, result.stderr)
            if "--json" in flags:
                assert json.loads(result.stdout)["ok"] is False
            else:
                assert start in result.stderr and "internal error" not in result.stderr
                assert "\x1b" not in result.stderr  # onnxruntime's coloured log stays quiet


def test_an_onnx_file_whose_path_is_not_utf8_runs(tmp_path):
    """b19: onnxruntime takes str paths only: "incompatible constructor arguments"."""
    import os
    import subprocess
    import sys
    path = os.fsencode(tmp_path) + b"/o\xff.onnx"
    with open(path, "wb") as f:
        f.write(cnndsl.load(LENET).to_onnx().SerializeToString())
    result = subprocess.run([sys.executable, "-m", "cnndsl", "run", path, "--json"],
                            capture_output=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outputs"][0]["shape"] == [1, 10]
