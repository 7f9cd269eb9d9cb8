"""Rows both Bitcoin repositories write: custody addresses (the watcher's deposit addresses, the
payouts worker's change addresses) and alerts.

Every alert the product inserts also writes its ``alert_raised`` event to the outbox, in the
same transaction: :func:`insert_alert` does it when its insert added the row, and a writer that
inserts alerts itself (ingestion's batch) calls :func:`add_alert_events` for those it inserted.
The event goes through the unit of work's outbox when the connection belongs to one (so the
commit listeners learn of it), else straight into the ``event_outbox`` table."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from sluice.domain.deposits import Alert
from sluice.domain.events import Event, new_event
from sluice.store import tables as t
from sluice.store.bitcoin_tables import btc_addresses
from sluice.store.events_repository import outbox_values
from sluice.store.events_tables import event_outbox
from sluice.store.rows import insert_for, time_of, ts

# Where a unit of work's outbox is found from its connection (``Connection.info``).
OUTBOX_KEY = "sluice.event_outbox"


def next_derivation_index(connection: Connection, branch: int) -> int:
    """The index after the highest issued on ``branch`` (0 when none is)."""
    highest = connection.execute(
        select(func.max(btc_addresses.c.derivation_index)).where(btc_addresses.c.branch == branch)
    ).scalar()
    return 0 if highest is None else int(highest) + 1


def insert_address(
    connection: Connection,
    *,
    address: str,
    script_hex: str,
    branch: int,
    index: int,
    customer_id: str | None,
    created_at: datetime,
    funded_at: datetime | None = None,
) -> bool:
    """Add an issued address; ``False`` when any of its unique keys (address, script, branch and
    index) is taken already — the caller lost a race for that index."""
    statement = (
        insert_for(connection, btc_addresses)
        .values(
            address=address,
            script_hex=script_hex,
            branch=branch,
            derivation_index=index,
            customer_id=customer_id,
            created_at=ts(created_at),
            funded_at=ts(funded_at),
        )
        # No conflict target: any of the unique keys.
        .on_conflict_do_nothing()
        .returning(btc_addresses.c.address)
    )
    return connection.execute(statement).first() is not None


def alert_payload(alert: Alert) -> dict[str, Any]:
    """What ``alert_raised`` carries: the alert as an operator sees it."""
    return {
        "alert_id": alert.id,
        "severity": alert.severity,
        "kind": alert.kind,
        "message": alert.message,
        "update_id": alert.update_id,
        "details": {str(key): str(value) for key, value in dict(alert.details).items()},
    }


def alert_events(alerts: Iterable[Alert], at: datetime | str) -> list[Event]:
    """One ``alert_raised`` event per alert (``at``: when they were raised, a time or the
    text of a timestamp column)."""
    when = time_of(at) if isinstance(at, str) else at
    return [new_event("alert_raised", a.id, alert_payload(a), at=when) for a in alerts]


def add_events(connection: Connection, events: list[Event]) -> None:
    """Add ``events`` to the outbox in ``connection``'s transaction: through its unit of work's
    outbox when it has one (the commit listeners then see them), else into the table."""
    if not events:
        return
    outbox = _outbox_of(connection)
    if outbox is not None:
        outbox.add(events)
    else:
        connection.execute(event_outbox.insert(), [outbox_values(event) for event in events])


def add_alert_events(connection: Connection, alerts: Iterable[Alert], at: datetime | str) -> None:
    """Write ``alert_raised`` for alerts the caller inserted itself (each one new)."""
    add_events(connection, alert_events(alerts, at))


def _outbox_of(connection: Connection) -> Any:
    info: Mapping[str, Any] = connection.info
    outbox = info.get(OUTBOX_KEY)
    # ``info`` outlives the connection's checkout: only an outbox on this very connection.
    if outbox is not None and getattr(outbox, "connection", None) is connection:
        return outbox
    return None


def insert_alert(connection: Connection, alert: Alert, at: datetime) -> bool:
    """Raise ``alert`` once, with its ``alert_raised`` event: ``False`` (and no event) when one
    with its id was raised before."""
    statement = (
        insert_for(connection, t.alerts)
        .values(
            id=alert.id,
            severity=alert.severity,
            kind=alert.kind,
            message=alert.message,
            update_id=alert.update_id,
            details=json.dumps(dict(alert.details), sort_keys=True),
            created_at=ts(at),
            acknowledged_at=None,
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(t.alerts.c.id)
    )
    if connection.execute(statement).first() is None:
        return False
    add_alert_events(connection, [alert], at)
    return True
