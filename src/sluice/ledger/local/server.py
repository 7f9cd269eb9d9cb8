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

This module assembles the app (routes, sandbox control, middleware) and runs the server. The
parts: :mod:`.server_api` (what every endpoint shares, ledger end and version),
:mod:`.server_reads` (updates, active contracts, lookups), :mod:`.server_commands` (submission,
interactive submission, completions), :mod:`.server_registry` (the Registry API),
:mod:`.server_streams` (update sources, lists and WebSocket streams), :mod:`.server_requests`
(reading request bodies), :mod:`.server_problems` (error answers), :mod:`.server_auth` (JWTs and
the token endpoint) and :mod:`.server_faults` (transport faults).
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute

from sluice.domain.errors import InvalidInputError, SluiceError
from sluice.ledger.file import UpdateFile

from .engine import EmbeddedLedger
from .remote import CONTROL_PATH, decode_arguments, error_json, to_json
from .server_auth import AuthMiddleware, OAuthTokens, ServerAuth
from .server_commands import CommandApi, load_public_key
from .server_faults import ASGIApp, FaultMiddleware, ServerFaults
from .server_problems import Problem, command_problem, completion_status, json_response
from .server_reads import ReadApi
from .server_registry import RegistryApi, registry_routes
from .server_requests import read_body
from .server_streams import LiveSource, ReplaySource

# --- sandbox control -----------------------------------------------------------------------------


class _Control:
    def __init__(self, ledger: EmbeddedLedger) -> None:
        self.ledger = ledger

    async def call(self, request: Request) -> Response:
        method = request.path_params["method"]
        try:
            raw = await read_body(request)
        except Problem:
            return json_response(error_json(InvalidInputError("the body is too large"))[1], 413)

        def work() -> Response:
            try:
                payload = orjson.loads(raw or b"{}")
                arguments = decode_arguments(method, payload)
                result = getattr(self.ledger, method)(**arguments)
                return json_response(to_json(result))
            except orjson.JSONDecodeError as exc:
                status, body = error_json(InvalidInputError(f"the body is not JSON: {exc}"))
            except (SluiceError, ValueError) as exc:
                status, body = error_json(exc)
            return json_response(body, status)

        answer: Response = await run_in_threadpool(work)
        return answer


# --- assembling the app ---------------------------------------------------------------------------


class LedgerApi(ReadApi, CommandApi):
    """Every JSON Ledger API endpoint; ``ledger`` is None in replay mode."""


def _ledger_routes(api: LedgerApi) -> list[BaseRoute]:
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


def _replay_routes(api: LedgerApi) -> list[BaseRoute]:
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


def _assemble(
    api: LedgerApi, routes: list[BaseRoute], extra: list[BaseRoute], auth: ServerAuth | None
) -> ASGIApp:
    all_routes: list[BaseRoute] = [
        Route("/livez", api.livez, methods=["GET"]),
        Route("/readyz", api.livez, methods=["GET"]),
        *extra,
        Mount("/nodes/{node}", routes=routes),
        *routes,
    ]
    if auth is not None:
        all_routes.insert(0, Route("/oauth/token", OAuthTokens(auth).token, methods=["POST"]))
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
    api = LedgerApi(
        LiveSource(ledger),
        ledger,
        default_node=default_node,
        list_limit=list_limit,
        external_keys=external_keys or {},
        faults=faults or ServerFaults(),
    )
    registry = RegistryApi(ledger)
    extra: list[BaseRoute] = [
        Mount("/registries/{admin}/registry", routes=registry_routes(registry))
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
    api = LedgerApi(
        ReplaySource(source_file),
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
    "AuthMiddleware",
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
