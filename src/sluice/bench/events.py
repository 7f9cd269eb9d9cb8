"""Measuring the events relay: events/s from committed outbox rows to JetStream acks, against
what bare nats-py publishes to the same kind of stream in the same run.

**The data.** A fresh, migrated Integration DB (a new SQLite file under a temporary directory by
default; a PostgreSQL database given with ``--db`` is EMPTIED first) gets N events committed to
its outbox in bulk (``uow.events.add``, 10,000 rows per transaction): realistic envelopes from
:func:`~sluice.domain.events.new_event` of a few types (withdrawals requested and completed,
deposits credited, Bitcoin deposits confirmed, iSTSi minted), spread over 5,000 aggregates, each
with a payload of about 300 bytes of JSON (customer, instrument, amount, counterparty, ids).

**The runs**, alternating: bare, relay, bare, relay (``--rounds`` pairs), the stream deleted
and created again before each run so JetStream's dedup window never short-circuits a publish.

* *bare*: the same N envelopes, encoded before the clock starts, published with nats-py's
  ``publish_async`` to the same subjects with the same ``Nats-Msg-Id`` headers and the same
  bound on acks in flight as the relay (``--in-flight``), until every ack is in. That is the
  bus's own rate on this machine: the ceiling the relay is compared with (``ratio``).
* *relay*: the relay (:mod:`sluice.services.relay` with the NATS JetStream publisher of
  :mod:`sluice.bus.nats`) from its first claim until the last row is marked published; every
  row is then checked published by a count, and the stream is checked to hold N messages.
  Before the second and later relay runs the rows are set unpublished again (and PostgreSQL's
  table vacuumed), so each run starts from the same N committed, unpublished rows.

The JSON line reports the medians (``events_per_s``, ``bare_per_s``, ``ratio`` = their
quotient) and each run's seconds. Targets (issue 18): ≥ 10,000 events/s and a ratio ≥ 0.5.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sluice import bootstrap
from sluice.bench.measure import reset_database
from sluice.bench.record import insert_table_row, machine
from sluice.config.events import EventsConfig
from sluice.domain.errors import ComponentCallFailedError
from sluice.domain.events import SUBJECT_PREFIX, Event, new_event, payload_json

SECTION = "## Events (`sluice bench events`)"
HEADER = (
    "| date | machine | db | events | in flight | batch | bare events/s | relay events/s "
    "| ratio | targets | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|\n"
)
EVENTS_TARGET = 10_000.0
RATIO_TARGET = 0.5
DEFAULT_EVENTS = 100_000
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
POSTGRESQL_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/sluice_bench_events"
AGGREGATES = 5_000
ROWS_PER_INSERT = 10_000
TYPES = (
    "withdrawal_requested",
    "withdrawal_completed",
    "deposit_credited",
    "btc_deposit_confirmed",
    "istsi_minted",
)


class EventsBenchError(ComponentCallFailedError):
    """The events benchmark could not reach NATS, or a run did not publish every event."""


@dataclass(frozen=True, slots=True)
class EventsBenchSettings:
    events: int = DEFAULT_EVENTS
    db: str | None = None  # None: a fresh SQLite file under a temporary directory
    nats_url: str = DEFAULT_NATS_URL
    stream: str = ""  # "": a bench-only name, made unique per run
    # Before every subject, so the bench stream overlaps no other stream's subjects.
    subject_prefix: str = ""
    rounds: int = 2
    max_in_flight: int = EventsConfig().max_in_flight
    batch: int = EventsConfig().batch
    ack_timeout_s: float = EventsConfig().ack_timeout_s
    duplicate_window_s: float = EventsConfig().duplicate_window_s


def bench_stream_name() -> str:
    return f"SLUICE_BENCH_{uuid.uuid4().hex[:8].upper()}"


# --- the data ------------------------------------------------------------------------------------


def make_events(count: int, at: datetime) -> list[Event]:
    """``count`` envelopes of :data:`TYPES` over :data:`AGGREGATES` aggregates, each payload
    about 300 bytes of JSON, ``occurred_at`` a millisecond apart ending at ``at``."""
    events = []
    start = at - timedelta(milliseconds=count)
    for index in range(count):
        kind = TYPES[index % len(TYPES)]
        aggregate = index % AGGREGATES
        customer = f"customer-{aggregate % 1_000:06d}"
        payload: dict[str, Any] = {
            "customer_id": customer,
            "account": f"{customer}::12209f3c2e7a41d5b8a06c1e4f",
            "instrument": "Amulet@DSO::1220b0c4f6a8e2d9137c5a4b",
            "amount": f"{(index * 7919) % 100_000}.{index % 10_000:04d}",
            "counterparty": f"receiver-{index % 97}::1220d06e1b3f5a7c9e2d4b6a8c",
            "operation_id": f"op-{uuid.UUID(int=index + 1)}",
            "attempt": 1 + index % 3,
            "reference": f"bench-{index:09d}",
        }
        events.append(
            new_event(
                kind,
                f"{kind.split('_', 1)[0]}-{aggregate:05d}",
                payload,
                at=start + timedelta(milliseconds=index),
                correlation_id=f"bench-correlation-{index // 100:06d}",
            )
        )
    return events


def seed_outbox(database: bootstrap.Database, events: Sequence[Event]) -> float:
    """Commit ``events`` to the outbox, :data:`ROWS_PER_INSERT` per transaction; the seconds."""
    started = time.perf_counter()
    for first in range(0, len(events), ROWS_PER_INSERT):
        with database.uow() as uow:
            uow.events.add(events[first : first + ROWS_PER_INSERT])
            uow.commit()
    return time.perf_counter() - started


def set_unpublished(database: bootstrap.Database) -> None:
    """Every outbox row unpublished again, for the next relay run."""
    engine = database.engine
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE event_outbox SET published_at = NULL, stream_seq = NULL, attempts = 0, "
            "last_error = NULL"
        )
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE event_outbox")
    else:
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE event_outbox")


def published_count(database: bootstrap.Database) -> int:
    with database.engine.connect() as connection:
        return int(
            connection.execute(
                sa.text("SELECT count(*) FROM event_outbox WHERE published_at IS NOT NULL")
            ).scalar_one()
        )


# --- the stream ----------------------------------------------------------------------------------


async def _connect(url: str) -> Any:
    import nats

    try:
        return await nats.connect(
            url, connect_timeout=3, max_reconnect_attempts=0, allow_reconnect=False
        )
    except Exception as exc:  # nats-py raises its own errors and OSError alike
        raise EventsBenchError(f"cannot reach NATS at {url}: {exc}") from exc


async def reset_stream(js: Any, settings: EventsBenchSettings) -> None:
    """Delete the bench stream (when it exists) and create it again empty, with the relay's
    subjects and duplicate window."""
    from nats.js.api import StreamConfig
    from nats.js.errors import NotFoundError

    with contextlib.suppress(NotFoundError):
        await js.delete_stream(settings.stream)
    try:
        await js.add_stream(
            StreamConfig(
                name=settings.stream,
                subjects=[f"{settings.subject_prefix}{SUBJECT_PREFIX}.>"],
                duplicate_window=settings.duplicate_window_s,
            )
        )
    except Exception as exc:
        raise EventsBenchError(
            f"cannot create the stream {settings.stream} (subjects "
            f"{settings.subject_prefix}{SUBJECT_PREFIX}.>) at {settings.nats_url}: {exc}"
        ) from exc


async def delete_stream(url: str, stream: str) -> None:
    from nats.js.errors import NotFoundError

    client = await _connect(url)
    try:
        with contextlib.suppress(NotFoundError):
            await client.jetstream().delete_stream(stream)
    finally:
        await client.close()


async def stream_messages(js: Any, stream: str) -> int:
    info = await js.stream_info(stream)
    return int(info.state.messages)


# --- the runs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Encoded:
    subject: str
    data: bytes
    headers: dict[str, str]


def encode_all(events: Sequence[Event], subject_prefix: str = "") -> list[Encoded]:
    """Each event as the relay publishes it: subject, envelope bytes, dedup id header."""
    return [
        Encoded(f"{subject_prefix}{event.subject}", event.encode(), {"Nats-Msg-Id": event.event_id})
        for event in events
    ]


async def bare_run(settings: EventsBenchSettings, messages: Sequence[Encoded]) -> float:
    """Publish ``messages`` with nats-py alone to the emptied stream, at most
    ``max_in_flight`` acks outstanding; the seconds until the last ack. Every ack is checked."""
    client = await _connect(settings.nats_url)
    try:
        js = client.jetstream(
            timeout=settings.ack_timeout_s, publish_async_max_pending=settings.max_in_flight
        )
        await reset_stream(js, settings)
        started = time.perf_counter()
        futures = []
        for message in messages:
            futures.append(
                await js.publish_async(message.subject, message.data, headers=message.headers)
            )
        acks = await asyncio.gather(*futures, return_exceptions=True)
        elapsed = time.perf_counter() - started
        failed = [ack for ack in acks if isinstance(ack, BaseException)]
        if failed:
            raise EventsBenchError(f"bare nats-py: {len(failed)} publishes failed: {failed[0]!r}")
        duplicates = sum(1 for ack in acks if getattr(ack, "duplicate", False))
        held = await stream_messages(js, settings.stream)
        if duplicates or held != len(messages):
            raise EventsBenchError(
                f"bare nats-py: the stream holds {held} of {len(messages)} messages "
                f"({duplicates} acked as duplicates)"
            )
        return elapsed
    finally:
        await client.close()


def relay_run(database: bootstrap.Database, settings: EventsBenchSettings, count: int) -> float:
    """The relay, from its first claim to the last row marked published, into the emptied
    stream; the seconds. Every row is then checked published and the stream to hold ``count``."""
    asyncio.run(_reset_stream_only(settings))
    elapsed = _time_relay(database, settings)
    marked = published_count(database)
    held = asyncio.run(_stream_messages_only(settings))
    if marked != count or held != count:
        raise EventsBenchError(
            f"relay: {marked} of {count} rows marked published, the stream holds {held}"
        )
    return elapsed


async def _reset_stream_only(settings: EventsBenchSettings) -> None:
    client = await _connect(settings.nats_url)
    try:
        await reset_stream(client.jetstream(), settings)
    finally:
        await client.close()


async def _stream_messages_only(settings: EventsBenchSettings) -> int:
    client = await _connect(settings.nats_url)
    try:
        return await stream_messages(client.jetstream(), settings.stream)
    finally:
        await client.close()


def _time_relay(database: bootstrap.Database, settings: EventsBenchSettings) -> float:
    """The relay as ``sluice events relay`` and ``sluice serve`` build it
    (:func:`sluice.server.events.relay_for`: rows held while publishing on PostgreSQL, one relay
    lock per ordering key), round after round at once until nothing is pending; connecting and
    checking the stream come before the clock starts."""
    from sluice.server.events import relay_for

    config = EventsConfig(
        bus="nats",
        nats_url=settings.nats_url,
        stream=settings.stream,
        duplicate_window_s=settings.duplicate_window_s,
        max_in_flight=settings.max_in_flight,
        ack_timeout_s=settings.ack_timeout_s,
        batch=settings.batch,
        subject_prefix=settings.subject_prefix,
    )
    relay = relay_for(config, database)
    try:
        relay.start()
        started = time.perf_counter()
        while True:
            done = relay.run_round()
            if done.error or done.failed or done.breaker_open or done.skipped:
                raise EventsBenchError(f"relay round: {json.dumps(done.as_json())}")
            if done.pending == 0:
                break
            if done.published == 0:
                raise EventsBenchError(f"relay round published nothing: {done.as_json()}")
        return time.perf_counter() - started
    finally:
        relay.close()


# --- the benchmark -------------------------------------------------------------------------------


def measure(settings: EventsBenchSettings) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); the JSON line's fields."""
    if not settings.stream:
        settings = _replace(settings, stream=bench_stream_name())
    if not settings.subject_prefix:
        settings = _replace(settings, subject_prefix=f"{settings.stream.lower()}.")
    with tempfile.TemporaryDirectory(prefix="sluice-bench-events-") as scratch:
        url = settings.db or f"sqlite:///{Path(scratch) / 'events.db'}"
        reset_database(url)
        database = bootstrap.database(url)
        try:
            return _measure(database, settings)
        finally:
            database.engine.dispose()
            asyncio.run(delete_stream(settings.nats_url, settings.stream))


def _replace(settings: EventsBenchSettings, **changes: Any) -> EventsBenchSettings:
    from dataclasses import replace

    return replace(settings, **changes)


def _measure(database: bootstrap.Database, settings: EventsBenchSettings) -> dict[str, Any]:
    events = make_events(settings.events, datetime.now(UTC))
    seed_s = seed_outbox(database, events)
    messages = encode_all(events, settings.subject_prefix)
    payload_bytes = statistics.median(len(payload_json(event.payload)) for event in events[:1000])
    envelope_bytes = statistics.median(len(message.data) for message in messages[:1000])
    bare_s: list[float] = []
    relay_s: list[float] = []
    for round_index in range(settings.rounds):
        bare_s.append(asyncio.run(bare_run(settings, messages)))
        if round_index:
            set_unpublished(database)
        relay_s.append(relay_run(database, settings, len(events)))
    count = len(events)
    bare_per_s = statistics.median(count / seconds for seconds in bare_s)
    events_per_s = statistics.median(count / seconds for seconds in relay_s)
    ratio = events_per_s / bare_per_s
    return {
        "events": count,
        "events_per_s": round(events_per_s, 1),
        "bare_per_s": round(bare_per_s, 1),
        "ratio": round(ratio, 3),
        "relay_s": [round(seconds, 3) for seconds in relay_s],
        "bare_s": [round(seconds, 3) for seconds in bare_s],
        "published": published_count(database),
        "db": database.engine.dialect.name,
        "machine": machine(),
        "load": round(os.getloadavg()[0], 1),
        "max_in_flight": settings.max_in_flight,
        "batch": settings.batch,
        "rounds": settings.rounds,
        "aggregates": min(AGGREGATES, count),
        "types": len(TYPES),
        "payload_bytes": int(payload_bytes),
        "envelope_bytes": int(envelope_bytes),
        "seed_s": round(seed_s, 3),
        "stream": settings.stream,
        "subjects": f"{settings.subject_prefix}{SUBJECT_PREFIX}.>",
        "nats_url": settings.nats_url,
        "targets_met": events_per_s >= EVENTS_TARGET and ratio >= RATIO_TARGET,
    }


def append_events_result(path: Path, result: dict[str, Any], *, command: str) -> None:
    """Add one row to the benchmark's table in ``path`` (made on first use), everything else in
    the file kept in place."""
    rate_met = "met" if result["events_per_s"] >= EVENTS_TARGET else "NOT met"
    ratio_met = "met" if result["ratio"] >= RATIO_TARGET else "NOT met"
    met = [f"≥ {EVENTS_TARGET:,.0f}/s: {rate_met}", f"ratio ≥ {RATIO_TARGET}: {ratio_met}"]
    row = (
        f"| {datetime.now(UTC):%Y-%m-%d} | {result['machine']}, load {result['load']} "
        f"| {result['db']} | {result['events']:,} | {result['max_in_flight']} "
        f"| {result['batch']} | {result['bare_per_s']:,.0f} | {result['events_per_s']:,.0f} "
        f"| {result['ratio']} | {'; '.join(met)} | `{command}` |\n"
    )
    insert_table_row(path, SECTION, HEADER, row)


def bench_command(settings: EventsBenchSettings, record: Path | None) -> dict[str, Any]:
    """``sluice bench events``: measure, print the JSON line, append the row to ``record``."""
    result = measure(settings)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    if record is not None:
        command = (
            " ".join(["sluice", *sys.argv[1:]])
            if sys.argv[1:2] == ["bench"]
            else f"sluice bench events --events {settings.events} --record {record}"
        )
        append_events_result(record, result, command=command)
    return result
