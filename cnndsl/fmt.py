"""`cnndsl fmt`: one canonical layout for .cnn files.

The layout is computed from the Lark lexer's tokens (the very ones the parser reads, comments
collected beside them) and their bracket and brace structure, never from the grammar's rules,
so statements and keywords added to the language format without new code here:

- indentation: 4 spaces per open `{`; a line that starts with `}` belongs to the outer level;
- spacing by token kind: one space around `->`, `=` and binary operators, after `,` and `:`,
  none inside brackets, before `(` of a call or before `,` `:` `)`; keyword arguments are
  tight (`stride=2`), parameter defaults are not (`c: int = 1`);
- lines: the author's statements stay on their lines and a line break before (or after) a
  `->` is kept; inside brackets the text is re-filled, wrapping after a `,` and aligned
  after the opening bracket, and a line that is still too long breaks before a `->`;
- trailing comments of a run of lines (up to a blank line or a comment line) are aligned;
  blank lines are kept, at most one, never just inside a `{ ... }`;
- `# fmt: off` ... `# fmt: on` (each on a line of its own) keeps the lines between as written,
  and the whole of a statement that either starts or ends inside.

The result is checked before it is used: it must lex to the same tokens and comments as the
input, so formatting can never change what a file means.
"""

from __future__ import annotations

import bisect
import collections
import difflib
import re
import sys
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from lark import Lark
from lark.exceptions import UnexpectedInput

from . import syntax
from .diagnostics import CnnError
from .source import LINE_BREAK, split_lines

WIDTH = 100
INDENT = 4
_VALUES = ("NAME", "NUMBER", "STRING")  # token kinds that end an operand


class FormatError(Exception):
    """The formatter would change the file's tokens: a bug, reported and never written."""


@dataclass
class _Tok:
    kind: str  # the Lark terminal
    text: str  # as written; every `->` is "->" (the terminal also holds the line break)
    start: int
    end: int
    line: int
    end_line: int
    space: str = ""  # before it, when it does not start a line
    forced: bool = False  # must start a line
    before: list[str] = field(default_factory=list)  # comment lines placed before it
    after: str | None = None  # the comment ending its line


@dataclass
class _Comment:
    text: str
    start: int
    line: int
    own_line: bool


@dataclass
class _Line:
    """A logical line: one statement (or several joined by `;`), across its continuations."""

    toks: list[_Tok]
    first: int = 0
    last: int = 0


@dataclass
class _CommentLine:
    text: str
    first: int = 0
    last: int = 0


# ---- lexing: the parser's own tokens, comments kept --------------------------------------


class _Recorder:
    """Post-lexer: the project's own (syntax._Newlines), recording what the parser reads."""

    def __init__(self) -> None:
        self.inner = syntax._Newlines()
        self.always_accept = self.inner.always_accept
        self.tokens: list = []
        self.comments: list = []

    def process(self, stream):
        for tok in self.inner.process(stream):
            self.tokens.append(tok)
            yield tok


_LOCK = threading.Lock()  # the recorder is shared: one lexing at a time


@lru_cache(maxsize=1)
def _lexer() -> Lark:
    recorder = _Recorder()
    return Lark(syntax.grammar_text(), parser="lalr", lexer="contextual", postlex=recorder,
                lexer_callbacks={"COMMENT": recorder.comments.append})


@lru_cache(maxsize=1)
def _attached_keywords() -> frozenset[str]:
    """Keywords written like a call, `residual(project=false)`: those the grammar follows
    with an argument list."""
    found = re.findall(r'(_KW_\w+)\s+\[?\s*(?:\w*_args\b|"\(")', syntax.grammar_text())
    return frozenset(found)


def _lex(text: str, name: str = "<string>", words: bool = True) -> tuple[list, list[_Comment]]:
    """The significant tokens the parser reads (statement-ending newlines included) and every
    comment. Raises CnnError (located) when the text does not parse; FormatError instead
    when not asked for the error in `words`."""
    if words:
        syntax.parse(text, name)  # the project's own syntax errors, in words
    parser = _lexer()
    recorder: _Recorder = parser.options.postlex
    with _LOCK:
        recorder.tokens.clear()
        recorder.comments.clear()
        try:
            parser.parse(text)
        except UnexpectedInput as exc:  # when parsed above: cannot happen
            raise FormatError(f"the text does not parse: {exc}") from None
        tokens, raw_comments = list(recorder.tokens), list(recorder.comments)
    comments = [_Comment(str(c).rstrip(), c.start_pos, c.line, _alone(text, c.start_pos))
                for c in raw_comments]
    for tok in tokens:  # `->` at a line's start swallows the comment lines before it
        if tok.type == "_ARROW" and "#" in tok.value:
            for m in re.finditer(r"#[^\n]*", tok.value):
                comments.append(_Comment(m.group().rstrip(), tok.start_pos + m.start(),
                                         tok.line + tok.value.count("\n", 0, m.start()), True))
    comments.sort(key=lambda c: c.start)
    return tokens, comments


def _alone(text: str, pos: int) -> bool:
    return text[text.rfind("\n", 0, pos) + 1:pos].strip() == ""


# ---- tokens -> logical lines and comment lines --------------------------------------------


def _items(text: str, raw: list, comments: list[_Comment]) -> list[_Line | _CommentLine]:
    toks: list[_Tok | None] = []  # None: a statement-ending newline
    for tok in raw:
        if tok.type == "_NL":
            toks.append(None)
            continue
        value = "->" if tok.type == "_ARROW" else str(tok.value)
        start = tok.start_pos + (len(tok.value) - 2 if tok.type == "_ARROW" else 0)
        line = tok.end_line if tok.type == "_ARROW" else tok.line
        toks.append(_Tok(tok.type, value, start, tok.end_pos, line, tok.end_line))
    _mark_arrow_breaks(text, toks)
    starts = [t.start if t is not None else raw[i].start_pos for i, t in enumerate(toks)]
    lines: list[list[_Tok]] = [[]]
    for tok in toks:
        if tok is None:
            lines.append([])
        else:
            lines[-1].append(tok)
    # a comment goes between logical lines, or onto the token it follows or precedes
    between: dict[int, list[_Comment]] = {}  # logical line index -> comments before it
    index_of = {}  # position in toks -> (line index)
    line_index = 0
    for i, tok in enumerate(toks):
        if tok is None:
            line_index += 1
        index_of[i] = line_index
    for comment in comments:
        k = bisect.bisect_left(starts, comment.start)  # toks[k] comes after the comment
        prev = toks[k - 1] if k > 0 else None
        nxt = toks[k] if k < len(toks) else None
        if prev is None:  # the file's start, or after a statement's end
            between.setdefault(index_of[k] if k < len(toks) else line_index + 1,
                               []).append(comment)
        elif not comment.own_line:
            _attach_trailing(toks, k - 1, comment)
        elif nxt is None:  # own line, before the end of a statement or of the file
            between.setdefault(index_of[k - 1] + 1, []).append(comment)
        else:
            nxt.before.append(comment.text)
            nxt.forced = True
    items: list[_Line | _CommentLine] = []
    for index, toks_of_line in enumerate(lines + [[]]):
        for comment in between.get(index, ()):
            items.append(_CommentLine(comment.text, comment.line, comment.line))
        if toks_of_line:
            items.append(_Line(toks_of_line, toks_of_line[0].line, toks_of_line[-1].end_line))
    return items


def _mark_arrow_breaks(text: str, toks: list[_Tok | None]) -> None:
    """A line break next to a `->` outside brackets is the author's: it stays, before it."""
    depth = 0
    for i, tok in enumerate(toks):
        if tok is None:
            continue
        if tok.text == "(":
            depth += 1
        elif tok.text == ")":
            depth -= 1
        elif tok.kind == "_ARROW" and depth == 0 and 0 < i < len(toks) - 1:
            prev, nxt = toks[i - 1], toks[i + 1]
            if prev is not None and nxt is not None and "\n" in text[prev.end:nxt.start]:
                tok.forced = True


def _attach_trailing(toks: list[_Tok | None], i: int, comment: _Comment) -> None:
    tok = toks[i]
    if tok.kind == "_ARROW" and not tok.before and i > 0 and toks[i - 1] is not None and \
            toks[i - 1].after is None:  # (comment lines between keep it after the `->`)
        toks[i - 1].after = comment.text  # `a -> # note` becomes `a  # note` / `-> b`
        tok.forced = True
        return
    tok.after = comment.text
    if i + 1 < len(toks) and toks[i + 1] is not None:
        toks[i + 1].forced = True


# ---- spacing ----------------------------------------------------------------------------


def _is_sign(toks: list[_Tok], i: int) -> bool:
    """A unary `-` or `+`: one that does not follow an operand."""
    if toks[i].text not in "+-":
        return False
    return i == 0 or not (toks[i - 1].kind in _VALUES or toks[i - 1].text == ")")


def _set_spaces(toks: list[_Tok]) -> None:
    depth = 0
    tight_eq = set()  # keyword arguments: `(name=` or `, name=` inside brackets
    for i, tok in enumerate(toks):
        if tok.text == "=" and depth > 0 and i >= 2 and toks[i - 1].kind == "NAME" and \
                toks[i - 2].text in ("(", ","):
            tight_eq.add(i)
        tok.space = "" if i == 0 else _space(toks, i, i in tight_eq or i - 1 in tight_eq)
        depth += (tok.text == "(") - (tok.text == ")")


def _space(toks: list[_Tok], i: int, tight: bool) -> str:
    tok, prev = toks[i], toks[i - 1]
    if prev.text == "(" or tok.text in (")", ",", ";", ":") or tight:
        return ""
    if tok.text == "(":
        if prev.kind == "NAME" or prev.kind in _attached_keywords() or _is_sign(toks, i - 1):
            return ""
        return " "
    if _is_sign(toks, i - 1) or (prev.text == "{" and tok.text == "}"):
        return ""
    return " "


# ---- layout -----------------------------------------------------------------------------


class _Writer:
    """Output lines of one logical line, each with the comment that ends it."""

    def __init__(self, indent: int, width: int):
        self.width = width
        self.lines: list[tuple[str, str | None]] = []
        self.cur = " " * indent
        self.comment: str | None = None
        self.align = [indent]

    @property
    def col(self) -> int:
        return len(self.cur)

    def at_start(self) -> bool:
        return not self.cur.strip()

    def newline(self, col: int) -> None:
        self.lines.append((self.cur.rstrip(), self.comment))
        self.cur, self.comment = " " * col, None

    def put(self, tok: _Tok) -> None:
        if (tok.forced or tok.before) and not self.at_start():
            self.newline(self.align[-1])
        for comment in tok.before:
            self.cur += comment
            self.newline(self.align[-1])
        self.cur += ("" if self.at_start() else tok.space) + tok.text
        if tok.after is not None:
            self.comment = tok.after

    def finish(self) -> list[tuple[str, str | None]]:
        self.lines.append((self.cur.rstrip(), self.comment))
        return self.lines


class _Layout:
    def __init__(self, toks: list[_Tok], indent: int, width: int):
        self.toks = toks
        self.out = _Writer(indent, width)
        self.width = width
        self.match = _matching(toks)
        self.widths = [0]  # prefix sums of flat widths
        self.breaks = [0]  # prefix counts of tokens that must start a line
        self.trailing = [0]  # prefix counts of tokens that end with a comment
        for tok in toks:
            self.widths.append(self.widths[-1] + len(tok.space) + len(tok.text))
            self.breaks.append(self.breaks[-1] + bool(tok.forced or tok.before))
            self.trailing.append(self.trailing[-1] + (tok.after is not None))

    def flat(self, lo: int, hi: int) -> int:
        """Width of toks[lo:hi] on one line, the space before toks[lo] left out."""
        return self.widths[hi] - self.widths[lo] - len(self.toks[lo].space) if hi > lo else 0

    def unbreakable(self, lo: int, hi: int) -> bool:
        """No comment or kept line break inside toks[lo:hi]."""
        return self.breaks[hi] == self.breaks[lo + 1] and \
            self.trailing[hi - 1] == self.trailing[lo]

    def fits(self, lo: int, hi: int, tail: int) -> bool:
        space = 0 if self.out.at_start() else len(self.toks[lo].space)
        return self.out.col + space + self.flat(lo, hi) + tail <= self.width

    def run(self, continuation: int) -> list[tuple[str, str | None]]:
        self.out.align = [continuation]
        # outside brackets a line may break before `->` only (after a `,` it would end)
        self.fill(_split(self.toks, 0, len(self.toks), self.match, commas=False),
                  continuation, 0)
        return self.out.finish()

    def fill(self, items: list[tuple[int, int]], align: int, tail: int) -> None:
        """Items side by side while they fit, each further one on a line of its own at
        `align`; `tail` is what must follow the last item on its line."""
        for k, (lo, hi) in enumerate(items):
            last_tail = tail if k == len(items) - 1 else 0
            tok = self.toks[lo]
            if k > 0 and not self.out.at_start() and (
                    tok.forced or tok.before or not self.fits(lo, hi, last_tail)):
                self.out.newline(align)
            self.render(lo, hi, last_tail)

    def render(self, lo: int, hi: int, tail: int) -> None:
        if self.unbreakable(lo, hi) and self.fits(lo, hi, tail):
            for j in range(lo, hi):
                self.out.put(self.toks[j])
            return
        j = lo
        while j < hi:
            tok = self.toks[j]
            close = self.match.get(j)
            if close is None or close >= hi:
                self.out.put(tok)
                j += 1
                continue
            self.out.put(tok)
            after = self.flat(close + 1, hi) + len(self.toks[close + 1].space) \
                if close + 1 < hi else 0
            align = self.out.col
            self.out.align.append(align)
            self.fill(_split(self.toks, j + 1, close, self.match), align, 1 + after + tail)
            self.out.put(self.toks[close])
            self.out.align.pop()
            j = close + 1


def _matching(toks: list[_Tok]) -> dict[int, int]:
    stack, match = [], {}
    for i, tok in enumerate(toks):
        if tok.text == "(":
            stack.append(i)
        elif tok.text == ")" and stack:
            match[stack.pop()] = i
    return match


def _split(toks: list[_Tok], lo: int, hi: int, match: dict[int, int],
           commas: bool = True) -> list[tuple[int, int]]:
    """toks[lo:hi] cut where a line may break: after a `,` and before a `->` of this level."""
    items, start, j = [], lo, lo
    while j < hi:
        if j in match:
            j = match[j] + 1
            continue
        if toks[j].kind == "_ARROW" and j > start:
            items.append((start, j))
            start = j
        elif toks[j].text == "," and commas:
            items.append((start, j + 1))
            start = j + 1
        j += 1
    if start < hi:
        items.append((start, hi))
    return items


def _continuation(toks: list[_Tok], indent: int, layout: _Layout) -> int:
    """Where a continued chain lines up: after `name = `, else one level in."""
    for i, tok in enumerate(toks):
        if tok.kind == "_ARROW" or tok.text == "(":
            break
        if tok.text == "=" and i + 1 < len(toks):
            return indent + layout.flat(0, i + 1) + 1
    return indent + INDENT


# ---- the file ---------------------------------------------------------------------------


_OFF = re.compile(r"#\s*fmt:\s*off\s*$")
_ON = re.compile(r"#\s*fmt:\s*on\s*$")


def format_text(text: str, width: int = WIDTH, name: str = "<string>") -> str:
    """`text` in the canonical layout. Raises CnnError (located in `name`) if it does not
    parse."""
    text = syntax.normalise(text)
    raw, comments = _lex(text, name)
    items = _items(text, raw, comments)
    source_lines = split_lines(text)
    verbatim = _verbatim_ranges(items, comments, len(source_lines))
    out: list[tuple[str, str | None, bool]] = []  # code, trailing comment, aligns
    depth = 0
    previous: _Line | _CommentLine | None = None
    verbatim_until = 0
    for item in items:
        if isinstance(item, _Line):
            opened = sum(t.text == "{" for t in item.toks) - sum(t.text == "}" for t in item.toks)
        else:
            opened = 0
        if item.first <= verbatim_until:
            depth += opened
            previous = item
            continue
        if previous is not None and item.first - previous.last > 1 and not (
                _ends_with(previous, "{") or _starts_with(item, "}")):
            out.append(("", None, False))
        if verbatim and verbatim[0][0] <= item.last:  # a `# fmt: off` region starts here
            first, verbatim_until = verbatim.popleft()
            out.extend((line.rstrip(), None, False)
                       for line in source_lines[first - 1:verbatim_until])
        elif isinstance(item, _CommentLine):
            out.append((" " * (INDENT * depth) + item.text, None, False))
        else:
            indent = INDENT * max(0, depth - (item.toks[0].text == "}"))
            _set_spaces(item.toks)
            layout = _Layout(item.toks, indent, width)
            lines = layout.run(_continuation(item.toks, indent, layout))
            out.extend((code, comment, True) for code, comment in lines)
        depth += opened
        previous = item
    result = "\n".join(_align(out, width)).rstrip("\n")
    result = result + "\n" if result else ""
    _verify(_signature(raw, comments), result)
    return result


def _ends_with(item, text: str) -> bool:
    return isinstance(item, _Line) and item.toks[-1].text == text


def _starts_with(item, text: str) -> bool:
    return isinstance(item, _Line) and item.toks[0].text == text


def _verbatim_ranges(items: list, comments: list[_Comment], last_line: int
                     ) -> collections.deque[tuple[int, int]]:
    """The (first, last) lines kept as written, in order, found in one pass: from each
    `# fmt: off` on a line of its own to the next `# fmt: on` (or the file's end), widened
    to the whole statements they start or end inside."""
    regions, start = [], None
    for comment in comments:
        if not comment.own_line:
            continue
        if start is None and _OFF.match(comment.text):
            start = comment.line
        elif start is not None and _ON.match(comment.text):
            regions.append((start, comment.line))
            start = None
    if start is not None:
        regions.append((start, last_line))
    ranges: collections.deque[tuple[int, int]] = collections.deque()
    k = 0
    for first, last in regions:
        while k < len(items) and items[k].last < first:
            k += 1
        if k < len(items) and items[k].first < first:  # it starts inside a statement
            first = items[k].first
        while k < len(items) and items[k].first <= last:  # ... or ends inside one
            last = max(last, items[k].last)
            k += 1
        if ranges and first <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(last, ranges[-1][1]))
        else:
            ranges.append((first, last))
    return ranges


def _align(out: list[tuple[str, str | None, bool]], width: int) -> list[str]:
    """Trailing comments of a run of code lines share one column where they fit."""
    lines: list[str] = []
    run: list[tuple[str, str | None]] = []

    def flush() -> None:
        fitting = [len(code) for code, comment in run
                   if comment is not None and len(code) + 2 + len(comment) <= width]
        column = max(fitting, default=0) + 2
        for code, comment in run:
            if comment is None:
                lines.append(code)
            elif column + len(comment) <= width and len(code) + 2 <= column:
                lines.append(code.ljust(column) + comment)
            else:
                lines.append(code + "  " + comment)
        run.clear()

    for code, comment, aligns in out:
        if aligns:
            run.append((code, comment))
            continue
        flush()
        lines.append(code)
    flush()
    return lines


def _signature(raw: list, comments: list[_Comment]) -> tuple[list, list[str]]:
    tokens = [("_NL" if t.type == "_NL" else t.type, "" if t.type == "_NL" else
               "->" if t.type == "_ARROW" else str(t.value)) for t in raw]
    while tokens and tokens[-1][0] == "_NL":  # the file's last line break, or its absence
        tokens.pop()
    return tokens, [c.text for c in comments]


def _verify(before: tuple, after: str) -> None:
    """Formatting changes layout only: the same tokens and comments, in the same order."""
    try:
        same = before == _signature(*_lex(after, words=False))
    except CnnError as exc:
        raise FormatError(f"the formatted text does not parse: {exc}") from None
    if not same:
        raise FormatError("formatting would change the file's tokens")


# ---- the command --------------------------------------------------------------------------


def run_fmt(files: list[str], check: bool = False, diff: bool = False) -> int:
    """`cnndsl fmt`: 0 when every file is (or now is) formatted; 1 when a file does not parse
    or may not be written (the others are still formatted), or with --check/--diff when one
    would change."""
    if files.count("-") > 1:
        sys.stderr.write("error: standard input (`-`) can be given once\n")
        return 1
    status, changed, unchanged, failed = 0, 0, 0, 0
    for name in files:
        outcome = _fmt_one(name, check, diff)
        if outcome == "failed":
            status, failed = 1, failed + 1
        elif outcome == "unchanged":
            unchanged += 1
        elif outcome in ("changed", "would change"):
            changed += 1
            status = max(status, int(outcome == "would change"))
        elif outcome == "stdin changed":
            status = max(status, int(check or diff))
    if files != ["-"]:
        verb = "would be reformatted" if check or diff else "reformatted"
        sys.stderr.write(f"{changed} file{'s' if changed != 1 else ''} {verb}, {unchanged} "
                         "already formatted" + (f", {failed} not formatted (errors above)"
                                                if failed else "") + "\n")
    return status


def _fmt_one(name: str, check: bool, diff: bool) -> str:
    """Format one file (or standard input); what became of it."""
    from .atomic import write_text
    from .diagnostics import render_all, use_color
    from .program import MAX_SOURCE_BYTES, decode_spec, read_spec
    from .source import SourceMap

    stdin = name == "-"
    label = "<stdin>" if stdin else name
    text = None
    try:
        text = decode_spec(sys.stdin.buffer.read(MAX_SOURCE_BYTES + 1), "standard input",
                           label) if stdin else read_spec(Path(name))
        formatted = format_text(text, name=label)
    except CnnError as exc:
        sources = SourceMap()
        if text is not None:
            sources.add(label, syntax.normalise(text))
        sys.stderr.write(render_all(exc.diagnostics, sources, use_color()))
        sys.stderr.write(f"error: {name} was not formatted\n")
        return "failed"
    except OSError as exc:
        sys.stderr.write(f"error[E-io]: cannot read {name}: {exc.strerror or exc}\n")
        return "failed"
    except FormatError as exc:
        sys.stderr.write(f"internal error: {name}: {exc} (a bug in cnndsl fmt; the file "
                         "is left as it is)\n")
        return "failed"
    if stdin:
        if diff:
            sys.stdout.write(_diff(text, formatted, name))
        elif not check:
            sys.stdout.write(formatted)
        return "stdin changed" if formatted != text else "stdin"
    if formatted == text:
        return "unchanged"
    if diff:
        sys.stdout.write(_diff(text, formatted, name))
    if check or diff:
        sys.stderr.write(f"would reformat {name}\n")
        return "would change"
    try:
        write_text(name, formatted)
    except OSError as exc:  # a link, a read-only file: refused, and the run goes on
        sys.stderr.write(f"error[E-io]: cannot write {name}: {exc.strerror or exc}\n")
        return "failed"
    sys.stderr.write(f"reformatted {name}\n")
    return "changed"


def expand_paths(paths: list[str]) -> list[str]:
    """Folders stand for the .cnn files under them, in sorted order."""
    files = []
    for name in paths:
        if name != "-" and Path(name).is_dir():
            files.extend(str(p) for p in sorted(Path(name).rglob("*.cnn")))
        else:
            files.append(name)
    return files


def _lines_kept(text: str) -> list[str]:
    """The lines of a text with their line breaks, as the lexer counts them."""
    lines = [line + LINE_BREAK for line in split_lines(text)]
    lines[-1] = lines[-1][:-1]
    return lines if lines[-1] else lines[:-1]


def _diff(before: str, after: str, name: str) -> str:
    return "".join(difflib.unified_diff(_lines_kept(before), _lines_kept(after),
                                        f"{name} (as it is)", f"{name} (formatted)"))
