"""Alert notifications: every alert not notified yet (a rule's or the product's own) is sent to
its recipients — a rule's alerts to the rule's recipients, the product's own (and those of a
rule no longer configured) to ``[alerts] recipients`` of their severity (the log by default).

A webhook gets a JSON POST; a delivery is tried ``notify_attempts`` times per round, waiting
``notify_backoff_s`` × 2ⁿ (at most ``notify_backoff_max_s``) between tries, each try inside the
``webhooks`` circuit breaker. An alert is marked notified once every recipient took it; when a
round fails its failed tries are added to ``notify_attempts`` and the alert is sent again on the
next round (every recipient again: receivers dedupe on ``alert_id`` and ``occurrences``), until
``notify_give_up_after`` tries in all, when it is logged as given up. Resolved alerts are not
notified (neither their resolution).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import structlog

from sluice.config.alerts import AlertRule, AlertsConfig, LogRecipient, Recipient, WebhookRecipient
from sluice.domain.ledger import format_timestamp
from sluice.ports import UnitOfWorkFactory
from sluice.ports.alerts import AlertRecord

log = structlog.get_logger(__name__)

try:
    from sluice.services.breakers import Breakers, guard
except ImportError:  # pragma: no cover - the breakers module ships with this one
    Breakers = Any  # type: ignore[misc,assignment]

    @contextmanager
    def guard(flow: str, *, registry: Any = None) -> Iterator[None]:  # type: ignore[misc]
        yield None


class WebhookError(Exception):
    """A webhook answered with an error status."""


def alert_body(record: AlertRecord) -> dict[str, Any]:
    """The JSON a webhook receives."""

    def when(value: datetime | None) -> str | None:
        return format_timestamp(value) if value is not None else None

    return {
        "alert_id": record.id,
        "severity": record.severity,
        "kind": record.kind,
        "rule": record.rule,
        "message": record.message,
        "details": dict(record.details),
        "status": record.status,
        "update_id": record.update_id,
        "occurrences": record.occurrences,
        "created_at": when(record.created_at),
        "last_seen_at": when(record.last_seen_at or record.created_at),
        "acknowledged_at": when(record.acknowledged_at),
    }


def backoff_delays(config: AlertsConfig) -> list[float]:
    """The waits between one round's tries: base × 2ⁿ, capped."""
    return [
        min(config.notify_backoff_s * (2**n), config.notify_backoff_max_s)
        for n in range(config.notify_attempts - 1)
    ]


@dataclass(slots=True)
class NotifyResult:
    """What one round did: alerts notified, alerts whose round failed, alerts given up."""

    notified: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)


class Notifier:
    """Sends the alerts not notified yet. ``sleep`` waits between tries (injected by tests);
    ``breakers``: the circuit breakers to guard webhook calls with (the process's by default)."""

    def __init__(
        self,
        config: AlertsConfig,
        rules: Sequence[AlertRule],
        uow_factory: UnitOfWorkFactory,
        *,
        clock: Callable[[], datetime],
        sleep: Callable[[float], None] = time.sleep,
        client: httpx.Client | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        self._config = config
        self._rules: Mapping[str, AlertRule] = {rule.name: rule for rule in rules}
        self._uow_factory = uow_factory
        self._clock = clock
        self._sleep = sleep
        self._client = client or httpx.Client(timeout=config.notify_timeout_s)
        self._owns_client = client is None
        self._breakers = breakers

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def recipients(self, record: AlertRecord) -> list[Recipient]:
        rule = self._rules.get(record.rule) if record.rule is not None else None
        if rule is not None:
            return list(rule.recipients)
        return self._config.recipients_for(record.severity)

    def _guard(self) -> AbstractContextManager[Any]:
        return guard("webhooks", registry=self._breakers)

    def _post(self, recipient: WebhookRecipient, body: dict[str, Any]) -> tuple[bool, int]:
        """Deliver to one webhook: whether it took it, and the tries that failed."""
        delays = backoff_delays(self._config)
        failures = 0
        for attempt in range(self._config.notify_attempts):
            try:
                with self._guard():
                    response = self._client.post(
                        recipient.url,
                        json=body,
                        headers=recipient.headers,
                        timeout=self._config.notify_timeout_s,
                    )
                    if response.status_code >= 300:
                        raise WebhookError(f"HTTP {response.status_code}")
                return True, failures
            except Exception as error:  # every failure is retried, then counted
                failures += 1
                log.warning(
                    "alert_webhook_failed",
                    alert_id=body["alert_id"],
                    url=recipient.url,
                    attempt=attempt + 1,
                    error=str(error) or type(error).__name__,
                )
                if attempt < len(delays):
                    self._sleep(delays[attempt])
        return False, failures

    def _deliver(self, record: AlertRecord) -> tuple[bool, int]:
        """Send ``record`` to every recipient: whether all took it, and the tries that
        failed."""
        body = alert_body(record)
        failed = 0
        all_taken = True
        for recipient in self.recipients(record):
            if isinstance(recipient, LogRecipient):
                log.warning(
                    "alert_notified",
                    alert_id=record.id,
                    severity=record.severity,
                    kind=record.kind,
                    rule=record.rule,
                    message=record.message,
                    occurrences=record.occurrences,
                )
                continue
            taken, failures = self._post(recipient, body)
            all_taken = all_taken and taken
            failed += failures
        return all_taken, failed

    def notify(self) -> NotifyResult:
        """One round over the alerts not notified yet."""
        give_up = self._config.notify_give_up_after
        result = NotifyResult()
        with self._uow_factory() as uow:
            pending = uow.alerts.to_notify(max_attempts=give_up)
        for record in pending:
            taken, failures = self._deliver(record)
            with self._uow_factory() as uow:
                if taken:
                    uow.alerts.record_notified(record.id, at=self._clock())
                    if failures:
                        uow.alerts.record_notify_failure(record.id, attempts=failures)
                    result.notified.append(record.id)
                else:
                    uow.alerts.record_notify_failure(record.id, attempts=failures)
                    result.failed.append(record.id)
                    if record.notify_attempts + failures >= give_up:
                        result.given_up.append(record.id)
                        log.error(
                            "alert_notify_given_up",
                            alert_id=record.id,
                            attempts=record.notify_attempts + failures,
                        )
                uow.commit()
        return result
