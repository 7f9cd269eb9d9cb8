"""Alert rules on SQLite and PostgreSQL: firing only after ``for``, deduplicated while open,
resolved when the condition clears, reopened when it fires again, acknowledged (audited, with
events), and the product's own alerts listed and acknowledged the same way.

How: the evaluator reads a test registry of its own gauges (the evaluator takes the registry
as a parameter) and an injected clock moved by hand; no test sleeps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from sluice import bootstrap
from sluice.config.alerts import AlertRule, AlertRulesError, load_rules, parse_rules
from sluice.domain.deposits import Alert
from sluice.domain.errors import InvalidOperationStateError, NotFoundError
from sluice.monitoring.alerts import RuleEvaluator, alert_id_for
from sluice.services.alerts import acknowledge, list_alerts
from sluice.store.bitcoin_rows import insert_alert

DOCS = Path(__file__).resolve().parents[2] / "docs"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def database(database_url: str) -> Iterator[bootstrap.Database]:
    db = bootstrap.database(database_url)
    yield db
    db.dispose()


def rule(**fields: Any) -> AlertRule:
    return parse_rules({"rules": [{"name": "r", "threshold": 0, **fields}]}, "test")[0]


def events_of(database: bootstrap.Database, type: str) -> list[dict[str, Any]]:
    with database.uow() as uow:
        return [dict(row.event.payload) for row in uow.events.find(type=type, limit=1000)]


def test_a_rule_fires_only_after_for_then_deduplicates_and_resolves(
    database: bootstrap.Database,
) -> None:
    registry = CollectorRegistry()
    age = Gauge("test_queue_age_seconds", "age", ["queue"], registry=registry)
    age.labels("withdrawals").set(10)
    age.labels("payouts").set(10)
    clock = Clock()
    lag = rule(
        name="queue_old",
        metric='test_queue_age_seconds{queue="withdrawals"}',
        operator=">",
        threshold=300,
        severity="critical",
        message="{queue} queue is {value}s old",
        **{"for": 60},
    )
    evaluator = RuleEvaluator([lag], database.uow, registry, clock=clock)

    assert evaluator.evaluate().raised == []
    age.labels("withdrawals").set(400)
    age.labels("payouts").set(9999)  # not matched by the rule
    first = evaluator.evaluate()
    assert first.raised == [] and len(first.pending) == 1
    clock.advance(59)
    assert evaluator.evaluate().raised == []
    assert list_alerts(database.uow).total == 0

    clock.advance(1)
    fired = evaluator.evaluate()
    alert_id = alert_id_for("queue_old", (("queue", "withdrawals"),))
    assert fired.raised == [alert_id]
    clock.advance(15)
    age.labels("withdrawals").set(500)
    assert evaluator.evaluate().repeated == [alert_id]
    clock.advance(15)
    assert evaluator.evaluate().repeated == [alert_id]

    page = list_alerts(database.uow, status=["open"])
    assert page.total == 1
    (alert,) = page.alerts
    assert alert.id == alert_id and alert.rule == "queue_old" and alert.severity == "critical"
    assert alert.occurrences == 3
    assert alert.created_at == datetime(2026, 3, 1, 12, 1, tzinfo=UTC)
    assert alert.last_seen_at == clock.now
    assert alert.message == "withdrawals queue is 500s old"
    assert alert.details["labels"] == {"queue": "withdrawals"}
    raised = events_of(database, "alert_raised")
    assert [e["alert_id"] for e in raised] == [alert_id]  # one event, not one per occurrence

    clock.advance(15)
    age.labels("withdrawals").set(100)
    assert evaluator.evaluate().resolved == [alert_id]
    assert list_alerts(database.uow, status=["open", "acknowledged"]).total == 0
    (resolved,) = list_alerts(database.uow, status=["resolved"]).alerts
    assert resolved.resolved_at == clock.now
    assert [e["alert_id"] for e in events_of(database, "alert_resolved")] == [alert_id]
    assert evaluator.evaluate().resolved == []  # resolved once

    # Firing again waits for ``for`` again, then reopens the same row as a new alert.
    age.labels("withdrawals").set(1000)
    assert evaluator.evaluate().raised == []
    clock.advance(60)
    assert evaluator.evaluate().raised == [alert_id]
    (reopened,) = list_alerts(database.uow, status=["open"]).alerts
    assert reopened.occurrences == 1 and reopened.resolved_at is None
    assert reopened.created_at == clock.now
    raised = events_of(database, "alert_raised")
    assert [e["reopened"] for e in raised] == [False, True]


def test_the_pending_wait_starts_again_when_the_condition_clears_before_for(
    database: bootstrap.Database,
) -> None:
    registry = CollectorRegistry()
    gauge = Gauge("test_outbox_oldest_age_seconds", "age", registry=registry)
    clock = Clock()
    evaluator = RuleEvaluator(
        [rule(name="outbox", metric="test_outbox_oldest_age_seconds", threshold=60, **{"for": 30})],
        database.uow,
        registry,
        clock=clock,
    )
    gauge.set(120)
    evaluator.evaluate()
    clock.advance(20)
    gauge.set(0)
    evaluator.evaluate()
    clock.advance(20)
    gauge.set(120)
    assert evaluator.evaluate().raised == []  # 40 s since it first held, but not in a row
    clock.advance(29)
    assert evaluator.evaluate().raised == []
    clock.advance(1)
    assert evaluator.evaluate().raised == [alert_id_for("outbox", ())]


def test_one_alert_per_label_set_aggregates_and_counter_increases(
    database: bootstrap.Database,
) -> None:
    registry = CollectorRegistry()
    ratio = Gauge("test_reserve_ratio_bps", "ratio", ["instrument"], registry=registry)
    failures = Counter("test_auth_failures", "auth", ["reason"], registry=registry)
    ratio.labels("BTC").set(9000)
    ratio.labels("ISTSI").set(8000)
    ratio.labels("USD").set(10_500)
    clock = Clock()
    rules = [
        rule(name="reserve_low", metric="test_reserve_ratio_bps", operator="<", threshold=10_000),
        rule(
            name="reserve_worst",
            metric="test_reserve_ratio_bps",
            operator="<",
            threshold=8500,
            aggregate="min",
        ),
        rule(
            name="auth_burst",
            metric="test_auth_failures_total",
            operator=">=",
            threshold=5,
            increase_s=300,
            aggregate="sum",
        ),
    ]
    evaluator = RuleEvaluator(rules, database.uow, registry, clock=clock)
    failures.labels("unknown_key").inc(50)  # before the first evaluation: no increase seen
    done = evaluator.evaluate()
    assert sorted(done.raised) == sorted(
        [
            alert_id_for("reserve_low", (("instrument", "BTC"),)),
            alert_id_for("reserve_low", (("instrument", "ISTSI"),)),
            alert_id_for("reserve_worst", ()),
        ]
    )
    clock.advance(60)
    failures.labels("unknown_key").inc(3)
    failures.labels("expired").inc(1)
    assert evaluator.evaluate().raised == []  # 4 in the window
    clock.advance(60)
    failures.labels("expired").inc(1)
    assert evaluator.evaluate().raised == [alert_id_for("auth_burst", ())]
    clock.advance(400)  # the increases fall out of the window
    done = evaluator.evaluate()
    assert done.resolved == [alert_id_for("auth_burst", ())]

    ratio.labels("BTC").set(10_001)
    done = evaluator.evaluate()
    assert done.resolved == [alert_id_for("reserve_low", (("instrument", "BTC"),))]
    assert done.repeated == [
        alert_id_for("reserve_low", (("instrument", "ISTSI"),)),
        alert_id_for("reserve_worst", ()),
    ]


def test_alerts_open_counts_the_products_own_alerts(database: bootstrap.Database) -> None:
    clock = Clock()
    evaluator = RuleEvaluator(
        [
            rule(
                name="criticals",
                metric='alerts_open{severity="critical"}',
                operator=">=",
                threshold=1,
                aggregate="sum",
                severity="warning",
            )
        ],
        database.uow,
        None,
        clock=clock,
    )
    assert evaluator.evaluate().raised == []
    with database.uow() as uow:
        connection = uow._connection  # type: ignore[attr-defined]
        insert_alert(
            connection,
            Alert(id="stuck:1", severity="critical", kind="stuck_payout", message="stuck"),
            clock.now,
        )
        uow.commit()
    assert evaluator.evaluate().raised == [alert_id_for("criticals", ())]
    acknowledge(database.uow, "stuck:1", actor="ops", at=clock.now)
    assert evaluator.evaluate().resolved == [alert_id_for("criticals", ())]


def test_acknowledging_is_audited_emits_its_event_and_is_refused_twice(
    database: bootstrap.Database,
) -> None:
    registry = CollectorRegistry()
    state = Gauge("test_breaker_state", "state", ["flow"], registry=registry)
    state.labels("ledger").set(2)
    clock = Clock()
    evaluator = RuleEvaluator(
        [rule(name="breaker", metric="test_breaker_state", operator="==", threshold=2)],
        database.uow,
        registry,
        clock=clock,
    )
    (rule_alert,) = evaluator.evaluate().raised
    with database.uow() as uow:
        insert_alert(
            uow._connection,  # type: ignore[attr-defined]
            Alert(id="ingest:9", severity="warning", kind="unknown_instrument", message="m"),
            clock.now,
        )
        uow.commit()

    clock.advance(5)
    acked = acknowledge(database.uow, rule_alert, actor="alice", at=clock.now)
    assert acked.status == "acknowledged"  # a rule's alert stays until its condition clears
    assert acked.acknowledged_by == "alice" and acked.acknowledged_at == clock.now
    product = acknowledge(database.uow, "ingest:9", actor="bob", at=clock.now)
    assert product.status == "resolved"  # the product's own alerts resolve when acknowledged

    with pytest.raises(InvalidOperationStateError, match="acknowledged by alice"):
        acknowledge(database.uow, rule_alert, actor="carol", at=clock.now)
    with pytest.raises(NotFoundError):
        acknowledge(database.uow, "no-such-alert", actor="carol", at=clock.now)

    with database.uow() as uow:
        audited = [
            r.entry for r in uow.audit.records() if r.entry.operation == "alert_acknowledged"
        ]
    assert [(e.actor, e.parameters["alert_id"]) for e in audited] == [
        ("alice", rule_alert),
        ("bob", "ingest:9"),
    ]
    assert [(e["alert_id"], e["actor"]) for e in events_of(database, "alert_acknowledged")] == [
        (rule_alert, "alice"),
        ("ingest:9", "bob"),
    ]
    assert [e["alert_id"] for e in events_of(database, "alert_resolved")] == ["ingest:9"]

    assert list_alerts(database.uow, status=["acknowledged"]).total == 1
    assert list_alerts(database.uow, severity="warning", status=["resolved"]).total == 1
    assert list_alerts(database.uow).total == 2

    # Still firing while acknowledged: counted, not raised again; cleared: resolved.
    clock.advance(5)
    assert evaluator.evaluate().repeated == [rule_alert]
    state.labels("ledger").set(0)
    assert evaluator.evaluate().resolved == [rule_alert]
    (done,) = list_alerts(database.uow, status=["resolved"], severity="warning").alerts[:1]
    assert done.acknowledged_by in ("alice", "bob")


def test_rule_files_are_validated_naming_the_rule_and_field(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        """
[[rules]]
name = "ok"
metric = "sluice_outbox_oldest_age_seconds"
threshold = 300
for = 120
recipients = ["log", { url = "https://hooks.example.com/a", headers = { Authorization = "x" } }]

[[rules]]
name = "broken"
metric = "sluice_x{flow=ledger}"
operator = "=>"
threshold = 1
severity = "urgent"
recipients = [{ url = "ftp://nowhere" }]

[[rules]]
name = "ok"
metric = "sluice_y"
threshold = 1
"""
    )
    with pytest.raises(AlertRulesError) as raised:
        load_rules(path)
    problems = raised.value.problems
    assert any(p.startswith("rule broken: metric:") for p in problems), problems
    assert any(p.startswith("rule broken: operator:") for p in problems), problems
    assert any(p.startswith("rule broken: severity:") for p in problems), problems
    assert any(p.startswith("rule broken: recipients.0") for p in problems), problems
    assert "rule ok: name: defined twice" in problems
    with pytest.raises(AlertRulesError, match="does not exist"):
        load_rules(tmp_path / "missing.toml")


def test_the_example_rule_file_parses() -> None:
    rules = load_rules(DOCS / "alert-rules.example.toml")
    assert len(rules) >= 6
    assert {r.severity for r in rules} == {"critical", "warning", "info"}
    reserve = [r for r in rules if r.metric_name == "sluice_reserve_ratio"]
    assert reserve and reserve[0].op == "<" and reserve[0].threshold == 1.0  # 10,000 bps
    assert reserve[0].severity == "critical"


def known_metric_names() -> set[str]:
    """The names of :data:`~sluice.monitoring.metrics.REGISTRY`'s metric families and their
    samples, and those its scrape-time collector reports (some only when their source is there:
    a ledger, a Bitcoin node, an ingestion cursor)."""
    import inspect

    from sluice.monitoring import collectors
    from sluice.monitoring.metrics import REGISTRY

    known: set[str] = set()
    for family in REGISTRY.collect():
        known.add(family.name)
        known.update(sample.name for sample in family.samples)
    known.update(re.findall(r'"(sluice_[a-z0-9_]+)"', inspect.getsource(collectors)))
    return known


def exists(name: str, known: set[str]) -> bool:
    if name in known:
        return True
    return any(
        name.endswith(suffix) and name.removesuffix(suffix) in known
        for suffix in ("_total", "_bucket", "_sum", "_count", "_info", "_created")
    )


def test_the_grafana_dashboard_is_json_on_metrics_that_exist() -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    expressions = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(expressions) >= 20
    referenced = {
        name for expr in expressions for name in re.findall(r"\b(sluice_[a-z0-9_]+)", expr)
    }
    known = known_metric_names()
    assert not sorted(n for n in referenced if not exists(n, known))
    # Every metric the issue lists is on the dashboard.
    for wanted in (
        "sluice_http_requests_total",
        "sluice_http_request_duration_seconds_bucket",
        "sluice_operations_total",
        "sluice_operation_failures_total",
        "sluice_ingestion_lag_offsets",
        "sluice_ingestion_lag_seconds",
        "sluice_queue_depth",
        "sluice_queue_oldest_age_seconds",
        "sluice_outbox_pending_events",
        "sluice_outbox_oldest_pending_age_seconds",
        "sluice_reserve_ratio",
        "sluice_reserve_held_units",
        "sluice_bitcoin_node_height",
        "sluice_bitcoin_watcher_lag_blocks",
        "sluice_auth_failures_total",
        "sluice_circuit_breaker_state",
        "sluice_build_info",
    ):
        assert wanted in referenced, wanted


def test_the_example_rules_use_metrics_that_exist() -> None:
    known = known_metric_names()
    rules = load_rules(DOCS / "alert-rules.example.toml")
    used = {r.metric_name for r in rules} - {"alerts_open"}
    assert not sorted(n for n in used if not exists(n, known))


def test_the_serve_loop_evaluates_then_notifies(database: bootstrap.Database) -> None:
    from types import SimpleNamespace

    from sluice.config.alerts import AlertsConfig
    from sluice.server.alerts import alerts_loop

    clock = Clock()

    def service(alerts: AlertsConfig) -> Any:
        return SimpleNamespace(
            config=SimpleNamespace(alerts=alerts),
            database=database,
            context=SimpleNamespace(clock=clock),
        )

    assert alerts_loop(service(AlertsConfig())) is None  # no rules, no recipients
    config = AlertsConfig.model_validate(
        {
            "evaluate_interval_s": 5,
            "rules": [
                {
                    "name": "criticals",
                    "metric": 'alerts_open{severity="critical"}',
                    "aggregate": "count",
                    "operator": ">=",
                    "threshold": 1,
                }
            ],
        }
    )
    loop = alerts_loop(service(config))
    assert loop is not None
    assert [(p.name, p.flow) for p in loop.parts] == [
        ("alert_rules", None),
        ("alert_notify", "webhooks"),
    ]
    assert loop.interval_s == 5
    with database.uow() as uow:
        insert_alert(
            uow._connection,  # type: ignore[attr-defined]
            Alert(id="stuck:2", severity="critical", kind="stuck_payout", message="stuck"),
            clock.now,
        )
        uow.commit()
    evaluated, notified = (part.run() for part in loop.parts)
    assert evaluated is not None and evaluated.counts["raised"] == 1
    assert notified is not None and notified.counts["notified"] == 2  # the rule's, the product's
    assert {a.id: a.notified_at for a in list_alerts(database.uow).alerts} == {
        "rule:criticals": clock.now,
        "stuck:2": clock.now,
    }


def test_two_evaluators_resolving_the_same_alert_write_one_alert_resolved(
    database: bootstrap.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two evaluators (two ``sluice serve``, or ``sluice alerts evaluate`` beside one) both read
    the alert unresolved; the first resolves it, the second finds it resolved at its update and
    writes no second ``alert_resolved``."""
    from sluice.store.alerts_repository import SqlAlertRepository

    registry = CollectorRegistry()
    gauge = Gauge("test_backlog", "backlog", registry=registry)
    gauge.set(5)
    clock = Clock()
    backlog = rule(name="backlog", metric="test_backlog", operator=">", threshold=1)
    first = RuleEvaluator([backlog], database.uow, registry, clock=clock)
    second = RuleEvaluator([backlog], database.uow, registry, clock=clock)
    (alert_id,) = first.evaluate().raised
    assert second.evaluate().repeated == [alert_id]

    gauge.set(0)
    clock.advance(15)
    with database.uow() as uow:
        stale = uow.alerts.open_rule_alerts("backlog")  # what the second one read
    assert [a.id for a in stale] == [alert_id]
    assert first.evaluate().resolved == [alert_id]
    resolved_at = clock.now
    clock.advance(1)
    monkeypatch.setattr(SqlAlertRepository, "open_rule_alerts", lambda self, rule: stale)
    assert second.evaluate().resolved == []
    monkeypatch.undo()

    assert [e["alert_id"] for e in events_of(database, "alert_resolved")] == [alert_id]
    (record,) = list_alerts(database.uow, status=["resolved"]).alerts
    assert record.resolved_at == resolved_at  # the first resolution stands
    with database.uow() as uow:
        assert uow.alerts.resolve(alert_id, at=clock.now) is False
        assert uow.alerts.resolve("no-such-alert", at=clock.now) is False
