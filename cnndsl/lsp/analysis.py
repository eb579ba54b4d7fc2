"""One document's analysis: its syntax tree, the definitions it sees, the checked networks
and every diagnostic. Pure Python (no protocol here); what the server's features read.

The checking is the project's own (`cnndsl.loads`), on the editor's text, with imports
resolved from the document's folder; the syntax tree comes from the same run when it checks.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import itertools
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .. import ast
from ..api import loads
from ..diagnostics import CnnError, Diagnostic
from ..ir import Network, Node, Scope
from ..program import Program
from ..source import SourceMap, Span, split_lines
from ..syntax import normalise, parse

log = logging.getLogger("cnndsl.lsp")


@dataclass
class Analysis:
    text: str  # normalised: `\n` line ends, no byte-order mark
    name: str  # the document's name in spans
    module: ast.Module | None  # None when the text does not parse
    definitions: dict[str, ast.Definition] = field(default_factory=dict)
    sources: SourceMap = field(default_factory=SourceMap)
    networks: list[Network] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # the client's text began with a byte-order mark: `text` has none, the client's line 0
    # has it as its first character
    bom: bool = False
    _index: Index | None = field(default=None, repr=False, compare=False)

    @property
    def parsed(self) -> bool:
        return self.module is not None

    @property
    def index(self) -> Index:
        """What requests look up, built once (by `analyse`, in the analysis thread)."""
        if self._index is None:
            self._index = Index(self)
        return self._index

    @property
    def lines(self) -> list[str]:
        return self.index.lines


def analyse(text: str, name: str, base: Path | None) -> Analysis:
    """Never raises: an internal error becomes a diagnostic at the top of the file."""
    try:
        result = _analyse(normalise(text), name, base)
    except Exception as exc:  # noqa: BLE001 - an editor must never lose its server
        log.error("internal error analysing %s:\n%s", name, traceback.format_exc())
        span = Span(file=name, line=1, column=1, end_line=1, end_column=2)
        result = Analysis(normalise(text), name, None, diagnostics=[Diagnostic(
            code="internal-error", message=f"internal error: {type(exc).__name__}: {exc} "
            "(a bug in cnndsl; the server's log has the traceback)", span=span)])
    result.bom = text.startswith("\ufeff")
    try:
        result.index  # noqa: B018 - built here, off the server's event loop
    except Exception:  # noqa: BLE001
        log.error("internal error indexing %s:\n%s", name, traceback.format_exc())
    return result


def _analyse(text: str, name: str, base: Path | None) -> Analysis:
    try:  # the usual case, one parse: a document with one network that checks
        model = loads(text, name=name, imports_from=base)
        return Analysis(text, name, model.program.main, dict(model.program.definitions),
                        model.program.sources, [model.ir], list(model.warnings))
    except CnnError as exc:
        first = list(exc.diagnostics)
    program = Program()
    program.load_stdlib()  # parsed once per process: the blocks a completion may offer
    if any(d.code == "E-syntax" and d.span is not None and d.span.file == name or
           d.code == "E-limit" and d.span is None for d in first):  # (too large: not parsed)
        return Analysis(text, name, None, dict(program.definitions), program.sources,
                        diagnostics=first)
    try:
        module = program.load_text(text, name, base)
    except CnnError as exc:  # an import or a definition refused: still an outline
        try:
            module = parse(text, name)
        except CnnError as syntax_error:
            return Analysis(text, name, None, dict(program.definitions), program.sources,
                            diagnostics=list(syntax_error.diagnostics))
        definitions = dict(program.definitions)
        definitions.update({d.name: d for d in module.definitions})
        return Analysis(text, name, module, definitions, program.sources,
                        diagnostics=_distinct([*exc.diagnostics, *first]))
    program.main = module
    result = Analysis(text, name, module, dict(program.definitions), program.sources)
    networks = [d.name for d in module.definitions if d.kind == "network"]
    if not networks and not module.trains:
        return result  # a library of blocks: nothing to check until it is called
    if len(networks) <= 1:
        result.diagnostics = first
        return result
    for network in networks:  # several networks: each is checked
        try:
            model = loads(text, name=name, network=network, imports_from=base)
            result.networks.append(model.ir)
            result.diagnostics.extend(model.warnings)
        except CnnError as exc:
            result.diagnostics.extend(exc.diagnostics)
    result.diagnostics = _distinct(result.diagnostics)
    return result


def _distinct(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    seen, out = set(), []
    for d in diagnostics:
        key = (d.code, d.message, d.span)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


# ---- the syntax tree, walked generically -------------------------------------------------


def walk(node, parents: tuple = ()):
    """Every syntax-tree node under `node` with its ancestors, whatever its type: new
    statement kinds are walked without code here (spans are positions, not nodes)."""
    if isinstance(node, tuple):
        for item in node:
            yield from walk(item, parents)
        return
    names = _fields_of(type(node))
    if names is None:
        return
    yield node, parents
    inner = (*parents, node)
    for name in names:
        yield from walk(getattr(node, name), inner)


@functools.cache
def _fields_of(kind: type) -> tuple[str, ...] | None:
    """A syntax-tree class's fields (None: not a node), looked up once per class."""
    if kind is Span or not dataclasses.is_dataclass(kind):
        return None
    return tuple(f.name for f in dataclasses.fields(kind))


def contains(span: Span | None, line: int, column: int) -> bool:
    """Whether (line, column), 1-based, lies in the span (its end included: a cursor just
    after a word is on it)."""
    if span is None:
        return False
    return (span.line, span.column) <= (line, column) <= (span.end_line, span.end_column)


def definition_at(module: ast.Module, line: int) -> ast.Definition | None:
    for defn in module.definitions:
        if defn.span.line <= line <= defn.span.end_line:
            return defn
    return None


@dataclass(frozen=True)
class TensorName:
    """Where a named tensor is defined: an assignment, a label or an input."""

    name: str
    span: Span  # the name itself
    statement: object  # the ast node that defines it
    part: int | None = None  # which of several targets (`a, b = x -> split(2)`)


def tensor_names(defn: ast.Definition, text_lines: list[str]) -> list[TensorName]:
    found: list[TensorName] = []
    for node, _ in walk(defn.body):
        _tensors_named(node, text_lines, found)
    return found


def _tensors_named(node, text_lines: list[str], found: list[TensorName]) -> None:
    """The tensors a node names, added to `found`."""
    if isinstance(node, ast.Assign):
        several = len(node.targets) > 1
        found += [TensorName(name, span, node, k if several else None)
                  for k, (name, span) in enumerate(node.targets)]
    elif isinstance(node, ast.Group) or isinstance(node, ast.Layer) and node.label:
        found.append(TensorName(node.label, _word_span(node.span, node.label), node))
    elif isinstance(node, ast.InputDecl):
        found.append(TensorName(node.name, _input_name_span(node, text_lines), node))


def named_lines(node) -> tuple[int, ...]:
    """The lines of the names a request may point at in a node (a layer's or an
    argument's name, a tensor's): where the index files it."""
    if isinstance(node, (ast.Layer, ast.KwArg)):
        return (node.name_span.line,)
    if isinstance(node, ast.Name):
        return (node.span.line,)
    if isinstance(node, ast.Output):
        return tuple(sorted({span.line for _, span in node.names}))
    return ()


def _word_span(span: Span, word: str) -> Span:
    """A name written at the start of a span (`label: ...`)."""
    return Span(file=span.file, line=span.line, column=span.column, end_line=span.line,
                end_column=span.column + len(word))


def _input_name_span(decl: ast.InputDecl, text_lines: list[str]) -> Span:
    line = text_lines[decl.span.line - 1] if decl.span.line <= len(text_lines) else ""
    at = line.find(decl.name, decl.span.column - 1 + len("input"))
    column = at + 1 if at >= 0 else decl.span.column
    return Span(file=decl.span.file, line=decl.span.line, column=column,
                end_line=decl.span.line, end_column=column + len(decl.name))


# ---- the checked IR, seen from the source ------------------------------------------------


@dataclass(frozen=True)
class Step:
    """A node or a block call of a checked network, with its output shape."""

    span: Span
    shape: tuple[int, ...]
    order: int  # position in the network's topological order
    instance: tuple[str, ...]  # the block call it runs inside (() for the network's body)
    node: Node | None = None
    scope: Scope | None = None


def steps(ir: Network) -> list[Step]:
    blocks = {s.path for s in ir.scopes if s.block is not None}
    order = {n.name: i for i, n in enumerate(ir.nodes)}

    def instance(path: tuple[str, ...]) -> tuple[str, ...]:
        for k in range(len(path), 0, -1):
            if path[:k] in blocks:
                return path[:k]
        return ()

    out = [Step(n.span, n.shape, i, instance(n.path[:-1]), node=n)
           for i, n in enumerate(ir.nodes)]
    for scope in ir.scopes:
        if not scope.output:
            continue
        out.append(Step(scope.span, ir.shape_of(scope.output), order.get(scope.output, -1),
                        instance(scope.path[:-1]), scope=scope))
    out.extend(Step(i.span, i.shape, -1, ()) for i in ir.inputs)
    return out


def line_shapes(analysis: Analysis, networks: list[Network] | None = None
                ) -> dict[int, list[tuple[int, ...]]]:
    """For each line of the document: the output shape of the step that ends it, one per
    distinct shape over the block calls that ran the line (of all the analysis's networks:
    from its index, worked out in the analysis thread)."""
    if networks is None:
        return dict(analysis.index.line_shapes)
    return _line_shapes(analysis.name, ((k, step) for k, ir in enumerate(networks)
                                        for step in steps(ir)))


def _line_shapes(name: str, located) -> dict[int, list[tuple[int, ...]]]:
    last: dict[tuple[int, tuple[str, ...], int], Step] = {}
    for k, step in located:
        if step.span.file != name:
            continue
        key = (step.span.end_line, step.instance, k)
        best = last.get(key)
        if best is None or (step.span.end_column, step.order) > (best.span.end_column,
                                                                  best.order):
            last[key] = step
    shapes: dict[int, list[tuple[int, ...]]] = {}
    for (line, _, _), step in sorted(last.items(), key=lambda kv: (kv[0][0], kv[1].order)):
        seen = shapes.setdefault(line, [])
        if step.shape not in seen:
            seen.append(step.shape)
    return shapes


def carried_shapes(previous: Analysis, current: Analysis, network: str
                   ) -> dict[int, list[tuple[int, ...]]]:
    """Line shapes of a network that no longer checks, from the last analysis in which it
    did, that still hold: those of the lines above the first edit, when every edit since
    lies inside that network's body (then nothing above the edit has changed)."""
    old, new = split_lines(previous.text), split_lines(current.text)
    same = 0  # lines 1..same are equal
    while same < min(len(old), len(new)) and old[same] == new[same]:
        same += 1
    tail = 0  # and so are the last `tail` lines
    while tail < min(len(old), len(new)) - same and old[-1 - tail] == new[-1 - tail]:
        tail += 1

    def inside(analysis: Analysis, last_edited: int) -> bool:
        defn = next((d for d in analysis.module.definitions if d.name == network), None)
        if defn is None or not defn.body:
            return False
        return defn.body[0].span.line <= same + 1 and last_edited < defn.span.end_line

    old_ir = next((ir for ir in previous.networks if ir.name == network), None)
    if old_ir is None or current.module is None or not (
            inside(previous, len(old) - tail) and inside(current, len(new) - tail)):
        return {}
    return {line: shapes for line, shapes in line_shapes(previous, [old_ir]).items()
            if line <= same}


class Index:
    """An analysis seen from the source, built once, so that no request walks the document
    (or the checked networks) once per item it answers with: the lines and where they
    start, each definition's named tensors, and every checked step by its position."""

    def __init__(self, analysis: Analysis) -> None:
        self.lines = split_lines(analysis.text)
        self.line_starts = list(itertools.accumulate((len(t) + 1 for t in self.lines[:-1]),
                                                     initial=0))
        module = analysis.module
        # by definition (its name's span: two of one name are two), in order, and by name
        self.tensors: dict[Span, list[TensorName]] = {}
        self.first_tensor: dict[Span, dict[str, TensorName]] = {}
        # the nodes with a name a request may point at, by line: (node, ancestors, definition)
        self.at_line: dict[int, list[tuple]] = collections.defaultdict(list)
        self.tensors_at_line: dict[int, list[tuple]] = collections.defaultdict(list)
        for defn in module.definitions if module is not None else ():
            found: list[TensorName] = []
            for node, parents in walk(defn.body):  # one walk a definition, for both
                _tensors_named(node, self.lines, found)
                for line in named_lines(node):
                    self.at_line[line].append((node, parents, defn))
            self.tensors[defn.name_span] = found
            for tensor in found:
                self.tensors_at_line[tensor.span.line].append((tensor, defn))
            firsts: dict[str, TensorName] = {}
            for tensor in found:
                firsts.setdefault(tensor.name, tensor)
            self.first_tensor[defn.name_span] = firsts

        self.by_span: dict[Span, list[Step]] = collections.defaultdict(list)
        located = []  # (file, line, column, network, step)
        for k, ir in enumerate(analysis.networks):
            for step in steps(ir):
                self.by_span[step.span].append(step)
                located.append((step.span.file, step.span.line, step.span.column, k, step))
        located.sort(key=lambda x: x[:3])
        self.located = located
        self.starts = [x[:3] for x in located]
        self.shapes: dict[tuple, list] = {}  # output_of's answers, as they are asked for
        self.line_shapes = _line_shapes(analysis.name, ((k, step) for *_, k, step in located))

    def tensors_of(self, defn: ast.Definition) -> list[TensorName]:
        found = self.tensors.get(defn.name_span)
        return found if found is not None else tensor_names(defn, self.lines)

    def offset(self, line: int, column: int) -> int:
        """The offset in the text of a 1-based (line, column)."""
        index = min(max(0, line - 1), len(self.lines) - 1)
        return self.line_starts[index] + column - 1

    def steps_within(self, within: Span):
        """(network, step) of every step whose span lies inside `within`."""
        lo = bisect.bisect_left(self.starts, (within.file, within.line, within.column))
        hi = bisect.bisect_right(self.starts, (within.file, within.end_line, within.end_column))
        for _, _, _, k, step in self.located[lo:hi]:
            if (step.span.end_line, step.span.end_column) <= (within.end_line,
                                                              within.end_column):
                yield k, step


def steps_at(analysis: Analysis, span: Span) -> list[Step]:
    """The nodes and block calls a syntax-tree step (by its span) became, in order."""
    return sorted(analysis.index.by_span.get(span, ()), key=lambda s: s.order)


def output_of(analysis: Analysis, within: Span, part: int | None = None
              ) -> list[tuple[int, ...]]:
    """Distinct output shapes of the code in `within` (a chain): per run of it, the step
    that ends last; `part`: the shape of that one of its several outputs (the parts of a
    split, the outputs of a block that has several)."""
    index = analysis.index
    key = (within, part)
    if key not in index.shapes:
        index.shapes[key] = _output_of(analysis, within, part)
    return index.shapes[key]


def _output_of(analysis: Analysis, within: Span, part: int | None) -> list[tuple[int, ...]]:
    ending: dict[tuple, list[Step]] = {}  # per run, the steps that end last
    for k, step in analysis.index.steps_within(within):
        s = step.span
        key = (k, step.instance)
        best = ending.get(key)
        end = (s.end_line, s.end_column)
        if best is None or end > (best[0].span.end_line, best[0].span.end_column):
            ending[key] = [step]
        elif end == (best[0].span.end_line, best[0].span.end_column):
            best.append(step)
    shapes: list[tuple[int, ...]] = []
    for (k, _), run in sorted(ending.items(), key=lambda kv: max(s.order for s in kv[1])):
        shape = _part_shape(analysis.networks[k], sorted(run, key=lambda s: s.order), part)
        if shape is not None and shape not in shapes:
            shapes.append(shape)
    return shapes


def _part_shape(ir: Network, run: list[Step], part: int | None) -> tuple[int, ...] | None:
    last = run[-1]
    if part is None:
        return last.shape
    if last.scope is not None and len(last.scope.outputs) > 1:
        outputs = last.scope.outputs
        return ir.shape_of(outputs[part]) if part < len(outputs) else None
    nodes = [s for s in run if s.node is not None]
    return nodes[part].shape if part < len(nodes) else None
