"""`(conv(16, 3) -> relu) * 2`: a repeat takes one call; the error says that a chain to
repeat goes in a block, and the fix it gives checks."""

from __future__ import annotations

import re

import pytest

import cnndsl
from cnndsl.diagnostics import CnnError

NET = """network n() {
    input image: 3 x 8 x 8
    %s
}
"""


@pytest.mark.parametrize("line, call", [
    ("(conv(16, 3, padding=1) -> relu) * 2", "unit * 2"),
    ("stage: (conv(16, 3, padding=1) -> relu) * 2  # two of them", "stage: unit * 2"),
])
def test_a_repeated_chain_says_it_goes_in_a_block(line, call):
    text = NET % line
    with pytest.raises(CnnError) as info:
        cnndsl.loads(text)
    (d,) = info.value.diagnostics
    assert d.code == "E-syntax"
    assert d.message == "a chain in parentheses cannot be repeated with `*`"
    assert d.span.line == 3
    quoted = text.splitlines()[2][d.span.column - 1:d.span.end_column - 1]
    assert quoted == "(conv(16, 3, padding=1) -> relu) * 2"
    block = re.search(r"`(block unit\(\) \{.*?\})`", d.help).group(1)
    assert f"`{call}`" in d.help
    # the fix, as the help writes it, checks: two convs with relus
    fixed = cnndsl.loads(block + "\n" + NET % call)
    assert [n.op for n in fixed.layers] == ["conv", "relu", "conv", "relu"]
    assert fixed.shape(fixed.layers[-1].name) == (16, 8, 8)
    with pytest.raises(CnnError) as rendered:
        cnndsl.loads(text)
    assert "a repeated chain" in rendered.value.render()


def test_a_repeated_single_call_still_parses():
    model = cnndsl.loads(NET % "conv(16, 3, padding=1) * 2")
    assert [n.op for n in model.layers] == ["conv", "conv"]
