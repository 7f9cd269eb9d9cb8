"""The demo's events and monitoring chapter, on the embedded defaults (the in-process bus; no
NATS needed), after every other chapter's flows ran and wrote their events to the outbox:

* an alert rule (``outbox_backlog``: events waiting in the outbox) is evaluated against the
  metrics and fires, and an operator acknowledges it (audited);
* the ``ledger`` circuit breaker opens under injected ledger faults (every submission times out),
  refuses the next call without making it, lets probes through after its wait (an injected
  monotonic clock: no real 30 s) and closes again once the ledger answers;
* the relay publishes the outbox to the in-process bus with a subscriber attached: how many
  events of which types, one envelope; a second round publishes nothing, and the bus drops a
  copy of an event it already has (each ``event_id`` once); the outbox has nothing pending;
* the rule's alert resolves once the outbox is empty, and a ``/metrics`` excerpt shows the
  operations by type, the outbox's pending count and the reserve ratios.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

from prometheus_client import generate_latest
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from sluice.bus.inprocess import InProcessBus, InProcessPublisher
from sluice.config.alerts import AlertRule
from sluice.demo.report import Chapter, Sections, Status, mark
from sluice.demo.world import Exchange, log_to_file
from sluice.domain.breaker import BreakerSettings
from sluice.domain.events import Event
from sluice.domain.ledger import Transfer
from sluice.monitoring import metrics
from sluice.monitoring.alerts import RuleEvaluator
from sluice.monitoring.collectors import StateSources, install_state
from sluice.ports.ledger import CommandError, FactoryChoice
from sluice.services import alerts as alerts_service
from sluice.services.breaker_proxies import GuardedLedgerCommands
from sluice.services.breakers import BreakerOpenError, Breakers
from sluice.services.relay import Relay

OPERATOR = "demo-operator"
RULE = AlertRule.model_validate(
    {
        "name": "outbox_backlog",
        "metric": "sluice_outbox_pending_events",
        "operator": ">",
        "threshold": 0,
        "for": 0,
        "severity": "warning",
        "description": "events wait in the outbox: the relay is behind or stopped",
    }
)
BREAKER = BreakerSettings()  # the defaults: window 20, minimum 10 calls, 50 %, 30 s, 3 probes
# The /metrics lines the excerpt shows (by name prefix).
EXCERPT = (
    "sluice_operations_total",
    "sluice_outbox_pending_events",
    "sluice_reserve_ratio",
)
EXCERPT_OPERATIONS = 6  # operation lines shown (the largest counts)
# The envelope shown: the first of these types published, else the first event.
SAMPLE_TYPES = ("withdrawal_completed", "deposit_credited")


@dataclass(frozen=True, slots=True)
class Step:
    what: str
    result: str
    ok: bool


@dataclass(slots=True)
class EventsStory:
    """What the chapter did and saw."""

    steps: list[Step] = field(default_factory=list)
    published: Counter[str] = field(default_factory=Counter)  # event type → count
    received: int = 0  # envelopes the subscriber got
    sample: str = ""  # one envelope, pretty JSON
    pending_before: int = 0
    excerpt: list[str] = field(default_factory=list)

    def check(self, what: str, result: str, ok: bool) -> None:
        self.steps.append(Step(what, result, ok))


class _FlakyLedger:
    """Ledger commands that time out (no response: outcome unknown) while ``failing``."""

    def __init__(self) -> None:
        self.failing = True
        self.calls = 0

    def submit_transfer(self, *_args: Any, **_kwargs: Any) -> None:
        self.calls += 1
        if self.failing:
            raise CommandError("no response from the participant (injected)", definite=False)

    def exercise_instruction(self, *_args: Any, **_kwargs: Any) -> None:
        self.submit_transfer()


def _scrape() -> list[str]:
    return generate_latest(metrics.REGISTRY).decode().splitlines()


def _value(lines: list[str], name: str) -> float | None:
    for line in lines:
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _excerpt(lines: list[str]) -> list[str]:
    operations = [
        line
        for line in lines
        if line.startswith("sluice_operations_total{") and not line.endswith(" 0.0")
    ]
    operations.sort(key=lambda line: -float(line.rsplit(" ", 1)[1]))
    shown = operations[:EXCERPT_OPERATIONS]
    for line in lines:
        if line.startswith("#") or line.startswith("sluice_operations_total"):
            continue
        if line.startswith(EXCERPT):
            shown.append(line)
    return shown


def alert_rule(exchange: Exchange, story: EventsStory, evaluator: RuleEvaluator) -> str:
    """The backlog rule fires against the metrics, and an operator acknowledges its alert."""
    scraped = _scrape()
    pending = _value(scraped, "sluice_outbox_pending_events")
    story.pending_before = int(pending or 0)
    done = evaluator.evaluate()
    raised = done.raised[0] if done.raised else ""
    story.check(
        f"alert rule {RULE.name} ({RULE.metric} {RULE.op} {RULE.threshold:g})",
        f"fired ({RULE.severity}): {story.pending_before} events pending",
        bool(raised) and story.pending_before > 0,
    )
    if raised:
        record = alerts_service.acknowledge(
            exchange.database.uow, raised, actor=OPERATOR, at=exchange.clock()
        )
        story.check(
            "the operator acknowledges it",
            f"acknowledged by {record.acknowledged_by} (audited, alert_acknowledged)",
            record.acknowledged_by == OPERATOR,
        )
    return raised


def breaker(exchange: Exchange, story: EventsStory) -> None:
    """The ledger breaker opens under injected faults, refuses, probes after its wait, closes."""
    now = [0.0]
    registry = Breakers(
        {"ledger": BREAKER},
        monotonic=lambda: now[0],
        uow_factory=exchange.database.uow,
        clock=exchange.clock,
    )
    ledger = _FlakyLedger()
    commands = GuardedLedgerCommands(cast("Any", ledger), registry=registry)
    transfer, factory = cast("Transfer", None), cast("FactoryChoice", None)

    def submit() -> str:
        try:
            commands.submit_transfer(
                transfer, factory, act_as="treasury", command_id="demo", max_record_time=None
            )
        except CommandError:
            return "timed out"
        except BreakerOpenError:
            return "refused"
        return "ok"

    timeouts = 0
    while registry.get("ledger").state == "closed" and timeouts < BREAKER.window:
        timeouts += submit() == "timed out"
    state = registry.get("ledger").state
    story.check(
        "ledger submissions time out (injected faults)",
        f"breaker {state} after {timeouts} failed calls (minimum {BREAKER.min_calls}, "
        f"{BREAKER.failure_rate:.0%} of the window)",
        state == "open" and timeouts == BREAKER.min_calls,
    )
    calls = ledger.calls
    refused = submit()
    story.check(
        "the next submission while open",
        "refused without calling the ledger (the work waits)",
        refused == "refused" and ledger.calls == calls,
    )
    ledger.failing = False
    now[0] += BREAKER.open_s
    answers = [submit() for _ in range(BREAKER.probes)]
    state = registry.get("ledger").state
    story.check(
        f"{BREAKER.open_s:g} s later (injected clock), the ledger answers again",
        f"{len(answers)} probes {'/'.join(answers)}: breaker {state}",
        state == "closed" and answers == ["ok"] * BREAKER.probes,
    )


def relay(exchange: Exchange, story: EventsStory) -> Relay:
    """The relay publishes the outbox to the in-process bus, once; then again (nothing new)."""
    bus = InProcessBus()
    received: list[Event] = []
    bus.subscribe(received.append)
    relay = Relay(exchange.database.uow, InProcessPublisher(bus), clock=exchange.clock)
    published = 0
    while True:
        done = relay.run_round()
        published += done.published
        if not done.more:
            break
    story.published = Counter(event.type for event in received)
    story.received = len(received)
    preferred = (e for kind in SAMPLE_TYPES for e in received if e.type == kind)
    sample = next(preferred, received[0] if received else None)
    if sample is not None:
        story.sample = json.dumps(json.loads(sample.encode()), indent=2)
    story.check(
        "the relay publishes the outbox to the in-process bus",
        f"{published} events, {len(story.published)} types; the subscriber got {len(received)}",
        published > 0 and len(received) == published,
    )
    again = relay.run_round()
    copy = bus.publish(sample) if sample is not None else None
    story.check(
        "publishing again",
        f"{again.published} published; a copy of {sample.type if sample else '?'} acked as a "
        f"duplicate (seq {copy.seq if copy else '?'}), not delivered: the subscriber still "
        f"has {len(received)}",
        again.published == 0
        and copy is not None
        and copy.duplicate
        and story.received == len(received),
    )
    story.check(
        "the outbox",
        f"{again.pending} pending",
        again.pending == 0,
    )
    return relay


def run(exchange: Exchange, status: Status) -> EventsStory:
    story = EventsStory()
    with (
        status("events: an alert, a breaker, the relay to the in-process bus, /metrics…"),
        log_to_file(exchange.world.data_dir / "events.log"),
    ):
        metrics.listen()  # count committed operations from now on, as `sluice serve` does
        install_state(StateSources(engine=exchange.database.engine, clock=exchange.clock))
        try:
            evaluator = RuleEvaluator(
                [RULE], exchange.database.uow, metrics.REGISTRY, clock=exchange.clock
            )
            raised = alert_rule(exchange, story, evaluator)
            breaker(exchange, story)
            published = relay(exchange, story)
            try:
                done = evaluator.evaluate()
                story.check(
                    f"alert rule {RULE.name} again",
                    "resolved: nothing pending",
                    bool(raised) and raised in done.resolved,
                )
                last = published.run_round()  # the resolution's own event
                story.check(
                    "the relay after it",
                    f"{last.published} published (alert_resolved), {last.pending} pending",
                    last.published == 1 and last.pending == 0,
                )
            finally:
                published.close()
            story.excerpt = _excerpt(_scrape())
            pending = _value(story.excerpt, "sluice_outbox_pending_events")
            story.check("/metrics: sluice_outbox_pending_events", f"{pending:g}", pending == 0)
        finally:
            install_state(None)
    return story


def show(console: Console, story: EventsStory, sections: Sections) -> bool:
    console.print()
    console.print(f"{sections.next()}. Events published to the in-process bus")
    types = Table()
    types.add_column("type")
    types.add_column("events", justify="right")
    for kind, count in sorted(story.published.items(), key=lambda item: (-item[1], item[0])):
        types.add_row(kind, str(count))
    console.print(types)
    console.print(
        f"{sum(story.published.values())} events, each to its subject "
        "sluice.<aggregate_type>.<aggregate_id>; consumers dedupe on event_id",
        markup=False,
        highlight=False,
    )
    console.print(Panel(story.sample or "(none)", title="one envelope", expand=False))
    steps = Table(
        title=f"{sections.next()}. Relay, alert rules and circuit breakers", title_justify="left"
    )
    for column in ("step", "result", ""):
        steps.add_column(column)
    for step in story.steps:
        steps.add_row(step.what, step.result, mark(step.ok))
    console.print()
    console.print(steps)
    console.print()
    console.print(f"{sections.next()}. /metrics (excerpt)")
    console.print(
        "  operations: the commits counted since this process began counting (as sluice serve "
        "does from its start)",
        markup=False,
        highlight=False,
    )
    for line in story.excerpt:
        console.print(f"  {line}", markup=False, highlight=False)
    return bool(story.steps) and all(step.ok for step in story.steps)


CHAPTER: Chapter[EventsStory] = Chapter("events, metrics, alerts and breakers", run, show)
