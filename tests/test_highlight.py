"""Highlighting: the Pygments lexer (an entry point) and the TextMate grammar VS Code reads
(run for real with vscode-textmate and oniguruma under node), both checked token by token
against the project's own lexer on every .cnn file of the repository."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
from pygments.token import Comment, Error, Keyword, Name, Number, Operator, String

from cnndsl import fmt, syntax
from cnndsl.diagnostics import CnnError
from cnndsl.layers import REGISTRY
from cnndsl.pygments_lexer import CnnLexer, grammar_keywords
from conftest import ROOT

VSCODE = ROOT / "editors" / "vscode"
GRAMMAR = VSCODE / "syntaxes" / "cnn.tmLanguage.json"
EVERY_CNN = sorted(p for p in ROOT.rglob("*.cnn")
                   if not any(part.startswith(".") or part == "node_modules"
                              for part in p.relative_to(ROOT).parts))
DEFINES = ("_KW_NETWORK", "_KW_BLOCK", "_KW_TRAIN")


def lark_tokens(text: str):
    """(offset, kind, text, previous kind, next text) of every token the parser reads, and
    the comments (offset, text)."""
    raw, comments = fmt._lex(text)
    toks = [t for t in raw if t.type != "_NL"]
    out = []
    for i, tok in enumerate(toks):
        start = tok.start_pos + (len(tok.value) - 2 if tok.type == "_ARROW" else 0)
        out.append((start, tok.type, str(tok.value).strip() if tok.type == "_ARROW" else
                    str(tok.value), toks[i - 1].type if i else None,
                    str(toks[i + 1].value) if i + 1 < len(toks) else None))
    return out, [(c.start, c.text) for c in comments]


def parsing_files():
    for path in EVERY_CNN:
        text = syntax.normalise(path.read_text())
        try:
            yield path, text, *lark_tokens(text)
        except CnnError:
            continue  # a broken spec that does not parse: its tokens are not known


def expected_kind(kind: str, previous: str | None, following: str | None) -> str:
    """What a highlighter must make of a token, by the parser's own reading of it."""
    if kind == "_KW_X":
        return "shape"
    if kind.startswith("_KW_"):
        return "keyword"
    if kind == "NAME" and previous in DEFINES:
        return "definition"
    if kind == "NAME" and following == "(":
        return "call"
    return {"NUMBER": "number", "STRING": "string", "_ARROW": "arrow"}.get(kind, "")


# ---- Pygments ------------------------------------------------------------------------------


def test_the_lexer_is_registered_for_cnn_files():
    assert type(get_lexer_by_name("cnn")) is CnnLexer
    assert type(get_lexer_by_name("cnndsl")) is CnnLexer
    assert type(get_lexer_for_filename("resnet50.cnn")) is CnnLexer


def test_keywords_come_from_the_grammar():
    found = set(re.findall(r"^_KW_\w+(?:\.\d+)?:\s*/(\w+)", syntax.grammar_text(), re.M))
    assert found - {"x"} <= set(grammar_keywords())
    assert {"let", "else", "residual", "network"} <= set(grammar_keywords())


PYGMENTS = {"shape": (Operator.Word,), "keyword": (Keyword,), "definition": (Name.Class,),
            "call": (Name.Function, Name.Builtin), "number": (Number,), "string": (String,),
            "arrow": (Operator,)}


def test_pygments_agrees_with_the_parser_on_every_file():
    lexer = get_lexer_by_name("cnn")
    checked = 0
    for path, text, tokens, comments in parsing_files():
        types = {}
        for index, token_type, value in lexer.get_tokens_unprocessed(text):
            assert token_type not in Error, f"{path}: {value!r} is an error token"
            types[index] = token_type
        for start, kind, value, previous, following in tokens:
            expected = expected_kind(kind, previous, following)
            if expected:
                got = types.get(start)
                assert got is not None and any(got in t for t in PYGMENTS[expected]), (
                    path, value, expected, got)
                checked += 1
        for start, _ in comments:
            assert types.get(start) in Comment, (path, start)
    assert checked > 1500


def test_pygments_on_a_snippet():
    text = ("block my_block(c: int, act: layer = relu) {\n"
            "    let w = 2 * c\n"
            "    y = x -> conv(w, 3, padding=same) -> relu  # note\n"
            "    if c > 1 { flatten } else { my_other(c) }\n}\n")
    tokens = [(t, v) for t, v in get_lexer_by_name("cnn").get_tokens(text) if v.strip()]
    assert ("Token.Keyword.Declaration", "block") in [(str(t), v) for t, v in tokens]
    kinds = {v: t for t, v in tokens}
    assert kinds["my_block"] is Name.Class
    assert kinds["int"] is Keyword.Type and kinds["layer"] is Keyword.Type
    assert kinds["let"] is Keyword and kinds["if"] is Keyword and kinds["else"] is Keyword
    assert kinds["y"] is Name.Variable
    assert kinds["conv"] is Name.Builtin and kinds["relu"] is Name.Builtin
    assert kinds["my_other"] is Name.Function
    assert kinds["padding"] is Name.Attribute and kinds["same"] is Keyword.Constant
    assert kinds["# note"] is Comment.Single and kinds["->"] is Operator
    assert set(REGISTRY) <= {v for t, v in get_lexer_by_name("cnn").get_tokens(
        " ".join(REGISTRY)) if t is Name.Builtin}


# ---- TextMate ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def textmate():
    """Tokenize files with the grammar as VS Code does; node and two npm packages needed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        pytest.skip("node is not installed")
    folder = VSCODE / "test"
    if not (folder / "node_modules" / "vscode-textmate").is_dir():
        if npm is None:
            pytest.skip("npm is not installed")
        result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
                                cwd=folder, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            pytest.skip(f"npm install failed: {result.stderr[-300:]}")

    def tokenize(paths) -> dict:
        result = subprocess.run([node, str(folder / "tokenize.js"), *map(str, paths)],
                                capture_output=True, text=True, timeout=300, check=True)
        return json.loads(result.stdout)
    return tokenize


TEXTMATE = {"shape": ("keyword.operator.shape.cnn",), "keyword": ("keyword.",),
            "definition": ("entity.name.type.cnn",), "call": ("entity.name.function.cnn",),
            "number": ("constant.numeric.cnn",), "string": ("string.quoted.double.cnn",),
            "arrow": ("keyword.operator.arrow.cnn",)}


def scope_at(lines: list, text: str, offset: int) -> list[str]:
    line = text.count("\n", 0, offset)
    column = offset - (text.rfind("\n", 0, offset) + 1)
    for token in lines[line]:
        if token["start"] <= column < token["end"]:
            return token["scopes"]
    return []


def test_textmate_agrees_with_the_parser_on_every_file(textmate):
    files = list(parsing_files())
    assert len(files) >= 56
    tokenized = textmate([path for path, *_ in files])
    checked = 0
    for path, text, tokens, comments in files:
        lines = tokenized[str(path)]
        for start, kind, value, previous, following in tokens:
            expected = expected_kind(kind, previous, following)
            if expected:
                scopes = scope_at(lines, text, start)
                assert any(s.startswith(e) for s in scopes for e in TEXTMATE[expected]), (
                    str(path), value, expected, scopes)
                checked += 1
        for start, comment in comments:  # a comment to the end of its line
            scopes = scope_at(lines, text, start)
            assert "comment.line.number-sign.cnn" in scopes, (str(path), comment)
            assert "comment.line.number-sign.cnn" in scope_at(lines, text,
                                                               start + len(comment) - 1)
    assert checked > 1500


def test_textmate_on_a_snippet(textmate, tmp_path):
    path = tmp_path / "snippet.cnn"
    text = ("network n(c: int = 8) {\n"
            "    input x: 3 x 16 x 16\n"
            "    e1 = x -> c1: conv(c, 3, stride=2, padding=same) -> relu  # a comment\n"
            "    let w = 2 * c\n"
            "    if c > 1 { flatten } else { relu }\n}\n")
    path.write_text(text)
    lines = textmate([path])[str(path)]

    def scopes(needle: str, occurrence: int = 0) -> list[str]:
        index = -1
        for _ in range(occurrence + 1):
            index = text.index(needle, index + 1)
        return scope_at(lines, text, index)

    assert "entity.name.type.cnn" in scopes("n(")
    assert "variable.parameter.cnn" in scopes("c: int") and "storage.type.cnn" in scopes("int")
    assert "keyword.control.cnn" in scopes("input")
    assert "keyword.operator.shape.cnn" in scopes("x 16")
    assert "variable.other.tensor.cnn" in scopes("e1")
    assert "entity.name.label.cnn" in scopes("c1")
    assert "entity.name.function.cnn" in scopes("conv")
    assert "variable.parameter.argument.cnn" in scopes("stride")
    assert "constant.language.cnn" in scopes("same")
    assert "entity.name.function.step.cnn" in scopes("relu")
    assert "comment.line.number-sign.cnn" in scopes("# a comment")
    assert "keyword.control.cnn" in scopes("let") and "keyword.control.cnn" in scopes("else")
    assert "keyword.operator.comparison.cnn" in scopes("> 1")


def test_the_grammar_knows_every_keyword():
    grammar = json.loads(GRAMMAR.read_text())
    patterns = json.dumps(grammar["repository"]["keyword"]) + \
        grammar["repository"]["definition"]["match"]
    words = set(re.findall(r"[a-z_]+", patterns))
    assert set(grammar_keywords()) <= words


def test_the_extension_is_valid_javascript_and_names_its_files():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    subprocess.run([node, "--check", str(VSCODE / "extension.js")], check=True, timeout=60)
    manifest = json.loads((VSCODE / "package.json").read_text())
    assert manifest["main"] == "./extension.js"
    (language,) = manifest["contributes"]["languages"]
    assert language["extensions"] == [".cnn"]
    assert (VSCODE / language["configuration"]).is_file()
    (grammar,) = manifest["contributes"]["grammars"]
    assert json.loads((VSCODE / grammar["path"]).read_text())["scopeName"] == \
        grammar["scopeName"] == "source.cnn"
    configuration = json.loads((VSCODE / "language-configuration.json").read_text())
    assert configuration["comments"] == {"lineComment": "#"}
    assert ["(", ")"] in configuration["brackets"] and ["{", "}"] in configuration["brackets"]
