"""The JSON Ledger API v2 reads of the embedded ledger's server: ``/v2/updates`` (list and
WebSocket), ``/v2/state/active-contracts`` (list and WebSocket), events by contract id and
update by id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from sluice.domain.errors import NotFoundError
from sluice.ledger.wire import Json
from sluice.ports import JsonObject

from .server_api import JsonApi
from .server_problems import (
    CATEGORY_MISSING,
    CATEGORY_STATE,
    Problem,
    bad_body,
    canton_problem,
    invalid_argument,
    offset_after_end,
)
from .server_requests import (
    body_field,
    body_object,
    body_offset,
    event_format_party,
    party_of,
    query_limit,
)
from .server_streams import (
    accept_websocket,
    collect_list,
    first_message,
    send_problem,
    stream_items,
)


class ReadApi(JsonApi):
    """Updates, active contracts and single lookups."""

    # --- updates ----------------------------------------------------------------------------------

    def _updates_request(self, body: Json) -> tuple[str, int, int | None]:
        begin = body_offset(body, "beginExclusive") or 0
        end = body_offset(body, "endInclusive")
        if self._ledger is None:
            return "", begin, end
        return event_format_party(body), begin, end

    def _open_updates(
        self, node: str, party: str, begin: int, end: int | None
    ) -> tuple[Iterator[JsonObject], int]:
        if self._ledger is not None:
            self.source.check_party(node, party)
        ledger_end = self.source.ledger_end(node)
        if begin > ledger_end:
            raise offset_after_end(begin, ledger_end, node)
        if end is not None and end > ledger_end:
            raise offset_after_end(end, ledger_end, node)
        if end is not None and end < begin:
            raise invalid_argument(f"endInclusive {end} is before beginExclusive {begin}")
        return self.source.open_updates(node, party, begin), ledger_end

    async def updates(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            limit = query_limit(request)
            node = self._node(request.path_params)
            party, begin, end = self._updates_request(body)
        except Problem as problem:
            return problem.response()

        def work() -> bytes:
            items, _ = self._open_updates(node, party, begin, end)
            return collect_list(items, end, limit, self.list_limit)

        return await self._answer(work)

    async def updates_ws(self, websocket: WebSocket) -> None:
        await accept_websocket(websocket)
        text = await first_message(websocket)
        if text is None:
            return
        try:
            node = self._node(websocket.path_params)
            party, begin, end = self._updates_request(body_object(text))
            items, seen_end = await run_in_threadpool(self._open_updates, node, party, begin, end)
        except Problem as problem:
            await send_problem(websocket, problem)
            return
        cut = self.faults.take_cut(websocket.url.path)
        await stream_items(
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

    # --- active contracts -------------------------------------------------------------------------

    def _active_contracts(self, node: str, body: Json) -> list[JsonObject]:
        active_at = body_field(body, "activeAtOffset", int, required=True)
        assert active_at is not None
        if active_at < 0:
            raise bad_body("activeAtOffset must not be negative")
        event_format = body.get("eventFormat")
        if event_format is None and isinstance(body.get("filter"), Mapping):
            event_format = body["filter"]
        if event_format is None:
            raise bad_body("missing required field 'eventFormat'")
        party = party_of(event_format)
        self.source.check_party(node, party)
        self._refresh()
        ledger_end = self.ledger.ledger_end(node)
        if active_at > ledger_end:
            raise offset_after_end(active_at, ledger_end, node)
        if active_at == 0:
            return []  # "If zero, the empty set will be returned."
        if active_at < ledger_end and self.ledger.has_updates_after(party, active_at):
            raise canton_problem(
                "ACTIVE_AT_OFFSET_NOT_AVAILABLE",
                f"the embedded ledger serves active contracts at its ledger end ({ledger_end}) "
                f"or at an offset after which {party} saw no transaction; {active_at} is neither",
                CATEGORY_STATE,
            )
        return self.ledger.active_contracts(party)

    async def active_contracts(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            limit = query_limit(request)
            node = self._node(request.path_params)
        except Problem as problem:
            return problem.response()

        def work() -> bytes:
            items = self._active_contracts(node, body)
            return collect_list(iter(items), None, limit, self.list_limit)

        return await self._answer(work)

    async def active_contracts_ws(self, websocket: WebSocket) -> None:
        await accept_websocket(websocket)
        text = await first_message(websocket)
        if text is None:
            return
        try:
            node = self._node(websocket.path_params)
            body = body_object(text)
            items = await run_in_threadpool(self._active_contracts, node, body)
        except Problem as problem:
            await send_problem(websocket, problem)
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
            contract_id = body_field(body, "contractId", str, required=True)
            event_format = body.get("eventFormat")
            if event_format is None and isinstance(body.get("requestingParties"), list):
                parties = body["requestingParties"]
                event_format = {"filtersByParty": {str(p): {} for p in parties}}
            if event_format is None:
                raise bad_body("missing required field 'eventFormat'")
            party = party_of(event_format)
        except Problem as problem:
            return problem.response()

        def work() -> JsonObject:
            self.source.check_party(node, party)
            self._refresh()
            try:
                return self.ledger.events_by_contract_id(str(contract_id), party)
            except NotFoundError as exc:
                raise canton_problem(
                    "CONTRACT_EVENTS_NOT_FOUND", str(exc), CATEGORY_MISSING
                ) from exc

        return await self._answer(work)

    async def update_by_id(self, request: Request) -> Response:
        try:
            body = await self._body(request)
            node = self._node(request.path_params)
            update_id = body_field(body, "updateId", str, required=True)
            party = event_format_party(body)
        except Problem as problem:
            return problem.response()

        def work() -> Json:
            self.source.check_party(node, party)
            self._refresh()
            try:
                return dict(self.ledger.update_by_id(str(update_id), party))
            except NotFoundError as exc:
                raise canton_problem("UPDATE_NOT_FOUND", str(exc), CATEGORY_MISSING) from exc

        return await self._answer(work)
