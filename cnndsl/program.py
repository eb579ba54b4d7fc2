"""Loading: a spec file, its imports and the standard library -> definitions by name."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from . import ast
from .diagnostics import CnnError, Diagnostic, Label
from .source import SourceMap, Span, line_column
from .syntax import normalise, parse

MAX_SOURCE_BYTES = 4 * 1024 * 1024


class Program:
    """Every definition visible from one spec: the stdlib, then imports, then the file."""

    def __init__(self, confine_to: Path | None = None) -> None:
        self.confine_to = confine_to.resolve() if confine_to is not None else None
        self.sources = SourceMap()
        self.definitions: dict[str, ast.Definition] = {}
        self.file_defaults: dict[str, tuple[ast.Defaults, ...]] = {}  # top-level `defaults`
        self.main: ast.Module | None = None
        self._loading: list[str] = []
        self._loaded: set[str] = set()

    def load_text(self, text: str, name: str, base: Path | None,
                  imported_at: ast.Import | None = None) -> ast.Module:
        text = normalise(text)
        if imported_at is not None:  # quoted only once it parses
            module = self._parse_import(text, name, imported_at)
            self.sources.add(name, text)
        else:
            self.sources.add(name, text)
            module = parse(text, name)
        for imp in module.imports:
            self._import(imp, base or Path.cwd(), name)
        for defn in module.definitions:
            self._define(defn, user=True)
        if module.defaults:
            self.file_defaults[name] = module.defaults
        return module

    def _parse_import(self, text: str, name: str, imp: ast.Import) -> ast.Module:
        """An imported file that does not parse is reported at the import, without quoting
        it: a path can point anywhere, and its text is nobody's business until it is .cnn."""
        try:
            return parse(text, name)
        except CnnError as exc:
            where = exc.diagnostics[0].span
            at = f" (line {where.line}, column {where.column})" if where else ""
            raise CnnError([Diagnostic(
                code="E-import", message=f"`{imp.path}` does not parse as .cnn{at}",
                span=imp.span, help=f"check {name} with `cnndsl check`")]) from None

    def _import(self, imp: ast.Import, base: Path, importer: str) -> None:
        def refuse(message: str, **kw) -> CnnError:
            return CnnError([Diagnostic(code="E-import", message=message, span=imp.span, **kw)])
        if "\0" in imp.path or not imp.path.endswith(".cnn"):
            raise refuse(f"cannot import `{imp.path}`: imports read .cnn files only")
        try:
            path = (base / imp.path).resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop
            raise refuse(f"cannot import `{imp.path}`: {exc}") from None
        if self.confine_to is not None and not path.is_relative_to(self.confine_to):
            raise refuse(f"`{imp.path}` lies outside {display_path(self.confine_to)}",
                         help="imports are confined to the spec's folder (--confine-imports)")
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
            raise refuse(f"cannot read `{imp.path}`: {exc.strerror or exc}",
                         notes=(f"looked for {display_path(path)}",)) from None
        except CnnError as exc:  # too large, or not UTF-8: said at the import
            raise refuse(f"cannot import `{imp.path}`: {exc.diagnostics[0].message}") from None
        self._loading.append(key)
        self.load_text(text, display_path(path), path.parent, imported_at=imp)
        self._loading.pop()
        self._loaded.add(key)

    def _define(self, defn: ast.Definition, user: bool) -> None:
        from .names import name_problem
        problems = [(defn.name_span, name_problem(defn.name, defn.kind))]
        seen: dict[str, Span] = {}
        for param in defn.params:
            problems.append((param.span, name_problem(param.name, "parameter")))
            if param.name in seen:
                raise CnnError([Diagnostic(
                    code="E-param", message=f"parameter `{param.name}` is declared twice",
                    span=param.span, related=(Label(span=seen[param.name], text="first here"),
                                              ))])
            seen[param.name] = param.span
        for span, problem in problems:
            if problem is not None:
                raise CnnError([Diagnostic(code="E-name", message=problem[0], span=span,
                                           help=f"call it e.g. `{problem[1]}`")])
        previous = self.definitions.get(defn.name)
        if previous is not None and not previous.span.file.startswith("<stdlib"):
            raise CnnError([Diagnostic(
                code="E-name", message=f"`{defn.name}` is defined twice", span=defn.name_span,
                related=(Label(span=previous.name_span, text="first defined here"),))])
        self.definitions[defn.name] = defn

    def load_stdlib(self) -> None:
        """Standard blocks are always visible; a user's definition of the same name wins."""
        for name, text, module in _stdlib():
            self.sources.add(name, text)
            for defn in module.definitions:
                self.definitions[defn.name] = defn

    def network(self, name: str | None) -> ast.Definition:
        assert self.main is not None
        networks = [d for d in self.main.definitions if d.kind == "network"]
        for train in self.main.trains:  # a file may train a network it imports
            defn = self._trained_network(train)
            if defn not in networks:
                networks.append(defn)
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
            start = Span(file=self.main.file, line=1, column=1, end_line=1, end_column=2)
            raise CnnError([Diagnostic(code="E-input", message=f"{self.main.file} defines no "
                                       "network", span=start,
                                       help="add `network name() { ... }`")])
        if len(networks) > 1:
            raise CnnError([Diagnostic(
                code="E-name", message=f"{self.main.file} defines several networks",
                span=networks[1].name_span,
                help="choose one with --network " + " / --network ".join(
                    d.name for d in networks))])
        return networks[0]


    def _trained_network(self, train: ast.TrainDef) -> ast.Definition:
        defn = self.definitions.get(train.network)
        if defn is None or defn.kind != "network":
            from .suggest import did_you_mean
            known = [d.name for d in self.definitions.values() if d.kind == "network"]
            raise CnnError([Diagnostic(
                code="E-name", message=f"`train` names no network `{train.network}`",
                span=train.name_span, label="not a network defined or imported here",
                help=did_you_mean(train.network, known) or
                "define it in this file or import the file that defines it")])
        return defn

    def train_def(self, network: str) -> ast.TrainDef | None:
        """The main file's `train` definition for a network, if it has one."""
        assert self.main is not None
        found = [t for t in self.main.trains if t.network == network]
        if len(found) > 1:
            raise CnnError([Diagnostic(
                code="E-name", message=f"`{network}` has two `train` definitions",
                span=found[1].name_span, related=(Label(span=found[0].name_span,
                                                        text="the first"),))])
        return found[0] if found else None


@lru_cache(maxsize=1)
def _stdlib() -> tuple[tuple[str, str, ast.Module], ...]:
    """The standard library, parsed once per process (syntax trees are immutable)."""
    folder = resources.files("cnndsl") / "stdlib"
    files = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".cnn"):
            name, text = f"<stdlib>/{entry.name}", entry.read_text()
            files.append((name, text, parse(text, name)))
    return tuple(files)


def read_spec(path: Path) -> str:
    """A spec's text: from a regular file only (a FIFO, a terminal or /dev/zero would block
    or never end), at most MAX_SOURCE_BYTES, UTF-8."""
    from .files import open_regular
    with open_regular(path) as f:
        return decode_spec(f.read(MAX_SOURCE_BYTES + 1), str(path), display_path(path))


def decode_spec(data: bytes, what: str, file: str) -> str:
    """The text of a spec's bytes (read with one more than MAX_SOURCE_BYTES allowed), how
    every spec is decoded, whether from a file or from standard input: UTF-8 or refused,
    the first bad byte located. `what` names it in words, `file` in spans."""
    if len(data) > MAX_SOURCE_BYTES:
        raise CnnError([Diagnostic(code="E-limit", message=f"{what} is larger than "
                                   f"{MAX_SOURCE_BYTES // 1024 // 1024} MiB")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = normalise(data[:exc.start].decode("utf-8", errors="replace"))
        line, column = line_column(before, len(before))
        span = Span(file=file, line=line, column=column, end_line=line,
                    end_column=column + 1)
        raise CnnError([Diagnostic(code="E-syntax", message=f"not UTF-8 text: byte "
                                   f"0x{data[exc.start]:02x} at offset {exc.start}",
                                   span=span)]) from None


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
