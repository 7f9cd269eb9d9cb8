"""The outbox on SQLAlchemy Core: events inserted in the caller's transaction, claimed by the
relay in ``seq`` order among the unpublished, marked with their stream sequence once acked."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any

import orjson
from sqlalchemy import Connection, Row, func, select, update

from sluice.domain.audit.records import timestamp_text
from sluice.domain.events import Event, json_default, payload_json
from sluice.ports.events import OutboxRow, OutboxStats
from sluice.store.bulk import insert_rows
from sluice.store.events_tables import event_outbox as t
from sluice.store.rows import is_postgresql, optional_time, time_of, ts

ERROR_TEXT_MAX = 2000
log = logging.getLogger("sluice.events")


def outbox_values(event: Event) -> dict[str, Any]:
    """One event as an outbox row's values."""
    return {
        "event_id": event.event_id,
        "type": event.type,
        "schema_version": event.schema_version,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "ordering_key": event.aggregate_type,
        "correlation_id": event.correlation_id,
        "occurred_at": ts(event.occurred_at),
        "payload": payload_json(event.payload),
        "published_at": None,
        "stream_seq": None,
        "attempts": 0,
        "last_error": None,
    }


def outbox_row(row: Row[Any]) -> OutboxRow:
    event = Event(
        event_id=row.event_id,
        type=row.type,
        schema_version=row.schema_version,
        aggregate_type=row.aggregate_type,
        aggregate_id=row.aggregate_id,
        correlation_id=row.correlation_id,
        occurred_at=time_of(row.occurred_at),
        payload=json.loads(row.payload),
    )
    return OutboxRow(
        seq=row.seq,
        event=event,
        ordering_key=row.ordering_key,
        attempts=row.attempts,
        published_at=optional_time(row.published_at),
        stream_seq=row.stream_seq,
        last_error=row.last_error,
    )


class StoredPayload(Mapping[str, Any]):
    """A claimed row's payload, parsed from its stored JSON text only when something reads it
    (the relay publishes the stored text as it is: see :func:`envelope_bytes`)."""

    __slots__ = ("_value", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._value: dict[str, Any] | None = None

    def _parsed(self) -> dict[str, Any]:
        if self._value is None:
            self._value = json.loads(self.text)
        return self._value

    def __getitem__(self, key: str) -> Any:
        return self._parsed()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())

    def __repr__(self) -> str:
        return repr(self._parsed())


_PAYLOAD_KEY = b',"payload":'


def envelope_bytes(event: Event, payload_text: str) -> bytes:
    """The bytes :meth:`Event.encode` makes for ``event``, its payload given as the stored JSON
    text (written by :func:`~sluice.domain.events.payload_json`, which is what ``encode`` makes
    of the same payload: compact, ASCII, decimals as strings): the envelope's other fields are
    encoded and the payload text is spliced in, without parsing and encoding it again."""
    head = {
        "event_id": event.event_id,
        "type": event.type,
        "schema_version": event.schema_version,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "correlation_id": event.correlation_id,
        "occurred_at": event.occurred_at.isoformat(),
    }
    encoded = orjson.dumps(head)
    if not encoded.isascii() or b"\x7f" in encoded:  # json.dumps escapes these: so must this
        encoded = json.dumps(head, separators=(",", ":")).encode()
    return encoded[:-1] + _PAYLOAD_KEY + payload_text.encode() + b"}"


_CLAIM_COLUMNS = (
    "seq, event_id, type, schema_version, aggregate_type, aggregate_id, ordering_key, "
    "correlation_id, occurred_at, payload, attempts"
)
# PostgreSQL makes the envelope's bytes (those of ``Event.encode()`` for the event read back)
# in the claim's query: the fields as JSON strings (``to_json`` of a text escapes as
# ``json.dumps`` does an ASCII text: quote, backslash, ``\b \f \n \r \t``, other control
# characters as ``\u00xx``), ``occurred_at`` as ``datetime.isoformat()`` writes the stored
# time (``+00:00``, no fraction when it is zero), the stored payload text spliced in as it is.
# Only when every text field is ASCII without DEL (``json.dumps`` escapes those, ``to_json``
# does not) and the stored time has its canonical form; otherwise NULL, and Python makes it
# (:func:`envelope_bytes`).
_TEXT_FIELDS = "event_id || type || aggregate_type || aggregate_id || coalesce(correlation_id, '')"
_CLAIM_ENVELOPE_PG = (
    f"CASE WHEN octet_length({_TEXT_FIELDS}) = char_length({_TEXT_FIELDS})"
    f" AND strpos({_TEXT_FIELDS}, chr(127)) = 0"
    " AND occurred_at ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}[.][0-9]{6}Z$'"
    " THEN '{\"event_id\":' || to_json(event_id::text)::text"
    " || ',\"type\":' || to_json(type::text)::text"
    " || ',\"schema_version\":' || schema_version::text"
    " || ',\"aggregate_type\":' || to_json(aggregate_type::text)::text"
    " || ',\"aggregate_id\":' || to_json(aggregate_id::text)::text"
    " || ',\"correlation_id\":' || coalesce(to_json(correlation_id::text)::text, 'null')"
    ' || \',"occurred_at":"\''
    " || CASE WHEN substr(occurred_at, 21, 6) = '000000' THEN left(occurred_at, 19)"
    " ELSE left(occurred_at, 26) END"
    " || '+00:00\",\"payload\":' || payload || '}' END"
)


@cache
def _claim_sql(*, postgresql: bool, by_key: bool, excluding: bool, lock: bool) -> str:
    mark = "%s" if postgresql else "?"
    envelope = _CLAIM_ENVELOPE_PG if postgresql else "NULL"
    ctid = "ctid::text" if lock else "NULL"
    sql = (
        f"SELECT {_CLAIM_COLUMNS}, {envelope}, {ctid} FROM event_outbox WHERE published_at IS NULL"
    )
    if by_key:
        sql += f" AND ordering_key = {mark}"
    if excluding:
        # SQLite: the rows of the batches in flight, left out by the query (``json_each`` of
        # their seqs as one JSON array: one parameter however many there are).
        sql += (
            " AND seq <> ALL(%s)"
            if postgresql
            else " AND seq NOT IN (SELECT value FROM json_each(?))"
        )
    sql += f" ORDER BY seq LIMIT {mark}"
    if lock:
        sql += " FOR UPDATE SKIP LOCKED"
    return sql


def _claim_statement(
    *,
    postgresql: bool,
    ordering_key: str | None,
    limit: int,
    lock: bool,
    exclude: Collection[int],
) -> tuple[str, tuple[object, ...]]:
    parameters: list[object] = []
    if ordering_key is not None:
        parameters.append(ordering_key)
    if exclude:
        parameters.append(list(exclude) if postgresql else orjson.dumps(sorted(exclude)).decode())
    parameters.append(limit)
    sql = _claim_sql(
        postgresql=postgresql, by_key=ordering_key is not None, excluding=bool(exclude), lock=lock
    )
    return sql, tuple(parameters)


_OUTBOX_COLUMNS = (
    "event_id",
    "type",
    "schema_version",
    "aggregate_type",
    "aggregate_id",
    "ordering_key",
    "correlation_id",
    "occurred_at",
    "payload",
    "attempts",
)
_MARK_PG = (
    "UPDATE event_outbox AS o SET published_at = %s, stream_seq = v.seq "
    "FROM unnest(%s::text[], %s::bigint[]) AS v(id, seq) "
    "WHERE o.event_id = v.id AND o.published_at IS NULL"
)
# Rows this transaction claimed ``FOR UPDATE`` are found by their ``ctid`` (no index lookups):
# a row locked by the transaction cannot be updated or deleted by another one, nor moved by
# VACUUM, until the transaction ends. Its event id is checked too; a row that is not found that
# way (the transaction updated it since, e.g. a failure recorded) is marked by its event id.
_MARK_PG_LOCKED = (
    "UPDATE event_outbox AS o SET published_at = %s, stream_seq = v.seq "
    "FROM unnest(%s::tid[], %s::text[], %s::bigint[]) AS v(t, id, seq) "
    "WHERE o.ctid = v.t AND o.event_id = v.id AND o.published_at IS NULL"
)
# SQLite: one statement per chunk, the pairs as a VALUES list: the driver steps it once (an
# executemany steps each row, giving up the GIL between rows, and the relay's publishing thread
# then holds the marking up; 4–8 times slower in the relay than alone). 2 variables a row, well
# under SQLite's 32,766.
_MARK_SQLITE_ROWS = 8_000


def _mark_sqlite(rows: int) -> str:
    return (
        "UPDATE event_outbox SET published_at = ?, stream_seq = v.column2 FROM (VALUES "
        + ",".join(["(?,?)"] * rows)
        + ") AS v WHERE event_outbox.event_id = v.column1 AND event_outbox.published_at IS NULL"
    )


# Called with the events a unit of work committed, right after its commit (in the committing
# thread): the in-process relay's wake-up, the metrics of operations by type. A listener must
# be quick and must not raise; one that raises is logged and the others still run.
CommitListener = Callable[[Sequence[Event]], None]
_listeners: list[CommitListener] = []


def add_commit_listener(listener: CommitListener) -> None:
    if listener not in _listeners:
        _listeners.append(listener)


def remove_commit_listener(listener: CommitListener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def notify_committed(events: Sequence[Event]) -> None:
    """Tell the listeners which events just committed."""
    for listener in list(_listeners):
        try:
            listener(events)
        except Exception:
            log.exception("events: a commit listener failed")


def stored_payload(payload: Mapping[str, Any]) -> str:
    """:func:`~sluice.domain.events.payload_json` of ``payload``: the same text, from orjson
    when both encoders write it alike.

    orjson writes the same bytes as ``json.dumps`` (compact, ASCII, keys in their order) for
    text, integers, booleans, nulls, lists and objects with text keys, and goes through the same
    ``default`` for decimals and times. So a payload of those alone whose text needs no escape —
    only printable ASCII, no quote or backslash inside a string — is taken from orjson; floats
    (spelt differently), anything escaped and whatever orjson refuses take ``payload_json``."""
    plain = payload if type(payload) is dict else dict(payload)
    if _float_free(plain):
        try:
            data = orjson.dumps(plain, default=json_default, option=_ORJSON_PASSTHROUGH)
        except TypeError:
            pass
        else:
            if data.isascii() and b"\\" not in data and b"\x7f" not in data:
                return data.decode("ascii")
    return payload_json(plain)


# Types orjson would otherwise write its own way (``json.dumps`` calls ``default`` or refuses).
_ORJSON_PASSTHROUGH = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
)
_SCALARS = frozenset({str, int, bool, type(None), Decimal, datetime})


def _float_free(value: Any) -> bool:
    """Whether ``value`` holds only what both encoders write alike (no float, anywhere)."""
    kind = type(value)
    if kind is dict:
        items: Iterable[Any] = value.values()
    elif kind is list or kind is tuple:
        items = value
    else:
        return kind in _SCALARS
    # A loop, not all() over a generator: a payload has a dozen items, and resuming a generator
    # for each costs more than testing it.
    for item in items:
        if type(item) in _SCALARS:
            continue
        if not _float_free(item):
            return False
    return True


class SqlEventOutbox:
    def __init__(self, connection: Connection) -> None:
        self._c = connection
        # Found by code that has only the connection (alerts raised in the store), so that its
        # events go through this outbox and reach the commit listeners.
        self.connection = connection
        connection.info["sluice.event_outbox"] = self
        # What this transaction added, for the commit listeners.
        self.added: list[Event] = []
        # Rows this transaction claimed FOR UPDATE (PostgreSQL): event id -> ctid, for marking.
        self._locked: dict[str, str] = {}

    def add(self, events: Sequence[Event]) -> None:
        if events:
            # One executemany of plain tuples through the driver (ingestion writes many).
            insert_rows(
                self._c,
                t,
                _OUTBOX_COLUMNS,
                [
                    (
                        event.event_id,
                        event.type,
                        event.schema_version,
                        event.aggregate_type,
                        event.aggregate_id,
                        event.aggregate_type,
                        event.correlation_id,
                        timestamp_text(event.occurred_at),  # ts's text, remembered
                        stored_payload(event.payload),
                        0,
                    )
                    for event in events
                ],
            )
            self.added.extend(events)

    def claim(
        self,
        *,
        ordering_key: str | None = None,
        limit: int = 500,
        lock: bool = False,
        exclude: Collection[int] = (),
    ) -> list[OutboxRow]:
        # Only what publishing needs, read by position through the driver; the payload stays
        # the stored text (the row's ``data`` is the envelope as published, made from it without
        # parsing it: by PostgreSQL in the query, else here).
        postgresql = is_postgresql(self._c)
        sql, parameters = _claim_statement(
            postgresql=postgresql,
            ordering_key=ordering_key,
            limit=limit,
            lock=lock and postgresql,
            exclude=exclude,
        )
        rows = []
        for (
            seq,
            event_id,
            type_,
            schema_version,
            aggregate_type,
            aggregate_id,
            key,
            correlation_id,
            occurred_at,
            payload,
            attempts,
            envelope,
            ctid,
        ) in self._c.exec_driver_sql(sql, parameters).fetchall():  # one driver call
            event = Event(
                event_id,
                type_,
                schema_version,
                aggregate_type,
                aggregate_id,
                correlation_id,
                time_of(occurred_at),
                StoredPayload(payload),
            )
            data = envelope.encode() if envelope is not None else envelope_bytes(event, payload)
            rows.append(OutboxRow(seq, event, key, attempts, data=data))
            if ctid is not None:
                self._locked[event_id] = ctid
        return rows

    def mark_published(self, published: Sequence[tuple[str, int]], at: datetime) -> int:
        if not published:
            return 0
        when = ts(at)
        if is_postgresql(self._c):
            # One statement for the batch (two when some rows were not claimed here).
            locked = self._locked
            by_ctid = [(event_id, seq) for event_id, seq in published if event_id in locked]
            rest = [(event_id, seq) for event_id, seq in published if event_id not in locked]
            marked = 0
            if by_ctid:
                cursor = self._c.exec_driver_sql(
                    _MARK_PG_LOCKED,
                    (
                        when,
                        [locked.pop(event_id) for event_id, _ in by_ctid],
                        [event_id for event_id, _ in by_ctid],
                        [seq for _, seq in by_ctid],
                    ),
                )
                found = int(cursor.rowcount or 0)
                marked += found
                if found < len(by_ctid):
                    rest += by_ctid  # the rows already marked are left as they are
            if rest:
                cursor = self._c.exec_driver_sql(
                    _MARK_PG,
                    (when, [event_id for event_id, _ in rest], [seq for _, seq in rest]),
                )
                marked += int(cursor.rowcount or 0)
            return marked
        marked = 0
        for start in range(0, len(published), _MARK_SQLITE_ROWS):
            chunk = published[start : start + _MARK_SQLITE_ROWS]
            values: list[object] = [when]
            for event_id, stream_seq in chunk:
                values += (event_id, stream_seq)
            cursor = self._c.exec_driver_sql(_mark_sqlite(len(chunk)), tuple(values))
            marked += int(cursor.rowcount or 0)
        return marked

    def record_failure(self, event_ids: Sequence[str], error: str) -> None:
        if not event_ids:
            return
        self._locked.clear()  # the rows updated here have new ctids
        self._c.execute(
            update(t)
            .where(t.c.event_id.in_(list(event_ids)), t.c.published_at.is_(None))
            .values(attempts=t.c.attempts + 1, last_error=error[:ERROR_TEXT_MAX])
        )

    def ordering_keys(self) -> list[str]:
        query = select(t.c.ordering_key).where(t.c.published_at.is_(None)).distinct()
        return sorted(self._c.execute(query).scalars())

    def pending_count(self) -> int:
        """How many rows wait (the pending index only; :meth:`stats` also counts the published)."""
        query = select(func.count()).where(t.c.published_at.is_(None))
        return int(self._c.execute(query).scalar_one())

    def stats(self) -> OutboxStats:
        pending_query = select(func.count(), func.min(t.c.occurred_at)).where(
            t.c.published_at.is_(None)
        )
        pending, oldest = self._c.execute(pending_query).one()
        published = self._c.execute(
            select(func.count()).where(t.c.published_at.is_not(None))
        ).scalar_one()
        return OutboxStats(int(pending), optional_time(oldest), int(published))

    def find(
        self,
        *,
        after_seq: int = 0,
        limit: int = 100,
        type: str | None = None,
        published: bool | None = None,
    ) -> list[OutboxRow]:
        query = select(t).where(t.c.seq > after_seq)
        if type is not None:
            query = query.where(t.c.type == type)
        if published is True:
            query = query.where(t.c.published_at.is_not(None))
        elif published is False:
            query = query.where(t.c.published_at.is_(None))
        query = query.order_by(t.c.seq).limit(limit)
        return [outbox_row(row) for row in self._c.execute(query)]

    def get(self, event_id: str) -> OutboxRow | None:
        row = self._c.execute(select(t).where(t.c.event_id == event_id)).first()
        return outbox_row(row) if row is not None else None
