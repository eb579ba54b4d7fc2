"""A Pygments lexer for .cnn files (aliases `cnn`, `cnndsl`): README and notebook code blocks
are coloured. Registered as the entry point `pygments.lexers: cnn`.

Keywords come from the grammar's `_KW_*` terminals (and the ones being added to the
language), layer names from the registry; any name followed by `(` is a call.
"""

from __future__ import annotations

import re

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import (
    Comment,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Whitespace,
)

TYPES = ("int", "float", "bool", "any", "layer", "tuple")
CONSTANTS = ("true", "false", "same", "valid", "full", "nearest", "bilinear")


def grammar_keywords() -> tuple[str, ...]:
    """Every keyword of the language: `_KW_BLOCK.2: /block\\b/` in grammars/cnn.lark."""
    from .syntax import grammar_text
    found = re.findall(r"^_KW_\w+(?:\.\d+)?:\s*/(\w+)", grammar_text(), re.M)
    return tuple(sorted(set(found) - {"x"}))  # `x` is an operator of shapes


def layer_names() -> tuple[str, ...]:
    from .layers import REGISTRY
    return tuple(sorted(REGISTRY))


_NAME = r"[A-Za-z_]\w*"


class CnnLexer(RegexLexer):
    name = "cnndsl"
    aliases = ["cnn", "cnndsl"]
    filenames = ["*.cnn"]
    mimetypes = ["text/x-cnn"]
    url = "https://github.com/cnndsl/cnndsl"

    tokens = {
        "root": [
            # `3 x 224 x 224`, `3x16x16`: the shape operator between two sizes
            (r"(?<=[\w)])([ \t]+)(x)([ \t]+)(?=[\w(])",
             bygroups(Whitespace, Operator.Word, Whitespace)),
            (r"(?<=\d)x(?=\d)", Operator.Word),
            (rf"(\n[ \t]*)({_NAME})([ \t]*)(=)(?!=)",  # `e1 = ...` starts a line
             bygroups(Whitespace, Name.Variable, Whitespace, Operator)),
            (r"[ \t\f]+", Whitespace),
            (r"\\\n|\r?\n", Whitespace),
            (r"#[^\n]*", Comment.Single),
            (r'"[^"\n]*"', String.Double),
            (rf"\b(network|block|train)(\s+)({_NAME})",
             bygroups(Keyword.Declaration, Whitespace, Name.Class)),
            (rf"({_NAME})(\s*)(:)(\s*)({'|'.join(TYPES)})\b",
             bygroups(Name.Variable, Whitespace, Punctuation, Whitespace, Keyword.Type)),
            (words(grammar_keywords(), suffix=r"\b"), Keyword),
            (words(CONSTANTS, suffix=r"\b"), Keyword.Constant),
            (rf"({_NAME})(\s*)(=)(?!=)", bygroups(Name.Attribute, Whitespace, Operator)),
            (rf"({_NAME})(\s*)(:)", bygroups(Name.Label, Whitespace, Punctuation)),
            (words(layer_names(), prefix=r"\b", suffix=r"\b"), Name.Builtin),
            (rf"{_NAME}(?=\s*\()", Name.Function),
            (_NAME, Name),
            (r"(\d+\.\d*|\.\d+|\d+)[eE][+-]?\d+|\d+\.\d*|\.\d+", Number.Float),
            (r"\d+", Number.Integer),
            (r"->", Operator),
            (r"==|!=|<=|>=|<|>|\*\*|//|[-+*/=]", Operator),
            (r"[(){},:;]", Punctuation),
        ],
    }
