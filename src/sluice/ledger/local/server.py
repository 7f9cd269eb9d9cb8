"""The embedded ledger over HTTP: the JSON Ledger API v2 subset and the Registry API sluice uses.

This is what ``sluice ledger serve`` runs, and what the Canton adapter is tested against over a
real socket. Paths and JSON shapes are those of ``ledger-api-3.4.12-openapi.yaml`` (+ the AsyncAPI
file for WebSockets) and the token standard's Registry API files:

* ``<base>/v2/...`` serves the default node, ``<base>/nodes/<node>/v2/...`` any node; offsets are
  the node's own. A party named in a request (``filtersByParty``, ``actAs``, ``parties``) must be
  hosted on that node (``PERMISSION_DENIED``, category InsufficientPermission, otherwise).
* ``GET /v2/state/ledger-end``, ``GET /v2/version``; ``POST /v2/updates`` (list) and the
  ``/v2/updates`` WebSocket; ``POST /v2/state/active-contracts`` (+ WebSocket);
  ``POST /v2/events/events-by-contract-id``; ``POST /v2/updates/update-by-id``;
  ``POST /v2/commands/submit-and-wait``; ``POST /v2/commands/completions`` (+ WebSocket);
  ``POST /v2/interactive-submission/prepare``, ``/execute``, ``/executeAndWait``.
* ``<base>/registries/<admin>/registry/transfer-instruction/v1/...`` and ``.../metadata/v1/...``:
  the Registry API of each instrument admin, errors as ``{"error": ...}``.
* ``POST <base>/sandbox/v1/<method>``: sandbox control (:mod:`.remote`), unless switched off.
* ``POST <base>/oauth/token``: client-credentials tokens, when :class:`ServerAuth` is configured.

Errors are ``JsCantonError`` bodies with the status :func:`sluice.ledger.wire.canton_error`
gives. A body that cannot be read as the request type at all (not JSON, not an object, a required
field missing or of the wrong type) is answered as Canton's own HTTP layer does: 400 with a
``text/plain`` message (``Invalid value for: body ...``). Everything the server does not support
is a ``JsCantonError`` too, never a 500: a 500 means a bug here.

Lists and streams. A list endpoint answers what is there up to the ledger end; when the answer
would hold more than the server's list limit (``http-list-max-elements-limit`` in Canton, default
200 here) and the caller gave no smaller ``limit``, it is 413 with a JsCantonError
(``MAXIMUM_LIST_ELEMENTS_NUMBER_REACHED``). A WebSocket client sends one request message and gets
one response object per text message; with ``endInclusive`` the server closes (1000) after the
last item, without it it follows the ledger (polling every 20 ms) until the client goes. A read
failure part-way is one JsCantonError message, then close code 1011; a request error is one
JsCantonError message, then close code 1008.

Replay mode (:meth:`LedgerServer.replay`) serves a file of recorded updates read-only: ledger end
and ``/v2/updates`` (list and WebSocket) replay the file's items in order whatever the party
filter; ``/v2/version`` answers; everything else is 501 (InternalUnsupportedOperation).

Auth (:class:`ServerAuth`): every ``/v2``, ``/nodes``, ``/registries`` and ``/sandbox`` request
needs a valid, unexpired HS256 JWT — ``Authorization: Bearer``, or on a WebSocket the
``jwt.token.<token>`` subprotocol next to ``daml.ws.auth`` (which the server accepts) — else 401
(category AuthInterceptorInvalidAuthenticationCredentials) with a cause that starts with
``missing``, ``expired`` or ``invalid``. Any valid token may act for any party.

Threads: the server runs uvicorn (WebSockets on its sans-I/O ``websockets`` implementation, which
lets a fault drop a connection without a close frame) on an event loop of its own; ledger calls go
to worker threads, streams read from the ledger in chunks there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs

import jwt
import orjson
import uvicorn
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from sluice.domain.errors import (
    InvalidInputError,
    MalformedUpdateError,
    NotFoundError,
    SluiceError,
)
from sluice.domain.history import item_offset, parse_transfer, unwrap_update
from sluice.domain.ledger import format_timestamp, parse_timestamp
from sluice.ledger import wire
from sluice.ledger.file import UpdateFile
from sluice.ledger.wire import Json
from sluice.ports import JsonObject, LedgerReadError

from .engine import (
    CommandRejectedError,
    CommandResult,
    Completion,
    DuplicateCommandError,
    EmbeddedLedger,
    LedgerError,
    OffsetAfterLedgerEndError,
    ResponseLostError,
    UnknownPartyError,
)
from .remote import CONTROL_PATH, decode_arguments, error_json, to_json
from .server_faults import ASGIApp, FaultMiddleware, Receive, Scope, Send, ServerFaults

LEDGER_API_VERSION = "3.4.12"
POLL_INTERVAL_S = 0.02
# Items read from the ledger per worker-thread hop of a stream (bounded work per tick).
STREAM_CHUNK_ITEMS = 256
PAGE_SIZE_MAX = 1000
REQUEST_BODY_MAX_BYTES = 16 * 1024 * 1024
AUTH_SUBPROTOCOL = "daml.ws.auth"
TOKEN_SUBPROTOCOL_PREFIX = "jwt.token."
_PROTECTED_PREFIXES = ("/v2/", "/nodes/", "/registries/", CONTROL_PATH + "/")

T = TypeVar("T")


# --- problems: what a request is answered with when it fails --------------------------------------


class Problem(Exception):  # noqa: N818 - an answer, not an error of the server
    """An answer other than success: a status and a body (JSON, or text for 400s)."""

    def __init__(self, status: int, body: Json | str) -> None:
        super().__init__(body if isinstance(body, str) else body.get("cause", ""))
        self.status = status
        self.body = body

    def response(self) -> Response:
        if isinstance(self.body, str):
            return Response(self.body, self.status, media_type="text/plain; charset=utf-8")
        return _json(self.body, self.status)

    def canton_body(self) -> Json:
        """The body as a JsCantonError (text problems become INVALID_ARGUMENT)."""
        if isinstance(self.body, str):
            return wire.canton_error("INVALID_ARGUMENT", self.body, _INVALID)[1]
        return self.body


_INVALID = "InvalidIndependentOfSystemState"
_MISSING = "InvalidGivenCurrentSystemStateResourceMissing"
_STATE = "InvalidGivenCurrentSystemStateOther"


def canton_problem(
    code: str,
    cause: str,
    category: str,
    *,
    definite: bool | None = None,
    status: int | None = None,
    context: Mapping[str, str] | None = None,
) -> Problem:
    found, body = wire.canton_error(code, cause, category, definite=definite, context=context)
    return Problem(status or found, body)


def bad_body(message: str) -> Problem:
    """Canton's HTTP layer answers a body it cannot decode with 400 and plain text."""
    return Problem(400, f"Invalid value for: body ({message})")


def invalid_argument(message: str) -> Problem:
    return canton_problem("INVALID_ARGUMENT", message, _INVALID, definite=True)


def registry_problem(status: int, message: str) -> Problem:
    return Problem(status, {"error": message})


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


# --- command errors -------------------------------------------------------------------------------

# A ledger rejection's ``error`` → the Canton error code and category it is answered with.
_REJECTIONS: Mapping[str, tuple[str, str]] = {
    "inactive_contract": ("CONTRACT_NOT_FOUND", _MISSING),
    "max_record_time_exceeded": ("MAX_RECORD_TIME_EXCEEDED", _STATE),
    "insufficient_permissions": ("DAML_AUTHORIZATION_ERROR", _INVALID),
    "duplicate_operation": ("DUPLICATE_COMMAND", "InvalidGivenCurrentSystemStateResourceExists"),
}
_DEFAULT_REJECTION = ("DAML_INTERPRETATION_ERROR", _STATE)


def command_problem(exc: Exception, ledger: EmbeddedLedger, party: str) -> Problem:
    """A command's failure as Canton answers it: rejections are definite; a duplicate or a lost
    response is not (the command may have committed)."""
    if isinstance(exc, ResponseLostError):
        return canton_problem(
            "REQUEST_TIME_OUT",
            f"{exc.error}: {exc}",
            "DeadlineExceededRequestStateUnknown",
            definite=False,
        )
    if isinstance(exc, DuplicateCommandError):
        offset = ledger.update_offset(exc.first.update_id, party)
        context = {"existing_update_id": exc.first.update_id}
        if offset is not None:
            context["completion_offset"] = str(offset)
        code, category = _REJECTIONS[exc.error]
        return canton_problem(
            code, f"{exc.error}: {exc.message}", category, definite=False, context=context
        )
    if isinstance(exc, CommandRejectedError):
        code, category = _REJECTIONS.get(exc.error, _DEFAULT_REJECTION)
        return canton_problem(code, f"{exc.error}: {exc.message}", category, definite=True)
    if isinstance(exc, NotFoundError):
        return canton_problem("NOT_FOUND", f"{_error_name(exc)}: {exc}", _MISSING, definite=True)
    if isinstance(exc, InvalidInputError | ValueError):
        return invalid_argument(f"{_error_name(exc)}: {exc}")
    if isinstance(exc, LedgerError):
        return canton_problem("LEDGER_ERROR", f"{exc.error}: {exc}", _STATE, definite=True)
    raise exc


def _error_name(exc: Exception) -> str:
    return exc.error if isinstance(exc, SluiceError) else "invalid_input"


def completion_status(completion: Completion) -> Json:
    """A completion's ``JsStatus``: code 0 for success, else the gRPC code of its category."""
    if completion.status == "ok":
        return {"code": 0, "message": "", "details": []}
    code, category = _REJECTIONS.get(completion.error, _DEFAULT_REJECTION)
    found = wire.CATEGORIES[category]
    message = f"{code}({found.number},0): {completion.error}: {completion.message}"
    return {"code": found.grpc_code, "message": message, "details": []}


# --- auth -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerAuth:
    """HS256 JWT auth, with a client-credentials token endpoint for ``oauth_clients``
    (client id → secret)."""

    hs256_secret: str
    audience: str | None = None
    oauth_clients: Mapping[str, str] = field(default_factory=dict)
    token_ttl_s: int = 300

    def issue_token(self, subject: str, *, ttl_s: float | None = None) -> str:
        """A token for ``subject`` valid ``ttl_s`` seconds (negative: already expired)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": subject,
            "iat": now,
            "exp": now + int(self.token_ttl_s if ttl_s is None else ttl_s),
            "scope": "daml_ledger_api",
        }
        if self.audience is not None:
            claims["aud"] = self.audience
        return jwt.encode(claims, self.hs256_secret, algorithm="HS256")

    def check_token(self, token: str | None) -> str | None:
        """None if ``token`` is acceptable, else why not (``missing``/``expired``/``invalid``)."""
        if not token:
            return "missing: the request carries no access token (Authorization: Bearer <JWT>)"
        try:
            jwt.decode(
                token,
                self.hs256_secret,
                algorithms=["HS256"],
                audience=self.audience,
                options={"verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            return "expired: the access token has expired"
        except jwt.InvalidTokenError as exc:
            return f"invalid: the access token was rejected ({exc})"
        return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _token_of(scope: Scope) -> str | None:
    authorization = _header(scope, b"authorization")
    if authorization:
        kind, _, token = authorization.partition(" ")
        if kind.lower() == "bearer" and token.strip():
            return token.strip()
    if scope["type"] == "websocket":
        for subprotocol in scope.get("subprotocols", ()):
            if subprotocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
                return str(subprotocol[len(TOKEN_SUBPROTOCOL_PREFIX) :])
    return None


class AuthMiddleware:
    """Refuses protected requests without a valid token: 401, or a refused WebSocket handshake
    (HTTP 401 with the same JsCantonError body)."""

    def __init__(self, app: ASGIApp, auth: ServerAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not scope["path"].startswith(
            _PROTECTED_PREFIXES
        ):
            await self.app(scope, receive, send)
            return
        problem = self.auth.check_token(_token_of(scope))
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, body = wire.canton_error(
            "UNAUTHENTICATED", problem, "AuthInterceptorInvalidAuthenticationCredentials"
        )
        raw = orjson.dumps(body)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
            (b"www-authenticate", b'Bearer error="invalid_token"'),
        ]
        prefix = ""
        if scope["type"] == "websocket":
            prefix = "websocket."
            await receive()  # websocket.connect
        await send({"type": f"{prefix}http.response.start", "status": status, "headers": headers})
        await send({"type": f"{prefix}http.response.body", "body": raw})


def load_public_key(path: Path) -> bytes:
    """An external party's Ed25519 public key from a file: the raw 32 bytes, their hex (64
    digits) or base64, or a PEM ``PUBLIC KEY``. ``ValueError`` if it is none of these."""
    data = Path(path).read_bytes()
    if len(data) == 32:
        return data
    text = data.decode("ascii", errors="replace").strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path}: the PEM key is not an Ed25519 public key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    with contextlib.suppress(ValueError):
        raw = bytes.fromhex(text)
        if len(raw) == 32:
            return raw
    with contextlib.suppress(ValueError):
        raw = base64.b64decode(text, validate=True)
        if len(raw) == 32:
            return raw
    raise ValueError(f"{path}: not an Ed25519 public key (raw 32 bytes, hex, base64 or PEM)")


# --- reading request bodies -----------------------------------------------------------------------


async def read_body(request: Request) -> bytes:
    """The request body, refused (413, plain text) beyond :data:`REQUEST_BODY_MAX_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > REQUEST_BODY_MAX_BYTES:
                raise Problem(
                    413, f"Invalid value for: body (more than {REQUEST_BODY_MAX_BYTES} bytes)"
                )
            chunks.append(chunk)
    except ClientDisconnect:
        # The client gave up (its timeout); nobody reads an answer, nothing was done.
        raise Problem(400, "the client disconnected before sending its body") from None
    return b"".join(chunks)


def _object(raw: bytes | str) -> Json:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_body(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise bad_body(f"expected a JSON object, got {type(value).__name__}")
    return value


def _field(
    body: Mapping[str, Any], name: str, kind: type[T], *, required: bool = False
) -> T | None:
    value = body.get(name)
    if value is None:
        if required:
            raise bad_body(f"missing required field {name!r}")
        return None
    if kind is int and isinstance(value, bool):
        raise bad_body(f"{name}: expected an integer")
    if not isinstance(value, kind):
        raise bad_body(f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _offset(body: Mapping[str, Any], name: str) -> int | None:
    value = _field(body, name, int)
    if value is not None and value < 0:
        raise bad_body(f"{name} must not be negative")
    return value


def _limit(request: Request) -> int | None:
    text = request.query_params.get("limit")
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise Problem(400, f"Invalid value for: query parameter limit ({text!r})") from None
    if value < 0:
        raise Problem(400, "Invalid value for: query parameter limit (negative)")
    return value


def _event_format_party(body: Mapping[str, Any]) -> str:
    """The party of an ``updateFormat`` (or the legacy ``filter``) of an updates request."""
    update_format = body.get("updateFormat")
    if isinstance(update_format, Mapping):
        transactions = update_format.get("includeTransactions")
        if not isinstance(transactions, Mapping):
            raise invalid_argument("updateFormat.includeTransactions is required here")
        return _party_of(transactions.get("eventFormat"))
    if isinstance(body.get("filter"), Mapping):
        return _party_of(body["filter"])
    raise bad_body("missing required field 'updateFormat'")


def _party_of(event_format: object) -> str:
    try:
        return wire.requested_party(event_format)
    except InvalidInputError as exc:
        raise invalid_argument(str(exc)) from None


def _offset_after_end(offset: int, end: int, node: str) -> Problem:
    return canton_problem(
        "OFFSET_AFTER_LEDGER_END",
        f"offset {offset} is after the ledger end {end} of node {node}",
        "InvalidGivenCurrentSystemStateSeekAfterEnd",
    )


def _read_failed(exc: Exception) -> Problem:
    return canton_problem(
        "UNAVAILABLE", f"reading the ledger failed: {exc}", "TransientServerFailure"
    )


# --- streams --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Chunk:
    texts: list[str]
    last_offset: int | None = None
    exhausted: bool = False
    past_end: bool = False
    error: Exception | None = None


def _take_chunk(items: Iterator[JsonObject], count: int, end: int | None) -> _Chunk:
    """Up to ``count`` items as JSON text (in a worker thread): stops at the first item after
    ``end``, at the end of ``items``, or at a read failure (what was read before it stands)."""
    chunk = _Chunk([])
    dumps = orjson.dumps
    try:
        for _ in range(count):
            item = next(items, None)
            if item is None:
                chunk.exhausted = True
                break
            offset = item_offset(item)
            if end is not None and offset is not None and offset > end:
                chunk.past_end = True
                break
            chunk.texts.append(dumps(item).decode())
            if offset is not None:
                chunk.last_offset = offset
    except (LedgerReadError, SluiceError) as exc:
        chunk.error = exc
    return chunk


def _collect(
    items: Iterator[JsonObject], end: int | None, limit: int | None, list_limit: int
) -> bytes:
    """A list answer: at most ``limit`` items if that is within the list limit, else 413 when
    there are more than the list limit."""
    explicit = limit is not None and limit <= list_limit
    wanted = limit if explicit and limit is not None else list_limit + 1
    collected: list[JsonObject] = []
    try:
        for item in items:
            if len(collected) >= wanted:
                break
            offset = item_offset(item)
            if end is not None and offset is not None and offset > end:
                break
            collected.append(item)
    except (LedgerReadError, SluiceError) as exc:
        raise _read_failed(exc) from exc
    if not explicit and len(collected) > list_limit:
        raise _too_many(list_limit)
    return orjson.dumps(collected)


def _too_many(list_limit: int) -> Problem:
    return canton_problem(
        "MAXIMUM_LIST_ELEMENTS_NUMBER_REACHED",
        f"the answer would hold more than {list_limit} elements (the server's "
        "http-list-max-elements-limit); ask with a smaller limit or use the WebSocket",
        _INVALID,
        status=413,
    )


class _Source:
    """Where ``/v2/updates`` and the ledger end come from (the live ledger or a recorded file)."""

    def ledger_end(self, node: str) -> int:
        raise NotImplementedError

    def open_updates(self, node: str, party: str, after: int) -> Iterator[JsonObject]:
        raise NotImplementedError

    def check_party(self, node: str, party: str) -> None:
        raise NotImplementedError

    def follows(self) -> bool:
        """Whether new items can appear (worth polling for)."""
        return True


class _LiveSource(_Source):
    def __init__(self, ledger: EmbeddedLedger) -> None:
        self.ledger = ledger

    def refresh(self) -> None:
        if self.ledger.read_only:
            self.ledger.refresh()

    def ledger_end(self, node: str) -> int:
        self.refresh()
        return self.ledger.ledger_end(node)

    def open_updates(self, node: str, party: str, after: int) -> Iterator[JsonObject]:
        self.refresh()
        try:
            return iter(self.ledger.updates(party, after))
        except OffsetAfterLedgerEndError as exc:
            raise canton_problem(
                "OFFSET_AFTER_LEDGER_END", str(exc), "InvalidGivenCurrentSystemStateSeekAfterEnd"
            ) from exc

    def check_party(self, node: str, party: str) -> None:
        try:
            hosted_on = self.ledger.node_of(party)
        except UnknownPartyError:
            raise canton_problem(
                "PARTY_NOT_KNOWN_ON_LEDGER", f"unknown party {party}", _MISSING
            ) from None
        if hosted_on != node:
            raise canton_problem(
                "PERMISSION_DENIED",
                f"party {party} is not hosted on node {node}",
                "InsufficientPermission",
            )


class _ReplaySource(_Source):
    """A recorded file: one stream whatever the party; ``JsTransaction`` items are wrapped."""

    def __init__(self, update_file: UpdateFile) -> None:
        self.file = update_file
        self._end: int | None = None
        self._lock = threading.Lock()

    def ledger_end(self, node: str) -> int:
        with self._lock:
            if self._end is None:
                self._end = self.file.ledger_end()
            return self._end

    def open_updates(self, node: str, party: str, after: int) -> Iterator[JsonObject]:
        # beginExclusive 0 means "from the beginning", which a recorded file may start with an
        # item at offset 0 (normalised recordings do).
        start = None if after == 0 else after
        return (_as_update_response(item) for item in self.file.updates(party, start))

    def check_party(self, node: str, party: str) -> None:
        return None

    def follows(self) -> bool:
        return False


def _as_update_response(item: Mapping[str, Any]) -> Json:
    """A recorded item as a ``JsGetUpdatesResponse`` (items already in that shape, and items that
    cannot be read, are replayed exactly as recorded)."""
    if "update" in item:
        return dict(item)
    try:
        kind, body = unwrap_update(item)
    except MalformedUpdateError:
        return dict(item)
    if kind == "transaction":
        return {"update": {"Transaction": {"value": dict(body)}}}
    if kind == "checkpoint":
        return {"update": {"OffsetCheckpoint": {"value": dict(body)}}}
    return dict(item)


# --- the application ------------------------------------------------------------------------------


class _Api:
    """Every endpoint; ``ledger`` is None in replay mode."""

    def __init__(
        self,
        source: _Source,
        ledger: EmbeddedLedger | None,
        *,
        default_node: str,
        list_limit: int,
        external_keys: Mapping[str, bytes],
        faults: ServerFaults,
    ) -> None:
        if list_limit < 1:
            raise InvalidInputError("list_limit must be at least 1")
        self.source = source
        self._ledger = ledger
        self.default_node = default_node
        self.list_limit = list_limit
        self.external_keys = dict(external_keys)
        for party, key in self.external_keys.items():
            if len(key) != 32:
                raise InvalidInputError(f"the Ed25519 key of {party} must have 32 bytes")
        self.faults = faults

    @property
    def ledger(self) -> EmbeddedLedger:
        assert self._ledger is not None, "replay mode has no ledger"
        return self._ledger

    # --- plumbing ---------------------------------------------------------------------------------

    def _node(self, params: Mapping[str, Any]) -> str:
        node = str(params.get("node") or self.default_node)
        if self._ledger is not None and node not in self._ledger.nodes():
            raise canton_problem("NODE_NOT_FOUND", f"no node {node!r} here", _MISSING)
        return node

    async def _answer(self, work: Callable[[], Any]) -> Response:
        """Run ``work`` (ledger calls) in a worker thread; a Problem becomes its answer."""
        try:
            result = await run_in_threadpool(work)
        except Problem as problem:
            return problem.response()
        if isinstance(result, Response):
            return result
        if isinstance(result, bytes):
            return Response(result, 200, media_type="application/json")
        return _json(result)

    async def _body(self, request: Request) -> Json:
        return _object(await read_body(request))

    def _refresh(self) -> None:
        if self._ledger is not None and self._ledger.read_only:
            self._ledger.refresh()

    # --- state, version ---------------------------------------------------------------------------

    async def ledger_end(self, request: Request) -> Response:
        def work() -> Json:
            node = self._node(request.path_params)
            return {"offset": self.source.ledger_end(node)}

        return await self._answer(work)

    async def version(self, request: Request) -> Response:
        return _json(
            {
                "version": LEDGER_API_VERSION,
                "features": {
                    "experimental": {},
                    "userManagement": {
                        "supported": False,
                        "maxRightsPerUser": 0,
                        "maxUsersPageSize": 0,
                    },
                    "partyManagement": {"maxPartiesPageSize": 0},
                    "offsetCheckpoint": {
                        "maxOffsetCheckpointEmissionDelay": {"seconds": 60, "nanos": 0}
                    },
                    "packageFeature": {"maxVettedPackagesPageSize": 0},
                },
            }
        )

    async def livez(self, request: Request) -> Response:
        return _json({})

    async def unsupported(self, request: Request) -> Response:
        return canton_problem(
            "UNSUPPORTED_OPERATION",
            f"{request.method} {request.url.path} is not served here",
            "InternalUnsupportedOperation",
        ).response()

    async def unsupported_ws(self, websocket: WebSocket) -> None:
        await self._accept(websocket)
        problem = canton_problem(
            "UNSUPPORTED_OPERATION",
            f"{websocket.url.path} is not served here",
            "InternalUnsupportedOperation",
        )
        await self._send_problem(websocket, problem)

    # --- updates ----------------------------------------------------------------------------------

    def _updates_request(self, body: Json) -> tuple[str, int, int | None]:
        begin = _offset(body, "beginExclusive") or 0
        end = _offset(body, "endInclusive")
        if self._ledger is None:
            return "", begin, end
        return _event_format_party(body), begin, end

    def _open_updates(
        self, node: str, party: str, begin: int, end: int | None
    ) -> tuple[Iterator[JsonObject], int]:
        if self._ledger is not None:
            self.source.check_party(node, party)
        ledger_end = self.source.ledger_end(node)
        if begin > ledger_end:
            raise _offset_after_end(begin, ledger_end, node)
        if end is not None and end > ledger_end:
            raise _offset_after_end(end, ledger_end, node)
        if end is not None and end < begin:
            raise invalid_argument(f"endInclusive {end} is before beginExclusive {begin}")
        return self.source.open_updates(node, party, begin), ledger_end

    async def updates(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            limit = _limit(request)
            node = self._node(request.path_params)
            party, begin, end = self._updates_request(body)
        except Problem as problem:
            return problem.response()

        def work() -> bytes:
            items, _ = self._open_updates(node, party, begin, end)
            return _collect(items, end, limit, self.list_limit)

        return await self._answer(work)

    async def updates_ws(self, websocket: WebSocket) -> None:
        await self._accept(websocket)
        text = await _first_message(websocket)
        if text is None:
            return
        try:
            node = self._node(websocket.path_params)
            party, begin, end = self._updates_request(_object(text))
            items, seen_end = await run_in_threadpool(self._open_updates, node, party, begin, end)
        except Problem as problem:
            await self._send_problem(websocket, problem)
            return
        cut = self.faults.take_cut(websocket.url.path)
        await self._stream(
            websocket,
            items,
            reopen=lambda after: self.source.open_updates(node, party, after),
            ledger_end=lambda: self.source.ledger_end(node),
            position=begin,
            seen_end=seen_end,
            end=end,
            cut=cut,
            follow=self.source.follows(),
        )

    async def _stream(
        self,
        websocket: WebSocket,
        items: Iterator[JsonObject],
        *,
        reopen: Callable[[int], Iterator[JsonObject]],
        ledger_end: Callable[[], int],
        position: int,
        seen_end: int,
        end: int | None,
        cut: int | None,
        follow: bool,
    ) -> None:
        """Send ``items``; then, without ``end``, follow the ledger: whenever its end moves,
        read again after the last offset sent. Ends when the client goes."""
        closed = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(websocket, closed))
        sent = 0
        # The next chunk is read (in a worker thread) while this one is being sent.
        ahead: asyncio.Future[_Chunk] | None = None
        try:
            while True:
                if ahead is None:
                    ahead = asyncio.ensure_future(
                        run_in_threadpool(_take_chunk, items, STREAM_CHUNK_ITEMS, end)
                    )
                chunk = await ahead
                ahead = None
                if not (chunk.exhausted or chunk.past_end or chunk.error is not None):
                    ahead = asyncio.ensure_future(
                        run_in_threadpool(_take_chunk, items, STREAM_CHUNK_ITEMS, end)
                    )
                for text in chunk.texts:
                    if cut is not None and sent >= cut:
                        # The injected cut: half a message, then the TCP connection goes without
                        # a close frame (returning without websocket.close makes uvicorn's
                        # sans-I/O protocol close the transport).
                        await websocket.send_text(text[: len(text) // 2])
                        return
                    await websocket.send_text(text)
                    sent += 1
                if chunk.last_offset is not None:
                    position = max(position, chunk.last_offset)
                if chunk.error is not None:
                    await self._send_problem(websocket, _read_failed(chunk.error))
                    return
                if end is not None and (chunk.past_end or chunk.exhausted or position >= end):
                    await websocket.close(1000)
                    return
                if not chunk.exhausted:
                    continue
                while True:
                    if closed.is_set():
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(closed.wait(), POLL_INTERVAL_S)
                        return
                    if not follow:
                        continue
                    current_end = await run_in_threadpool(ledger_end)
                    if current_end != seen_end:
                        seen_end = current_end
                        break
                try:
                    items = await run_in_threadpool(reopen, position)
                except Problem as problem:
                    await self._send_problem(websocket, problem)
                    return
        except WebSocketDisconnect:
            return
        finally:
            watcher.cancel()
            if ahead is not None:
                ahead.cancel()

    # --- active contracts -------------------------------------------------------------------------

    def _active_contracts(self, node: str, body: Json) -> list[JsonObject]:
        active_at = _field(body, "activeAtOffset", int, required=True)
        assert active_at is not None
        if active_at < 0:
            raise bad_body("activeAtOffset must not be negative")
        event_format = body.get("eventFormat")
        if event_format is None and isinstance(body.get("filter"), Mapping):
            event_format = body["filter"]
        if event_format is None:
            raise bad_body("missing required field 'eventFormat'")
        party = _party_of(event_format)
        self.source.check_party(node, party)
        self._refresh()
        ledger_end = self.ledger.ledger_end(node)
        if active_at > ledger_end:
            raise _offset_after_end(active_at, ledger_end, node)
        if active_at == 0:
            return []  # "If zero, the empty set will be returned."
        if active_at < ledger_end and self.ledger.has_updates_after(party, active_at):
            raise canton_problem(
                "ACTIVE_AT_OFFSET_NOT_AVAILABLE",
                f"the embedded ledger serves active contracts at its ledger end ({ledger_end}) "
                f"or at an offset after which {party} saw no transaction; {active_at} is neither",
                _STATE,
            )
        return self.ledger.active_contracts(party)

    async def active_contracts(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            limit = _limit(request)
            node = self._node(request.path_params)
        except Problem as problem:
            return problem.response()

        def work() -> bytes:
            items = self._active_contracts(node, body)
            return _collect(iter(items), None, limit, self.list_limit)

        return await self._answer(work)

    async def active_contracts_ws(self, websocket: WebSocket) -> None:
        await self._accept(websocket)
        text = await _first_message(websocket)
        if text is None:
            return
        try:
            node = self._node(websocket.path_params)
            body = _object(text)
            items = await run_in_threadpool(self._active_contracts, node, body)
        except Problem as problem:
            await self._send_problem(websocket, problem)
            return
        with contextlib.suppress(WebSocketDisconnect):
            for item in items:
                await websocket.send_text(orjson.dumps(item).decode())
            await websocket.close(1000)

    # --- single lookups ---------------------------------------------------------------------------

    async def events_by_contract_id(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            node = self._node(request.path_params)
            contract_id = _field(body, "contractId", str, required=True)
            event_format = body.get("eventFormat")
            if event_format is None and isinstance(body.get("requestingParties"), list):
                parties = body["requestingParties"]
                event_format = {"filtersByParty": {str(p): {} for p in parties}}
            if event_format is None:
                raise bad_body("missing required field 'eventFormat'")
            party = _party_of(event_format)
        except Problem as problem:
            return problem.response()

        def work() -> JsonObject:
            self.source.check_party(node, party)
            self._refresh()
            try:
                return self.ledger.events_by_contract_id(str(contract_id), party)
            except NotFoundError as exc:
                raise canton_problem("CONTRACT_EVENTS_NOT_FOUND", str(exc), _MISSING) from exc

        return await self._answer(work)

    async def update_by_id(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            node = self._node(request.path_params)
            update_id = _field(body, "updateId", str, required=True)
            party = _event_format_party(body)
        except Problem as problem:
            return problem.response()

        def work() -> Json:
            self.source.check_party(node, party)
            self._refresh()
            try:
                return dict(self.ledger.update_by_id(str(update_id), party))
            except NotFoundError as exc:
                raise canton_problem("UPDATE_NOT_FOUND", str(exc), _MISSING) from exc

        return await self._answer(work)

    # --- commands ---------------------------------------------------------------------------------

    def _command_request(
        self, node: str, body: Json
    ) -> tuple[str, str, wire.TransferCommand | wire.InstructionCommand]:
        commands = _field(body, "commands", list, required=True)
        command_id = _field(body, "commandId", str, required=True)
        act_as = _field(body, "actAs", list, required=True)
        assert commands is not None
        assert command_id is not None
        assert act_as is not None
        if len(commands) != 1:
            raise invalid_argument(f"exactly one command is supported here, got {len(commands)}")
        if len(act_as) != 1 or not isinstance(act_as[0], str):
            raise invalid_argument("actAs must name exactly one party here")
        if not command_id:
            raise invalid_argument("commandId must not be empty")
        party: str = act_as[0]
        try:
            command = wire.decode_command(commands[0])
        except InvalidInputError as exc:
            raise invalid_argument(str(exc)) from None
        self.source.check_party(node, party)
        return party, command_id, command

    def _run_command(
        self,
        party: str,
        command_id: str,
        command: wire.TransferCommand | wire.InstructionCommand,
        max_record_time: datetime | None,
    ) -> CommandResult:
        ledger = self.ledger
        try:
            if isinstance(command, wire.TransferCommand):
                return ledger.submit_transfer(
                    command.transfer,
                    factory_id=command.factory_id,
                    context=command.context,
                    command_id=command_id,
                    act_as=[party],
                    max_record_time=max_record_time,
                )
            run = {"accept": ledger.accept, "reject": ledger.reject, "withdraw": ledger.withdraw}[
                command.choice
            ]
            return run(
                command.instruction_cid,
                party,
                command_id=command_id,
                max_record_time=max_record_time,
                context=command.context,
                extra_meta=command.meta,
            )
        except (SluiceError, ValueError) as exc:
            raise command_problem(exc, ledger, party) from exc

    def _submitted(self, party: str, result: CommandResult) -> Json:
        offset = self.ledger.update_offset(result.update_id, party)
        return {"updateId": result.update_id, "completionOffset": offset or 0}

    async def submit_and_wait(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            node = self._node(request.path_params)
        except Problem as problem:
            return problem.response()

        def work() -> Json:
            party, command_id, command = self._command_request(node, body)
            result = self._run_command(party, command_id, command, None)
            return self._submitted(party, result)

        return await self._answer(work)

    # --- external parties -------------------------------------------------------------------------

    async def prepare(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            node = self._node(request.path_params)
        except Problem as problem:
            return problem.response()

        def work() -> Json:
            party, command_id, _ = self._command_request(node, body)
            max_record_time = body.get("maxRecordTime")
            if max_record_time is not None:
                try:
                    parse_timestamp(max_record_time, field="maxRecordTime")
                except InvalidInputError as exc:
                    raise invalid_argument(str(exc)) from None
            prepared = {
                "format": "sluice-embedded-prepared-v1",
                "node": node,
                "synchronizerId": self.ledger.synchronizer_id,
                "commandId": command_id,
                "actAs": [party],
                "commands": body["commands"],
                "userId": body.get("userId") or "",
                "maxRecordTime": max_record_time,
            }
            encoded = orjson.dumps(prepared, option=orjson.OPT_SORT_KEYS)
            return {
                "preparedTransaction": base64.b64encode(encoded).decode(),
                "preparedTransactionHash": base64.b64encode(
                    hashlib.sha256(encoded).digest()
                ).decode(),
                "hashingSchemeVersion": wire.HASHING_SCHEME_VERSION,
            }

        return await self._answer(work)

    def _verified(
        self, node: str, body: Json
    ) -> tuple[str, str, wire.TransferCommand | wire.InstructionCommand, datetime | None]:
        """The command of a signed prepared transaction, once its signature is checked."""
        prepared_text = _field(body, "preparedTransaction", str, required=True)
        signatures = _field(body, "partySignatures", dict, required=True)
        _field(body, "submissionId", str, required=True)
        scheme = _field(body, "hashingSchemeVersion", str, required=True)
        assert prepared_text is not None
        assert signatures is not None
        if scheme != wire.HASHING_SCHEME_VERSION:
            raise invalid_argument(f"hashingSchemeVersion must be {wire.HASHING_SCHEME_VERSION}")
        try:
            encoded = base64.b64decode(prepared_text, validate=True)
            prepared = orjson.loads(encoded)
        except (ValueError, orjson.JSONDecodeError):
            raise invalid_argument("preparedTransaction is not one this server prepared") from None
        if (
            not isinstance(prepared, dict)
            or prepared.get("format") != "sluice-embedded-prepared-v1"
        ):
            raise invalid_argument("preparedTransaction is not one this server prepared")
        if prepared.get("node") != node:
            raise invalid_argument(
                f"the transaction was prepared on node {prepared.get('node')}, not {node}"
            )
        party, command_id, command = self._command_request(node, prepared)
        self._check_signature(party, hashlib.sha256(encoded).digest(), signatures)
        max_record_time = None
        if prepared.get("maxRecordTime") is not None:
            max_record_time = parse_timestamp(prepared["maxRecordTime"], field="maxRecordTime")
        return party, command_id, command, max_record_time

    def _check_signature(self, party: str, digest: bytes, signatures: Mapping[str, Any]) -> None:
        def refuse(cause: str) -> Problem:
            return canton_problem("INVALID_SIGNATURE", cause, _INVALID, definite=True)

        key = self.external_keys.get(party)
        if key is None:
            raise refuse(f"no external signing key is registered for party {party}")
        fingerprint = wire.key_fingerprint(key)
        entries = signatures.get("signatures")
        if not isinstance(entries, list):
            raise bad_body("partySignatures.signatures must be a list")
        offered = [
            s
            for entry in entries
            if isinstance(entry, Mapping) and entry.get("party") == party
            for s in entry.get("signatures") or ()
            if isinstance(s, Mapping)
        ]
        if not offered:
            raise refuse(f"the submission carries no signature of {party}")
        public_key = Ed25519PublicKey.from_public_bytes(key)
        for signature in offered:
            if signature.get("signedBy") != fingerprint:
                continue
            if signature.get("signingAlgorithmSpec") != wire.SIGNING_ALGORITHM:
                continue
            try:
                public_key.verify(
                    base64.b64decode(str(signature.get("signature")), validate=True), digest
                )
            except (InvalidSignature, ValueError):
                continue
            return
        raise refuse(
            f"no valid {wire.SIGNING_ALGORITHM} signature of the prepared transaction hash by "
            f"{party}'s key {fingerprint}"
        )

    async def execute(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            node = self._node(request.path_params)
        except Problem as problem:
            return problem.response()

        def work() -> Json:
            party, command_id, command, max_record_time = self._verified(node, body)
            # Asynchronous in Canton: the outcome (success or rejection) is in the completions.
            with contextlib.suppress(Problem):
                self._run_command(party, command_id, command, max_record_time)
            return {}

        return await self._answer(work)

    async def execute_and_wait(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            node = self._node(request.path_params)
        except Problem as problem:
            return problem.response()

        def work() -> Json:
            party, command_id, command, max_record_time = self._verified(node, body)
            result = self._run_command(party, command_id, command, max_record_time)
            return self._submitted(party, result)

        return await self._answer(work)

    # --- completions ------------------------------------------------------------------------------

    def _completions_request(self, node: str, body: Json) -> tuple[list[str], int, str]:
        parties = _field(body, "parties", list, required=True)
        assert parties is not None
        if not parties or not all(isinstance(p, str) for p in parties):
            raise invalid_argument("parties must name at least one party")
        for party in parties:
            self.source.check_party(node, party)
        begin = _offset(body, "beginExclusive") or 0
        user_id = _field(body, "userId", str) or ""
        return list(dict.fromkeys(parties)), begin, user_id

    def _completion_items(
        self, node: str, parties: Sequence[str], begin: int, user_id: str, after_sequence: int
    ) -> tuple[list[Json], int]:
        """Completions of ``parties`` after ``after_sequence`` whose offset is after ``begin``,
        and the last sequence number looked at."""
        self._refresh()
        ledger = self.ledger
        found: dict[int, Completion] = {}
        for party in parties:
            for completion in ledger.completions(party, after_sequence):
                found[completion.sequence] = completion
        items: list[Json] = []
        last = after_sequence
        for sequence in sorted(found):
            completion = found[sequence]
            last = sequence
            offset = completion.offset
            if offset is None:
                # A rejection has no offset of its own here (Canton gives it one): it is placed
                # at the node's last offset before it and still served to a reader resuming from
                # that offset, who may see it twice but never misses it.
                offset = ledger.offset_at_record_time(node, completion.record_time)
                if offset < begin:
                    continue
            elif offset <= begin:
                continue
            value: Json = {
                "commandId": completion.command_id,
                "userId": user_id,
                "actAs": [p for p in completion.act_as if p in parties],
                "offset": offset,
                "synchronizerTime": {
                    "synchronizerId": ledger.synchronizer_id,
                    "recordTime": format_timestamp(completion.record_time),
                },
                "status": completion_status(completion),
            }
            if completion.update_id is not None:
                value["updateId"] = completion.update_id
            items.append({"completionResponse": {"Completion": {"value": value}}})
        return items, last

    async def completions(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            limit = _limit(request)
            node = self._node(request.path_params)
        except Problem as problem:
            return problem.response()

        def work() -> bytes:
            parties, begin, user_id = self._completions_request(node, body)
            items, _ = self._completion_items(node, parties, begin, user_id, 0)
            return _collect(iter(items), None, limit, self.list_limit)

        return await self._answer(work)

    async def completions_ws(self, websocket: WebSocket) -> None:
        await self._accept(websocket)
        text = await _first_message(websocket)
        if text is None:
            return
        try:
            node = self._node(websocket.path_params)
            body = _object(text)
            parties, begin, user_id = await run_in_threadpool(self._completions_request, node, body)
        except Problem as problem:
            await self._send_problem(websocket, problem)
            return
        closed = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(websocket, closed))
        ledger = self.ledger
        sequence = 0
        seen = -1
        try:
            while not closed.is_set():
                current = await run_in_threadpool(ledger.completion_sequence)
                if current != seen:
                    seen = current
                    items, sequence = await run_in_threadpool(
                        self._completion_items, node, parties, begin, user_id, sequence
                    )
                    for item in items:
                        await websocket.send_text(orjson.dumps(item).decode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closed.wait(), POLL_INTERVAL_S)
        except WebSocketDisconnect:
            return
        finally:
            watcher.cancel()

    # --- WebSocket plumbing -----------------------------------------------------------------------

    async def _accept(self, websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(
            subprotocol=AUTH_SUBPROTOCOL if AUTH_SUBPROTOCOL in offered else None
        )

    async def _send_problem(self, websocket: WebSocket, problem: Problem) -> None:
        code = 1011 if problem.status >= 500 else 1008
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.send_text(orjson.dumps(problem.canton_body()).decode())
            await websocket.close(code)


async def _first_message(websocket: WebSocket) -> str | None:
    """The request message of a stream (None if the client went away first)."""
    try:
        message = await websocket.receive()
    except WebSocketDisconnect:
        return None
    if message["type"] == "websocket.disconnect":
        return None
    text = message.get("text")
    if text is None:
        raw = message.get("bytes") or b""
        text = raw.decode("utf-8", errors="replace")
    return str(text)


async def _watch_disconnect(websocket: WebSocket, closed: asyncio.Event) -> None:
    """Reads (and ignores) what the client sends until it disconnects."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return
    finally:
        closed.set()


# --- the Registry API -----------------------------------------------------------------------------


class _RegistryApi:
    def __init__(self, ledger: EmbeddedLedger) -> None:
        self.ledger = ledger

    async def _answer(self, work: Callable[[], Any]) -> Response:
        try:
            return _json(await run_in_threadpool(work))
        except Problem as problem:
            return problem.response()

    def _registry(self, admin: str) -> Any:
        try:
            return self.ledger.registry(admin)
        except NotFoundError as exc:
            raise registry_problem(404, str(exc)) from exc

    def _translate(self, work: Callable[[], T]) -> T:
        try:
            return work()
        except NotFoundError as exc:
            raise registry_problem(404, str(exc)) from exc
        except LedgerError as exc:
            raise registry_problem(
                404 if exc.error == "inactive_contract" else 400, str(exc)
            ) from exc
        except (InvalidInputError, ValueError) as exc:
            raise registry_problem(400, str(exc)) from exc

    async def _request_object(self, request: Request) -> Json:
        try:
            raw = await read_body(request)
        except Problem:
            raise registry_problem(413, "the body is too large") from None
        try:
            value = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            raise registry_problem(400, f"the body is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise registry_problem(400, "the body must be a JSON object")
        return value

    async def transfer_factory(self, request: Request) -> Response:
        admin = request.path_params["admin"]
        try:
            body = await self._request_object(request)
        except Problem as problem:
            return problem.response()

        def work() -> Json:
            arguments = body.get("choiceArguments")
            if not isinstance(arguments, Mapping):
                raise registry_problem(400, "choiceArguments is required")
            expected = arguments.get("expectedAdmin")
            if expected != admin:
                raise registry_problem(
                    400, f"expectedAdmin {expected!r} is not this registry's admin {admin}"
                )
            registry = self._registry(admin)
            transfer_value = arguments.get("transfer")
            if not isinstance(transfer_value, Mapping):
                raise registry_problem(400, "choiceArguments.transfer is required")
            transfer = self._translate(lambda: parse_transfer(transfer_value))
            factory = self._translate(lambda: registry.transfer_factory(transfer))
            answer: Json = factory.as_json()
            if body.get("excludeDebugFields") is True:
                _drop_debug(answer["choiceContext"])
            return answer

        return await self._answer(work)

    async def choice_context(self, request: Request) -> Response:
        admin = request.path_params["admin"]
        instruction_id = request.path_params["instruction_id"]
        choice = request.path_params["choice"]
        try:
            body = await self._request_object(request)
        except Problem as problem:
            return problem.response()

        def work() -> Json:
            registry = self._registry(admin)
            ask = {
                "accept": registry.accept_context,
                "reject": registry.reject_context,
                "withdraw": registry.withdraw_context,
            }.get(choice)
            if ask is None:
                raise registry_problem(404, f"no choice context for {choice!r}")
            context = self._translate(lambda: ask(instruction_id))
            answer: Json = context.as_json()
            if body.get("excludeDebugFields") is True:
                _drop_debug(answer)
            return answer

        return await self._answer(work)

    async def info(self, request: Request) -> Response:
        admin = request.path_params["admin"]
        return await self._answer(lambda: self._registry(admin).info())

    async def instruments(self, request: Request) -> Response:
        admin = request.path_params["admin"]
        size_text = request.query_params.get("pageSize", "25")
        token = request.query_params.get("pageToken")

        def work() -> Json:
            try:
                size = int(size_text)
            except ValueError:
                raise registry_problem(400, f"pageSize {size_text!r} is not a number") from None
            if not 1 <= size <= PAGE_SIZE_MAX:
                raise registry_problem(400, f"pageSize must be between 1 and {PAGE_SIZE_MAX}")
            found = self._registry(admin).instruments()
            start = 0
            if token:
                ids = [i.id for i in found]
                if token not in ids:
                    raise registry_problem(400, f"unknown pageToken {token!r}")
                start = ids.index(token) + 1
            page = found[start : start + size]
            answer: Json = {"instruments": [i.as_json() for i in page]}
            if start + size < len(found):
                answer["nextPageToken"] = page[-1].id
            return answer

        return await self._answer(work)

    async def instrument(self, request: Request) -> Response:
        admin = request.path_params["admin"]
        instrument_id = request.path_params["instrument_id"]

        def work() -> Json:
            registry = self._registry(admin)
            found = self._translate(lambda: registry.instrument(instrument_id))
            answer: Json = found.as_json()
            return answer

        return await self._answer(work)


def _drop_debug(context: Json) -> None:
    for contract in context.get("disclosedContracts", []):
        for key in [k for k in contract if k.startswith("debug")]:
            del contract[key]


# --- sandbox control and OAuth --------------------------------------------------------------------


class _Control:
    def __init__(self, ledger: EmbeddedLedger) -> None:
        self.ledger = ledger

    async def call(self, request: Request) -> Response:
        method = request.path_params["method"]
        try:
            raw = await read_body(request)
        except Problem:
            return _json(error_json(InvalidInputError("the body is too large"))[1], 413)

        def work() -> Response:
            try:
                payload = orjson.loads(raw or b"{}")
                arguments = decode_arguments(method, payload)
                result = getattr(self.ledger, method)(**arguments)
                return _json(to_json(result))
            except orjson.JSONDecodeError as exc:
                status, body = error_json(InvalidInputError(f"the body is not JSON: {exc}"))
            except (SluiceError, ValueError) as exc:
                status, body = error_json(exc)
            return _json(body, status)

        answer: Response = await run_in_threadpool(work)
        return answer


class _OAuth:
    def __init__(self, auth: ServerAuth) -> None:
        self.auth = auth

    async def token(self, request: Request) -> Response:
        try:
            raw = (await read_body(request)).decode("utf-8", errors="replace")
        except Problem:
            return _json({"error": "invalid_request"}, 413)
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("basic "):
            with contextlib.suppress(ValueError):
                decoded = base64.b64decode(authorization[6:].strip()).decode()
                client_id, _, secret = decoded.partition(":")
                form.setdefault("client_id", client_id)
                form.setdefault("client_secret", secret)
        if form.get("grant_type") != "client_credentials":
            return _json({"error": "unsupported_grant_type"}, 400)
        client_id = form.get("client_id", "")
        expected = self.auth.oauth_clients.get(client_id)
        if expected is None or form.get("client_secret") != expected:
            return _json({"error": "invalid_client"}, 401)
        return _json(
            {
                "access_token": self.auth.issue_token(client_id),
                "token_type": "Bearer",
                "expires_in": self.auth.token_ttl_s,
            }
        )


# --- assembling the app ---------------------------------------------------------------------------


def _ledger_routes(api: _Api) -> list[BaseRoute]:
    return [
        Route("/v2/state/ledger-end", api.ledger_end, methods=["GET"]),
        Route("/v2/version", api.version, methods=["GET"]),
        Route("/v2/updates", api.updates, methods=["POST"]),
        WebSocketRoute("/v2/updates", api.updates_ws),
        Route("/v2/state/active-contracts", api.active_contracts, methods=["POST"]),
        WebSocketRoute("/v2/state/active-contracts", api.active_contracts_ws),
        Route("/v2/events/events-by-contract-id", api.events_by_contract_id, methods=["POST"]),
        Route("/v2/updates/update-by-id", api.update_by_id, methods=["POST"]),
        Route("/v2/commands/submit-and-wait", api.submit_and_wait, methods=["POST"]),
        Route("/v2/commands/completions", api.completions, methods=["POST"]),
        WebSocketRoute("/v2/commands/completions", api.completions_ws),
        Route("/v2/interactive-submission/prepare", api.prepare, methods=["POST"]),
        Route("/v2/interactive-submission/execute", api.execute, methods=["POST"]),
        Route("/v2/interactive-submission/executeAndWait", api.execute_and_wait, methods=["POST"]),
        Route(
            "/v2/{rest:path}", api.unsupported, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]
        ),
        WebSocketRoute("/v2/{rest:path}", api.unsupported_ws),
    ]


def _replay_routes(api: _Api) -> list[BaseRoute]:
    return [
        Route("/v2/state/ledger-end", api.ledger_end, methods=["GET"]),
        Route("/v2/version", api.version, methods=["GET"]),
        Route("/v2/updates", api.updates, methods=["POST"]),
        WebSocketRoute("/v2/updates", api.updates_ws),
        Route(
            "/v2/{rest:path}", api.unsupported, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]
        ),
        WebSocketRoute("/v2/{rest:path}", api.unsupported_ws),
    ]


def _registry_routes(registry: _RegistryApi) -> list[BaseRoute]:
    return [
        Route(
            "/transfer-instruction/v1/transfer-factory",
            registry.transfer_factory,
            methods=["POST"],
        ),
        Route(
            "/transfer-instruction/v1/{instruction_id}/choice-contexts/{choice}",
            registry.choice_context,
            methods=["POST"],
        ),
        Route("/metadata/v1/info", registry.info, methods=["GET"]),
        Route("/metadata/v1/instruments", registry.instruments, methods=["GET"]),
        Route("/metadata/v1/instruments/{instrument_id}", registry.instrument, methods=["GET"]),
    ]


def _assemble(
    api: _Api, routes: list[BaseRoute], extra: list[BaseRoute], auth: ServerAuth | None
) -> ASGIApp:
    all_routes: list[BaseRoute] = [
        Route("/livez", api.livez, methods=["GET"]),
        Route("/readyz", api.livez, methods=["GET"]),
        *extra,
        Mount("/nodes/{node}", routes=routes),
        *routes,
    ]
    if auth is not None:
        all_routes.insert(0, Route("/oauth/token", _OAuth(auth).token, methods=["POST"]))
    app: ASGIApp = Starlette(routes=all_routes)
    if auth is not None:
        app = AuthMiddleware(app, auth)
    return FaultMiddleware(app, api.faults)


def build_app(
    ledger: EmbeddedLedger,
    *,
    default_node: str = "exchange",
    list_limit: int = 200,
    auth: ServerAuth | None = None,
    external_keys: Mapping[str, bytes] | None = None,
    control: bool = True,
    faults: ServerFaults | None = None,
) -> ASGIApp:
    """The ASGI application serving ``ledger`` (see the module docstring)."""
    api = _Api(
        _LiveSource(ledger),
        ledger,
        default_node=default_node,
        list_limit=list_limit,
        external_keys=external_keys or {},
        faults=faults or ServerFaults(),
    )
    registry = _RegistryApi(ledger)
    extra: list[BaseRoute] = [
        Mount("/registries/{admin}/registry", routes=_registry_routes(registry))
    ]
    if control:
        extra.append(Route(CONTROL_PATH + "/{method}", _Control(ledger).call, methods=["POST"]))
    return _assemble(api, _ledger_routes(api), extra, auth)


def build_replay_app(
    update_file: UpdateFile | str | Path,
    *,
    list_limit: int = 200,
    auth: ServerAuth | None = None,
    faults: ServerFaults | None = None,
) -> ASGIApp:
    """The ASGI application replaying a recorded update file (see the module docstring)."""
    source_file = update_file if isinstance(update_file, UpdateFile) else UpdateFile(update_file)
    api = _Api(
        _ReplaySource(source_file),
        None,
        default_node="replay",
        list_limit=list_limit,
        external_keys={},
        faults=faults or ServerFaults(),
    )
    extra: list[BaseRoute] = [
        Route("/registries/{rest:path}", api.unsupported, methods=["GET", "POST"]),
        Route(CONTROL_PATH + "/{rest:path}", api.unsupported, methods=["POST"]),
    ]
    return _assemble(api, _replay_routes(api), extra, auth)


# --- the server -----------------------------------------------------------------------------------


class LedgerServer:
    """An HTTP/WebSocket server for an embedded ledger (or a recorded file, :meth:`replay`).

    ``start()`` runs it on a thread of its own (``port=0`` picks a free port; see :attr:`url`);
    ``stop()`` shuts it down gracefully within a bound; ``serve_forever()`` blocks until SIGINT /
    SIGTERM, then stops. ``faults`` injects transport faults (:mod:`.server_faults`).
    """

    def __init__(
        self,
        ledger: EmbeddedLedger | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default_node: str = "exchange",
        list_limit: int = 200,
        auth: ServerAuth | None = None,
        external_keys: Mapping[str, bytes] | None = None,
        control: bool = True,
        app: ASGIApp | None = None,
        faults: ServerFaults | None = None,
    ) -> None:
        self.ledger = ledger
        self.host = host
        self.faults = faults or ServerFaults()
        if app is None:
            if ledger is None:
                raise InvalidInputError("a LedgerServer needs a ledger (or use replay())")
            app = build_app(
                ledger,
                default_node=default_node,
                list_limit=list_limit,
                auth=auth,
                external_keys=external_keys,
                control=control,
                faults=self.faults,
            )
        self.app = app
        self._requested_port = port
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def replay(
        cls,
        update_file_path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        list_limit: int = 200,
        auth: ServerAuth | None = None,
    ) -> LedgerServer:
        """A read-only server replaying a file of recorded updates (:class:`UpdateFile`)."""
        faults = ServerFaults()
        app = build_replay_app(update_file_path, list_limit=list_limit, auth=auth, faults=faults)
        return cls(None, host=host, port=port, app=app, faults=faults)

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("the server is not bound yet; call start()")
        port: int = self._socket.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def node_url(self, node: str) -> str:
        """The participant URL of ``node`` (the client appends ``/v2/...``)."""
        return f"{self.url}/nodes/{node}"

    def registry_url(self, admin: str) -> str:
        """The Registry API URL of ``admin`` (the client appends ``/registry/...``)."""
        return f"{self.url}/registries/{admin}"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only then
        # (without it every answer written in two parts waits ~40 ms for a delayed ACK).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
            sock.listen(512)
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self._socket = sock
        return sock

    def _uvicorn(self, graceful_s: float) -> uvicorn.Server:
        config = uvicorn.Config(
            self.app,
            ws="websockets-sansio",
            http="h11",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=max(1, int(graceful_s)),
            ws_ping_interval=None,
            # Compressing every message costs more than it saves next to the ledger (and Canton's
            # JSON API does not offer it either).
            ws_per_message_deflate=False,
        )
        return uvicorn.Server(config)

    def start(self, *, timeout_s: float = 10.0) -> LedgerServer:
        """Serve on a background thread; returns once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        sock = self._bind()
        server = self._uvicorn(timeout_s)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="sluice-ledger-server", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop(timeout_s=1.0)
                raise RuntimeError(f"the ledger server did not start within {timeout_s} s")
            time.sleep(0.005)
        return self

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop serving: open connections get up to ``timeout_s`` to finish, then are cut."""
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout_s)
            if thread.is_alive():
                server.force_exit = True
                thread.join(timeout_s)
        self._server = self._thread = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def serve_forever(self, *, on_ready: Callable[[str], None] | None = None) -> None:
        """Serve until SIGINT / SIGTERM, then stop gracefully and return (the signals are the
        server's while it runs; the previous handlers come back afterwards). ``on_ready`` is
        called with the URL once the server accepts connections."""
        self.start()
        stopping = threading.Event()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for handled in (signal.SIGINT, signal.SIGTERM):
                previous[handled] = signal.signal(handled, lambda *_: stopping.set())
        try:
            if on_ready is not None:
                on_ready(self.url)
            while not stopping.is_set() and self._thread is not None and self._thread.is_alive():
                stopping.wait(0.5)
        finally:
            for handled, handler in previous.items():
                signal.signal(handled, handler)
            self.stop()

    def __enter__(self) -> LedgerServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "LedgerServer",
    "Problem",
    "ServerAuth",
    "ServerFaults",
    "build_app",
    "build_replay_app",
    "command_problem",
    "completion_status",
    "load_public_key",
]
