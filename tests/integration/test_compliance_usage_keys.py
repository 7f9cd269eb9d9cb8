"""Usage rows keyed by a digest of the operation id (revision 0008), on SQLite and PostgreSQL.

* The migration moves every usage row recorded before it, with the same values, and gives each
  its keys; afterwards a replay of a moved operation records nothing, forgetting one takes it off
  the totals, and a counterparty seen before it is still seen.
* Going back to revision 0007 puts the rows back as they were.
* A counterparty look-up compares the party itself, not only its digest: two parties whose
  digests are made equal by hand are still told apart.
* The indexes the usage reads rely on are used (EXPLAIN QUERY PLAN, SQLite).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine

from sluice.domain.compliance import UsageRecord
from sluice.store import tables as t
from sluice.store.compliance_repository import SqlComplianceRepository
from sluice.store.compliance_usage import FEW_USAGE_ROWS, counterparty_key, operation_key
from sluice.store.database import alembic_config, create_database_engine, migrate, open_database
from sluice.store.repositories import SqlReferenceRepository

NOW = datetime(2026, 12, 5, 13, 30, 15, 250000, tzinfo=UTC)
PARTY = "sender::1220" + "ab" * 34

# compliance_usage as revisions 0003 to 0007 made it (keyed by the operation id itself)
USAGE_0007 = sa.table(
    "compliance_usage",
    sa.column("operation_id", sa.String()),
    sa.column("customer_id", sa.String()),
    sa.column("operation", sa.String()),
    sa.column("amount", t.Money()),
    sa.column("counterparty", sa.String()),
    sa.column("occurred_at", sa.String()),
)
NAMES = ("operation_id", "customer_id", "operation", "amount", "counterparty", "occurred_at")


def _text(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _old_rows(count: int) -> list[dict[str, Any]]:
    """``count`` usage rows of two customers, every fourth without a counterparty."""
    return [
        {
            "operation_id": f"deposit:1220{index:064x}:0:Amulet@dso::1220{'cd' * 34}",
            "customer_id": "alice" if index % 2 else "bob",
            "operation": "deposit" if index % 3 else "withdrawal",
            "amount": Decimal(index * 1_000_003) / Decimal(10**10),
            "counterparty": None if index % 4 == 0 else f"{PARTY}-{index % 5}",
            "occurred_at": _text(NOW - timedelta(minutes=index)),
        }
        for index in range(count)
    ]


def _stored(engine: Engine, table: Any) -> list[tuple[Any, ...]]:
    columns = [table.c[name] for name in NAMES]
    with engine.connect() as connection:
        rows = connection.execute(sa.select(*columns).order_by(table.c.operation_id)).all()
    return [tuple(row) for row in rows]


def _expected(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    ordered = sorted(rows, key=lambda row: row["operation_id"])
    return [tuple(row[name] for name in NAMES) for row in ordered]


def _to(engine: Engine, revision: str, *, down: bool = False) -> None:
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        if down:
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)


def test_the_migration_moves_the_usage_rows_and_keys_them(database_url: str) -> None:
    engine = create_database_engine(database_url)
    try:
        _to(engine, "0007")
        rows = _old_rows(2345)  # more than one chunk of the copy
        with engine.begin() as connection:
            for customer in ("alice", "bob"):
                SqlReferenceRepository(connection).add_customer(customer, customer)
            connection.execute(USAGE_0007.insert(), rows)
        migrate(engine)

        assert _stored(engine, t.compliance_usage) == _expected(rows)
        usage = t.compliance_usage
        with engine.connect() as connection:
            keys = connection.execute(
                sa.select(usage.c.operation_id, usage.c.operation_key, usage.c.counterparty_key)
            ).all()
        assert len(keys) == len(rows)
        for operation_id, key, _ in keys:
            assert bytes(key) == operation_key(operation_id)
        by_id = {row["operation_id"]: row["counterparty"] for row in rows}
        for operation_id, _, party_key in keys:
            party = by_id[operation_id]
            assert party_key == (None if party is None else counterparty_key(party))

        moved = rows[1]  # alice's, with a counterparty
        record = UsageRecord(
            moved["operation_id"],
            moved["operation"],
            moved["amount"],
            datetime.fromisoformat(moved["occurred_at"]),
            moved["counterparty"],
        )
        with engine.begin() as connection:
            repository = SqlComplianceRepository(connection)
            written = repository.record_usage_of({"alice": [record]})
            assert written.inserted == set() and written.versions == {}
            assert repository.counterparties_seen(
                "alice", [moved["counterparty"], f"{PARTY}-never"], NOW - timedelta(days=30), NOW
            ) == {moved["counterparty"]}
            assert repository.forget_usage([moved["operation_id"]]) == 1
            assert repository.forget_usage([moved["operation_id"]]) == 0
        remaining = [row for row in rows if row is not moved]
        assert _stored(engine, t.compliance_usage) == _expected(remaining)

        _to(engine, "0007", down=True)
        assert _stored(engine, USAGE_0007) == _expected(remaining)
        with engine.connect() as connection:
            columns = {
                column["name"] for column in sa.inspect(connection).get_columns("compliance_usage")
            }
            indexes = {
                index["name"]: index["column_names"]
                for index in sa.inspect(connection).get_indexes("compliance_usage")
            }
        assert columns == set(NAMES)
        assert indexes["ix_compliance_usage_counterparty"] == [
            "customer_id",
            "counterparty",
            "occurred_at",
        ]
        migrate(engine)  # and forward again
        assert _stored(engine, t.compliance_usage) == _expected(remaining)
    finally:
        engine.dispose()


def test_new_usage_is_recorded_once_under_its_key(database_url: str) -> None:
    engine = open_database(database_url)
    try:
        with engine.begin() as connection:
            SqlReferenceRepository(connection).add_customer("alice", "alice")
        records = [
            UsageRecord("op-1", "deposit", Decimal("1.5"), NOW, PARTY),
            UsageRecord("op-2", "withdrawal", Decimal("2"), NOW + timedelta(seconds=1)),
        ]
        with engine.begin() as connection:
            written = SqlComplianceRepository(connection).record_usage_of({"alice": records})
        assert written.inserted == {"op-1", "op-2"}
        with engine.begin() as connection:
            again = SqlComplianceRepository(connection).record_usage_of(
                {"alice": [*records, UsageRecord("op-3", "deposit", Decimal(3), NOW)]}
            )
        assert again.inserted == {"op-3"}
        with engine.connect() as connection:
            found = SqlComplianceRepository(connection).usage(["alice"], NOW - timedelta(days=1))
        assert [record.operation_id for record in found["alice"]] == ["op-1", "op-3", "op-2"]
        assert found["alice"][0] == records[0]
    finally:
        engine.dispose()


@pytest.mark.parametrize("others", [1, FEW_USAGE_ROWS + 1])
def test_an_operation_twice_in_one_write_is_recorded_once(database_url: str, others: int) -> None:
    # (on SQLite, more than a few rows first go in together, in a savepoint rolled back when one
    # is skipped; a few go in by one statement that returns what went in)
    engine = open_database(database_url)
    try:
        with engine.begin() as connection:
            SqlReferenceRepository(connection).add_customer("alice", "alice")
        record = UsageRecord("op-0", "deposit", Decimal("1.5"), NOW, PARTY)
        rest = [
            UsageRecord(f"op-{index}", "deposit", Decimal(2), NOW + timedelta(seconds=index))
            for index in range(1, others + 1)
        ]
        with engine.begin() as connection:
            repository = SqlComplianceRepository(connection)
            written = repository.record_usage_of({"alice": [record, *rest, record]})
        assert written.inserted == {"op-0", *(other.operation_id for other in rest)}
        assert written.versions == {"alice": 1}
        with engine.connect() as connection:
            found = SqlComplianceRepository(connection).usage(["alice"], NOW - timedelta(days=1))
        assert found["alice"] == [record, *rest]
    finally:
        engine.dispose()


def test_a_counterparty_sharing_a_digest_with_another_is_told_apart(database_url: str) -> None:
    engine = open_database(database_url)
    try:
        with engine.begin() as connection:
            SqlReferenceRepository(connection).add_customer("alice", "alice")
            repository = SqlComplianceRepository(connection)
            record = UsageRecord("op-1", "deposit", Decimal(1), NOW, PARTY)
            repository.record_usage("alice", [record])
            other = f"{PARTY}-other"
            # As if the two parties' digests collided.
            connection.execute(
                sa.update(t.compliance_usage).values(counterparty_key=counterparty_key(other))
            )
            after, until = NOW - timedelta(days=30), NOW
            assert repository.counterparties_seen("alice", [other], after, until) == set()
            connection.execute(
                sa.update(t.compliance_usage).values(counterparty_key=counterparty_key(PARTY))
            )
            assert repository.counterparties_seen("alice", [PARTY, other], after, until) == {PARTY}
    finally:
        engine.dispose()


def test_the_usage_reads_use_the_indexes(tmp_path: Any) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'sluice.db'}")
    try:
        with engine.connect() as connection:

            def plan(sql: str) -> str:
                rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()
                return " | ".join(str(row[-1]) for row in rows)

            seen = plan(
                "SELECT counterparty FROM compliance_usage WHERE customer_id = 'a' "
                "AND counterparty_key = 1 AND counterparty = 'p' AND occurred_at > 'x' "
                "AND occurred_at <= 'y' LIMIT 1"
            )
            assert "USING INDEX ix_compliance_usage_counterparty" in seen, seen
            ranges = plan(
                "SELECT * FROM compliance_usage WHERE customer_id IN ('a', 'b') "
                "AND occurred_at > 'x' AND occurred_at <= 'y'"
            )
            assert "USING INDEX ix_compliance_usage_customer" in ranges, ranges
            forget = plan("DELETE FROM compliance_usage WHERE operation_key IN (x'00', x'01')")
            assert "sqlite_autoindex_compliance_usage_1" in forget, forget
    finally:
        engine.dispose()
