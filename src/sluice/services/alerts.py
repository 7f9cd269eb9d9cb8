"""Alerts for operators: listing them, acknowledging one (audited), resolving the product's own.

The product's own alerts (those without a rule: ingestion, custody, reserves…) describe
something that happened, not a condition that can clear, so acknowledging one also resolves it;
an alert rule's alert stays unresolved after it is acknowledged until its condition clears.
Acknowledging an alert acknowledged before is refused (41), naming who did it and when.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sluice.domain.audit.records import AuditEntry
from sluice.domain.errors import InvalidInputError, InvalidOperationStateError, NotFoundError
from sluice.domain.ledger import format_timestamp
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.ports.alerts import AlertRecord, AlertStatus
from sluice.services.events import emit

STATUSES: tuple[AlertStatus, ...] = ("open", "acknowledged", "resolved")
SEVERITIES = ("critical", "warning", "info")


@dataclass(frozen=True, slots=True)
class AlertPage:
    alerts: list[AlertRecord]
    total: int


def check_statuses(values: Sequence[str] | None) -> list[AlertStatus] | None:
    """Status filters, checked (None: every status)."""
    if not values:
        return None
    checked: list[AlertStatus] = []
    for value in values:
        for status in STATUSES:
            if value == status:
                checked.append(status)
                break
        else:
            raise InvalidInputError(f"status must be one of {', '.join(STATUSES)}, got {value!r}")
    return checked


def check_severity(value: str | None) -> str | None:
    if value is not None and value not in SEVERITIES:
        raise InvalidInputError(f"severity must be one of {', '.join(SEVERITIES)}, got {value!r}")
    return value


def list_alerts(
    uow_factory: UnitOfWorkFactory,
    *,
    status: Sequence[str] | None = None,
    severity: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> AlertPage:
    """Alerts newest first, filtered by status (open / acknowledged / resolved) and severity."""
    statuses = check_statuses(status)
    checked = check_severity(severity)
    with uow_factory() as uow:
        alerts = uow.alerts.find(status=statuses, severity=checked, limit=limit, offset=offset)
        total = uow.alerts.count(status=statuses, severity=checked)
    return AlertPage(alerts=alerts, total=total)


def get_alert(uow_factory: UnitOfWorkFactory, alert_id: str) -> AlertRecord:
    with uow_factory() as uow:
        record = uow.alerts.get(alert_id)
    if record is None:
        raise NotFoundError(f"no alert {alert_id!r}")
    return record


def _resolve(uow: UnitOfWork, record: AlertRecord, *, reason: str, at: datetime) -> bool:
    """Resolve the alert with its ``alert_resolved`` event, unless it was resolved meanwhile:
    whether this call resolved it."""
    if not uow.alerts.resolve(record.id, at=at):
        return False
    emit(
        uow,
        "alert_resolved",
        record.id,
        {
            "alert_id": record.id,
            "rule": record.rule,
            "severity": record.severity,
            "kind": record.kind,
            "reason": reason,
        },
        at=at,
    )
    return True


def acknowledge(
    uow_factory: UnitOfWorkFactory, alert_id: str, *, actor: str, at: datetime
) -> AlertRecord:
    """Acknowledge the alert as ``actor``: audited (``alert_acknowledged``), with its event; a
    product alert is resolved with it. Refused (41) when acknowledged before."""
    if not actor.strip():
        raise InvalidInputError("acknowledging an alert needs an actor")
    with uow_factory() as uow:
        record = uow.alerts.get(alert_id, lock=True)
        if record is None:
            raise NotFoundError(f"no alert {alert_id!r}")
        if record.acknowledged_at is not None:
            raise InvalidOperationStateError(
                f"alert {alert_id} was acknowledged by {record.acknowledged_by or 'an operator'} "
                f"at {format_timestamp(record.acknowledged_at)}"
            )
        uow.alerts.acknowledge(alert_id, actor=actor, at=at)
        resolves = record.rule is None and record.resolved_at is None
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=f"alert_ack:{alert_id}:{format_timestamp(at)}"[:300],
                    operation="alert_acknowledged",
                    actor=actor,
                    recorded_at=at,
                    parameters={"alert_id": alert_id},
                    state_changes=[
                        {
                            "alert": alert_id,
                            "severity": record.severity,
                            "kind": record.kind,
                            "acknowledged": True,
                            "resolved": resolves or record.resolved_at is not None,
                        }
                    ],
                )
            ]
        )
        emit(
            uow,
            "alert_acknowledged",
            alert_id,
            {
                "alert_id": alert_id,
                "rule": record.rule,
                "severity": record.severity,
                "kind": record.kind,
                "actor": actor,
            },
            at=at,
        )
        if resolves:
            _resolve(uow, record, reason="acknowledged", at=at)
        uow.commit()
    return get_alert(uow_factory, alert_id)
