"""The language server's side of the protocol, frame by frame: every request gets a response
with its id (a result or an error), whatever its parameters; frames over the bound are
refused without killing the server; `exit` says whether `shutdown` came first. A raw client
writes the bytes here (pytest-lsp's would refuse to send most of them)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest
from lsprotocol import types as lsp

from conftest import ROOT

TIMEOUT = 30  # seconds for any one answer: a hang fails the test


class RawClient:
    """A `cnndsl lsp` process, written to frame by frame; what it sends back, by id."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cnndsl", "lsp"], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.messages: queue.Queue = queue.Queue()
        self.stderr: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr),
                         daemon=True).start()
        self.next_id = 0
        self.seen: list[dict] = []

    def _read(self) -> None:
        out = self.process.stdout
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    return
                if line == b"\r\n":
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            self.messages.put(json.loads(out.read(length)))

    def write(self, body: bytes, length: int | None = None) -> None:
        header = f"Content-Length: {len(body) if length is None else length}\r\n\r\n"
        self.process.stdin.write(header.encode() + body)
        self.process.stdin.flush()

    def send(self, message) -> None:
        self.write(json.dumps(message).encode())

    def request(self, method: str, params=None, omit_params: bool = False):
        self.next_id += 1
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if not omit_params:
            message["params"] = params
        self.send(message)
        return self.next_id

    def notify(self, method: str, params) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def response(self, msg_id, timeout: float = TIMEOUT) -> dict:
        """The response with this id (notifications and other responses are kept)."""
        for message in self.seen:
            if "method" not in message and message.get("id") == msg_id:
                self.seen.remove(message)
                return message
        deadline = time.monotonic() + timeout
        while True:
            message = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if "method" not in message and message.get("id") == msg_id:
                return message
            self.seen.append(message)

    def diagnostics(self, uri: str, version: int, timeout: float = TIMEOUT) -> list:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.seen:
                params = message.get("params") or {}
                if message.get("method") == lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS and \
                        params.get("uri") == uri and params.get("version") == version:
                    return params["diagnostics"]
            self.seen.append(self.messages.get(timeout=max(0.01,
                                                           deadline - time.monotonic())))

    def initialize(self) -> dict:
        answer = self.response(self.request("initialize", {
            "processId": None, "rootUri": ROOT.as_uri(), "capabilities": {}}))
        self.notify("initialized", {})
        return answer["result"]

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def raw():
    client = RawClient()
    yield client
    client.close()


SPEC = "network n() {\n    input x: 3 x 8 x 8\n    y = x -> conv(8, 3)\n    y -> relu\n}\n"


def advertised_requests() -> list[str]:
    """Every request method the server has a handler for (its own and pygls's built-in
    ones), from the server itself."""
    from cnndsl.lsp.server import server
    features = server.protocol.fm
    methods = set(features.features) | set(features.builtin_features)
    return sorted(m for m in methods if lsp.METHOD_TO_TYPES.get(m, (None, None))[1] is not None
                  and m != lsp.SHUTDOWN)


def hostile_params(uri: str) -> list:
    doc = {"uri": uri}
    position = {"line": 2, "character": 5}
    return [
        "omitted", None, {}, [], "a string", 7,
        {"textDocument": {"uri": 5}, "position": position},
        {"textDocument": doc},  # no position
        {"textDocument": doc, "position": None},
        {"textDocument": doc, "position": {"line": -1, "character": 0}},
        {"textDocument": doc, "position": {"line": 0, "character": -3}},
        {"textDocument": doc, "position": {"line": 2 ** 31, "character": 0}},
        {"textDocument": doc, "position": {"line": 2 ** 64, "character": 2 ** 64}},
        {"textDocument": doc, "position": {"line": "1", "character": 0}},
        {"textDocument": doc, "position": {"line": 1.5, "character": 0}},
        {"textDocument": doc, "position": {"line": 2 ** 31 - 1, "character": 2 ** 31 - 1}},
        {"textDocument": {"uri": "file:///never/opened.cnn"}, "position": position},
        {"textDocument": doc, "position": position, "newName": 3},
        {"textDocument": doc, "position": position, "newName": "ok_name"},
        {"textDocument": doc, "range": {"start": position, "end": {"line": -4,
                                                                   "character": 0}}},
        {"textDocument": doc, "range": {"start": position, "end": position}},
        {"textDocument": doc, "options": {"tabSize": "four", "insertSpaces": True}},
        {"textDocument": doc, "options": {"tabSize": 4, "insertSpaces": True}},
        {"command": None}, {"command": "nothing", "arguments": [1]},
    ]


def test_every_advertised_request_answers_hostile_parameters(raw, tmp_path):
    """A request whose parameters fail validation (a negative or huge line, a string for a
    number, `position: null`, no params at all) never got a response."""
    raw.initialize()
    uri = (tmp_path / "doc.cnn").as_uri()
    raw.notify("textDocument/didOpen", {"textDocument": {
        "uri": uri, "languageId": "cnn", "version": 1, "text": SPEC}})
    assert raw.diagnostics(uri, 1) == []
    methods = advertised_requests()
    assert {"textDocument/hover", "textDocument/completion", "textDocument/rename",
            "textDocument/documentSymbol", "initialize"} <= set(methods)
    answered = 0
    for method in methods:
        for params in hostile_params(uri):
            msg_id = raw.request(method, params, omit_params=params == "omitted")
            answer = raw.response(msg_id)
            assert answer["id"] == msg_id and answer["jsonrpc"] == "2.0"
            assert ("result" in answer) != ("error" in answer), answer
            if "error" in answer:
                assert isinstance(answer["error"]["code"], int), answer
                assert "Traceback" not in answer["error"]["message"], (method, params, answer)
            answered += 1
    assert answered == len(methods) * len(hostile_params(uri))
    # notifications get no response, whatever they hold, and change nothing they should not
    from cnndsl.lsp.server import server
    features = server.protocol.fm
    notifications = sorted(m for m in set(features.features) | set(features.builtin_features)
                           if lsp.METHOD_TO_TYPES.get(m, (None, None))[1] is None
                           and m != lsp.EXIT)
    assert {"textDocument/didOpen", "textDocument/didChange",
            "textDocument/didClose"} <= set(notifications)
    for method in notifications:
        for params in hostile_params(uri) + [
                {"textDocument": {"uri": uri, "version": "x"}, "contentChanges": [{}]},
                {"textDocument": {"uri": uri, "languageId": "cnn", "version": 1,
                                  "text": None}}]:
            raw.notify(method, params) if params != "omitted" else raw.send(
                {"jsonrpc": "2.0", "method": method})
    # (some of those were well-formed enough to close the document: extra fields are
    # allowed) opened again, it is analysed as ever
    raw.notify("textDocument/didOpen", {"textDocument": {
        "uri": uri, "languageId": "cnn", "version": 7, "text": SPEC}})
    assert raw.diagnostics(uri, 7) == []
    # and it still answers well-formed requests, with what they ask for
    hover = raw.response(raw.request("textDocument/hover", {
        "textDocument": {"uri": uri}, "position": {"line": 2, "character": 14}}))
    assert "8 x 6 x 6" in hover["result"]["contents"]["value"]
    assert not [line for line in b"".join(raw.stderr).decode().split("\n")
                if "Traceback" in line]


def test_ids_of_every_kind_are_answered_and_batches_are_refused(raw):
    raw.initialize()
    for msg_id in ("text-id", 0, 2 ** 31 - 1):
        raw.send({"jsonrpc": "2.0", "id": msg_id, "method": "textDocument/hover"})
        assert raw.response(msg_id)["error"]["code"] == -32602  # invalid params
    # LSP has no batches: each request in one gets an error with its own id
    raw.send([{"jsonrpc": "2.0", "id": 901, "method": "textDocument/hover", "params": {}},
              {"jsonrpc": "2.0", "id": 902, "method": "shutdown"},
              {"jsonrpc": "2.0", "method": "initialized", "params": {}}])
    for msg_id in (901, 902):
        assert raw.response(msg_id)["error"]["code"] == -32600  # invalid request
    # a body that is not JSON, and a message that is not JSON-RPC: an error with id null
    raw.write(b"{not json")
    assert raw.response(None)["error"]["code"] == -32700  # parse error
    raw.send({"id": 903, "method": "textDocument/hover", "params": {}})  # no "jsonrpc"
    assert raw.response(903)["error"]["code"] == -32600
    raw.send({"jsonrpc": "2.0", "id": 904, "method": 5, "params": {}})  # was an internal
    assert raw.response(904)["error"] == {  # error, its traceback sent to the client
        "code": -32600, "message": "not a JSON-RPC 2.0 message"}
    raw.send({"jsonrpc": "2.0", "id": 905, "method": "$/unknown", "params": {}})
    assert raw.response(905)["error"]["code"] == -32601  # method not found
    # the batch's shutdown was not run: the server still answers
    assert "result" in raw.response(raw.request("textDocument/documentSymbol", {
        "textDocument": {"uri": "file:///nothing.cnn"}}))


def test_requests_before_initialize_get_an_error(raw):
    """LSP: until `initialize`, a request is answered ServerNotInitialized (-32002)."""
    msg_id = raw.request("textDocument/documentSymbol", {
        "textDocument": {"uri": "file:///x.cnn"}})
    assert raw.response(msg_id)["error"]["code"] == -32002
    raw.initialize()
    assert raw.response(raw.request("textDocument/documentSymbol", {
        "textDocument": {"uri": "file:///x.cnn"}}))["result"] == []


def test_requests_after_shutdown_get_an_error_and_exit_says_how_it_ended(raw):
    """Requests after `shutdown` were never answered (LSP: they error with InvalidRequest);
    `exit` without `shutdown` exited 0 (LSP: 1)."""
    raw.initialize()
    assert raw.response(raw.request("shutdown"))["result"] is None
    msg_id = raw.request("textDocument/hover", {
        "textDocument": {"uri": "file:///x.cnn"}, "position": {"line": 0, "character": 0}})
    assert raw.response(msg_id)["error"]["code"] == -32600
    raw.notify("exit", None)
    assert raw.wait() == 0


def test_exit_without_shutdown_exits_1(raw):
    raw.initialize()
    raw.notify("exit", None)
    assert raw.wait() == 1


@pytest.mark.parametrize("length", [4_000_000_000, 10 ** 30, 200 * 1024 * 1024])
def test_a_frame_over_the_bound_is_refused_and_the_server_lives_on(raw, length):
    """A Content-Length of about 4e9 or more killed the server (MemoryError, OverflowError
    in the reader). Refused as soon as its header is read, its body skipped unread."""
    raw.initialize()
    raw.write(b"", length=length)
    refused = raw.response(None)
    assert refused["error"]["code"] == -32600
    assert f"{length:,} bytes" in refused["error"]["message"]
    assert raw.process.poll() is None
    if length < 10 ** 9:  # a body that does arrive is skipped, and the next frame is read
        chunk = b" " * (1024 * 1024)
        for _ in range(length // len(chunk)):
            raw.process.stdin.write(chunk)
        raw.process.stdin.flush()
        assert "result" in raw.response(raw.request("textDocument/documentSymbol", {
            "textDocument": {"uri": "file:///nothing.cnn"}}))


def test_a_refused_rename_is_request_failed_without_a_traceback(raw, tmp_path):
    """The refusal that did happen printed a whole traceback on stderr and used -32600."""
    raw.initialize()
    uri = (tmp_path / "doc.cnn").as_uri()
    raw.notify("textDocument/didOpen", {"textDocument": {
        "uri": uri, "languageId": "cnn", "version": 1, "text": SPEC}})
    raw.diagnostics(uri, 1)
    answer = raw.response(raw.request("textDocument/rename", {
        "textDocument": {"uri": uri}, "position": {"line": 2, "character": 4},
        "newName": "x"}))
    assert answer["error"]["code"] == -32803  # RequestFailed
    assert answer["error"]["message"] == \
        "`y` cannot be renamed to `x`: `x` is already a tensor in `n`"
    raw.response(raw.request("shutdown"))
    raw.notify("exit", None)
    assert raw.wait() == 0
    assert "Traceback" not in b"".join(raw.stderr).decode()
