"""The layers added with the layer-contract redesign refuse bad arguments and inputs at
the argument (or the call), with a code, in the user's file; and what they refuse is what
PyTorch would refuse or what has no meaning."""

from __future__ import annotations

import pytest
import torch

import cnndsl


def _net(line: str, shape: str = "4 x 8 x 8") -> str:
    return f"network p() {{\n    input x: {shape}\n    {line}\n}}\n"


def _errors(text: str) -> list[tuple[str, int, int, str]]:
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(text, name="t.cnn")
    return [(d.code, d.span.line, d.span.column, d.message) for d in info.value.diagnostics]


@pytest.mark.parametrize("line, shape, code, column, message", [
    ("groupnorm(3)", "4 x 8 x 8", "E-groups", 15, "4 channels are not divisible into 3 groups"),
    ("groupnorm(0)", "4 x 8 x 8", "E-arg", 15,
     "`groupnorm` argument `groups`: must be at least 1, found 0"),
    ("layernorm(eps=-1)", "4 x 8 x 8", "E-arg", 19,
     "`layernorm` argument `eps`: must be in (0, 1), found -1"),
    ("channel_shuffle(3)", "4 x 8 x 8", "E-groups", 21,
     "4 channels are not divisible into 3 groups"),
    ("slice(2, 9)", "4 x 8 x 8", "E-arg", 14, "channels 2 to 9 of 4: need start < stop <= 4"),
    ("slice(3, 3)", "4 x 8 x 8", "E-arg", 14, "channels 3 to 3 of 4: need start < stop <= 4"),
    ("crop(size=(9, 2))", "4 x 8 x 8", "E-shape", 10,
     "a crop of 9 rows from 0 needs 9; the input has 8"),
    ("crop(size=(4, 4), top=5)", "4 x 8 x 8", "E-shape", 10,
     "a crop of 4 rows from 5 needs 9; the input has 8"),
    ("center_crop(size=(2, 20))", "4 x 8 x 8", "E-shape", 17,
     "a crop of 20 columns from 0 needs 20; the input has 8"),
    ("center_crop(like=nothing)", "4 x 8 x 8", "E-name", 22, "unknown tensor `nothing`"),
    ("upsample(size=(4, 4), scale=2)", "4 x 8 x 8", "E-arg", 14,
     "give one of scale, size and like, not scale and size"),
    ("upsample(size=(0, 4))", "4 x 8 x 8", "E-arg", 19,
     "`upsample` argument `size`: must be at least 1, found 0"),
    ("stochastic_depth(1.5)", "4 x 8 x 8", "E-arg", 22,
     "`stochastic_depth` argument `p`: must be in [0, 1), found 1.5"),
    ("stochastic_depth(0.2, mode=col)", "4 x 8 x 8", "E-arg", 32,
     "`stochastic_depth` argument `mode`: expected one of row, batch, found `col`"),
    ("dropout2d(-0.1)", "4 x 8 x 8", "E-arg", 15,
     "`dropout2d` argument `p`: must be in [0, 1), found -0.1"),
    ("prelu(init=x)", "4 x 8 x 8", "E-arg", 16,
     "`prelu` argument `init`: expected a number, found word `x`"),
    ("scale(init=true)", "4 x 8 x 8", "E-arg", 16,
     "`scale` argument `init`: expected a number, found bool `true`"),
    ("hardsigmoid(2)", "4 x 8 x 8", "E-arg", 17, "`hardsigmoid` takes no arguments, found 1"),
    ("flatten -> channel_shuffle(2)", "4 x 8 x 8", "E-shape", 16,
     "channel_shuffle needs a C x H x W input, found 256"),
    ("instancenorm", "4 x 1 x 1", "E-shape", 5,
     "instance norm needs more than one value per channel; the input is 4 x 1 x 1"),
    ("groupnorm(4)", "4 x 1 x 1", "E-shape", 15,
     "group norm needs more than one value per group; the input is 4 x 1 x 1 in 4 groups"),
])
def test_bad_arguments_and_inputs_are_located(line, shape, code, column, message):
    assert _errors(_net(line, shape)) == [(code, 3, column, message)]


@pytest.mark.parametrize("line, module", [
    ("instancenorm", torch.nn.InstanceNorm2d(4)),
    ("groupnorm(4)", torch.nn.GroupNorm(4, 4)),
])
def test_a_norm_refused_on_single_values_is_one_pytorch_refuses(line, module):
    """Found by the property test: InstanceNorm2d on 1 x 1 raised in PyTorch (even in eval
    mode) after `check` had passed; GroupNorm with one value per group raises at batch 1."""
    with pytest.raises(ValueError, match="more than 1"):
        module.eval()(torch.zeros(1, 4, 1, 1))
    with pytest.raises(cnndsl.CnnError):
        cnndsl.loads(_net(line, "4 x 1 x 1"))
    cnndsl.loads(_net(line, "4 x 1 x 2"))  # two values: fine in both
    module.eval()(torch.zeros(1, 4, 1, 2))


def test_errors_in_a_block_with_new_layers_point_at_the_users_call():
    text = ("block b(g: int) {\n    conv(8, 3, padding=1) -> groupnorm(g)\n}\n"
            "network p() {\n    input x: 4 x 8 x 8\n    b(3)\n}\n")
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(text, name="t.cnn")
    [d] = info.value.diagnostics
    assert (d.code, d.span.file, d.span.line, d.span.column) == ("E-groups", "t.cnn", 2, 40)
    assert "= note: in the call `b` at t.cnn:6:5" in info.value.render(color=False)


def test_a_stdlib_error_under_a_users_block_names_the_users_call():
    """The call of the user's own block that led into the standard library was lost."""
    text = ("block stage(n: int) {\n    dense_block(n, 12) -> transition\n}\n"
            "network p() {\n    input x: 3 x 8 x 8\n    stage(1)\n    stage(1)\n"
            "    stage(1)\n    stage(1)\n}\n")
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(text, name="t.cnn")
    [d] = info.value.diagnostics
    assert (d.span.file, d.span.line, d.span.column) == ("t.cnn", 2, 27)
    assert "in the call `stage` at t.cnn:9:5" in d.notes
