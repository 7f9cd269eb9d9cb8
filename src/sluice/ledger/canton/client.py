"""The reading side of a participant node's JSON Ledger API v2: :class:`CantonLedgerClient`.

It implements :class:`sluice.ports.LedgerClient` and adds the reads an operator needs (active
contracts, an update by id, the events of a contract, completions).

What it guarantees to ingestion, whose cursor must never move past an update that was not stored:

* :meth:`CantonLedgerClient.updates` reads the ledger end first and yields, in offset order, only
  items it received whole and decoded, each with a readable offset greater than the previous one
  and at most that end. Any failure part-way raises :class:`CantonReadError` (a
  :class:`sluice.ports.LedgerReadError`) after the items already yielded, which stand: a
  JsCantonError message (an offset after the ledger end too), a message that is not JSON or has
  no offset, a connection closed abnormally, a receive timeout, the node unreachable.
* A WebSocket stream that the node closes normally before an item at the ledger end is only taken
  as complete when the HTTP list form confirms that nothing of the party's lies between the last
  item and the end (a bounded stream need not end with an item at the end: the last offsets may
  belong to other parties on the node). Otherwise it is a cut stream and raises.
* A node without the WebSocket endpoint (404 / 405 / 501 at the upgrade) is read with the HTTP list
  form from then on (logged once): pages of ``page_size`` items, ``beginExclusive`` advancing to
  the last offset received, ``endInclusive`` the ledger end; a 413 halves the page (down to one).

The port's methods (``ledger_end``, ``updates``, ``offset_at_record_time``) raise
:class:`CantonReadError`; the additional reads raise :class:`CantonError` as the transport does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sluice.domain.errors import InvalidInputError
from sluice.domain.history import item_offset
from sluice.domain.ledger import parse_timestamp
from sluice.ledger import wire

from .errors import (
    CantonAuthError,
    CantonError,
    CantonReadError,
    CantonUnavailableError,
    ListTooLargeError,
    MalformedResponseError,
    NoWebSocketError,
)
from .transport import LedgerHttp, expect_list, expect_object

log = logging.getLogger(__name__)

LEDGER_END_PATH = "/v2/state/ledger-end"
UPDATES_PATH = "/v2/updates"
UPDATE_BY_ID_PATH = "/v2/updates/update-by-id"
ACTIVE_CONTRACTS_PATH = "/v2/state/active-contracts"
EVENTS_BY_CONTRACT_ID_PATH = "/v2/events/events-by-contract-id"
COMPLETIONS_PATH = "/v2/commands/completions"
VERSION_PATH = "/v2/version"


FIRST_AFTER_ATTEMPTS = 3  # reads of the item after an offset, when a node re-delivers


@dataclass(slots=True)
class _Reading:
    """Where one ``updates`` call stands: what was asked and what was yielded so far."""

    party: str
    after: int
    end: int
    limit: int | None
    count: int = 0
    last: int = 0

    def __post_init__(self) -> None:
        self.last = self.after

    @property
    def done(self) -> bool:
        return self.last >= self.end or (self.limit is not None and self.count >= self.limit)

    def check(self, message: Any) -> int:
        """The offset of a received item; :class:`CantonReadError` if it cannot be stored."""
        if not isinstance(message, dict):
            raise self.error(f"an item is not a JSON object but {type(message).__name__}")
        offset = item_offset(message)
        if offset is None:
            raise self.error(f"an item has no readable offset: {_describe(message)}")
        # A recording may start at offset 0; reading "from the beginning" (after 0) includes it.
        first_at_zero = offset == 0 and self.last == 0 and self.count == 0
        if offset <= self.last and not first_at_zero:
            raise self.error(
                f"an item at offset {offset} came after offset {self.last} (out of order)"
            )
        return offset

    def advance(self, offset: int) -> None:
        self.count += 1
        self.last = offset

    def error(
        self, problem: str, exc: CantonError | None = None, *, cut: bool = False
    ) -> CantonReadError:
        where = (
            f"reading the updates of {self.party} after offset {self.after} (ledger end {self.end})"
        )
        if cut or (isinstance(exc, CantonUnavailableError) and self.count):
            what = f"stream cut after {self.count} items (last offset {self.last})"
        else:
            what = f"failed after {self.count} items (last offset {self.last})"
        return CantonReadError(
            f"{where}: {what}: {problem}",
            node_code=exc.node_code if exc is not None else None,
            cause=exc.cause if exc is not None else None,
            items=self.count,
            retryable=not isinstance(exc, CantonAuthError),
        )


class CantonLedgerClient:
    """:class:`sluice.ports.LedgerClient` on one participant node's JSON Ledger API v2."""

    def __init__(
        self,
        http: LedgerHttp,
        *,
        page_size: int = 200,
        use_websocket: bool = True,
        active_contracts_max: int = 100_000,
        completions_idle_ms: int = 1000,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.http = http
        self.page_size = page_size
        self._websocket = use_websocket
        self._active_contracts_max = active_contracts_max
        self._completions_idle_ms = completions_idle_ms

    @property
    def uses_websocket(self) -> bool:
        """False once the node showed it has no WebSocket endpoint (or when so configured)."""
        return self._websocket

    # -- the port -----------------------------------------------------------------------------

    def ledger_end(self) -> int:
        """``GET /v2/state/ledger-end``: the node's ledger end (0 when the ledger is empty)."""
        try:
            return self._ledger_end()
        except CantonError as exc:
            raise CantonReadError(
                f"reading the ledger end failed: {exc}",
                node_code=exc.node_code,
                cause=exc.cause,
                retryable=not isinstance(exc, CantonAuthError),
            ) from exc

    def updates(
        self, party: str, after_offset: int | None, *, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """``JsGetUpdatesResponse`` objects of ``party`` after ``after_offset`` up to the ledger
        end as read now (or ``limit`` items); see the module docstring for the guarantees."""
        after = 0 if after_offset is None else after_offset
        if after < 0:
            raise InvalidInputError("after_offset must not be negative")
        if limit is not None and limit < 0:
            raise InvalidInputError("limit must not be negative")
        end = self.ledger_end()
        if after > end:
            raise CantonReadError(
                f"offset {after} is after the ledger end {end} of the node at "
                f"{self.http.base_url}: the node was restored or upgraded, or the cursor belongs "
                f"to another node; find the offset to resume from by record time",
                node_code="OFFSET_AFTER_LEDGER_END",
            )
        return self._updates(_Reading(party, after, end, limit))

    def offset_at_record_time(self, party: str, time: datetime) -> int:
        """The largest offset of an item ``party`` sees (a transaction or a checkpoint) whose
        record time is at or before ``time``; 0 if none.

        Canton has no such endpoint, so this is a binary search over the offsets 0..ledger end
        with the HTTP list form and ``limit=1``: the first item after an offset gives a record
        time (a transaction's ``recordTime``, a checkpoint's latest ``synchronizerTimes``). It
        takes O(log end) requests and relies on record times growing with offsets on a node
        (one synchronizer). Offsets with nothing for the party are skipped, which is the same
        for a reader of that party.
        """
        if time.tzinfo is None:
            raise InvalidInputError("the record time must carry a time zone")
        end = self.ledger_end()
        low, high = 0, end  # invariant: nothing after `high` is at or before `time`
        while low < high:
            middle = (low + high) // 2
            first = self._first_after(party, middle, end)
            if first is None or first[1] > time:
                high = middle
            else:
                # Every offset from `middle` up to the item's has that item first after it.
                low = first[0]
        return low

    # -- further reads ------------------------------------------------------------------------

    def active_contracts(self, party: str, at_offset: int | None = None) -> list[dict[str, Any]]:
        """``JsGetActiveContractsResponse`` items of ``party`` at ``at_offset`` (default: the
        ledger end): the WebSocket form, else the HTTP list form (which cannot page, so an
        answer of ``active_contracts_max`` items is refused as possibly incomplete)."""
        offset = self._ledger_end() if at_offset is None else at_offset
        if offset == 0:
            return []
        request = {"activeAtOffset": offset, "eventFormat": wire.event_format(party)}
        if self._websocket:
            try:
                return [
                    expect_object(m, "WS", ACTIVE_CONTRACTS_PATH, "JsGetActiveContractsResponse")
                    for m in self.http.websocket(ACTIVE_CONTRACTS_PATH, request)
                ]
            except NoWebSocketError as exc:
                self._fall_back(exc)
        answer = self.http.post(
            ACTIVE_CONTRACTS_PATH, request, params={"limit": self._active_contracts_max}
        )
        items = expect_list(answer, "POST", ACTIVE_CONTRACTS_PATH, "JsGetActiveContractsResponse")
        if len(items) >= self._active_contracts_max:
            raise ListTooLargeError(
                "POST",
                ACTIVE_CONTRACTS_PATH,
                f"{party} has at least {self._active_contracts_max} active contracts; the list "
                f"form may be incomplete (use the WebSocket endpoint)",
            )
        return [
            expect_object(i, "POST", ACTIVE_CONTRACTS_PATH, "JsGetActiveContractsResponse")
            for i in items
        ]

    def update_by_id(self, update_id: str, party: str) -> dict[str, Any]:
        """``POST /v2/updates/update-by-id``: ``party``'s view of one update
        (``JsGetUpdateResponse``)."""
        request = {
            "updateId": update_id,
            "updateFormat": wire.updates_request(party, 0, None)["updateFormat"],
        }
        answer = self.http.post(UPDATE_BY_ID_PATH, request)
        return expect_object(answer, "POST", UPDATE_BY_ID_PATH, "JsGetUpdateResponse")

    def events_by_contract_id(self, contract_id: str, party: str) -> dict[str, Any]:
        """``POST /v2/events/events-by-contract-id``: the create (and archive) of a contract as
        ``party`` sees it (``JsGetEventsByContractIdResponse``)."""
        request = {"contractId": contract_id, "eventFormat": wire.event_format(party)}
        answer = self.http.post(EVENTS_BY_CONTRACT_ID_PATH, request)
        return expect_object(
            answer, "POST", EVENTS_BY_CONTRACT_ID_PATH, "JsGetEventsByContractIdResponse"
        )

    def completions(
        self,
        party: str,
        after_offset: int = 0,
        *,
        limit: int | None = None,
        user_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """``POST /v2/commands/completions`` (list form): ``CompletionStreamResponse`` items of
        commands acting as ``party`` after ``after_offset``; at most ``limit`` (default: the page
        size). The list ends when no completion arrived for ``completions_idle_ms``."""
        request: dict[str, Any] = {"parties": [party], "beginExclusive": after_offset}
        if user_id:
            request["userId"] = user_id
        params = {
            "limit": self.page_size if limit is None else limit,
            "stream_idle_timeout_ms": self._completions_idle_ms,
        }
        answer = self.http.post(COMPLETIONS_PATH, request, params=params)
        items = expect_list(answer, "POST", COMPLETIONS_PATH, "CompletionStreamResponse")
        return [
            expect_object(i, "POST", COMPLETIONS_PATH, "CompletionStreamResponse") for i in items
        ]

    def version(self) -> dict[str, Any]:
        """``GET /v2/version``: the node's API version and features."""
        return expect_object(
            self.http.get(VERSION_PATH), "GET", VERSION_PATH, "GetLedgerApiVersion"
        )

    # -- internals ----------------------------------------------------------------------------

    def _ledger_end(self) -> int:
        answer = expect_object(
            self.http.get(LEDGER_END_PATH), "GET", LEDGER_END_PATH, "GetLedgerEndResponse"
        )
        offset = answer.get("offset", 0)
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise MalformedResponseError(
                "GET", LEDGER_END_PATH, f"the ledger end is not an offset: {offset!r}"
            )
        return offset

    def _updates(self, reading: _Reading) -> Iterator[dict[str, Any]]:
        if reading.done:
            return
        if self._websocket:
            try:
                yield from self._updates_websocket(reading)
                return
            except NoWebSocketError as exc:
                self._fall_back(exc)
        yield from self._updates_list(reading)

    def _updates_websocket(self, reading: _Reading) -> Iterator[dict[str, Any]]:
        request = wire.updates_request(reading.party, reading.after, reading.end)
        stream = self.http.websocket(UPDATES_PATH, request)
        try:
            for message in stream:
                offset = reading.check(message)
                if offset > reading.end:
                    return  # everything up to the end has arrived (the stream is ordered)
                yield message
                reading.advance(offset)
                if reading.done:
                    return
        except NoWebSocketError:
            raise
        except CantonError as exc:
            raise reading.error(str(exc), exc) from exc
        finally:
            stream.close()
        if reading.last < reading.end:
            # Closed normally before an item at the end: complete only if nothing of the
            # party's lies between (the last offsets may belong to other parties).
            try:
                rest = self._page(reading.party, reading.last, reading.end, 1)
            except CantonError as exc:
                raise reading.error(f"checking the rest of the stream failed: {exc}", exc) from exc
            if rest:
                raise reading.error(
                    f"the node closed the WebSocket normally before the ledger end, although "
                    f"offset {_offset_text(rest[0])} remains",
                    cut=True,
                )

    def _updates_list(self, reading: _Reading) -> Iterator[dict[str, Any]]:
        while not reading.done:
            want = self.page_size
            if reading.limit is not None:
                want = min(want, reading.limit - reading.count)
            try:
                items = self._page(reading.party, reading.last, reading.end, want)
            except ListTooLargeError as exc:
                if want <= 1:
                    raise reading.error(str(exc), exc) from exc
                self.page_size = max(1, want // 2)
                log.info(
                    "the node refused a page of %d updates as too large; asking for %d",
                    want,
                    self.page_size,
                )
                continue
            except CantonError as exc:
                raise reading.error(str(exc), exc) from exc
            if not items:
                return  # nothing more of the party's up to the end
            for message in items:
                offset = reading.check(message)
                if offset > reading.end:
                    return
                yield message
                reading.advance(offset)
                if reading.done:
                    return

    def _page(self, party: str, after: int, end: int, limit: int) -> list[Any]:
        answer = self.http.post(
            UPDATES_PATH, wire.updates_request(party, after, end), params={"limit": limit}
        )
        return expect_list(answer, "POST", UPDATES_PATH, "JsGetUpdatesResponse")

    def _first_after(self, party: str, offset: int, end: int) -> tuple[int, datetime] | None:
        """The offset and record time of ``party``'s first item after ``offset``. An item at or
        before ``offset`` (a node re-delivering older items) is read again, a bounded number of
        times."""
        for _attempt in range(FIRST_AFTER_ATTEMPTS):
            try:
                items = self._page(party, offset, end, 1)
            except CantonError as exc:
                raise CantonReadError(
                    f"searching the offsets of {party} by record time failed: {exc}",
                    node_code=exc.node_code,
                    cause=exc.cause,
                ) from exc
            if not items:
                return None
            item = items[0]
            found = item_offset(item) if isinstance(item, dict) else None
            time = _record_time(item)
            if found is None or time is None:
                break
            if found > offset:
                return found, time
        raise CantonReadError(
            f"searching the offsets of {party} by record time: the item after offset "
            f"{offset} has no readable offset or record time, or is not after it: "
            f"{_describe(item)}"
        )

    def _fall_back(self, exc: NoWebSocketError) -> None:
        if self._websocket:
            log.warning(
                "the node at %s has no WebSocket endpoint (%s); reading with the HTTP list form "
                "from now on",
                self.http.base_url,
                exc,
            )
        self._websocket = False


def _record_time(item: Any) -> datetime | None:
    """The record time of a ``JsGetUpdatesResponse``: a transaction's ``recordTime``, or the
    latest of a checkpoint's ``synchronizerTimes``."""
    update = item.get("update") if isinstance(item, dict) else None
    if not isinstance(update, dict) or len(update) != 1:
        return None
    ((kind, wrapped),) = update.items()
    value = wrapped.get("value", wrapped) if isinstance(wrapped, dict) else None
    if not isinstance(value, dict):
        return None
    try:
        if kind == "OffsetCheckpoint":
            times = value.get("synchronizerTimes")
            if not isinstance(times, list) or not times:
                return None
            return max(
                parse_timestamp(t.get("recordTime") if isinstance(t, dict) else None) for t in times
            )
        return parse_timestamp(value.get("recordTime"))
    except InvalidInputError:
        return None


def _offset_text(item: Any) -> str:
    offset = item_offset(item) if isinstance(item, dict) else None
    return "?" if offset is None else str(offset)


def _describe(value: Any, size_max: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= size_max else text[:size_max] + "..."
