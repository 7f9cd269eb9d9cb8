"""The events relay, as ``sluice serve``'s relay loop runs it, and a consumer of what it publishes.

The relay publishes the run's outbox (every event the other actors' changes committed) to a
publisher standing for the bus: now and then it refuses an event, or gives no ack in time
("outcome unknown": the bus took the event or not), drawn from the run's random source; and
with the run's crash rate the relay dies between the acks and marking the rows, so it publishes
those rows again after the restart. Every envelope the bus takes reaches a consumer that dedupes
on ``event_id`` (:class:`~sluice.sim.events_invariants.EventsWorld`). The publisher does not
dedupe (the worst case: a copy outside JetStream's duplicate window), so the consumer sees every
copy the relay sends.

The relay's ``nats`` circuit breaker runs on the run's own clock (it moves on with each round),
so an open breaker pauses the relay for a few rounds, never for seconds of real time.

:func:`drain`, one of the drain's rounds, publishes everything left with no faults and no
crashes; the checks (:mod:`sluice.sim.events_invariants`) then find every event delivered.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from sluice.domain.events import Event, decode_event
from sluice.ports.events import OutboxRow, PublishAck, PublishError
from sluice.services.breakers import Breakers
from sluice.services.relay import AsyncRunner, Relay
from sluice.sim.actors.actor import Action, Actor
from sluice.sim.actors.bitcoin import quiet
from sluice.sim.events_invariants import EventsWorld, keep, max_seq, world_of
from sluice.sim.faults import Crash
from sluice.sim.state import SimulationState

# Of the events published while faults are on, the share that fails: refused (not taken), or no
# ack in time with the event taken or not.
PUBLISH_FAULT_RATE = 0.04
BATCHES = (3, 10, 100)  # the relay's batch, drawn per run
BREAKER_SECONDS_PER_ROUND = 5.0  # the breaker's clock moves this much each relay round
DRAIN_ROUNDS_MAX = 50

_runner_lock = threading.Lock()
_runner: AsyncRunner | None = None


def _shared_runner() -> AsyncRunner:
    """One loop thread for every run's relay (the publisher holds no connection)."""
    global _runner
    with _runner_lock:
        if _runner is None:
            _runner = AsyncRunner("sluice-sim-relay")
        return _runner


class FlakyPublisher:
    """The bus: delivers each event to the consumer and acks it, except the faults drawn; after a
    failed publish of a subject, nothing more of that subject in the call (as the JetStream
    publisher, which never has two unacked publishes of one subject)."""

    def __init__(self, sim: SimulationState, world: EventsWorld) -> None:
        self.sim = sim
        self.world = world
        self.faults = True
        self.seq = 0

    async def start(self) -> None:
        return None

    async def publish_many(self, events: Sequence[Event]) -> list[PublishAck | PublishError]:
        results: list[PublishAck | PublishError] = []
        outcomes = self.sim.result.outcomes
        failed: set[str] = set()  # subjects with a failed publish in this call
        for event in events:
            if event.subject in failed:
                results.append(PublishError("not sent: an earlier publish of its subject failed"))
                continue
            fault = self.faults and self.sim.rng.random() < PUBLISH_FAULT_RATE
            kind = self.sim.rng.choice(("refused", "lost", "stored")) if fault else "ok"
            if kind in ("refused", "lost"):
                self.world.lost(event)
                outcomes[f"events_publish_{kind}"] += 1
                failed.add(event.subject)
                results.append(PublishError(f"injected: {kind}", outcome_unknown=kind == "lost"))
                continue
            self.world.deliver(decode_event(event.encode()))
            self.seq += 1
            if kind == "stored":
                outcomes["events_publish_stored_no_ack"] += 1
                failed.add(event.subject)
                results.append(PublishError("injected: no ack in time", outcome_unknown=True))
            else:
                results.append(PublishAck("sim", self.seq))
        return results

    async def close(self) -> None:
        return None


@dataclass(slots=True)
class _Side:
    relay: Relay
    publisher: FlakyPublisher
    monotonic: list[float]


_sides: dict[int, _Side] = {}


def side(sim: SimulationState) -> _Side:
    """The run's relay, publisher and breaker clock, made on first use."""
    found = _sides.get(id(sim))
    if found is not None and world_of(sim) is not None:
        return found
    world = keep(sim, EventsWorld())
    publisher = FlakyPublisher(sim, world)
    monotonic = [0.0]

    def after_publish(_rows: Sequence[OutboxRow], _results: Sequence[object]) -> None:
        if sim.rng.random() < sim.crash_rate:
            raise Crash("events_after_publish")

    relay = Relay(
        sim.sandbox.database.uow,
        publisher,
        batch=sim.rng.choice(BATCHES),
        hold_rows=False,
        clock=lambda: sim.sandbox.clock(),
        after_publish=after_publish,
        runner=_shared_runner(),
        breakers=Breakers(monotonic=lambda: monotonic[0]),
    )
    made = _Side(relay, publisher, monotonic)
    _sides.clear()  # one run at a time: the previous run's side goes
    _sides[id(sim)] = made
    return made


def relay_round(sim: SimulationState) -> None:
    """One round of the relay (as its loop runs them after each commit or interval)."""
    here = side(sim)
    here.monotonic[0] += BREAKER_SECONDS_PER_ROUND
    with quiet():  # the relay logs each failed publish; the outcomes count them
        done = here.relay.run_round()
    outcomes = sim.result.outcomes
    outcomes["events_rounds"] += 1
    if done.breaker_open:
        outcomes["events_breaker_open"] += 1
    if done.failed:
        outcomes["events_rounds_failed"] += 1


def drain(sim: SimulationState) -> None:
    """Publish everything left, with no faults (the drain's relay)."""
    here = side(sim)
    here.publisher.faults = False
    for _ in range(DRAIN_ROUNDS_MAX):
        here.monotonic[0] += 60.0  # past any open breaker's wait
        committed = max_seq(sim)
        with quiet():
            done = here.relay.run_round()
        if done.pending == 0:
            here.publisher.world.drained_seq = committed
            return


ACTOR = Actor("events", (Action("relay_events", 6, relay_round),))
