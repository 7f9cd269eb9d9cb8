"""The Integration DB contract, run on SQLite and on PostgreSQL alike.

Covers migrations, exact money, the unit of work's all-or-nothing behaviour, the journal's
balanced postings with cached balances, and that replayed keys are refused by the database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.domain.amounts import format_amount
from sluice.domain.journal import AccountRef, transfer_into
from sluice.domain.ledger import Cursor, Holding, InstrumentId
from sluice.ports import IngestBatch, IngestedUpdate
from sluice.store.database import migrate

COIN = InstrumentId("dso::1220aa", "Amulet")
TREASURY = AccountRef("treasury:t::1220bb", COIN)
ALICE = AccountRef("customer:alice", COIN)
WHEN = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def test_migrations_run_twice_without_change(database_url: str) -> None:
    database = bootstrap.database(database_url)
    migrate(database.engine)
    tables = set(sa.inspect(database.engine).get_table_names())
    assert {"holdings", "journal_postings", "ledger_cursors", "alerts"} <= tables
    database.dispose()


@pytest.mark.parametrize(
    "amount",
    ["0.0000000001", "12345678901234567890.1234567890", "-5.5000000000", "0E-10"],
)
def test_money_round_trips_exactly(database_url: str, amount: str) -> None:
    database = bootstrap.database(database_url)
    value = Decimal(amount)
    batch = IngestBatch(connection="c", party="t::1220bb")
    batch.holdings_created.append((Holding("cid-1", "t::1220bb", COIN, value), "u1", 1))
    with database.uow() as uow:
        uow.ingestion.write_batch(batch)
        uow.commit()
    with database.uow() as uow:
        (holding,) = uow.books.active_holdings()
    assert holding.amount == value
    assert format_amount(holding.amount) == format_amount(value)
    database.dispose()


def test_unit_of_work_without_commit_writes_nothing(database_url: str) -> None:
    database = bootstrap.database(database_url)
    with database.uow() as uow:
        uow.reference.add_customer("c1", "Carol")
    with database.uow() as uow:
        assert uow.reference.customers() == []
    with pytest.raises(RuntimeError), database.uow() as uow:
        uow.reference.add_customer("c1", "Carol")
        raise RuntimeError("crash before commit")
    with database.uow() as uow:
        assert uow.reference.customers() == []
    database.dispose()


def test_journal_postings_move_cached_balances_and_replays_are_refused(database_url: str) -> None:
    database = bootstrap.database(database_url)
    batch = IngestBatch(connection="c", party="t::1220bb")
    batch.updates.append(IngestedUpdate("u1", 1, WHEN, "ingested"))
    batch.journal.append(
        transfer_into(
            "ingest:u1:0", "deposit", treasury=TREASURY, liability=ALICE, amount=Decimal("7.25")
        )
    )
    batch.journal.append(
        transfer_into(
            "ingest:u1:1", "deposit", treasury=TREASURY, liability=ALICE, amount=Decimal("0.75")
        )
    )
    batch.cursor = Cursor(1, "u1", WHEN, "sync")
    with database.uow() as uow:
        uow.ingestion.write_batch(batch)
        uow.commit()
    with database.uow() as uow:
        cached = uow.books.balances()
        posted = uow.books.balances_from_postings()
        cursor = uow.ingestion.load_cursor("c")
    assert cached == posted == {TREASURY: Decimal("8"), ALICE: Decimal("8")}
    assert cursor == Cursor(1, "u1", WHEN, "sync")
    # The same journal key again is refused by the database: a replay cannot post twice.
    with pytest.raises(sa.exc.IntegrityError), database.uow() as uow:
        uow.ingestion.write_batch(batch)
        uow.commit()
    with database.uow() as uow:
        assert uow.books.balances() == cached
    database.dispose()


def test_unbalanced_journal_transaction_is_refused_before_it_reaches_the_database() -> None:
    from sluice.domain.journal import JournalTransaction, Posting

    with pytest.raises(AssertionError, match="does not balance"):
        JournalTransaction(
            "x", "deposit", (Posting(TREASURY, Decimal(1)), Posting(ALICE, Decimal(0)))
        )
