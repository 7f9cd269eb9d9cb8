"""The KYC registry's repository contract, run on SQLite and on PostgreSQL alike.

Covers a new customer's defaults (from the schema's server defaults), profile updates that touch
only the given fields, the JSON risk fields, usage windows (strictly after ``since``) and
replayed usage, exact money in usage and limits, limit overrides, flagged addresses, the held
deposit state machine, the review queue, and reads larger than one ``IN (…)`` chunk. Each test
works in one transaction on a freshly migrated database, committing where a second transaction
must see the data. One PostgreSQL-only test shows that ``profiles(lock=True)`` makes a second
transaction on the same customer wait until the first commits, and then see what it wrote.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace
from typing import cast

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from sluice.domain.compliance import (
    HeldDeposit,
    LimitLadder,
    Profile,
    ReviewItem,
    TierLimits,
    UsageRecord,
)
from sluice.domain.errors import InvalidInputError
from sluice.ports import UnitOfWork
from sluice.services.compliance_session import effective_ladder
from sluice.store import tables as t
from sluice.store.compliance_repository import CHUNK, SqlComplianceRepository
from sluice.store.database import open_database
from sluice.store.repositories import SqlReferenceRepository

WHEN = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
WAIT_S = 10.0
SENDER = "sender::1220aa"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = open_database(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    """One open transaction with two customers, alice and bob; rolled back afterwards."""
    with engine.connect() as connection:
        connection.begin()
        reference = SqlReferenceRepository(connection)
        reference.add_customer("alice", "Alice Example")
        reference.add_customer("bob", "Bob Example")
        yield connection


@pytest.fixture
def repository(connection: Connection) -> SqlComplianceRepository:
    return SqlComplianceRepository(connection)


def usage_record(
    operation_id: str, amount: str, at: datetime, operation: str = "deposit"
) -> UsageRecord:
    return UsageRecord(operation_id, operation, Decimal(amount), at, counterparty=SENDER)


def held_deposit(hold_id: str, at: datetime = WHEN, amount: str = "12.5") -> HeldDeposit:
    return HeldDeposit(
        id=hold_id,
        sender=SENDER,
        instrument_admin="dso::1220bb",
        instrument_id="Amulet",
        amount=Decimal(amount),
        update_id=f"update-{hold_id}",
        why="sender is flagged",
        held_at=at,
        customer_id="alice",
        deposit_account="alice-deposits",
    )


def review_item(review_id: str, at: datetime = WHEN) -> ReviewItem:
    return ReviewItem(
        id=review_id,
        kind="deposit_held",
        reason=f"deposit {review_id} held",
        opened_at=at,
        customer_id="alice",
        subject=f"hold-{review_id}",
    )


def add_customers(connection: Connection, count: int) -> list[str]:
    ids = [f"customer-{number:05d}" for number in range(count)]
    connection.execute(
        sa.insert(t.customers),
        [
            {"id": id_, "name": f"Customer {id_}", "created_at": "2026-01-01T00:00:00.000000Z"}
            for id_ in ids
        ],
    )
    return ids


# --- profiles ---------------------------------------------------------------------------------


def test_new_customer_is_tier_1_active_with_no_risk(repository: SqlComplianceRepository) -> None:
    assert repository.profiles(["alice"]) == {
        "alice": Profile("alice", tier=1, status="active", status_reason=None, risk_score=0)
    }
    record = repository.risk_record("alice")
    assert record is not None
    assert (record.risk_flags, record.sanctions_match, record.updated_at) == ((), None, None)


def test_profiles_leave_out_unknown_customers(repository: SqlComplianceRepository) -> None:
    assert set(repository.profiles(["alice", "nobody", "bob"])) == {"alice", "bob"}
    assert repository.profiles([]) == {}


@pytest.mark.parametrize("lock", [False, True])
def test_profiles_of_more_customers_than_one_chunk_are_all_read(
    connection: Connection, repository: SqlComplianceRepository, lock: bool
) -> None:
    ids = add_customers(connection, CHUNK * 2 + 7)
    profiles = repository.profiles([*ids, "nobody"], lock=lock)
    assert set(profiles) == set(ids)
    assert all(profile.tier == 1 and profile.status == "active" for profile in profiles.values())


def test_locked_profiles_read_as_unlocked_ones(repository: SqlComplianceRepository) -> None:
    repository.set_profile("bob", at=WHEN, tier=2, status="frozen", status_reason="court order")
    assert repository.profiles(["alice", "bob"], lock=True) == repository.profiles(["alice", "bob"])


def test_set_profile_changes_only_the_given_fields(repository: SqlComplianceRepository) -> None:
    assert repository.set_profile("alice", at=WHEN, tier=3)
    assert repository.profiles(["alice"])["alice"] == Profile("alice", 3, "active", None, 0)
    later = WHEN + timedelta(hours=1)
    assert repository.set_profile("alice", at=later, risk_score=70)
    assert repository.profiles(["alice"])["alice"] == Profile("alice", 3, "active", None, 70)
    record = repository.risk_record("alice")
    assert record is not None and record.updated_at == later
    assert repository.profiles(["bob"])["bob"] == Profile("bob", 1, "active", None, 0)


def test_status_reason_is_written_with_every_status(repository: SqlComplianceRepository) -> None:
    repository.set_profile("alice", at=WHEN, status="under_review", status_reason="velocity")
    assert repository.profiles(["alice"])["alice"].status_reason == "velocity"
    repository.set_profile("alice", at=WHEN, tier=2)
    assert repository.profiles(["alice"])["alice"].status_reason == "velocity"
    repository.set_profile("alice", at=WHEN, status="active")
    profile = repository.profiles(["alice"])["alice"]
    assert (profile.status, profile.status_reason, profile.tier) == ("active", None, 2)


def test_set_profile_refuses_an_unknown_status(repository: SqlComplianceRepository) -> None:
    with pytest.raises(InvalidInputError):
        repository.set_profile("alice", at=WHEN, status="asleep")  # type: ignore[arg-type]
    assert repository.profiles(["alice"])["alice"].status == "active"


def test_set_profile_of_unknown_customer_is_false(repository: SqlComplianceRepository) -> None:
    assert not repository.set_profile("nobody", at=WHEN, tier=2)
    assert repository.risk_record("nobody") is None


def test_risk_flags_and_sanctions_match_round_trip_and_an_empty_match_clears(
    repository: SqlComplianceRepository,
) -> None:
    match = {"entity_id": "SDN-123", "score": 0.97, "names": ["ALICE, Example", "Alicé"]}
    repository.set_profile(
        "alice", at=WHEN, risk_flags=["velocity", "structuring"], sanctions_match=match
    )
    record = repository.risk_record("alice")
    assert record is not None
    assert record.risk_flags == ("velocity", "structuring")
    assert record.sanctions_match == match

    repository.set_profile("alice", at=WHEN, risk_score=5)
    record = repository.risk_record("alice")
    assert record is not None and record.sanctions_match == match  # None: left alone

    repository.set_profile("alice", at=WHEN, risk_flags=[], sanctions_match={})
    record = repository.risk_record("alice")
    assert record is not None
    assert (record.risk_flags, record.sanctions_match) == ((), None)


def test_customer_names_lists_every_customer(repository: SqlComplianceRepository) -> None:
    assert repository.customer_names() == [("alice", "Alice Example"), ("bob", "Bob Example")]


# --- usage ------------------------------------------------------------------------------------


def test_usage_counts_only_records_strictly_after_since_oldest_first(
    repository: SqlComplianceRepository,
) -> None:
    since = WHEN
    repository.record_usage(
        "alice",
        [
            usage_record("op-late", "3", since + timedelta(hours=2)),
            usage_record("op-at", "1", since),
            usage_record("op-just-after", "2", since + timedelta(microseconds=1)),
            usage_record("op-before", "4", since - timedelta(seconds=1)),
        ],
    )
    repository.record_usage("bob", [usage_record("op-bob", "5", since + timedelta(hours=1))])
    found = repository.usage(["alice", "bob", "carol"], since)
    assert [record.operation_id for record in found["alice"]] == ["op-just-after", "op-late"]
    assert [record.operation_id for record in found["bob"]] == ["op-bob"]
    assert found["carol"] == []
    # The same instant written in another time zone is the same boundary.
    elsewhere = since.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert repository.usage(["alice"], elsewhere) == {"alice": found["alice"]}


def test_usage_round_trips_every_field_with_exact_amounts(
    repository: SqlComplianceRepository,
) -> None:
    records = [
        UsageRecord("op-1", "withdrawal", Decimal("0.0000000001"), WHEN, "receiver::1220cc"),
        UsageRecord("op-2", "exchange", Decimal("123456789012345678.1234567891"), WHEN, None),
    ]
    repository.record_usage("alice", records)
    assert repository.usage(["alice"], WHEN - timedelta(days=30)) == {"alice": records}


def test_usage_already_recorded_under_an_operation_id_is_left_alone(
    repository: SqlComplianceRepository,
) -> None:
    first = usage_record("op-1", "10", WHEN)
    repository.record_usage("alice", [first])
    repository.record_usage(
        "alice",
        [
            usage_record("op-1", "99", WHEN + timedelta(minutes=1)),
            usage_record("op-2", "20", WHEN + timedelta(minutes=2)),
            usage_record("op-2", "77", WHEN + timedelta(minutes=3)),
        ],
    )
    repository.record_usage("alice", [])
    found = repository.usage(["alice"], WHEN - timedelta(days=1))["alice"]
    assert [(r.operation_id, r.amount) for r in found] == [
        ("op-1", Decimal("10")),
        ("op-2", Decimal("20")),
    ]


def test_usage_of_more_customers_than_one_chunk_is_all_read(
    connection: Connection, repository: SqlComplianceRepository
) -> None:
    ids = add_customers(connection, CHUNK + 3)
    for number, customer_id in enumerate(ids):
        repository.record_usage(
            customer_id, [usage_record(f"op-{number}", str(number), WHEN + timedelta(hours=1))]
        )
    found = repository.usage(ids, WHEN)
    assert {customer_id: len(records) for customer_id, records in found.items()} == dict.fromkeys(
        ids, 1
    )
    assert found[ids[-1]][0].amount == Decimal(len(ids) - 1)


# --- limits -----------------------------------------------------------------------------------


def test_limit_overrides_are_set_replaced_and_keep_no_limit_and_exact_amounts(
    repository: SqlComplianceRepository,
) -> None:
    assert repository.limit_overrides() == {}
    exact = TierLimits(Decimal("0.0000000001"), None, Decimal("999999999999.9999999999"))
    repository.set_limits(2, "withdrawal", exact, "officer-1", WHEN)
    repository.set_limits(1, "deposit", TierLimits(None, None, None), "officer-1", WHEN)
    assert repository.limit_overrides() == {
        (2, "withdrawal"): exact,
        (1, "deposit"): TierLimits(None, None, None),
    }
    replaced = TierLimits(Decimal("5"), Decimal("50"), Decimal("500"))
    repository.set_limits(2, "withdrawal", replaced, "officer-2", WHEN + timedelta(days=1))
    assert repository.limit_overrides()[(2, "withdrawal")] == replaced
    assert len(repository.limit_overrides()) == 2


def test_the_ladder_in_force_is_the_configured_one_with_every_override(
    repository: SqlComplianceRepository,
) -> None:
    # (configured without tier 0 minting: an override may add a pair, not only replace one)
    configured = LimitLadder(
        {key: limits for key, limits in LimitLadder.default().limits.items() if key != (0, "mint")}
    )
    uow = cast(UnitOfWork, SimpleNamespace(compliance=repository))
    assert effective_ladder(configured, uow) is configured
    first = TierLimits(Decimal("5"), None, Decimal("500"))
    second = TierLimits(None, None, None)
    repository.set_limits(2, "withdrawal", first, "officer-1", WHEN)
    repository.set_limits(0, "mint", second, "officer-1", WHEN)
    expected = configured.with_override(0, "mint", second).with_override(2, "withdrawal", first)
    found = effective_ladder(configured, uow)
    assert found == expected and list(found.limits) == list(expected.limits)
    assert (0, "mint") not in configured.limits


# --- flagged addresses ------------------------------------------------------------------------


def test_flagging_keeps_the_first_flag(repository: SqlComplianceRepository) -> None:
    assert repository.flag_address(SENDER, "mixer", "officer-1", WHEN)
    assert not repository.flag_address(SENDER, "other reason", "officer-2", WHEN + timedelta(1))
    assert repository.flagged([SENDER, "clean::1220dd"]) == {SENDER: "mixer"}
    assert repository.flagged_addresses() == [(SENDER, "mixer", "officer-1", WHEN)]


def test_unflagging_removes_only_a_flagged_address(repository: SqlComplianceRepository) -> None:
    repository.flag_address(SENDER, "mixer", "officer-1", WHEN)
    repository.flag_address("other::1220ee", "scam", "officer-1", WHEN + timedelta(seconds=1))
    assert repository.unflag_address(SENDER)
    assert not repository.unflag_address(SENDER)
    assert not repository.unflag_address("never::1220ff")
    assert repository.flagged([SENDER]) == {}
    assert [entry[0] for entry in repository.flagged_addresses()] == ["other::1220ee"]


def test_flagged_looks_up_more_addresses_than_one_chunk(
    repository: SqlComplianceRepository,
) -> None:
    addresses = [f"party-{number}::1220aa" for number in range(CHUNK + 5)]
    repository.flag_address(addresses[-1], "listed", "officer-1", WHEN)
    repository.flag_address(addresses[0], "listed", "officer-1", WHEN)
    assert set(repository.flagged(addresses)) == {addresses[0], addresses[-1]}
    assert repository.flagged([]) == {}


# --- held deposits ----------------------------------------------------------------------------


def test_hold_round_trips_and_a_replayed_hold_is_refused(
    repository: SqlComplianceRepository,
) -> None:
    hold = held_deposit("h1", amount="0.1234567891")
    assert repository.add_hold(hold)
    assert not repository.add_hold(held_deposit("h1", amount="999"))
    assert repository.hold("h1") == hold
    assert repository.hold("h1", lock=True) == hold
    assert repository.hold("unknown") is None
    assert repository.hold("unknown", lock=True) is None


def test_a_hold_leaves_held_exactly_once(repository: SqlComplianceRepository) -> None:
    repository.add_hold(held_deposit("h1"))
    decided = WHEN + timedelta(days=1)
    assert repository.close_hold("h1", "returned", "officer-1", decided, withdrawal_id="w-9")
    assert not repository.close_hold("h1", "released", "officer-2", decided + timedelta(1))
    assert not repository.close_hold("unknown", "released", "officer-2", decided)
    closed = repository.hold("h1")
    assert closed is not None
    assert (closed.status, closed.decided_by, closed.decided_at, closed.withdrawal_id) == (
        "returned",
        "officer-1",
        decided,
        "w-9",
    )


def test_a_hold_cannot_be_closed_as_held_or_an_unknown_status(
    repository: SqlComplianceRepository,
) -> None:
    repository.add_hold(held_deposit("h1"))
    for status in ("held", "lost"):
        with pytest.raises(InvalidInputError):
            repository.close_hold("h1", status, "officer-1", WHEN)
    hold = repository.hold("h1")
    assert hold is not None and hold.status == "held"


def test_holds_list_by_status_oldest_first_within_the_limit(
    repository: SqlComplianceRepository,
) -> None:
    for number, hold_id in enumerate(["h-c", "h-a", "h-b"]):
        repository.add_hold(held_deposit(hold_id, at=WHEN + timedelta(minutes=10 - number)))
    repository.close_hold("h-a", "released", "officer-1", WHEN + timedelta(hours=1))
    assert [hold.id for hold in repository.holds()] == ["h-b", "h-c"]
    assert [hold.id for hold in repository.holds(status=None)] == ["h-b", "h-a", "h-c"]
    assert [hold.id for hold in repository.holds(status="released")] == ["h-a"]
    assert [hold.id for hold in repository.holds(status=None, limit=2)] == ["h-b", "h-a"]
    assert [hold.id for hold in repository.holds(status=None, offset=1, limit=1)] == ["h-a"]
    assert [hold.id for hold in repository.holds(status=None, offset=2)] == ["h-c"]
    assert repository.holds(status=None, offset=3) == []


def test_holds_written_in_one_transaction_are_seen_by_the_next(engine: Engine) -> None:
    with engine.connect() as connection, connection.begin():
        assert SqlComplianceRepository(connection).add_hold(held_deposit("h1"))
    with engine.connect() as connection, connection.begin():
        repository = SqlComplianceRepository(connection)
        assert not repository.add_hold(held_deposit("h1"))
        assert [hold.id for hold in repository.holds()] == ["h1"]


# --- the review queue -------------------------------------------------------------------------


def test_a_replayed_review_item_is_refused_and_the_first_stays(
    repository: SqlComplianceRepository,
) -> None:
    item = review_item("r1")
    assert repository.open_review(item)
    assert not repository.open_review(review_item("r1", at=WHEN + timedelta(days=1)))
    assert repository.reviews() == [item]


def test_reviews_are_listed_oldest_first_and_closed_ones_only_on_request(
    repository: SqlComplianceRepository,
) -> None:
    for number, review_id in enumerate(["r-c", "r-a", "r-b"]):
        repository.open_review(review_item(review_id, at=WHEN + timedelta(minutes=10 - number)))
    closed_at = WHEN + timedelta(hours=1)
    assert repository.close_review("r-a", "officer-1", "customer verified", closed_at)
    assert [item.id for item in repository.reviews()] == ["r-b", "r-c"]
    everything = repository.reviews(open_only=False)
    assert [item.id for item in everything] == ["r-b", "r-a", "r-c"]
    assert (everything[1].closed_at, everything[1].closed_by, everything[1].resolution) == (
        closed_at,
        "officer-1",
        "customer verified",
    )
    assert [item.id for item in repository.reviews(open_only=False, limit=1)] == ["r-b"]
    assert [i.id for i in repository.reviews(open_only=False, offset=1, limit=1)] == [
        everything[1].id
    ]
    assert repository.reviews(open_only=False, offset=len(everything)) == []


def test_a_review_item_is_closed_at_most_once(repository: SqlComplianceRepository) -> None:
    repository.open_review(review_item("r1"))
    assert repository.close_review("r1", "officer-1", "cleared", WHEN + timedelta(hours=1))
    assert not repository.close_review("r1", "officer-2", "blocked", WHEN + timedelta(hours=2))
    assert not repository.close_review("unknown", "officer-2", "blocked", WHEN)
    (item,) = repository.reviews(open_only=False)
    assert (item.closed_by, item.resolution) == ("officer-1", "cleared")


# --- locking (PostgreSQL) ---------------------------------------------------------------------


def _wait_for_lock_waiter(engine: Engine) -> bool:
    """Whether a session of this database comes to wait for a row lock within ``WAIT_S``."""
    deadline = time.monotonic() + WAIT_S
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).scalar_one()
            connection.rollback()  # a fresh snapshot of the statistics on the next poll
            if waiting:
                return True
            time.sleep(0.01)
    return False


@pytest.mark.postgres
def test_locked_profile_makes_a_second_transaction_wait_until_the_first_commits(
    postgres_url: str,
) -> None:
    engine = open_database(postgres_url)
    with engine.connect() as connection, connection.begin():
        SqlReferenceRepository(connection).add_customer("alice", "Alice Example")
    first_locked = threading.Event()
    first_may_commit = threading.Event()
    second_read: list[Profile] = []
    failures: list[BaseException] = []

    def first() -> None:
        try:
            with engine.connect() as connection, connection.begin():
                repository = SqlComplianceRepository(connection)
                repository.profiles(["alice"], lock=True)
                repository.set_profile("alice", at=WHEN, tier=3)
                first_locked.set()
                assert first_may_commit.wait(WAIT_S), "never told to commit"
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)
            first_locked.set()

    def second() -> None:
        try:
            with engine.connect() as connection, connection.begin():
                profiles = SqlComplianceRepository(connection).profiles(["alice"], lock=True)
                second_read.append(profiles["alice"])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    try:
        threads[0].start()
        assert first_locked.wait(WAIT_S)
        threads[1].start()
        assert _wait_for_lock_waiter(engine), "the second transaction never waited"
        assert second_read == [] and threads[1].is_alive()
    finally:
        first_may_commit.set()
        for thread in threads:
            thread.join(WAIT_S)
        engine.dispose()
    assert not failures, failures
    assert not any(thread.is_alive() for thread in threads)
    # It read after the first committed, so it saw the first's write.
    assert [profile.tier for profile in second_read] == [3]
