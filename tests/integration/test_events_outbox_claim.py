"""The outbox's claim hands the relay each row's envelope as published: the bytes of
``Event.encode()`` for the event read back, on both engines (on PostgreSQL the query makes them,
for ASCII fields; otherwise Python does), whatever the text holds: non-ASCII and astral
characters, quotes, backslashes, control characters and DEL, nested payloads, decimals, no
correlation id, a time on a whole second. Claims leave out the rows asked to be left out."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from sluice import bootstrap
from sluice.domain.events import Event
from sluice.ports.events import OutboxRow
from sluice.store import events_repository

T0 = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)

AWKWARD_TEXTS = (
    "plain",
    'quote " and backslash \\ and slash /',
    "tab\tnewline\ncarriage\rbackspace\bformfeed\f",
    "control \x01\x1f and DEL \x7f",
    "Zürich café ñ",
    "emoji 🚀 and 中文",
    "",
)


def _event(index: int, text: str, *, correlation_id: str | None, at: datetime) -> Event:
    return Event(
        event_id=f"ev-{index:04d}",
        type="withdrawal_requested",
        schema_version=1,
        aggregate_type="withdrawal",
        aggregate_id=f"w-{text}",
        correlation_id=correlation_id,
        occurred_at=at,
        payload={
            "text": text,
            "amount": Decimal("12.3400"),
            "nested": {"list": [1, 2.5, None, True, {"deep": text}], "empty": {}},
            "count": index,
        },
    )


def _events() -> list[Event]:
    out = []
    for index, text in enumerate(AWKWARD_TEXTS):
        out.append(_event(2 * index, text, correlation_id=f"corr-{text}", at=T0))
        out.append(_event(2 * index + 1, "x", correlation_id=None, at=T0.replace(microsecond=0)))
    out.append(_event(99, "ascii", correlation_id="corr \x7f", at=T0))
    out.append(_event(98, "ascii", correlation_id="ünïcode", at=T0.replace(microsecond=5)))
    return out


@pytest.fixture
def db(database_url: str) -> Iterator[bootstrap.Database]:
    database = bootstrap.database(database_url)
    try:
        yield database
    finally:
        database.dispose()


def _claim(db: bootstrap.Database, **kw: object) -> list[OutboxRow]:
    with db.uow() as uow:
        return uow.events.claim(ordering_key="withdrawal", limit=100, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("lock", [False, True])
def test_a_claimed_rows_data_is_the_encoded_envelope_byte_for_byte(
    db: bootstrap.Database, lock: bool
) -> None:
    events = _events()
    with db.uow() as uow:
        uow.events.add(events)
        uow.commit()
    rows = _claim(db, lock=lock)
    assert [row.event.event_id for row in rows] == [event.event_id for event in events]
    for row, event in zip(rows, events, strict=True):
        assert row.data == row.event.encode(), row.event.event_id
        assert row.data == event.encode(), event.event_id


def test_a_claim_leaves_out_the_rows_asked_to_be_left_out(db: bootstrap.Database) -> None:
    events = _events()[:6]
    with db.uow() as uow:
        uow.events.add(events)
        uow.commit()
    seqs = [row.seq for row in _claim(db)]
    left = _claim(db, exclude=set(seqs[1:3]))
    assert [row.seq for row in left] == [seqs[0], *seqs[3:]]


@pytest.mark.postgres
def test_on_postgresql_the_claims_query_makes_the_envelope_of_ascii_rows(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = bootstrap.database(postgres_url)
    try:
        events = [
            _event(index, text, correlation_id=text or None, at=T0)
            for index, text in enumerate((*AWKWARD_TEXTS[:3], "control \x01\x1f", ""))
        ]
        with database.uow() as uow:
            uow.events.add(events)
            uow.commit()

        def not_here(event: Event, payload_text: str) -> bytes:
            raise AssertionError(f"made in Python: {event.event_id}")

        monkeypatch.setattr(events_repository, "envelope_bytes", not_here)
        rows = _claim(database, lock=True)
        assert [row.data for row in rows] == [event.encode() for event in events]
    finally:
        database.dispose()


def test_rows_claimed_held_are_marked_even_after_an_update_of_their_own(
    db: bootstrap.Database,
) -> None:
    events = _events()[:6]
    with db.uow() as uow:
        uow.events.add(events)
        uow.commit()
    at = datetime(2026, 3, 5, tzinfo=UTC)
    with db.uow() as uow:
        rows = uow.events.claim(ordering_key="withdrawal", limit=100, lock=True)
        ids = [row.event.event_id for row in rows]
        assert uow.events.mark_published([(ids[0], 10), (ids[1], 11)], at) == 2
        # A failure recorded updates the rows (on PostgreSQL: new row versions, new ctids).
        uow.events.record_failure(ids[2:4], "refused")
        assert uow.events.mark_published([(ids[1], 11), (ids[2], 12), (ids[3], 13)], at) == 2
        assert uow.events.mark_published([(ids[4], 14), ("ev-unknown", 99)], at) == 1
        uow.commit()
    with db.uow() as uow:
        got = {row.event.event_id: row for row in uow.events.find(limit=100)}
    assert [got[event_id].stream_seq for event_id in ids] == [10, 11, 12, 13, 14, None]
    assert [got[event_id].attempts for event_id in ids] == [0, 0, 1, 1, 0, 0]
    assert all(got[event_id].published_at is not None for event_id in ids[:5])
