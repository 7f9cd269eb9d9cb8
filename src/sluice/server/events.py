"""The events relay inside ``sluice serve`` (a loop of its own), and how the entry points build
a relay from the configuration: the publisher ``[events] bus`` names (NATS JetStream, or the
in-process bus of the embedded default), the relay locks of the database's engine, the commit
listener that wakes it when events commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from sluice import bootstrap
from sluice.bus.inprocess import InProcessPublisher
from sluice.bus.nats import JetStreamPublisher
from sluice.config.events import EventsConfig
from sluice.ports.events import EventPublisher
from sluice.server.loop import Outcome, Part, ServiceLoop
from sluice.services.relay import Relay
from sluice.store.events_repository import add_commit_listener, remove_commit_listener
from sluice.store.relay_lock import relay_lock

if TYPE_CHECKING:
    from sluice.server.wiring import Service

log = structlog.get_logger("sluice.events")

RELAY_PART = "events_relay"


def publisher_for(config: EventsConfig) -> EventPublisher:
    """JetStream at ``nats_url`` when ``bus = "nats"``, else the process's in-process bus."""
    if config.bus == "nats":
        return JetStreamPublisher(
            config.nats_url,
            config.stream,
            duplicate_window_s=config.duplicate_window_s,
            max_in_flight=config.max_in_flight,
            ack_timeout_s=config.ack_timeout_s,
            subject_prefix=config.subject_prefix,
        )
    return InProcessPublisher()


def relay_for(
    config: EventsConfig,
    database: bootstrap.Database,
    *,
    publisher: EventPublisher | None = None,
) -> Relay:
    """A relay on ``database`` publishing to ``publisher`` (by default :func:`publisher_for`);
    rows held ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, one relay per ordering key by the relay
    locks of :mod:`sluice.store.relay_lock`."""
    engine = database.engine
    return Relay(
        database.uow,
        publisher if publisher is not None else publisher_for(config),
        batch=config.batch,
        hold_rows=engine.url.get_backend_name() == "postgresql",
        lock_for=lambda key: relay_lock(engine, key),
    )


def events_loop(service: Service) -> ServiceLoop | None:
    """The relay's loop, or None when ``[events] relay_in_serve`` is off. It wakes at once when
    a unit of work commits events, else every ``interval_s``; the relay connects at its first
    round (a bus that is down is a failing part, tried again each round, and readiness says
    so)."""
    config = service.config.events
    if not config.relay_in_serve:
        log.info("events relay is off in serve ([events] relay_in_serve = false)")
        return None
    relay = relay_for(config, service.database)
    loop: ServiceLoop | None = None

    def run() -> Outcome:
        done = relay.run_round()
        if done.more and loop is not None:
            loop.wake()
        return Outcome(
            busy=bool(done.published or done.failed),
            counts={"published": done.published, "failed": done.failed, "pending": done.pending},
            problems=(done.error,) if done.error else (),
        )

    def wake(_events: object) -> None:
        if loop is not None:
            loop.wake()

    def close() -> None:
        remove_commit_listener(wake)
        relay.close()

    loop = ServiceLoop(
        [Part(RELAY_PART, run)],
        interval_s=config.interval_s,
        close=close,
        name="events",
    )
    add_commit_listener(wake)
    log.info("events relay", bus=config.bus, stream=config.stream if config.bus == "nats" else None)
    return loop
