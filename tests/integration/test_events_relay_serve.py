"""The relay's loop inside ``sluice serve`` (publishing to the in-process bus on the embedded
default, woken by commits), and the stream checked at start: an existing stream's duplicate
window and subjects brought to the configuration, a stream that cannot be made refused with its
reason."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import nats
import pytest

from sluice import bootstrap
from sluice.bus.inprocess import subscribe
from sluice.bus.nats import JetStreamPublisher
from sluice.config.events import EventsConfig
from sluice.domain.errors import ComponentCallFailedError
from sluice.domain.events import Event
from sluice.server.events import events_loop
from sluice.services.events import emit
from tests.integration.nats_support import NatsTarget

pytest_plugins = ["tests.integration.nats_support"]

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_serve_loop_publishes_to_in_process_subscribers_when_events_commit(
    sqlite_url: str,
) -> None:
    db = bootstrap.database(sqlite_url)
    # A long interval: the events arrive because the commit wakes the loop.
    config = SimpleNamespace(events=EventsConfig(interval_s=3600))
    got: list[Event] = []
    arrived = threading.Event()

    def receive(event: Event) -> None:
        got.append(event)
        if len(got) == 3:
            arrived.set()

    unsubscribe = subscribe(receive, type="withdrawal_requested")
    loop = events_loop(SimpleNamespace(config=config, database=db))  # type: ignore[arg-type]
    assert loop is not None and loop.name == "events"
    try:
        loop.start()
        deadline = time.monotonic() + 30
        while loop.rounds < 1 and time.monotonic() < deadline:  # the first (empty) round
            time.sleep(0.02)
        assert loop.rounds == 1
        with db.uow() as uow:
            sent = [emit(uow, "withdrawal_requested", f"w{i}", {"n": i}, at=T0) for i in range(3)]
            emit(uow, "deposit_credited", "d1", {"n": 9}, at=T0)
            uow.commit()
        assert arrived.wait(30), f"subscribers got {len(got)} events"
        # (arrived within seconds with an hour between rounds: the commit woke the loop)
        assert [e.envelope() for e in got] == [e.envelope() for e in sent]
        ready, detail = loop.readiness()
        assert ready, detail
    finally:
        unsubscribe()
        loop.stop()
        db.dispose()
    with bootstrap.database(sqlite_url).uow() as uow:
        assert uow.events.stats().pending == 0


def test_serve_loop_is_off_when_relay_in_serve_is_false(sqlite_url: str) -> None:
    config = SimpleNamespace(events=EventsConfig(relay_in_serve=False))
    assert events_loop(SimpleNamespace(config=config, database=None)) is None  # type: ignore[arg-type]


async def _config(target: NatsTarget, stream: str) -> tuple[list[str], float]:
    nc = await nats.connect(target.url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return list(info.config.subjects or []), float(info.config.duplicate_window or 0)
    finally:
        await nc.close()


def test_existing_stream_is_brought_to_the_configuration(nats_target: NatsTarget) -> None:
    async def run() -> tuple[str | None, str | None]:
        first = JetStreamPublisher(
            nats_target.url, nats_target.stream, duplicate_window_s=60,
            subject_prefix=nats_target.prefix,
        )  # fmt: skip
        await first.start()
        await first.close()
        again = JetStreamPublisher(
            nats_target.url, nats_target.stream, duplicate_window_s=90,
            subject_prefix=nats_target.prefix,
        )  # fmt: skip
        await again.start()
        await again.close()
        return first.stream_state, again.stream_state

    assert asyncio.run(run()) == ("created", "updated")
    assert asyncio.run(_config(nats_target, nats_target.stream)) == ([nats_target.subjects], 90.0)


def test_a_stream_that_cannot_be_made_fails_start_with_the_reason(
    nats_target: NatsTarget,
) -> None:
    async def run() -> None:
        owner = JetStreamPublisher(
            nats_target.url, nats_target.stream, subject_prefix=nats_target.prefix
        )
        await owner.start()
        await owner.close()
        # Another stream name on the same subjects: JetStream refuses overlapping subjects.
        other = JetStreamPublisher(
            nats_target.url, nats_target.stream + "_B", subject_prefix=nats_target.prefix
        )
        try:
            await other.start()
        finally:
            await other.close()

    with pytest.raises(ComponentCallFailedError, match="cannot create JetStream stream"):
        asyncio.run(run())


def test_an_unreachable_server_fails_start_clearly() -> None:
    publisher = JetStreamPublisher("nats://127.0.0.1:1", "NOPE", first_connect_timeout_s=2)
    with pytest.raises(ComponentCallFailedError, match="cannot connect to NATS"):
        asyncio.run(publisher.start())
