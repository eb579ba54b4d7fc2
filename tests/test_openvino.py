"""OpenVINO beside onnxruntime: the same ONNX model gives the same outputs in f32, runs in
bf16 only when asked (and says so), and a missing OpenVINO names the extra to install."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import cnndsl
from cnndsl.diagnostics import CnnError
from cnndsl.runtime import open_session
from conftest import run_cli

SPEC = """
network small(classes: int = 5) {
    input image: 3 x 24 x 24
    conv(16, 3, stride=2, padding=1, bias=false) -> batchnorm -> relu
    layer1: basic_stage(16, 1)
    layer2: basic_stage(32, 1, stride=2)
    maxpool(2) -> global_avgpool -> flatten
    fc: linear(classes)
}
"""


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A residual network exported to ONNX (fresh weights), and a batch of inputs."""
    root = tmp_path_factory.mktemp("openvino")
    (root / "small.cnn").write_text(SPEC)
    path = root / "small.onnx"
    path.write_bytes(cnndsl.load(root / "small.cnn").to_onnx(seed=3).SerializeToString())
    x = np.random.default_rng(0).standard_normal((4, 3, 24, 24), dtype=np.float32)
    return path, x


def has_bf16() -> bool:
    import openvino as ov
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_openvino_f32_equals_onnxruntime(small_onnx):
    pytest.importorskip("openvino")
    path, x = small_onnx
    reference = open_session(str(path), "onnxruntime", "cpu").run(x)[0]
    session = open_session(str(path), "openvino", precision="f32")
    got = session.run(x)[0]
    assert got.shape == reference.shape == (4, 5)
    assert np.abs(got - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())
    assert session.precision == "f32" and session.report()["precision_hint"] == "f32"
    assert session.runtime == "openvino on CPU, f32"


def test_openvino_bf16_runs_and_is_reported_as_bf16(small_onnx):
    pytest.importorskip("openvino")
    if not has_bf16():
        pytest.skip("this CPU has no bf16 arithmetic")
    path, x = small_onnx
    result = run_cli("run", str(path), "--runtime", "openvino", "--precision", "bf16",
                     "--input", str(_saved(path.parent, x)), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["runtime"] == "openvino" and report["precision_hint"] == "bf16"
    assert report["precision"] == "bf16" and set(report["layer_precisions"]) == {"bf16"}
    assert report["outputs"][0]["shape"] == [4, 5]
    # bf16 keeps 8 significant bits: close to f32, but not equal to it
    reference = open_session(str(path), "onnxruntime", "cpu").run(x)[0]
    got = open_session(str(path), "openvino", precision="bf16").run(x)[0]
    assert 0 < np.abs(got - reference).max() <= 0.05 * np.abs(reference).max()


def _saved(folder: Path, x: np.ndarray) -> Path:
    path = folder / "x.npy"
    np.save(path, x)
    return path


def test_run_says_which_runtime_and_precision_ran(small_onnx):
    pytest.importorskip("openvino")
    path, _ = small_onnx
    result = run_cli("run", str(path), "--runtime", "openvino", "--batch", "2")
    assert result.returncode == 0, result.stderr
    assert "running on OpenVINO CPU, precision f32 (asked: f32)" in result.stderr
    assert "output fc: 2 x 5" in result.stdout


def test_onnxruntime_has_no_bf16_mode_and_openvino_no_cuda(small_onnx):
    path, _ = small_onnx
    with pytest.raises(CnnError, match="onnxruntime has no bf16 precision mode"):
        open_session(str(path), "onnxruntime", precision="bf16")
    with pytest.raises(CnnError, match="the cuda provider is onnxruntime's"):
        open_session(str(path), "openvino", "cuda")


def test_a_missing_openvino_names_the_extra(small_onnx, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    with pytest.raises(CnnError) as info:
        open_session(str(small_onnx[0]), "openvino")
    diagnostic = info.value.diagnostics[0]
    assert diagnostic.message == "OpenVINO is not installed"
    assert "pip install 'cnndsl[openvino]'" in diagnostic.help
