"""Source files and spans: where every IR node and diagnostic points."""

from __future__ import annotations

from dataclasses import dataclass


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
        self.lines = text.split("\n")  # as the parser counts lines: \n alone

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
