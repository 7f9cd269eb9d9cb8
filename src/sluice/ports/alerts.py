"""Alerts, in the caller's transaction: those the product raises itself and those alert rules
raise, listed, acknowledged, resolved and notified the same way."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

AlertStatus = Literal["open", "acknowledged", "resolved"]
RaiseOutcome = Literal["new", "repeated", "reopened"]


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert row. ``rule`` is None for the alerts the product raises itself."""

    id: str
    severity: str
    kind: str
    message: str
    created_at: datetime
    details: Mapping[str, object] = field(default_factory=dict)
    update_id: str | None = None
    rule: str | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    last_seen_at: datetime | None = None
    occurrences: int = 1
    notified_at: datetime | None = None
    notify_attempts: int = 0

    @property
    def status(self) -> AlertStatus:
        """resolved, else acknowledged, else open."""
        if self.resolved_at is not None:
            return "resolved"
        if self.acknowledged_at is not None:
            return "acknowledged"
        return "open"


class AlertRepository(Protocol):
    """The ``alerts`` table."""

    def get(self, alert_id: str, *, lock: bool = False) -> AlertRecord | None: ...

    def find(
        self,
        *,
        status: Sequence[AlertStatus] | None = None,
        severity: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AlertRecord]:
        """Newest first (by the time last seen, else raised)."""
        ...

    def count(
        self, *, status: Sequence[AlertStatus] | None = None, severity: str | None = None
    ) -> int: ...

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
        """Insert the alert, or count one more occurrence of it while unresolved, or reopen it
        (a new occurrence count, acknowledgement and notification cleared) once resolved."""
        ...

    def open_rule_alerts(self, rule: str) -> list[AlertRecord]:
        """The rule's alerts not resolved."""
        ...

    def acknowledge(self, alert_id: str, *, actor: str, at: datetime) -> None: ...

    def resolve(self, alert_id: str, *, at: datetime) -> bool:
        """Resolve the alert if it is not resolved yet: whether this call resolved it (False
        when it was resolved before, e.g. by another evaluator, or does not exist). Write
        ``alert_resolved`` only when True."""
        ...

    def to_notify(self, *, max_attempts: int, limit: int = 100) -> list[AlertRecord]:
        """Unresolved alerts not notified yet with fewer than ``max_attempts`` attempts:
        critical first, then warning, then info, newest first within a severity."""
        ...

    def record_notified(self, alert_id: str, *, at: datetime) -> None: ...

    def record_notify_failure(self, alert_id: str, *, attempts: int) -> None:
        """Add ``attempts`` failed delivery attempts."""
        ...
