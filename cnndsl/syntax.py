"""Front end: .cnn text -> syntax tree (cnndsl.ast), with located syntax errors."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

from lark import Lark, Token, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)

from . import ast
from .diagnostics import CnnError, Diagnostic, Label
from .source import LINE_BREAK, Span, end_of, line_column, normalise, split_lines  # noqa: F401

MAX_NUMBER_LENGTH = 40
MAX_TOKENS = 400_000  # twice the 100x spec of benchmarks/check_scaling.py
MAX_NESTING = 64  # ( and { levels; keeps every later recursive pass far from Python's limit
# operators in one expression: each nests the expression a level deeper, and past ~900
# levels evaluating it fails anyway; counted while lexing, a 200,000-term sum is refused
# before it is parsed (it took 9 s and 0.8 GB to reach the same error)
MAX_OPERATORS = 500
MAX_ITEMS = 1_000  # in one (...): arguments, tuple items (a 200,000-item tuple took 12 s)
_OPERATORS = frozenset(("+", "-", "*", "/", "//", "**"))
_OPERATOR_TYPES = frozenset(("COMPARE", "_KW_AND", "_KW_OR", "_KW_NOT"))
_EXPRESSION_ENDS = frozenset(("_NL", "_ARROW", "LBRACE", "RBRACE", "COMMA", "EQUAL", "COLON",
                              "_KW_IF"))


def grammar_text() -> str:
    """The grammar ships inside the wheel; in a checkout it lives in grammars/."""
    packaged = resources.files("cnndsl") / "grammars" / "cnn.lark"
    if packaged.is_file():
        return packaged.read_text()
    return (Path(__file__).resolve().parent.parent / "grammars" / "cnn.lark").read_text()


class _Newlines:
    """Post-lexer: newlines inside (...), after `->` or repeated carry no meaning.

    (A newline *before* `->` is part of the `_ARROW` terminal itself: Lark's contextual
    lexer lexes in the parser's current state, so a post-lexer must not look ahead.)
    """

    always_accept = ("_NL",)

    def __init__(self) -> None:
        self.open_parens: list[Token] = []
        self.file = "<string>"

    def process(self, stream):
        self.open_parens = []
        braces = 0
        previous = None
        operators = _OperatorCount(self)
        for count, tok in enumerate(stream):
            operators.see(tok)
            if count == MAX_TOKENS:  # time and memory grow with tokens: bound them
                span = Span(file=self.file, line=tok.line, column=tok.column,
                            end_line=tok.line, end_column=tok.column + 1)
                raise CnnError([Diagnostic(
                    code="E-limit", message=f"more than {MAX_TOKENS:,} tokens in one file",
                    span=span, label="the limit is reached here",
                    help="split the network into blocks, or repeat with `* N`")])
            if tok.type == "_NL":  # a `;` inside (...) is left to the parser to refuse
                if self.open_parens and ";" not in tok.value or previous is None or \
                        previous.type in ("_NL", "_ARROW"):
                    continue
            elif tok.value == "(":
                self.open_parens.append(tok)
                if len(self.open_parens) > MAX_NESTING:
                    raise self.too_deep(tok, "parentheses")
            elif tok.value == ")" and self.open_parens:
                self.open_parens.pop()
            elif tok.value == "{":
                braces += 1
                if braces > MAX_NESTING:
                    raise self.too_deep(tok, "braces")
            elif tok.value == "}":
                braces -= 1
            previous = tok
            yield tok

    def too_deep(self, tok: Token, what: str) -> CnnError:
        span = Span(file=self.file, line=tok.line, column=tok.column, end_line=tok.line,
                    end_column=tok.column + 1)
        return CnnError([Diagnostic(code="E-limit", message=f"{what} nested more than "
                                    f"{MAX_NESTING} deep", span=span, label="too deep here")])


class _OperatorCount:
    """Operators per expression, one count per level of parentheses: a `(` opens a level,
    its `)` adds the level's operators to the enclosing one; a separator (`,`, a new line,
    `->`, ...) starts a new expression at its level."""

    def __init__(self, postlex: _Newlines) -> None:
        self.postlex = postlex
        # per level: [operators, the expression's first token, items, the `(`]
        self.levels: list[list] = [[0, None, 0, None]]

    def see(self, tok: Token) -> None:
        level = self.levels[-1]
        if tok.type == "LPAR":
            if level[1] is None:
                level[1] = tok
            self.levels.append([0, None, 0, tok])
        elif tok.type == "RPAR" and len(self.levels) > 1:
            inner = self.levels.pop()
            self.levels[-1][0] += inner[0]
        elif tok.type in _EXPRESSION_ENDS:
            level[:2] = [0, None]
            if tok.type == "COMMA" and level[3] is not None:
                level[2] += 1
                if level[2] >= MAX_ITEMS:
                    raise self.too_long(level[3], f"more than {MAX_ITEMS:,} items in one "
                                        "`(...)`", "opened here", "a layer takes a few "
                                        "arguments, and sizes are pairs")
        else:
            if level[1] is None:
                level[1] = tok
            if tok.type in _OPERATOR_TYPES or tok.value in _OPERATORS:
                level[0] += 1
                if level[0] > MAX_OPERATORS:
                    raise self.too_long(level[1], f"an expression of more than "
                                        f"{MAX_OPERATORS} operators", "the expression "
                                        "starts here", "work the value out in steps (block "
                                        "parameters), or write the number")

    def too_long(self, start: Token, message: str, label: str, help: str) -> CnnError:
        span = Span(file=self.postlex.file, line=start.line, column=start.column,
                    end_line=start.line, end_column=start.column + 1)
        return CnnError([Diagnostic(code="E-limit", message=message, span=span, label=label,
                                    help=help)])


@lru_cache(maxsize=1)
def keywords() -> frozenset[str]:
    """The language's keywords (`residual`, `input`, ...), read from the grammar."""
    return frozenset(m.lower() for m in re.findall(r"^_KW_(\w+)\.\d+:", grammar_text(), re.M))


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(grammar_text(), parser="lalr", lexer="contextual",
                propagate_positions=True, postlex=_Newlines(), maybe_placeholders=True,
                transformer=_Reducer())


_ROUGH_TOKEN = re.compile(r"#[^\n]*|[A-Za-z_]\w*|\d[\d.eE+-]*|\S")


def _check_token_count(text: str, file: str) -> None:
    """Refuse a file of too many tokens before parsing it (parsing costs ~20 us a token);
    the post-lexer's exact count backs this rough one."""
    if len(text) < MAX_TOKENS:  # fewer characters than the limit: fewer tokens too
        return
    count = 0
    for match in _ROUGH_TOKEN.finditer(text):
        if match.group().startswith("#"):
            continue
        count += 1
        if count > MAX_TOKENS:
            line, column = line_column(text, match.start())
            raise CnnError([Diagnostic(
                code="E-limit", message=f"more than {MAX_TOKENS:,} tokens in one file",
                span=Span(file=file, line=line, column=column, end_line=line,
                          end_column=column + 1), label="the limit is reached here",
                help="split the network into blocks, or repeat with `* N`")])


def parse(text: str, file: str = "<string>") -> ast.Module:
    _check_token_count(text, file)
    parser = _parser()
    parser.options.postlex.file = file
    parser.options.transformer.builder = _Builder(file)
    try:
        return parser.options.transformer.built(parser.parse(text))
    except UnexpectedInput as exc:
        raise CnnError([_syntax_diagnostic(exc, text, file, parser)]) from None


# ---- syntax errors in words ------------------------------------------------------

_TERMINAL_WORDS = {"NAME": "a name", "NUMBER": "a number", "STRING": "a string",
                   "_ARROW": "`->`", "COMPARE": "a comparison",
                   "_NL": "a new line", "$END": "the end of the file"}


def _describe(terminal: str, parser: Lark) -> str:
    if terminal in _TERMINAL_WORDS:
        return _TERMINAL_WORDS[terminal]
    if terminal.startswith("_KW_"):  # a keyword: `network`
        return f"`{terminal[4:].lower()}`"
    try:
        pattern = parser.get_terminal(terminal).pattern
    except KeyError:
        return terminal.lower()
    if pattern.type == "str":
        return f"`{pattern.value}`"
    return terminal.lower()


def _expected(names, parser: Lark) -> str:
    words = {_describe(n, parser) for n in names}
    if "_NL" in names:  # the new-line terminal stands for `;` too
        words.add("`;`")
    words = sorted(words)
    if len(words) > 6:  # a long list helps nobody; name the usual suspects
        common = [w for w in words if w in ("`)`", "`,`", "`->`", "`}`", "a new line")]
        words = common or words[:6]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _syntax_diagnostic(exc: UnexpectedInput, text: str, file: str, parser: Lark) -> Diagnostic:
    postlex = parser.options.postlex
    unclosed = list(getattr(postlex, "open_parens", []))
    if isinstance(exc, UnexpectedToken) and exc.token.type == "$END" or isinstance(
            exc, UnexpectedEOF):
        line, column = end_of(text)
        found, width = "the end of the file", 1
        expected = _expected(exc.expected, parser)
    elif isinstance(exc, UnexpectedToken):
        line, column = exc.token.line, exc.token.column
        found = f"`{exc.token.value}`" if exc.token.type != "_NL" else \
            "`;`" if exc.token.value.startswith(";") else "a new line"
        width = 1 if exc.token.type == "_NL" else max(1, len(exc.token.value))
        expected = _expected(exc.expected, parser)
    else:
        assert isinstance(exc, UnexpectedCharacters)
        line, column = exc.line, exc.column
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else "?"
        found, width = f"character `{char}`", 1
        expected = _expected(exc.allowed, parser) if exc.allowed else "something else"
    span = Span(file=file, line=line, column=column, end_line=line, end_column=column + width)
    related = ()
    if unclosed and unclosed[-1].line < line:
        paren = unclosed[-1]
        related = (Label(span=Span(file=file, line=paren.line, column=paren.column,
                                   end_line=paren.line, end_column=paren.column + 1),
                         text="this `(` is never closed"),)
    label = "the file ends here" if found == "the end of the file" else f"unexpected {found}"
    brace = _unclosed_brace(text) if found == "the end of the file" else None
    definition = _definition_on_line(text, line) if isinstance(exc, UnexpectedToken) else None
    if definition is not None and _open_braces(text):  # while an earlier `{` is still open
        offset, word_column, word = definition
        brace = _unclosed_brace(text[:offset])
        span = Span(file=file, line=line, column=word_column, end_line=line,
                    end_column=word_column + len(word))
        label = f"`{word}` starts the next definition here"
    if brace is not None and not unclosed:
        where = Span(file=file, line=brace[0], column=brace[1], end_line=brace[0],
                     end_column=brace[1] + 1)
        return Diagnostic(code="E-syntax", message="this `{` is never closed", span=where,
                          label="no `}` matches it", related=(Label(span=span, text=label),),
                          help="add the `}` where its body ends (indented like this line)")
    missing = _missing_parameter_list(text, line, column) if found == "`{`" else None
    if missing is not None:
        kind, name = missing
        return Diagnostic(code="E-syntax", message=f"a {kind} needs a parameter list: "
                          f"`{kind} {name}()`, found `{{`", span=span,
                          label="`()` goes before this `{`",
                          help=f"write `{kind} {name}() {{` (empty parentheses when it takes "
                          "no parameters)")
    repeated = _repeated_chain(text, file, line)
    if repeated is not None and not unclosed:
        return repeated
    if found == "`*`":
        grouped = _repeat_in_group(text, file, line)
        if grouped is not None:
            return grouped
    if found in ("`>`", "`->`"):
        piped = _pipeline_argument(text, file, line, column)
        if piped is not None:
            return piped
    return Diagnostic(code="E-syntax", message=f"expected {expected}, found {found}",
                      span=span, label=label, related=related,
                      help=_untyped_parameter_help(text, line, column))


def _missing_parameter_list(text: str, line: int, column: int) -> tuple[str, str] | None:
    """`block stem {`: (kind, name) when a definition's `{` comes straight after its name."""
    lines = split_lines(text)
    before = lines[line - 1][:column - 1] if line <= len(lines) else ""
    match = re.fullmatch(r"\s*(network|block|train)\s+(\w+)\s*", before)
    return (match.group(1), match.group(2)) if match else None


_REPEATED_CHAIN = re.compile(r"^([\t ]*)(?:(\w+)\s*:\s*)?(\((.*->.*)\)\s*\*\s*([^#]*?))\s*(#.*)?$")


def _repeated_chain(text: str, file: str, line: int) -> Diagnostic | None:
    """`(conv(16, 3) -> relu) * 2`: a repeat takes one layer or block call; a chain to
    repeat goes in a block. Said plainly instead of the parser's `expected ...`."""
    lines = split_lines(text)
    match = _REPEATED_CHAIN.match(lines[line - 1]) if line <= len(lines) else None
    if match is None:
        return None
    label, chain, count = match.group(2), match.group(4), match.group(5)
    start = match.start(3) + 1
    span = Span(file=file, line=line, column=start, end_line=line,
                end_column=match.end(3) + 1)
    call = f"unit * {count}" if label is None else f"{label}: unit * {count}"
    return Diagnostic(
        code="E-syntax", message="a chain in parentheses cannot be repeated with `*`",
        span=span, label="a repeated chain", help=f"a repeat takes one layer or block "
        f"call: put the chain in a block, `block unit() {{ {chain.strip()} }}`, and repeat "
        f"the call: `{call}`" + ("" if label else f" (a label, `layers: unit * {count}`, "
                                 "names the copies `layers.0`, `layers.1`)"))


_GROUP = re.compile(r"^[\t ]*(\w+)\s*:\s*\((.*)\)\s*(#.*)?$")
_REPEAT = re.compile(r"^\s*(\w+\s*(?:\(.*\))?)\s*\*\s*(.+?)\s*$")


def _repeat_in_group(text: str, file: str, line: int) -> Diagnostic | None:
    """`layer1: (block * 3)`: a labelled group holds single calls; a repeat takes the label
    itself, `layer1: block * 3`."""
    lines = split_lines(text)
    match = _GROUP.match(lines[line - 1]) if line <= len(lines) else None
    if match is None or "*" not in match.group(2):
        return None
    label, inside = match.group(1), match.group(2)
    span = Span(file=file, line=line, column=match.start(2), end_line=line,
                end_column=match.end(2) + 2)
    alone = _REPEAT.match(inside) if "->" not in inside else None
    if alone is not None:
        help = (f"a repeat takes the label itself: `{label}: {alone.group(1).strip()} * "
                f"{alone.group(2)}` (the copies are {label}.0, {label}.1, ...)")
    else:
        help = ("a group's parentheses hold a chain of single calls: put the chain with "
                f"its repeat in a block and call that in the group, or label the repeat "
                f"alone: `{label}: unit * N`")
    return Diagnostic(code="E-syntax", message="a repeat cannot go inside a labelled "
                      "group's parentheses", span=span, label="a repeat in a group",
                      help=help)


def _pipeline_argument(text: str, file: str, line: int, column: int) -> Diagnostic | None:
    """`concat(x -> upsample(like=skip), skip)`: a pipeline where a tensor argument is
    expected; it is named on a line of its own first."""
    lines = split_lines(text)
    source = lines[line - 1] if line <= len(lines) else ""
    arrow = column - 2 if source[column - 1:column] == ">" else column - 1  # the `-`
    if source[arrow:arrow + 2] != "->":
        return None
    start, depth = arrow, 0
    while start > 0:  # back to the argument's start: an open `(` or a `,` at depth 0
        char = source[start - 1]
        if char == ")":
            depth += 1
        elif char == "(" and depth:
            depth -= 1
        elif char in "(," and not depth:
            break
        start -= 1
    if start == 0 or source[start - 1] not in "(,":
        return None
    end, depth = arrow, 0
    while end < len(source):  # on to its end: a `,` or `)` at depth 0
        char = source[end]
        if char == "(":
            depth += 1
        elif char == ")" and depth:
            depth -= 1
        elif char in ",)" and not depth:
            break
        end += 1
    pipeline = source[start:end].strip()
    call = re.search(r"(\w+)\s*\($", source[:_call_open(source, start)])
    rewritten = (source[:start] + (" " if source[start - 1] == "," else "") + "piped" +
                 source[end:]).strip()
    span = Span(file=file, line=line, column=start + 1 + (len(source[start:end]) -
                                                       len(source[start:end].lstrip())),
                end_line=line, end_column=end + 1 - (len(source[start:end]) -
                                                     len(source[start:end].rstrip())))
    what = f"`{call.group(1)}`'s arguments" if call else "a call's arguments"
    return Diagnostic(code="E-syntax", message=f"a pipeline cannot be one of {what}: "
                      "they are tensors by name", span=span, label="a pipeline here",
                      help=f"name it on a line of its own first, `piped = {pipeline}`, "
                      f"then write `{rewritten}`")


def _call_open(source: str, start: int) -> int:
    """Where the `(` of the call whose argument starts at `start` is (just after it)."""
    depth, i = 0, start
    while i > 0:
        char = source[i - 1]
        if char == ")":
            depth += 1
        elif char == "(":
            if not depth:
                return i
            depth -= 1
        i -= 1
    return start


def _untyped_parameter_help(text: str, line: int, column: int) -> str | None:
    """`network n(classes=10)`: Python's keyword habit where a typed parameter belongs."""
    lines = split_lines(text)
    source_line = lines[line - 1] if line <= len(lines) else ""
    before = source_line[:column - 1]
    match = re.search(r"^\s*(network|block)\s+\w+\s*\((?:.*,)?\s*(\w+)\s*$", before)
    if match is None or not source_line[column - 1:].startswith("="):
        return None
    value = re.match(r"=\s*([^,)]*)", source_line[column - 1:]).group(1).strip()
    kind = "float" if re.fullmatch(r"[\d.]+(e-?\d+)?", value) and "." in value else \
        "bool" if value in ("true", "false") else "int"
    return f"parameters are typed: `{match.group(2)}: {kind} = {value}`"


_DEFINITION = re.compile(r"[\t ]*(network|block|import|train)\b")


def _definition_on_line(text: str, line: int) -> tuple[int, int, str] | None:
    """(offset of the line, column, word) when the line starts a definition."""
    offset = 0
    for _ in range(line - 1):
        offset = text.find(LINE_BREAK, offset) + 1
        if offset == 0:  # past the last line
            return None
    match = _DEFINITION.match(text, offset)
    return (offset, match.start(1) - offset + 1, match.group(1)) if match else None


def _open_braces(text: str) -> int:
    """How many more `{` than `}` the text has (strings and comments aside)."""
    return _scan_braces(text)[2]


def _unclosed_brace(text: str) -> tuple[int, int] | None:
    """(line, column) of the `{` most likely left open: a `}` closes the latest `{` of its
    own indentation, so an open `{` indented deeper than the `}` that passes it is the
    culprit; else the last one still open at the end."""
    culprit, stack, _ = _scan_braces(text)
    if culprit is None and stack:
        culprit = stack[-1]
    return (culprit[0], culprit[1]) if culprit else None


def _scan_braces(text: str):
    """(the first `{` a less indented `}` passed, the `{` still open at the end, how many
    more `{` than `}`)."""
    stack: list[tuple[int, int, int]] = []  # line, column, indentation of its line
    culprit = None
    depth = 0
    for number, line in enumerate(split_lines(text), 1):
        indent = len(line) - len(line.lstrip(" \t"))
        in_string = False
        for column, char in enumerate(line, 1):
            if char == '"':
                in_string = not in_string
            elif in_string:
                continue
            elif char == "#":
                break
            elif char == "{":
                depth += 1
                stack.append((number, column, indent))
            elif char == "}" and stack:
                depth -= 1
                while len(stack) > 1 and stack[-1][2] > indent and culprit is None:
                    culprit = stack.pop()
                stack.pop()
    return culprit, stack, depth


# ---- tree -> ast ---------------------------------------------------------------


class _Reduced(Tree):
    """A rule the parser has just reduced, its children already built. Lark sets its
    position once the callback returns, so it becomes syntax (`_Builder`) one reduction
    later, when its parent is reduced: no parse tree is ever held whole, and no second
    pass walks one (for 4 MiB of `relu` lines: 380 MB and 2.8 s less)."""


class _Reducer:
    """Lark's callbacks during parsing, for the rules `_Builder` builds (lark looks them up
    by name; rules it has no method for, such as repetition helpers, stay Lark trees)."""

    def __init__(self) -> None:
        self.builder: _Builder | None = None

    def __getattr__(self, rule: str):
        if rule.startswith("_") or not callable(getattr(_Builder, rule, None)):
            raise AttributeError(rule)
        return lambda children: _Reduced(rule, [self.built(c) for c in children])

    def built(self, node):
        """A reduced rule as syntax; anything else as it is."""
        if not isinstance(node, _Reduced):
            return node
        method = getattr(self.builder, node.data)
        wrapper = getattr(method, "visit_wrapper", None)  # lark's v_args protocol
        return wrapper(method, node.data, node.children, node.meta) if wrapper else \
            method(node.children)


class _Builder:
    """One method per grammar rule; spans come from `_span` alone."""

    def __init__(self, file: str):
        self.file = file

    def _span(self, meta) -> Span:
        """The one place a Lark position (Token or Meta) becomes a Span."""
        return Span(file=self.file, line=meta.line, column=meta.column,
                    end_line=meta.end_line, end_column=meta.end_column)

    # top level
    @v_args(meta=True)
    def start(self, meta, items):
        imports = tuple(i for i in items if isinstance(i, ast.Import))
        defs = tuple(i for i in items if isinstance(i, ast.Definition))
        trains = tuple(i for i in items if isinstance(i, ast.TrainDef))
        defaults = tuple(i for i in items if isinstance(i, ast.Defaults))
        return ast.Module(file=self.file, imports=imports, definitions=defs, trains=trains,
                          defaults=defaults)

    @v_args(meta=True)
    def import_stmt(self, meta, children):
        return ast.Import(path=children[0][1:-1], span=self._span(meta))

    def _definition(self, kind, meta, children):
        name, params, body = children
        return ast.Definition(kind=kind, name=str(name), params=tuple(params or ()),
                              body=body, span=self._span(meta), name_span=self._span(name))

    @v_args(meta=True)
    def block_def(self, meta, children):
        return self._definition("block", meta, children)

    @v_args(meta=True)
    def network_def(self, meta, children):
        return self._definition("network", meta, children)

    @v_args(meta=True)
    def train_def(self, meta, children):
        name, call, *settings = children
        args, kwargs = call if call is not None else ((), ())
        return ast.TrainDef(network=str(name), args=args, kwargs=kwargs,
                            settings=tuple(settings), span=self._span(meta),
                            name_span=self._span(name))

    @v_args(meta=True)
    def setting(self, meta, children):
        name, *values = children
        return ast.Setting(name=str(name), values=tuple(values), span=self._span(meta),
                           name_span=self._span(name))

    def params(self, children):
        return tuple(children)

    @v_args(meta=True)
    def param(self, meta, children):
        name, type_, default = children
        return ast.Param(name=str(name), type=str(type_), default=default, span=self._span(meta))

    def body(self, children):
        return tuple(children)

    # statements
    @v_args(meta=True)
    def input_decl(self, meta, children):
        name, dims = children
        return ast.InputDecl(name=str(name), dims=dims, span=self._span(meta))

    def shape(self, children):
        return tuple(children)

    @v_args(meta=True)
    def output_stmt(self, meta, children):
        return ast.Output(names=tuple((str(n), self._span(n)) for n in children),
                          span=self._span(meta))

    @v_args(meta=True)
    def assign(self, meta, children):
        *targets, chain = children
        return ast.Assign(targets=tuple((str(t), self._span(t)) for t in targets),
                          chain=chain, span=self._span(meta))

    @v_args(meta=True)
    def let_stmt(self, meta, children):
        name, value = children
        return ast.Let(name=str(name), value=value, span=self._span(meta),
                       name_span=self._span(name))

    @v_args(meta=True)
    def if_stmt(self, meta, children):
        condition, then, orelse = children
        if isinstance(orelse, ast.If):  # `else if`: a body of one statement
            orelse = (orelse,)
        return ast.If(condition=condition, then=then, orelse=orelse, span=self._span(meta))

    @v_args(meta=True)
    def defaults_stmt(self, meta, children):
        name, (args, kwargs) = children
        return ast.Defaults(layer=str(name), args=args, kwargs=kwargs, span=self._span(meta),
                            name_span=self._span(name))

    @v_args(meta=True)
    def chain(self, meta, children):
        return ast.Chain(steps=tuple(children), span=self._span(meta))

    @v_args(meta=True)
    def group(self, meta, children):
        label, *steps = children
        return ast.Group(label=str(label), steps=tuple(steps), span=self._span(meta))

    @v_args(meta=True)
    def group_step(self, meta, children):
        name, call = children
        return self.layer(meta, [None, name, call])

    def group_args(self, children):
        return self.call_args(children)

    @v_args(meta=True)
    def repeat(self, meta, children):
        layer, count = children
        return ast.Repeat(step=layer, count=count, span=self._span(meta))

    @v_args(meta=True)
    def layer(self, meta, children):
        label, name, call = children
        args, kwargs = call if call is not None else ((), ())
        return ast.Layer(name=str(name), args=args, kwargs=kwargs, has_call=call is not None,
                         label=str(label) if label is not None else None,
                         span=self._span(meta), name_span=self._span(name))

    def call_args(self, children):
        children = [c for c in children if c is not None]
        seen_keyword = False
        for child in children:
            if isinstance(child, ast.KwArg):
                seen_keyword = True
            elif seen_keyword:
                raise CnnError([Diagnostic(
                    code="E-syntax", message="positional argument after a keyword argument",
                    span=child.span, label="move this before the keyword arguments")])
        args = tuple(c for c in children if not isinstance(c, ast.KwArg))
        kwargs = tuple(c for c in children if isinstance(c, ast.KwArg))
        return args, kwargs

    def func_args(self, children):
        return self.call_args(children)

    @v_args(meta=True)
    def kwarg(self, meta, children):
        name, value = children
        return ast.KwArg(name=str(name), value=value, span=self._span(meta),
                         name_span=self._span(name))

    @v_args(meta=True)
    def residual(self, meta, children):
        call, body, shortcut = children
        if call is not None and call[0]:
            raise CnnError([Diagnostic(code="E-arg", message="`residual` takes keyword "
                                       "arguments only", span=call[0][0].span,
                                       help="residual(project=false) { ... }")])
        return ast.Residual(body=body, shortcut=shortcut, span=self._span(meta),
                            kwargs=call[1] if call is not None else ())

    @v_args(meta=True)
    def conditional(self, meta, children):
        chain, condition = children
        return ast.Conditional(chain=chain, condition=condition, span=self._span(meta))

    @v_args(meta=True)
    def compare(self, meta, children):
        left, op, right = children
        return ast.Compare(op=str(op), left=left, right=right, span=self._span(meta))

    @v_args(meta=True)
    def and_(self, meta, children):
        return ast.BoolOp(op="and", left=children[0], right=children[1], span=self._span(meta))

    @v_args(meta=True)
    def or_(self, meta, children):
        return ast.BoolOp(op="or", left=children[0], right=children[1], span=self._span(meta))

    @v_args(meta=True)
    def not_(self, meta, children):
        return ast.BoolOp(op="not", left=children[0], right=None, span=self._span(meta))

    def shortcut(self, children):
        return children[0]

    @v_args(meta=True)
    def branch(self, meta, children):
        mode, *paths = children
        return ast.Branch(mode=str(mode), paths=tuple(paths), span=self._span(meta),
                          mode_span=self._span(mode))

    # expressions
    @v_args(meta=True)
    def number(self, meta, children):
        text = str(children[0])
        if len(text) > MAX_NUMBER_LENGTH:  # Python refuses int() past 4,300 digits anyway
            raise CnnError([Diagnostic(
                code="E-limit", message=f"a number of {len(text):,} characters",
                span=self._span(meta), label=f"more than {MAX_NUMBER_LENGTH} characters",
                help="numbers in a spec are sizes and rates: write it shorter")])
        value = float(text) if any(c in text for c in ".eE") else int(text)
        return ast.Num(value=value, span=self._span(meta))

    @v_args(meta=True)
    def name(self, meta, children):
        return ast.Name(id=str(children[0]), span=self._span(meta))

    @v_args(meta=True)
    def string(self, meta, children):
        return ast.Str(value=str(children[0])[1:-1], span=self._span(meta))

    @v_args(meta=True)
    def func(self, meta, children):
        name, (args, kwargs) = children
        return ast.Func(name=str(name), args=args, kwargs=kwargs, span=self._span(meta))

    @v_args(meta=True)
    def tuple(self, meta, children):
        return ast.Tuple(items=tuple(c for c in children if c is not None), span=self._span(meta))

    @v_args(meta=True)
    def neg(self, meta, children):
        return ast.Neg(operand=children[0], span=self._span(meta))

    def _binop(op):  # noqa: N805 - a factory evaluated in the class body
        @v_args(meta=True)
        def method(self, meta, children):
            left, right = children
            return ast.BinOp(op=op, left=left, right=right, span=self._span(meta))
        return method

    add, sub, mul = _binop("+"), _binop("-"), _binop("*")
    div, floordiv, pow = _binop("/"), _binop("//"), _binop("**")
