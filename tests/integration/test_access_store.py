"""The access repository's contract (API keys, approvals, run-time settings), run on SQLite and
PostgreSQL through ``database_url``.

Covers: keys stored and read back with only the secret's hash, revoked once; proposals round-trip
with their parameters, votes, result and timestamps intact; the insert of an existing id writes
nothing; the row lock for voting; newest-first paging with filters and bounded limits; setting
rows ordered by key and effective time, and idempotent on (key, effective_at).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sluice import bootstrap
from sluice.bootstrap import Database
from sluice.domain.approvals import Approval, Vote
from sluice.domain.errors import DuplicateOperationError, InvalidInputError
from sluice.ports import ApiKeyRecord, SettingRecord

T0 = datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = bootstrap.database(database_url)
    try:
        yield database
    finally:
        database.dispose()


def key(key_id: str, *, role: str = "operator", at: datetime = T0) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=key_id,
        secret_hash="ab" * 32,
        role=role,
        customer_id="c-1" if role == "user" else None,
        label=f"label {key_id}",
        created_by="super_admin:key:root",
        created_at=at,
    )


def approval(approval_id: str, *, at: datetime = T0, customer_id: str | None = None) -> Approval:
    return Approval(
        id=approval_id,
        operation="withdrawal.large",
        parameters={"amount": "12000.5", "instrument": {"admin": "a::1", "id": "USD"}, "n": 3},
        proposed_by="key:0011223344556677",
        proposed_at=at,
        required=2,
        votes=(Vote("key:0011223344556677", "operator", "approve", at),),
        customer_id=customer_id,
        timelock_s=0.0,
        correlation_id="req-1",
        reason="a big one",
    )


def test_an_api_key_reads_back_as_stored_and_is_revoked_once(db: Database) -> None:
    record = key("0123456789abcdef", role="user")
    with db.uow() as uow:
        uow.access.add_api_key(record)
        uow.commit()
    with db.uow() as uow:
        assert uow.access.api_key("0123456789abcdef") == record
        assert uow.access.api_key("ffffffffffffffff") is None
        later = T0 + timedelta(hours=1)
        assert uow.access.revoke_api_key("0123456789abcdef", "admin", later)
        assert not uow.access.revoke_api_key("0123456789abcdef", "admin", later)
        assert not uow.access.revoke_api_key("ffffffffffffffff", "admin", later)
        uow.commit()
    with db.uow() as uow:
        revoked = uow.access.api_key("0123456789abcdef")
    assert revoked == replace(record, revoked_by="admin", revoked_at=T0 + timedelta(hours=1))


def test_an_api_key_id_cannot_be_taken_twice(db: Database) -> None:
    with db.uow() as uow:
        uow.access.add_api_key(key("0123456789abcdef"))
        with pytest.raises(DuplicateOperationError):
            uow.access.add_api_key(key("0123456789abcdef", role="super_admin"))
        uow.commit()
    with db.uow() as uow:
        stored = uow.access.api_key("0123456789abcdef")
    assert stored is not None
    assert stored.role == "operator"


def test_api_keys_are_listed_oldest_first_in_bounded_pages(db: Database) -> None:
    with db.uow() as uow:
        for i in range(5):
            uow.access.add_api_key(key(f"{i:016x}", at=T0 + timedelta(minutes=5 - i)))
        uow.commit()
    with db.uow() as uow:
        everything = [k.id for k in uow.access.api_keys()]
        page = [k.id for k in uow.access.api_keys(offset=1, limit=2)]
        for limit in (0, 1001):
            with pytest.raises(InvalidInputError):
                uow.access.api_keys(limit=limit)
        with pytest.raises(InvalidInputError):
            uow.access.api_keys(offset=-1)
    assert everything == [f"{i:016x}" for i in (4, 3, 2, 1, 0)]
    assert page == everything[1:3]


def test_a_proposal_round_trips_with_votes_result_and_times(db: Database) -> None:
    proposed = approval("ap-1", customer_id="c-1")
    with db.uow() as uow:
        assert uow.access.add_approval(proposed)
        uow.commit()
    with db.uow() as uow:
        assert uow.access.approval("ap-1") == proposed
        assert uow.access.approval("ap-2") is None
    done = replace(
        proposed,
        status="executed",
        votes=(
            *proposed.votes,
            Vote("jwt:alice", "system_admin", "approve", T0 + timedelta(seconds=5), "fine"),
        ),
        effective_at=T0 + timedelta(seconds=5),
        executed_at=T0 + timedelta(seconds=6),
        result={"withdrawal_id": "w-1", "amounts": ["1.5", 2]},
    )
    with db.uow() as uow:
        assert uow.access.approval("ap-1", lock=True) == proposed
        uow.access.update_approval(done)
        uow.commit()
    with db.uow() as uow:
        assert uow.access.approval("ap-1") == done
    failed = replace(done, status="failed", result={"code": 62}, error="insufficient balance")
    with db.uow() as uow:
        uow.access.update_approval(failed)
        uow.commit()
    with db.uow() as uow:
        assert uow.access.approval("ap-1") == failed


def test_inserting_a_proposal_whose_id_exists_writes_nothing(db: Database) -> None:
    with db.uow() as uow:
        assert uow.access.add_approval(approval("ap-1"))
        assert not uow.access.add_approval(replace(approval("ap-1"), operation="config.change"))
        uow.commit()
    with db.uow() as uow:
        stored = uow.access.approval("ap-1")
    assert stored is not None
    assert stored.operation == "withdrawal.large"


def test_updating_an_unknown_proposal_is_refused(db: Database) -> None:
    with db.uow() as uow, pytest.raises(InvalidInputError):
        uow.access.update_approval(approval("ap-missing"))


def test_proposals_are_listed_newest_first_filtered_and_paged(db: Database) -> None:
    with db.uow() as uow:
        for i in range(6):
            item = approval(
                f"ap-{i}", at=T0 + timedelta(minutes=i), customer_id="c-1" if i % 2 else None
            )
            if i >= 4:
                item = replace(item, status="rejected")
            uow.access.add_approval(item)
        # Same time as ap-5: the id breaks the tie, descending too.
        uow.access.add_approval(approval("ap-9", at=T0 + timedelta(minutes=5)))
        uow.commit()
    with db.uow() as uow:
        newest = [a.id for a in uow.access.approvals()]
        pending = [a.id for a in uow.access.approvals(status="pending")]
        customer = [a.id for a in uow.access.approvals(customer_id="c-1")]
        rejected_for_customer = [
            a.id for a in uow.access.approvals(status="rejected", customer_id="c-1")
        ]
        second_page = [a.id for a in uow.access.approvals(offset=2, limit=2)]
        with pytest.raises(InvalidInputError):
            uow.access.approvals(limit=0)
        with pytest.raises(InvalidInputError):
            uow.access.approvals(status="sleeping")
    assert newest == ["ap-9", "ap-5", "ap-4", "ap-3", "ap-2", "ap-1", "ap-0"]
    assert pending == ["ap-9", "ap-3", "ap-2", "ap-1", "ap-0"]
    assert customer == ["ap-5", "ap-3", "ap-1"]
    assert rejected_for_customer == ["ap-5"]
    assert second_page == ["ap-4", "ap-3"]


def test_setting_rows_are_kept_by_key_and_time_and_idempotent_per_moment(db: Database) -> None:
    later = T0 + timedelta(days=1)
    rows = [
        SettingRecord("rate_limits.key_per_s", 10.5, later, "admin", "ap-2"),
        SettingRecord("approvals.required", 3, later, "admin", "ap-1"),
        SettingRecord("approvals.required", 2, T0, "admin", None),
        SettingRecord("withdrawals.approval_above", None, T0, "admin", "ap-3"),
        SettingRecord("withdrawals.approval_above", "25000.00", later, "admin", "ap-4"),
    ]
    with db.uow() as uow:
        for row in rows:
            uow.access.add_setting(row)
        uow.access.add_setting(rows[1])  # the same value again: nothing changes
        with pytest.raises(DuplicateOperationError):
            uow.access.add_setting(replace(rows[1], value=4))
        uow.commit()
    with db.uow() as uow:
        stored = uow.access.settings()
    assert stored == [rows[2], rows[1], rows[0], rows[3], rows[4]]


@pytest.mark.postgres
def test_a_locked_proposal_waits_for_the_first_voter_on_postgresql(postgres_url: str) -> None:
    database = bootstrap.database(postgres_url)
    try:
        with database.uow() as uow:
            uow.access.add_approval(approval("ap-1"))
            uow.commit()
        second_read = threading.Event()
        seen: list[Approval | None] = []

        def second_voter() -> None:
            with database.uow() as uow:
                seen.append(uow.access.approval("ap-1", lock=True))
                second_read.set()

        with database.uow() as first:
            assert first.access.approval("ap-1", lock=True) is not None
            worker = threading.Thread(target=second_voter)
            worker.start()
            assert not second_read.wait(0.3), "the second lock did not wait for the first"
            first.access.update_approval(replace(approval("ap-1"), status="cancelled"))
            first.commit()
        assert second_read.wait(10)
        worker.join(10)
        assert seen[0] is not None
        assert seen[0].status == "cancelled"  # it read the row as the first voter left it
    finally:
        database.dispose()
