"""ONNX back end: onnxruntime agrees with PyTorch on every spec; the graph checks and its
inferred shapes are the checker's."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

import cnndsl
from cnndsl.backends.onnx_export import save, to_onnx
from cnndsl.runtime import create_session
from conftest import ROOT, SPECS, ZOO_SPECS, run_cli

torch.set_num_threads(2)


def randomise_batchnorm(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial statistics, so that folding batch norm is really tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def assert_close(actual: np.ndarray, expected: np.ndarray) -> None:
    diff = np.abs(actual - expected)
    scale = np.abs(expected).max()
    # 1e-4 for outputs of the size of logits (every classifier's: scale < 100); outputs in
    # pixels (YOLOv8's boxes, up to 640, where a float32 step is 6e-5) get it per 100
    bound = 1e-4 * max(1.0, scale / 100)
    assert diff.max() <= bound, f"max abs diff {diff.max():.3g} (output scale {scale:.3g})"
    assert diff.max() <= 1e-3 * scale + 1e-7, f"relative diff {diff.max() / scale:.3g}"


@pytest.fixture(scope="module", params=ZOO_SPECS)
def pair(request):
    model = cnndsl.load(SPECS / request.param)
    module = model.to_torch().eval()
    randomise_batchnorm(module)
    proto = model.to_onnx(weights=module.state_dict())
    session = create_session(proto.SerializeToString(), "cpu")
    return model, module, proto, session


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_agrees_with_torch(pair, batch):
    model, module, _, session = pair
    rng = np.random.default_rng(batch)
    inputs = [rng.standard_normal((batch, *i.shape)).astype(np.float32) for i in model.inputs]
    with torch.no_grad():
        expected = module(*(torch.from_numpy(x) for x in inputs))
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = session.run(*inputs)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == tuple(e.shape)
        assert_close(a, e.numpy())


# A known defect found with the segmentation specs (not fixed yet): after a bilinear Resize
# by scales fed from a 1 x 1 map (ASPP's image pooling) or a gated product (LR-ASPP), ONNX
# shape inference names the batch `unk__0` instead of `batch`; onnxruntime's outputs agree.
def test_full_check_and_inferred_shapes_are_the_checkers(pair):
    model, _, proto, _ = pair
    onnx.checker.check_model(proto, full_check=True)
    _, value_of = to_onnx(model.ir, model.weights(), fold_batchnorm=True)
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.output)}
    for node in model.layers:
        value = value_of[node.name]
        if value in shapes:
            assert shapes[value] == ["batch", *node.shape], node.name
    covered = sum(value_of[n.name] in shapes for n in model.layers)
    assert covered >= 0.5 * len(model.layers)  # aliases (dropout, folded BN) share values


def test_names_come_from_the_spec():
    model = cnndsl.load(SPECS / "resnet18.cnn")
    proto = model.to_onnx()
    names = {t.name for t in proto.graph.initializer}
    assert "layer1.basic1.conv1.weight" in names and "fc.bias" in names
    assert [n.name for n in proto.graph.node][:2] == ["conv1", "relu1"]  # BN folded
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    kept = model.to_onnx(fold_batchnorm=False)
    assert sum(n.op_type == "BatchNormalization" for n in kept.graph.node) == 20
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) == 0


def test_weights_round_trip_through_the_cli(tmp_path):
    model = cnndsl.load(SPECS / "mobilenet_v2.cnn")
    module = model.to_torch().eval()
    randomise_batchnorm(module, seed=3)
    torch.save(module.state_dict(), tmp_path / "w.pt")
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in module.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    for weights in ("w.pt", "w.safetensors"):
        out = tmp_path / f"m_{weights}.onnx"
        result = run_cli("compile", "specs/mobilenet_v2.cnn", "--to", "onnx", "-o", str(out),
                         "--weights", str(tmp_path / weights))
        assert result.returncode == 0, result.stderr
        actual = create_session(str(out), "cpu").run(x)[0]
        assert_close(actual, expected)


def test_weights_that_do_not_fit_are_refused(tmp_path):
    lenet = cnndsl.load(SPECS / "lenet5.cnn").to_torch()
    torch.save(lenet.state_dict(), tmp_path / "lenet.pt")
    result = run_cli("compile", "specs/alexnet.cnn", "--to", "onnx", "-o",
                     str(tmp_path / "a.onnx"), "--weights", str(tmp_path / "lenet.pt"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "do not fit alexnet" in result.stderr and "missing `conv1.weight`" in result.stderr
    assert not (tmp_path / "a.onnx").exists()


def test_asking_for_cuda_without_it_is_a_clear_error():
    result = run_cli("run", "specs/lenet5.cnn", "--provider", "cuda")
    assert result.returncode == 1
    assert "error[E-run]: the cuda provider is not available" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_reports_the_provider_and_benchmarks(tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = run_cli("run", "specs/lenet5.cnn", "--provider", "auto", "--input",
                     str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"),
                     "--bench", "5", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # --json: one document, nothing else on stdout
    assert report["provider"] == "cpu"
    assert report["outputs"] == [{"name": "f7", "shape": [2, 10], "argmax": np.load(
        tmp_path / "y.npy").argmax(axis=1).tolist()}]
    assert np.load(tmp_path / "y.npy").shape == (2, 10)
    assert report["benchmark"]["images_per_s"] > 0 and report["benchmark"]["runs"] == 5
    text = run_cli("run", "specs/lenet5.cnn", "--input", str(tmp_path / "x.npy"))
    assert "running on cpu (CPUExecutionProvider)" in text.stderr
    assert "output f7: 2 x 10" in text.stdout


def test_compile_to_onnx_does_not_import_torch(tmp_path):
    code = ("import sys, cnndsl.cli; rc = cnndsl.cli.main(['compile', 'specs/resnet18.cnn', "
            f"'--to', 'onnx', '-o', r'{tmp_path / 'r.onnx'}']); assert rc == 0; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_large_models_keep_their_weights_beside_them(tmp_path):
    model = cnndsl.load(SPECS / "lenet5.cnn")
    proto = model.to_onnx()
    save(proto, tmp_path / "lenet.onnx", external_over=1000)  # as if it were over 2 GB
    (data,) = tmp_path.glob("lenet.onnx.*.data")
    assert data.stat().st_size > 200_000
    assert (tmp_path / "lenet.onnx").stat().st_size < 20_000
    x = np.zeros((1, 1, 32, 32), np.float32)
    out = create_session(str(tmp_path / "lenet.onnx"), "cpu").run(x)[0]
    expected = create_session(proto.SerializeToString(), "cpu").run(x)[0]
    np.testing.assert_array_equal(out, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.onnx", data.name]


LAYERS = """network every_layer() {
    input x: 4 x 15 x 15
    conv(8, 3, stride=2, padding=same, dilation=1) -> batchnorm -> leaky_relu(0.1)
    maxpool(3, stride=2, padding=same) -> elu(0.5)
    conv_transpose(6, 3, stride=2, padding=1, output_padding=1) -> hardswish
    upsample(2) -> avgpool(3, stride=2, ceil_mode=true, count_include_pad=false) -> gelu
    pad(1, value=0.5) -> lrn(3, alpha=0.001, beta=0.75, k=2) -> silu
    conv(12, 1, groups=2, bias=false) -> relu6 -> upsample(2, mode=bilinear) -> sigmoid
    adaptive_avgpool(2) -> global_maxpool -> flatten -> dropout(0.3)
    linear(5) -> batchnorm -> tanh -> softmax
}
"""


@pytest.mark.parametrize("opset", [18, 20])
def test_every_layer_kind_agrees(opset):
    model = cnndsl.load(LAYERS)
    assert {n.op for n in model.layers} >= {"conv_transpose", "upsample", "lrn", "pad", "gelu"}
    module = model.to_torch().eval()
    randomise_batchnorm(module)
    proto = model.to_onnx(weights=module.state_dict(), opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    x = np.random.default_rng(0).standard_normal((3, 4, 15, 15)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert_close(create_session(proto.SerializeToString(), "cpu").run(x)[0], expected)
    gelu_nodes = sum(n.op_type == "Gelu" for n in proto.graph.node)
    assert gelu_nodes == (1 if opset >= 20 else 0)


def test_onnx_session_api():
    model = cnndsl.load(SPECS / "lenet5.cnn")
    module = model.to_torch().eval()
    session = model.onnx_session("cpu", weights=module.state_dict())
    assert session.provider == "cpu" and session.input_names == ["image"]
    x = np.random.default_rng(1).standard_normal((4, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert_close(session.run(x)[0], expected)
    stats = session.benchmark([x.astype(np.float64)], runs=3, progress=False)  # as run() takes
    assert stats["batch"] == 4 and stats["p50_ms"] > 0 and stats["images_per_s"] > 0


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("size, to", [((6, 14), (1, 2)), ((7, 5), (3, 5)), ((13, 3), (9, 17)),
                                      ((6, 14), (28, 10))])
@pytest.mark.parametrize("opset", [13, 21])
def test_upsample_to_any_size_picks_pytorchs_pixels(size, to, mode, opset):
    """Found by the property test: Resize divides by out/in in float, so nearest from 14 to
    2 columns read column 6 where PyTorch reads 7 (14 * (1/7) < 2)."""
    model = cnndsl.loads(f"network n() {{\n    input x: 2 x {size[0]} x {size[1]}\n"
                         f"    upsample(size=({to[0]}, {to[1]}), mode={mode})\n}}\n")
    module = model.to_torch().eval()
    x = torch.randn(3, 2, *size)
    proto, _ = to_onnx(model.ir, model.weights(module.state_dict()), opset)
    actual = create_session(proto.SerializeToString(), "cpu").run(x.numpy())[0]
    np.testing.assert_allclose(actual, module(x).detach().numpy(), atol=1e-5)
