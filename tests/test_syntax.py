"""The front end: what the grammar accepts and how the syntax tree keeps positions."""

from __future__ import annotations

import pytest

import cnndsl
from cnndsl import CnnError, ast
from cnndsl.syntax import parse


def test_layout_freedom_comments_newlines_and_semicolons():
    model = cnndsl.load(
        "# a comment\n\nnetwork t(c: int = 4) {  # trailing\n"
        "    input x: 3x16x16\n"
        "    conv(c,\n         3,   # arguments may span lines\n         padding=same) ->\n"
        "        relu; maxpool(2)\n"
        "}\n")
    assert [n.op for n in model.layers] == ["conv", "relu", "maxpool"]
    assert model.layers[-1].shape == (4, 8, 8)


def test_spans_point_at_the_source():
    module = parse("network t() {\n    input x: 1 x 8 x 8\n    c1: conv(2, 3)\n}\n", "t.cnn")
    (chain,) = [s for s in module.definitions[0].body if isinstance(s, ast.Chain)]
    layer = chain.steps[0]
    assert (layer.label, layer.name) == ("c1", "conv")
    assert (layer.span.line, layer.span.column) == (3, 5)
    assert (layer.name_span.line, layer.name_span.column) == (3, 9)
    assert layer.args[1].span.column == 17


def test_expressions_follow_precedence():
    model = cnndsl.load("network t(a: int = 3) {\n    input x: 8\n"
                        "    linear(a + 2 * 3 ** 2 - 10 // 4)\n}\n")
    assert model.layers[0].shape == (3 + 18 - 2,)


def test_positional_after_keyword_is_a_syntax_error():
    with pytest.raises(CnnError) as info:
        parse("network t() {\n    input x: 1 x 8 x 8\n    conv(2, kernel=3, 1)\n}\n", "t.cnn")
    (d,) = info.value.diagnostics
    assert d.message == "positional argument after a keyword argument"
    assert (d.span.line, d.span.column) == (3, 23)


def test_nothing_is_evaluated_as_python():
    with pytest.raises(CnnError) as info:
        cnndsl.load("network t() {\n    input x: 8\n    linear(__import__(1))\n}\n")
    assert info.value.diagnostics[0].message == "unknown function `__import__`"


# ---- what a line break is: `\n` alone (after CR and CRLF become it), everywhere -----------

# characters Python's str.splitlines() takes for line breaks and the lexer does not
NOT_LINE_BREAKS = ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("char", NOT_LINE_BREAKS)
def test_a_syntax_error_at_the_end_after_a_character_splitlines_breaks_on(char):
    """Was `internal error: ValueError: substring not found`: the error is the one of the
    same text without those characters (which the lexer skips or refuses on line 3)."""
    plain = "network n() {\n}\nnetwork m() {"
    with pytest.raises(CnnError) as info:
        parse(plain + char * 3, "t.cnn")
    with pytest.raises(CnnError) as expected:
        parse(plain, "t.cnn")
    (d,) = info.value.diagnostics
    assert d.code == "E-syntax" and d.span.line == 3
    if char == "\f":  # skipped like a blank: the very same error
        assert d == expected.value.diagnostics[0]


@pytest.mark.parametrize("char", NOT_LINE_BREAKS)
def test_errors_are_on_the_lines_the_lexer_counts(char):
    """Was one line too low (or past the file's end) where str.splitlines() counted."""
    text = "network n() {\n    input x: 3 x 8 x 8\n    relu" + char + "\n" + char * 2 + "\n"
    with pytest.raises(CnnError) as info:
        parse(text, "t.cnn")
    (d,) = info.value.diagnostics
    lines = text.split("\n")[:-1]  # where the file ends: its last line break aside
    where = [(d.span.line, d.span.column)] + [(lab.span.line, lab.span.column)
                                              for lab in d.related]
    if char == "\f":  # skipped like a blank: the `{` is never closed, the file ends at 4:3
        assert where == [(1, 13), (len(lines), len(lines[-1]) + 1)] == [(1, 13), (4, 3)]
    else:  # refused where it stands
        assert where == [(3, 9)]


def test_one_definition_of_a_line_is_shared():
    from cnndsl import source
    text = "a\fb\u2028c\x85d\ne\rf\r\ng"
    assert source.split_lines(source.normalise(text)) == ["a\fb\u2028c\x85d", "e", "f", "g"]
    assert source.SourceFile("t", source.normalise(text)).lines == \
        source.split_lines(source.normalise(text))
    assert source.line_column("a\fb\nxy", 5) == (2, 2)


def test_check_and_fmt_report_it_as_a_user_error(tmp_path):
    """Through the commands: exit 1 with the located error, not `internal error` (exit 3)."""
    from conftest import run_cli
    path = tmp_path / "feed.cnn"
    path.write_text("network n() {\n}\nnetwork m() {\f\f\f")
    for command in ("check", "fmt"):
        result = run_cli(command, str(path))
        assert result.returncode == 1, result.stderr
        assert "internal error" not in result.stderr
        assert f"--> {path}:3:" in result.stderr
