"""The outbox on SQLAlchemy Core: events inserted in the caller's transaction, claimed by the
relay in ``seq`` order among the unpublished, marked with their stream sequence once acked."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, select, update

from sluice.domain.events import Event, payload_json
from sluice.ports.events import OutboxRow, OutboxStats
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


class SqlEventOutbox:
    def __init__(self, connection: Connection) -> None:
        self._c = connection
        # Found by code that has only the connection (alerts raised in the store), so that its
        # events go through this outbox and reach the commit listeners.
        self.connection = connection
        connection.info["sluice.event_outbox"] = self
        # What this transaction added, for the commit listeners.
        self.added: list[Event] = []

    def add(self, events: Sequence[Event]) -> None:
        if events:
            self._c.execute(t.insert(), [outbox_values(event) for event in events])
            self.added.extend(events)

    def claim(
        self, *, ordering_key: str | None = None, limit: int = 500, lock: bool = False
    ) -> list[OutboxRow]:
        query = select(t).where(t.c.published_at.is_(None))
        if ordering_key is not None:
            query = query.where(t.c.ordering_key == ordering_key)
        query = query.order_by(t.c.seq).limit(limit)
        if lock and is_postgresql(self._c):
            query = query.with_for_update(skip_locked=True)
        return [outbox_row(row) for row in self._c.execute(query)]

    def mark_published(self, published: Sequence[tuple[str, int]], at: datetime) -> int:
        if not published:
            return 0
        statement = (
            update(t)
            .where(t.c.event_id == bindparam("b_event_id"), t.c.published_at.is_(None))
            .values(published_at=ts(at), stream_seq=bindparam("b_stream_seq"))
        )
        result = self._c.execute(
            statement,
            [{"b_event_id": event_id, "b_stream_seq": seq} for event_id, seq in published],
        )
        return int(result.rowcount or 0)

    def record_failure(self, event_ids: Sequence[str], error: str) -> None:
        if not event_ids:
            return
        self._c.execute(
            update(t)
            .where(t.c.event_id.in_(list(event_ids)), t.c.published_at.is_(None))
            .values(attempts=t.c.attempts + 1, last_error=error[:ERROR_TEXT_MAX])
        )

    def ordering_keys(self) -> list[str]:
        query = select(t.c.ordering_key).where(t.c.published_at.is_(None)).distinct()
        return sorted(self._c.execute(query).scalars())

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
