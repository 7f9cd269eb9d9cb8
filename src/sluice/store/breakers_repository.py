"""Circuit breakers' forced states (the ``circuit_breakers`` table) and their alerts, on
SQLAlchemy Core in the caller's transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select

from sluice.domain.breaker import ForcedState
from sluice.domain.deposits import Alert
from sluice.ports.breakers import ForcedBreaker
from sluice.store.bitcoin_rows import insert_alert
from sluice.store.events_tables import circuit_breakers as t
from sluice.store.rows import insert_for, time_of, ts


def _forced(value: str | None) -> ForcedState | None:
    if value == "open":
        return "open"
    if value == "closed":
        return "closed"
    return None


class SqlBreakersRepository:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def forced(self) -> list[ForcedBreaker]:
        rows = self._connection.execute(select(t).order_by(t.c.name)).all()
        return [
            ForcedBreaker(
                name=row.name,
                forced=_forced(row.forced),
                actor=row.actor,
                reason=row.reason,
                updated_at=time_of(row.updated_at),
            )
            for row in rows
        ]

    def set_forced(self, row: ForcedBreaker) -> None:
        values = {
            "forced": row.forced,
            "actor": row.actor,
            "reason": row.reason,
            "updated_at": ts(row.updated_at),
        }
        statement = insert_for(self._connection, t).values(name=row.name, **values)
        self._connection.execute(
            statement.on_conflict_do_update(index_elements=["name"], set_=values)
        )

    def add_alert(self, alert: Alert, at: datetime) -> bool:
        return insert_alert(self._connection, alert, at)
