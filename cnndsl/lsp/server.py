"""`cnndsl lsp`: the language server (pygls), on standard input and output.

Every change of a document is analysed in one worker thread (parsing and checking are
CPU-bound; one at a time also keeps Lark's shared parser to one thread): a change that
arrives while an analysis runs waits for it, and only the latest text is analysed next,
so typing never queues up stale work. Requests read the analysis of the text they were
sent for, waiting for it at most `WAIT_S`; past that (a pathological document) they answer
from the last finished one. Whatever a handler raises is logged and answered with nothing:
the server outlives every document. A closed document's analysis is dropped, and nothing
is published for it after `didClose`. Frames, and the errors a request gets when it
cannot be served, are protocol.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from pygls.io_ import StdoutWriter
from pygls.lsp.server import LanguageServer

from .. import __version__
from ..diagnostics import CnnError
from ..source import normalise, split_lines
from . import features
from .analysis import Analysis, analyse, carried_shapes, line_shapes
from .protocol import CnnProtocol, RequestFailed, read_messages

log = logging.getLogger("cnndsl.lsp")
WAIT_S = 10.0  # the longest a request waits for the analysis of its text


@dataclass
class Document:
    uri: str
    name: str  # in spans: the file's path, or the URI of an unsaved document
    base: Path | None  # imports resolve from here
    version: int = 0  # the client's number for `text`
    text: str = ""
    # every change counts here, whatever number the client gives it (a change may reuse
    # the last analysed version number: it is still analysed)
    generation: int = 0
    analysed: Analysis | None = None  # of `analysed_generation` (`analysed_version`)
    analysed_generation: int = -1
    analysed_version: int = -1
    good: Analysis | None = None  # the last one that parsed: outline and hints survive
    shapes: dict = field(default_factory=dict)  # line -> shapes, of `good`
    # network -> the last analysis it checked in, for the networks the text defines now
    checked: dict = field(default_factory=dict)
    task: asyncio.Task | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class CnnLanguageServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("cnndsl", __version__,
                         text_document_sync_kind=lsp.TextDocumentSyncKind.Full,
                         protocol_cls=CnnProtocol)
        self.documents: dict[str, Document] = {}
        self.exit_code = 1  # 0 once `exit` follows `shutdown`, as LSP asks
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnndsl-analysis")

    # ---- documents -------------------------------------------------------------------

    def changed(self, uri: str, version: int | None) -> None:
        text = self.workspace.get_text_document(uri).source
        doc = self.documents.get(uri)
        if doc is None:
            path = self.workspace.get_text_document(uri).path if uri.startswith("file:") \
                else None
            doc = Document(uri, str(Path(path)) if path else uri,
                           Path(path).parent if path else None)
            self.documents[uri] = doc
        doc.version = version if version is not None else doc.version + 1
        doc.text = text
        doc.generation += 1
        doc.done.clear()
        if doc.task is None or doc.task.done():
            doc.task = asyncio.ensure_future(self.analyse_latest(doc))

    async def analyse_latest(self, doc: Document) -> None:
        loop = asyncio.get_running_loop()
        while doc.analysed_generation != doc.generation and self.is_open(doc):
            generation, version, text = doc.generation, doc.version, doc.text
            try:
                result = await loop.run_in_executor(self.pool, analyse, text, doc.name,
                                                    doc.base)
            except Exception:  # noqa: BLE001 - analyse catches; this is a last resort
                self.report(f"analysis of {doc.uri} failed")
                doc.done.set()
                return
            if not self.is_open(doc):  # closed meanwhile: nothing is kept or published
                break
            doc.analysed, doc.analysed_generation, doc.analysed_version = \
                result, generation, version
            if result.parsed:
                doc.good, doc.shapes = result, self.shapes(doc, result)
            if generation == doc.generation:
                self.publish(doc)
                doc.done.set()
        doc.done.set()

    def is_open(self, doc: Document) -> bool:
        return self.documents.get(doc.uri) is doc

    def shapes(self, doc: Document, result: Analysis) -> dict:
        """Each line's shapes; a network with errors keeps those of its lines above the
        edit, from the last time it checked."""
        shapes = line_shapes(result)
        checked = {ir.name for ir in result.networks}
        defined = {d.name for d in result.module.definitions if d.kind == "network"}
        doc.checked = {name: kept for name, kept in doc.checked.items() if name in defined}
        for name in checked:
            doc.checked[name] = result
        for defn in result.module.definitions:
            if defn.kind == "network" and defn.name not in checked and defn.name in doc.checked:
                for line, found in carried_shapes(doc.checked[defn.name], result,
                                                  defn.name).items():
                    shapes.setdefault(line, found)
        return shapes

    def publish(self, doc: Document) -> None:
        try:
            items = features.diagnostics(doc.analysed, self.positions(doc, doc.analysed))
        except Exception:  # noqa: BLE001
            self.report(f"diagnostics of {doc.uri} failed")
            items = []
        self.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(
            uri=doc.uri, version=doc.analysed_version, diagnostics=items))

    async def current(self, uri: str) -> Document | None:
        """The document, analysed as it is now (or as last analysed, past WAIT_S)."""
        doc = self.documents.get(uri)
        if doc is None:
            return None
        if doc.analysed_generation != doc.generation:
            try:
                await asyncio.wait_for(doc.done.wait(), WAIT_S)
            except asyncio.TimeoutError:
                log.warning("analysis of %s takes over %.0f s; answering from the last one",
                            uri, WAIT_S)
        return doc if doc.analysed is not None else None

    def positions(self, doc: Document, analysis: Analysis) -> features.Positions:
        return features.Positions(analysis, doc.uri, self.workspace.position_codec)

    def report(self, what: str) -> None:
        details = traceback.format_exc()
        log.error("%s:\n%s", what, details)
        with contextlib.suppress(Exception):  # the client may be gone
            self.window_log_message(lsp.LogMessageParams(
                type=lsp.MessageType.Error, message=f"cnndsl: {what}\n{details}"))


server = CnnLanguageServer()


def guarded(handler):
    """A request handler that never raises: errors are logged and answered with None."""
    @functools.wraps(handler)
    async def run(ls: CnnLanguageServer, params):
        try:
            return await handler(ls, params)
        except JsonRpcException:  # an answer for the client (a refused rename)
            raise
        except Exception:  # noqa: BLE001 - the request boundary
            ls.report(f"{handler.__name__} failed")
            return None
    return run


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: CnnLanguageServer, params: lsp.DidOpenTextDocumentParams) -> None:
    ls.changed(params.text_document.uri, params.text_document.version)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: CnnLanguageServer, params: lsp.DidChangeTextDocumentParams) -> None:
    ls.changed(params.text_document.uri, params.text_document.version)


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: CnnLanguageServer, params: lsp.DidCloseTextDocumentParams) -> None:
    doc = ls.documents.pop(params.text_document.uri, None)
    if doc is not None:
        doc.done.set()  # requests waiting for its analysis answer now
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(
        uri=params.text_document.uri, diagnostics=[]))


async def _at(ls: CnnLanguageServer, uri: str, position: lsp.Position, good: bool = False):
    """(document, analysis, positions, line, column) at a request's position."""
    doc = await ls.current(uri)
    if doc is None:
        return None
    analysis = doc.good if good and doc.good is not None else doc.analysed
    pos = ls.positions(doc, analysis)
    line, column = pos.from_lsp(position)
    return doc, analysis, pos, line, column


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
@guarded
async def hover(ls: CnnLanguageServer, params: lsp.HoverParams):
    at = await _at(ls, params.text_document.uri, params.position)
    if at is None:
        return None
    _, analysis, pos, line, column = at
    return features.hover(analysis, pos, line, column)


@server.feature(lsp.TEXT_DOCUMENT_INLAY_HINT, lsp.InlayHintOptions(resolve_provider=False))
@guarded
async def inlay_hints(ls: CnnLanguageServer, params: lsp.InlayHintParams):
    doc = await ls.current(params.text_document.uri)
    if doc is None or doc.good is None:
        return []
    analysis = doc.good  # when the text does not parse, the last hints stay
    pos = ls.positions(doc, analysis)
    return features.inlay_hints(analysis, pos, params.range.start.line + 1,
                                params.range.end.line + 1, doc.shapes)


@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
@guarded
async def definition(ls: CnnLanguageServer, params: lsp.DefinitionParams):
    at = await _at(ls, params.text_document.uri, params.position)
    if at is None:
        return None
    doc, analysis, pos, line, column = at
    return features.definition(analysis, pos, line, column, doc.base)


@server.feature(lsp.TEXT_DOCUMENT_COMPLETION,
                lsp.CompletionOptions(trigger_characters=["(", ",", "=", ">"]))
@guarded
async def completion(ls: CnnLanguageServer, params: lsp.CompletionParams):
    at = await _at(ls, params.text_document.uri, params.position, good=True)
    if at is None:
        return None
    doc, analysis, pos, line, column = at
    current = ls.positions(doc, doc.analysed)  # the text as typed, which may not parse
    offset = current.offset(*current.from_lsp(params.position))
    items = features.completion(analysis, doc.analysed.text, offset, line)
    return lsp.CompletionList(is_incomplete=False, items=items)


@server.feature(lsp.TEXT_DOCUMENT_SIGNATURE_HELP,
                lsp.SignatureHelpOptions(trigger_characters=["(", ","]))
@guarded
async def signature_help(ls: CnnLanguageServer, params: lsp.SignatureHelpParams):
    at = await _at(ls, params.text_document.uri, params.position, good=True)
    if at is None:
        return None
    doc, analysis, _, _, _ = at
    current = ls.positions(doc, doc.analysed)
    offset = current.offset(*current.from_lsp(params.position))
    return features.signature_help(analysis, doc.analysed.text, offset)


@server.feature(lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
@guarded
async def document_symbols(ls: CnnLanguageServer, params: lsp.DocumentSymbolParams):
    doc = await ls.current(params.text_document.uri)
    if doc is None or doc.good is None:
        return []
    return features.document_symbols(doc.good, ls.positions(doc, doc.good))


@server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
@guarded
async def formatting(ls: CnnLanguageServer, params: lsp.DocumentFormattingParams):
    from ..fmt import FormatError, format_text
    doc = await ls.current(params.text_document.uri)
    if doc is None:
        return None
    text = doc.text
    loop = asyncio.get_running_loop()
    try:
        formatted = await loop.run_in_executor(ls.pool, format_text, text)
    except (CnnError, FormatError):
        return None  # the problems are on screen already; nothing is changed
    if formatted == text:
        return []
    # the end of the text as the client counts it: LSP's line breaks are \n, \r\n and \r
    # (normalise makes them all \n), a byte-order mark is a character of line 0
    lines = split_lines(normalise(text))
    codec = ls.workspace.position_codec
    last = ("\ufeff" if len(lines) == 1 and text.startswith("\ufeff") else "") + lines[-1]
    end = lsp.Position(line=len(lines) - 1, character=features.client_units(codec, last))
    return [lsp.TextEdit(range=lsp.Range(start=lsp.Position(line=0, character=0), end=end),
                         new_text=formatted)]


@server.feature(lsp.TEXT_DOCUMENT_PREPARE_RENAME)
@guarded
async def prepare_rename(ls: CnnLanguageServer, params: lsp.PrepareRenameParams):
    at = await _at(ls, params.text_document.uri, params.position)
    if at is None or not at[1].parsed:
        return None
    _, analysis, pos, line, column = at
    try:
        found = features.rename_target(analysis, line, column)
    except features.RenameError:
        return None
    return lsp.PrepareRenamePlaceholder(range=pos.range(found.span), placeholder=found.name)


@server.feature(lsp.TEXT_DOCUMENT_RENAME)
@guarded
async def rename(ls: CnnLanguageServer, params: lsp.RenameParams):
    at = await _at(ls, params.text_document.uri, params.position)
    if at is None or not at[1].parsed:
        return None
    _, analysis, pos, line, column = at
    try:
        changes = features.rename_edits(analysis, pos, line, column, params.new_name)
    except features.RenameError as exc:
        raise RequestFailed(str(exc)) from None
    return lsp.WorkspaceEdit(changes=changes)


@server.feature(lsp.EXIT)
def on_exit(ls: CnnLanguageServer, params) -> None:
    ls.exit_code = 0 if ls.protocol._shutdown else 1


def serve() -> int:
    """Serve on standard input and output; the exit status LSP asks for: 0 after
    `shutdown` then `exit`, else 1."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="cnndsl lsp: %(levelname)s %(message)s")
    stop = server._stop_event = threading.Event()
    server.protocol.set_writer(StdoutWriter(sys.stdout.buffer))
    try:
        asyncio.run(read_messages(server.protocol, sys.stdin.buffer, stop))
    except BrokenPipeError:
        log.error("the client is gone")
    except (KeyboardInterrupt, SystemExit):  # SystemExit: pygls's answer to `exit`
        pass
    finally:
        server.shutdown()
    return server.exit_code
