"""One error type and one renderer for everything cnndsl reports.

Passes create `Diagnostic`s with spans; only `render` formats positions.
"""

from __future__ import annotations

import os
import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .source import SourceMap, Span

Severity = Literal["error", "warning"]


class Label(BaseModel):
    model_config = ConfigDict(frozen=True)

    span: Span
    text: str = ""


class Diagnostic(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str
    severity: Severity = "error"
    message: str
    span: Span | None = None
    label: str = ""
    related: tuple[Label, ...] = ()
    notes: tuple[str, ...] = ()
    help: str | None = None

    def to_json(self) -> dict:
        data = {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "label": self.label,
            "notes": list(self.notes),
            "help": self.help,
        }
        if self.span is not None:
            data.update(file=self.span.file, line=self.span.line, column=self.span.column,
                        end_line=self.span.end_line, end_column=self.span.end_column)
        data["related"] = [{"file": lab.span.file, "line": lab.span.line,
                            "column": lab.span.column, "text": lab.text} for lab in self.related]
        return data


class CnnError(Exception):
    """Raised with one or more diagnostics; the CLI renders them and exits 1."""

    def __init__(self, diagnostics: list[Diagnostic], sources: SourceMap | None = None):
        self.diagnostics = diagnostics
        self.sources = sources or SourceMap()
        super().__init__("\n".join(_plain(d) for d in diagnostics))

    def render(self, color: bool = False) -> str:
        return render_all(self.diagnostics, self.sources, color)


def _plain(d: Diagnostic) -> str:
    """One diagnostic as str(CnnError) gives it: where, what, then its notes and help, so a
    Python user who prints the exception sees the help the CLI shows."""
    lines = [f"{d.span}: {d.message}" if d.span else d.message]
    lines += [f"  note: {note}" for note in d.notes]
    if d.help:
        lines.append(f"  help: {d.help}")
    return "\n".join(lines)


def error(code: str, message: str, span: Span | None, **kw) -> CnnError:
    """Shorthand for raising a single located error."""
    return CnnError([Diagnostic(code=code, message=message, span=span, **kw)])


_COLORS = {"error": "\033[1;31m", "warning": "\033[1;33m", "blue": "\033[1;34m",
           "bold": "\033[1m", "reset": "\033[0m"}


def use_color(stream=sys.stderr) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def render_all(diagnostics: list[Diagnostic], sources: SourceMap, color: bool = False) -> str:
    ordered = sorted(diagnostics, key=_position)
    return "\n".join(render(d, sources, color) for d in ordered)


def _position(d: Diagnostic) -> tuple:
    if d.span is None:
        return ("", 0, 0)
    return (d.span.file, d.span.line, d.span.column)


def render(d: Diagnostic, sources: SourceMap, color: bool = False) -> str:
    """Render rustc-style: header, location, quoted line with carets, notes, help."""
    def paint(text: str, style: str) -> str:
        return f"{_COLORS[style]}{text}{_COLORS['reset']}" if color else text

    out = [paint(f"{d.severity}[{d.code}]", d.severity) +
           paint(f": {printable(d.message)}", "bold")]
    if d.span is not None:
        spans = [d.span] + [lab.span for lab in d.related]
        width = len(str(max(s.line for s in spans)))
        pad = " " * width
        out.append(f"{pad}{paint('-->', 'blue')} {printable(str(d.span))}")
        out.append(f"{pad} {paint('|', 'blue')}")
        quotes = [(d.span, d.label, d.severity)] + [
            (lab.span, lab.text, "blue") for lab in d.related if lab.span.file == d.span.file]
        for span, text, style in sorted(quotes, key=lambda q: (q[0].line, q[0].column)):
            out.extend(_quote(span, text, sources, width, paint, style))
        for lab in d.related:  # a label in another file (the block a call went into)
            if lab.span.file != d.span.file:
                out.append(f"{pad}{paint(':::', 'blue')} {printable(str(lab.span))}")
                out.extend(_quote(lab.span, lab.text, sources, width, paint, "blue"))
        out.append(f"{pad} {paint('|', 'blue')}")
    else:
        pad = ""
    for note in d.notes:
        out.append(f"{pad} {paint('=', 'blue')} note: {printable(note)}")
    if d.help:
        out.append(f"{pad} {paint('=', 'blue')} help: {printable(d.help)}")
    return "\n".join(out) + "\n"


def _quote(span: Span, text: str, sources: SourceMap, width: int, paint, style: str) -> list[str]:
    raw = sources.line(span).expandtabs(1)
    gutter = f"{span.line:>{width}} {paint('|', 'blue')} "
    blank = f"{' ' * width} {paint('|', 'blue')} "
    end = span.end_column - 1 if span.end_line == span.line else len(raw)
    first = max(0, span.column - 1 - QUOTE_WIDTH // 2)
    if len(raw) > QUOTE_WIDTH:  # a very long line: the part around the caret
        shown = raw[first:first + QUOTE_WIDTH]
        lead = "…" if first else ""
        raw = lead + shown + ("…" if first + QUOTE_WIDTH < len(raw) else "")
        offset = first - len(lead)
        span_start, end = span.column - 1 - offset, min(end - offset, len(raw))
    else:
        span_start = span.column - 1
    source_line = printable(raw)  # columns move where a character was escaped
    start, end = len(printable(raw[:span_start])), len(printable(raw[:end]))
    carets = "^" * max(1, min(end, max(len(source_line), start + 1)) - start)
    marker = (" " * start) + paint(carets + (f" {printable(text)}" if text else ""), style)
    return [gutter + source_line, blank + marker]


QUOTE_WIDTH = 160  # longer source lines are quoted around the caret


def printable(text: str) -> str:
    """Text from a spec or a file name, safe for a terminal: control and format characters
    (escape sequences, line and paragraph separators, bidi overrides) are written as
    escapes instead of acting on the screen."""
    if text.isprintable():  # the usual case, at C speed
        return text
    return "".join(ch if ch == "\t" or ch.isprintable() else ch.encode(
        "unicode_escape").decode("ascii") for ch in text)


def printable_text(text: str) -> str:
    """`printable` line by line: several lines of output (a table, a report), each made
    safe for a terminal, the line breaks kept."""
    return "\n".join(printable(line) for line in text.split("\n"))
