"""The audit log in the Integration DB, on SQLite and PostgreSQL alike
(sluice.store.audit_repository, sluice.services.audit).

Covers appending across transactions (one gapless chain, read back bit for bit, verified page by
page), a rolled-back append leaving nothing behind, lookups by customer and operation, the
database refusing UPDATE / DELETE / TRUNCATE of a record, and the audit chain under tampering: with
the triggers dropped or disabled by raw SQL, a record is modified, deleted, cut off the end,
swapped with another, forged past the head, or the head itself is altered, and ``verify_audit_log``
names the record each time. Concurrent appenders (each in its own transaction, racing on the very
first append too) get seqs 1…N with no gap or duplicate and a chain that verifies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from sluice.domain.audit import GENESIS_HASH, AuditEntry, ChainVerification, chain_hash
from sluice.domain.errors import InvalidInputError
from sluice.ports import UnitOfWork
from sluice.services.audit import list_audit_records, verify_audit_log
from sluice.store.audit_repository import SqlAuditLog
from sluice.store.database import open_database
from sluice.store.unit_of_work import SqlUnitOfWork

T0 = datetime(2026, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)


def entry(i: int, customer_id: str = "c1", operation_id: str | None = None) -> AuditEntry:
    return AuditEntry(
        operation_id=operation_id or f"w-{i}",
        operation="withdrawal_requested",
        actor=f"customer:{customer_id}",
        recorded_at=T0 + timedelta(seconds=i),
        customer_id=customer_id,
        kyc={"tier": 2, "status": "active"},
        parameters={
            "amount": Decimal("12.5000000000"),
            "receiver": "bob::1220ab",
            "note": "Zürich – ½",
            "deadline": T0 + timedelta(hours=1),
            "i": i,
        },
        checks=[{"check": "tier", "passed": True, "score": 0.25}],
        state_changes=[{"debited": f"customer:{customer_id}", "amount": Decimal("12.5")}],
        error=None if i % 3 else "refused: over the daily limit",
    )


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = open_database(database_url)
    yield engine
    engine.dispose()


def uow_factory(engine: Engine) -> Callable[[], UnitOfWork]:
    return lambda: SqlUnitOfWork(engine)


def append(engine: Engine, entries: list[AuditEntry], *, commit: bool = True) -> list[int]:
    with engine.connect() as connection:
        connection.begin()
        seqs = SqlAuditLog(connection).append(entries)
        if commit:
            connection.commit()
        else:
            connection.rollback()
    return seqs


def fill(engine: Engine, n: int) -> None:
    for first in range(1, n + 1, 3):
        append(engine, [entry(i) for i in range(first, min(first + 3, n + 1))])


def verify(engine: Engine, page_size: int = 4) -> ChainVerification:
    return verify_audit_log(uow_factory(engine), page_size=page_size)


def findings(result: ChainVerification) -> list[tuple[int, str]]:
    return [(finding.seq, finding.kind) for finding in result.findings]


# --- appending and reading --------------------------------------------------------------------


def test_appends_across_transactions_form_one_chain_that_verifies_page_by_page(
    engine: Engine,
) -> None:
    assert append(engine, [entry(1)]) == [1]
    assert append(engine, [entry(i) for i in range(2, 7)]) == [2, 3, 4, 5, 6]
    assert append(engine, [entry(7), entry(8)]) == [7, 8]
    progress: list[int] = []
    result = verify_audit_log(uow_factory(engine), page_size=3, on_progress=progress.append)
    assert result.ok, result.findings
    assert result.records_checked == 8
    assert progress == [3, 6, 8]
    with engine.connect() as connection:
        log = SqlAuditLog(connection)
        records = log.records(after_seq=0, limit=100)
        assert [r.seq for r in records] == list(range(1, 9))
        assert log.head() == (8, records[-1].hash)
        assert records[0].previous_hash == GENESIS_HASH
        # Read back exactly as appended: the same hash from the stored values.
        assert records[4].entry.parameters["note"] == "Zürich – ½"
        assert records[4].entry.recorded_at == entry(5).recorded_at
        assert chain_hash(records[3].hash, 5, entry(5)) == records[4].hash
        assert [r.seq for r in log.records(after_seq=6, limit=10)] == [7, 8]


def test_a_rolled_back_append_leaves_nothing_and_the_chain_continues_cleanly(
    engine: Engine,
) -> None:
    append(engine, [entry(1), entry(2)])
    assert append(engine, [entry(3), entry(4), entry(5)], commit=False) == [3, 4, 5]
    assert append(engine, [entry(6)]) == [3]
    result = verify(engine)
    assert result.ok and result.records_checked == 3


def test_an_empty_append_writes_nothing_and_a_bad_entry_is_refused(engine: Engine) -> None:
    assert append(engine, []) == []
    with pytest.raises(InvalidInputError, match="operation_id is 301 characters"):
        append(engine, [entry(1, operation_id="x" * 301)])
    with pytest.raises(InvalidInputError, match="has no time zone"):
        append(engine, [AuditEntry("op", "x", "y", datetime(2026, 1, 1))])
    with engine.connect() as connection:
        assert SqlAuditLog(connection).head() is None
    assert verify(engine).ok


def test_records_are_found_by_customer_and_by_operation_latest_first_returned_oldest_first(
    engine: Engine,
) -> None:
    append(engine, [entry(1, "c1"), entry(2, "c2"), entry(3, "c1"), entry(4, "c1", "w-1")])
    factory = uow_factory(engine)
    assert [r.seq for r in list_audit_records(factory, customer_id="c1")] == [1, 3, 4]
    assert [r.seq for r in list_audit_records(factory, customer_id="c1", limit=2)] == [3, 4]
    assert [r.seq for r in list_audit_records(factory, operation_id="w-1")] == [1, 4]
    assert [r.seq for r in list_audit_records(factory, customer_id="c2")] == [2]
    assert [r.seq for r in list_audit_records(factory, limit=2)] == [3, 4]
    with pytest.raises(InvalidInputError, match="limit"):
        list_audit_records(factory, limit=0)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_records SET actor = 'mallory' WHERE seq = 2",
        "DELETE FROM audit_records WHERE seq = 2",
        "DELETE FROM audit_records",
    ],
)
def test_the_database_refuses_to_change_or_remove_a_record(engine: Engine, statement: str) -> None:
    fill(engine, 3)
    with engine.connect() as connection, pytest.raises(sa.exc.DBAPIError, match="append-only"):
        connection.exec_driver_sql(statement)
    assert verify(engine).ok


@pytest.mark.postgres
def test_postgresql_refuses_to_truncate_the_log(postgres_url: str) -> None:
    engine = open_database(postgres_url)
    fill(engine, 3)
    with engine.connect() as connection, pytest.raises(sa.exc.DBAPIError, match="append-only"):
        connection.exec_driver_sql("TRUNCATE audit_records")
    assert verify(engine).ok
    engine.dispose()


# --- tampering by someone who can drop the triggers -------------------------------------------


def without_triggers(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(
            "ALTER TABLE audit_records DISABLE TRIGGER audit_records_no_change"
        )
    else:
        connection.exec_driver_sql("DROP TRIGGER audit_records_no_update")
        connection.exec_driver_sql("DROP TRIGGER audit_records_no_delete")


def tamper(engine: Engine, *statements: str) -> None:
    with engine.begin() as connection:
        without_triggers(connection)
        for statement in statements:
            connection.exec_driver_sql(statement)


@pytest.mark.parametrize(
    ("statements", "expected", "named"),
    [
        (
            ['UPDATE audit_records SET parameters = \'{"amount":"999.0000000000"}\' WHERE seq = 3'],
            [(3, "modified")],
            "record 3 (withdrawal_requested, operation id w-3) was modified",
        ),
        (
            ["UPDATE audit_records SET actor = 'officer:mallory' WHERE seq = 1"],
            [(1, "modified")],
            "record 1 (withdrawal_requested, operation id w-1) was modified",
        ),
        (
            ["UPDATE audit_records SET checks = 'not json' WHERE seq = 5"],
            [(5, "modified")],
            "its checks are not JSON",
        ),
        (
            ["UPDATE audit_records SET recorded_at = 'yesterday' WHERE seq = 6"],
            [(6, "modified")],
            "its time 'yesterday' is not a timestamp",
        ),
        (
            ["DELETE FROM audit_records WHERE seq = 4"],
            [(4, "deleted")],
            "record 4 is missing (deleted)",
        ),
        (
            ["DELETE FROM audit_records WHERE seq = 1"],
            [(1, "deleted")],
            "record 1 is missing (deleted)",
        ),
        (
            ["DELETE FROM audit_records WHERE seq >= 6"],
            [(6, "truncated")],
            "records 6–7 are missing from the end",
        ),
        (
            [
                "UPDATE audit_records SET seq = -1 WHERE seq = 2",
                "UPDATE audit_records SET seq = 2 WHERE seq = 5",
                "UPDATE audit_records SET seq = 5 WHERE seq = -1",
            ],
            [(2, "reordered"), (5, "reordered")],
            "record 2 (withdrawal_requested, operation id w-2) was swapped with record 5",
        ),
    ],
    ids=[
        "parameters",
        "actor",
        "checks-not-json",
        "time-not-a-timestamp",
        "delete-middle",
        "delete-first",
        "cut-the-end",
        "swap",
    ],
)
def test_tampering_with_a_record_is_found_and_the_record_named(
    engine: Engine, statements: list[str], expected: list[tuple[int, str]], named: str
) -> None:
    fill(engine, 7)
    assert verify(engine).ok
    tamper(engine, *statements)
    result = verify(engine)
    assert not result.ok
    assert findings(result) == expected
    assert named in result.findings[0].message


def test_a_record_forged_past_the_head_is_named(engine: Engine) -> None:
    fill(engine, 4)
    with engine.connect() as connection:
        log = SqlAuditLog(connection)
        last = log.records(after_seq=3, limit=1)[0]
        head = log.head()
    forged = AuditEntry(
        operation_id="forged",
        operation="withdrawal_requested",
        actor="customer:c1",
        recorded_at=T0 + timedelta(seconds=5),
        customer_id="c1",
    )
    with engine.begin() as connection:
        # A forger who knows the scheme links the record properly but cannot move the head
        # without being noticed elsewhere; here the head is left as it was.
        connection.execute(
            sa.text(
                "INSERT INTO audit_records (seq, operation_id, recorded_at, actor, customer_id, "
                "kyc, operation, parameters, checks, state_changes, error, previous_hash, hash) "
                "VALUES (5, 'forged', '2026-03-01T09:30:05.123456Z', 'customer:c1', 'c1', NULL, "
                "'withdrawal_requested', '{}', '[]', '[]', NULL, :previous, :hash)"
            ),
            {"previous": last.hash, "hash": chain_hash(last.hash, 5, forged)},
        )
    with engine.connect() as connection:
        assert SqlAuditLog(connection).head() == head
    result = verify(engine)
    assert findings(result) == [(5, "inserted")]
    assert result.findings[0].operation_id == "forged"


def test_an_altered_head_is_reported(engine: Engine) -> None:
    fill(engine, 4)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"UPDATE audit_head SET hash = '{'a' * 64}'")
    assert findings(verify(engine)) == [(4, "head")]


def test_a_log_verified_while_appends_continue_stays_clean(engine: Engine) -> None:
    fill(engine, 5)
    appended: list[int] = []
    plain = uow_factory(engine)

    def busy_factory() -> UnitOfWork:
        # Another writer appends before each transaction verification opens: between its
        # pages, between reading the last page and the head, and after reading the head.
        if len(appended) < 6:
            appended.extend(append(engine, [entry(100 + len(appended))]))
        return plain()

    result = verify_audit_log(busy_factory, page_size=2)
    assert len(appended) == 6
    assert result.ok, result.findings
    assert result.records_checked == 11


def test_verification_from_a_checkpoint_reads_only_what_was_appended_since(
    engine: Engine,
) -> None:
    fill(engine, 4)
    first = verify(engine)
    fill_more = [entry(i) for i in (5, 6)]
    append(engine, fill_more)
    checkpoint = (first.last_seq, first.last_hash)
    later = verify_audit_log(uow_factory(engine), start=checkpoint)
    assert later.ok and later.records_checked == 2
    forged_checkpoint = verify_audit_log(uow_factory(engine), start=(4, "b" * 64))
    assert findings(forged_checkpoint) == [(5, "modified")]


# --- concurrency --------------------------------------------------------------------------------


@pytest.mark.postgres
def test_concurrent_appenders_get_a_gapless_chain(postgres_url: str) -> None:
    engine = open_database(postgres_url)
    threads_count, transactions, per_transaction = 8, 5, 3
    start = threading.Barrier(threads_count)
    seqs: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def appender(worker: int) -> None:
        try:
            start.wait(timeout=30)  # everyone races for the very first append, too
            for t in range(transactions):
                batch = [
                    entry(i, customer_id=f"c{worker}", operation_id=f"op-{worker}-{t}-{i}")
                    for i in range(per_transaction)
                ]
                got = append(engine, batch)
                with lock:
                    seqs.extend(got)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=appender, args=(w,)) for w in range(threads_count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not errors, errors
    total = threads_count * transactions * per_transaction
    assert sorted(seqs) == list(range(1, total + 1))
    result = verify(engine, page_size=50)
    assert result.ok, result.findings
    assert result.records_checked == total
    engine.dispose()
