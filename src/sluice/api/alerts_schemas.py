"""The alerts endpoints' bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from sluice.api.schemas import Out
from sluice.ports.alerts import AlertRecord


class AlertOut(Out):
    """An alert: raised by the product itself (``rule`` null) or by an alert rule."""

    id: str
    severity: Literal["critical", "warning", "info"] | str
    kind: str
    rule: str | None
    message: str
    details: dict[str, Any]
    status: Literal["open", "acknowledged", "resolved"]
    update_id: str | None
    created_at: datetime
    last_seen_at: datetime | None
    occurrences: int = Field(description="times raised while unresolved")
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    notified_at: datetime | None
    notify_attempts: int


def alert_out(record: AlertRecord) -> AlertOut:
    return AlertOut(
        id=record.id,
        severity=record.severity,
        kind=record.kind,
        rule=record.rule,
        message=record.message,
        details=dict(record.details),
        status=record.status,
        update_id=record.update_id,
        created_at=record.created_at,
        last_seen_at=record.last_seen_at,
        occurrences=record.occurrences,
        acknowledged_at=record.acknowledged_at,
        acknowledged_by=record.acknowledged_by,
        resolved_at=record.resolved_at,
        notified_at=record.notified_at,
        notify_attempts=record.notify_attempts,
    )
