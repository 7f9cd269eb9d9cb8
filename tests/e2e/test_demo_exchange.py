"""The demo's exchange chapter (:mod:`sluice.demo.exchange`), after the Bitcoin custody and iSTSi
issuance chapters it goes on from, on a small demo world.

How: the chapters run against the real :class:`Exchange`, then the exchange chapter's report is
printed to a string. Every step it reports must hold, and what it reports is checked again from
the Integration DB and the data folder, independently of the chapter: the inventory funded once
under a two-person approval, exactly two swaps (Alice's and Bob's fresh one) each with one
journal transaction, audit record and event, the quotes refused left no swap, the oracle's
recorded rejections name the stale feed, the health went healthy → degraded → offline →
healthy, and the books balance.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from rich.console import Console

from sluice.demo import bitcoin, issuance
from sluice.demo import exchange as exchange_chapter
from sluice.demo.exchange import DESK, FUNDING, OPERATION, SALE, ExchangeStory
from sluice.demo.issuance import ALICE, BOB
from sluice.demo.report import Sections
from sluice.demo.world import Exchange
from sluice.domain.exchange import EXCHANGE_INVENTORY
from sluice.domain.journal import AccountRef
from sluice.services.books import check_invariant
from sluice.store import tables
from sluice.store.events_tables import event_outbox
from sluice.store.exchange_tables import exchange_quotes, exchange_swaps
from tests.e2e.demo_support import small_demo, small_plan

STEPS = 15
DEPOSITS = 12


@dataclass
class Told:
    story: ExchangeStory
    report: str
    exchange: Exchange
    data: Path

    def rows(self, statement: sa.Select[tuple[object, ...]]) -> list[sa.Row[tuple[object, ...]]]:
        with self.exchange.database.engine.connect() as connection:
            return list(connection.execute(statement))


@pytest.fixture(scope="module")
def told(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Told]:
    data = tmp_path_factory.mktemp("demo") / "data"
    small = small_plan(DEPOSITS)
    ledger, exchange = small_demo(data, small)
    database = exchange.database
    status = lambda _message: nullcontext()  # noqa: E731
    bitcoin.CHAPTER.run(exchange, status)
    issuance.CHAPTER.run(exchange, status)
    story = exchange_chapter.CHAPTER.run(exchange, status)
    output = io.StringIO()
    console = Console(file=output, width=600, color_system=None)  # no row wraps
    ok = exchange_chapter.CHAPTER.show(console, story, Sections())
    assert ok, output.getvalue()
    yield Told(story, output.getvalue(), exchange, data)
    database.dispose()
    ledger.close()


def test_every_step_holds_and_is_reported(told: Told) -> None:
    assert [step.ok for step in told.story.steps] == [True] * STEPS
    for step in told.story.steps:
        assert step.what in told.report
    assert "refused: 80 oracle_offline" in told.report
    assert "refused: 81 quote_expired" in told.report
    assert "refused: 82 slippage_exceeded" in told.report
    assert "1. The exchange: iSTSi for Canton Coin at oracle prices" in told.report


def test_the_health_went_degraded_then_offline_then_back(told: Told) -> None:
    assert [health for _when, health, _cc in told.story.health] == [
        "healthy",
        "degraded",
        "offline",
        "healthy",
    ]
    assert told.story.rejections.get("stale", 0) >= 2
    config = (told.data / "exchange.toml").read_text()
    assert 'oracle_pair = "ISTSI/CC"' in config and 'kind = "crossed"' in config


def test_the_inventory_was_funded_once_under_two_approvals(told: Told) -> None:
    approvals = told.rows(
        sa.select(tables.approvals).where(tables.approvals.c.operation == OPERATION)
    )
    assert len(approvals) == 1 and approvals[0].status == "executed"
    funded = told.rows(
        sa.select(tables.suspense_assignments).where(
            tables.suspense_assignments.c.customer_id == EXCHANGE_INVENTORY
        )
    )
    assert [(row.amount, row.approval_id) for row in funded] == [(FUNDING, approvals[0].id)]
    senders = {str(row.sender) for row in _suspense_senders(told)}
    assert senders and all(sender.startswith(f"{DESK}::") for sender in senders)


def _suspense_senders(told: Told) -> list[sa.Row[tuple[object, ...]]]:
    entries = tables.history_entries
    return told.rows(sa.select(entries.c.sender).where(entries.c.update_id == _funded_update(told)))


def _funded_update(told: Told) -> str:
    (row,) = told.rows(
        sa.select(tables.suspense_assignments.c.update_id).where(
            tables.suspense_assignments.c.customer_id == EXCHANGE_INVENTORY
        )
    )
    return str(row.update_id)


def test_two_swaps_each_booked_audited_and_emitted_once(told: Told) -> None:
    swaps = told.rows(sa.select(exchange_swaps))
    assert sorted(row.customer_id for row in swaps) == sorted([ALICE.id, BOB.id])
    alice = next(row for row in swaps if row.customer_id == ALICE.id)
    assert Decimal(alice.sell_amount) == SALE
    quotes = told.rows(sa.select(exchange_quotes))
    # Alice's; Bob's on the fallback, the one the price moved past, the fresh one (the quote
    # asked while offline was refused and stored nothing).
    assert len(quotes) == 4
    transactions = told.rows(
        sa.select(tables.journal_transactions.c.id).where(
            tables.journal_transactions.c.id.like("swap:%")
        )
    )
    assert sorted(row.id for row in transactions) == sorted(f"swap:{row.quote_id}" for row in swaps)
    events = told.rows(
        sa.select(event_outbox.c.payload).where(event_outbox.c.type == "swap_executed")
    )
    assert sorted(json.loads(row.payload)["quote_id"] for row in events) == sorted(
        row.quote_id for row in swaps
    )
    audit = told.rows(
        sa.select(tables.audit_records.c.operation_id).where(
            tables.audit_records.c.operation == "swap_executed"
        )
    )
    assert sorted(row.operation_id for row in audit) == sorted(row.id for row in transactions)


def test_the_books_balance_with_the_inventory(told: Told) -> None:
    result = check_invariant(told.exchange.database.uow)
    assert result.holds, result.problems
    coin = told.exchange.world.coin
    with told.exchange.database.uow() as uow:
        inventory = uow.withdrawals.balance(AccountRef(EXCHANGE_INVENTORY, coin))
    swaps = told.rows(sa.select(exchange_swaps.c.gross))
    assert inventory == FUNDING - sum(Decimal(row.gross) for row in swaps)
