"""Lists and streams of the embedded ledger's server: where ``/v2/updates`` reads from (the live
ledger or a recorded file), list answers bounded by the list limit, and the WebSocket side —
accepting, the request message, chunks read in a worker thread while the last is sent,
following the ledger end, and ending with a JsCantonError and a close code.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect

from sluice.domain.errors import MalformedUpdateError, SluiceError
from sluice.domain.history import item_offset, unwrap_update
from sluice.ledger.file import UpdateFile
from sluice.ledger.wire import Json
from sluice.ports import JsonObject, LedgerReadError

from .engine import EmbeddedLedger, OffsetAfterLedgerEndError, UnknownPartyError
from .server_auth import AUTH_SUBPROTOCOL
from .server_problems import (
    CATEGORY_MISSING,
    Problem,
    canton_problem,
    read_failed,
    too_many_elements,
)

POLL_INTERVAL_S = 0.02
# Items read from the ledger per worker-thread hop of a stream (bounded work per tick).
STREAM_CHUNK_ITEMS = 256


@dataclass(slots=True)
class Chunk:
    texts: list[str]
    last_offset: int | None = None
    exhausted: bool = False
    past_end: bool = False
    error: Exception | None = None


def take_chunk(items: Iterator[JsonObject], count: int, end: int | None) -> Chunk:
    """Up to ``count`` items as JSON text (in a worker thread): stops at the first item after
    ``end``, at the end of ``items``, or at a read failure (what was read before it stands)."""
    chunk = Chunk([])
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


def collect_list(
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
        raise read_failed(exc) from exc
    if not explicit and len(collected) > list_limit:
        raise too_many_elements(list_limit)
    return orjson.dumps(collected)


class UpdateSource:
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


class LiveSource(UpdateSource):
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
                "PARTY_NOT_KNOWN_ON_LEDGER", f"unknown party {party}", CATEGORY_MISSING
            ) from None
        if hosted_on != node:
            raise canton_problem(
                "PERMISSION_DENIED",
                f"party {party} is not hosted on node {node}",
                "InsufficientPermission",
            )


class ReplaySource(UpdateSource):
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


async def stream_items(
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
    watcher = asyncio.create_task(watch_disconnect(websocket, closed))
    sent = 0
    # The next chunk is read (in a worker thread) while this one is being sent.
    ahead: asyncio.Future[Chunk] | None = None
    try:
        while True:
            if ahead is None:
                ahead = asyncio.ensure_future(
                    run_in_threadpool(take_chunk, items, STREAM_CHUNK_ITEMS, end)
                )
            chunk = await ahead
            ahead = None
            if not (chunk.exhausted or chunk.past_end or chunk.error is not None):
                ahead = asyncio.ensure_future(
                    run_in_threadpool(take_chunk, items, STREAM_CHUNK_ITEMS, end)
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
                await send_problem(websocket, read_failed(chunk.error))
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
                await send_problem(websocket, problem)
                return
    except WebSocketDisconnect:
        return
    finally:
        watcher.cancel()
        if ahead is not None:
            ahead.cancel()


async def accept_websocket(websocket: WebSocket) -> None:
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=AUTH_SUBPROTOCOL if AUTH_SUBPROTOCOL in offered else None)


async def send_problem(websocket: WebSocket, problem: Problem) -> None:
    code = 1011 if problem.status >= 500 else 1008
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.send_text(orjson.dumps(problem.canton_body()).decode())
        await websocket.close(code)


async def first_message(websocket: WebSocket) -> str | None:
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


async def watch_disconnect(websocket: WebSocket, closed: asyncio.Event) -> None:
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
