"""The language server, end to end: a real LSP client (pytest-lsp) talks to `python -m cnndsl
lsp` over stdio. Expected values come from the checker (`cnndsl.load`, the IR), not from
strings written here, wherever the checker knows them."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types as lsp
from pygls.protocol import default_converter
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities
from pytest_lsp.client import DEFAULT_CLIENT_FEATURES, register_lsp_features

import cnndsl
from cnndsl import syntax
from cnndsl.fmt import format_text
from cnndsl.layers import fmt
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import fuzz  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")
PUBLISH = lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS
TIMEOUT = 30  # seconds for any one answer: a hang fails the test


def _client() -> LanguageClient:
    """pytest-lsp's client, keeping every publishDiagnostics with its version."""
    client = LanguageClient(converter_factory=default_converter)
    client.published = []
    client.arrived = asyncio.Event()

    def on_publish(ls: LanguageClient, params: lsp.PublishDiagnosticsParams):
        ls.diagnostics[params.uri] = params.diagnostics
        ls.published.append(params)
        ls.arrived.set()

    register_lsp_features(client, {**DEFAULT_CLIENT_FEATURES, PUBLISH: on_publish})
    return client


@pytest_lsp.fixture(scope="module", config=ClientServerConfig(
    server_command=[sys.executable, "-m", "cnndsl", "lsp"], client_factory=_client))
async def client(lsp_client: LanguageClient):
    await lsp_client.initialize_session(lsp.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"),
        root_uri=ROOT.as_uri()))
    yield
    await lsp_client.shutdown_session()


# ---- helpers ---------------------------------------------------------------------------------


async def diagnostics_of(client, uri: str, version: int) -> list[lsp.Diagnostic]:
    """The diagnostics the server published for this version of the document."""
    async def wait():
        while True:
            for params in client.published:
                if params.uri == uri and params.version == version:
                    return list(params.diagnostics)
            client.arrived.clear()
            await client.arrived.wait()
    return await asyncio.wait_for(wait(), TIMEOUT)


async def open_doc(client, path: Path, text: str | None = None) -> tuple[str, list]:
    uri = path.resolve().as_uri()
    client.text_document_did_open(lsp.DidOpenTextDocumentParams(
        text_document=lsp.TextDocumentItem(uri=uri, language_id="cnn", version=1,
                                           text=path.read_text() if text is None else text)))
    return uri, await diagnostics_of(client, uri, 1)


async def change(client, uri: str, text: str, version: int) -> list:
    client.text_document_did_change(lsp.DidChangeTextDocumentParams(
        text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=version),
        content_changes=[lsp.TextDocumentContentChangeWholeDocument(text=text)]))
    return await diagnostics_of(client, uri, version)


def close(client, uri: str) -> None:
    client.text_document_did_close(lsp.DidCloseTextDocumentParams(
        text_document=lsp.TextDocumentIdentifier(uri=uri)))


def doc(uri: str) -> lsp.TextDocumentIdentifier:
    return lsp.TextDocumentIdentifier(uri=uri)


def at(line: int, column: int) -> lsp.Position:
    """An LSP position from the 1-based line and column the checker uses."""
    return lsp.Position(line=line - 1, character=column - 1)


def where(text: str, needle: str, occurrence: int = 0) -> tuple[int, int]:
    """1-based (line, column) of a piece of text."""
    index = -1
    for _ in range(occurrence + 1):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def checker_errors(path: Path) -> list:
    with pytest.raises(cnndsl.CnnError) as info:
        cnndsl.load(path)
    return info.value.diagnostics


async def hints(client, uri: str, lines: int) -> list[lsp.InlayHint]:
    return await asyncio.wait_for(client.text_document_inlay_hint_async(lsp.InlayHintParams(
        text_document=doc(uri), range=lsp.Range(start=lsp.Position(line=0, character=0),
                                                end=lsp.Position(line=lines, character=0)))),
        TIMEOUT)


# ---- diagnostics ------------------------------------------------------------------------------


async def test_a_broken_spec_gets_its_diagnostic_at_the_exact_range(client: LanguageClient):
    path = ROOT / "tests" / "broken" / "misspelt_argument.cnn"
    uri, diagnostics = await open_doc(client, path)
    (expected,) = checker_errors(path)
    assert [d.code for d in diagnostics] == [expected.code] == ["E-arg"]
    span = expected.span  # 3:17-3:23, `strdie`
    assert diagnostics[0].range == lsp.Range(start=at(span.line, span.column),
                                             end=at(span.end_line, span.end_column))
    assert (span.line, span.column) == where(path.read_text(), "strdie")
    assert diagnostics[0].severity == lsp.DiagnosticSeverity.Error
    assert "did you mean `stride`?" in diagnostics[0].message
    # the fix, typed in the editor (the file on disk stays broken): diagnostics cleared
    fixed = path.read_text().replace("strdie=2", "padding=1")
    assert await change(client, uri, fixed, 2) == []
    assert "strdie" in path.read_text()
    assert await change(client, uri, path.read_text(), 3) != []  # and back
    close(client, uri)


async def test_all_errors_and_warnings_of_a_run(client: LanguageClient):
    path = ROOT / "tests" / "broken" / "kernel_too_large.cnn"
    uri, diagnostics = await open_doc(client, path)
    expected = checker_errors(path)
    assert sorted((d.code, d.range.start.line + 1, d.range.start.character + 1)
                  for d in diagnostics) == sorted(
        (d.code, d.span.line, d.span.column) for d in expected)
    assert {d.code: d.severity for d in diagnostics} == {
        "W-stride": lsp.DiagnosticSeverity.Warning, "E-shape": lsp.DiagnosticSeverity.Error}
    close(client, uri)


async def test_a_problem_inside_a_stdlib_block_carries_the_call_chain(client: LanguageClient):
    path = ROOT / "tests" / "broken" / "deep_in_the_stdlib.cnn"
    uri, diagnostics = await open_doc(client, path)
    (expected,) = checker_errors(path)
    (got,) = diagnostics
    assert got.range.start == at(expected.span.line, expected.span.column)
    inner = expected.related[0].span  # <stdlib>/densenet.cnn:16:75
    stdlib = ROOT / "cnndsl" / "stdlib" / inner.file.split("/", 1)[1]
    related = got.related_information[0]
    assert related.location.uri == stdlib.as_uri()
    assert related.location.range.start == at(inner.line, inner.column)
    source_line = stdlib.read_text().split("\n")[inner.line - 1]
    assert source_line[:inner.column - 1].endswith("avgpool(")  # its kernel argument
    close(client, uri)


async def test_positions_count_utf16_units(client: LanguageClient, tmp_path):
    text = "network n() {\n    input x: 3 x 8 x 8   # 🧪 é\n    relu -> 🧪\n}\n"
    uri, diagnostics = await open_doc(client, tmp_path / "unicode.cnn", text)
    (got,) = diagnostics
    assert got.code == "E-syntax"
    # the checker's column 13 (code points) is UTF-16 unit 12 (0-based): 🧪 is one code point
    assert got.range.start == lsp.Position(line=2, character=12)
    assert got.range.end == lsp.Position(line=2, character=14)  # two UTF-16 units wide
    close(client, uri)


async def test_imports_resolve_from_the_documents_folder(client: LanguageClient, tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "mine.cnn").write_text(
        "# Two convs.\nblock twice(c: int) {\n"
        "    conv(c, 3, padding=1) -> conv(c, 3, padding=1)\n}\n")
    text = ('import "lib/mine.cnn"\n\nnetwork n() {\n    input x: 3 x 8 x 8\n'
            "    twice(16)\n}\n")
    path = tmp_path / "uses.cnn"  # never written: the editor's text is what counts
    uri, diagnostics = await open_doc(client, path, text)
    assert diagnostics == []
    line, column = where(text, "twice(16)")
    location = await client.text_document_definition_async(lsp.DefinitionParams(
        text_document=doc(uri), position=at(line, column + 1)))
    assert location.uri == (tmp_path / "lib" / "mine.cnn").as_uri()
    assert location.range.start == lsp.Position(line=1, character=6)
    hover = await client.text_document_hover_async(lsp.HoverParams(
        text_document=doc(uri), position=at(line, column)))
    assert "block twice(c: int)" in hover.contents.value and "Two convs." in hover.contents.value
    close(client, uri)


# ---- hover, hints, definition -------------------------------------------------------------------


async def test_hover_over_a_conv_gives_its_output_shape(client: LanguageClient):
    path = ROOT / "specs" / "resnet50.cnn"
    uri, diagnostics = await open_doc(client, path)
    assert diagnostics == []
    ir = cnndsl.load(path).ir
    conv = next(n for n in ir.nodes if n.op == "conv" and n.span.file.endswith("resnet50.cnn"))
    hover = await client.text_document_hover_async(lsp.HoverParams(
        text_document=doc(uri), position=at(conv.span.line, conv.span.column + 1)))
    text = hover.contents.value
    assert f"**{conv.name}** → `{fmt(conv.shape)}`" in text  # conv1 -> 64 x 112 x 112
    assert f"params {conv.params:,}" in text and f"MACs {conv.macs:,}" in text
    assert hover.range.start == at(conv.span.line, conv.span.column)
    # a block call: its signature, its doc comment and the call's output shape
    line, column = where(path.read_text(), "bottleneck_stage(128")
    hover = await client.text_document_hover_async(lsp.HoverParams(
        text_document=doc(uri), position=at(line, column + 3)))
    assert "block bottleneck_stage(c: int, n: int, stride: int = 1, groups: int = 1, " \
        "base_width: int = 64, dilation: int = 1)" in hover.contents.value
    assert f"**layer2** → `{fmt(ir.shape_of('layer2'))}`" in hover.contents.value
    close(client, uri)


async def test_definition_of_a_stdlib_block_is_its_file_and_line(client: LanguageClient):
    path = ROOT / "specs" / "resnet50.cnn"
    uri, _ = await open_doc(client, path)
    line, column = where(path.read_text(), "bottleneck_stage(64")
    location = await client.text_document_definition_async(lsp.DefinitionParams(
        text_document=doc(uri), position=at(line, column + 5)))
    stdlib = ROOT / "cnndsl" / "stdlib" / "resnet.cnn"
    assert location.uri == stdlib.as_uri()
    block_line, block_column = where(stdlib.read_text(), "block bottleneck_stage(")
    assert location.range.start == at(block_line, block_column + len("block "))
    assert location.range.end == at(block_line, block_column + len("block bottleneck_stage"))
    close(client, uri)


def expected_hints(ir, file: str) -> dict[int, str]:
    """Each line's shape, from the IR: of the step of that line (layer or block call) that
    comes last in the network's order, over the network's own lines."""
    order = {n.name: i for i, n in enumerate(ir.nodes)}
    last: dict[int, tuple[int, tuple]] = {}
    candidates = [(n.span, order[n.name], n.shape) for n in ir.nodes if n.span.file == file]
    candidates += [(s.span, order[s.output], ir.shape_of(s.output)) for s in ir.scopes
                   if s.span.file == file and s.output]
    candidates += [(i.span, -1, i.shape) for i in ir.inputs]
    for span, index, shape in candidates:
        if span.end_line not in last or index > last[span.end_line][0]:
            last[span.end_line] = (index, shape)
    return {line: fmt(shape) for line, (_, shape) in last.items()}


@pytest.mark.parametrize("spec", ["lenet5.cnn", "resnet50.cnn", "googlenet.cnn",
                                  "unet_small.cnn"])
async def test_inlay_hints_carry_the_checkers_shapes(client: LanguageClient, spec):
    path = ROOT / "specs" / spec
    uri, _ = await open_doc(client, path)
    got = await hints(client, uri, 100)
    ir = cnndsl.load(path).ir
    expected = expected_hints(ir, ir.file)
    assert {h.position.line + 1: h.label for h in got} == expected
    assert len(expected) >= 7
    lines = path.read_text().split("\n")
    for hint in got:  # at the end of the code, before any comment
        code = lines[hint.position.line].split("#")[0].rstrip()
        assert hint.position.character == len(code)
    close(client, uri)


async def test_a_check_error_keeps_the_shapes_above_it(client: LanguageClient):
    """Typing a mistake into one line: the lines above keep their shapes (nothing above
    the edit changed), the lines from the edit on lose theirs until it checks again."""
    path = ROOT / "specs" / "resnet50.cnn"
    uri, _ = await open_doc(client, path)
    ir = cnndsl.load(path).ir
    expected = expected_hints(ir, ir.file)
    text = path.read_text()
    edited_line, _ = where(text, "bottleneck_stage(256, 6, stride=2)")
    wrong = text.replace("bottleneck_stage(256, 6, stride=2)", "bottleneck_stage(256, 6, "
                         "stride=0)")
    diagnostics = await change(client, uri, wrong, 2)
    assert [(d.code, d.range.start.line + 1) for d in diagnostics] == [("E-arg", edited_line)]
    got = {h.position.line + 1: h.label for h in await hints(client, uri, 100)}
    assert got == {line: shape for line, shape in expected.items() if line < edited_line}
    assert len(got) == 5  # input, stem conv, maxpool, layer1, layer2
    assert await change(client, uri, text, 3) == []
    assert {h.position.line + 1: h.label for h in await hints(client, uri, 100)} == expected
    close(client, uri)


async def test_hints_on_a_blocks_lines_list_the_shapes_of_its_calls(client: LanguageClient):
    path = ROOT / "examples" / "unet.cnn"
    uri, _ = await open_doc(client, path)
    ir = cnndsl.load(path).ir
    text = path.read_text()
    line, _ = where(text, "conv(c, 3, padding=same, bias=false) -> batchnorm -> relu", 1)
    relus = [n for n in ir.nodes if n.op == "relu" and n.span.line == line
             and n.span.file == ir.file]
    shapes = []
    for relu in relus:  # one per call of double_conv
        if relu.shape not in shapes:
            shapes.append(relu.shape)
    assert len(shapes) == 3
    got = {h.position.line + 1: h.label for h in await hints(client, uri, 100)}
    assert got[line] == " | ".join(fmt(s) for s in shapes)
    close(client, uri)


async def test_hover_and_definition_of_a_named_tensor(client: LanguageClient):
    path = ROOT / "examples" / "unet.cnn"
    uri, _ = await open_doc(client, path)
    text = path.read_text()
    ir = cnndsl.load(path).ir
    line, column = where(text, "concat(e2)")
    hover = await client.text_document_hover_async(lsp.HoverParams(
        text_document=doc(uri), position=at(line, column + len("concat("))))
    e2 = next(s for s in ir.scopes if s.span.line == where(text, "e2 = ")[0]
              and s.block == "double_conv")
    assert hover.contents.value == f"tensor `e2`: `{fmt(ir.shape_of(e2.output))}`"
    location = await client.text_document_definition_async(lsp.DefinitionParams(
        text_document=doc(uri), position=at(line, column + len("concat("))))
    assert location.range.start == at(*where(text, "e2 = "))
    close(client, uri)


# ---- completion, signature help, symbols, formatting ------------------------------------------


async def test_completion_after_conv_offers_the_remaining_arguments(client: LanguageClient,
                                                                     tmp_path):
    text = "network n() {\n    input x: 3 x 8 x 8\n    conv(16, 3, \n}\n"
    uri, _ = await open_doc(client, tmp_path / "typing.cnn", text)
    result = await client.text_document_completion_async(lsp.CompletionParams(
        text_document=doc(uri), position=lsp.Position(line=2, character=16)))
    arguments = {i.label: i.detail for i in result.items
                 if i.kind == lsp.CompletionItemKind.Property}
    from cnndsl.layers import REGISTRY
    conv = REGISTRY["conv"]
    assert arguments == {f"{a.name}=": f"default {fmt_default(a.default)}"
                         for a in conv.args if a.name not in ("out_channels", "kernel")}
    assert {"stride=", "padding=", "dilation=", "groups=", "bias="} <= set(arguments)
    # after `padding=`: the padding words
    await change(client, uri, text.replace("conv(16, 3, ", "conv(16, 3, padding="), 2)
    result = await client.text_document_completion_async(lsp.CompletionParams(
        text_document=doc(uri), position=lsp.Position(line=2, character=24)))
    words = {i.label for i in result.items if i.kind == lsp.CompletionItemKind.EnumMember}
    assert words == {"same", "valid", "full"}
    # at the start of a line: layers (from the registry), blocks (the stdlib's too)
    await change(client, uri, text.replace("conv(16, 3, ", "y = x -> "), 3)
    result = await client.text_document_completion_async(lsp.CompletionParams(
        text_document=doc(uri), position=lsp.Position(line=2, character=13)))
    labels = {i.label for i in result.items}
    assert set(REGISTRY) <= labels and {"bottleneck", "mbconv", "fire", "x"} <= labels
    close(client, uri)


def fmt_default(value) -> str:
    from cnndsl.layers import short
    from cnndsl.values import describe
    return "…" if value is None else describe(short(value))  # no default to show


async def test_signature_help_inside_a_call(client: LanguageClient, tmp_path):
    text = "network n() {\n    input x: 3 x 8 x 8\n    conv(16, \n}\n"
    uri, _ = await open_doc(client, tmp_path / "sig.cnn", text)
    help_ = await client.text_document_signature_help_async(lsp.SignatureHelpParams(
        text_document=doc(uri), position=lsp.Position(line=2, character=13)))
    (signature,) = help_.signatures
    assert signature.label == ("conv(out_channels, kernel, stride=1, padding=0, dilation=1, "
                               "groups=1, bias=true, weight=…, trainable=true)")
    start, end = signature.parameters[help_.active_parameter].label
    assert signature.label[start:end] == "kernel"
    close(client, uri)


async def test_document_symbols_and_the_last_good_outline(client: LanguageClient):
    path = ROOT / "examples" / "unet.cnn"
    uri, _ = await open_doc(client, path)
    module = syntax.parse(path.read_text())
    symbols = await client.text_document_document_symbol_async(lsp.DocumentSymbolParams(
        text_document=doc(uri)))
    assert [(s.name, s.kind) for s in symbols] == [
        (d.name, lsp.SymbolKind.Class if d.kind == "network" else lsp.SymbolKind.Function)
        for d in module.definitions]
    unet = next(s for s in symbols if s.name == "unet")
    assert [c.name for c in unet.children] == ["x", "e1", "e2", "bottom", "d2", "d1", "mask"]
    before_hints = await hints(client, uri, 100)
    # a text that does not parse: its syntax error, and the outline and hints stay
    broken = path.read_text().replace("output mask", "output mask,")
    diagnostics = await change(client, uri, broken, 2)
    assert [d.code for d in diagnostics] == ["E-syntax"]
    assert await client.text_document_document_symbol_async(lsp.DocumentSymbolParams(
        text_document=doc(uri))) == symbols
    assert await hints(client, uri, 100) == before_hints
    close(client, uri)


async def test_formatting_is_fmt(client: LanguageClient, tmp_path):
    messy = "network n(){\n  input x:3 x 8 x 8\n  conv(8,3)->relu   # a comment\n}\n"
    uri, _ = await open_doc(client, tmp_path / "messy.cnn", messy)
    edits = await client.text_document_formatting_async(lsp.DocumentFormattingParams(
        text_document=doc(uri), options=lsp.FormattingOptions(tab_size=4, insert_spaces=True)))
    (edit,) = edits
    assert edit.new_text == format_text(messy)
    assert edit.range.start == lsp.Position(line=0, character=0)
    close(client, uri)


# ---- rename ----------------------------------------------------------------------------------


def apply(text: str, edits: list[lsp.TextEdit]) -> str:
    lines = text.split("\n")
    for edit in sorted(edits, key=lambda e: (e.range.start.line, e.range.start.character),
                       reverse=True):
        assert edit.range.start.line == edit.range.end.line
        line = lines[edit.range.start.line]
        lines[edit.range.start.line] = (line[:edit.range.start.character] + edit.new_text
                                        + line[edit.range.end.character:])
    return "\n".join(lines)


async def test_rename_of_a_tensor_updates_every_use(client: LanguageClient):
    path = ROOT / "examples" / "unet.cnn"
    uri, _ = await open_doc(client, path)
    text = path.read_text()
    line, column = where(text, "-> concat(e1)")
    prepared = await client.text_document_prepare_rename_async(lsp.PrepareRenameParams(
        text_document=doc(uri), position=at(line, column + len("-> concat("))))
    assert prepared.placeholder == "e1"
    edit = await client.text_document_rename_async(lsp.RenameParams(
        text_document=doc(uri), position=at(line, column + len("-> concat(")),
        new_name="skip1"))
    edits = edit.changes[uri]
    code_uses = [(n, m.start()) for n, code in enumerate(text.split("\n"))
                 for m in re.finditer(r"\be1\b", code.split("#")[0])]
    assert sorted((e.range.start.line, e.range.start.character) for e in edits) == code_uses
    assert len(code_uses) == 3  # `e1 = ...`, `e2 = e1 -> ...`, `concat(e1)`
    renamed = apply(text, edits)
    assert "`concat(e1)` joins them" in renamed  # comments are not code
    assert cnndsl.loads(renamed).params == cnndsl.load(path).params
    # a block: its definition and its calls
    line, column = where(text, "double_conv(2 * c)")
    edit = await client.text_document_rename_async(lsp.RenameParams(
        text_document=doc(uri), position=at(line, column), new_name="twin_conv"))
    renamed = apply(text, edit.changes[uri])
    assert renamed.count("twin_conv") == text.count("double_conv") == 6
    assert cnndsl.loads(renamed).params == cnndsl.load(path).params
    # a stdlib block is not this file's to rename
    with pytest.raises(Exception, match="not in this file"):
        line, column = where((ROOT / "specs" / "resnet18.cnn").read_text(), ": basic_stage")
        column += 2
        uri18, _ = await open_doc(client, ROOT / "specs" / "resnet18.cnn")
        await client.text_document_rename_async(lsp.RenameParams(
            text_document=doc(uri18), position=at(line, column), new_name="mine"))
    close(client, uri)


async def test_an_internal_error_is_a_diagnostic_not_a_crash(monkeypatch):
    """In-process: whatever the checker raises, the analysis answers with a diagnostic."""
    from cnndsl.lsp import analysis

    def broken(*args, **kwargs):
        raise RecursionError("deep")
    monkeypatch.setattr(analysis, "loads", broken)
    result = analysis.analyse("network n() {\n}\n", "doc.cnn", None)
    (d,) = result.diagnostics
    assert (d.code, d.span.line, d.span.column) == ("internal-error", 1, 1)
    assert "RecursionError: deep" in d.message and not result.parsed


# ---- hostile documents -------------------------------------------------------------------------


def expected_errors(text: str) -> list | None:
    """The checker's errors for a text (None: it checks). A file without networks is a
    library: the server checks nothing in it, and a file with several checks each."""
    try:
        cnndsl.loads(text, name="case.cnn")
        return None
    except cnndsl.CnnError as exc:
        errors = [d for d in exc.diagnostics if d.severity == "error"]
    try:
        module = syntax.parse(syntax.normalise(text))
    except cnndsl.CnnError:
        return errors
    networks = [d for d in module.definitions if d.kind == "network"]
    if (not networks and not module.trains) or len(networks) > 1:
        return []  # no network, or several: not comparable with one `loads`
    return errors


HOSTILE = sorted((ROOT / "tests" / "broken").glob("*.cnn"))


async def test_the_server_survives_hostile_documents(client: LanguageClient, tmp_path):
    texts = [p.read_text() for p in HOSTILE]
    texts += list(fuzz.cases(40, seed=21))
    texts.append(bytes(range(1, 256)).decode("latin-1"))
    assert len(texts) > 70
    path = tmp_path / "hostile.cnn"
    uri, _ = await open_doc(client, path, "network n() {\n    input x: 3 x 8 x 8\n}\n")
    located = 0
    for version, text in enumerate(texts, start=2):
        diagnostics = await change(client, uri, text, version)  # a hang times out here
        lines = syntax.normalise(text).split("\n")
        for d in diagnostics:  # every range lies in the document
            assert 0 <= d.range.start.line < len(lines), (text[:200], d)
            assert d.code and d.code != "internal-error", (text[:200], d)
        errors = expected_errors(text)
        if errors is None:
            assert not [d for d in diagnostics if d.severity == lsp.DiagnosticSeverity.Error]
            continue
        if errors:
            first = errors[0]
            got = {(d.code, d.range.start.line + 1) for d in diagnostics}
            assert (first.code, first.span.line if first.span else 1) in got, (text[:300],
                                                                                got, first)
            located += 1
    assert located >= len(HOSTILE) - 3  # import cycles are outside the document
    # still answering, promptly, on a good document
    lenet = ROOT / "specs" / "lenet5.cnn"
    assert await change(client, uri, lenet.read_text(), len(texts) + 2) == []
    ir = cnndsl.load(lenet).ir
    assert {h.position.line + 1: h.label for h in await hints(client, uri, 20)} == \
        expected_hints(ir, ir.file)
    for path in HOSTILE[:5]:  # and didOpen of broken files as they are
        opened, diagnostics = await open_doc(client, path)
        assert diagnostics
        close(client, opened)
    close(client, uri)


NEW_LANGUAGE = """\
block up(c: int, skip: tensor, act: layer = relu) {
    input x
    let half = c // 2
    u = x -> conv_transpose(c, 2, stride=2) -> center_crop(like=skip)
    u -> concat(skip) -> conv(half, 3, padding=same) -> act
}

network n(wide: bool = false) {
    input image: 8 x 16 x 16
    defaults batchnorm(eps=0.001)
    left, right = image -> split(2)
    if wide {
        mid = left -> conv(8, 3, padding=1)
    } else {
        mid = left -> conv(4, 3, padding=1)
    }
    joined = mid -> concat(right) -> maxpool(2) -> batchnorm
    joined -> up(8, skip=right)
}
"""


async def test_split_targets_let_if_and_tensor_parameters(client: LanguageClient, tmp_path):
    """The second name of `a, b = x -> split(2)` is a tensor like any other: hover,
    definition and rename; shapes inside if/else and in a block with a tensor parameter."""
    path = tmp_path / "new.cnn"
    path.write_text(NEW_LANGUAGE)
    uri, diagnostics = await open_doc(client, path)
    assert diagnostics == []
    ir = cnndsl.load(path).ir
    line, column = where(NEW_LANGUAGE, "skip=right")
    position = at(line, column + len("skip="))
    hover = await client.text_document_hover_async(lsp.HoverParams(
        text_document=doc(uri), position=position))
    assert hover.contents.value == f"tensor `right`: `{fmt(ir.shape_of(ir.tensors['right']))}`"
    assert "4 x 16 x 16" in hover.contents.value
    location = await client.text_document_definition_async(lsp.DefinitionParams(
        text_document=doc(uri), position=position))
    assert location.range.start == at(*where(NEW_LANGUAGE, "right = "))
    edit = await client.text_document_rename_async(lsp.RenameParams(
        text_document=doc(uri), position=position, new_name="rest"))
    renamed = apply(NEW_LANGUAGE, edit.changes[uri])
    assert renamed.count("rest") == 3 and "right" not in renamed
    assert cnndsl.loads(renamed).params == cnndsl.load(path).params
    shown = {h.position.line + 1: h.label for h in await hints(client, uri, 20)}
    conv = next(n for n in ir.nodes if n.op == "conv" and not n.path[:-1])
    assert fmt(conv.shape) in shown[conv.span.line]
    close(client, uri)


# ---- the document's life: close, versions, byte-order mark, caches ----------------------------


async def test_no_diagnostics_after_did_close(client: LanguageClient, tmp_path):
    """Closing a document while its analysis ran left that analysis's problems published
    after `didClose` (ghost problems in the editor)."""
    path = ROOT / "tests" / "broken" / "misspelt_argument.cnn"
    for k in range(3):
        uri = (tmp_path / f"closed{k}.cnn").as_uri()
        before = len(client.published)
        client.text_document_did_open(lsp.DidOpenTextDocumentParams(
            text_document=lsp.TextDocumentItem(uri=uri, language_id="cnn", version=1,
                                               text=path.read_text())))
        close(client, uri)  # while its analysis runs
        # one worker analyses in order: once another document is diagnosed, it is done
        other, _ = await open_doc(client, tmp_path / f"other{k}.cnn", "network m() {\n}\n")
        close(client, other)
        mine = [p for p in client.published[before:] if p.uri == uri]
        assert mine and not mine[-1].diagnostics, mine


async def test_a_change_that_reuses_a_version_number_is_analysed(client: LanguageClient,
                                                                 tmp_path):
    """A change numbered like the last analysed one was never analysed."""
    text = "network n() {\n    input x: 3 x 8 x 8\n    conv(8, 3)\n}\n"
    uri, diagnostics = await open_doc(client, tmp_path / "versions.cnn", text)
    assert diagnostics == []
    before = len(client.published)
    client.text_document_did_change(lsp.DidChangeTextDocumentParams(
        text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=1),
        content_changes=[lsp.TextDocumentContentChangeWholeDocument(
            text=text.replace("conv(8, 3)", "conv(8, 3, strdie=2)"))]))

    async def republished():
        while True:
            mine = [p for p in client.published[before:] if p.uri == uri]
            if mine:
                return mine[-1]
            client.arrived.clear()
            await client.arrived.wait()
    again = await asyncio.wait_for(republished(), TIMEOUT)
    assert again.version == 1 and [d.code for d in again.diagnostics] == ["E-arg"]
    close(client, uri)


async def test_positions_on_the_first_line_count_a_byte_order_mark(client: LanguageClient,
                                                                    tmp_path):
    """The server dropped a BOM the client keeps: every position of line 0 was one column
    to the left. A BOM is a character of line 0 for the client, so it is one here too."""
    text = "\ufeffnetwork empty() {\n}\n"
    uri, diagnostics = await open_doc(client, tmp_path / "bom.cnn", text)
    (got,) = diagnostics
    assert got.code == "E-input"
    start = text.index("empty")  # as the client counts: the BOM is character 0
    assert got.range.start == lsp.Position(line=0, character=start)
    assert got.range.end == lsp.Position(line=0, character=start + len("empty"))
    hover = await client.text_document_hover_async(lsp.HoverParams(
        text_document=doc(uri), position=lsp.Position(line=0, character=start)))
    assert hover is not None and "network empty()" in hover.contents.value
    assert hover.range.start == lsp.Position(line=0, character=start)
    close(client, uri)


async def test_checked_networks_are_kept_for_the_networks_the_text_defines():
    """One full analysis was kept per network name ever typed while a document was open
    (150 renames of resnet50's network: RSS 64 -> 133 MB)."""
    from cnndsl.lsp.analysis import analyse
    from cnndsl.lsp.server import CnnLanguageServer, Document
    server = CnnLanguageServer()
    document = Document("file:///renamed.cnn", "renamed.cnn", None)
    for k in range(12):
        text = f"network n{k}() {{\n    input x: 3 x 8 x 8\n    conv(8, 3)\n}}\n"
        server.shapes(document, analyse(text, "renamed.cnn", None))
        assert list(document.checked) == [f"n{k}"]


def named_tensors(count: int, comment: int = 0) -> str:
    """A network of `count` named tensors, one a line (the shape of benchmarks/
    lsp_latency.py's documents), and a comment of `comment` word characters."""
    lines = ["network many() {", "    input t0: 4 x 8 x 8"]
    lines += [f"    t{k} = t{k - 1} -> conv(4, 3, padding=1) -> relu" for k in range(1, count)]
    if comment:
        lines.append("    # " + "w" * comment)
    lines += [f"    t{count - 1} -> flatten", "}", ""]
    return "\n".join(lines)


def lines_run(call) -> int:
    """How many lines of cnndsl/lsp/ a call runs: the work done, counted exactly (the same
    on every machine, where a time would not be)."""
    import cnndsl.lsp
    folder = str(Path(cnndsl.lsp.__file__).parent)
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if not frame.f_code.co_filename.startswith(folder):
            return None
        if event == "line":
            count += 1
        return tracer
    sys.settrace(tracer)
    try:
        call()
    finally:
        sys.settrace(None)
    return count


@pytest.mark.parametrize("request_", ["symbols", "completion", "hover"])
async def test_requests_do_work_linear_in_the_named_tensors(request_):
    """documentSymbol and completion walked the document once per named tensor (500
    tensors: 15.6 s and 11 s, on the event loop). They read the indexes the analysis
    builds once: 4x the tensors, at most ~4x the work."""
    from cnndsl.lsp import features
    from cnndsl.lsp.analysis import analyse

    class Codec:
        def client_num_units(self, text):
            return len(text)

    def work(count: int) -> int:
        text = named_tensors(count)
        analysis = analyse(text, "many.cnn", None)
        assert analysis.networks and not analysis.diagnostics
        analysis.index  # noqa: B018 - built by the analysis, not by the request
        pos = features.Positions(analysis, "file:///many.cnn", Codec())
        line = count  # inside the network, at the start of a line: everything is offered
        offset = pos.offset(line, 5)
        calls = {
            "symbols": lambda: features.document_symbols(analysis, pos),
            "completion": lambda: features.completion(analysis, analysis.text, offset, line),
            "hover": lambda: features.hover(analysis, pos, line, 6)}
        result = calls[request_]()
        if request_ == "symbols":
            assert len(result[0].children) == count
        elif request_ == "completion":
            assert {f"t{k}" for k in range(count)} <= {i.label for i in result}
        else:
            assert f"tensor `t{count - 2}`" in result.contents.value
        return lines_run(calls[request_])
    small, large = work(40), work(160)
    assert large < 5 * small, (small, large)


@pytest.mark.parametrize("where", ["comment", "blank lines", "word"])
async def test_completion_reads_a_bounded_window_before_the_cursor(where, monkeypatch):
    """Completion ran two regular expressions over the whole text before the cursor: after
    a 40,000-character comment, 7.2 s (a hover sent meanwhile waited); blank lines
    likewise. Every text it hands to a regular expression is now bounded."""
    from cnndsl.lsp import features
    from cnndsl.lsp.analysis import analyse
    features.keywords()  # read from the grammar once, not per request
    searched = []

    class Recording:
        def __getattr__(self, name):
            function = getattr(re, name)

            def call(pattern, text="", *args, **kwargs):
                searched.append(len(text))
                return function(pattern, text, *args, **kwargs)
            return call if callable(function) and name in (
                "search", "match", "fullmatch", "findall", "finditer") else function
    monkeypatch.setattr(features, "re", Recording())
    tail = {"comment": "    # " + "w" * 40_000, "blank lines": "\n" * 40_000 + "    ",
            "word": "    y = t0 -> " + "w" * 40_000}[where]
    text = named_tensors(3) .replace("}\n", tail + "\n}\n")
    analysis = analyse(text, "long.cnn", None)
    offset = text.index(tail) + len(tail)
    items = features.completion(analysis, analysis.text, offset, text.count("\n", 0, offset))
    assert max(searched, default=0) <= features.CONTEXT_CHARS
    if where == "blank lines":  # the start of a line: layers, blocks, tensors
        assert {"conv", "relu", "t0", "t2"} <= {i.label for i in items}


RENAMED = """\
block twin(c: int) {
    conv(c, 3, padding=1) -> relu
}

block other(c: int) {
    conv(c, 1)
}

network net(c: int = 8) {
    input x: 3 x 8 x 8
    a = x -> twin(c)
    b = a -> other(c)
    top: relu
    b -> flatten
}
"""

TAKEN = {  # where the name to rename starts -> new names that must be refused
    "a = ": ["b", "x", "top", "twin", "other", "bottleneck", "relu", "net", "self", "c",
                  "network", "residual", "same", "true", "1abc", "a b", "", "in_channels"],
    "top:": ["training", "_private", "b", "conv"],
    "twin(c: int)": ["other", "conv", "net", "residual", "bottleneck", "a", "x", "__x",
                          "import", "9"],
}


async def test_rename_refuses_a_name_that_would_break_the_file(client: LanguageClient,
                                                               tmp_path):
    """Rename accepted names that break the file (a tensor renamed to an existing tensor, a
    block, a layer, the network's name, `self`; a block to an existing block or a layer),
    and the refusal that did happen was -32600 with a traceback on stderr. The new name
    is checked with the checker's own rules for its role and against every name in scope;
    a refusal is LSP's RequestFailed (-32803) with the reason."""
    assert cnndsl.loads(RENAMED).ir is not None
    uri, diagnostics = await open_doc(client, tmp_path / "renamed.cnn", RENAMED)
    assert diagnostics == []
    for needle, names in TAKEN.items():
        position = at(*where(RENAMED, needle))
        for new_name in names:
            with pytest.raises(Exception) as info:
                await client.text_document_rename_async(lsp.RenameParams(
                    text_document=doc(uri), position=position, new_name=new_name))
            assert getattr(info.value, "code", None) == -32803, (needle, new_name, info.value)
            old = re.match(r"\w+", needle).group()
            assert str(info.value).startswith(f"`{old}` cannot be renamed to `{new_name}`: ")
        # a free name is accepted, and the renamed file checks the same
        edit = await client.text_document_rename_async(lsp.RenameParams(
            text_document=doc(uri), position=position, new_name="fresh_name"))
        renamed = apply(RENAMED, edit.changes[uri])
        assert cnndsl.loads(renamed).params == cnndsl.loads(RENAMED).params
    close(client, uri)


@pytest.mark.parametrize("newline", ["\r", "\r\n"])
async def test_formatting_replaces_the_whole_document_whatever_its_line_ends(
        client: LanguageClient, tmp_path, newline):
    """The edit's end counted lines by `\\n` alone: with lone CR line ends (LSP's line
    breaks too) it stopped at line 1, and applying it kept the rest of the document."""
    messy = "network n(){\n  input x:3 x 8 x 8\n  conv(8,3)->relu\n}\n".replace("\n", newline)
    uri, _ = await open_doc(client, tmp_path / "line_ends.cnn", messy)
    (edit,) = await client.text_document_formatting_async(lsp.DocumentFormattingParams(
        text_document=doc(uri), options=lsp.FormattingOptions(tab_size=4, insert_spaces=True)))
    lsp_lines = messy.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    assert edit.range.start == lsp.Position(line=0, character=0)
    assert edit.range.end == lsp.Position(line=len(lsp_lines) - 1,
                                          character=len(lsp_lines[-1]))
    assert edit.new_text == format_text(messy)
    close(client, uri)


async def test_a_document_over_the_file_bound_is_refused_unparsed(monkeypatch):
    """A document larger than a spec file may be (4 MiB) gets the file's E-limit, and is
    not parsed a second time for an outline."""
    from cnndsl.lsp import analysis
    from cnndsl.program import MAX_SOURCE_BYTES, Program

    def parse_again(*args, **kwargs):
        raise AssertionError("parsed")
    monkeypatch.setattr(Program, "load_text", parse_again)
    text = "network n() {\n" + "    relu\n" * (MAX_SOURCE_BYTES // 9) + "}\n"
    result = analysis.analyse(text, "big.cnn", None)
    assert [d.code for d in result.diagnostics] == ["E-limit"]
    assert "larger than 4 MiB" in result.diagnostics[0].message and not result.parsed
