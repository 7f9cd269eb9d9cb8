"""The ``alerts`` table: the alerts the product raises itself and those alert rules raise."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, case, func, or_, select, update

from sluice.ports.alerts import AlertRecord, AlertStatus, RaiseOutcome
from sluice.store import tables as t
from sluice.store.rows import insert_for, time_of, ts

_A = t.alerts
_SEVERITY_RANK = case((_A.c.severity == "critical", 0), (_A.c.severity == "warning", 1), else_=2)


def _record(row: Any) -> AlertRecord:
    details: Mapping[str, object] = {}
    if row.details:
        try:
            loaded = json.loads(row.details)
        except ValueError:
            loaded = {"text": row.details}
        details = loaded if isinstance(loaded, dict) else {"value": loaded}
    return AlertRecord(
        id=row.id,
        severity=row.severity,
        kind=row.kind,
        message=row.message,
        created_at=time_of(row.created_at),
        details=details,
        update_id=row.update_id,
        rule=row.rule,
        acknowledged_at=time_of(row.acknowledged_at) if row.acknowledged_at else None,
        acknowledged_by=row.acknowledged_by,
        resolved_at=time_of(row.resolved_at) if row.resolved_at else None,
        last_seen_at=time_of(row.last_seen_at) if row.last_seen_at else None,
        occurrences=int(row.occurrences or 1),
        notified_at=time_of(row.notified_at) if row.notified_at else None,
        notify_attempts=int(row.notify_attempts or 0),
    )


def _status_clause(status: Sequence[AlertStatus]) -> ColumnElement[bool]:
    clauses: list[ColumnElement[bool]] = []
    for one in status:
        if one == "resolved":
            clauses.append(_A.c.resolved_at.is_not(None))
        elif one == "acknowledged":
            clauses.append(and_(_A.c.resolved_at.is_(None), _A.c.acknowledged_at.is_not(None)))
        else:
            clauses.append(and_(_A.c.resolved_at.is_(None), _A.c.acknowledged_at.is_(None)))
    return or_(*clauses)


class SqlAlertRepository:
    """:class:`~sluice.ports.alerts.AlertRepository` on the unit of work's connection."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def get(self, alert_id: str, *, lock: bool = False) -> AlertRecord | None:
        statement = select(_A).where(_A.c.id == alert_id)
        if lock:
            statement = statement.with_for_update()
        row = self._connection.execute(statement).first()
        return _record(row) if row is not None else None

    def _filtered(
        self, status: Sequence[AlertStatus] | None, severity: str | None
    ) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if status:
            where.append(_status_clause(status))
        if severity is not None:
            where.append(_A.c.severity == severity)
        return where

    def find(
        self,
        *,
        status: Sequence[AlertStatus] | None = None,
        severity: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AlertRecord]:
        seen = func.coalesce(_A.c.last_seen_at, _A.c.created_at)
        statement = (
            select(_A)
            .where(*self._filtered(status, severity))
            .order_by(seen.desc(), _A.c.id)
            .limit(limit)
            .offset(offset)
        )
        return [_record(row) for row in self._connection.execute(statement)]

    def count(
        self, *, status: Sequence[AlertStatus] | None = None, severity: str | None = None
    ) -> int:
        statement = select(func.count()).select_from(_A).where(*self._filtered(status, severity))
        return int(self._connection.execute(statement).scalar_one())

    def raise_rule_alert(
        self,
        *,
        alert_id: str,
        rule: str,
        severity: str,
        message: str,
        details: Mapping[str, object],
        at: datetime,
    ) -> RaiseOutcome:
        existing = self.get(alert_id, lock=True)
        text = json.dumps(dict(details), sort_keys=True, default=str)
        if existing is None:
            inserted = self._connection.execute(
                insert_for(self._connection, _A)
                .values(
                    id=alert_id,
                    severity=severity,
                    kind=f"rule:{rule}"[:60],
                    message=message,
                    details=text,
                    created_at=ts(at),
                    rule=rule,
                    last_seen_at=ts(at),
                    occurrences=1,
                    notify_attempts=0,
                )
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(_A.c.id)
            ).first()
            if inserted is not None:
                return "new"
            existing = self.get(alert_id, lock=True)
            assert existing is not None
        if existing.resolved_at is None:
            self._connection.execute(
                update(_A)
                .where(_A.c.id == alert_id)
                .values(
                    occurrences=_A.c.occurrences + 1,
                    last_seen_at=ts(at),
                    message=message,
                    details=text,
                    severity=severity,
                )
            )
            return "repeated"
        self._connection.execute(
            update(_A)
            .where(_A.c.id == alert_id)
            .values(
                severity=severity,
                message=message,
                details=text,
                created_at=ts(at),
                last_seen_at=ts(at),
                occurrences=1,
                resolved_at=None,
                acknowledged_at=None,
                acknowledged_by=None,
                notified_at=None,
                notify_attempts=0,
            )
        )
        return "reopened"

    def open_rule_alerts(self, rule: str) -> list[AlertRecord]:
        statement = select(_A).where(_A.c.rule == rule, _A.c.resolved_at.is_(None))
        return [_record(row) for row in self._connection.execute(statement)]

    def acknowledge(self, alert_id: str, *, actor: str, at: datetime) -> None:
        self._connection.execute(
            update(_A)
            .where(_A.c.id == alert_id)
            .values(acknowledged_at=ts(at), acknowledged_by=actor)
        )

    def resolve(self, alert_id: str, *, at: datetime) -> bool:
        # Conditional: of two evaluators resolving the same alert, one changes the row (the
        # other waits for its lock, then finds it resolved) and only that one writes the event.
        changed = self._connection.execute(
            update(_A)
            .where(_A.c.id == alert_id, _A.c.resolved_at.is_(None))
            .values(resolved_at=ts(at))
            .returning(_A.c.id)
        ).first()
        return changed is not None

    def to_notify(self, *, max_attempts: int, limit: int = 100) -> list[AlertRecord]:
        statement = (
            select(_A)
            .where(
                _A.c.notified_at.is_(None),
                _A.c.resolved_at.is_(None),
                _A.c.notify_attempts < max_attempts,
            )
            # Critical first, newest first: a backlog never delays a new critical alert.
            .order_by(_SEVERITY_RANK, _A.c.created_at.desc(), _A.c.id)
            .limit(limit)
        )
        return [_record(row) for row in self._connection.execute(statement)]

    def record_notified(self, alert_id: str, *, at: datetime) -> None:
        self._connection.execute(update(_A).where(_A.c.id == alert_id).values(notified_at=ts(at)))

    def record_notify_failure(self, alert_id: str, *, attempts: int) -> None:
        self._connection.execute(
            update(_A)
            .where(_A.c.id == alert_id)
            .values(notify_attempts=_A.c.notify_attempts + attempts)
        )
