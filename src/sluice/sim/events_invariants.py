"""The events side of a simulation run: what the relay's consumer received, and the checks on it.

The events actor (:mod:`sluice.sim.actors.events`) runs the relay over the run's outbox to a
publisher that fails now and then (refused, or no ack in time — "outcome unknown", delivered or
not) and a relay that may crash between publish and mark; a consumer receives every envelope
delivered and dedupes on ``event_id``. What it saw is kept here (:class:`EventsWorld`, beside the
run's state, by identity) and checked:

* ``events_delivered`` (at the end, after the final drain): every outbox row committed before the
  drain's relay last finished is marked published and was delivered to the consumer at least
  once; after dedupe, exactly once; the consumer received nothing that is not a committed outbox
  row;
* ``events_order`` (every step the actor acted, and at the end): per subject, the consumer's
  first deliveries come in outbox ``seq`` order, with no exception: a failed publish (refused, or
  no ack in time) is published again before any later event of its subject reaches the bus (the
  publisher never has two unacked publishes of one subject, and sends nothing more of a subject
  once one of its publishes failed);
* ``events_aggregates`` (at the end): no event for a change that was rolled back — the aggregate
  of every withdrawal event is a payout record (a withdrawal or a return) in the DB; and every
  completed one has exactly one ``withdrawal_completed`` event (none for another status).
"""

from __future__ import annotations

import weakref
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import func, select

from sluice.domain.events import Event
from sluice.domain.withdrawals import PAYOUT_KINDS
from sluice.sim.state import DatabaseState, SimulationState
from sluice.store import tables
from sluice.store.events_tables import event_outbox

WITHDRAWAL_EVENTS = (
    "withdrawal_requested",
    "withdrawal_submitted",
    "withdrawal_completed",
    "withdrawal_failed",
    "withdrawal_cancelled",
)


@dataclass(slots=True)
class EventsWorld:
    """What the consumer saw: every delivery (with duplicates), the first delivery of each event
    in order (with its tick), and the ticks at which a publish failed without reaching the bus."""

    tick: int = 0  # counts deliveries and failures, in the order they happened
    deliveries: Counter[str] = field(default_factory=Counter)  # event id → times delivered
    first: dict[str, tuple[int, str]] = field(default_factory=dict)  # id → (tick, subject)
    order: list[str] = field(default_factory=list)  # event ids, first deliveries in order
    lost_at: dict[str, int] = field(default_factory=dict)  # id → tick of its first lost publish
    processed: Counter[str] = field(default_factory=Counter)  # after dedupe: id → times handled
    checked_order: int = 0  # first deliveries already checked for order
    drained_seq: int = 0  # the highest outbox seq committed when the drain's relay last finished

    def deliver(self, event: Event) -> None:
        """The consumer receives ``event``: handled once per event id (dedupe)."""
        self.tick += 1
        self.deliveries[event.event_id] += 1
        if event.event_id in self.first:
            return
        self.first[event.event_id] = (self.tick, event.subject)
        self.order.append(event.event_id)
        self.processed[event.event_id] += 1

    def lost(self, event: Event) -> None:
        """A publish of ``event`` failed and the bus did not take it."""
        self.tick += 1
        self.lost_at.setdefault(event.event_id, self.tick)


_worlds: weakref.WeakKeyDictionary[SimulationState, EventsWorld] = weakref.WeakKeyDictionary()


def world_of(sim: SimulationState) -> EventsWorld | None:
    """The run's events side, if its actor has acted."""
    return _worlds.get(sim)


def keep(sim: SimulationState, world: EventsWorld) -> EventsWorld:
    _worlds[sim] = world
    return world


def max_seq(sim: SimulationState) -> int:
    """The highest outbox seq committed now (0: none)."""
    with sim.engine.connect() as connection:
        found = connection.execute(select(func.max(event_outbox.c.seq))).scalar_one_or_none()
    return int(found or 0)


def _outbox(sim: SimulationState) -> dict[str, tuple[int, str, str, bool]]:
    """event id → (seq, type, aggregate id, published) of every committed outbox row."""
    with sim.engine.connect() as connection:
        rows = connection.execute(
            select(
                event_outbox.c.event_id,
                event_outbox.c.seq,
                event_outbox.c.type,
                event_outbox.c.aggregate_id,
                event_outbox.c.published_at,
            )
        ).all()
    return {
        r.event_id: (int(r.seq), r.type, r.aggregate_id, r.published_at is not None) for r in rows
    }


def check_delivered(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    world = world_of(sim)
    if world is None or not final:
        return
    outbox = _outbox(sim)
    for event_id, (seq, kind, aggregate, published) in outbox.items():
        if seq > world.drained_seq:
            # Committed after the drain's relay finished (the final checks' own reconciliation
            # run): nobody relayed it yet, and it is not counted.
            sim.result.outcomes["events_after_drain"] += 1
            continue
        if not published:
            sim.violation("events_delivered", f"{kind} {event_id} (seq {seq}) is not published")
        if world.deliveries[event_id] == 0:
            sim.violation(
                "events_delivered", f"{kind} {event_id} (seq {seq}, {aggregate}) never delivered"
            )
        elif world.processed[event_id] != 1:
            sim.violation(
                "events_delivered",
                f"{kind} {event_id} handled {world.processed[event_id]} times after dedupe",
            )
    for event_id in world.deliveries:
        if event_id not in outbox:
            sim.violation("events_delivered", f"{event_id} was delivered but is not in the outbox")
    sim.result.outcomes["events_delivered"] = len(world.first)
    sim.result.outcomes["events_redelivered"] = sum(world.deliveries.values()) - len(world.first)


def check_order(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    world = world_of(sim)
    if world is None or (world.checked_order == len(world.order) and not final):
        return
    outbox = _outbox(sim)
    newest: dict[str, tuple[int, str]] = {}  # subject → (highest seq first-delivered, its id)
    for event_id in world.order:
        subject = world.first[event_id][1]
        row = outbox.get(event_id)
        if row is None:
            continue  # reported by events_delivered
        seq = row[0]
        high = newest.get(subject)
        if high is not None and high[0] > seq:
            lost = world.lost_at.get(event_id)
            failed = (
                " without a failed publish before it"
                if lost is None
                else " after a failed publish of it (its retry came after a later event)"
            )
            sim.violation(
                "events_order",
                f"{subject}: {event_id} (seq {seq}) first delivered after {high[1]} "
                f"(seq {high[0]}){failed}",
            )
        else:
            newest[subject] = (seq, event_id)
    world.checked_order = len(world.order)


def check_aggregates(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    if world_of(sim) is None or not final:
        return
    outbox = _outbox(sim)
    with sim.engine.connect() as connection:
        status = {
            r.id: r.status
            for r in connection.execute(
                select(tables.withdrawals.c.id, tables.withdrawals.c.status).where(
                    tables.withdrawals.c.kind.in_(sorted(PAYOUT_KINDS))
                )
            )
        }
    completed: Counter[str] = Counter()
    for event_id, (_seq, kind, aggregate, _published) in outbox.items():
        if kind not in WITHDRAWAL_EVENTS:
            continue
        if aggregate not in status:
            sim.violation(
                "events_aggregates", f"{kind} {event_id} for withdrawal {aggregate}, not in the DB"
            )
        if kind == "withdrawal_completed":
            completed[aggregate] += 1
    for withdrawal_id, current in status.items():
        want = 1 if current == "completed" else 0
        if completed[withdrawal_id] != want:
            sim.violation(
                "events_aggregates",
                f"withdrawal {withdrawal_id} is {current} with {completed[withdrawal_id]} "
                "withdrawal_completed events",
            )
