"""Ingestion books the issuer's own mints and burns of iSTSi, on SQLite and PostgreSQL.

Real parts: the Integration DB, the embedded ledger with iSTSi and its issuer
(:class:`EmbeddedIssuerLedger`, :func:`create_istsi`), :class:`Ingestion` reading the treasury's
updates from that ledger, and for the end-to-end tests the sandbox custody wallet, the in-memory
chain with the deposit watcher and the payouts worker, the KYC registry and the router with every
operation type. A mint whose reason is a mint record's is booked to the customer
(``issuance_mint``) and the record marked ``credited`` in the batch; a burn whose reason is a burn
record's is booked against ``in_flight`` (``issuance_burn``); the rest goes to suspense with an
alert (critical when a record is named but the booking cannot be right). The books' invariant
(``services/books.check_invariant``, what ``sluice check`` runs) is checked after each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.journal import (
    IN_FLIGHT,
    SUSPENSE,
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
    treasury_account_name,
)
from sluice.ports.issuance import BurnRecord, MintRecord, sats_to_amount
from sluice.services.balances import customer_balances
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.books import check_invariant
from sluice.services.btc_payouts import PayoutWorker, cancel_payout, get_payout
from sluice.services.compliance import KycRegistry
from sluice.services.ingestion import Ingestion, IngestionSettings
from sluice.services.issuance_deposit import mint_id
from sluice.services.issuance_operations import DEFINITIONS
from sluice.services.issuance_redeem import (
    burn_id_of,
    payout_id_of,
    remint_id_of,
    request_redemption,
)
from sluice.services.issuance_router import IssuanceRouter
from sluice.services.reference import onboard_instrument
from tests.integration.issuance_deposit_world import CHAIN, CONFIRMATIONS, World

SATS = 400_000
SETTINGS = BitcoinSettings(
    chain=CHAIN,
    confirmations_min=CONFIRMATIONS,
    payout_fee_max_sats=20_000,
    payout_batch_max=10,
    payout_batch_window_s=0,
)


class Books(World):
    """The deposit world with ingestion of the treasury's updates and every operation type."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.router = IssuanceRouter(self.ctx, DEFINITIONS)
        self.istsi = self.issuer.instrument
        onboard_instrument(self.db.uow, self.istsi, transfer_kinds=("direct", "offer"))

    def ingest(self, connection: str = "test") -> None:
        Ingestion(
            self.db.uow,
            self.ledger.client(self.treasury),
            self.treasury,
            connection=connection,
            settings=IngestionSettings(retry_delay_s=0.0),
            sleep=lambda _s: None,
        ).run()

    def balance(self, name: str) -> Decimal:
        with self.db.uow() as uow:
            return uow.withdrawals.balance(AccountRef(name, self.istsi))

    def customer_balance(self, customer: str) -> Decimal:
        return self.balance(customer_account_name(customer))

    def treasury_balance(self) -> Decimal:
        return self.balance(treasury_account_name(self.treasury))

    def alert_kinds(self) -> list[tuple[str, str]]:
        return sorted((a.kind, a.severity) for a in self.alerts())

    def journal_kinds(self) -> list[str]:
        with self.db.engine.connect() as c:
            rows = c.execute(sa.text("SELECT kind FROM journal_transactions ORDER BY kind"))
            return [row.kind for row in rows]

    def books_hold(self) -> None:
        check = check_invariant(self.db.uow)
        assert check.holds, check

    def record_mint(self, reason: str, customer: str, sats: int, **kw: Any) -> MintRecord:
        record = MintRecord(
            id=reason,
            operation_id=reason.removeprefix("issuance:"),
            customer_id=customer,
            owner=self.treasury,
            amount_sats=sats,
            reason=reason,
            status=kw.pop("status", "committed"),
            created_at=self.clock(),
            **kw,
        )
        with self.db.uow() as uow:
            assert uow.issuance.insert_mint(record)
            uow.commit()
        return record

    def record_burn(self, reason: str, customer: str, sats: int, **kw: Any) -> BurnRecord:
        record = BurnRecord(
            id=reason,
            operation_id=reason.removeprefix("issuance:").removesuffix(":burn"),
            customer_id=customer,
            owner=self.treasury,
            amount_sats=sats,
            reason=reason,
            status=kw.pop("status", "committed"),
            created_at=self.clock(),
            **kw,
        )
        with self.db.uow() as uow:
            assert uow.issuance.insert_burn(record)
            uow.commit()
        return record

    def deposit_credited(self, customer: str, sats: int) -> str:
        """A Bitcoin deposit minted by the router and booked by ingestion; the operation id."""
        op_id = self.deposit(customer, sats)
        assert self.router.run_operation(op_id).step == "credit"
        self.ingest()
        assert self.router.run_operation(op_id).status == "completed"
        return op_id

    def pay(self) -> None:
        tick = PayoutWorker(self.db.uow, self.chain, self.wallet, SETTINGS, self.clock).run_once()
        assert not tick.errors, tick.errors

    def mine(self, count: int = 1) -> None:
        self.chain.mine(count)
        assert self.watcher.run_once().error is None


def destination(wallet: EmbitCustodyWallet, name: str = "dest") -> str:
    """A P2WPKH address outside custody (the customer's own wallet)."""
    address = wallet.address_of("0014" + hashlib.sha256(name.encode()).hexdigest()[:40])
    assert address is not None
    return address


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> EmbitCustodyWallet:
    keys_dir = tmp_path_factory.mktemp("custody") / "keys"
    custody = create_sandbox_custody(keys_dir, CHAIN)
    return EmbitCustodyWallet(custody.descriptor, CHAIN, load_signing_keys(custody.key_files))


@pytest.fixture
def world(database_url: str, wallet: EmbitCustodyWallet) -> Iterator[Books]:
    db = bootstrap.database(database_url)
    books = Books(
        db, wallet, KycRegistry(), FakeChain(CHAIN, fee_rate_sat_vb=Decimal(5)), settings=SETTINGS
    )
    books.customer("alice")
    yield books
    db.dispose()


# --- mints ----------------------------------------------------------------------------------------


def test_a_mint_with_a_recorded_reason_is_credited_to_its_customer_and_marked(
    world: Books,
) -> None:
    record = world.record_mint("issuance:op-1", "alice", SATS)
    world.issuer.mint(world.treasury, SATS, reason=record.reason, command_id=record.id)
    world.ingest()
    assert world.customer_balance("alice") == sats_to_amount(SATS)
    assert world.treasury_balance() == sats_to_amount(SATS)
    assert world.balance(SUSPENSE) == 0
    assert world.journal_kinds() == ["issuance_mint"]
    assert world.alert_kinds() == []
    with world.db.uow() as uow:
        marked = uow.issuance.get_mint(record.id)
    assert marked is not None and marked.credited
    world.books_hold()

    # The same stream again (a second connection reading it from the start): nothing twice.
    world.ingest("replay")
    world.ingest()
    assert world.customer_balance("alice") == sats_to_amount(SATS)
    assert world.journal_kinds() == ["issuance_mint"]
    world.books_hold()


def test_a_booked_mint_is_marked_committed_with_its_update_id(world: Books) -> None:
    """The router's record of a mint whose answer was lost says ``submitted``; once ingestion
    booked it, it says ``committed`` with the update that minted, so it is never sent again."""
    record = world.record_mint("issuance:op-lost", "alice", SATS, status="submitted")
    minted = world.issuer.mint(world.treasury, SATS, reason=record.reason, command_id=record.id)
    world.ingest()
    with world.db.uow() as uow:
        booked = uow.issuance.get_mint(record.id)
    assert booked is not None
    assert (booked.status, booked.update_id, booked.credited) == (
        "committed",
        minted.update_id,
        True,
    )
    world.books_hold()


def test_a_mint_with_an_unknown_reason_goes_to_suspense_with_an_alert(world: Books) -> None:
    world.issuer.mint(world.treasury, 5_000, reason="issuance:nobody", command_id="stray")
    world.issuer.mint(world.treasury, 7_000, reason="something else", command_id="stray-2")
    world.ingest()
    assert world.balance(SUSPENSE) == sats_to_amount(12_000)
    assert world.customer_balance("alice") == 0
    assert world.alert_kinds() == [
        ("holdings_change_unexplained", "warning"),
        ("holdings_change_unexplained", "warning"),
    ]
    world.books_hold()


def test_a_mint_of_another_amount_than_its_record_goes_to_suspense_critical(world: Books) -> None:
    record = world.record_mint("issuance:op-2", "alice", SATS)
    world.issuer.mint(world.treasury, SATS + 1, reason=record.reason, command_id=record.id)
    world.ingest()
    assert world.customer_balance("alice") == 0
    assert world.balance(SUSPENSE) == sats_to_amount(SATS + 1)
    assert world.alert_kinds() == [("issuance_mint_unexpected", "critical")]
    with world.db.uow() as uow:
        kept = uow.issuance.get_mint(record.id)
    assert kept is not None and not kept.credited
    world.books_hold()


def test_a_second_mint_with_the_same_reason_is_never_credited_twice(world: Books) -> None:
    record = world.record_mint("issuance:op-3", "alice", SATS, status="submitted")
    world.issuer.mint(world.treasury, SATS, reason=record.reason, command_id=record.id)
    world.ingest()
    # Another command with the same reason, in a later batch and twice within one batch.
    world.issuer.mint(world.treasury, SATS, reason=record.reason, command_id="again-1")
    world.ingest()
    other = world.record_mint("issuance:op-4", "alice", 1_000)
    world.issuer.mint(world.treasury, 1_000, reason=other.reason, command_id="twice-1")
    world.issuer.mint(world.treasury, 1_000, reason=other.reason, command_id="twice-2")
    world.ingest()
    assert world.customer_balance("alice") == sats_to_amount(SATS + 1_000)
    assert world.balance(SUSPENSE) == sats_to_amount(SATS + 1_000)
    assert world.alert_kinds() == [("issuance_mint_unexpected", "critical")] * 2
    world.books_hold()


def test_a_mint_the_router_recorded_as_failed_is_not_credited(world: Books) -> None:
    record = world.record_mint("issuance:op-5", "alice", SATS, status="failed")
    world.issuer.mint(world.treasury, SATS, reason=record.reason, command_id=record.id)
    world.ingest()
    assert world.customer_balance("alice") == 0
    assert world.balance(SUSPENSE) == sats_to_amount(SATS)
    assert world.alert_kinds() == [("issuance_mint_unexpected", "critical")]
    world.books_hold()


# --- burns ----------------------------------------------------------------------------------------


def test_burns_book_against_in_flight_and_a_refunded_one_goes_to_suspense(world: Books) -> None:
    minted = world.record_mint("issuance:op-6", "alice", SATS)
    world.issuer.mint(world.treasury, SATS, reason=minted.reason, command_id=minted.id)
    world.ingest()
    # What a redemption request and a refund fence leave in the books and records.
    burn = world.record_burn("issuance:r-1:burn", "alice", 100_000, status="submitted")
    fenced = world.record_burn(
        "issuance:r-2:burn", "alice", 50_000, status="failed", update_id="refunded"
    )
    with world.db.uow() as uow:
        value = sats_to_amount(100_000)
        uow.withdrawals.post(
            [
                JournalTransaction(
                    id="test:requested",
                    kind="redemption_requested",
                    postings=(
                        Posting(AccountRef(customer_account_name("alice"), world.istsi), value),
                        Posting(AccountRef(IN_FLIGHT, world.istsi), -value),
                    ),
                )
            ]
        )
        uow.commit()
    world.issuer.burn(world.treasury, 100_000, reason=burn.reason, command_id=burn.id)
    world.issuer.burn(world.treasury, 50_000, reason=fenced.reason, command_id="outside")
    world.ingest()
    assert world.balance(IN_FLIGHT) == 0
    assert world.customer_balance("alice") == sats_to_amount(SATS - 100_000)
    assert world.balance(SUSPENSE) == -sats_to_amount(50_000)
    assert world.treasury_balance() == sats_to_amount(SATS - 150_000)
    assert world.alert_kinds() == [("issuance_burn_unexpected", "critical")]
    assert sorted(set(world.journal_kinds())) == [
        "issuance_burn",
        "issuance_burn_suspense",
        "issuance_mint",
        "redemption_requested",
    ]
    world.books_hold()


def test_a_second_burn_with_the_same_reason_in_a_later_batch_is_not_booked_again(
    world: Books,
) -> None:
    """The burn booked keeps its update id on its record, so the same reason burned again (a
    command resent after the ledger's deduplication window) goes to suspense."""
    minted = world.record_mint("issuance:op-7", "alice", SATS)
    world.issuer.mint(world.treasury, SATS, reason=minted.reason, command_id=minted.id)
    world.ingest()
    burn = world.record_burn("issuance:r-3:burn", "alice", 100_000, status="submitted")
    with world.db.uow() as uow:
        value = sats_to_amount(100_000)
        uow.withdrawals.post(
            [
                JournalTransaction(
                    id="test:requested-3",
                    kind="redemption_requested",
                    postings=(
                        Posting(AccountRef(customer_account_name("alice"), world.istsi), value),
                        Posting(AccountRef(IN_FLIGHT, world.istsi), -value),
                    ),
                )
            ]
        )
        uow.commit()
    first = world.issuer.burn(world.treasury, 100_000, reason=burn.reason, command_id=burn.id)
    world.ingest()
    with world.db.uow() as uow:
        booked = uow.issuance.get_burn(burn.id)
    assert booked is not None
    assert (booked.status, booked.update_id) == ("committed", first.update_id)
    world.issuer.burn(world.treasury, 100_000, reason=burn.reason, command_id="resent-late")
    world.ingest()
    assert world.balance(IN_FLIGHT) == 0
    assert world.balance(SUSPENSE) == -sats_to_amount(100_000)
    assert world.alert_kinds() == [("issuance_burn_unexpected", "critical")]
    world.books_hold()


def test_the_batch_reads_the_records_in_one_query_per_kind(world: Books) -> None:
    reasons = [f"issuance:bulk-{n}" for n in range(4)]
    for reason in reasons:
        world.record_mint(reason, "alice", 1_000)
        world.issuer.mint(world.treasury, 1_000, reason=reason, command_id=reason)
    burns = [world.record_burn(f"issuance:bulk-{n}:burn", "alice", 500) for n in range(3)]
    for burn in burns:
        world.issuer.burn(world.treasury, 500, reason=burn.reason, command_id=burn.id)
    statements: list[str] = []

    def seen(_c: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa.event.listen(world.db.engine, "before_cursor_execute", seen)
    try:
        world.ingest()
    finally:
        sa.event.remove(world.db.engine, "before_cursor_execute", seen)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len([s for s in reads if "FROM issuance_mints" in s]) == 1
    assert len([s for s in reads if "FROM issuance_burns" in s]) == 1
    assert world.customer_balance("alice") == sats_to_amount(4_000)
    assert world.balance(IN_FLIGHT) == -sats_to_amount(1_500)  # no request was booked here
    world.books_hold()


# --- end to end through the router ----------------------------------------------------------------


def test_deposit_mint_ingestion_credit_then_redemption_burn_ingestion_payout(
    world: Books,
) -> None:
    op_id = world.deposit("alice", SATS)
    waiting = world.router.run_operation(op_id)
    assert (waiting.status, waiting.step) == ("waiting", "credit")
    world.ingest()
    mint = world.mint(op_id)
    assert mint is not None and mint.credited
    assert world.router.run_operation(op_id).status == "completed"
    assert world.customer_balance("alice") == sats_to_amount(SATS)
    world.books_hold()

    redemption = request_redemption(
        world.ctx,
        customer_id="alice",
        amount_sats=150_000,
        address=destination(world.wallet),
        idempotency_key="k1",
        actor="customer:alice",
    )
    assert world.balance(IN_FLIGHT) == sats_to_amount(150_000)
    moved = world.router.run_operation(redemption.id)
    assert (moved.status, moved.step) == ("waiting", "confirm")
    world.ingest()
    assert world.balance(IN_FLIGHT) == 0
    assert world.treasury_balance() == sats_to_amount(SATS - 150_000)
    world.books_hold()
    payout = get_payout(world.db.uow, payout_id_of(redemption.id))
    assert payout is not None and payout.amount_sats == 150_000
    world.pay()
    for _ in range(CONFIRMATIONS + 1):
        world.mine()
        world.pay()
    done = world.router.run_operation(redemption.id)
    assert done.status == "completed", done.last_error
    assert world.alert_kinds() == []
    assert world.customer_balance("alice") == sats_to_amount(SATS - 150_000)
    (line,) = [b for b in customer_balances(world.db.uow, "alice") if b.instrument.id == "iSTSi"]
    assert line.in_flight == 0
    world.books_hold()


def test_a_remint_after_a_cancelled_payout_is_credited_by_ingestion(world: Books) -> None:
    world.deposit_credited("alice", SATS)
    redemption = request_redemption(
        world.ctx,
        customer_id="alice",
        amount_sats=150_000,
        address=destination(world.wallet),
        idempotency_key="k2",
        actor="customer:alice",
    )
    world.router.run_operation(redemption.id)
    world.ingest()  # the burn
    with world.db.uow() as uow:
        burned = uow.issuance.get_burn(burn_id_of(redemption.id))
    assert burned is not None and burned.status == "committed"
    cancel_payout(
        world.db.uow,
        payout_id=payout_id_of(redemption.id),
        cancelled_by="ops",
        clock=world.clock,
        reason="the address cannot be paid",
    )
    waiting = world.router.run_operation(redemption.id)
    assert (waiting.status, waiting.step) == ("waiting", "remint")
    world.ingest()  # the re-mint
    with world.db.uow() as uow:
        remint = uow.issuance.get_mint(remint_id_of(redemption.id))
    assert remint is not None and remint.credited
    assert world.router.run_operation(redemption.id).status == "compensated"
    assert world.customer_balance("alice") == sats_to_amount(SATS)
    assert world.balance(IN_FLIGHT) == 0
    assert world.alert_kinds() == []
    world.books_hold()


def test_deposit_mint_ids_name_the_records_ingestion_looks_up(world: Books) -> None:
    op_id = world.deposit_credited("alice", 200_000)
    mint = world.mint(op_id)
    assert mint is not None and mint.id == mint_id(op_id) and mint.reason == f"issuance:{op_id}"
    assert world.journal_kinds() == ["issuance_mint"]
