"""Source files and spans: where every IR node and diagnostic points."""

from __future__ import annotations

from dataclasses import dataclass

# The one definition of a line break, shared by the lexer (Lark counts `\n`), diagnostics,
# fmt and the language server: `\n`, once `normalise` has made every CR and CRLF one.
# Form feed, `\v`, `\x1c`-`\x1e`, U+0085, U+2028 and U+2029 are not line breaks (Python's
# str.splitlines() takes them for ones, so it is never used on a spec).
LINE_BREAK = "\n"


def normalise(text: str) -> str:
    """What the parser and the quoted lines both see: no byte-order mark, `\n` line ends
    (a lone CR or CRLF becomes one)."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def split_lines(text: str) -> list[str]:
    """The lines of a normalised text, as the lexer counts them (a last empty one after a
    final line break included)."""
    return text.split(LINE_BREAK)


def line_column(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of an offset into a normalised text."""
    line = text.count(LINE_BREAK, 0, offset) + 1
    return line, offset - (text.rfind(LINE_BREAK, 0, offset) + 1) + 1


def end_of(text: str) -> tuple[int, int]:
    """1-based (line, column) where a normalised text ends: after its last character, the
    line break that ends its last line aside."""
    return line_column(text, len(text) - text.endswith(LINE_BREAK))


@dataclass(frozen=True, slots=True)
class Span:
    """A region of a source file: 1-based line and column, end exclusive. A plain slotted
    dataclass, not a Pydantic model: a spec has several per token (a tenth of the memory
    and half the time to make; Pydantic models holding one keep it as it is)."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class SourceFile:
    """The text of one .cnn file, kept so diagnostics can quote it."""

    def __init__(self, name: str, text: str):
        self.name = name
        self.text = text
        self.lines = split_lines(text)

    def line(self, number: int) -> str:
        if 1 <= number <= len(self.lines):
            return self.lines[number - 1]
        return ""


class SourceMap:
    """All files read in one run, by name."""

    def __init__(self) -> None:
        self.files: dict[str, SourceFile] = {}

    def add(self, name: str, text: str) -> SourceFile:
        source = SourceFile(name, text)
        self.files[name] = source
        return source

    def line(self, span: Span) -> str:
        source = self.files.get(span.file)
        return source.line(span.line) if source else ""
