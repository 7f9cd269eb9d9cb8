"""The simulation's events side (:mod:`sluice.sim.actors.events` and
:mod:`sluice.sim.events_invariants`): seeds run the relay through publish faults and crashes
between publish and mark without a finding, and each events check does fail when a relay loses,
reorders or invents events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest

from sluice.domain.events import Event, new_event
from sluice.ports.events import PublishAck, PublishError
from sluice.sandbox import Sandbox
from sluice.services.relay import Relay, _KeyOutcome
from sluice.sim import run_simulation
from sluice.sim.actors import events as events_actor

pytestmark = pytest.mark.slow

# These seeds were chosen before the exchange actor was added: they run without its draws.
EXCHANGE = False
SEEDS = range(1, 4)
STEPS = 200
MUTANT_STEPS = 150
# What the sweep must reach: crashes between publish and mark (so copies delivered again),
# every kind of publish fault, and deliveries.
REACHED = (
    "crash_events_after_publish",
    "events_publish_refused",
    "events_publish_lost",
    "events_publish_stored_no_ack",
    "events_delivered",
    "events_redelivered",
)


def _violations(result_violations: Sequence[str], check: str) -> list[str]:
    return [v for v in result_violations if f": {check}: " in v]


def test_seeds_deliver_every_event_once_after_dedupe_through_crashes_and_faults() -> None:
    reached: Counter[str] = Counter()
    failures: list[str] = []
    for seed in SEEDS:
        result = run_simulation(seed, STEPS, crash_rate=0.1, fault_rate=0.1, exchange=EXCHANGE)
        if not result.ok:
            failures.append(result.as_json_line())
        reached.update(result.outcomes)
    assert failures == []
    assert [outcome for outcome in REACHED if reached[outcome] == 0] == [], reached
    # Every run's withdrawals went through the relay: their events were delivered.
    assert reached["events_delivered"] > 100


class _MarkFirstRelay(Relay):
    """A broken relay: marks the rows published, then publishes them. A crash in between (or a
    failed publish) loses the rows' events for good."""

    def _relay_key(self, key: str) -> _KeyOutcome:
        with self._uow() as uow:
            rows = uow.events.claim(ordering_key=key, limit=self.batch, lock=False)
            uow.events.mark_published([(row.event.event_id, 0) for row in rows], self._clock())
            uow.commit()
        if not rows:
            return _KeyOutcome()
        if self.after_publish is not None:
            self.after_publish(rows, [])
        self.runner.run(self.publisher.publish_many([row.event for row in rows]))
        return _KeyOutcome(published=len(rows))


def test_a_relay_marking_before_publishing_loses_events_and_the_check_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events_actor, "Relay", _MarkFirstRelay)
    result = run_simulation(1, MUTANT_STEPS, crash_rate=0.1, fault_rate=0.1, exchange=EXCHANGE)
    lost = _violations(result.violations, "events_delivered")
    assert lost, result.as_json_line()
    assert all("never delivered" in v for v in lost), lost


class _ReversingPublisher(events_actor.FlakyPublisher):
    """A broken bus: takes each batch in reverse order."""

    async def publish_many(self, events: Sequence[Event]) -> list[PublishAck | PublishError]:
        results = await super().publish_many(list(reversed(events)))
        return list(reversed(results))


def test_a_bus_reordering_a_subject_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_actor, "FlakyPublisher", _ReversingPublisher)
    monkeypatch.setattr(events_actor, "BATCHES", (100,))
    result = run_simulation(1, MUTANT_STEPS, crash_rate=0.0, fault_rate=0.1)
    found = _violations(result.violations, "events_order")
    assert found, result.as_json_line()
    assert "without a failed publish before it" in found[0]


class _OvertakingPublisher(events_actor.FlakyPublisher):
    """The publisher without the per-subject gate: a subject's later events still go out after
    one of its publishes failed, so the failed one's retry can land after them."""

    async def publish_many(self, events: Sequence[Event]) -> list[PublishAck | PublishError]:
        results: list[PublishAck | PublishError] = []
        for event in events:  # one call each: a failure gates nothing after it
            results += await super().publish_many([event])
        return results


def test_a_retry_landing_after_a_later_event_of_its_subject_is_found(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(events_actor, "FlakyPublisher", _OvertakingPublisher)
    result = run_simulation(1, 300, crash_rate=0.1, fault_rate=0.1, exchange=EXCHANGE)
    found = _violations(result.violations, "events_order")
    assert found, result.as_json_line()
    assert "after a failed publish of it" in found[0]


def test_an_event_of_a_change_that_is_not_in_the_db_is_found() -> None:
    def ghost(step: int, sandbox: Sandbox) -> None:
        if step != 40:
            return
        event = new_event(
            "withdrawal_completed",
            "wd-never-committed",
            {"withdrawal_id": "wd-never-committed", "status": "completed"},
            at=sandbox.clock(),
        )
        with sandbox.database.uow() as uow:
            uow.events.add([event])
            uow.commit()

    result = run_simulation(1, MUTANT_STEPS, crash_rate=0.0, fault_rate=0.0, tamper=ghost)
    found = _violations(result.violations, "events_aggregates")
    assert found == [
        "end: events_aggregates: withdrawal_completed "
        + found[0].split("withdrawal_completed ")[1].split(" ")[0]
        + " for withdrawal wd-never-committed, not in the DB"
    ], result.as_json_line()
    # Nothing else is wrong: delivered once, in order.
    assert result.violations == found
