"""Loading: a spec file, its imports and the standard library -> definitions by name."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from . import ast
from .diagnostics import CnnError, Diagnostic, Label
from .source import SourceMap
from .syntax import parse

MAX_SOURCE_BYTES = 4 * 1024 * 1024


class Program:
    """Every definition visible from one spec: the stdlib, then imports, then the file."""

    def __init__(self) -> None:
        self.sources = SourceMap()
        self.definitions: dict[str, ast.Definition] = {}
        self.main: ast.Module | None = None
        self._loading: list[str] = []
        self._loaded: set[str] = set()

    def load_text(self, text: str, name: str, base: Path | None) -> ast.Module:
        self.sources.add(name, text)
        module = parse(text, name)
        for imp in module.imports:
            self._import(imp, base or Path.cwd(), name)
        for defn in module.definitions:
            self._define(defn, user=True)
        return module

    def _import(self, imp: ast.Import, base: Path, importer: str) -> None:
        path = (base / imp.path).resolve()
        key = str(path)
        if key in self._loading:
            cycle = [*self._loading[self._loading.index(key):], key]
            chain = " -> ".join(display_path(Path(p)) for p in cycle)
            raise CnnError([Diagnostic(code="E-import", message="import cycle", span=imp.span,
                                       notes=(f"cycle: {chain}",))])
        if key in self._loaded:
            return
        try:
            text = read_spec(path)
        except OSError as exc:
            raise CnnError([Diagnostic(code="E-import", message=f"cannot read `{imp.path}`: "
                                       f"{exc.strerror or exc}", span=imp.span,
                                       notes=(f"looked for {display_path(path)}",))]) from None
        self._loading.append(key)
        self.load_text(text, display_path(path), path.parent)
        self._loading.pop()
        self._loaded.add(key)

    def _define(self, defn: ast.Definition, user: bool) -> None:
        previous = self.definitions.get(defn.name)
        if previous is not None and not previous.span.file.startswith("<stdlib"):
            raise CnnError([Diagnostic(
                code="E-name", message=f"`{defn.name}` is defined twice", span=defn.name_span,
                related=(Label(span=previous.name_span, text="first defined here"),))])
        self.definitions[defn.name] = defn

    def load_stdlib(self) -> None:
        """Standard blocks are always visible; a user's definition of the same name wins."""
        folder = resources.files("cnndsl") / "stdlib"
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".cnn"):
                name = f"<stdlib>/{entry.name}"
                text = entry.read_text()
                self.sources.add(name, text)
                for defn in parse(text, name).definitions:
                    self.definitions[defn.name] = defn

    def network(self, name: str | None) -> ast.Definition:
        assert self.main is not None
        networks = [d for d in self.main.definitions if d.kind == "network"]
        if name is not None:
            for d in networks:
                if d.name == name:
                    return d
            from .suggest import did_you_mean
            raise CnnError([Diagnostic(
                code="E-name", message=f"no network `{name}` in {self.main.file}",
                help=did_you_mean(name, [d.name for d in networks]) or
                f"networks here: {', '.join(d.name for d in networks) or 'none'}")])
        if not networks:
            raise CnnError([Diagnostic(code="E-input", message=f"{self.main.file} defines no "
                                       "network", help="add `network name() { ... }`")])
        if len(networks) > 1:
            raise CnnError([Diagnostic(
                code="E-name", message=f"{self.main.file} defines several networks",
                span=networks[1].name_span,
                help="choose one with --network " + " / --network ".join(
                    d.name for d in networks))])
        return networks[0]


def read_spec(path: Path) -> str:
    with open(path, "rb") as f:
        data = f.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise CnnError([Diagnostic(code="E-limit", message=f"{path} is larger than "
                                   f"{MAX_SOURCE_BYTES // 1024 // 1024} MiB")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CnnError([Diagnostic(code="E-syntax", message=f"{path} is not UTF-8 text "
                                   f"(byte {exc.start})")]) from None


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
