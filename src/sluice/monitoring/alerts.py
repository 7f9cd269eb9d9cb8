"""Alert rules, evaluated: each evaluation collects the metrics, compares each rule's series
with its threshold, and raises, repeats or resolves the rule's alerts in one transaction with
their events.

* A series whose comparison holds is *pending* until it has held for the rule's ``for``
  seconds (kept in memory, as Prometheus does: a restart starts the wait again); then the alert
  *fires*. An alert's id is derived from the rule and the series' label set, so firing again
  while it is unresolved adds an occurrence (``occurrences``, ``last_seen_at``) to the same row.
* An unresolved alert of a rule whose series no longer satisfies the comparison (or no longer
  exists) is resolved (``resolved_at``, ``alert_resolved``). Firing again later reopens the same
  row: a new ``created_at``, one occurrence, acknowledgement and notification cleared, and a new
  ``alert_raised``.
* ``alerts_open`` is a metric of its own: the alerts not resolved, counted by severity, kind
  and rule (a rule's own alerts are left out of its count).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from sluice.config.alerts import ALERTS_OPEN, AlertRule, render_message
from sluice.ports import UnitOfWorkFactory
from sluice.ports.alerts import AlertRecord
from sluice.services.events import emit

log = structlog.get_logger(__name__)

Labels = tuple[tuple[str, str], ...]

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Labels
    value: float


def collect(registry: CollectorRegistry) -> list[Sample]:
    """Every sample of ``registry`` (collecting runs its collectors: a fresh reading)."""
    samples: list[Sample] = []
    for family in registry.collect():
        for sample in family.samples:
            samples.append(
                Sample(sample.name, tuple(sorted(sample.labels.items())), float(sample.value))
            )
    return samples


def open_alert_samples(records: Iterable[AlertRecord]) -> list[Sample]:
    """``alerts_open``: the alerts given, counted by severity, kind and rule."""
    counts: dict[Labels, int] = {}
    for record in records:
        labels = tuple(
            sorted(
                {
                    "severity": record.severity,
                    "kind": record.kind,
                    "rule": record.rule or "",
                }.items()
            )
        )
        counts[labels] = counts.get(labels, 0) + 1
    return [Sample(ALERTS_OPEN, labels, float(n)) for labels, n in counts.items()]


def _matches(labels: Labels, matchers: Sequence[tuple[str, str, str]]) -> bool:
    values = dict(labels)
    for label, op, expected in matchers:
        actual = values.get(label, "")
        if op == "=" and actual != expected:
            return False
        if op == "!=" and actual == expected:
            return False
        if op == "=~" and re.fullmatch(expected, actual) is None:
            return False
    return True


def alert_id_for(rule: str, labels: Labels) -> str:
    """The alert's id: the rule and, when the series has labels, a digest of them."""
    if not labels:
        return f"rule:{rule}"
    canonical = ",".join(f"{k}={v}" for k, v in labels)
    return f"rule:{rule}:{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"


def _format_labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def _number(value: float) -> str:
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return f"{value:.6g}"


@dataclass(slots=True)
class Firing:
    """One series of a rule whose comparison holds."""

    rule: AlertRule
    labels: Labels
    value: float
    since: datetime

    @property
    def alert_id(self) -> str:
        return alert_id_for(self.rule.name, self.labels)

    def message(self) -> str:
        values: dict[str, Any] = dict(self.labels)
        values.update(
            rule=self.rule.name,
            value=_number(self.value),
            threshold=_number(self.rule.threshold),
            op=self.rule.op,
            metric=self.rule.metric_name,
            labels=_format_labels(self.labels),
        )
        return render_message(self.rule.message, values)

    def details(self) -> dict[str, object]:
        return {
            "labels": dict(self.labels),
            "metric": self.rule.metric_name,
            "value": self.value,
            "threshold": self.rule.threshold,
            "op": self.rule.op,
            "for_s": self.rule.for_s,
            "pending_since": self.since.isoformat(),
        }


@dataclass(slots=True)
class Evaluation:
    """What one evaluation did: alert ids raised (new or reopened), repeated, resolved, and
    the series still pending (rule, labels)."""

    raised: list[str] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    pending: list[tuple[str, Labels]] = field(default_factory=list)


class RuleEvaluator:
    """Evaluates ``rules`` against ``registry`` (the app's metrics, or a test's); keeps in
    memory when each series started to hold and, for ``increase_s`` rules, recent values."""

    def __init__(
        self,
        rules: Sequence[AlertRule],
        uow_factory: UnitOfWorkFactory,
        registry: CollectorRegistry | None,
        *,
        clock: Callable[[], datetime],
    ) -> None:
        self.rules = list(rules)
        self._uow_factory = uow_factory
        self._registry = registry
        self._clock = clock
        self._since: dict[tuple[str, Labels], datetime] = {}
        self._history: dict[tuple[str, Labels], deque[tuple[datetime, float]]] = {}
        self._counted: set[str] = set()  # increase_s rules evaluated once

    def _series(
        self, rule: AlertRule, samples: Sequence[Sample], now: datetime
    ) -> dict[Labels, float]:
        name, matchers = rule.metric_name, rule.matchers
        series = {
            s.labels: s.value
            for s in samples
            if s.name == name and _matches(s.labels, matchers) and not math.isnan(s.value)
        }
        if rule.increase_s is not None:
            series = {
                labels: self._increase(rule, labels, value, now) for labels, value in series.items()
            }
            self._counted.add(rule.name)
        if rule.aggregate is not None and series:
            values = list(series.values())
            combined = {
                "sum": sum(values),
                "max": max(values),
                "min": min(values),
                "count": float(len(values)),
            }[rule.aggregate]
            series = {(): combined}
        return series

    def _increase(self, rule: AlertRule, labels: Labels, value: float, now: datetime) -> float:
        """The counter's increase over the rule's window, from the values this evaluator saw
        (a reset counts from zero). The first evaluation sees no increase; a series that
        appears later is new, so it counts from zero."""
        assert rule.increase_s is not None
        key = (rule.name, labels)
        history = self._history.get(key)
        if history is None:
            history = self._history[key] = deque()
            if rule.name in self._counted:
                history.append((now, 0.0))
        history.append((now, value))
        while len(history) > 1 and (now - history[1][0]).total_seconds() >= rule.increase_s:
            history.popleft()
        increase, previous = 0.0, history[0][1]
        for _, later in list(history)[1:]:
            increase += later - previous if later >= previous else later
            previous = later
        return increase

    def evaluate(self) -> Evaluation:
        """One evaluation of every rule; raises and resolves in one transaction."""
        now = self._clock()
        samples = collect(self._registry) if self._registry is not None else []
        result = Evaluation()
        if not self.rules:
            return result
        with self._uow_factory() as uow:
            if any(rule.metric_name == ALERTS_OPEN for rule in self.rules):
                unresolved = uow.alerts.find(status=("open", "acknowledged"), limit=100_000)
            else:
                unresolved = []
            for rule in self.rules:
                own = samples
                if rule.metric_name == ALERTS_OPEN:
                    own = open_alert_samples(a for a in unresolved if a.rule != rule.name)
                holding: set[Labels] = set()
                firing: list[Firing] = []
                compare = _COMPARE[rule.op]
                for labels, value in self._series(rule, own, now).items():
                    key = (rule.name, labels)
                    if not compare(value, rule.threshold):
                        self._since.pop(key, None)
                        continue
                    holding.add(labels)
                    since = self._since.setdefault(key, now)
                    if (now - since).total_seconds() >= rule.for_s:
                        firing.append(Firing(rule, labels, value, since))
                    else:
                        result.pending.append(key)
                for key in [k for k in self._since if k[0] == rule.name and k[1] not in holding]:
                    del self._since[key]
                for fire in firing:
                    self._fire(uow, fire, now, result)
                firing_ids = {fire.alert_id for fire in firing}
                for record in uow.alerts.open_rule_alerts(rule.name):
                    labels = _labels_of(record)
                    if record.id in firing_ids or labels in holding:
                        continue
                    if not uow.alerts.resolve(record.id, at=now):
                        continue  # resolved meanwhile (another evaluator): its event is written
                    emit(
                        uow,
                        "alert_resolved",
                        record.id,
                        {
                            "alert_id": record.id,
                            "rule": rule.name,
                            "severity": record.severity,
                            "kind": record.kind,
                            "reason": "condition_cleared",
                        },
                        at=now,
                    )
                    result.resolved.append(record.id)
            uow.commit()
        for alert_id in result.raised:
            log.warning("alert_raised", alert_id=alert_id)
        for alert_id in result.resolved:
            log.info("alert_resolved", alert_id=alert_id)
        return result

    def _fire(self, uow: Any, fire: Firing, now: datetime, result: Evaluation) -> None:
        rule = fire.rule
        message = fire.message()
        outcome = uow.alerts.raise_rule_alert(
            alert_id=fire.alert_id,
            rule=rule.name,
            severity=rule.severity,
            message=message,
            details=fire.details(),
            at=now,
        )
        if outcome == "repeated":
            result.repeated.append(fire.alert_id)
            return
        emit(
            uow,
            "alert_raised",
            fire.alert_id,
            {
                "alert_id": fire.alert_id,
                "rule": rule.name,
                "severity": rule.severity,
                "kind": f"rule:{rule.name}",
                "message": message,
                "labels": dict(fire.labels),
                "value": fire.value,
                "threshold": rule.threshold,
                "reopened": outcome == "reopened",
            },
            at=now,
        )
        result.raised.append(fire.alert_id)


def _labels_of(record: AlertRecord) -> Labels:
    labels = record.details.get("labels")
    if isinstance(labels, Mapping):
        return tuple(sorted((str(k), str(v)) for k, v in labels.items()))
    return ()
