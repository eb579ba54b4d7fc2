"""Property tests: for random valid networks the checker's shape of every layer equals
PyTorch's and onnxruntime's, and the two back ends compute the same outputs.

Fast by default; CNNDSL_HYPOTHESIS=long runs thousands of examples.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import cnndsl
from cnndsl import CnnError
from cnndsl.backends.onnx_export import to_onnx
from cnndsl.runtime import create_session

settings.register_profile("default", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.filter_too_much])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.filter_too_much])
settings.load_profile(os.environ.get("CNNDSL_HYPOTHESIS", "default"))

PADDINGS = ["0", "1", "2", "valid", "same", "full", "(1, 0)", "(0, 2)"]
BLOCKS = """
block sep(c: int, stride: int = 1) {
    conv(in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=false)
    batchnorm -> relu6
    conv(c, 1) if c != in_channels
}
"""


@st.composite
def conv_line(draw, channels: int) -> tuple[str, int]:
    out = draw(st.integers(1, 12))
    kernel = draw(st.sampled_from(["1", "2", "3", "5", "(1, 3)", "(3, 2)"]))
    stride = draw(st.sampled_from(["1", "1", "2", "3", "(2, 1)"]))
    padding = draw(st.sampled_from(PADDINGS))
    dilation = draw(st.sampled_from(["1", "1", "2"]))
    groups = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0 and out % g == 0]
                                  or [1]))
    bias = draw(st.sampled_from(["true", "false"]))
    return (f"conv({out}, {kernel}, stride={stride}, padding={padding}, dilation={dilation}, "
            f"groups={groups}, bias={bias})"), out


def _divisors(channels: int) -> list[int]:
    return [g for g in (2, 3, 4) if channels % g == 0]


@st.composite
def step(draw, channels: int, index: int) -> tuple[str, int]:
    kind = draw(st.sampled_from(["conv", "conv", "pool", "act", "norm", "residual", "branch",
                                 "block", "transpose", "upsample", "channels", "crop",
                                 "skip", "axes", "arith", "halves", "shared"]))
    if kind == "conv":
        return draw(conv_line(channels))
    if kind == "pool":
        op = draw(st.sampled_from(["maxpool", "avgpool"]))
        k = draw(st.sampled_from([2, 3]))
        ceil = draw(st.sampled_from(["true", "false"]))
        pad = draw(st.sampled_from(["0", "1", "same"])) if k == 3 else "0"
        return f"{op}({k}, stride={draw(st.sampled_from([1, 2]))}, padding={pad}, " \
               f"ceil_mode={ceil})", channels
    if kind == "act":
        return draw(st.sampled_from(["relu", "relu6", "gelu", "silu", "hardswish", "sigmoid",
                                     "tanh", "leaky_relu(0.2)", "elu", "identity",
                                     "hardsigmoid", "prelu", "prelu(per_channel=true)",
                                     "scale(0.5)"])), channels
    if kind == "norm":
        groups = [f"groupnorm({g})" for g in _divisors(channels)]
        return draw(st.sampled_from(["batchnorm", "lrn(3)", "dropout(0.1)", "layernorm",
                                     "instancenorm", "instancenorm(affine=true)",
                                     "dropout2d(0.2)", *groups])), channels
    if kind == "residual":
        body, out = draw(conv_line(channels))
        tail = draw(st.sampled_from(["", " -> stochastic_depth(0.2)",
                                     " -> stochastic_depth(0.1, mode=batch)"]))
        return f"residual {{\n        {body} -> batchnorm{tail}\n    }}", out
    if kind == "channels":
        shuffles = [(f"channel_shuffle({g})", channels) for g in _divisors(channels)]
        start = draw(st.integers(0, channels - 1))
        stop = draw(st.integers(start + 1, channels))
        return draw(st.sampled_from([(f"slice({start}, {stop})", stop - start), *shuffles]))
    if kind == "crop":
        size = f"({draw(st.integers(1, 6))}, {draw(st.integers(1, 6))})"
        return draw(st.sampled_from([
            f"crop(size={size}, top={draw(st.integers(0, 2))}, left={draw(st.integers(0, 2))})",
            f"center_crop(size={size})", f"upsample(size={size})",
            f"upsample(size={size}, mode=bilinear)"])), channels
    if kind == "skip":  # U-Net: down, back up to a kept tensor's size, join it
        back = draw(st.sampled_from(["upsample(like=k{i})", "upsample(2) -> center_crop(like=k{i})",
                                     "upsample(like=k{i}, mode=bilinear)"])).format(i=index)
        return (f"k{index}: identity -> maxpool(2, ceil_mode=true) -> conv(4, 1) -> {back} "
                f"-> concat(k{index})"), channels + 4
    if kind == "axes":  # out of C x H x W and back, or along another axis
        return draw(st.sampled_from([
            "permute((1, 2, 0)) -> softmax(-1) -> permute((2, 0, 1))",
            "transpose(height, width) -> log_softmax(1) -> transpose(1, 2)",
            "transpose(0, -1) -> softmax(channels) -> transpose(2, 0)",
            f"k{index}: identity -> concat(k{index}, axis=width)",
            f"k{index}: identity -> concat(k{index}, k{index}, axis=1) -> slice(0, 1, axis=1)",
        ])), channels
    if kind == "arith":
        return draw(st.sampled_from([
            "mul(0.5) -> add(0.25)", "sub(1) -> div(4)", "sigmoid -> log", "tanh -> exp",
            f"k{index}: sigmoid\n    sub(1, k{index}) -> mul(k{index}) -> div(2)",
            f"k{index}: identity\n    m{index} = k{index} -> global_avgpool\n"
            f"    sub(k{index}, m{index})",
        ])), channels
    if kind == "shared":  # one module applied twice; a repeat's every output joined
        return draw(st.sampled_from([
            (f"k{index}: conv({channels}, 3, padding=1) -> relu -> k{index}", channels),
            (f"m{index}: conv({channels}, 1) * 2\n    concat(each(m{index}))", 2 * channels),
            (f"k{index}: identity\n    m{index} = k{index} -> conv({channels}, 1) * 2\n"
             f"    concat(k{index}, each(m{index}))", 3 * channels),
            # fixed weights given in the spec, not trained
            (f"conv({channels}, 1, bias=false, weight=range({channels * channels}), "
             "trainable=false) -> mul(0.01)", channels),
        ]))
    if kind == "halves" and channels % 2 == 0:
        return (f"k{index}: identity\n    p{index}, q{index} = k{index} -> split(2)\n"
                f"    r{index} = q{index} -> sigmoid -> add(1)\n"
                f"    sub(p{index}, q{index}) -> div(r{index})"), channels // 2
    if kind == "halves":
        return "sigmoid -> log", channels
    if kind == "branch":
        a, ca = draw(conv_line(channels))
        mode = draw(st.sampled_from(["concat", "add"]))
        if mode == "add":
            return (f"branch add {{\n        conv({channels}, 3, padding=1)\n        identity\n"
                    "    }"), channels
        return f"branch concat {{\n        {a}\n        conv(4, 1)\n    }}", ca + 4
    if kind == "block":
        c = draw(st.integers(1, 10))
        return f"sep({c}, stride={draw(st.sampled_from([1, 2]))})", c
    if kind == "transpose":
        out = draw(st.integers(1, 6))
        s = draw(st.sampled_from([1, 2]))
        return f"conv_transpose({out}, {draw(st.sampled_from([2, 3]))}, stride={s}, " \
               f"padding={draw(st.sampled_from([0, 1]))}, output_padding={s - 1})", out
    return f"upsample({draw(st.sampled_from(['2', '(1, 2)']))})", channels


@st.composite
def networks(draw) -> str:
    channels = c0 = draw(st.integers(1, 6))
    h, w = draw(st.integers(6, 28)), draw(st.integers(6, 28))
    lines = []
    for index in range(draw(st.integers(1, 6))):
        line, channels = draw(step(channels, index))
        lines.append(line)
    head = draw(st.sampled_from([
        "", "global_avgpool -> flatten -> linear(5) -> softmax",
        f"global_avgpool -> reshape(({channels}, 1)) -> transpose(0, 1) -> flatten -> "
        "linear(6) -> reshape((2, -1)) -> log_softmax(1)",
        # constants from the checked shape: every cell's centre and stride, per pixel
        "kh: identity\n    ah = kh -> anchor_points(offset=0.25)\n"
        "    sh = kh -> anchor_strides(8)\n    kh -> flatten(1) -> concat(ah, sh, axis=0)"]))
    body = "\n    ".join(lines + ([head] if head else []))
    return f"{BLOCKS}\nnetwork random() {{\n    input x: {c0} x {h} x {w}\n" \
           f"    {body}\n}}\n"


ACCEPTED: list[str] = []


@settings()
@given(networks(), st.sampled_from([13, 17, 21]))
def test_checker_torch_and_onnxruntime_agree(text, opset):
    try:
        model = cnndsl.loads(text)
    except CnnError as exc:
        # invalid draws (a kernel larger than its input, groups that do not divide) are
        # rejected by the checker with located errors; they are not this property's subject
        assert all(d.span is not None for d in exc.diagnostics)
        assume(False)
    ACCEPTED.append(text)
    module = model.to_torch().eval()
    torch.manual_seed(0)
    x = torch.randn(2, *model.inputs[0].shape)
    with torch.no_grad():
        values = module.run_all(x)
    for node in model.layers:
        assert tuple(values[node.name].shape[1:]) == node.shape, (node.name, text)

    proto, value_of = to_onnx(model.ir, model.weights(module.state_dict()), opset)
    exposed = {value_of[n.name] for n in model.layers} - {o.name for o in proto.graph.output}
    for name in sorted(exposed):
        proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = create_session(proto.SerializeToString(), "cpu")
    names = [o.name for o in session.session.get_outputs()]
    results = dict(zip(names, session.run(x.numpy())))
    for node in model.layers:
        assert results[value_of[node.name]].shape[1:] == node.shape, (node.name, text)
    expected = values[model.ir.outputs[0]].numpy()
    actual = results[model.ir.outputs[0]]
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(actual - expected).max() <= 1e-4 * scale, text


@settings()
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 6), st.integers(1, 4),
       st.integers(0, 3), st.integers(1, 3))
def test_the_checker_refuses_exactly_what_torch_refuses(h, w, k, s, p, d):
    """A conv the checker rejects does not run in PyTorch, and one it accepts does."""
    text = (f"network t() {{\n    input x: 2 x {h} x {w}\n"
            f"    conv(3, {k}, stride={s}, padding={p}, dilation={d})\n}}\n")
    conv = torch.nn.Conv2d(2, 3, k, stride=s, padding=p, dilation=d)
    try:
        torch_shape = tuple(conv(torch.zeros(1, 2, h, w)).shape[1:])
    except RuntimeError:
        torch_shape = None
    try:
        shape = cnndsl.loads(text).layers[0].shape
    except CnnError as exc:
        assert exc.diagnostics[0].code == "E-shape"
        shape = None
    assert shape == torch_shape


def test_the_random_networks_were_mostly_valid():
    """Guards the property above against passing by rejecting everything."""
    if not ACCEPTED:
        pytest.skip("run together with test_checker_torch_and_onnxruntime_agree")
    assert len(ACCEPTED) >= 15
    assert sum("residual" in t or "branch" in t or "sep(" in t for t in ACCEPTED) >= 5
