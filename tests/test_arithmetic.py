"""The course notes' worked examples of convolution arithmetic, checked and run in torch."""

from __future__ import annotations

import pytest
import torch

import cnndsl
from cnndsl import CnnError
from cnndsl.layers import Padding


def net(body: str, input_shape: str = "3 x 7 x 7", **kw) -> cnndsl.Model:
    return cnndsl.load(f"network t() {{\n    input x: {input_shape}\n    {body}\n}}\n", **kw)


def torch_shape(model: cnndsl.Model) -> tuple[int, ...]:
    module = model.to_torch().eval()
    with torch.no_grad():
        out = module(*(torch.randn(2, *i.shape) for i in model.inputs))
    return tuple(out.shape[1:])


def test_course_example_760_parameters():
    # 32x32x3 input, 10 filters 5x5, stride 1, pad 2 -> 32x32x10; 5*5*3+1 = 76 per filter
    model = net("conv(10, 5, stride=1, padding=2)", "3 x 32 x 32")
    (layer,) = model.layers
    assert layer.shape == (10, 32, 32)
    assert layer.params == 760 == 10 * (5 * 5 * 3 + 1)
    assert torch_shape(model) == (10, 32, 32)


@pytest.mark.parametrize("stride, size", [(1, 5), (2, 3)])
def test_seven_by_seven_with_three_by_three(stride, size):
    model = net(f"conv(1, 3, stride={stride})")
    assert model.layers[0].shape == (1, size, size)
    assert not model.warnings
    assert torch_shape(model) == (1, size, size)


def test_stride_three_does_not_fit_and_says_why():
    model = net("conv(1, 3, stride=3)")  # (7 - 3) / 3 + 1 = 2.33
    assert model.layers[0].shape == (1, 2, 2)
    assert torch_shape(model) == (1, 2, 2)
    (warning,) = [w for w in model.warnings if w.code == "W-stride"]
    assert "2.33" in warning.message
    assert "the last 1 row and 1 column of the input are ignored" in warning.message
    assert warning.span.line == 3 and warning.span.column == 16  # at `stride=3`


def test_stride_three_is_an_error_under_strict():
    with pytest.raises(CnnError) as info:
        net("conv(1, 3, stride=3)", strict=True)
    (d,) = info.value.diagnostics
    assert d.severity == "error" and d.code == "W-stride"


def test_pad_one_stride_one_keeps_seven():
    assert net("conv(1, 3, padding=1)").layers[0].shape == (1, 7, 7)


def test_full_padding_grows_five_to_seven():
    model = net("conv(1, 3, padding=full)", "1 x 5 x 5")
    assert model.layers[0].shape == (1, 7, 7)
    assert model.layers[0].attrs.padding == Padding(2, 2, 2, 2)
    assert torch_shape(model) == (1, 7, 7)


def test_valid_padding_shrinks_five_to_three():
    assert net("conv(1, 3, padding=valid)", "1 x 5 x 5").layers[0].shape == (1, 3, 3)


def test_same_padding_keeps_size_at_stride_one():
    model = net("conv(4, 5, padding=same)", "1 x 9 x 9")
    assert model.layers[0].shape == (4, 9, 9)
    assert model.layers[0].attrs.padding == Padding(2, 2, 2, 2)  # P = (F - 1) / 2


def test_same_at_stride_two_on_odd_size_is_ceil():
    model = net("conv(4, 3, stride=2, padding=same)", "1 x 7 x 7")
    assert model.layers[0].shape == (4, 4, 4)  # ceil(7 / 2)
    assert model.layers[0].attrs.padding == Padding(1, 1, 1, 1)
    assert torch_shape(model) == (4, 4, 4)


def test_same_at_stride_two_on_even_size_pads_asymmetrically():
    model = net("conv(4, 3, stride=2, padding=same)", "1 x 8 x 8")
    assert model.layers[0].shape == (4, 4, 4)
    assert model.layers[0].attrs.padding == Padding(0, 1, 0, 1)  # the extra row at the end
    assert torch_shape(model) == (4, 4, 4)
    assert "F.pad(" in model.to_torch_source()


def test_same_with_rectangular_kernel_and_dilation():
    model = net("conv(2, (1, 7), dilation=2, padding=same)", "3 x 10 x 12")
    assert model.layers[0].shape == (2, 10, 12)
    assert torch_shape(model) == (2, 10, 12)


def test_general_formula_with_dilation():
    # floor((W + 2P - D(F-1) - 1)/S) + 1 = floor((32 + 2 - 2*4 - 1)/2) + 1 = 13
    model = net("conv(8, 5, stride=2, padding=1, dilation=2)", "3 x 32 x 32")
    assert model.layers[0].shape == (8, 13, 13)
    assert torch_shape(model) == (8, 13, 13)


def test_pooling_ceil_mode_and_floor():
    floor = net("maxpool(3, stride=2)", "8 x 8 x 8")
    ceil = net("maxpool(3, stride=2, ceil_mode=true)", "8 x 8 x 8")
    assert floor.layers[0].shape == (8, 3, 3)
    assert ceil.layers[0].shape == (8, 4, 4)
    assert torch_shape(floor) == (8, 3, 3) and torch_shape(ceil) == (8, 4, 4)


def test_grouped_and_depthwise_parameters():
    model = net("conv(64, 3, groups=32, padding=1) -> conv(64, 3, groups=64, bias=false)",
                "32 x 8 x 8")
    grouped, depthwise = model.layers
    assert grouped.params == 64 * (32 // 32) * 9 + 64
    assert depthwise.params == 64 * 1 * 9
    assert torch_shape(model) == (64, 6, 6)


def test_conv_transpose_output_size():
    # (W-1)S - 2P + D(F-1) + output_padding + 1 = 6*2 - 2 + 2 + 1 + 1 = 14
    model = net("conv_transpose(4, 3, stride=2, padding=1, output_padding=1)", "8 x 7 x 7")
    assert model.layers[0].shape == (4, 14, 14)
    assert model.layers[0].params == 8 * 4 * 9 + 4
    assert torch_shape(model) == (4, 14, 14)


def test_three_stacked_three_by_three_cover_seven_by_seven():
    # A stack of three 3x3 convolutions covers a 7x7 receptive field: 7x7 -> 1x1
    model = net("conv(1, 3) -> conv(1, 3) -> conv(1, 3)", "1 x 7 x 7")
    assert model.layers[-1].shape == (1, 1, 1)


def test_vgg16_spatial_path_and_the_big_linear_layer():
    model = cnndsl.load("specs/vgg16.cnn")
    pools = [n.shape[1] for n in model.layers if n.op == "maxpool"]
    assert pools == [112, 56, 28, 14, 7]
    assert model.ir.node("fc6").params == 102_764_544


@pytest.mark.parametrize("op, expected", [
    ("global_avgpool", (16, 1, 1)), ("adaptive_avgpool((2, 3))", (16, 2, 3)),
    ("upsample(2)", (16, 10, 10)), ("upsample((1, 2), mode=bilinear)", (16, 5, 10)),
    ("lrn(5, alpha=0.0001, beta=0.75, k=2)", (16, 5, 5)), ("batchnorm", (16, 5, 5)),
    ("dropout(0.2)", (16, 5, 5)), ("flatten", (400,)), ("leaky_relu(0.2)", (16, 5, 5)),
    ("softmax", (16, 5, 5)), ("pad(1, value=0.5)", (16, 7, 7)), ("global_maxpool", (16, 1, 1)),
])
def test_other_layers_agree_with_torch(op, expected):
    model = net(op, "16 x 5 x 5")
    assert model.layers[0].shape == expected
    assert torch_shape(model) == expected


def test_linear_and_batchnorm_on_vectors():
    model = net("flatten -> linear(32) -> batchnorm -> relu -> linear(10, bias=false)",
                "4 x 2 x 2")
    assert [n.params for n in model.layers] == [0, 16 * 32 + 32, 64, 0, 320]
    assert torch_shape(model) == (10,)


def test_set_overrides_network_parameters():
    model = cnndsl.load("specs/lenet5.cnn", classes=3)
    assert model.layers[-1].shape == (3,)
    assert model.params == 61_706 - 7 * 85
