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
