"""Quotes and swaps of the cross-token exchange (issue 19, point 3) on the Integration DB, on
SQLite and PostgreSQL: what a quote carries (rate, the fee on the oracle and on the fallback,
price impact, minimum received, expiry); a swap is one journal transaction that keeps the books'
invariant, audited, with its event; executing a quote again returns the first swap; refusals
(expired, price moved past the minimum, KYC daily and monthly limits with the 80 % warning,
inventory, oracle offline) move nothing; a crash before the commit leaves no half swap; and
concurrent swaps on PostgreSQL never exceed the balance, the limits or the inventory.

How: the oracle service runs for real over a stub :class:`PriceReader` whose readings a test
sets; customers and instruments are registered through the reference services; balances and
the exchange's inventory are seeded as the books would have them after deposits (a journal
transaction from the treasury and the treasury's holding on the ledger), so ``check_invariant``
holds from the start and is checked after every scenario.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from itertools import count
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

import sluice.services.exchange as exchange_service
from sluice.domain.amounts import QUANTUM
from sluice.domain.compliance import LimitLadder, TierLimits
from sluice.domain.errors import (
    ExchangePairNotConfiguredError,
    InsufficientBalanceError,
    InsufficientInventoryError,
    InsufficientKycTierError,
    InvalidAmountError,
    NotFoundError,
    OracleOfflineError,
    QuoteExpiredError,
    SlippageExceededError,
)
from sluice.domain.exchange import (
    EXCHANGE_INVENTORY,
    DepthCurve,
    DepthPoint,
    ExchangeSettings,
)
from sluice.domain.journal import (
    AccountRef,
    customer_account_name,
)
from sluice.domain.ledger import InstrumentId
from sluice.domain.oracle import FeedSpec, Observation, Reading, Rejection, SourceSpec
from sluice.services.books import check_invariant
from sluice.services.compliance import ComplianceSettings, KycRegistry
from sluice.services.exchange import (
    ExchangeContext,
    execute_swap,
    get_quote,
    list_swaps,
    request_quote,
)
from sluice.services.oracle import OracleService
from sluice.services.reference import onboard_instrument, register_customer
from sluice.store import tables
from sluice.store.database import open_database
from sluice.store.events_tables import event_outbox
from sluice.store.exchange_tables import exchange_quotes, exchange_swaps
from sluice.store.unit_of_work import SqlUnitOfWork
from tests.ledger_holdings import seed_owed
from tests.schema_check import schema_differences

D = Decimal
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
TREASURY = "treasury::1220aa"
ISTSI = InstrumentId("istsi-admin::1220bb", "ISTSI")
AMULET = InstrumentId("dso::1220cc", "Amulet")
PAIR = "ISTSI/AMULET"
LIMITS = TierLimits(None, D(1000), D(2000))  # tier 1's exchange limits here (reference units)


@dataclass
class StubReader:
    """Readings by source location (``primary``, ``secondary``), as the test sets them."""

    readings: dict[str, Reading] = field(default_factory=dict)

    def read(self, source: SourceSpec) -> Reading:
        return self.readings[source.location]


def source(location: str) -> SourceSpec:
    return SourceSpec("file", location, "/p", "/t", "/r", 8, 600)


@dataclass
class Exchange:
    engine: Engine
    reader: StubReader
    clock: list[datetime]
    ctx: ExchangeContext
    holdings: count[int] = field(default_factory=lambda: count(1))

    def uow(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine)

    def price(self, price: str, *, secondary: str | None = None, round_id: int = 7) -> None:
        at = self.clock[0]
        self.reader.readings["primary"] = Observation(D(price), at, round_id)
        self.reader.readings["secondary"] = Observation(D(secondary or price), at)

    def seed(self, account: str, instrument: InstrumentId, amount: str) -> None:
        """Books ``amount`` owed to ``account``, held by the treasury (as after a deposit)."""
        seed_owed(
            self.engine,
            next(self.holdings),
            treasury=TREASURY,
            account=account,
            instrument=instrument,
            amount=amount,
        )

    def balance(self, account: str, instrument: InstrumentId) -> Decimal:
        with self.uow() as uow:
            return uow.withdrawals.balance(AccountRef(account, instrument))

    def books(self) -> dict[str, Decimal]:
        """Every non-treasury balance, by ``account|instrument id``."""
        with self.uow() as uow:
            balances = uow.books.balances()
        return {
            f"{account.name}|{account.instrument.id}": value
            for account, value in balances.items()
            if account.side == "liability"
        }

    def count_rows(self, table: sa.Table, **where: Any) -> int:
        statement = sa.select(sa.func.count()).select_from(table)
        for column, value in where.items():
            statement = statement.where(table.c[column] == value)
        with self.engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    def refusals(self, quote_id: str) -> list[str]:
        """The codes of the quote's ``swap_refused`` audit records, oldest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(tables.audit_records.c.error)
                .where(
                    tables.audit_records.c.operation_id == f"swap:{quote_id}",
                    tables.audit_records.c.operation == "swap_refused",
                )
                .order_by(tables.audit_records.c.seq)
            ).all()
        return [row.error.split(":")[0] for row in rows]

    def invariant(self) -> list[str]:
        return check_invariant(self.uow).problems


def settings(**overrides: Any) -> ExchangeSettings:
    values: dict[str, Any] = {
        "pairs": (("ISTSI", "Amulet", PAIR),),
        "depth_curve": DepthCurve(
            (DepthPoint(D(1000), D("0.001")), DepthPoint(D(5000), D("0.02")))
        ),
    }
    return ExchangeSettings(**{**values, **overrides})


@pytest.fixture
def exchange(database_url: str) -> Iterator[Exchange]:
    yield from _deployed(database_url)


@pytest.fixture
def pg_exchange(postgres_url: str) -> Iterator[Exchange]:
    """The same exchange on PostgreSQL only (row locks under concurrent swaps)."""
    yield from _deployed(postgres_url)


def _deployed(database_url: str) -> Iterator[Exchange]:
    engine = open_database(database_url)
    clock = [NOW]
    reader = StubReader()
    oracle = OracleService(
        lambda: SqlUnitOfWork(engine),
        reader,
        {PAIR: FeedSpec(PAIR, "file", 8, source("primary"), source("secondary"))},
        clock=lambda: clock[0],
    )
    registry = KycRegistry(
        ComplianceSettings(ladder=LimitLadder.default().with_override(1, "exchange", LIMITS))
    )
    ctx = ExchangeContext(
        lambda: SqlUnitOfWork(engine), lambda: clock[0], oracle, registry, settings()
    )
    deployed = Exchange(engine, reader, clock, ctx)
    factory = deployed.uow
    for instrument in (ISTSI, AMULET):
        onboard_instrument(factory, instrument, at=NOW)
    for customer, tier in (("alice", 1), ("bob", 1), ("carol", 2)):
        register_customer(factory, customer, customer.title(), [], tier=tier, at=NOW)
    deployed.seed(customer_account_name("alice"), ISTSI, "5000")
    deployed.seed(customer_account_name("bob"), AMULET, "1000")
    deployed.seed(customer_account_name("carol"), ISTSI, "4000")
    deployed.seed(customer_account_name("carol"), AMULET, "10000")
    deployed.seed(EXCHANGE_INVENTORY, AMULET, "20000")
    deployed.seed(EXCHANGE_INVENTORY, ISTSI, "3000")
    deployed.price("4")
    try:
        yield deployed
    finally:
        engine.dispose()


def expected(sell: str, rate: str, impact: str, fee_rate: str) -> tuple[Decimal, Decimal, Decimal]:
    """gross, fee, received — computed apart from the service, as docs/exchange.md states."""
    gross = (D(sell) * D(rate) * (1 - D(impact))).quantize(QUANTUM, rounding=ROUND_DOWN)
    fee = (gross * D(fee_rate)).quantize(QUANTUM, rounding=ROUND_UP)
    return gross, fee, gross - fee


def quote_alice(exchange: Exchange, amount: str = "100", **kwargs: Any) -> Any:
    return request_quote(
        exchange.ctx, customer_id="alice", sell=ISTSI, buy=AMULET, sell_amount=amount, **kwargs
    )


# --- quotes ---------------------------------------------------------------------------------------


def test_a_quote_carries_rate_fee_impact_minimum_and_expiry(exchange: Exchange) -> None:
    quote = quote_alice(exchange, "100")
    gross, fee, received = expected("100", "4", "0.0001", "0.003")
    assert (quote.rate, quote.price_impact) == (D(4), D("0.0001"))
    assert (quote.fee_rate, quote.fee_kind, quote.fee_amount) == (D("0.003"), "oracle", fee)
    assert (quote.gross, quote.received) == (gross, received)
    assert quote.minimum_received == (received * D("0.995")).quantize(QUANTUM, ROUND_DOWN)
    assert (quote.oracle_pair, quote.oracle_source, quote.oracle_health) == (
        PAIR,
        "primary",
        "healthy",
    )
    assert quote.oracle_round == 7
    assert (quote.created_at, quote.expires_at) == (NOW, NOW + timedelta(seconds=30))
    assert get_quote(exchange.ctx, quote.id) == quote  # stored, read back exactly

    # A large sale moves along the depth curve: 3000 is half-way from 1000 to 5000.
    large = quote_alice(exchange, "3000")
    assert large.price_impact == D("0.0105")
    assert large.received == expected("3000", "4", "0.0105", "0.003")[2]

    # The primary fails: the fallback's price at the fallback fee.
    exchange.reader.readings["primary"] = Rejection("unreachable", "refused")
    fallback = quote_alice(exchange, "100", slippage=D("0.01"))
    assert (fallback.fee_kind, fallback.fee_rate, fallback.oracle_source) == (
        "fallback",
        D("0.005"),
        "secondary",
    )
    assert fallback.oracle_health == "degraded"
    assert fallback.received == expected("100", "4", "0.0001", "0.005")[2]
    assert fallback.minimum_received == (fallback.received * D("0.99")).quantize(
        QUANTUM, ROUND_DOWN
    )

    # The other direction is priced by the same feed, inverted (rounded down).
    exchange.price("4")
    reverse = request_quote(
        exchange.ctx, customer_id="bob", sell=AMULET, buy=ISTSI, sell_amount="100"
    )
    assert reverse.rate == D("0.25")
    assert reverse.received == expected("100", "0.25", "0.0001", "0.003")[2]


def test_a_quote_of_a_pair_not_configured_or_an_unknown_customer_is_refused(
    exchange: Exchange,
) -> None:
    other = InstrumentId("dso::1220cc", "Other")
    with pytest.raises(ExchangePairNotConfiguredError) as refused:
        request_quote(exchange.ctx, customer_id="alice", sell=ISTSI, buy=other, sell_amount="1")
    assert refused.value.code == 84
    with pytest.raises(NotFoundError):
        request_quote(exchange.ctx, customer_id="dave", sell=ISTSI, buy=AMULET, sell_amount="1")
    assert exchange.count_rows(exchange_quotes) == 0


# --- swaps ----------------------------------------------------------------------------------------


def test_a_swap_books_one_journal_transaction_keeps_the_books_and_is_audited(
    exchange: Exchange,
) -> None:
    assert exchange.invariant() == []
    before = exchange.books()
    quote = quote_alice(exchange, "100")
    swap = execute_swap(exchange.ctx, quote.id, customer_id="alice", actor="alice")
    gross, fee, received = expected("100", "4", "0.0001", "0.003")
    assert (swap.received, swap.fee_amount, swap.gross) == (received, fee, gross)
    assert swap.journal_transaction_id == f"swap:{quote.id}"
    assert swap.warnings == ()

    after = exchange.books()
    moved = {key: after.get(key, D(0)) - before.get(key, D(0)) for key in after}
    assert {key: value for key, value in moved.items() if value} == {
        "customer:alice|ISTSI": D(-100),
        "exchange_inventory|ISTSI": D(100),
        "customer:alice|Amulet": received,
        "exchange_inventory|Amulet": -gross,
        "fees|Amulet": fee,
    }
    assert exchange.invariant() == []
    with exchange.engine.connect() as connection:
        journal = connection.execute(
            sa.select(tables.journal_transactions.c.id, tables.journal_transactions.c.kind).where(
                tables.journal_transactions.c.kind == "exchange_swap"
            )
        ).all()
        postings = connection.execute(
            sa.select(sa.func.count())
            .select_from(tables.journal_postings)
            .where(tables.journal_postings.c.transaction_id == swap.journal_transaction_id)
        ).scalar_one()
        audit = connection.execute(
            sa.select(tables.audit_records.c.operation).where(
                tables.audit_records.c.operation_id == swap.journal_transaction_id
            )
        ).all()
        events = connection.execute(
            sa.select(event_outbox.c.payload).where(event_outbox.c.type == "swap_executed")
        ).all()
    assert [(row.id, row.kind) for row in journal] == [
        (swap.journal_transaction_id, "exchange_swap")
    ]
    assert postings == 5
    assert sorted(row.operation for row in audit) == ["compliance_check:exchange", "swap_executed"]
    assert len(events) == 1
    payload = json.loads(events[0].payload)
    assert (payload["quote_id"], payload["received"]) == (quote.id, f"{received:.10f}")
    assert list_swaps(exchange.ctx, "alice") == [swap]


def test_executing_a_quote_again_returns_the_first_swap(exchange: Exchange) -> None:
    quote = quote_alice(exchange, "100")
    first = execute_swap(exchange.ctx, quote.id, customer_id="alice", actor="alice")
    exchange.clock[0] = NOW + timedelta(hours=1)  # expired, and the price moved: still the same
    exchange.price("3")
    again = execute_swap(exchange.ctx, quote.id, customer_id="alice", actor="alice")
    assert again == first
    assert exchange.count_rows(exchange_swaps) == 1
    assert exchange.balance(customer_account_name("alice"), ISTSI) == D(4900)
    with pytest.raises(NotFoundError):  # another customer's quote is not theirs to execute
        execute_swap(exchange.ctx, quote.id, customer_id="bob", actor="bob")


def test_an_expired_quote_is_refused(exchange: Exchange) -> None:
    quote = quote_alice(exchange, "100")
    exchange.clock[0] = NOW + timedelta(seconds=30)
    exchange.price("4")
    before = exchange.books()
    with pytest.raises(QuoteExpiredError) as refused:
        execute_swap(exchange.ctx, quote.id, customer_id="alice", actor="alice")
    assert refused.value.code == 81
    assert exchange.books() == before
    assert exchange.refusals(quote.id) == ["81"]
    assert exchange.count_rows(exchange_swaps) == 0


def test_a_price_that_moved_past_the_minimum_received_is_refused(exchange: Exchange) -> None:
    quote = quote_alice(exchange, "100")
    exchange.price("3.96")  # -1 %: under the quote's 0.5 % tolerance
    before = exchange.books()
    with pytest.raises(SlippageExceededError) as refused:
        execute_swap(exchange.ctx, quote.id, customer_id="alice", actor="alice")
    assert refused.value.code == 82
    assert D(refused.value.received) < quote.minimum_received
    # Within the quote's tolerance, but under the caller's own minimum.
    exchange.price("3.99")
    with pytest.raises(SlippageExceededError):
        execute_swap(
            exchange.ctx,
            quote.id,
            customer_id="alice",
            actor="alice",
            min_received=quote.received,
        )
    assert exchange.books() == before
    assert exchange.refusals(quote.id) == ["82", "82"]
    # A price within both: executed at the price of the execution.
    swap = execute_swap(exchange.ctx, quote.id, customer_id="alice", actor="alice")
    assert swap.rate == D("3.99")
    assert swap.received == expected("100", "3.99", "0.0001", "0.003")[2]
    assert swap.minimum_received == quote.minimum_received


def test_kyc_exchange_limits_refuse_and_warn_at_80_percent(exchange: Exchange) -> None:
    """Tier 1 may swap 1000 a day and 2000 in 30 days (reference units; ISTSI counts 1)."""
    first = execute_swap(
        exchange.ctx, quote_alice(exchange, "850").id, customer_id="alice", actor="alice"
    )
    assert first.warnings == ("daily 85 %",)
    with pytest.raises(InsufficientKycTierError) as refused:
        execute_swap(
            exchange.ctx, quote_alice(exchange, "200").id, customer_id="alice", actor="alice"
        )
    assert refused.value.code == 21
    assert exchange.balance(customer_account_name("alice"), ISTSI) == D(4150)

    exchange.clock[0] = NOW + timedelta(days=1, minutes=1)  # a new day, the same month
    exchange.price("4")
    second = execute_swap(
        exchange.ctx, quote_alice(exchange, "900").id, customer_id="alice", actor="alice"
    )
    assert second.warnings == ("daily 90 %", "monthly 87 %")
    exchange.clock[0] = NOW + timedelta(days=2, minutes=2)  # the daily limit is free again
    exchange.price("4")
    with pytest.raises(InsufficientKycTierError) as monthly:
        execute_swap(
            exchange.ctx, quote_alice(exchange, "300").id, customer_id="alice", actor="alice"
        )
    assert "monthly" in str(monthly.value)
    assert exchange.count_rows(exchange_swaps) == 2
    with exchange.engine.connect() as connection:
        audited = connection.execute(
            sa.select(tables.audit_records.c.operation, tables.audit_records.c.parameters).where(
                tables.audit_records.c.operation == "swap_executed"
            )
        ).all()
    assert len(audited) == 2
    assert "monthly 87 %" in str(audited[-1].parameters)
    assert exchange.invariant() == []


def test_the_exchange_inventory_bounds_a_swap(exchange: Exchange) -> None:
    """Carol (tier 2) sells Amulet for ISTSI; the exchange holds 3000 ISTSI of its own, and
    keeps half of it back here."""
    exchange.ctx = replace(exchange.ctx, settings=settings(inventory_reserve_ratio=D("0.5")))
    quote = request_quote(
        exchange.ctx, customer_id="carol", sell=AMULET, buy=ISTSI, sell_amount="6200"
    )
    assert quote.gross > D(1500)
    before = exchange.books()
    with pytest.raises(InsufficientInventoryError) as refused:
        execute_swap(exchange.ctx, quote.id, customer_id="carol", actor="carol")
    assert refused.value.code == 83
    assert exchange.books() == before
    assert exchange.refusals(quote.id) == ["83"]
    within = request_quote(
        exchange.ctx, customer_id="carol", sell=AMULET, buy=ISTSI, sell_amount="5800"
    )
    assert within.gross <= D(1500)
    execute_swap(exchange.ctx, within.id, customer_id="carol", actor="carol")
    assert exchange.balance(EXCHANGE_INVENTORY, ISTSI) == D(3000) - within.gross
    assert exchange.invariant() == []


def test_a_customer_cannot_swap_more_than_their_balance(exchange: Exchange) -> None:
    quote = request_quote(
        exchange.ctx, customer_id="carol", sell=ISTSI, buy=AMULET, sell_amount="4000.0000000001"
    )
    with pytest.raises(InsufficientBalanceError) as refused:
        execute_swap(exchange.ctx, quote.id, customer_id="carol", actor="carol")
    assert refused.value.code == 62
    assert exchange.refusals(quote.id) == ["62"]
    assert exchange.balance(customer_account_name("carol"), ISTSI) == D(4000)
    assert exchange.count_rows(exchange_swaps) == 0


def test_an_oracle_offline_refuses_quotes_and_swaps(exchange: Exchange) -> None:
    quote = quote_alice(exchange, "100")
    exchange.reader.readings["primary"] = Rejection("unreachable", "refused")
    exchange.reader.readings["secondary"] = Rejection("malformed", "not JSON")
    with pytest.raises(OracleOfflineError) as refused:
        execute_swap(exchange.ctx, quote.id, customer_id="alice", actor="alice")
    assert refused.value.code == 80
    assert exchange.refusals(quote.id) == ["80"]
    with pytest.raises(OracleOfflineError):
        quote_alice(exchange, "100")
    assert exchange.count_rows(exchange_swaps) == 0
    assert exchange.balance(customer_account_name("alice"), ISTSI) == D(5000)


def test_a_crash_mid_swap_leaves_no_half_swap(
    exchange: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies after the journal transaction, the swap row, the usage and the audit
    record were written and before the commit: none of them is left."""
    quote = quote_alice(exchange, "100")
    before = exchange.books()

    def crash(*_args: object) -> None:
        raise RuntimeError("killed before the commit")

    with monkeypatch.context() as patched:
        patched.setattr(exchange_service, "emit_all", crash)
        with pytest.raises(RuntimeError, match="killed"):
            execute_swap(exchange.ctx, quote.id, customer_id="alice", actor="alice")
    assert exchange.books() == before
    assert exchange.count_rows(exchange_swaps) == 0
    assert exchange.count_rows(tables.journal_transactions, kind="exchange_swap") == 0
    assert exchange.count_rows(tables.audit_records, operation_id=f"swap:{quote.id}") == 0
    assert exchange.invariant() == []
    # The quote is whole: executed again, it books once.
    swap = execute_swap(exchange.ctx, quote.id, customer_id="alice", actor="alice")
    assert exchange.balance(customer_account_name("alice"), AMULET) == swap.received


@pytest.mark.postgres
def test_concurrent_swaps_never_exceed_balance_limits_or_inventory(pg_exchange: Exchange) -> None:
    """Threads swap ISTSI for Amulet at once: alice's ten sales of 150 are bound by her daily
    limit (1000), carol's eight of 900 by her balance (4000), and all of them by the exchange's
    Amulet inventory (20000, of which a swap may take at most a fifth of what is left here:
    3596 Amulet for 900 ISTSI fits once at most). Whatever the interleaving, no bound is passed,
    and carol's swaps are refused for the inventory."""
    exchange = pg_exchange  # row locks are PostgreSQL's; SQLite has one writer
    exchange.ctx = replace(exchange.ctx, settings=settings(inventory_reserve_ratio=D("0.8")))
    quotes = [("alice", quote_alice(exchange, "150").id) for _ in range(10)]
    quotes += [
        (
            "carol",
            request_quote(
                exchange.ctx, customer_id="carol", sell=ISTSI, buy=AMULET, sell_amount="900"
            ).id,
        )
        for _ in range(8)
    ]
    done: list[Any] = []
    refused: list[int] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(len(quotes))

    def run(customer: str, quote_id: str) -> None:
        start.wait()
        try:
            swap = execute_swap(exchange.ctx, quote_id, customer_id=customer, actor=customer)
        except (
            InsufficientKycTierError,
            InsufficientInventoryError,
            InsufficientBalanceError,
        ) as exc:
            with lock:
                refused.append(exc.code)
            return
        except BaseException as exc:
            with lock:
                failures.append(exc)
            return
        with lock:
            done.append(swap)

    threads = [threading.Thread(target=run, args=item) for item in quotes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    assert len(done) + len(refused) == len(quotes)
    assert 83 in refused
    sold = {
        customer: sum((s.sell_amount for s in done if s.customer_id == customer), D(0))
        for customer in ("alice", "carol")
    }
    assert sold["alice"] == 900  # six of ten: a seventh would pass the daily 1000
    assert sold["carol"] <= 900
    taken = sum((swap.gross for swap in done), D(0))
    assert taken <= D(20000)
    assert exchange.balance(EXCHANGE_INVENTORY, AMULET) == D(20000) - taken
    assert exchange.balance(customer_account_name("alice"), ISTSI) == D(5000) - sold["alice"]
    assert exchange.balance(customer_account_name("carol"), ISTSI) == D(4000) - sold["carol"]
    assert exchange.count_rows(exchange_swaps) == len(done)
    assert exchange.invariant() == []


def test_concurrent_executes_of_one_quote_book_it_once(exchange: Exchange) -> None:
    """Six threads execute one quote at once: one swap, the same for all (PostgreSQL's row
    locks; SQLite's one writer, each transaction begun IMMEDIATE)."""
    quote = quote_alice(exchange, "100")
    results: list[Any] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(6)

    def run() -> None:
        start.wait()
        try:
            swap = execute_swap(exchange.ctx, quote.id, customer_id="alice", actor="alice")
        except BaseException as exc:
            with lock:
                failures.append(exc)
            return
        with lock:
            results.append(swap)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert len(results) == 6
    assert all(result == results[0] for result in results)
    assert exchange.count_rows(exchange_swaps) == 1
    assert exchange.count_rows(tables.journal_transactions, kind="exchange_swap") == 1
    assert exchange.balance(customer_account_name("alice"), ISTSI) == D(4900)
    assert exchange.invariant() == []


def test_migration_0013_creates_the_exchange_tables_as_declared(database_url: str) -> None:
    assert schema_differences(database_url, "exchange") == []


def test_what_is_bought_of_istsi_is_whole_satoshis_and_istsi_sold_too(exchange: Exchange) -> None:
    """iSTSi counts in satoshis (8 places): a swap buying it books whole satoshis — gross,
    fee and received, rounded against the buyer — so the reserves and the proof of reserves
    can count the books; selling a fraction of a satoshi is refused (61) and stores nothing."""
    istsi = InstrumentId("issuer::1220dd", "iSTSi")
    onboard_instrument(exchange.uow, istsi, at=NOW)
    exchange.seed(EXCHANGE_INVENTORY, istsi, "10")
    exchange.ctx = replace(exchange.ctx, settings=settings(pairs=(("Amulet", "iSTSi", PAIR),)))
    exchange.price("0.0000123457")  # iSTSi per Amulet
    quote = request_quote(
        exchange.ctx, customer_id="bob", sell=AMULET, buy=istsi, sell_amount="12.3457"
    )
    eight = D("0.00000001")
    for amount in (quote.gross, quote.fee_amount, quote.received, quote.minimum_received):
        assert amount == amount.quantize(eight), amount
    assert quote.gross == (D("12.3457") * D("0.0000123457")).quantize(eight, rounding=ROUND_DOWN)
    swap = execute_swap(exchange.ctx, quote.id, customer_id="bob", actor="bob")
    bought = exchange.balance(customer_account_name("bob"), istsi)
    assert bought == swap.received and bought == bought.quantize(eight)
    assert exchange.balance(EXCHANGE_INVENTORY, istsi) == D(10) - swap.gross
    assert exchange.invariant() == []

    before = exchange.count_rows(exchange_quotes)
    with pytest.raises(InvalidAmountError) as finer:
        request_quote(
            exchange.ctx, customer_id="bob", sell=istsi, buy=AMULET, sell_amount="0.000000001"
        )
    assert finer.value.code == 61 and "smallest unit is 0.00000001" in str(finer.value)
    assert exchange.count_rows(exchange_quotes) == before
