"""The demo's events chapter (:mod:`sluice.demo.events`) on a small demo world: the demo's own
ledger and Integration DB with a few Canton Coin deposits ingested (their events in the outbox).

How: the chapter runs against the real :class:`Exchange`, then its report is printed to a
string. Every step it reports must hold, and what it reports is checked again from the
Integration DB: the outbox (every row published, the counts by type, the envelope shown), the
rule's alert (acknowledged by the operator, audited, resolved), and the ledger breaker's
transitions (its alert and events).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import pytest
from rich.console import Console
from sqlalchemy import select

from sluice.demo import events
from sluice.demo.events import OPERATOR, RULE, EventsStory
from sluice.demo.report import Sections
from sluice.demo.world import Exchange
from sluice.store.events_tables import event_outbox
from tests.e2e.demo_support import small_demo, small_plan

STEPS = 11
DEPOSITS = 8  # Canton Coin deposits of the demo's plan: their deposit_credited events


@dataclass
class Told:
    story: EventsStory
    report: str
    exchange: Exchange


@pytest.fixture(scope="module")
def told(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Told]:
    data = tmp_path_factory.mktemp("demo") / "data"
    small = small_plan(DEPOSITS)
    ledger, exchange = small_demo(data, small)
    database = exchange.database
    story = events.CHAPTER.run(exchange, lambda _message: nullcontext())
    output = io.StringIO()
    console = Console(file=output, width=600, color_system=None)  # no row wraps
    ok = events.CHAPTER.show(console, story, Sections())
    assert ok, output.getvalue()
    yield Told(story, output.getvalue(), exchange)
    database.dispose()
    ledger.close()


def _outbox(told: Told) -> list[dict[str, object]]:
    with told.exchange.database.engine.connect() as connection:
        rows = connection.execute(select(event_outbox).order_by(event_outbox.c.seq)).mappings()
        return [dict(row) for row in rows]


def test_every_step_of_the_chapter_holds_and_is_reported(told: Told) -> None:
    report = told.report
    assert [step.ok for step in told.story.steps] == [True] * STEPS
    assert "1. Events published to the in-process bus" in report
    assert "2. Relay, alert rules and circuit breakers" in report
    assert "3. /metrics (excerpt)" in report
    assert "✗" not in report and report.count("✓") == STEPS
    assert "fired (warning): " in report
    assert f"acknowledged by {OPERATOR}" in report
    assert "breaker open after 10 failed calls (minimum 10, 50% of the window)" in report
    assert "refused without calling the ledger" in report
    assert "3 probes ok/ok/ok: breaker closed" in report
    assert "0 published; a copy of deposit_credited acked as a duplicate" in report
    assert "1 published (alert_resolved), 0 pending" in report
    assert "sluice_outbox_pending_events 0.0" in report
    assert 'sluice_operations_total{type="' in report  # the excerpt's busiest operation types


def test_what_was_published_is_every_outbox_row_once(told: Told) -> None:
    rows = _outbox(told)
    assert all(row["published_at"] is not None for row in rows)
    assert len({row["stream_seq"] for row in rows}) == len(rows)  # each event_id once on the bus
    # The first relay run published everything but the rule's resolution (it came after); the
    # breaker's alert was resolved when the breaker closed, before that run.
    counts = Counter(str(row["type"]) for row in rows)
    assert counts["alert_resolved"] == 2
    before = counts - Counter({"alert_resolved": 1})
    assert told.story.published == before
    assert told.story.received == sum(before.values())
    assert before["deposit_credited"] == DEPOSITS
    assert before["breaker_opened"] == 1 and before["breaker_closed"] == 1
    assert told.story.pending_before == DEPOSITS  # what the rule saw: the deposits' events
    sample = json.loads(told.story.sample)
    row = next(r for r in rows if r["event_id"] == sample["event_id"])
    assert sample["type"] == row["type"] == "deposit_credited"
    assert sample["aggregate_id"] == row["aggregate_id"]
    assert sample["payload"] == json.loads(str(row["payload"]))
    for line in json.dumps(sample, indent=2).splitlines():
        assert line in told.report


def test_the_rules_alert_was_acknowledged_and_resolved_and_the_breaker_raised_one(
    told: Told,
) -> None:
    with told.exchange.database.uow() as uow:
        found = uow.alerts.find(limit=100)
    by_kind = {alert.kind: alert for alert in found}
    rule = by_kind[f"rule:{RULE.name}"]
    assert rule.acknowledged_by == OPERATOR
    assert rule.resolved_at is not None
    opened = by_kind["breaker_open"]
    assert opened.id == "breaker_open:ledger" and opened.severity == "critical"
    assert opened.resolved_at is not None  # resolved when the breaker closed
    types = [row["type"] for row in _outbox(told)]
    assert types.count("alert_acknowledged") == 1
    assert types.count("alert_resolved") == 2  # the breaker's alert, then the rule's
