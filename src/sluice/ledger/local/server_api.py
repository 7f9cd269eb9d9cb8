"""What every JSON Ledger API endpoint of the embedded ledger's server shares: the node a request
is for, answering from a worker thread, the request body; and the plain endpoints (ledger end,
version, health, what is not served).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from sluice.domain.errors import InvalidInputError
from sluice.ledger.wire import Json

from .engine import EmbeddedLedger
from .server_faults import ServerFaults
from .server_problems import CATEGORY_MISSING, Problem, canton_problem, json_response
from .server_requests import body_object, read_body
from .server_streams import UpdateSource, accept_websocket, send_problem

LEDGER_API_VERSION = "3.4.12"


class JsonApi:
    """What the endpoints share: where updates come from, the ledger (None in replay mode), the
    default node, the list limit, the external parties' keys and the transport faults."""

    def __init__(
        self,
        source: UpdateSource,
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
            raise canton_problem("NODE_NOT_FOUND", f"no node {node!r} here", CATEGORY_MISSING)
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
        return json_response(result)

    async def _body(self, request: Request) -> Json:
        return body_object(await read_body(request))

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
        return json_response(
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
        return json_response({})

    async def unsupported(self, request: Request) -> Response:
        return canton_problem(
            "UNSUPPORTED_OPERATION",
            f"{request.method} {request.url.path} is not served here",
            "InternalUnsupportedOperation",
        ).response()

    async def unsupported_ws(self, websocket: WebSocket) -> None:
        await accept_websocket(websocket)
        problem = canton_problem(
            "UNSUPPORTED_OPERATION",
            f"{websocket.url.path} is not served here",
            "InternalUnsupportedOperation",
        )
        await send_problem(websocket, problem)
