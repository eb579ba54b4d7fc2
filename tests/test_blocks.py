"""Blocks, repeats, residuals, branches, named tensors, imports and channel arithmetic."""

from __future__ import annotations

import pytest
import torch

import cnndsl
from cnndsl import CnnError


def net(body: str, shape: str = "16 x 8 x 8", blocks: str = "", **kw) -> cnndsl.Model:
    return cnndsl.load(f"{blocks}\nnetwork t() {{\n    input x: {shape}\n{body}\n}}\n", **kw)


def run(model: cnndsl.Model):
    module = model.to_torch().eval()
    with torch.no_grad():
        return module.run_all(*(torch.randn(2, *i.shape) for i in model.inputs))


def test_block_parameters_defaults_and_in_channels():
    model = net("    widen(2)\n    widen(3, bias=true)", blocks=(
        "block widen(factor: int, bias: bool = false, out: int = in_channels * factor) {\n"
        "    conv(out, 1, bias=bias)\n}"))
    first, second = model.layers
    assert first.shape == (32, 8, 8) and second.shape == (96, 8, 8)
    assert first.params == 16 * 32 and second.params == 32 * 96 + 96
    assert [s.path for s in model.ir.scopes] == [("widen1",), ("widen2",)]
    assert first.name == "widen1.conv1"


def test_labelled_repeat_makes_an_indexed_container():
    model = net("    stage: basic(16) * 3", blocks="")
    assert model.layers[0].name == "stage.0.conv1"
    assert {n.path[:2] for n in model.layers} == {("stage", "0"), ("stage", "1"),
                                                  ("stage", "2")}
    state = model.to_torch().state_dict()
    assert "stage.2.conv2.weight" in state


def test_repeat_count_is_an_expression_and_zero_is_identity():
    model = net("    relu * (1 - 1)\n    conv(4, 1) * (2 ** 2 - 3)", blocks="")
    assert [n.op for n in model.layers] == ["conv"]
    with pytest.raises(CnnError):
        net("    relu * -1")


def test_automatic_shortcut_identity_and_projection():
    same = net("    residual {\n        conv(16, 3, padding=1)\n    }")
    assert [n.op for n in same.layers] == ["conv", "add"]
    assert same.layers[-1].inputs == ("conv1", "x")
    projected = net("    residual {\n        conv(32, 3, stride=2, padding=1)\n    }")
    ops = [(n.local, n.op, n.shape) for n in projected.layers]
    assert ops == [("conv1", "conv", (32, 4, 4)), ("shortcut_conv1", "conv", (32, 4, 4)),
                   ("shortcut_batchnorm1", "batchnorm", (32, 4, 4)), ("add1", "add", (32, 4, 4))]
    assert projected.layers[1].attrs.stride == (2, 2)
    values = run(projected)
    assert tuple(values["add1"].shape) == (2, 32, 4, 4)


def test_residual_without_projection_is_plain_where_shapes_differ():
    changed = net("    residual(project=false) {\n        conv(32, 1)\n    }")
    assert [n.op for n in changed.layers] == ["conv"]
    kept = net("    residual(project=false) {\n        conv(16, 1)\n    }")
    assert [n.op for n in kept.layers] == ["conv", "add"]


def test_explicit_shortcut():
    model = net("    residual {\n        conv(32, 3, padding=1)\n    } shortcut {\n"
                "        conv(32, 1) -> batchnorm\n    }")
    assert [n.local for n in model.layers] == ["conv1", "shortcut_conv1", "shortcut_batchnorm1",
                                              "add1"]


def test_branch_concat_and_add():
    model = net("    branch concat {\n        conv(8, 1)\n        conv(4, 3, padding=1) -> relu\n"
                "        maxpool(3, stride=1, padding=1)\n    }")
    assert model.layers[-1].shape == (8 + 4 + 16, 8, 8)
    assert [n.local for n in model.layers] == ["b1_conv1", "b2_conv1", "b2_relu1",
                                              "b3_maxpool1", "concat1"]
    assert tuple(run(model)["concat1"].shape) == (2, 28, 8, 8)


def test_conditional_lines():
    blocks = ("block maybe(expand: int) {\n"
              "    conv(in_channels * expand, 1) -> relu  if expand != 1\n"
              "    conv(8, 1)\n}")
    without = net("    maybe(1)", blocks=blocks)
    with_ = net("    maybe(4)", blocks=blocks)
    assert [n.op for n in without.layers] == ["conv"]
    assert [n.op for n in with_.layers] == ["conv", "relu", "conv"]
    assert with_.layers[0].shape == (64, 8, 8)


def test_named_tensor_dag_with_two_inputs_and_two_outputs():
    model = cnndsl.load("network two() {\n    input a: 3 x 8 x 8\n    input b: 5 x 8 x 8\n"
                        "    fa = a -> conv(4, 1)\n    both = concat(fa, b) -> conv(2, 1)\n"
                        "    pooled = both -> global_avgpool\n    output both, pooled\n}\n")
    assert [i.name for i in model.inputs] == ["a", "b"]
    assert model.ir.outputs == ("conv2", "global_avgpool1")
    module = model.to_torch()
    both, pooled = module(torch.randn(1, 3, 8, 8), torch.randn(1, 5, 8, 8))
    assert tuple(both.shape) == (1, 2, 8, 8) and tuple(pooled.shape) == (1, 2, 1, 1)


def test_unused_named_tensor_is_a_warning():
    model = net("    skip = x -> conv(4, 1)\n    y = x -> conv(8, 1)\n    output y")
    (warning,) = model.warnings
    assert warning.code == "W-unused" and "`skip`" in warning.message
    assert (warning.span.line, warning.span.column) == (4, 5)


def test_channel_derivation_is_recorded():
    model = cnndsl.load("specs/mobilenet_v2.cnn", width=0.75)
    stem = model.layers[0]
    assert stem.shape[0] == 24
    assert stem.derivations["out_channels"] == (
        "divisible(32 * width, 8) = divisible(32 * 0.75, 8) = 24")


def test_efficientnet_compound_scaling(tmp_path):
    b1 = cnndsl.load("specs/efficientnet.cnn", depth=1.1, resolution=240)
    b3 = cnndsl.load("specs/efficientnet.cnn", width=1.2, depth=1.4, resolution=300)
    b7 = cnndsl.load("specs/efficientnet.cnn", width=2.0, depth=3.1, resolution=600)
    assert (b1.params, b3.params, b7.params) == (7_794_184, 12_233_232, 66_347_960)
    assert b7.macs == 37_745_884_192
    phi = cnndsl.load("specs/efficientnet.cnn", phi=2)
    assert phi.ir.params["width"] == pytest.approx(1.1 ** 2)
    assert phi.ir.params["depth"] == pytest.approx(1.2 ** 2)
    assert phi.inputs[0].shape == (3, round(224 * 1.15 ** 2), round(224 * 1.15 ** 2))


def test_imports_resolve_relative_to_the_importing_file(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "blocks.cnn").write_text(
        'import "more.cnn"\nblock twice(c: int) {\n    once(c) -> once(c)\n}\n')
    (tmp_path / "lib" / "more.cnn").write_text("block once(c: int) {\n    conv(c, 1)\n}\n")
    spec = tmp_path / "net.cnn"
    spec.write_text('import "lib/blocks.cnn"\nnetwork n() {\n    input x: 3 x 4 x 4\n'
                    "    twice(5)\n}\n")
    model = cnndsl.load(spec)
    assert [n.name for n in model.layers] == ["twice1.once1.conv1", "twice1.once2.conv1"]


def test_a_user_block_shadows_the_standard_library():
    model = net("    basic(16)", blocks="block basic(c: int) {\n    conv(c, 1)\n}")
    assert [n.op for n in model.layers] == ["conv"]


def test_a_block_defined_twice_is_an_error():
    with pytest.raises(CnnError) as info:
        net("    relu", blocks="block a() {\n    relu\n}\nblock a() {\n    relu\n}")
    assert info.value.diagnostics[0].message == "`a` is defined twice"
