"""Alert notifications against a real local HTTP server: retries with bounded backoff, the JSON
body, giving up, log recipients, and the product's own alerts sent to ``[alerts] recipients``.

How: a threaded ``http.server`` on a free port answers 500 to its first N requests, then 200,
recording each request. The notifier's waits go to an injected ``sleep`` that records them (no
test sleeps); its webhook calls go through circuit breakers of the test's own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import structlog
from prometheus_client import CollectorRegistry, Gauge

from sluice import bootstrap
from sluice.config.alerts import AlertsConfig, parse_rules
from sluice.domain.breaker import BreakerSettings
from sluice.domain.deposits import Alert
from sluice.monitoring.alerts import RuleEvaluator
from sluice.monitoring.notify import Notifier
from sluice.services.alerts import get_alert
from sluice.services.breakers import Breakers
from sluice.store.bitcoin_rows import insert_alert


class Hook:
    """A webhook receiver failing its first ``fail_first`` requests with 500."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with hook._lock:
                    hook.requests.append((dict(self.headers), body))
                    failing = len(hook.requests) <= hook.fail_first
                self.send_response(500 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def database(database_url: str) -> Iterator[bootstrap.Database]:
    db = bootstrap.database(database_url)
    yield db
    db.dispose()


@pytest.fixture
def hooks() -> Iterator[list[Hook]]:
    made: list[Hook] = []
    yield made
    for hook in made:
        hook.close()


def hook(hooks: list[Hook], fail_first: int) -> Hook:
    made = Hook(fail_first)
    hooks.append(made)
    return made


def fresh_breakers() -> Breakers:
    return Breakers({}, default=BreakerSettings(window=100, min_calls=100))


def firing_rule(
    database: bootstrap.Database, clock: Clock, recipients: list[Any]
) -> tuple[list[Any], str]:
    registry = CollectorRegistry()
    Gauge("test_outbox_oldest_age_seconds", "age", registry=registry).set(900)
    rules = parse_rules(
        {
            "rules": [
                {
                    "name": "outbox_old",
                    "metric": "test_outbox_oldest_age_seconds",
                    "threshold": 60,
                    "severity": "critical",
                    "message": "oldest event {value}s",
                    "recipients": recipients,
                }
            ]
        },
        "test",
    )
    (alert_id,) = RuleEvaluator(rules, database.uow, registry, clock=clock).evaluate().raised
    return rules, alert_id


def test_a_webhook_is_retried_with_bounded_backoff_then_takes_the_alert(
    database: bootstrap.Database, hooks: list[Hook]
) -> None:
    receiver = hook(hooks, fail_first=3)
    clock = Clock()
    rules, alert_id = firing_rule(
        database, clock, [{"url": receiver.url, "headers": {"Authorization": "Bearer t0k"}}]
    )
    config = AlertsConfig(
        notify_attempts=5, notify_backoff_s=0.5, notify_backoff_max_s=1.5, notify_timeout_s=5
    )
    waits: list[float] = []
    notifier = Notifier(
        config, rules, database.uow, clock=clock, sleep=waits.append, breakers=fresh_breakers()
    )
    clock.now += timedelta(seconds=30)
    try:
        done = notifier.notify()
    finally:
        notifier.close()

    assert done.notified == [alert_id] and done.failed == []
    assert len(receiver.requests) == 4  # three 500s, then taken
    assert waits == [0.5, 1.0, 1.5]  # doubled, capped at notify_backoff_max_s
    headers, body = receiver.requests[-1]
    assert headers["Authorization"] == "Bearer t0k"
    assert body["alert_id"] == alert_id
    assert body["severity"] == "critical"
    assert body["rule"] == "outbox_old" and body["kind"] == "rule:outbox_old"
    assert body["message"] == "oldest event 900s"
    assert body["details"]["value"] == 900 and body["details"]["threshold"] == 60
    assert body["status"] == "open" and body["occurrences"] == 1
    assert body["created_at"] == "2026-03-01T12:00:00.000000Z"
    assert all(b == body for _, b in receiver.requests)  # the same body each try

    record = get_alert(database.uow, alert_id)
    assert record.notified_at == clock.now
    assert record.notify_attempts == 3  # the failed tries are counted
    notifier = Notifier(config, rules, database.uow, clock=clock, sleep=waits.append)
    assert notifier.notify().notified == []  # sent once
    notifier.close()
    assert len(receiver.requests) == 4


def test_a_failing_webhook_is_tried_again_next_round_then_given_up(
    database: bootstrap.Database, hooks: list[Hook]
) -> None:
    receiver = hook(hooks, fail_first=1000)
    clock = Clock()
    rules, alert_id = firing_rule(database, clock, ["log", receiver.url])
    config = AlertsConfig(
        notify_attempts=2, notify_backoff_s=10, notify_backoff_max_s=60, notify_give_up_after=5
    )
    waits: list[float] = []
    notifier = Notifier(
        config, rules, database.uow, clock=clock, sleep=waits.append, breakers=fresh_breakers()
    )
    try:
        first = notifier.notify()
        assert first.failed == [alert_id] and first.given_up == []
        assert get_alert(database.uow, alert_id).notify_attempts == 2
        assert get_alert(database.uow, alert_id).notified_at is None
        second = notifier.notify()
        assert second.failed == [alert_id] and second.given_up == []
        with structlog.testing.capture_logs() as logs:
            third = notifier.notify()
        assert third.given_up == [alert_id]
        assert any(
            e["event"] == "alert_notify_given_up" and e["alert_id"] == alert_id for e in logs
        )
        assert notifier.notify().failed == []  # given up: not tried again
    finally:
        notifier.close()
    assert len(receiver.requests) == 6
    assert get_alert(database.uow, alert_id).notify_attempts == 6
    assert waits == [10, 10, 10]  # one wait between the two tries of each round


def test_an_open_webhooks_breaker_stops_calls(
    database: bootstrap.Database, hooks: list[Hook]
) -> None:
    receiver = hook(hooks, fail_first=1000)
    clock = Clock()
    rules, alert_id = firing_rule(database, clock, [receiver.url])
    config = AlertsConfig(notify_attempts=3, notify_backoff_s=0)
    breakers = Breakers({}, default=BreakerSettings(window=4, min_calls=2, open_s=3600))
    notifier = Notifier(
        config, rules, database.uow, clock=clock, sleep=lambda _: None, breakers=breakers
    )
    try:
        notifier.notify()
    finally:
        notifier.close()
    assert breakers.get("webhooks").state == "open"
    assert len(receiver.requests) == 2  # the third try was refused by the open breaker
    # Only the two tries made count: the refusal is no try.
    assert get_alert(database.uow, alert_id).notify_attempts == 2


def test_a_breaker_refusal_is_no_try_and_defers_the_rest_of_the_round(
    database: bootstrap.Database, hooks: list[Hook]
) -> None:
    """Refused calls are not counted, not waited on, never given up: the alerts wait for the
    next round, and are sent once the breaker lets calls through. Alerts only for the log are
    still logged."""
    receiver = hook(hooks, fail_first=0)
    clock = Clock()
    with database.uow() as uow:
        connection = uow._connection  # type: ignore[attr-defined]
        for n in range(4):
            insert_alert(
                connection,
                Alert(id=f"payout:{n}:stuck", severity="critical", kind="stuck", message="x"),
                clock.now + timedelta(seconds=n),
            )
        insert_alert(
            connection,
            Alert(id="ingest:dust", severity="info", kind="dust", message="dust"),
            clock.now,
        )
        uow.commit()
    config = AlertsConfig.model_validate(
        {
            "recipients": {"critical": [receiver.url]},
            "notify_attempts": 3,
            "notify_backoff_s": 1,
            "notify_give_up_after": 3,
        }
    )
    breakers = Breakers({}, default=BreakerSettings(window=4, min_calls=2, open_s=3600))
    breakers.get("webhooks").force("open")
    waits: list[float] = []
    notifier = Notifier(
        config, [], database.uow, clock=clock, sleep=waits.append, breakers=breakers
    )
    try:
        with structlog.testing.capture_logs() as logs:
            for round_ in range(5):  # more rounds than notify_give_up_after tries
                done = notifier.notify()
                assert done.failed == [] and done.given_up == []
                assert done.notified == (["ingest:dust"] if round_ == 0 else [])
                assert len(done.deferred) == 4
        assert receiver.requests == [] and waits == []
        assert not any(e["event"] == "alert_webhook_failed" for e in logs)
        for n in range(4):
            record = get_alert(database.uow, f"payout:{n}:stuck")
            assert record.notify_attempts == 0 and record.notified_at is None
        assert get_alert(database.uow, "ingest:dust").notified_at is not None  # the log's

        breakers.get("webhooks").force(None)
        done = notifier.notify()
    finally:
        notifier.close()
    assert breakers.get("webhooks").state == "closed"
    assert sorted(done.notified) == [f"payout:{n}:stuck" for n in range(4)]
    assert len(receiver.requests) == 4


def test_log_recipients_and_the_products_own_alerts_by_severity(
    database: bootstrap.Database, hooks: list[Hook]
) -> None:
    pager = hook(hooks, fail_first=0)
    clock = Clock()
    with database.uow() as uow:
        connection = uow._connection  # type: ignore[attr-defined]
        insert_alert(
            connection,
            Alert(
                id="payout:7:stuck",
                severity="critical",
                kind="stuck_payout",
                message="payout 7 is stuck",
                details={"payout": "7"},
            ),
            clock.now,
        )
        insert_alert(
            connection,
            Alert(id="ingest:3", severity="info", kind="dust", message="dust received"),
            clock.now,
        )
        uow.commit()
    config = AlertsConfig.model_validate({"recipients": {"critical": [pager.url, "log"]}})
    notifier = Notifier(
        config, [], database.uow, clock=clock, sleep=lambda _: None, breakers=fresh_breakers()
    )
    try:
        with structlog.testing.capture_logs() as logs:
            done = notifier.notify()
    finally:
        notifier.close()
    assert sorted(done.notified) == ["ingest:3", "payout:7:stuck"]
    ((_, body),) = pager.requests  # only the critical one goes to the webhook
    assert body["alert_id"] == "payout:7:stuck" and body["rule"] is None
    assert body["kind"] == "stuck_payout" and body["details"] == {"payout": "7"}
    logged = sorted(e["alert_id"] for e in logs if e["event"] == "alert_notified")
    assert logged == ["ingest:3", "payout:7:stuck"]  # info: the log by default
