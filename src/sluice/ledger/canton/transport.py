"""HTTP and WebSocket transport to a participant node's JSON Ledger API (or a registry).

What it guarantees:

* Every request goes to ``base_url`` + the API path; a path in ``base_url`` is kept (a node behind
  a prefix, or the embedded server's ``<base>/nodes/<node>``).
* Reads (``read=True``) are retried with bounded exponential backoff and jitter on connection
  errors, timeouts and HTTP 429 (``Retry-After`` seconds honoured, capped), 502, 503 and 504 — at
  most ``retries_max`` times. Nothing else is retried: 400, 401, 403, 404, 409, 413, 500 and 501
  say the same thing the second time. Writes (``read=False``: commands) are never retried here: a
  retry of a command is the caller's decision, with the same command id.
* A 401 with a renewable token source (self-signed, OAuth2) invalidates the token and tries once
  more with a fresh one (the token had expired); a second 401 is :class:`CantonAuthError`. This
  holds for writes too: a 401 means the node did not look at the command.
* Answers are decoded with orjson; a body that is not JSON is :class:`MalformedResponseError`.
  Error answers become :class:`CantonError` (or a subclass) with the node's ``JsCantonError``
  fields when the body is one, or the start of the body's text otherwise (a proxy's 429, the
  API's ``text/plain`` 400).
* :meth:`LedgerHttp.websocket` yields only messages it received whole and decoded; a JsCantonError
  message, a malformed message, a receive timeout or a close other than a normal one (1000) raises.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Generator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
)
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from sluice.ledger import wire

from .auth import TokenSource
from .errors import (
    CantonAuthError,
    CantonError,
    CantonUnavailableError,
    ListTooLargeError,
    MalformedResponseError,
    NoWebSocketError,
)

log = logging.getLogger(__name__)

# Statuses a read is retried on: the node (or a proxy) is overloaded or briefly unavailable.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# Statuses that say the request was refused before anything was done with it.
_REFUSED_STATUSES = frozenset({400, 401, 403, 404, 405, 413, 415, 422})
# Statuses at the WebSocket upgrade that say the node has no WebSocket endpoint there.
_NO_WEBSOCKET_STATUSES = frozenset({404, 405, 501})
WEBSOCKET_SIZE_MAX = 64 * 1024 * 1024
_SNIPPET_SIZE_MAX = 300


class LedgerHttp:
    """One connection pool to one participant node (or registry), with its token source."""

    def __init__(
        self,
        base_url: str,
        auth: TokenSource,
        *,
        timeout_s: float = 10,
        retries_max: int = 4,
        backoff_base_s: float = 0.2,
        backoff_max_s: float = 5,
        retry_after_max_s: float = 30,
        stream_idle_timeout_s: float = 60,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{base_url!r} is not an http(s) URL")
        if retries_max < 0:
            raise ValueError("retries_max must not be negative")
        self.base_url = base_url.rstrip("/")
        self._base_path = parts.path.rstrip("/")
        self.auth = auth
        self.timeout_s = timeout_s
        self.retries_max = retries_max
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._retry_after_max_s = retry_after_max_s
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self._sleep = sleep
        self._random = random.Random()
        self._client = httpx.Client(timeout=timeout_s, transport=transport)

    # -- plain HTTP ---------------------------------------------------------------------------

    def get(self, path: str, *, params: Mapping[str, Any] | None = None) -> Any:
        """``GET`` a read; the decoded JSON answer."""
        return self._request("GET", path, None, params=params, read=True, timeout_s=None)

    def post(
        self,
        path: str,
        body: Any,
        *,
        params: Mapping[str, Any] | None = None,
        read: bool = True,
        timeout_s: float | None = None,
    ) -> Any:
        """``POST`` a JSON body; the decoded JSON answer. ``read=False`` for commands (never
        retried here); ``timeout_s`` overrides the client's for this request."""
        return self._request("POST", path, body, params=params, read=read, timeout_s=timeout_s)

    def _request(
        self,
        method: str,
        path: str,
        body: Any,
        *,
        params: Mapping[str, Any] | None,
        read: bool,
        timeout_s: float | None,
    ) -> Any:
        where = self._base_path + path
        url = self.base_url + path
        content = None if body is None else orjson.dumps(body)
        timeout = self.timeout_s if timeout_s is None else timeout_s
        attempts_max = 1 + (self.retries_max if read else 0)
        attempt = 0
        renewed = False
        while True:
            attempt += 1
            headers = self._headers()
            if content is not None:
                headers["Content-Type"] = "application/json"
            delay: float | None = None
            try:
                response = self._client.request(
                    method,
                    url,
                    content=content,
                    params=dict(params) if params else None,
                    headers=headers,
                    timeout=timeout,
                )
            except httpx.TimeoutException as exc:
                error: CantonError = CantonUnavailableError(
                    method, where, f"timed out after {timeout:g} s", retryable=True
                )
                error.__cause__ = exc
            except httpx.TransportError as exc:
                error = CantonUnavailableError(
                    method,
                    where,
                    f"connection failed ({type(exc).__name__}: {exc})",
                    retryable=True,
                )
                error.__cause__ = exc
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return decode_body(method, where, status, response.content)
                if status == 401 and self.auth.renewable and not renewed:
                    # An expired token: once more with a fresh one (not counted as an attempt).
                    renewed = True
                    attempt -= 1
                    self.auth.invalidate()
                    continue
                error = error_from_answer(method, where, status, response.content)
                if status not in RETRY_STATUSES:
                    raise _after_attempts(error, attempt)
                delay = self._retry_after(response.headers.get("Retry-After"))
            if attempt >= attempts_max:
                raise _after_attempts(error, attempt)
            pause = delay if delay is not None else self._backoff(attempt)
            log.debug("retrying %s %s in %.2f s: %s", method, where, pause, error)
            self._sleep(pause)

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.auth.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter: between half and all of base * 2^(attempt-1)."""
        ceiling = min(self._backoff_max_s, self._backoff_base_s * float(2 ** (attempt - 1)))
        return ceiling / 2 + self._random.uniform(0, ceiling / 2)

    def _retry_after(self, value: str | None) -> float | None:
        if not value:
            return None
        try:
            seconds = float(value.strip())
        except ValueError:
            return None  # an HTTP date: fall back to the backoff
        if math.isnan(seconds) or seconds < 0:
            return None
        return min(seconds, self._retry_after_max_s)

    # -- WebSocket ----------------------------------------------------------------------------

    def websocket(
        self, path: str, first_message: Any, *, idle_timeout_s: float | None = None
    ) -> Generator[Any, None, None]:
        """Open the WebSocket at ``path``, send ``first_message`` and yield each decoded message
        until the server closes normally (1000).

        Raises :class:`NoWebSocketError` when the upgrade answers 404 / 405 / 501,
        :class:`CantonAuthError` on 401 / 403 (after one fresh token for a renewable source),
        :class:`CantonUnavailableError` when the node cannot be reached (retried like a read),
        a message does not arrive within ``idle_timeout_s`` or the connection closes abnormally,
        :class:`CantonError` for a JsCantonError message and :class:`MalformedResponseError` for
        a message that is not JSON. Closing the iterator closes the socket.
        """
        where = self._base_path + path
        idle = self.stream_idle_timeout_s if idle_timeout_s is None else idle_timeout_s
        with self._open_websocket(path, where) as connection:
            try:
                connection.send(orjson.dumps(first_message).decode())
                while True:
                    try:
                        raw = connection.recv(timeout=idle)
                    except TimeoutError as exc:
                        raise CantonUnavailableError(
                            "WS", where, f"no message within {idle:g} s", retryable=True
                        ) from exc
                    message = decode_body("WS", where, None, raw)
                    if wire.is_canton_error(message):
                        raise canton_error_from_json("WS", where, None, message)
                    yield message
            except ConnectionClosed as exc:
                received = exc.rcvd
                if received is not None and received.code == 1000:
                    return
                how = (
                    f"code {received.code}" + (f" {received.reason!r}" if received.reason else "")
                    if received is not None
                    else "without a close frame"
                )
                raise CantonUnavailableError(
                    "WS", where, f"the connection closed abnormally ({how})", retryable=True
                ) from exc

    def _open_websocket(self, path: str, where: str) -> ClientConnection:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        url = f"{scheme}://{parts.netloc}{self._base_path}{path}"
        attempt = 0
        renewed = False
        while True:
            attempt += 1
            token = self.auth.token()
            subprotocols = [Subprotocol("daml.ws.auth")]
            if token:
                subprotocols.append(Subprotocol(f"jwt.token.{token}"))
            headers = {"Authorization": f"Bearer {token}"} if token else None
            delay: float | None = None
            try:
                return connect(
                    url,
                    subprotocols=subprotocols,
                    additional_headers=headers,
                    open_timeout=self.timeout_s,
                    close_timeout=self.timeout_s,
                    max_size=WEBSOCKET_SIZE_MAX,
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status == 401 and self.auth.renewable and not renewed:
                    renewed = True
                    attempt -= 1
                    self.auth.invalidate()
                    continue
                body = exc.response.body or b""
                if status in _NO_WEBSOCKET_STATUSES:
                    raise NoWebSocketError(
                        "WS",
                        where,
                        "no WebSocket endpoint",
                        status=status,
                        cause=_snippet(body),
                        definite=True,
                    ) from exc
                error: CantonError = error_from_answer("WS", where, status, body)
                if status not in RETRY_STATUSES:
                    raise _after_attempts(error, attempt) from exc
                delay = self._retry_after(exc.response.headers.get("Retry-After"))
            except TimeoutError as exc:
                error = CantonUnavailableError(
                    "WS", where, f"the WebSocket upgrade timed out after {self.timeout_s:g} s"
                )
                error.__cause__ = exc
            except (OSError, InvalidHandshake) as exc:
                error = CantonUnavailableError(
                    "WS", where, f"connection failed ({type(exc).__name__}: {exc})"
                )
                error.__cause__ = exc
            if attempt > self.retries_max:
                raise _after_attempts(error, attempt)
            self._sleep(delay if delay is not None else self._backoff(attempt))

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> LedgerHttp:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# --- decoding answers -----------------------------------------------------------------------------


def decode_body(
    method: str, where: str, status: int | None, content: bytes | bytearray | str
) -> Any:
    """The JSON of a successful answer (or a WebSocket message); :class:`MalformedResponseError`
    when it is not JSON."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise MalformedResponseError(
            method,
            where,
            "the answer is not JSON",
            status=status,
            cause=_snippet(content) or "(empty body)",
        ) from exc


def error_from_answer(
    method: str, where: str, status: int, content: bytes | bytearray | str
) -> CantonError:
    """The error an unsuccessful HTTP answer stands for."""
    try:
        body = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict) and wire.is_canton_error(body):
        return canton_error_from_json(method, where, status, body)
    cause = _snippet(content) or None
    if isinstance(body, dict):
        for key in ("error", "message", "detail", "cause"):
            if isinstance(body.get(key), str):
                cause = body[key]
                break
    return _error_class(status)(
        method,
        where,
        status=status,
        cause=cause,
        definite=status in _REFUSED_STATUSES,
        retryable=status in RETRY_STATUSES,
    )


def canton_error_from_json(
    method: str, where: str, status: int | None, body: Mapping[str, Any]
) -> CantonError:
    """A :class:`CantonError` with the fields of a ``JsCantonError``."""
    category = wire.category_name(body.get("errorCategory"))
    found = wire.CATEGORIES.get(category) if category else None
    retryable = (found is not None and found.retryable) or (
        status is not None and status in RETRY_STATUSES
    )
    if status is None and found is not None and found.http_status in (401, 403):
        status_class: type[CantonError] = CantonAuthError
    else:
        status_class = _error_class(status)
    return status_class(
        method,
        where,
        status=status,
        node_code=str(body.get("code")),
        cause=str(body.get("cause", "")) or None,
        category=category,
        definite=wire.is_definite_rejection(body),
        retryable=retryable,
    )


def _after_attempts(error: CantonError, attempts: int) -> CantonError:
    """``error``, saying how many attempts it took when there were several."""
    if attempts > 1 and error.attempts != attempts:
        error.attempts = attempts
        error.args = (f"{error.args[0]} (after {attempts} attempts)",)
    return error


def _error_class(status: int | None) -> type[CantonError]:
    if status in (401, 403):
        return CantonAuthError
    if status == 413:
        return ListTooLargeError
    if status in RETRY_STATUSES:
        return CantonUnavailableError
    return CantonError


def _snippet(content: bytes | bytearray | str) -> str:
    text = content if isinstance(content, str) else bytes(content).decode("utf-8", "replace")
    text = " ".join(text.split())
    if len(text) > _SNIPPET_SIZE_MAX:
        text = text[:_SNIPPET_SIZE_MAX] + "..."
    return text


def expect_object(value: Any, method: str, where: str, what: str) -> dict[str, Any]:
    """``value`` when it is a JSON object, else :class:`MalformedResponseError`."""
    if not isinstance(value, dict):
        raise MalformedResponseError(
            method, where, f"expected {what} (a JSON object), got {type(value).__name__}"
        )
    return value


def expect_list(value: Any, method: str, where: str, what: str) -> list[Any]:
    """``value`` when it is a JSON array, else :class:`MalformedResponseError`."""
    if not isinstance(value, list):
        raise MalformedResponseError(
            method, where, f"expected a list of {what}, got {type(value).__name__}"
        )
    return value
