"""What `check` accepts, every back end runs, with the same result: the limits of PyTorch
and onnxruntime are the layer kinds' rules (cnndsl/layers.py), checked at the argument,
and what one back end lacks is written another way, not refused."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import cnndsl
from cnndsl.runtime import create_session
from conftest import import_file


def _net(line: str, shape: str) -> str:
    return f"network p() {{\n    input x: {shape}\n    {line}\n}}\n"


def _errors(text: str) -> list[tuple[str, int, int, str]]:
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(text, name="t.cnn")
    return [(d.code, d.span.line, d.span.column, d.message) for d in info.value.diagnostics]


def _outputs(model, x: torch.Tensor, opset: int = 18):
    """The in-memory module and onnxruntime on one input."""
    module = model.to_torch().eval()
    with torch.no_grad():
        expected = module(x).numpy()
    proto = model.to_onnx(weights=module.state_dict(), opset=opset)
    return expected, create_session(proto.SerializeToString(), "cpu").run(x.numpy())[0]


@pytest.mark.parametrize("line, shape, column, message", [
    ("maxpool(3, stride=1, padding=same, dilation=2)", "2 x 9 x 9", 26,
     "padding=same needs 2 rows of padding on a side; a 3-row kernel takes at most 1"),
    ("maxpool(3, padding=full)", "2 x 11 x 6", 16,
     "padding=full needs 2 rows of padding on a side; a 3-row kernel takes at most 1"),
    ("avgpool(5, stride=3, padding=full)", "2 x 11 x 6", 26,
     "padding=full needs 4 rows of padding on a side; a 5-row kernel takes at most 2"),
    ("maxpool((3, 2), stride=1, padding=full, dilation=2, ceil_mode=true)", "2 x 7 x 12", 31,
     "padding=full needs 4 rows of padding on a side; a 3-row kernel takes at most 1"),
    ("conv_transpose(2, 3, stride=1, padding=1, output_padding=1, dilation=2)", "2 x 12 x 8",
     47, "output_padding 1 must be smaller than the stride (1)"),
    ("maxpool(2, stride=1, padding=1, dilation=2)", "1 x 1 x 2", 37,
     "maxpool window 0 covers only padding: its row taps fall at -1, 1 of a 1-row input"),
])
def test_what_a_back_end_refuses_is_refused_at_the_argument(line, shape, column, message):
    assert _errors(_net(line, shape)) == [("E-arg", 3, column, message)]


POOLS = [(op, size, k, s, d, pad, ceil)
         for op in ("maxpool", "avgpool")
         for size, k, s, d, pad, ceil in itertools.product(
             (1, 2, 5, 6), (1, 2, 3, 4), (1, 2, 3), (1, 2, 3),
             ("valid", "same", "full", "1", "(0, 2)"), (False, True))
         if op == "maxpool" or d == 1]


def test_every_pool_check_accepts_runs_alike_in_pytorch_and_onnxruntime():
    """Padding modes, dilations and ceil_mode on small inputs: each pool `check` accepts
    gives the checker's shape and the same values in both back ends (before, 188 of them
    crashed PyTorch and 16 gave -inf against onnxruntime's lowest float)."""
    accepted = refused = 0
    for op, size, k, s, d, pad, ceil in POOLS:
        dilation = f", dilation={d}" if op == "maxpool" else ""
        text = _net(f"{op}({k}, stride={s}, padding={pad}{dilation}, "
                    f"ceil_mode={str(ceil).lower()})", f"1 x {size} x {size + 1}")
        try:
            model = cnndsl.loads(text)
        except cnndsl.CnnError as exc:
            assert {d.code for d in exc.diagnostics} <= {"E-arg", "E-shape"}, text
            refused += 1
            continue
        expected, actual = _outputs(model, torch.rand(1, 1, size, size + 1) - 0.5)
        assert expected.shape == actual.shape == (1, *model.ir.nodes[-1].shape), text
        assert np.abs(expected - actual).max() < 1e-6, text
        accepted += 1
    assert accepted > 500 and refused > 100


def test_every_transposed_conv_check_accepts_runs_in_onnxruntime():
    accepted = 0
    for size, k, s, p, out_pad, d in itertools.product((1, 3), (1, 2, 3), (1, 2, 3), (0, 1, 2),
                                                       (0, 1, 2), (1, 2, 3)):
        text = _net(f"conv_transpose(2, {k}, stride={s}, padding={p}, output_padding={out_pad}, "
                    f"dilation={d})", f"2 x {size} x {size + 1}")
        try:
            model = cnndsl.loads(text)
        except cnndsl.CnnError:
            continue
        expected, actual = _outputs(model, torch.rand(1, 2, size, size + 1))
        assert np.abs(expected - actual).max() < 1e-5, text
        accepted += 1
    assert accepted > 150


@pytest.mark.parametrize("size, out", [(30, 4), (7, 5), (13, 5), (3, 7), (6, (4, 5))])
def test_adaptive_pooling_to_any_size_writes_onnx(size, out, tmp_path):
    """Uneven windows (30 -> 4) were refused by the ONNX back end only; they are a linear
    map, written as two MatMuls, and agree with PyTorch and the generated source."""
    model = cnndsl.loads(_net(f"adaptive_avgpool({out})", f"3 x {size} x {size}"))
    x = torch.randn(2, 3, size, size)
    expected, actual = _outputs(model, x)
    assert np.abs(expected - actual).max() < 1e-5
    path = tmp_path / "g.py"
    path.write_text(model.to_torch_source())
    with torch.no_grad():
        assert np.array_equal(import_file(path, f"adaptive_{size}").build()(x).numpy(), expected)


@pytest.mark.parametrize("opset", [13, 14, 18])
def test_hardswish_at_every_opset(opset):
    """HardSwish is an opset-14 operator: at 13 the model was invalid."""
    model = cnndsl.loads(_net("conv(4, 3) -> hardswish", "3 x 8 x 8"))
    expected, actual = _outputs(model, torch.randn(2, 3, 8, 8) * 4, opset)
    assert np.abs(expected - actual).max() < 1e-5


@pytest.mark.parametrize("line", ["pad(1) -> maxpool(3, stride=2, padding=same)",
                                  "pad(2) -> maxpool(3, stride=2, padding=1)",
                                  "pad(1) -> dropout -> maxpool(3, stride=2, padding=1)",
                                  "pad(1) -> avgpool(3, stride=2, padding=1, "
                                  "count_include_pad=false)"])
def test_a_zero_pad_before_a_pool_stays_a_pad_in_onnxruntime(line):
    """onnxruntime folds a zero Pad into the next pool's padding, which a max ignores (wrong
    values on negative inputs) and which may exceed the kernel (a model it cannot load)."""
    model = cnndsl.loads(_net(line, "1 x 7 x 7"))
    expected, actual = _outputs(model, -torch.rand(1, 1, 7, 7) - 1)
    assert np.abs(expected - actual).max() < 1e-6
