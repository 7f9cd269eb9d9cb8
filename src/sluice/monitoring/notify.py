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

A try the open ``webhooks`` breaker refuses is no try: nothing was sent, so it is not counted,
not waited on and never leads to giving up. The round stops calling webhooks there (the breaker
is shared by every webhook): that alert and every later one with a webhook recipient are left
for the next round untouched (``deferred``); alerts only for the log are still logged.

Each round takes the alerts critical first, then warning, then info, newest first within a
severity, so a backlog of older alerts cannot delay a new critical one (at most 100 a round; an
older one waits while newer ones of its severity are pending).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import structlog

from sluice.config.alerts import AlertRule, AlertsConfig, LogRecipient, Recipient, WebhookRecipient
from sluice.domain.ledger import format_timestamp
from sluice.ports import UnitOfWorkFactory
from sluice.ports.alerts import AlertRecord
from sluice.services.breakers import BreakerOpenError, Breakers, guard

log = structlog.get_logger(__name__)


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
    """What one round did: alerts notified, alerts whose round failed, alerts given up, and
    alerts left for the next round because the ``webhooks`` breaker refused the call."""

    notified: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Delivery:
    """One alert's delivery: whether every recipient took it, the tries that failed, and
    whether the ``webhooks`` breaker refused a call (the rest was then not tried)."""

    taken: bool
    failures: int
    refused: bool = False


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

    def _post(self, recipient: WebhookRecipient, body: dict[str, Any]) -> _Delivery:
        """Deliver to one webhook: whether it took it, the tries that failed, and whether the
        breaker refused a try (no call made: not counted, no wait, no further try)."""
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
                return _Delivery(True, failures)
            except BreakerOpenError:
                log.info(
                    "alert_webhook_deferred",
                    alert_id=body["alert_id"],
                    url=recipient.url,
                    reason="webhooks breaker open",
                )
                return _Delivery(False, failures, refused=True)
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
        return _Delivery(False, failures)

    def _deliver(self, record: AlertRecord, *, webhooks_refused: bool) -> _Delivery:
        """Send ``record`` to every recipient: whether all took it, the tries that failed, and
        whether the breaker refused a webhook call. After a refusal (in this alert or an earlier
        one of the round) an alert with a webhook recipient is not touched at all."""
        recipients = self.recipients(record)
        if webhooks_refused and any(isinstance(r, WebhookRecipient) for r in recipients):
            return _Delivery(False, 0, refused=True)
        body = alert_body(record)
        failed = 0
        all_taken = True
        for recipient in recipients:
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
            delivery = self._post(recipient, body)
            failed += delivery.failures
            if delivery.refused:
                return _Delivery(False, failed, refused=True)
            all_taken = all_taken and delivery.taken
        return _Delivery(all_taken, failed)

    def notify(self) -> NotifyResult:
        """One round over the alerts not notified yet (critical first, newest first)."""
        give_up = self._config.notify_give_up_after
        result = NotifyResult()
        with self._uow_factory() as uow:
            pending = uow.alerts.to_notify(max_attempts=give_up)
        refused = False
        for record in pending:
            delivery = self._deliver(record, webhooks_refused=refused)
            refused = refused or delivery.refused
            if delivery.refused and not delivery.failures:
                result.deferred.append(record.id)
                continue
            with self._uow_factory() as uow:
                if delivery.taken:
                    uow.alerts.record_notified(record.id, at=self._clock())
                    if delivery.failures:
                        uow.alerts.record_notify_failure(record.id, attempts=delivery.failures)
                    result.notified.append(record.id)
                else:
                    # Only tries that were made count; a refusal after them is no try.
                    uow.alerts.record_notify_failure(record.id, attempts=delivery.failures)
                    if delivery.refused:
                        result.deferred.append(record.id)
                    else:
                        result.failed.append(record.id)
                    if record.notify_attempts + delivery.failures >= give_up:
                        result.given_up.append(record.id)
                        log.error(
                            "alert_notify_given_up",
                            alert_id=record.id,
                            attempts=record.notify_attempts + delivery.failures,
                        )
                uow.commit()
        return result
