"""What each request answers, from an `Analysis`: hover, inlay hints, definitions,
completion, signature help, document symbols and rename. Positions in, lsprotocol out."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lsprotocol import types as lsp

from .. import ast
from ..diagnostics import Diagnostic
from ..layers import PAD_MODES, REGISTRY, REQUIRED, LayerKind, boolean, fmt, padding, short
from ..names import LANGUAGE_WORDS, name_problem
from ..source import Span, split_lines
from ..syntax import grammar_text
from ..values import describe, render_expr
from .analysis import (
    Analysis,
    contains,
    definition_at,
    output_of,
    steps_at,
    walk,
)

MAX_LISTED = 4  # instances of a block's layer shown in a hover


# ---- positions --------------------------------------------------------------------------


class Positions:
    """1-based (line, column) in code points <-> LSP positions in the client's encoding."""

    def __init__(self, analysis: Analysis, uri: str, codec):
        self.analysis, self.uri, self.codec = analysis, uri, codec
        self.lines = analysis.lines
        # a byte-order mark the client kept is the first character of its line 0
        self.bom = self.units("\ufeff") if analysis.bom else 0

    def _codec(self) -> tuple[str, int]:
        return _codec(self.codec)

    def units(self, text: str) -> int:
        """How many code units of the client's encoding `text` takes."""
        return client_units(self.codec, text)

    def columns(self, text: str, units: int) -> int:
        """How many characters of `text` its first `units` code units hold (a character
        cut in two counts)."""
        if text.isascii():
            return min(max(0, units), len(text))
        encoding, width = self._codec()
        data = text.encode(encoding, "surrogatepass")[:max(0, units) * width]
        whole = len(data.decode(encoding, "ignore"))
        return min(len(text), whole + (self.units(text[:whole]) < units))

    def _lines_of(self, file: str) -> list[str]:
        if file == self.analysis.name:
            return self.lines
        source = self.analysis.sources.files.get(file)
        return source.lines if source is not None else []

    def position(self, line: int, column: int, file: str | None = None) -> lsp.Position:
        lines = self._lines_of(file or self.analysis.name)
        index = max(0, line - 1)
        if index >= len(lines):
            return lsp.Position(line=index, character=0)
        text = lines[index]
        shift = self.bom if index == 0 and lines is self.lines else 0
        return lsp.Position(line=index, character=shift + self.units(text[:max(0, column - 1)]))

    def range(self, span: Span) -> lsp.Range:
        return lsp.Range(start=self.position(span.line, span.column, span.file),
                         end=self.position(span.end_line, span.end_column, span.file))

    def location(self, span: Span) -> lsp.Location:
        return lsp.Location(uri=self.uri_of(span.file), range=self.range(span))

    def uri_of(self, file: str) -> str:
        if file == self.analysis.name:
            return self.uri
        return file_path(file).as_uri()

    def from_lsp(self, position: lsp.Position) -> tuple[int, int]:
        """(line, column), 1-based in code points."""
        if position.line >= len(self.lines):
            return len(self.lines), len(self.lines[-1]) + 1
        text = self.lines[position.line]
        character = max(0, position.character - self.bom) if position.line == 0 \
            else position.character
        return position.line + 1, self.columns(text, character) + 1

    def offset(self, line: int, column: int) -> int:
        return self.analysis.index.offset(line, column)


# the client's code units (LSP's position encodings), counted at C speed: a position on a
# 40,000-character line costs no Python loop over it
_CODECS = {"utf-8": ("utf-8", 1), "utf-16": ("utf-16-le", 2), "utf-32": ("utf-32-le", 4)}


def _codec(codec) -> tuple[str, int]:
    return _CODECS.get(str(getattr(codec, "encoding", "utf-16")), ("utf-16-le", 2))


def client_units(codec, text: str) -> int:
    """How many code units of the client's encoding (pygls's codec) `text` takes."""
    if text.isascii():
        return len(text)
    encoding, width = _codec(codec)
    return len(text.encode(encoding, "surrogatepass")) // width


def file_path(file: str) -> Path:
    """The file a span names: the standard library inside the package, others on disk."""
    if file.startswith("<stdlib>/"):
        return Path(str(resources.files("cnndsl") / "stdlib" / file.split("/", 1)[1]))
    path = Path(file)
    return path if path.is_absolute() else (Path.cwd() / path).resolve()


# ---- diagnostics --------------------------------------------------------------------------


def diagnostics(analysis: Analysis, pos: Positions) -> list[lsp.Diagnostic]:
    return [_diagnostic(d, analysis, pos) for d in analysis.diagnostics]


def _diagnostic(d: Diagnostic, analysis: Analysis, pos: Positions) -> lsp.Diagnostic:
    related = [lsp.DiagnosticRelatedInformation(location=pos.location(lab.span),
                                                message=lab.text or d.message)
               for lab in d.related]
    if d.span is not None and d.span.file == analysis.name:
        where = pos.range(d.span)
    else:  # no place in this document (a file-wide limit, or elsewhere): its first line
        where = lsp.Range(start=lsp.Position(line=0, character=0),
                          end=lsp.Position(line=0, character=1))
        if d.span is not None:
            related.insert(0, lsp.DiagnosticRelatedInformation(
                location=pos.location(d.span), message=d.label or d.message))
    message = d.message + (f" ({d.label})" if d.label and not d.label.startswith(
        ("in this call", "unexpected")) else "")
    message += "".join(f"\nnote: {n}" for n in d.notes)
    if d.help:
        message += f"\nhelp: {d.help}"
    return lsp.Diagnostic(
        range=where, message=message, code=d.code, source="cnndsl",
        severity=lsp.DiagnosticSeverity.Error if d.severity == "error"
        else lsp.DiagnosticSeverity.Warning, related_information=related or None)


# ---- what is under the cursor --------------------------------------------------------------


@dataclass
class Found:
    kind: str  # layer | block | tensor | import | argument | parameter | definition
    name: str
    span: Span  # the name as written here
    node: object
    defn: ast.Definition | None  # the definition it is in
    parents: tuple = ()


def found_at(analysis: Analysis, line: int, column: int) -> Found | None:
    module = analysis.module
    if module is None:
        return None
    defn = definition_at(module, line)
    candidates: list[Found] = []
    for imp in module.imports:
        if contains(imp.span, line, column):
            candidates.append(Found("import", imp.path, imp.span, imp, None))
    tensors = set(analysis.index.first_tensor.get(defn.name_span, ())) if defn else set()
    params = {p.name for p in defn.params} if defn else set()
    if defn is not None and contains(defn.name_span, line, column):
        candidates.append(Found("definition", defn.name, defn.name_span, defn, defn))
    for node, parents, owner in analysis.index.at_line.get(line, ()):  # not a walk
        if owner is defn:
            candidates.extend(_candidates(node, parents, line, column, defn, tensors, params,
                                          analysis))
    for tensor, owner in analysis.index.tensors_at_line.get(line, ()):
        if owner is defn and contains(tensor.span, line, column):
            candidates.append(Found("tensor", tensor.name, tensor.span, tensor.statement, defn))
    if not candidates:
        return None
    return min(candidates, key=lambda f: _size(f.span))


def _candidates(node, parents, line, column, defn, tensors, params, analysis) -> list[Found]:
    out = []
    if isinstance(node, ast.Layer) and contains(node.name_span, line, column):
        target = analysis.definitions.get(node.name)
        if node.name in REGISTRY:
            kind = "layer"
        elif target is not None and target.kind == "block":
            kind = "block"
        elif not node.has_call and node.name in tensors:
            kind = "tensor"
        else:
            kind = "unknown"
        out.append(Found(kind, node.name, node.name_span, node, defn, parents))
    elif isinstance(node, ast.Name) and contains(node.span, line, column):
        kind = "tensor" if node.id in tensors else "parameter" if node.id in params else ""
        if kind:
            out.append(Found(kind, node.id, node.span, node, defn, parents))
    elif isinstance(node, ast.KwArg) and contains(node.name_span, line, column):
        out.append(Found("argument", node.name, node.name_span, node, defn, parents))
    elif isinstance(node, ast.Output):
        for name, span in node.names:
            if contains(span, line, column):
                out.append(Found("tensor", name, span, node, defn, parents))
    return out


def _size(span: Span) -> tuple[int, int]:
    return (span.end_line - span.line, span.end_column - span.column)


def _lines(analysis: Analysis) -> list[str]:
    return analysis.lines


# ---- hover ----------------------------------------------------------------------------------


def hover(analysis: Analysis, pos: Positions, line: int, column: int) -> lsp.Hover | None:
    found = found_at(analysis, line, column)
    if found is None:
        return None
    text = {"layer": _hover_layer, "block": _hover_block, "tensor": _hover_tensor,
            "definition": _hover_definition, "parameter": _hover_parameter,
            "argument": _hover_argument}.get(found.kind, lambda a, f: None)(analysis, found)
    if not text:
        return None
    return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=text),
                     range=pos.range(found.span))


def _hover_layer(analysis: Analysis, found: Found) -> str:
    kind = REGISTRY[found.name]
    runs = [s for s in steps_at(analysis, found.node.span) if s.node is not None]
    lines = [f"```cnn\n{layer_signature(kind)}\n```", kind.doc]
    for step in runs[:MAX_LISTED]:
        n = step.node
        lines.append(f"**{n.name}** → `{fmt(n.shape)}`  \ninput "
                     + ", ".join(f"`{fmt(s)}`" for s in n.in_shapes)
                     + f" · params {n.params:,} · MACs {n.macs:,}")
        lines.extend(f"- `{arg} = {how}`" for arg, how in n.derivations.items()
                     if how.count(" = ") > 1 or "(" in how.split(" = ")[0])
    if len(runs) > MAX_LISTED:
        lines.append(f"… and {len(runs) - MAX_LISTED} more runs of this line")
    if not runs:
        lines.append("_not checked (see the problems in this file)_")
    return "\n\n".join(lines)


def _hover_block(analysis: Analysis, found: Found) -> str:
    defn = analysis.definitions[found.name]
    lines = [f"```cnn\n{block_signature(defn)}\n```"]
    doc = doc_comment(analysis, defn)
    if doc:
        lines.append(doc)
    lines.append(f"defined at `{defn.name_span}`")
    for step in [s for s in steps_at(analysis, found.node.span) if s.scope is not None
                 ][:MAX_LISTED]:
        path = ".".join(step.scope.path)
        lines.append(f"**{path}** → `{fmt(step.shape)}`")
    return "\n\n".join(lines)


def _hover_definition(analysis: Analysis, found: Found) -> str:
    defn = found.node
    doc = doc_comment(analysis, defn)
    return f"```cnn\n{block_signature(defn)}\n```" + (f"\n\n{doc}" if doc else "")


def _hover_tensor(analysis: Analysis, found: Found) -> str | None:
    shapes = tensor_shapes(analysis, found.defn, found.name)
    if not shapes:
        return f"tensor `{found.name}`"
    return f"tensor `{found.name}`: " + " | ".join(f"`{fmt(s)}`" for s in shapes)


def _hover_parameter(analysis: Analysis, found: Found) -> str:
    param = next(p for p in found.defn.params if p.name == found.name)
    text = f"parameter `{param.name}: {param.type}" + (
        f" = {render_expr(param.default, {})}`" if param.default is not None else "`")
    values = [ir.params[param.name] for ir in analysis.networks
              if ir.name == found.defn.name and param.name in ir.params]
    if values:
        text += f" (here {describe(values[0])})"
    return text


def _hover_argument(analysis: Analysis, found: Found) -> str | None:
    layer = next((p for p in reversed(found.parents) if isinstance(p, ast.Layer)), None)
    if layer is None or layer.name not in REGISTRY:
        return None
    arg = next((a for a in REGISTRY[layer.name].args if a.name == found.name), None)
    if arg is None:
        return None
    return f"`{layer.name}` argument `{arg.name}`" + (
        f", default `{_default(arg.default)}`" if arg.default is not REQUIRED else "")


def tensor_shapes(analysis: Analysis, defn: ast.Definition | None, name: str):
    if defn is None:
        return []
    tensor = analysis.index.first_tensor.get(defn.name_span, {}).get(name)
    if tensor is not None:
        statement = tensor.statement
        if isinstance(statement, ast.Assign):
            return output_of(analysis, statement.chain.span, tensor.part)
        if isinstance(statement, ast.InputDecl):
            return _input_shapes(analysis, defn, statement)
        return output_of(analysis, statement.span)
    return []


def _input_shapes(analysis: Analysis, defn: ast.Definition, decl: ast.InputDecl):
    shapes = []
    for ir in analysis.networks:
        for i in ir.inputs:
            if i.span == decl.span and i.shape not in shapes:
                shapes.append(i.shape)
        for scope in ir.scopes:  # a block's `input x`: what each call gives it
            if scope.block == defn.name and scope.inputs:
                shape = ir.shape_of(scope.inputs[0])
                if shape not in shapes:
                    shapes.append(shape)
    return shapes


def doc_comment(analysis: Analysis, defn: ast.Definition) -> str:
    """The comment lines right above a definition (`# ...`), as its documentation."""
    source = analysis.sources.files.get(defn.span.file)
    lines = source.lines if source is not None else (
        _lines(analysis) if defn.span.file == analysis.name else [])
    out = []
    number = defn.span.line - 1
    while number >= 1 and lines[number - 1].lstrip().startswith("#"):
        out.append(lines[number - 1].lstrip()[1:].strip())
        number -= 1
    return " ".join(reversed(out)).strip()


def layer_signature(kind: LayerKind) -> str:
    return kind.signature()


def _default(value) -> str:
    return "…" if value is None else describe(short(value))


def block_signature(defn: ast.Definition) -> str:
    params = ", ".join(f"{p.name}: {p.type}" + (
        f" = {render_expr(p.default, {})}" if p.default is not None else "")
        for p in defn.params)
    return f"{defn.kind} {defn.name}({params})"


# ---- inlay hints ------------------------------------------------------------------------------


def inlay_hints(analysis: Analysis, pos: Positions, first: int, last: int,
                shapes: dict[int, list]) -> list[lsp.InlayHint]:
    """Each line's output shape at its end (before its comment), for lines first..last."""
    hints = []
    for line, options in shapes.items():
        if not first <= line <= last or line > len(pos.lines):
            continue
        label = " | ".join(fmt(s) for s in options[:3]) + (" | …" if len(options) > 3 else "")
        column = code_end(pos.lines[line - 1]) + 1
        hints.append(lsp.InlayHint(position=pos.position(line, column), label=label,
                                   kind=lsp.InlayHintKind.Type, padding_left=True))
    return hints


def code_end(line: str) -> int:
    """The length of a line without its comment and trailing blanks."""
    in_string = False
    for i, char in enumerate(line):
        if char == '"':
            in_string = not in_string
        elif char == "#" and not in_string:
            return len(line[:i].rstrip())
    return len(line.rstrip())


# ---- go to definition ----------------------------------------------------------------------


def definition(analysis: Analysis, pos: Positions, line: int, column: int,
               base: Path | None) -> lsp.Location | None:
    found = found_at(analysis, line, column)
    if found is None:
        return None
    if found.kind == "block":
        return pos.location(analysis.definitions[found.name].name_span)
    if found.kind == "import":
        path = ((base or Path.cwd()) / found.name).resolve()
        start = lsp.Position(line=0, character=0)
        return lsp.Location(uri=path.as_uri(), range=lsp.Range(start=start, end=start))
    if found.kind == "tensor" and found.defn is not None:
        for tensor in analysis.index.tensors_of(found.defn):
            if tensor.name == found.name:
                return pos.location(tensor.span)
    if found.kind == "parameter":
        param = next(p for p in found.defn.params if p.name == found.name)
        return pos.location(param.span)
    return None


# ---- completion and signature help ---------------------------------------------------------


@dataclass
class CallContext:
    callee: str
    positional: int  # complete positional arguments before the cursor
    named: set[str]  # keyword arguments already given
    current: str  # the argument being typed
    keyword: str | None  # `name=` of the argument being typed, if any


CONTEXT_CHARS = 4000  # the most text before the cursor that completion reads


def text_before(text: str, offset: int) -> str:
    """What completion and signature help read: at most CONTEXT_CHARS before the cursor
    (a long comment or a run of blank lines costs no more than that)."""
    return text[max(0, offset - CONTEXT_CHARS):offset]


def word_before(text: str) -> str | None:
    """The name `text` ends with (`conv` of `x -> conv`), scanned back from its end."""
    start = len(text)
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
        start -= 1
    while start < len(text) and not (text[start].isascii() and text[start].isalpha()
                                     or text[start] == "_"):
        start += 1
    return text[start:] or None


def call_context(text: str, offset: int) -> CallContext | None:
    """The call the cursor is in, read from the text before it (which may not parse)."""
    before = text_before(text, offset)
    lines = split_lines(before)
    cleaned = "\n".join([code_line(t) for t in lines[:-1]] + [lines[-1]])
    depth = 0
    for i in range(len(cleaned) - 1, -1, -1):
        char = cleaned[i]
        if char == ")":
            depth += 1
        elif char == "(":
            if depth == 0:
                callee = word_before(cleaned[:i].rstrip(" \t"))
                if callee is None:
                    return None
                return _context(callee, cleaned[i + 1:])
            depth -= 1
        elif char in "{}" and depth == 0:
            return None
    return None


def code_line(line: str) -> str:
    return line[:code_end(line)] if "#" in line else line


def _context(callee: str, inside: str) -> CallContext:
    args, depth, start = [], 0, 0
    for i, char in enumerate(inside):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            args.append(inside[start:i])
            start = i + 1
    current = inside[start:]
    named = set()
    positional = 0
    for arg in args:
        m = re.match(r"\s*([A-Za-z_]\w*)\s*=(?!=)", arg)
        if m:
            named.add(m.group(1))
        else:
            positional += 1
    m = re.match(r"\s*([A-Za-z_]\w*)\s*=(?!=)", current)
    return CallContext(callee, positional, named, current, m.group(1) if m else None)


@dataclass
class Parameter:
    name: str
    default: str | None  # None: required
    positional: bool
    values: tuple[str, ...] = ()  # the words it takes


def parameters(analysis: Analysis | None, callee: str) -> list[Parameter] | None:
    if callee in REGISTRY:
        return [Parameter(a.name, None if a.default is REQUIRED else _default(a.default),
                          a.positional, PAD_MODES if a.coerce is padding else
                          ("true", "false") if a.coerce is boolean else ())
                for a in REGISTRY[callee].args]
    defn = analysis.definitions.get(callee) if analysis is not None else None
    if defn is not None and defn.kind == "block":
        return [Parameter(p.name, render_expr(p.default, {}) if p.default is not None else None,
                          True, ("true", "false") if p.type == "bool" else ())
                for p in defn.params]
    return None


def completion(analysis: Analysis, text: str, offset: int, line: int) -> list[lsp.CompletionItem]:
    context = call_context(text, offset)
    if context is not None:
        params = parameters(analysis, context.callee)
        if params is not None:
            return _argument_items(analysis, context, params, line)
        if context.callee in ("concat", "add", "mul"):
            return _tensor_items(analysis, line)
    before = text_before(text, offset)
    this_line = before[before.rfind("\n") + 1:]  # up to the cursor
    if word_before(this_line) is None and this_line.strip() and \
            not this_line.rstrip().endswith("->"):
        return []  # mid-expression, after an operator: nothing sensible to offer
    items = [lsp.CompletionItem(label=op, kind=lsp.CompletionItemKind.Function,
                                detail=layer_signature(kind), documentation=kind.doc)
             for op, kind in sorted(REGISTRY.items())]
    items += [lsp.CompletionItem(label=d.name, kind=lsp.CompletionItemKind.Module,
                                 detail=block_signature(d),
                                 documentation=doc_comment(analysis, d) or None)
              for d in sorted(analysis.definitions.values(), key=lambda d: d.name)
              if d.kind == "block"]
    items += _tensor_items(analysis, line)
    items += [lsp.CompletionItem(label=k, kind=lsp.CompletionItemKind.Keyword)
              for k in keywords()]
    return items


def _argument_items(analysis, context: CallContext, params: list[Parameter],
                    line: int) -> list[lsp.CompletionItem]:
    if context.keyword is not None:  # `padding=` : the words it takes, and the parameters
        param = next((p for p in params if p.name == context.keyword), None)
        values = list(param.values) if param is not None else []
        items = [lsp.CompletionItem(label=v, kind=lsp.CompletionItemKind.EnumMember)
                 for v in values]
        return items + _parameter_items(analysis, line)
    given = set(context.named)
    given.update(p.name for p in [p for p in params if p.positional][:context.positional])
    items = []
    for order, p in enumerate(params):
        if p.name in given:
            continue
        items.append(lsp.CompletionItem(
            label=f"{p.name}=", kind=lsp.CompletionItemKind.Property, insert_text=f"{p.name}=",
            filter_text=p.name, sort_text=f"{order:03d}",
            detail=f"default {p.default}" if p.default is not None else "required"))
    return items + _parameter_items(analysis, line)


def _parameter_items(analysis: Analysis, line: int) -> list[lsp.CompletionItem]:
    defn = definition_at(analysis.module, line) if analysis.module else None
    names = [p.name for p in defn.params] if defn else []
    if defn is not None and defn.kind == "block":
        names.append("in_channels")
    return [lsp.CompletionItem(label=n, kind=lsp.CompletionItemKind.Variable,
                               sort_text=f"zz{n}") for n in names]


def _tensor_items(analysis: Analysis, line: int) -> list[lsp.CompletionItem]:
    defn = definition_at(analysis.module, line) if analysis.module else None
    if defn is None:
        return []
    seen, items = set(), []
    for tensor in analysis.index.tensors_of(defn):
        if tensor.name in seen:
            continue
        seen.add(tensor.name)
        shapes = tensor_shapes(analysis, defn, tensor.name)
        items.append(lsp.CompletionItem(
            label=tensor.name, kind=lsp.CompletionItemKind.Variable,
            detail=" | ".join(fmt(s) for s in shapes) or "tensor"))
    return items


@functools.lru_cache(maxsize=1)
def keywords() -> tuple[str, ...]:
    """The language's keywords, as the grammar declares them (`_KW_BLOCK.2: /block\\b/`)."""
    return tuple(sorted(set(re.findall(r"^_KW_\w+(?:\.\d+)?:\s*/(\w+)", grammar_text(),
                                       re.M))))


def signature_help(analysis: Analysis, text: str, offset: int) -> lsp.SignatureHelp | None:
    context = call_context(text, offset)
    if context is None:
        return None
    params = parameters(analysis, context.callee)
    if params is None:
        return None
    parts = [p.name if p.default is None else f"{p.name}={p.default}" for p in params]
    label, offsets = f"{context.callee}(", []
    for i, part in enumerate(parts):
        if i:
            label += ", "
        offsets.append((len(label), len(label) + len(part)))
        label += part
    label += ")"
    if context.keyword is not None:
        active = next((i for i, p in enumerate(params) if p.name == context.keyword), None)
    else:
        positional = [i for i, p in enumerate(params) if p.positional]
        active = positional[context.positional] if context.positional < len(positional) \
            else None
    doc = REGISTRY[context.callee].doc if context.callee in REGISTRY else (
        doc_comment(analysis, analysis.definitions[context.callee]) or None)
    info = lsp.SignatureInformation(
        label=label, documentation=doc, active_parameter=active,
        parameters=[lsp.ParameterInformation(label=o) for o in offsets])
    return lsp.SignatureHelp(signatures=[info], active_signature=0, active_parameter=active)


# ---- document symbols -------------------------------------------------------------------------


def document_symbols(analysis: Analysis, pos: Positions) -> list[lsp.DocumentSymbol]:
    module = analysis.module
    if module is None:
        return []
    out = []
    for defn in module.definitions:
        children = [lsp.DocumentSymbol(
            name=t.name, kind=lsp.SymbolKind.Variable, range=pos.range(_statement_span(t)),
            selection_range=pos.range(t.span),
            detail=" | ".join(fmt(s) for s in tensor_shapes(analysis, defn, t.name)) or None)
            for t in analysis.index.tensors_of(defn)]
        out.append(lsp.DocumentSymbol(
            name=defn.name, kind=lsp.SymbolKind.Class if defn.kind == "network"
            else lsp.SymbolKind.Function, range=pos.range(defn.span),
            selection_range=pos.range(defn.name_span), detail=block_signature(defn),
            children=children))
    for train in module.trains:
        out.append(lsp.DocumentSymbol(
            name=f"train {train.network}", kind=lsp.SymbolKind.Event, range=pos.range(train.span),
            selection_range=pos.range(train.name_span)))
    return out


def _statement_span(tensor) -> Span:
    span = tensor.statement.span
    return span if (span.line, span.column) <= (tensor.span.line, tensor.span.column) \
        else tensor.span


# ---- rename --------------------------------------------------------------------------------


class RenameError(Exception):
    pass


def rename_target(analysis: Analysis, line: int, column: int) -> Found:
    found = found_at(analysis, line, column)
    if found is None or found.kind not in ("tensor", "block", "definition"):
        raise RenameError("only a named tensor or a block can be renamed")
    if found.kind == "definition" and found.node.kind != "block":
        raise RenameError("only a named tensor or a block can be renamed")
    if found.kind == "block" and analysis.definitions[found.name].span.file != analysis.name:
        raise RenameError(f"`{found.name}` is defined in "
                            f"{analysis.definitions[found.name].span.file}, not in this file")
    return found


def rename_edits(analysis: Analysis, pos: Positions, line: int, column: int,
                 new_name: str) -> dict[str, list[lsp.TextEdit]]:
    found = rename_target(analysis, line, column)
    problem = rename_problem(analysis, found, new_name)
    if problem is not None:
        raise RenameError(f"`{found.name}` cannot be renamed to `{new_name}`: {problem}")
    if found.kind == "tensor":
        spans = _tensor_uses(analysis, found.defn, found.name)
    else:
        spans = _block_uses(analysis, found.name)
    edits = [lsp.TextEdit(range=pos.range(s), new_text=new_name) for s in sorted(
        set(spans), key=lambda s: (s.line, s.column))]
    return {pos.uri: edits}


def rename_problem(analysis: Analysis, found: Found, new_name: str) -> str | None:
    """Why `new_name` cannot replace `found`'s name, or None: the checker's rules for the
    name's role (names.name_problem), and every name the new one would meet: the
    language's words, layers, blocks and networks (the standard library's too), and in
    scope the tensors, labels and parameters. Conservative, as rust-analyzer's and
    pyright's renames are: a name that could change what the file means is refused."""
    if not re.fullmatch(r"[A-Za-z_]\w*", new_name):
        return f"`{new_name}` is not a name (a letter or `_`, then letters, digits, `_`)"
    if new_name == found.name:
        return None
    if new_name in keywords() and new_name != "x" or new_name in LANGUAGE_WORDS:
        # (`x` is a keyword only between a shape's sizes: elsewhere a name, `input x`)
        return f"`{new_name}` is a word of the language"
    if new_name in REGISTRY:
        return f"`{new_name}` is a built-in layer"
    taken = analysis.definitions.get(new_name)
    if taken is not None:
        return f"`{new_name}` is already the name of a {taken.kind} ({taken.name_span})"
    if found.kind == "tensor":
        return _tensor_name_problem(analysis, found, new_name)
    problem = name_problem(new_name, "block")
    if problem is not None:
        return problem[0]
    for defn in analysis.module.definitions:  # a call without `( )` would read the tensor
        if new_name in analysis.index.first_tensor.get(defn.name_span, {}):
            return f"`{new_name}` names a tensor in `{defn.name}`"
    return None


def _tensor_name_problem(analysis: Analysis, found: Found, new_name: str) -> str | None:
    defn = found.defn
    labels = any(t.name == found.name and not isinstance(t.statement, (ast.Assign,
                                                                      ast.InputDecl))
                 for t in analysis.index.tensors_of(defn))
    for role in ("tensor", "label") if labels else ("tensor",):
        problem = name_problem(new_name, role)
        if problem is not None:
            return problem[0]
    if new_name in analysis.index.first_tensor.get(defn.name_span, {}):
        return f"`{new_name}` is already a tensor in `{defn.name}`"
    if any(p.name == new_name for p in defn.params):
        return f"`{new_name}` is a parameter of `{defn.name}`"
    return None


def _tensor_uses(analysis: Analysis, defn: ast.Definition, name: str) -> list[Span]:
    params = {p.name for p in defn.params}
    spans = [t.span for t in analysis.index.tensors_of(defn) if t.name == name]
    for node, _ in walk(defn.body):
        if isinstance(node, ast.Layer) and not node.has_call and node.name == name:
            spans.append(node.name_span)
        elif isinstance(node, ast.Name) and node.id == name and name not in params:
            spans.append(node.span)
        elif isinstance(node, ast.Output):
            spans.extend(span for n, span in node.names if n == name)
    return spans


def _block_uses(analysis: Analysis, name: str) -> list[Span]:
    """The block's definition and every call of it in this file (a tensor of the same name
    is another thing)."""
    spans = []
    for defn in analysis.module.definitions:
        if defn.name == name:
            spans.append(defn.name_span)
        tensors = {t.name for t in analysis.index.tensors_of(defn)}
        for node, _ in walk(defn.body):
            if isinstance(node, ast.Layer) and node.name == name and (
                    node.has_call or name not in tensors):
                spans.append(node.name_span)
    return spans
