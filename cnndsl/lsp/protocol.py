"""The JSON-RPC side of `cnndsl lsp`: frames read from standard input with a bound, and a
response with the request's id for every request, whatever it holds.

pygls reads a frame of any announced length (a `Content-Length` of 4e9 ended the process)
and drops, unanswered, a request whose parameters fail validation, a batch, and every
request after `shutdown`; a client then waits forever. Here, as the LSP specification and
JSON-RPC 2.0 ask (and as rust-analyzer and pyright answer):

- parameters that fail validation: `InvalidParams` (-32602) with the request's id;
- a body that is not JSON: `ParseError` (-32700), id null; a message that is not JSON-RPC
  2.0, and each request of a batch (LSP has none): `InvalidRequest` (-32600);
- a request before `initialize`: `ServerNotInitialized` (-32002);
- a request after `shutdown`: `InvalidRequest`;
- a frame over MAX_FRAME_BYTES (what the largest spec a file may hold takes in JSON):
  `InvalidRequest`, id null, sent once its header is read; its body is skipped unread and
  the next frame is read;
- a request refused on purpose (a rename to a name that is taken): `RequestFailed`
  (-32803) with the reason in words; refusals are answers, logged without a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from cattrs.errors import ClassValidationError
from cattrs.v import transform_error
from lsprotocol import types as lsp
from lsprotocol.types import ResponseErrorMessage
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcParseError,
    JsonRpcServerNotInitialized,
)
from pygls.protocol import LanguageServerProtocol
from pygls.protocol.json_rpc import (
    JsonRPCNotification,
    JsonRPCRequestMessage,
    JsonRPCResponseMessage,
)

from ..program import MAX_SOURCE_BYTES

log = logging.getLogger("cnndsl.lsp")

# a didOpen of the largest spec allowed, every character escaped (`\u0001`: six bytes)
MAX_FRAME_BYTES = 6 * MAX_SOURCE_BYTES + 64 * 1024
MAX_HEADER_LINE = 4096
_CONTENT_LENGTH = re.compile(rb"content-length:[ \t]*(\d+)[ \t]*\r?\n", re.I)


class RequestFailed(JsonRpcException):
    """A request understood and refused (LSP's RequestFailed): the message says why."""

    CODE = -32803
    MESSAGE = "Request Failed"


class _Unreadable:
    """A message whose structure or parameters failed validation."""

    def __init__(self, data: dict, error: JsonRpcException):
        self.id = _id_of(data)
        self.is_request = "method" in data and "id" in data
        self.error = error


def _why(exc: Exception) -> str:
    """A validation failure in a line: `expected int @ $.params.position.line`."""
    if isinstance(exc, ClassValidationError):
        reasons = transform_error(exc, path="$")
    else:
        reasons = [f"{type(exc).__name__}: {exc}"]
    return ("invalid params: " + "; ".join(reasons))[:300]


def _id_of(data) -> int | str | None:
    msg_id = data.get("id") if isinstance(data, dict) else getattr(data, "id", None)
    return msg_id if isinstance(msg_id, (int, str)) and not isinstance(msg_id, bool) else None


def _is_request(message) -> bool:
    if isinstance(message, _Unreadable):
        return message.is_request
    if isinstance(message, dict):
        return "method" in message and "id" in message
    return getattr(message, "method", None) is not None and hasattr(message, "id")


class CnnProtocol(LanguageServerProtocol):
    def structure_message(self, data: dict[str, Any]):
        """pygls's, with a failure kept as a message to answer (pygls raised, so that
        the request was lost, and logged a traceback)."""
        if "jsonrpc" not in data:
            return data
        try:
            if "id" not in data:
                kind = self.get_message_type(data.get("method", "")) or JsonRPCNotification
            elif "error" in data:
                kind = ResponseErrorMessage
            elif "method" in data:
                kind = self.get_message_type(data["method"]) or JsonRPCRequestMessage
            else:
                kind = self._result_types.pop(data["id"], None) or JsonRPCResponseMessage
            return self._converter.structure(data, kind)
        except Exception as exc:  # noqa: BLE001 - whatever the client sent
            return _Unreadable(data, JsonRpcInvalidParams(_why(exc)))

    def handle_message(self, message) -> None:
        if isinstance(message, list):  # a JSON-RPC batch: not part of LSP
            for item in message:
                if _is_request(item):
                    self.refuse(_id_of(item), JsonRpcInvalidRequest(
                        "batches are not part of LSP: send one message a frame"))
            if not message:
                self.refuse(None, JsonRpcInvalidRequest("an empty batch"))
            return
        if isinstance(message, _Unreadable):
            if message.is_request:
                error = message.error
                if not isinstance(error, JsonRpcInvalidParams):
                    error = JsonRpcInvalidParams(str(error) or None)
                self.refuse(message.id, error)
            elif message.id is not None:
                self.refuse(message.id, JsonRpcInvalidRequest("not a JSON-RPC 2.0 message"))
            return
        method = getattr(message, "method", "")
        if not hasattr(message, "jsonrpc") or message.jsonrpc != self.VERSION or \
                not isinstance(method, str):
            if _id_of(message) is not None or not isinstance(message, dict):
                self.refuse(_id_of(message), JsonRpcInvalidRequest(
                    "not a JSON-RPC 2.0 message"))
            return
        if method == lsp.INITIALIZE:
            self.initialize_seen = True
        elif not getattr(self, "initialize_seen", False) and method != lsp.EXIT:
            if _is_request(message):  # LSP: ServerNotInitialized; notifications dropped
                self.refuse(message.id, JsonRpcServerNotInitialized(
                    "the first request must be `initialize`"))
            return
        if self._shutdown and _is_request(message):
            self.refuse(message.id, JsonRpcInvalidRequest(
                "the server is shutting down: only `exit` is accepted"))
            return
        super().handle_message(message)

    def refuse(self, msg_id, error: JsonRpcException) -> None:
        self._send_response(msg_id, error=error.to_response_error())

    def _send_handler_result(self, future, *, msg_id):
        if not future.cancelled() and isinstance(future.exception(), JsonRpcException):
            self._request_futures.pop(msg_id, None)  # an answer, not a fault: no traceback
            log.info("request %s refused: %s", msg_id, future.exception())
            self.refuse(msg_id, future.exception())
            return
        super()._send_handler_result(future, msg_id=msg_id)


async def read_messages(protocol: CnnProtocol, stdin: BinaryIO, stop) -> None:
    """Frames from `stdin` to `protocol` until the input ends or `stop` is set."""
    loop = asyncio.get_running_loop()
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnndsl-reader")

    def run(function, *args):
        return loop.run_in_executor(reader, function, *args)

    try:
        while not stop.is_set():
            length = await _read_header(run, stdin)
            if length is None:
                return
            if length > MAX_FRAME_BYTES:
                protocol.refuse(None, JsonRpcInvalidRequest(
                    f"a message of {length:,} bytes: the limit is {MAX_FRAME_BYTES:,}"))
                log.warning("refused a message of %s bytes", f"{length:,}")
                if not await run(_skip, stdin, length):
                    return
                continue
            body = await run(stdin.read, length)
            if len(body) < length:
                return
            _dispatch(protocol, body)
    finally:
        reader.shutdown(wait=False)


async def _read_header(run, stdin: BinaryIO) -> int | None:
    """The Content-Length of the next frame (None: the input ended)."""
    length = None
    while True:
        line = await run(stdin.readline, MAX_HEADER_LINE)
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            if length is not None:
                return length
            continue  # a blank line before any header
        match = _CONTENT_LENGTH.fullmatch(line)
        if match:
            length = int(match.group(1))


def _skip(stdin: BinaryIO, length: int) -> bool:
    """Read past a refused body in small pieces; False if the input ended first."""
    while length > 0:
        piece = stdin.read(min(length, 1 << 20))
        if not piece:
            return False
        length -= len(piece)
    return True


def _dispatch(protocol: CnnProtocol, body: bytes) -> None:
    try:
        message = json.loads(body, object_hook=protocol.structure_message)
    except (ValueError, RecursionError) as exc:  # not JSON (or nested past any sense)
        protocol.refuse(None, JsonRpcParseError(f"not JSON: {exc}"[:200]))
        return
    try:
        protocol.handle_message(message)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception:  # noqa: BLE001 - the server outlives every message
        log.exception("a message could not be handled")
        if _is_request(message):
            protocol.refuse(_id_of(message), JsonRpcInvalidRequest("the message could not "
                                                                   "be handled"))


