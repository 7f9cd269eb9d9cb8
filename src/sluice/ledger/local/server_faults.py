"""Faults the embedded ledger's HTTP server injects at the transport, for testing its clients.

Reachable as ``LedgerServer.faults`` (:class:`ServerFaults`); every method is thread-safe, so a
test arms a fault from its own thread while the server runs in another. A fault names the requests
it hits by the end of their path (``"/v2/updates"``, ``"/transfer-factory"``, ...) and fires on the
next ``count`` of them; each firing uses one up.

* :meth:`ServerFaults.fail_next`: answer ``status`` (500, 503, 429 with ``Retry-After``, 413, ...)
  without handling the request — nothing happens on the ledger. The default body is a
  ``JsCantonError`` (the Registry API's ``{"error": ...}`` under ``/registries/``). A WebSocket
  handshake on that path is refused with the same HTTP answer.
* :meth:`ServerFaults.malformed_next`: answer 200 with a body that is not valid JSON. By default
  the request is not handled either; with ``process=True`` it is, and the real answer is cut in
  half (a command may then have committed although its caller cannot read the answer).
* :meth:`ServerFaults.delay_next`: hold the request for ``seconds`` before handling it (to make a
  client time out; the request is still handled afterwards, as by a slow node).
* :meth:`ServerFaults.cut_stream_after`: the next WebSocket stream on the path (``/v2/updates``
  by default) sends ``messages`` complete messages, then a text message holding only the first
  half of the next message's JSON, then drops the TCP connection without a WebSocket close frame
  (the client sees close code 1006). A stream that ends before that closes normally.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from sluice.ledger.wire import canton_error

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The error category whose HTTP status a default injected body matches (statuses Canton has no
# category for get the closest one; the status sent is always the one asked for).
_CATEGORY_BY_STATUS = {
    400: "InvalidIndependentOfSystemState",
    401: "AuthInterceptorInvalidAuthenticationCredentials",
    403: "InsufficientPermission",
    404: "InvalidGivenCurrentSystemStateResourceMissing",
    409: "ContentionOnSharedResources",
    413: "InvalidIndependentOfSystemState",
    429: "ContentionOnSharedResources",
    501: "InternalUnsupportedOperation",
    503: "TransientServerFailure",
    504: "DeadlineExceededRequestStateUnknown",
}
MALFORMED_BODY = b'{"update": {"Transaction": {"value": {"updateId": "12'


@dataclass(slots=True)
class _Failure:
    suffix: str
    status: int
    body: bytes | None
    content_type: str
    retry_after: float | None
    count: int


@dataclass(slots=True)
class _Armed:
    suffix: str
    count: int
    value: Any


class ServerFaults:
    """Transport faults of one server (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._malformed: list[_Armed] = []
        self._delays: list[_Armed] = []
        self._cuts: list[_Armed] = []

    def fail_next(
        self,
        path_suffix: str,
        status: int,
        *,
        count: int = 1,
        body: bytes | str | dict[str, Any] | list[Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        """The next ``count`` requests whose path ends with ``path_suffix`` get ``status``."""
        _check(path_suffix, count)
        if not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        raw: bytes | None
        content_type = "application/json"
        if body is None:
            raw = None
        elif isinstance(body, bytes):
            raw = body
        elif isinstance(body, str):
            raw = body.encode()
            content_type = "text/plain; charset=utf-8"
        else:
            raw = orjson.dumps(body)
        with self._lock:
            self._failures.append(
                _Failure(path_suffix, status, raw, content_type, retry_after, count)
            )

    def malformed_next(self, path_suffix: str, count: int = 1, *, process: bool = False) -> None:
        """The next ``count`` requests on the path get 200 with a body that is not valid JSON."""
        _check(path_suffix, count)
        with self._lock:
            self._malformed.append(_Armed(path_suffix, count, process))

    def delay_next(self, path_suffix: str, seconds: float, count: int = 1) -> None:
        """The next ``count`` requests on the path wait ``seconds`` before they are handled."""
        _check(path_suffix, count)
        if not 0 <= seconds <= 3600:
            raise ValueError("seconds must be between 0 and 3600")
        with self._lock:
            self._delays.append(_Armed(path_suffix, count, seconds))

    def cut_stream_after(
        self, messages: int, *, path_suffix: str = "/v2/updates", count: int = 1
    ) -> None:
        """The next ``count`` WebSocket streams on the path break after ``messages`` messages."""
        _check(path_suffix, count)
        if messages < 0:
            raise ValueError("messages must not be negative")
        with self._lock:
            self._cuts.append(_Armed(path_suffix, count, messages))

    def clear(self) -> None:
        with self._lock:
            self._failures.clear()
            self._malformed.clear()
            self._delays.clear()
            self._cuts.clear()

    # --- taking faults (the server's side) -----------------------------------------------------

    def take_failure(self, path: str) -> _Failure | None:
        with self._lock:
            return _take(self._failures, path)

    def take_malformed(self, path: str) -> bool | None:
        """None: no fault; else whether the request is to be handled first."""
        with self._lock:
            found = _take(self._malformed, path)
            return None if found is None else bool(found.value)

    def take_delay(self, path: str) -> float | None:
        with self._lock:
            found = _take(self._delays, path)
            return None if found is None else float(found.value)

    def take_cut(self, path: str) -> int | None:
        with self._lock:
            found = _take(self._cuts, path)
            return None if found is None else int(found.value)


def _check(path_suffix: str, count: int) -> None:
    if not path_suffix:
        raise ValueError("path_suffix must not be empty")
    if count < 1:
        raise ValueError("count must be at least 1")


_Queued = TypeVar("_Queued", _Failure, _Armed)


def _take(queue: list[_Queued], path: str) -> _Queued | None:
    for index, armed in enumerate(queue):
        if path.endswith(armed.suffix):
            armed.count -= 1
            if armed.count == 0:
                del queue[index]
            return armed
    return None


def _default_body(path: str, status: int) -> bytes:
    if "/registries/" in path or path.startswith("/registries"):
        return orjson.dumps({"error": f"injected fault: HTTP {status}"})
    category = _CATEGORY_BY_STATUS.get(
        status,
        "SystemInternalAssumptionViolated" if status >= 500 else "InvalidIndependentOfSystemState",
    )
    _, body = canton_error(
        f"INJECTED_HTTP_{status}", f"injected fault: HTTP {status} for {path}", category
    )
    return orjson.dumps(body)


class FaultMiddleware:
    """The ASGI middleware that fires :class:`ServerFaults` on requests (outermost, before auth:
    an injected answer does not depend on the caller's token)."""

    def __init__(self, app: ASGIApp, faults: ServerFaults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        delay = self.faults.take_delay(path)
        if delay:
            await asyncio.sleep(delay)
        failure = self.faults.take_failure(path)
        if failure is not None:
            await self._fail(scope, receive, send, failure)
            return
        if kind == "http":
            process = self.faults.take_malformed(path)
            if process is not None:
                await self._malformed(scope, receive, send, process)
                return
        await self.app(scope, receive, send)

    async def _fail(self, scope: Scope, receive: Receive, send: Send, failure: _Failure) -> None:
        path: str = scope["path"]
        body = failure.body if failure.body is not None else _default_body(path, failure.status)
        headers = [(b"content-type", failure.content_type.encode())]
        if failure.retry_after is not None:
            value = failure.retry_after
            text = str(int(value)) if float(value).is_integer() else str(value)
            headers.append((b"retry-after", text.encode()))
        headers.append((b"content-length", str(len(body)).encode()))
        prefix = "websocket." if scope["type"] == "websocket" else ""
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
        else:
            await _drain(receive)
        await send(
            {"type": f"{prefix}http.response.start", "status": failure.status, "headers": headers}
        )
        await send({"type": f"{prefix}http.response.body", "body": body})

    async def _malformed(self, scope: Scope, receive: Receive, send: Send, process: bool) -> None:
        body = MALFORMED_BODY
        if process:
            captured: list[bytes] = []

            async def capture(message: Message) -> None:
                if message["type"] == "http.response.body":
                    captured.append(message.get("body", b""))

            await self.app(scope, receive, capture)
            whole = b"".join(captured)
            body = whole[: len(whole) // 2]
        else:
            await _drain(receive)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive) -> None:
    """Read the request body so the connection stays usable for the next request."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
