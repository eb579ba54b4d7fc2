"""Compatibility: specs written against cnndsl 0.1.0 keep checking with 0.1.0's results.

tests/compat/ holds specs in the older forms (no axis on softmax, flatten, concat, split
and slice; tensors and blocks with names that became layers later). expected/NAME.json is
what 0.1.0's `cnndsl check --json` gave for each (layers with shapes, parameters, buffers
and MACs; totals; outputs). shadow.cnn is one 0.1.0 refused and now checks. And the
messages of issue 22: a block without `()`, str(CnnError) with its help and notes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import cnndsl
from cnndsl.report import to_json

COMPAT = Path(__file__).resolve().parent / "compat"
EXPECTED = sorted(p.stem for p in (COMPAT / "expected").glob("*.json"))


def _summary(model: cnndsl.Model) -> dict:
    d = to_json(model.ir)
    return {"network": d["network"], "params": d["params"], "macs": d["macs"],
            "outputs": d["outputs"],
            "layers": [{k: layer[k] for k in ("name", "op", "output_shape", "params",
                                              "buffers", "macs")} for layer in d["layers"]]}


def test_the_corpus_is_there():
    assert set(EXPECTED) >= {"heads", "merges", "names"}
    assert {p.stem for p in COMPAT.glob("*.cnn")} == {*EXPECTED, "shadow"}


@pytest.mark.parametrize("name", EXPECTED)
def test_older_specs_check_with_the_same_results(name):
    model = cnndsl.load(COMPAT / f"{name}.cnn")
    expected = json.loads((COMPAT / "expected" / f"{name}.json").read_text())
    assert _summary(model) == expected


def test_names_that_became_layers_still_name_tensors_and_blocks_with_a_warning():
    model = cnndsl.load(COMPAT / "names.cnn")
    shadowed = sorted((w.span.line, w.message) for w in model.warnings
                      if w.code == "W-shadow")
    assert shadowed == [
        (2, "the block `transpose` shadows the built-in layer `transpose`"),
        (8, "the tensor `log` has the name of the built-in layer `log`"),
        (9, "the tensor `exp` has the name of the built-in layer `exp`"),
        (10, "the tensor `sub` has the name of the built-in layer `sub`"),
        (11, "the tensor `div` has the name of the built-in layer `div`"),
    ]
    assert [n.op for n in model.layers if n.name.startswith("transpose1")] == \
        ["conv_transpose", "relu"]  # the user's block, not the layer


def test_a_block_shadows_a_built_in_layer():
    """0.1.0: E-name "`hardsigmoid` is a built-in layer"; now the user's block runs."""
    model = cnndsl.load(COMPAT / "shadow.cnn")
    assert [n.op for n in model.layers if n.name.startswith("hardsigmoid1")] == ["relu6"]
    (warning,) = [w for w in model.warnings if w.code == "W-shadow"]
    assert (warning.span.line, warning.span.column) == (3, 7)
    assert warning.message == "the block `hardsigmoid` shadows the built-in layer `hardsigmoid`"


def test_a_tensor_may_carry_the_name_of_the_label_that_makes_it():
    """0.1.0: "`aux1` is already defined", both carets on one line."""
    model = cnndsl.load(COMPAT / "shadow.cnn")
    assert model.ir.outputs[-1] == "aux1.linear1" and model.ir.shape_of("aux1") == (5,)
    assert "aux1.linear1.weight" in model.weights()  # the module keeps the label's name


def test_the_label_and_an_earlier_tensor_still_clash():
    text = ("network n() {\n    input x: 4 x 8 x 8\n    aux1 = x -> relu\n"
            "    y = x -> aux1: conv(2, 1)\n    output y\n}\n")
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads(text)
    assert info.value.diagnostics[0].message == "`aux1` is already defined"


def test_a_block_without_parentheses_says_it_needs_them():
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads("block stem {\n    conv(8, 3)\n}\n")
    (d,) = info.value.diagnostics
    assert (d.code, d.span.line, d.span.column) == ("E-syntax", 1, 12)
    assert d.message == "a block needs a parameter list: `block stem()`, found `{`"
    assert d.help == "write `block stem() {` (empty parentheses when it takes no parameters)"


def test_str_of_an_error_has_its_notes_and_help():
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.loads("network n() {\n    input x: 4 x 3 x 3\n    conv(8, 5)\n}\n",
                     name="n.cnn")
    text = str(info.value)
    d = info.value.diagnostics[0]
    assert text.splitlines()[0] == f"n.cnn:3:13: {d.message}"
    assert d.notes and all(f"  note: {note}" in text for note in d.notes)
    assert f"  help: {d.help}" in text
