"""The events relay against the real NATS JetStream server: every committed event arrives, in
order per subject; a crash between publish and mark publishes again and JetStream's dedup (and a
consumer deduping on event_id) keeps each event once; a lost ack is published again from the
first unacked row; rolled back events never go out; a lower seq committing late still does; a
NATS restart mid-run loses nothing; in-process subscribers get the same envelopes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from sluice import bootstrap
from sluice.bus.inprocess import InProcessBus, InProcessPublisher
from sluice.bus.nats import JetStreamPublisher
from sluice.config.events import EventsConfig
from sluice.domain.events import Event
from sluice.ports.events import OutboxRow, PublishAck, PublishError
from sluice.server.events import relay_for
from sluice.services.breakers import Breakers
from sluice.services.events import emit
from sluice.services.relay import PIPELINE_DEPTH, Relay, RelayRound
from sluice.store.relay_lock import relay_lock
from tests.integration.nats_support import (
    NatsTarget,
    OwnNatsServer,
    read_stream,
    stream_state,
)

pytest_plugins = ["tests.integration.nats_support"]

T0 = datetime(2026, 1, 1, tzinfo=UTC)
# (event type, aggregate) pairs of three ordering keys (aggregate types).
KINDS = (("withdrawal_requested", "w"), ("deposit_credited", "d"), ("alert_raised", "a"))


@pytest.fixture
def db(database_url: str) -> Iterator[bootstrap.Database]:
    database = bootstrap.database(database_url)
    try:
        yield database
    finally:
        database.dispose()


def commit_events(
    db: bootstrap.Database, count: int, *, per_tx: int = 10, start: int = 0
) -> list[Event]:
    """``count`` events over three ordering keys and five aggregates each, committed
    ``per_tx`` at a time; returned in commit order."""
    out: list[Event] = []
    for first in range(start, start + count, per_tx):
        with db.uow() as uow:
            for i in range(first, min(first + per_tx, start + count)):
                kind, prefix = KINDS[i % 3]
                out.append(
                    emit(uow, kind, f"{prefix}{i % 5}", {"n": i}, at=T0 + timedelta(seconds=i))
                )
            uow.commit()
    return out


def jetstream(target: NatsTarget, **settings: object) -> JetStreamPublisher:
    return JetStreamPublisher(
        target.url,
        target.stream,
        duplicate_window_s=float(settings.pop("duplicate_window_s", 120.0)),  # type: ignore[arg-type]
        subject_prefix=target.prefix,
        **settings,  # type: ignore[arg-type]
    )


def make_relay(db: bootstrap.Database, publisher: object, **kw: object) -> Relay:
    """A relay as the entry points build it (relay locks, rows held on PostgreSQL), with a
    breaker registry of its own."""
    relay = Relay(
        db.uow,
        publisher,  # type: ignore[arg-type]
        batch=int(kw.pop("batch", 50)),  # type: ignore[call-overload]
        hold_rows=db.engine.url.get_backend_name() == "postgresql",
        lock_for=lambda key: relay_lock(db.engine, key),
        breakers=Breakers(),
        **kw,  # type: ignore[arg-type]
    )
    return relay


def drain(relay: Relay, rounds: int = 200) -> list[RelayRound]:
    done: list[RelayRound] = []
    for _ in range(rounds):
        done.append(relay.run_round())
        if done[-1].pending == 0:
            return done
    raise AssertionError(f"still pending after {rounds} rounds: {done[-1]}")


def read_all(target: NatsTarget, expect: int) -> list[tuple[int, str, Event, str | None]]:
    return asyncio.run(read_stream(target.url, target.stream, target.subjects, expect=expect))


def per_subject(events: Sequence[Event]) -> dict[str, list[str]]:
    by: dict[str, list[str]] = defaultdict(list)
    for event in events:
        by[event.subject].append(event.event_id)
    return dict(by)


def test_every_committed_event_arrives_in_order_per_subject(
    db: bootstrap.Database, nats_target: NatsTarget
) -> None:
    committed = commit_events(db, 300)
    relay = make_relay(db, jetstream(nats_target, max_in_flight=16), batch=40)
    try:
        rounds = drain(relay)
    finally:
        relay.close()
    assert sum(r.published for r in rounds) == 300
    assert sum(r.failed for r in rounds) == 0
    messages = read_all(nats_target, 300)
    assert len(messages) == 300
    # Each message on its event's subject, with its event id as the dedup id.
    for _seq, subject, event, msg_id in messages:
        assert subject == nats_target.prefix + event.subject
        assert msg_id == event.event_id
    assert per_subject([m[2] for m in messages]) == per_subject(committed)
    # The envelope published is the event committed, byte for byte.
    by_id = {e.event_id: e for e in committed}
    assert all(m[2] == by_id[m[2].event_id] for m in messages)
    # Each row marked with the stream sequence JetStream gave it.
    with db.uow() as uow:
        assert uow.events.stats().pending == 0
        for seq, _subject, event, _id in messages:
            row = uow.events.get(event.event_id)
            assert row is not None and row.stream_seq == seq and row.published_at is not None


class CrashError(Exception):
    pass


def test_crash_between_publish_and_mark_publishes_again_and_dedup_drops_it(
    db: bootstrap.Database, nats_target: NatsTarget
) -> None:
    committed = commit_events(db, 60)

    def crash(rows: Sequence[OutboxRow], results: Sequence[PublishAck | PublishError]) -> None:
        assert all(isinstance(r, PublishAck) for r in results)
        raise CrashError("killed after the acks, before the mark")

    first = make_relay(db, jetstream(nats_target), batch=100, after_publish=crash)
    try:
        with pytest.raises(CrashError):
            first.run_round()
    finally:
        first.close()
    with db.uow() as uow:
        stats = uow.events.stats()
        assert stats.pending == 60 and stats.published == 0
        # The first ordering key ("alert": keys go in name order) was published, not marked.
        row = uow.events.get(committed[2].event_id)
        assert row is not None and row.attempts == 1 and "killed" in (row.last_error or "")
    # Published once already: the first key's batch.
    stored_before = asyncio.run(stream_state(nats_target.url, nats_target.stream)).messages
    assert stored_before == 20

    second = make_relay(db, jetstream(nats_target), batch=100)
    try:
        rounds = drain(second)
    finally:
        second.close()
    assert sum(r.published for r in rounds) == 60
    assert sum(r.duplicates for r in rounds) == 20  # JetStream had those: acked as duplicates
    messages = read_all(nats_target, 60)
    assert len(messages) == 60  # the copies were dropped by the stream's dedup
    state = asyncio.run(stream_state(nats_target.url, nats_target.stream))
    assert state.messages == 60 and state.last_seq == 60
    # A consumer deduping on event_id sees each event exactly once.
    seen: set[str] = set()
    delivered = []
    for _seq, _subject, event, _id in messages:
        if event.event_id not in seen:
            seen.add(event.event_id)
            delivered.append(event.event_id)
    assert sorted(delivered) == sorted(e.event_id for e in committed)
    assert per_subject([m[2] for m in messages]) == per_subject(committed)
    # Rows are marked with the first copy's stream sequence.
    with db.uow() as uow:
        for seq, _subject, event, _id in messages:
            row = uow.events.get(event.event_id)
            assert row is not None and row.stream_seq == seq


class LosesAck:
    """The real publisher, but the ack of the ``index``-th event of the first call is lost
    (outcome unknown: JetStream stored it)."""

    def __init__(self, inner: JetStreamPublisher, index: int) -> None:
        self.inner = inner
        self.index = index
        self.calls = 0

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def publish_many(self, events: Sequence[Event]) -> list[PublishAck | PublishError]:
        results = await self.inner.publish_many(events)
        self.calls += 1
        if self.calls == 1:
            results[self.index] = PublishError("no ack within 5 s", outcome_unknown=True)
        return results


def test_lost_ack_mid_window_is_published_again_from_the_first_unacked(
    db: bootstrap.Database, nats_target: NatsTarget
) -> None:
    with db.uow() as uow:
        committed = [
            emit(uow, "withdrawal_requested", "w1", {"n": i}, at=T0 + timedelta(seconds=i))
            for i in range(10)
        ]
        uow.commit()
    relay = make_relay(db, LosesAck(jetstream(nats_target), index=4), batch=100)
    try:
        first = relay.run_round()
        assert (first.published, first.failed, first.pending) == (4, 1, 6)
        assert first.error is not None and "outcome unknown" in first.error
        with db.uow() as uow:
            rows = [uow.events.get(e.event_id) for e in committed]
        assert [r is not None and r.published_at is not None for r in rows] == [True] * 4 + [
            False
        ] * 6
        assert rows[4] is not None and rows[4].attempts == 1
        assert rows[5] is not None and rows[5].attempts == 0  # acked, not marked: next round
        second = relay.run_round()
    finally:
        relay.close()
    assert (second.published, second.duplicates, second.failed, second.pending) == (6, 6, 0, 0)
    messages = read_all(nats_target, 10)
    # Stored once each, in order: the lost ack's event was stored in its place.
    assert [m[2].event_id for m in messages] == [e.event_id for e in committed]


def test_rolled_back_events_are_never_published(
    db: bootstrap.Database, nats_target: NatsTarget
) -> None:
    with db.uow() as uow:
        emit(uow, "withdrawal_requested", "gone", {"n": 0}, at=T0)
        uow.rollback()
    with db.uow() as uow:
        emit(uow, "withdrawal_requested", "gone-too", {"n": 1}, at=T0)
        # left without commit: rolled back when the unit of work ends
    (kept,) = commit_events(db, 1)
    relay = make_relay(db, jetstream(nats_target))
    try:
        drain(relay)
    finally:
        relay.close()
    messages = read_all(nats_target, 1)
    assert [m[2].event_id for m in messages] == [kept.event_id]


@pytest.mark.postgres
def test_lower_seq_committing_late_is_still_published(
    postgres_url: str, nats_target: NatsTarget
) -> None:
    db = bootstrap.database(postgres_url)
    relay = make_relay(db, jetstream(nats_target))
    try:
        early = db.uow()
        early_uow = early.__enter__()
        low = emit(early_uow, "withdrawal_requested", "w-low", {"n": 1}, at=T0)
        with db.uow() as uow:
            high = emit(uow, "withdrawal_requested", "w-high", {"n": 2}, at=T0)
            uow.commit()
        with db.uow() as uow:
            assert uow.events.get(high.event_id).seq > 0  # type: ignore[union-attr]
        done = relay.run_round()
        assert done.published == 1
        early_uow.commit()
        early.__exit__(None, None, None)
        done = relay.run_round()
        assert (done.published, done.pending) == (1, 0)
        with db.uow() as uow:
            low_row, high_row = uow.events.get(low.event_id), uow.events.get(high.event_id)
        assert low_row is not None and high_row is not None
        assert low_row.seq < high_row.seq  # the lower seq, taken first, committed last
        assert low_row.stream_seq is not None and high_row.stream_seq is not None
        assert low_row.stream_seq > high_row.stream_seq
    finally:
        relay.close()
        db.dispose()
    assert {m[2].event_id for m in read_all(nats_target, 2)} == {low.event_id, high.event_id}


@pytest.mark.postgres
def test_one_relay_per_ordering_key(postgres_url: str, nats_target: NatsTarget) -> None:
    db = bootstrap.database(postgres_url)
    commit_events(db, 30)
    holder = make_relay(db, jetstream(nats_target))
    other = make_relay(db, jetstream(nats_target))
    try:
        assert holder.run_round().published == 30
        commit_events(db, 30, start=30)
        blocked = other.run_round()  # the holder keeps the three keys' locks
        assert (blocked.published, blocked.skipped, blocked.pending) == (0, 3, 30)
        holder.close()
        taken = other.run_round()
        assert (taken.published, taken.skipped, taken.pending) == (30, 0, 0)
    finally:
        holder.close()
        other.close()
        db.dispose()


def test_nats_restart_mid_run_loses_nothing(sqlite_url: str, own_nats: OwnNatsServer) -> None:
    db = bootstrap.database(sqlite_url)
    target = NatsTarget(own_nats.url, "RESTART", "")
    relay = make_relay(db, jetstream(target, ack_timeout_s=1.0, max_in_flight=32), batch=50)
    stop = threading.Event()
    committed: list[Event] = []

    def produce() -> None:
        for batch in range(40):
            committed.extend(commit_events(db, 10, start=batch * 10))
            relay.wake()
            time.sleep(0.05)

    worker = threading.Thread(
        target=relay.run, kwargs={"stop": stop.is_set, "interval_s": 0.05}, daemon=True
    )
    worker.start()
    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        time.sleep(0.6)
        own_nats.stop()  # killed mid-run
        time.sleep(1.5)
        own_nats.start()  # same port and store
        producer.join(60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with db.uow() as uow:
                if uow.events.stats().pending == 0 and not producer.is_alive():
                    break
            time.sleep(0.2)
        with db.uow() as uow:
            assert uow.events.stats().pending == 0
    finally:
        stop.set()
        relay.wake()
        worker.join(30)
        relay.close()
        db.dispose()
    assert len(committed) == 400
    assert relay.stats.failed > 0  # publishes failed while the server was down (then retried)
    messages = read_all(target, 400)
    ids = [m[2].event_id for m in messages]
    assert len(ids) == len(set(ids)) == 400  # nothing lost, nothing stored twice
    assert set(ids) == {e.event_id for e in committed}


def test_in_process_subscribers_receive_the_same_envelopes(sqlite_url: str) -> None:
    db = bootstrap.database(sqlite_url)
    bus = InProcessBus()
    everything: list[Event] = []
    alerts: list[Event] = []
    bus.subscribe(everything.append)
    unsubscribe = bus.subscribe(alerts.append, type="alert_raised")
    committed = commit_events(db, 30)

    def crash(rows: Sequence[OutboxRow], results: Sequence[PublishAck | PublishError]) -> None:
        raise CrashError("before the mark")

    try:
        crashing = make_relay(db, InProcessPublisher(bus), after_publish=crash)
        with pytest.raises(CrashError):
            crashing.run_round()
        crashing.close()
        relay = make_relay(db, InProcessPublisher(bus))
        rounds = drain(relay)
        relay.close()
        assert sum(r.duplicates for r in rounds) == 10  # the first key's rows, delivered once
        unsubscribe()
        commit_events(db, 3, start=30)
        relay = make_relay(db, InProcessPublisher(bus))
        drain(relay)
        relay.close()
        with db.uow() as uow:
            rows = {e.event_id: uow.events.get(e.event_id) for e in everything}
    finally:
        db.dispose()
    # Each committed event once (the copies published again after the crash were not
    # delivered again), equal to what was committed, envelope for envelope.
    assert len(everything) == 33 and len({e.event_id for e in everything}) == 33
    assert {e.event_id for e in committed} <= {e.event_id for e in everything}
    by_id = {e.event_id: e for e in committed}
    assert all(
        by_id[e.event_id].envelope() == e.envelope() for e in everything if e.event_id in by_id
    )
    assert per_subject([e for e in everything if e.event_id in by_id]) == per_subject(committed)
    assert [e.event_id for e in alerts] == [
        e.event_id for e in committed if e.type == "alert_raised"
    ]
    # Acked with the bus's own increasing sequence.
    seqs = [rows[e.event_id].stream_seq for e in everything]  # type: ignore[union-attr]
    assert seqs == sorted(seqs) and len(set(seqs)) == 33


def test_relay_for_config_publishes_to_nats_with_the_configured_window(
    sqlite_url: str, nats_target: NatsTarget
) -> None:
    config = EventsConfig(
        bus="nats",
        nats_url=nats_target.url,
        stream=nats_target.stream,
        subject_prefix=nats_target.prefix,
        duplicate_window_s=30,
        batch=7,
    )
    db = bootstrap.database(sqlite_url)
    commit_events(db, 20)
    relay = relay_for(config, db)
    try:
        first = relay.run_round()
        # [events] batch: at most 7 rows per ordering key a round (3 keys of 7, 7 and 6 rows).
        assert (first.published, first.more) == (20, True)
        assert relay.run_round().published == 0
    finally:
        relay.close()
        db.dispose()

    async def window() -> float:
        import nats

        nc = await nats.connect(nats_target.url)
        try:
            info = await nc.jetstream().stream_info(nats_target.stream)
            return float(info.config.duplicate_window or 0)
        finally:
            await nc.close()

    assert asyncio.run(window()) == 30.0
    assert len(read_all(nats_target, 20)) == 20


def test_refused_publish_stops_the_batch_and_order_holds_with_one_in_flight(
    db: bootstrap.Database, nats_target: NatsTarget
) -> None:
    import nats
    from nats.js.api import StreamConfig

    async def stream(max_msg_size: int, *, create: bool) -> None:
        nc = await nats.connect(nats_target.url)
        try:
            js = nc.jetstream()
            config = StreamConfig(
                name=nats_target.stream,
                subjects=[nats_target.subjects],
                duplicate_window=120.0,
                max_msg_size=max_msg_size,
            )
            await (js.add_stream(config) if create else js.update_stream(config))
        finally:
            await nc.close()

    # A stream that refuses messages over 1 KiB; the third event is bigger.
    asyncio.run(stream(1024, create=True))
    with db.uow() as uow:
        committed = [
            emit(uow, "withdrawal_requested", "w1", {"n": i, "pad": "x" * (2000 if i == 2 else 1)},
                 at=T0 + timedelta(seconds=i))
            for i in range(5)
        ]  # fmt: skip
        uow.commit()
    relay = make_relay(db, jetstream(nats_target, max_in_flight=1))
    try:
        first = relay.run_round()
        # Refused by JetStream: a publish error; the two after it were not sent.
        assert (first.published, first.failed, first.pending) == (2, 3, 3)
        assert first.error is not None and "JetStream refused" in first.error
        with db.uow() as uow:
            row = uow.events.get(committed[2].event_id)
        assert row is not None and row.attempts == 1 and "refused" in (row.last_error or "")
        assert asyncio.run(stream_state(nats_target.url, nats_target.stream)).messages == 2
        asyncio.run(stream(1 << 20, create=False))  # the operator raises the limit
        second = relay.run_round()
        assert (second.published, second.duplicates, second.pending) == (3, 0, 0)
    finally:
        relay.close()
    messages = read_all(nats_target, 5)
    assert [m[2].event_id for m in messages] == [e.event_id for e in committed]


# --- order per subject with the default window (1024 acks in flight), batches overlapping ----


def interleaved(db: bootstrap.Database, count: int, *, big: int | None = None) -> list[Event]:
    """``count`` withdrawal events over three withdrawals (subjects) in turn, one ordering key;
    event ``big`` (if any) carries a 2 KB payload."""
    with db.uow() as uow:
        out = [
            emit(uow, "withdrawal_requested", f"w{i % 3}",
                 {"n": i, "pad": "x" * (2000 if i == big else 1)}, at=T0 + timedelta(seconds=i))
            for i in range(count)
        ]  # fmt: skip
        uow.commit()
    return out


def assert_once_in_order(target: NatsTarget, committed: Sequence[Event]) -> None:
    """The stream holds every committed event exactly once, in commit order per subject."""
    messages = read_all(target, len(committed))
    ids = [m[2].event_id for m in messages]
    assert sorted(ids) == sorted(e.event_id for e in committed)
    assert len(set(ids)) == len(ids)
    assert per_subject([m[2] for m in messages]) == per_subject(committed)


def stored_before_retry(target: NatsTarget, committed: Sequence[Event], failed: int) -> None:
    """After the failed round, nothing later than event ``failed`` of its subject is stored."""
    count = asyncio.run(stream_state(target.url, target.stream)).messages
    stored = [m[2].event_id for m in read_all(target, count)] if count else []
    subject = committed[failed].subject
    later = {e.event_id for e in committed[failed + 1 :] if e.subject == subject}
    assert not later & set(stored), "a later event of the failed one's subject was stored"


async def _stream(target: NatsTarget, max_msg_size: int, *, create: bool) -> None:
    import nats
    from nats.js.api import StreamConfig

    nc = await nats.connect(target.url)
    try:
        js = nc.jetstream()
        config = StreamConfig(
            name=target.stream,
            subjects=[target.subjects],
            duplicate_window=120.0,
            max_msg_size=max_msg_size,
        )
        await (js.add_stream(config) if create else js.update_stream(config))
    finally:
        await nc.close()


def test_refused_publish_with_the_default_window_keeps_order_per_subject(
    db: bootstrap.Database, nats_target: NatsTarget
) -> None:
    # Event 5 is over the stream's limit: refused in the middle of the second batch of 4 while
    # the first is unacked and the third follows (overlapping), each batch holding several
    # events of the same three subjects.
    asyncio.run(_stream(nats_target, 1024, create=True))
    committed = interleaved(db, 16, big=5)
    publisher = jetstream(nats_target)
    assert publisher.max_in_flight == 1024  # the default
    relay = make_relay(db, publisher, batch=4)
    try:
        first = relay.run_round()
        assert first.failed >= 1 and first.pending > 0
        assert first.error is not None and "JetStream refused" in first.error
        stored_before_retry(nats_target, committed, 5)
        with db.uow() as uow:
            row = uow.events.get(committed[5].event_id)
        assert row is not None and row.published_at is None and row.attempts == 1
        asyncio.run(_stream(nats_target, 1 << 20, create=False))  # the operator raises the limit
        rounds = drain(relay)
    finally:
        relay.close()
    assert first.published + sum(r.published for r in rounds) == 16
    assert_once_in_order(nats_target, committed)


class LosesOne(JetStreamPublisher):
    """The real publisher, but one publish (by event id) loses its message on the way (never
    stored) or its ack (stored, the answer goes nowhere): no ack in time, outcome unknown."""

    def __init__(self, *args: object, lose: str, what: str, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.lose, self.what, self.lost = lose, what, False

    async def start(self) -> None:
        await super().start()
        nc = self._nc
        assert nc is not None
        if getattr(nc, "_loses_one", False):
            return
        real = nc.publish

        async def publish(
            subject: str,
            payload: bytes = b"",
            reply: str = "",
            headers: dict[str, str] | None = None,
        ) -> None:
            if not self.lost and headers and headers.get("Nats-Msg-Id") == self.lose:
                self.lost = True
                if self.what == "message":
                    return
                reply = "_INBOX.nobody.listens"
            await real(subject, payload, reply=reply, headers=headers)

        nc.publish = publish  # type: ignore[method-assign]
        nc._loses_one = True  # type: ignore[attr-defined]


@pytest.mark.parametrize("what", ["message", "ack"])
def test_ack_timeout_with_the_default_window_keeps_order_per_subject(
    db: bootstrap.Database, nats_target: NatsTarget, what: str
) -> None:
    committed = interleaved(db, 16)
    publisher = LosesOne(
        nats_target.url,
        nats_target.stream,
        subject_prefix=nats_target.prefix,
        ack_timeout_s=1.0,
        lose=committed[5].event_id,
        what=what,
    )
    assert publisher.max_in_flight == 1024
    relay = make_relay(db, publisher, batch=4)
    try:
        first = relay.run_round()
        assert publisher.lost
        assert first.failed >= 1 and first.pending > 0
        assert first.error is not None and "outcome unknown" in first.error
        stored_before_retry(nats_target, committed, 5)
        rounds = drain(relay)
    finally:
        relay.close()
    assert first.published + sum(r.published for r in rounds) == 16
    assert_once_in_order(nats_target, committed)


# --- a relay that lost its key's lock --------------------------------------------------------


class FlagLock:
    """A relay lock the test takes away (as when a PostgreSQL lock's session dies)."""

    def __init__(self) -> None:
        self.ok = True

    def try_acquire(self) -> bool:
        return self.ok

    def held(self) -> bool:
        return self.ok

    def holder(self) -> str | None:
        return None

    def release(self) -> None:
        return None


def test_a_relay_that_lost_its_lock_stops_claiming_and_marks_nothing(
    db: bootstrap.Database, nats_target: NatsTarget
) -> None:
    committed = interleaved(db, 20)
    lock = FlagLock()

    def lose_it(_rows: Sequence[OutboxRow], _results: Sequence[object]) -> None:
        lock.ok = False  # lost after the first batch's acks, before its rows are marked

    loser = Relay(
        db.uow,
        jetstream(nats_target),
        batch=4,
        hold_rows=db.engine.url.get_backend_name() == "postgresql",
        lock_for=lambda _key: lock,  # type: ignore[arg-type, return-value]
        breakers=Breakers(),
        after_publish=lose_it,
    )
    try:
        lost = loser.run_round()
        assert lost.published == 0 and lost.pending == 20
        assert lost.error is not None and "lost the relay lock" in lost.error
        # No batch claimed after the loss: at most the batches on their way went out.
        sent = asyncio.run(stream_state(nats_target.url, nats_target.stream)).messages
        assert sent <= 4 * PIPELINE_DEPTH
        with db.uow() as uow:
            assert uow.events.pending_count() == 20
    finally:
        loser.close()
    other = make_relay(db, jetstream(nats_target), batch=4)
    try:
        rounds = drain(other)
    finally:
        other.close()
    assert sum(r.published for r in rounds) == 20
    assert_once_in_order(nats_target, committed)


def test_a_held_head_is_not_jumped_over(postgres_url: str, nats_target: NatsTarget) -> None:
    db = bootstrap.database(postgres_url)
    committed = interleaved(db, 12)
    relay = make_relay(db, jetstream(nats_target), batch=4)
    try:
        # Another relay (that lost the key's lock) still holds the first rows in its
        # transaction: this one must not publish the rows after them.
        with db.engine.connect() as other:
            other.exec_driver_sql(
                "SELECT seq FROM event_outbox WHERE published_at IS NULL"
                " ORDER BY seq LIMIT 4 FOR UPDATE"
            )
            waiting = relay.run_round()
            assert (waiting.published, waiting.pending) == (0, 12)
            assert asyncio.run(stream_state(nats_target.url, nats_target.stream)).messages == 0
            other.rollback()
        rounds = drain(relay)
    finally:
        relay.close()
        db.dispose()
    assert sum(r.published for r in rounds) == 12
    assert_once_in_order(nats_target, committed)
