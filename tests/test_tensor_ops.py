"""Tensor operations with static shapes (issue 22, item 1): reshape, permute, transpose,
flatten of chosen axes, concat, split and slice along an axis, softmax along an axis, sub,
div, arithmetic with a number, exp and log. Shapes of any rank are first-class: the
table, the JSON report, the summary and the diagram show them as the checker knows them,
and the module, the generated source and onnxruntime compute what PyTorch written by hand
computes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import cnndsl
from cnndsl.backends.diagram import to_dot
from cnndsl.backends.torch_source import generate_source
from cnndsl.report import layer_table, to_json
from conftest import import_file

torch.set_num_threads(2)

# a YOLOv8-like box head on one level: DFL over 16 bins, then dist2bbox
HEAD = """\
network head(reg_max: int = 16) {
    input feat: 8 x 4 x 5
    input anchors: 2 x 20
    box = feat -> conv(4 * reg_max, 1)
    dist = box -> reshape((4, reg_max, -1)) -> transpose(0, 1) -> softmax(0)
    proj = dist -> conv(1, 1, bias=false) -> reshape((4, -1))       # 4 x 20
    lt, rb = proj -> split(2)
    x1y1 = sub(anchors, lt)
    x2y2 = add(anchors, rb)
    centre = add(x1y1, x2y2) -> div(2)
    size = sub(x2y2, x1y1)
    boxes = concat(centre, size) -> mul(8)
    scores = feat -> conv(3, 1) -> flatten(1) -> sigmoid
    output boxes, scores
}
"""


def _reference(module, feat: torch.Tensor, anchors: torch.Tensor):
    """The same head written in PyTorch by hand, reading the module's weights."""
    state = module.state_dict()
    box = torch.nn.functional.conv2d(feat, state["conv1.weight"], state["conv1.bias"])
    b = feat.shape[0]
    dist = box.view(b, 4, 16, 20).transpose(2, 1).softmax(1)
    proj = torch.nn.functional.conv2d(dist, state["conv2.weight"]).view(b, 4, 20)
    lt, rb = proj.chunk(2, 1)
    x1y1, x2y2 = anchors - lt, anchors + rb
    boxes = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * 8
    scores = torch.nn.functional.conv2d(feat, state["conv3.weight"], state["conv3.bias"])
    return boxes, scores.flatten(2).sigmoid()


@pytest.fixture(scope="module")
def head():
    return cnndsl.loads(HEAD, name="head.cnn")


def test_the_head_has_the_shapes_pytorch_gives(head):
    shapes = {n.name: n.shape for n in head.layers}
    assert shapes["reshape1"] == (4, 16, 20)
    assert shapes["transpose1"] == (16, 4, 20)
    assert shapes["reshape2"] == (4, 20)
    assert shapes["split1.0"] == (2, 20)
    assert shapes["concat1"] == (4, 20)
    assert shapes["flatten1"] == (3, 20)
    module = head.to_torch().eval()
    feat, anchors = torch.randn(2, 8, 4, 5), torch.rand(2, 2, 20) * 5
    with torch.no_grad():
        values = module.run_all(feat, anchors)
    for node in head.layers:
        assert tuple(values[node.name].shape[1:]) == node.shape, node.name


def test_module_source_and_onnxruntime_compute_the_hand_written_head(head, tmp_path):
    module = head.to_torch().eval()
    feat, anchors = torch.randn(3, 8, 4, 5), torch.rand(3, 2, 20) * 5
    with torch.no_grad():
        expected = _reference(module, feat, anchors)
        ours = module(feat, anchors)
    path = tmp_path / "head_model.py"
    path.write_text(head.to_torch_source())
    generated = import_file(path, "head_model").build().eval()
    generated.load_state_dict(module.state_dict())
    with torch.no_grad():
        from_source = generated(feat, anchors)
    proto = head.to_onnx(weights=module.state_dict())
    from cnndsl.runtime import create_session
    session = create_session(proto.SerializeToString(), "cpu")
    from_onnx = session.run(feat.numpy(), anchors.numpy())
    for i, reference in enumerate(expected):
        torch.testing.assert_close(ours[i], reference, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(from_source[i], reference, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(from_onnx[i], reference.numpy(), rtol=1e-4, atol=1e-5)


def test_shapes_that_are_not_c_h_w_are_shown_everywhere(head):
    table = layer_table(head.ir)
    assert "4 x 16 x 20" in table and "16 x 4 x 20" in table and "2 x 20" in table
    report = json.loads(json.dumps(to_json(head.ir)))
    layers = {layer["name"]: layer for layer in report["layers"]}
    assert layers["transpose1"]["output_shape"] == [16, 4, 20]
    assert layers["reshape2"]["output_shape"] == [4, 20]
    assert "4 x 20" in head.summary()
    dot = to_dot(head.ir, depth=9)
    assert "4×16×20" in dot and "16×4×20" in dot and "2×20" in dot  # the edges
    assert "reshape 4 x 16 x 20" in dot and "transpose 0,1" in dot and "softmax" in dot


def test_generated_source_reads_like_pytorch(head):
    source = generate_source(head.ir, head.program.definitions)
    assert "Reshape((4, 16, 20))" in source and "Permute((1, 0, 2))" in source
    assert "nn.Softmax(dim=1)" in source and "nn.Flatten(2, 3)" in source
    assert "(x1y1 + x2y2)" not in source  # a merge per node, each its own line
    assert " / 2.0" in source and " * 8.0" in source


def test_a_shape_of_ones_keeps_its_axes():
    """reshape((1, 1)) made Reshape(1): the module back end shortened the pair (found by
    the property test)."""
    model = cnndsl.loads("network t() {\n    input x: 1 x 6 x 6\n    global_avgpool -> "
                         "reshape((1, 1)) -> transpose(0, 1)\n}\n")
    assert model.layers[-1].shape == (1, 1)
    with torch.no_grad():
        out = model.to_torch()(torch.randn(2, 1, 6, 6))
    assert tuple(out.shape) == (2, 1, 1)


@pytest.mark.parametrize("line, expected", [
    ("x -> sub(1)", lambda x: x - 1),
    ("sub(1, x)", lambda x: 1 - x),
    ("x -> div(4)", lambda x: x / 4),
    ("div(2, x)", lambda x: 2 / x),
    ("mul(x, 0.5)", lambda x: x * 0.5),
    ("add(0.25, x)", lambda x: x + 0.25),
])
def test_arithmetic_with_a_number(line, expected, tmp_path):
    model = cnndsl.loads(f"network t() {{\n    input x: 2 x 3 x 3\n    {line}\n}}\n")
    x = torch.rand(2, 2, 3, 3) + 0.5
    with torch.no_grad():
        torch.testing.assert_close(model.to_torch()(x), expected(x))
    path = tmp_path / "arith.py"
    path.write_text(model.to_torch_source())
    with torch.no_grad():
        torch.testing.assert_close(import_file(path, "arith").build()(x), expected(x))
    got = model.onnx_session("cpu").run(x.numpy())[0]
    np.testing.assert_allclose(got, expected(x).numpy(), rtol=1e-6)


def test_a_number_from_a_parameter_is_a_constant():
    model = cnndsl.loads("network t(stride: int = 8) {\n    input x: 2 x 3 x 3\n"
                         "    mul(x, stride)\n}\n")
    assert model.layers[0].attrs.constant == 8.0


def test_split_and_slice_along_an_axis():
    model = cnndsl.loads("network t() {\n    input x: 4 x 6 x 5\n"
                         "    a, b = x -> split((2, 4), axis=height)\n"
                         "    c = x -> slice(1, 4, axis=-1)\n    output a, b, c\n}\n")
    assert [n.shape for n in model.layers] == [(4, 2, 5), (4, 4, 5), (4, 6, 3)]
    x = torch.randn(1, 4, 6, 5)
    with torch.no_grad():
        a, b, c = model.to_torch()(x)
    torch.testing.assert_close(a, x[:, :, :2])
    torch.testing.assert_close(b, x[:, :, 2:])
    torch.testing.assert_close(c, x[..., 1:4])


def _errors(text: str) -> list[tuple[str, int, int, str]]:
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(text, name="t.cnn")
    return [(d.code, d.span.line, d.span.column, d.message) for d in info.value.diagnostics]


def _net(line: str, shape: str = "4 x 6 x 5") -> str:
    return f"network t() {{\n    input x: {shape}\n    {line}\n}}\n"


@pytest.mark.parametrize("line, code, column, message", [
    ("reshape((7, -1))", "E-shape", 13,
     "4 x 6 x 5 (120 values) does not reshape to 7 x ?: 120 is not a multiple of 7"),
    ("reshape((4, 6))", "E-shape", 13,
     "4 x 6 x 5 (120 values) does not reshape to 4 x 6 (24 values)"),
    ("reshape((-1, -1))", "E-arg", 13,
     "`reshape` argument `shape`: only one size may be -1 (inferred)"),
    ("reshape((0, 4))", "E-arg", 13, "`reshape` argument `shape`: expected positive sizes "
     "(and one -1 to infer), found `0`"),
    ("permute((0, 1))", "E-arg", 13, "permute of 4 x 6 x 5 needs 3 axes, found 2"),
    ("permute((0, 1, 1))", "E-arg", 13, "permute needs each axis once, found (0, 1, 1)"),
    ("transpose(0, 3)", "E-arg", 18, "axis 3 is out of range for 4 x 6 x 5: its axes are 0 "
     "to 2 (or -1 to -3), the batch axis not counted"),
    ("softmax(axis=colour)", "E-arg", 18, "`softmax` argument `axis`: unknown axis `colour`"),
    ("flatten -> softmax(height)", "E-arg", 24,
     "`height` names an axis of a C x H x W tensor; this one is 120"),
    ("flatten(2, 1)", "E-arg", 16, "flatten from axis 2 to axis 1: the end comes before the "
     "start"),
    ("slice(0, 9, axis=1)", "E-arg", 14, "axis 1: indices 0 to 9 of 6: need start < stop <= 6"),
    ("mul(x, 2, 3)", "E-arg", 15, "`mul` takes one number at most"),
    ("concat(x, 2)", "E-arg", 15, "`concat` takes tensor names"),
])
def test_errors_point_at_the_argument(line, code, column, message):
    errors = _errors(_net(line))
    assert errors[0] == (code, 3, column, message)


@pytest.mark.parametrize("habit, ours", [
    ("view((4, -1))", "reshape"), ("swapaxes(0, 1)", "transpose"), ("chunk(2)", "split"),
    ("subtract(x)", "sub"), ("divide(2)", "div")])
def test_pytorchs_names_for_tensor_operations_say_ours(habit, ours):
    """One name per operation: `view` is reshape (which keeps the values in order, as
    PyTorch's view does); the help says so where the name is written."""
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(_net(f"x -> {habit}"), name="t.cnn")
    (d,) = info.value.diagnostics
    assert (d.code, d.span.line, d.span.column) == ("E-name", 3, 10)
    assert d.help == f"in cnndsl it is `{ours}`"


def test_concat_along_an_axis_names_both_shapes():
    text = ("network t() {\n    input x: 4 x 6 x 5\n    y = x -> slice(0, 2)\n"
            "    concat(x, y, axis=width)\n}\n")
    (code, line, _, message), = _errors(text)
    assert (code, line) == ("E-shape", 4)
    assert message == ("concat along axis 2 of 4 x 6 x 5 and 2 x 6 x 5: every other size "
                       "must agree")


def test_two_tensors_and_a_number_are_refused():
    text = "network t() {\n    input x: 4 x 6 x 5\n    y = x -> relu\n    mul(x, y, 2)\n}\n"
    assert _errors(text)[0][:2] == ("E-arg", 4)
    assert "with a number takes one tensor, found 2" in _errors(text)[0][3]


def test_a_non_finite_number_is_refused():
    text = _net("mul(x, 1e400)")
    code, _, _, message = _errors(text)[0]
    assert (code, message) == ("E-value", "number out of range")


def test_the_editor_shows_shapes_of_any_rank():
    """What `cnndsl lsp` puts at each line's end (inlay hints) and in a tensor's hover."""
    from cnndsl.lsp.analysis import analyse, line_shapes
    analysis = analyse(HEAD, "head.cnn", None)
    shapes = line_shapes(analysis)
    assert shapes[5] == [(16, 4, 20)]  # dist = ... -> reshape -> transpose -> softmax
    assert shapes[6] == [(4, 20)]
    assert shapes[12] == [(4, 20)]  # boxes
    assert shapes[13] == [(3, 20)]  # scores


@pytest.mark.parametrize("line", ["upsample(2)", "upsample((1, 3))"])
def test_upsample_by_a_factor_keeps_the_batch_axis_in_onnx_shape_inference(line):
    """Resize with scales gave `unk__0` for the batch (found with yolov8n's neck); the
    pixels repeated by reshapes around an Expand keep `batch`, and compute the same."""
    import onnx
    model = cnndsl.loads(f"network t() {{\n    input x: 3 x 4 x 5\n    {line}\n}}\n")
    inferred = onnx.shape_inference.infer_shapes(model.to_onnx(), strict_mode=True)
    dims = [d.dim_param or d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", *model.layers[-1].shape]
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    with torch.no_grad():
        expected = model.to_torch()(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(model.onnx_session("cpu").run(x)[0], expected)
