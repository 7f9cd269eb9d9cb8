"""Usage totals (``compliance_usage_totals``): what a decision reads, and how the totals follow
the usage rows, on SQLite and PostgreSQL alike.

* A decision's reads are bounded: a withdrawal of a customer with 10 earlier operations and one
  of a customer with 2,000 run the same statements, and the rows those statements return (each
  SELECT captured with SQLAlchemy's ``before_cursor_execute`` event and run again afterwards to
  count its rows) stay under a bound that does not depend on the history.
* Totals follow the rows: recorded usage adds to its hour and day, a replay adds nothing, a
  forgotten operation (a refunded withdrawal) is taken off, and the windows read back equal sums
  written out by hand.
* The migration to revision 0005 sums the usage recorded before it into the totals.
* On PostgreSQL, two transactions adding to the same new hour at once both count (the upsert adds
  in the database).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine, event

from sluice.domain.compliance import (
    DAY,
    MONTH,
    ComplianceRequest,
    UsageRecord,
    bucket_start,
    usage_buckets,
)
from sluice.domain.risk import RiskRules
from sluice.services.compliance import KycRegistry
from sluice.store import tables as t
from sluice.store.compliance_repository import CHUNK, SqlComplianceRepository
from sluice.store.database import alembic_config, create_database_engine, migrate, open_database
from sluice.store.repositories import SqlReferenceRepository
from sluice.store.unit_of_work import SqlUnitOfWork

NOW = datetime(2026, 12, 5, 13, 30, 15, 250000, tzinfo=UTC)
RECEIVER = "receiver::1220aa"
WAIT_S = 10.0
MINUTE = timedelta(minutes=1)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = open_database(database_url)
    yield engine
    engine.dispose()


def history(customer: str, count: int) -> list[UsageRecord]:
    """``count`` operations evenly over the 30 days before NOW, a third of them withdrawals to
    RECEIVER."""
    step = (MONTH - timedelta(minutes=1)) / count
    first = NOW - MONTH + timedelta(minutes=1)
    return [
        UsageRecord(
            f"{customer}:{index}",
            "withdrawal" if index % 3 == 0 else "deposit",
            Decimal(1 + index % 5),
            first + step * index,
            RECEIVER if index % 3 == 0 else f"sender-{index % 4}::1220bb",
        )
        for index in range(count)
    ]


def add_customers(engine: Engine, histories: dict[str, list[UsageRecord]]) -> None:
    with engine.begin() as connection:
        reference = SqlReferenceRepository(connection)
        for customer in histories:
            reference.add_customer(customer, customer)
        SqlComplianceRepository(connection).record_usage_of(histories)


def decide_capturing_reads(engine: Engine, customer: str) -> list[tuple[str, Any]]:
    """Decide a withdrawal of ``customer`` in a session as a request does, returning the SELECT
    statements it ran with their parameters."""
    selects: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "(SELECT")):
            selects.append((statement, parameters))

    registry = KycRegistry()
    with SqlUnitOfWork(engine) as uow:
        event.listen(engine, "before_cursor_execute", capture)
        try:
            session = registry.session(
                uow, [customer], [RECEIVER], since=NOW, operations=["withdrawal"]
            )
            decision = session.decide(
                ComplianceRequest(customer, "withdrawal", Decimal(1), RECEIVER),
                operation_id=f"{customer}:request",
                at=NOW,
                actor="test",
                record=True,
            )
        finally:
            event.remove(engine, "before_cursor_execute", capture)
    assert decision.allowed, decision.summary()
    return selects


def rows_returned(engine: Engine, selects: list[tuple[str, Any]]) -> int:
    with engine.connect() as connection:
        return sum(
            len(connection.exec_driver_sql(statement, parameters).fetchall())
            for statement, parameters in selects
        )


def test_a_decision_reads_a_bounded_number_of_rows_whatever_the_history(engine: Engine) -> None:
    add_customers(engine, {"few": history("few", 10), "many": history("many", 2_000)})

    few = decide_capturing_reads(engine, "few")
    many = decide_capturing_reads(engine, "many")

    # The same statements, whatever the history.
    assert [statement for statement, _ in few] == [statement for statement, _ in many]
    # What they may return for one operation: the profile, ≤ 32 day totals, ≤ 3 × 24 hour
    # totals, the records of three hours (2,000 operations a month are under 3 an hour), the
    # recent slice the risk rules see, one counterparty look-up.
    ops_per_hour_max = 2_000 // (30 * 24) + 1
    bound = 1 + 32 + 3 * 24 + 3 * ops_per_hour_max + RiskRules().recent_operations + 1
    assert rows_returned(engine, many) <= bound
    assert rows_returned(engine, few) <= bound
    with engine.connect() as connection:
        stored = connection.execute(
            sa.select(sa.func.count())
            .select_from(t.compliance_usage)
            .where(t.compliance_usage.c.customer_id == "many")
        ).scalar_one()
    assert stored == 2_000 and bound < stored / 10


def hand_windows(
    records: list[UsageRecord], operation: str, now: datetime
) -> tuple[Decimal, Decimal]:
    def window(length: timedelta) -> Decimal:
        return sum(
            (
                record.amount
                for record in records
                if record.operation == operation and now - length < record.occurred_at <= now
            ),
            Decimal(0),
        )

    return window(DAY), window(MONTH)


def stored_totals(
    engine: Engine, customer: str
) -> dict[tuple[str, int, datetime], tuple[Decimal, int]]:
    table = t.compliance_usage_totals
    columns = (
        table.c.operation,
        table.c.length_s,
        table.c.starts_at,
        table.c.amount,
        table.c.count,
    )
    with engine.connect() as connection:
        rows = connection.execute(sa.select(*columns).where(table.c.customer_id == customer))
        return {
            (operation, length_s, datetime.fromisoformat(starts_at)): (amount, count)
            for operation, length_s, starts_at, amount, count in rows
            if count
        }


def expected_totals(
    records: list[UsageRecord],
) -> dict[tuple[str, int, datetime], tuple[Decimal, int]]:
    return {key: (bucket.amount, bucket.count) for key, bucket in usage_buckets(records).items()}


def test_totals_follow_recorded_replayed_and_forgotten_usage(engine: Engine) -> None:
    hour = bucket_start(NOW, 3600)
    records = [
        UsageRecord("w-1", "withdrawal", Decimal("10.5"), hour + timedelta(minutes=1)),
        UsageRecord("w-2", "withdrawal", Decimal("2.25"), hour + timedelta(minutes=2)),
        UsageRecord("w-3", "withdrawal", Decimal("7"), NOW - timedelta(days=1, minutes=-5)),
        UsageRecord("d-1", "deposit", Decimal("1"), NOW - timedelta(days=29, hours=23)),
    ]
    add_customers(engine, {"alice": records})
    assert stored_totals(engine, "alice") == expected_totals(records)

    with engine.begin() as connection:
        repository = SqlComplianceRepository(connection)
        repository.record_usage("alice", records[:2])  # a replay: nothing new
    assert stored_totals(engine, "alice") == expected_totals(records)

    with engine.begin() as connection:
        assert SqlComplianceRepository(connection).forget_usage(["w-1", "unknown"]) == 1
    kept = [record for record in records if record.operation_id != "w-1"]
    assert stored_totals(engine, "alice") == expected_totals(kept)

    with engine.connect() as connection:
        windows = SqlComplianceRepository(connection).usage_windows(["alice"], NOW, NOW)["alice"]
    for operation in ("withdrawal", "deposit"):
        assert windows.used(operation, NOW) == hand_windows(kept, operation, NOW)


def test_totals_of_more_hours_than_one_chunk_follow_the_rows(engine: Engine) -> None:
    # (on SQLite, the totals a write adds to are read first: here two chunks of hours, one of days)
    first = bucket_start(NOW, 3600) - timedelta(hours=CHUNK + 99)
    earlier = [
        UsageRecord(f"a-{hour}", "deposit", Decimal("1.25"), first + timedelta(hours=hour))
        for hour in range(CHUNK + 100)
    ]
    later = [
        replace(record, operation_id=f"b-{index}", occurred_at=record.occurred_at + MINUTE)
        for index, record in enumerate(earlier)
    ]
    add_customers(engine, {"alice": earlier})
    with engine.begin() as connection:
        SqlComplianceRepository(connection).record_usage_of({"alice": later})
    assert stored_totals(engine, "alice") == expected_totals(earlier + later)


# compliance_usage as revisions 0003 to 0007 made it (keyed by the operation id itself)
USAGE_0004 = sa.table(
    "compliance_usage",
    sa.column("operation_id", sa.String()),
    sa.column("customer_id", sa.String()),
    sa.column("operation", sa.String()),
    sa.column("amount", t.Money()),
    sa.column("counterparty", sa.String()),
    sa.column("occurred_at", sa.String()),
)


def test_the_migration_sums_the_usage_recorded_before_it(database_url: str) -> None:
    engine = create_database_engine(database_url)
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0004")
    records = {
        "alice": history("alice", 300),
        "bob": [UsageRecord("b-1", "deposit", Decimal("0.0000000001"), NOW - timedelta(hours=2))],
    }
    with engine.begin() as connection:
        for customer in records:
            SqlReferenceRepository(connection).add_customer(customer, customer)
        connection.execute(
            USAGE_0004.insert(),
            [
                {
                    "operation_id": record.operation_id,
                    "customer_id": customer,
                    "operation": record.operation,
                    "amount": record.amount,
                    "counterparty": record.counterparty,
                    "occurred_at": record.occurred_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                }
                for customer, customer_records in records.items()
                for record in customer_records
            ],
        )
    try:
        migrate(engine)
        for customer, customer_records in records.items():
            assert stored_totals(engine, customer) == expected_totals(customer_records)
        with engine.connect() as connection:
            windows = SqlComplianceRepository(connection).usage_windows(["alice"], NOW, NOW)
        for operation in ("withdrawal", "deposit"):
            expected = hand_windows(records["alice"], operation, NOW)
            assert windows["alice"].used(operation, NOW) == expected
    finally:
        engine.dispose()


def _wait_for_lock_waiter(engine: Engine) -> bool:
    """Whether a session of this database comes to wait for a lock within ``WAIT_S``."""
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
def test_two_transactions_adding_to_one_new_hour_at_once_both_count(postgres_url: str) -> None:
    """The first inserts the hour's total and holds its transaction open; the second's upsert
    of the same total waits for it, then adds to what the first committed."""
    engine = open_database(postgres_url)
    add_customers(engine, {"alice": []})
    first_inserted = threading.Event()
    first_may_commit = threading.Event()
    failures: list[BaseException] = []

    def add(name: str, hold: bool) -> None:
        try:
            with engine.connect() as connection, connection.begin():
                SqlComplianceRepository(connection).record_usage(
                    "alice", [UsageRecord(name, "deposit", Decimal("1.5"), NOW)]
                )
                if hold:
                    first_inserted.set()
                    assert first_may_commit.wait(WAIT_S), "never told to commit"
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)
            first_inserted.set()

    first = threading.Thread(target=add, args=("first", True))
    second = threading.Thread(target=add, args=("second", False))
    try:
        first.start()
        assert first_inserted.wait(WAIT_S)
        second.start()
        assert _wait_for_lock_waiter(engine), "the second transaction never waited"
        first_may_commit.set()
        for thread in (first, second):
            thread.join(WAIT_S)
        assert not failures, failures
        totals = stored_totals(engine, "alice")
        assert totals[("deposit", 3600, bucket_start(NOW, 3600))] == (Decimal(3), 2)
        assert totals[("deposit", 86400, bucket_start(NOW, 86400))] == (Decimal(3), 2)
    finally:
        first_may_commit.set()
        engine.dispose()
