"""The reserve manager on SQLite and PostgreSQL: iSTSi's figures from mint records and custody
outputs (read at the watcher's block), every token's from the journal (read at ingestion's
offset), the ratio at, below and above 100 % and with nothing owed, the history of readings, and
threshold alerts raised once per crossing (again only after a recovery and a new crossing).

The world is written through the repositories, as the watcher, the router and ingestion write
it; a token whose books are broken is made by changing its cached balance in the table."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.domain.errors import InvalidInputError, NotFoundError
from sluice.domain.journal import (
    COMPLIANCE_HOLD,
    FEES,
    IN_FLIGHT,
    SUSPENSE,
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
    treasury_account_name,
)
from sluice.domain.ledger import Cursor, InstrumentId
from sluice.ports.bitcoin_watch import FoundOutput, WatchedBlock
from sluice.ports.issuance import GuardFigures, MintRecord, sats_to_amount
from sluice.ports.reserves import ReadPoint
from sluice.services.reserves import (
    ALERT_KIND,
    default_connection,
    get_reserve_ratio,
    istsi_reading,
    ratio_level,
    reading_history,
    reading_json,
    record,
    record_readings,
    report_in,
    report_json,
    reserve_report,
    resolve_instrument,
)
from sluice.services.reserves_settings import ReservesContext, ReservesSettings
from sluice.store import tables
from sluice.store.database import migrate

WHEN = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
TREASURY = "treasury::1220" + "cc" * 4
ISTSI = InstrumentId("issuer::1220" + "aa" * 4, "iSTSi")
AMULET = InstrumentId("dso::1220" + "bb" * 4, "Amulet")
CONNECTION = default_connection(TREASURY)


class Clock:
    def __init__(self) -> None:
        self.now = WHEN

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@dataclass
class World:
    db: bootstrap.Database
    ctx: ReservesContext
    blocks: int = 0
    outputs: int = 0
    mints: int = 0
    postings: int = 0

    # -- iSTSi: the router's mint records, the watcher's blocks and outputs ------------------------

    def mint(self, sats: int, status: str = "submitted") -> None:
        self.mints += 1
        with self.db.uow() as uow:
            assert uow.issuance.insert_mint(
                MintRecord(
                    id=f"issuance:op{self.mints}:mint",
                    operation_id=f"op{self.mints}",
                    customer_id="alice",
                    owner=TREASURY,
                    amount_sats=sats,
                    reason=f"issuance:op{self.mints}",
                    status=status,  # type: ignore[arg-type]
                    created_at=WHEN,
                )
            )
            uow.commit()

    def block_hash(self, height: int) -> str:
        return f"{0xB0000 + height:064x}"

    def custody(self, sats: int, *, confirm: bool = True) -> None:
        """A block with one deposit of ``sats`` to custody, confirmed unless told not to."""
        self.blocks += 1
        self.outputs += 1
        height, at = self.blocks, self.ctx.clock()
        previous = self.block_hash(height - 1) if height > 1 else None
        with self.db.uow() as uow:
            assert uow.btc_watch.claim_block(
                WatchedBlock(height, self.block_hash(height), previous), at
            )
            found = FoundOutput(
                txid=f"{0x7000 + self.outputs:064x}",
                vout=0,
                kind="deposit",
                address="bcrt1qcustody",
                script_hex="0014" + "11" * 20,
                customer_id="alice",
                amount_sats=sats,
                status="seen",
            )
            uow.btc_watch.record_outputs([found], height, self.block_hash(height), at)
            if confirm:
                uow.btc_watch.confirm(height, at)
            uow.commit()

    # -- tokens: ingestion's journal and cursor ----------------------------------------------------

    def post(self, instrument: InstrumentId, liability: str, amount: str) -> None:
        """The treasury's holdings grow by ``amount``, owed to ``liability``."""
        self.postings += 1
        value = Decimal(amount)
        treasury = AccountRef(treasury_account_name(TREASURY), instrument)
        with self.db.uow() as uow:
            uow.withdrawals.post(
                [
                    JournalTransaction(
                        id=f"test:{self.postings}",
                        kind="deposit",
                        postings=(
                            Posting(treasury, value),
                            Posting(AccountRef(liability, instrument), -value),
                        ),
                    )
                ]
            )
            uow.commit()

    def ingested_to(self, offset: int) -> None:
        with self.db.uow() as uow:
            uow.ingestion.set_cursor(CONNECTION, TREASURY, Cursor(offset, None, None, None))
            uow.commit()

    def break_balance(self, name: str, instrument: InstrumentId, balance: str) -> None:
        """Set a cached balance behind the journal's back (books that no longer balance)."""
        with self.db.engine.begin() as c:
            c.execute(
                sa.update(tables.accounts)
                .where(tables.accounts.c.id == AccountRef(name, instrument).id)
                .values(balance=Decimal(balance))
            )

    def alerts(self) -> list[str]:
        with self.db.uow() as uow:
            return sorted(a.id for a in uow.books.alerts() if a.kind == ALERT_KIND)


@pytest.fixture
def world(database_url: str, tmp_path: Path) -> Iterator[World]:
    db = bootstrap.database(database_url)
    migrate(db.engine)
    ctx = ReservesContext(
        uow=db.uow,
        clock=Clock(),
        treasury=TREASURY,
        secret_path=tmp_path / "por-secret",
        istsi=ISTSI,
    )
    yield World(db, ctx)
    db.dispose()


def test_istsi_backing_against_supply_at_exactly_below_and_above_full(world: World) -> None:
    world.mint(100_000)
    world.mint(50_000)
    world.mint(999_999, status="failed")  # never issued
    world.custody(150_000)
    world.custody(70_000, confirm=False)  # seen, not confirmed: no reserve yet
    report = reserve_report(world.ctx)
    istsi = report.istsi
    assert istsi is not None and istsi.instrument == ISTSI.key() and report.readings == (istsi,)
    assert (istsi.supply_units, istsi.reserves_units, istsi.ratio_bps) == (150_000, 150_000, 10000)
    assert istsi.read_at == {
        "supply": ReadPoint("db"),
        "reserves": ReadPoint("chain", height=2, block_hash=world.block_hash(2)),
    }
    assert istsi.figures["supply"] == "0.0015" and istsi.figures["custody"] == "0.0015"
    assert istsi.figures["pending_redemptions"] == "0" and istsi.figures["backing"] == "0.0015"
    assert get_reserve_ratio(world.ctx) == 10000

    # Above: the next block confirms the 70 000 too, so 235 000 back 150 000 (rounded down).
    world.custody(15_000)
    assert get_reserve_ratio(world.ctx) == 15666
    world.mint(100_000)  # below: 235 000 back 250 000
    assert get_reserve_ratio(world.ctx) == 9400
    document = report_json(reserve_report(world.ctx), world.ctx.settings)
    (row,) = document["instruments"]
    assert row["supply_units"] == "250000" and row["reserves_units"] == "235000"
    assert (row["supply"], row["reserves"], row["decimals"]) == ("0.0025", "0.00235", 8)
    assert (row["ratio_bps"], row["level"], row["kind"]) == (9400, "critical", "istsi")
    assert row["read_at"]["reserves"] == {
        "source": "chain",
        "height": 3,
        "block_hash": world.block_hash(3),
    }
    assert document["thresholds"] == {
        "warning_bps": 10100,
        "critical_bps": 10000,
        "full_bps": 10000,
    }


def test_pending_outflows_come_off_the_backing() -> None:
    guard = GuardFigures(supply=100, reserves=120, pending_redemptions=15, pending_payouts=5)
    reading = istsi_reading(ISTSI.key(), guard, {}, None, WHEN)
    assert (reading.supply_units, reading.reserves_units, reading.ratio_bps) == (100, 100, 10000)
    assert reading.figures["custody"] == "0.0000012"
    assert reading.figures["pending_redemptions"] == "0.00000015"
    assert reading.read_at["reserves"] == ReadPoint("chain")  # the watcher applied no block yet
    assert ratio_level(reading, ReservesSettings()) == "warning"  # under 101 %


def test_nothing_issued_has_no_ratio_and_no_istsi_no_row(world: World) -> None:
    istsi = reserve_report(world.ctx).istsi
    assert istsi is not None and (istsi.supply_units, istsi.ratio_bps) == (0, None)
    assert ratio_level(istsi, world.ctx.settings) == "ok"
    assert get_reserve_ratio(world.ctx) is None
    assert reserve_report(replace(world.ctx, istsi=None)).readings == ()


def test_istsi_is_found_among_the_onboarded_instruments_when_not_given(world: World) -> None:
    with world.db.uow() as uow:
        uow.reference.add_instrument(ISTSI, None, True, "direct,offer")
        uow.reference.add_instrument(AMULET, None, True, "direct")
        uow.commit()
    world.mint(1_000)
    world.post(ISTSI, customer_account_name("alice"), str(sats_to_amount(1_000)))
    report = reserve_report(replace(world.ctx, istsi=None))
    assert [(r.instrument, r.kind) for r in report.readings] == [(ISTSI.key(), "istsi")]
    istsi = report.readings[0]
    # The journal's iSTSi (8 decimals) is shown beside the custody figures, not as a token row.
    assert (istsi.figures["customers"], istsi.figures["treasury"]) == ("0.00001", "0.00001")


def test_token_liabilities_against_the_treasury_at_the_ingestion_offset(world: World) -> None:
    world.post(AMULET, customer_account_name("alice"), "10")
    world.post(AMULET, customer_account_name("bob"), "5.5")
    world.post(AMULET, SUSPENSE, "1")
    world.post(AMULET, COMPLIANCE_HOLD, "0.5")
    world.post(AMULET, IN_FLIGHT, "2")
    world.post(AMULET, FEES, "0.0000000001")
    world.ingested_to(42)
    amulet = reserve_report(world.ctx).of(AMULET.key())
    assert amulet is not None and amulet.kind == "token"
    owed = 190_000_000_001  # 19.0000000001 in units of 10⁻¹⁰
    assert (amulet.supply_units, amulet.reserves_units, amulet.ratio_bps) == (owed, owed, 10000)
    assert amulet.figures == {
        "customers": "15.5",
        "suspense": "1",
        "compliance_hold": "0.5",
        "in_flight": "2",
        "fees": "0.0000000001",
        "other": "0",
        "treasury": "19.0000000001",
    }
    point = ReadPoint("ledger", offset=42)
    assert amulet.read_at == {"supply": point, "reserves": point}
    assert ratio_level(amulet, world.ctx.settings) == "ok"  # 100 % is a token's normal

    world.break_balance(treasury_account_name(TREASURY), AMULET, "9.5")
    below = reserve_report(world.ctx).of(AMULET.key())
    assert below is not None and below.ratio_bps == 95_000_000_000 * 10000 // owed == 4999
    assert ratio_level(below, world.ctx.settings) == "critical"
    world.break_balance(treasury_account_name(TREASURY), AMULET, "38.0000000002")
    above = reserve_report(world.ctx).of(AMULET.key())
    assert above is not None and above.ratio_bps == 20000


def test_a_token_without_ingestion_has_no_offset(world: World) -> None:
    world.post(AMULET, customer_account_name("alice"), "1")
    amulet = reserve_report(world.ctx).of(AMULET.key())
    assert amulet is not None and amulet.read_at["supply"] == ReadPoint("ledger", offset=None)
    assert reading_json(amulet, world.ctx.settings)["read_at"]["supply"] == {
        "source": "ledger",
        "offset": None,
    }


def test_readings_are_kept_and_alerts_raised_once_per_crossing(world: World) -> None:
    world.mint(100_000)
    world.custody(100_000)  # exactly 100 %: under the 101 % warning threshold
    first = record(world.ctx)
    (reading,) = first.readings
    assert reading.id is not None and reading.ratio_bps == 10000
    assert [(a.severity, a.id) for a in first.alerts] == [
        ("warning", f"reserve-ratio:warning:0:{ISTSI.key()}")
    ]
    assert first.alerts[0].details["reading_id"] == str(reading.id)
    assert record(world.ctx).alerts == []  # still a warning: nothing new
    world.mint(10_000)  # 100 000 backing 110 000: critical
    critical = record(world.ctx)
    assert [a.severity for a in critical.alerts] == ["critical"]
    assert record_readings(world.ctx)[0].ratio_bps == 9090  # still critical: nothing new
    world.custody(20_000)  # 120 000 backing 110 000: recovered
    assert record(world.ctx).alerts == []
    world.mint(10_000)  # 120 000 backing 120 000: a warning again, a new crossing
    again = record(world.ctx)
    assert [a.severity for a in again.alerts] == ["warning"]
    assert len(world.alerts()) == 3

    history = reading_history(world.db.uow, ISTSI.key())
    assert [r.ratio_bps for r in history] == [10000, 10909, 9090, 9090, 10000, 10000]
    assert [r.ratio_bps for r in reading_history(world.db.uow, limit=2)] == [10000, 10909]
    since = history[1].taken_at
    assert len(reading_history(world.db.uow, since=since)) == 2
    assert reading_history(world.db.uow, AMULET.key()) == []
    with pytest.raises(InvalidInputError):
        reading_history(world.db.uow, limit=0)


def test_a_token_below_full_raises_a_critical_alert_once(world: World) -> None:
    world.post(AMULET, customer_account_name("alice"), "10")
    assert record(world.ctx).alerts == []  # iSTSi (nothing issued) and Amulet at 100 %
    world.break_balance(treasury_account_name(TREASURY), AMULET, "9")
    broken = record(world.ctx)
    assert [(a.severity, a.details["instrument"]) for a in broken.alerts] == [
        ("critical", AMULET.key())
    ]
    assert record(world.ctx).alerts == []
    assert world.alerts() == [a.id for a in broken.alerts]


def test_an_instrument_is_named_by_its_key_or_a_bare_id(world: World) -> None:
    world.post(AMULET, customer_account_name("alice"), "1")
    record_readings(world.ctx)
    assert resolve_instrument(world.db.uow, "Amulet") == AMULET.key()
    assert resolve_instrument(world.db.uow, "iSTSi") == ISTSI.key()
    assert resolve_instrument(world.db.uow, "x@y") == "x@y"
    with pytest.raises(NotFoundError):
        resolve_instrument(world.db.uow, "Unknown")
    other = InstrumentId("dso::1220" + "dd" * 4, "Amulet")
    world.post(other, customer_account_name("alice"), "1")
    record_readings(world.ctx)
    with pytest.raises(InvalidInputError, match="names 2 instruments"):
        resolve_instrument(world.db.uow, "Amulet")


class MovingCursor:
    """Ingestion's repository whose cursor reads answer the offsets given, one per read (as if
    ingestion committed batches between the report's statements)."""

    def __init__(self, real: Any, offsets: list[int]) -> None:
        self.real, self.offsets, self.reads = real, offsets, 0

    def load_cursor(self, connection: str) -> Cursor | None:
        offset = self.offsets[min(self.reads, len(self.offsets) - 1)]
        self.reads += 1
        return Cursor(offset, None, None, None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_figures_are_read_again_while_a_cursor_moves_under_them(world: World) -> None:
    world.post(AMULET, customer_account_name("alice"), "1")
    for offsets, expected, reads in (
        ([5, 5], 5, 2),
        ([5, 6, 6, 6], 6, 4),
        ([1, 2, 3, 4, 5, 6], 6, 6),
    ):
        with world.db.uow() as uow:
            moving = MovingCursor(uow.ingestion, offsets)
            uow.ingestion = moving
            report = report_in(uow, WHEN, istsi=ISTSI, connection=CONNECTION)
        amulet = report.of(AMULET.key())
        assert amulet is not None and amulet.read_at["supply"].offset == expected
        assert moving.reads == reads  # before and after each of at most three reads
