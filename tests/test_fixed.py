"""Fixed weights and constants (issue 22, item 4): a layer whose weights the spec gives
(`weight=...`) and/or keeps from training (`trainable=false`), counted as frozen
parameters as PyTorch counts them; and anchor_points, a grid made from a checked shape.
The course's horizontal-edge Sobel filter (examples/sobel.cnn) computes, on a test image,
what the convolution computes by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cnndsl
from cnndsl.report import summary_totals, to_json
from cnndsl.runtime import create_session
from conftest import ROOT, import_file

torch.set_num_threads(2)
SOBEL = [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]


def _by_hand(image: np.ndarray) -> np.ndarray:
    """out[i, j] = sum over u, v of K[u][v] * image[i + u][j + v] (no padding, stride 1)."""
    rows, columns = image.shape[0] - 2, image.shape[1] - 2
    out = np.zeros((rows, columns))
    for i in range(rows):
        for j in range(columns):
            out[i, j] = sum(SOBEL[u][v] * image[i + u, j + v] for u in range(3) for v in range(3))
    return out


def _three_ways(model, x: np.ndarray, tmp_path) -> list[np.ndarray]:
    module = model.to_torch().eval()
    with torch.no_grad():
        from_module = module(torch.from_numpy(x)).numpy()
    path = tmp_path / "fixed_model.py"
    path.write_text(model.to_torch_source())
    generated = import_file(path, "fixed_model").build().eval()  # its own fixed values
    with torch.no_grad():
        from_source = generated(torch.from_numpy(x)).numpy()
    from_onnx = create_session(model.to_onnx().SerializeToString(), "cpu").run(x)[0]
    return [from_module, from_source, from_onnx]


def test_the_sobel_example_finds_a_horizontal_edge(tmp_path):
    model = cnndsl.load(ROOT / "examples" / "sobel.cnn", size=6)
    step = np.zeros((1, 1, 6, 6), np.float32)
    step[..., 3:, :] = 1.0  # dark top, bright bottom: one horizontal edge
    expected = np.array([[0, 0, 0, 0], [4, 4, 4, 4], [4, 4, 4, 4], [0, 0, 0, 0]])
    np.testing.assert_array_equal(_by_hand(step[0, 0]), expected)
    for out in _three_ways(model, step, tmp_path):
        np.testing.assert_array_equal(out[0, 0], expected)


def test_the_sobel_example_on_a_random_image_is_the_hand_computation(tmp_path):
    model = cnndsl.load(ROOT / "examples" / "sobel.cnn")
    image = np.random.default_rng(0).integers(0, 256, (1, 1, 8, 8)).astype(np.float32)
    expected = _by_hand(image[0, 0])
    for out in _three_ways(model, image, tmp_path):
        np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)


def test_fixed_weights_do_not_train_and_count_as_frozen():
    model = cnndsl.load(ROOT / "examples" / "sobel.cnn")
    module = model.to_torch()
    assert [p.requires_grad for p in module.parameters()] == [False]
    assert model.params == sum(p.numel() for p in module.parameters()) == 9
    totals = summary_totals(model.ir)
    assert (totals["trainable_params"], totals["frozen_params"]) == (0, 9)
    assert to_json(model.ir)["frozen_params"] == 9
    assert "(trainable 0, frozen 9)" in model.summary()
    before = module.edges.weight.detach().clone()
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert trainable == []  # an optimizer gets nothing to change
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    module(x).sum().backward()
    assert module.edges.weight.grad is None and x.grad is not None
    torch.testing.assert_close(module.edges.weight, before)
    np.testing.assert_array_equal(model.weights()["edges.weight"],
                                  np.array(SOBEL, np.float32).reshape(1, 1, 3, 3))


def test_a_dfl_projection_from_range(tmp_path):
    """YOLOv8's DFL: a 1x1 conv whose 16 weights are arange(16), never trained, applied to
    the softmax over the 16 bins: the expected bin."""
    text = ("network dfl() {\n    input x: 64 x 2 x 3\n"
            "    bins = x -> reshape((4, 16, -1)) -> transpose(0, 1) -> softmax(0)\n"
            "    bins -> conv(1, 1, bias=false, weight=range(16), trainable=false)\n"
            "    reshape((4, -1))\n}\n")
    model = cnndsl.loads(text)
    x = np.random.default_rng(1).standard_normal((2, 64, 2, 3)).astype(np.float32)
    probs = torch.from_numpy(x).view(2, 4, 16, 6).softmax(2)
    expected = (probs * torch.arange(16.0).view(1, 1, 16, 1)).sum(2).numpy()
    for out in _three_ways(model, x, tmp_path):
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert to_json(model.ir)["frozen_params"] == 16


def test_anchor_points_are_ultralytics_make_anchors(tmp_path):
    model = cnndsl.loads("network a() {\n    input x: 3 x 4 x 5\n    anchor_points\n}\n")
    assert model.layers[0].shape == (2, 20)
    # ultralytics.utils.tal.make_anchors, for one level
    sy, sx = torch.meshgrid(torch.arange(4) + 0.5, torch.arange(5) + 0.5, indexing="ij")
    expected = torch.stack((sx, sy), -1).view(-1, 2).T.numpy()
    x = np.random.default_rng(2).standard_normal((3, 3, 4, 5)).astype(np.float32)
    for out in _three_ways(model, x, tmp_path):
        assert out.shape == (3, 2, 20)
        np.testing.assert_array_equal(out[2], expected)
    assert model.params == 0 and model.weights() == {}


@pytest.mark.parametrize("line, column, message", [
    ("conv(2, 3, weight=(1, 2, 3))", 16, "`weight` gives 3 values; a weight of shape "
     "2 x 4 x 3 x 3 holds 72"),
    ("conv(1, 1, weight=range(70000))", 23, "`range` cannot take these arguments: at most "
     "65,536 values"),
    ("flatten -> linear(2, weight=(1, 2))", 26, "`weight` gives 2 values; a weight of shape "
     "2 x 64 holds 128"),
    ("conv(1, 1, weight=(1, true, 0, 0))", 23, "`conv` argument `weight`: expected a number, "
     "found bool `true`"),
])
def test_given_weights_are_checked(line, column, message):
    text = f"network n() {{\n    input x: 4 x 4 x 4\n    {line}\n}}\n"
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(text)
    d = info.value.diagnostics[0]
    assert (d.span.line, d.span.column, d.message) == (3, column, message)


@pytest.mark.parametrize("line", ["anchor_points", "anchor_strides(8)"])
def test_generated_constants_in_onnx_keep_the_batch_and_read_no_value(line):
    """Expand to a computed shape gave `unk__0` for the batch in shape inference (found
    with yolov8n in the zoo's ONNX test); and a NaN in the input must not reach them."""
    import onnx
    model = cnndsl.loads(f"network a() {{\n    input x: 3 x 4 x 5\n    {line}\n}}\n")
    inferred = onnx.shape_inference.infer_shapes(model.to_onnx(), strict_mode=True)
    dims = [d.dim_param or d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", *model.layers[-1].shape]
    x = np.full((2, 3, 4, 5), np.nan, np.float32)
    got = model.onnx_session("cpu").run(x)[0]
    with torch.no_grad():
        expected = model.to_torch()(torch.from_numpy(x)).numpy()
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(got, expected)
