"""The alert rules inside ``sluice serve``: evaluated, and their notifications sent, on a loop of
their own every ``[alerts] evaluate_interval_s``.

Two parts: ``alert_rules`` (evaluate the rules against the application's metrics, freshly
collected) and ``alert_notify`` (send the alerts not notified yet; skipped while the
``webhooks`` circuit breaker is open; a refusal by the breaker within a round leaves the
remaining webhook deliveries for the next round, uncounted). The loop runs when rules or
``[alerts] recipients`` are configured; without either there is nothing to evaluate and the
product's own alerts are in its log already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.monitoring.alerts import RuleEvaluator
from sluice.monitoring.metrics import REGISTRY
from sluice.monitoring.notify import Notifier
from sluice.server.loop import Outcome, Part, ServiceLoop

if TYPE_CHECKING:
    from sluice.server.wiring import Service

RULES_PART = "alert_rules"
NOTIFY_PART = "alert_notify"


def alerts_loop(service: Service) -> ServiceLoop | None:
    """The alert rules' loop, or None when there is nothing to evaluate or notify."""
    config = service.config.alerts
    rules = config.all_rules()
    if not rules and not config.recipients:
        return None
    clock = service.context.clock
    evaluator = RuleEvaluator(rules, service.database.uow, REGISTRY, clock=clock)
    notifier = Notifier(config, rules, service.database.uow, clock=clock)

    def evaluate() -> Outcome | None:
        done = evaluator.evaluate()
        busy = bool(done.raised or done.resolved)
        return Outcome(
            busy=busy,
            counts={
                "raised": len(done.raised),
                "repeated": len(done.repeated),
                "resolved": len(done.resolved),
                "pending": len(done.pending),
            },
        )

    def notify() -> Outcome | None:
        done = notifier.notify()
        return Outcome(
            busy=bool(done.notified or done.failed),
            counts={
                "notified": len(done.notified),
                "failed": len(done.failed),
                "given_up": len(done.given_up),
                "deferred": len(done.deferred),
            },
            problems=tuple(f"{a}: notification given up" for a in done.given_up),
        )

    parts = [Part(NOTIFY_PART, notify, flow="webhooks")]
    if rules:
        parts.insert(0, Part(RULES_PART, evaluate))
    return ServiceLoop(
        parts,
        interval_s=config.evaluate_interval_s,
        close=notifier.close,
        clock=clock,
        name="alerts",
    )
