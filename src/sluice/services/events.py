"""Writing events: every state change adds its event to the outbox in its own transaction.

A service step calls :func:`emit` with its unit of work before ``commit``; the event then
commits or rolls back with the change it describes. The relay (:mod:`sluice.services.relay`)
publishes what committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sluice.domain.events import Event, new_event
from sluice.ports import UnitOfWork


def emit(
    uow: UnitOfWork,
    type: str,
    aggregate_id: str,
    payload: Mapping[str, Any],
    *,
    at: datetime,
    correlation_id: str | None = None,
) -> Event:
    """Add one event of ``type`` (a name of :data:`~sluice.domain.events.EVENT_TYPES`) to the
    outbox, in ``uow``'s transaction; returns it."""
    event = new_event(type, aggregate_id, payload, at=at, correlation_id=correlation_id)
    uow.events.add([event])
    return event


def emit_all(uow: UnitOfWork, events: Iterable[Event]) -> None:
    """Add events built with :func:`~sluice.domain.events.new_event` (a batch's, in one
    statement)."""
    batch = list(events)
    if batch:
        uow.events.add(batch)
