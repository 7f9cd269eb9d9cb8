"""Rows both Bitcoin repositories write: custody addresses (the watcher's deposit addresses, the
payouts worker's change addresses) and alerts."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Connection, func, select

from sluice.domain.deposits import Alert
from sluice.store import tables as t
from sluice.store.bitcoin_tables import btc_addresses
from sluice.store.rows import insert_for, ts


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


def insert_alert(connection: Connection, alert: Alert, at: datetime) -> bool:
    """Raise ``alert`` once: ``False`` when one with its id was raised before."""
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
    return connection.execute(statement).first() is not None
