"""Redemption of iSTSi for Bitcoin (``token_withdrawal``) end to end, on SQLite and PostgreSQL.

Real parts: the Integration DB, the embedded ledger with iSTSi and its issuer
(:class:`EmbeddedIssuerLedger`), the sandbox custody wallet (embit, 2 of 3 keys), the in-memory
chain (:class:`FakeChain`) with the deposit watcher and the payouts worker, the KYC registry and
the router with :data:`issuance_redeem.DEFINITION`. Ingestion's booking of the mint, the burn
and the re-mint is simulated by posting the journal transactions SPEC16 says it posts
(``issuance_mint``, ``issuance_burn``) and marking the re-mint credited; the books' checks
(``in_flight`` back to zero, the customer whole) are made on that journal. "Paid once" is checked
on the chain: the outputs to the redemption's address over every block.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from sluice import bootstrap
from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.chains import CHAINS, to_sats
from sluice.domain.compliance import TierLimits
from sluice.domain.errors import (
    AddressBlacklistedError,
    ComplianceError,
    DuplicateOperationError,
    InsufficientBalanceError,
    InsufficientKycTierError,
    InvalidAddressError,
    InvalidAmountError,
    InvalidOperationStateError,
)
from sluice.domain.journal import (
    IN_FLIGHT,
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
    treasury_account_name,
)
from sluice.ledger.local.engine import EmbeddedLedger
from sluice.ledger.local.issuer import EmbeddedIssuerLedger, create_istsi
from sluice.ports.issuance import (
    IssuanceOperation,
    IssuerLedger,
    IssuerOutcomeUnknownError,
    IssuerRejectedError,
    IssuerResult,
    MintRecord,
    sats_to_amount,
)
from sluice.services.balances import BalanceLine, customer_balances
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.btc_addresses import change_address
from sluice.services.btc_payouts import PayoutWorker, cancel_payout, get_payout, request_payout
from sluice.services.btc_watcher import DepositWatcher
from sluice.services.compliance import KycRegistry
from sluice.services.compliance_officer import flag_address, freeze_customer, set_limits
from sluice.services.issuance_burn_inputs import burn_holder
from sluice.services.issuance_overrides import compensate_operation, retry_operation
from sluice.services.issuance_redeem import (
    DEFINITION,
    burn_id_of,
    payout_id_of,
    remint_id_of,
    request_redemption,
)
from sluice.services.issuance_router import IssuanceRouter
from sluice.services.issuance_settings import IssuanceContext
from sluice.services.mint_guard import halt_minting, record_mint, resume_minting
from sluice.store.tables import holdings
from tests.ledger_holdings import mirror_holdings

CHAIN = CHAINS["regtest"]
START = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)
CONFIRMATIONS = 3
SETTINGS = BitcoinSettings(
    chain=CHAIN,
    confirmations_min=CONFIRMATIONS,
    payout_fee_max_sats=20_000,
    payout_batch_max=10,
    payout_batch_window_s=0,
)
ALICE = "alice"
DEFINITIONS = {"token_withdrawal": DEFINITION}


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


class FaultyIssuer:
    """The issuer with faults: ``lose_answers`` burns commit but their answer is lost;
    ``reject_burns`` burns are refused. Counts what reaches the ledger."""

    def __init__(self, inner: IssuerLedger) -> None:
        self.inner = inner
        self.lose_answers = 0
        self.reject_burns = 0
        self.burns_sent: list[str] = []

    @property
    def instrument(self) -> Any:
        return self.inner.instrument

    def mint(self, owner: str, sats: int, *, reason: str, command_id: str) -> IssuerResult:
        return self.inner.mint(owner, sats, reason=reason, command_id=command_id)

    def burn(
        self, owner: str, sats: int, *, reason: str, command_id: str, inputs: Sequence[str] = ()
    ) -> IssuerResult:
        self.burns_sent.append(command_id)
        if self.reject_burns:
            self.reject_burns -= 1
            raise IssuerRejectedError(f"{command_id}: refused (test)")
        result = self.inner.burn(owner, sats, reason=reason, command_id=command_id, inputs=inputs)
        if self.lose_answers:
            self.lose_answers -= 1
            raise IssuerOutcomeUnknownError(f"{command_id}: the answer was lost (test)")
        return result

    def decide_transfer(self, *args: Any, **kwargs: Any) -> IssuerResult:
        return self.inner.decide_transfer(*args, **kwargs)

    def held_transfers(self, limit: int = 100) -> list[Any]:
        return self.inner.held_transfers(limit)

    def supply(self) -> int:
        return self.inner.supply()


def destination(wallet: EmbitCustodyWallet, name: str) -> tuple[str, str]:
    """A P2WPKH address outside custody: (address, script)."""
    script = "0014" + hashlib.sha256(name.encode()).hexdigest()[:40]
    address = wallet.address_of(script)
    assert address is not None
    return address, script


@dataclass
class World:
    db: bootstrap.Database
    wallet: EmbitCustodyWallet
    chain: FakeChain = field(default_factory=lambda: FakeChain(CHAIN, fee_rate_sat_vb=Decimal(5)))
    clock: Clock = field(default_factory=Clock)
    registry: KycRegistry = field(default_factory=KycRegistry)
    journal_seq: int = 0

    def __post_init__(self) -> None:
        self.ledger = EmbeddedLedger.open(None, seed=16, checkpoint_interval_s=None)
        for node in ("registry", "exchange"):
            self.ledger.add_node(node)
        issuer_party = self.ledger.allocate_party("issuer", "registry")
        self.treasury = self.ledger.allocate_party("treasury", "exchange")
        create_istsi(self.ledger, issuer_party)
        self.issuer = FaultyIssuer(EmbeddedIssuerLedger(self.ledger, issuer_party))
        self.istsi = self.issuer.instrument
        self.ctx = IssuanceContext(
            uow=self.db.uow,
            clock=self.clock,
            issuer=self.issuer,
            registry=self.registry,
            wallet=self.wallet,
            node=self.chain,
            treasury=self.treasury,
            bitcoin=SETTINGS,
        )
        self.router = IssuanceRouter(self.ctx, DEFINITIONS)

    # -- set-up --------------------------------------------------------------------------------

    def customer(self, customer: str, *, tier: int = 1) -> None:
        with self.db.uow() as uow:
            uow.reference.add_customer(customer, customer.title())
            uow.compliance.set_profile(customer, at=self.clock(), tier=tier, status="active")
            uow.commit()

    def post(self, kind: str, *postings: tuple[str, Decimal]) -> None:
        self.journal_seq += 1
        with self.db.uow() as uow:
            uow.withdrawals.post(
                [
                    JournalTransaction(
                        id=f"test:{kind}:{self.journal_seq}",
                        kind=kind,
                        postings=tuple(
                            Posting(AccountRef(name, self.istsi), amount)
                            for name, amount in postings
                        ),
                    )
                ]
            )
            uow.commit()

    def give_istsi(self, customer: str, sats: int) -> None:
        """A deposit's mint to the treasury and ingestion's credit of it to the customer."""
        self.issuer.mint(
            self.treasury, sats, reason=f"test:{customer}", command_id=f"test-mint:{customer}"
        )
        value = sats_to_amount(sats)
        self.post(
            "issuance_mint",
            (treasury_account_name(self.treasury), value),
            (customer_account_name(customer), -value),
        )

    def book_burn(self, op: IssuanceOperation) -> None:
        """Ingestion books the committed burn: treasury −X, in_flight debited."""
        value = sats_to_amount(op.amount_sats)
        self.post(
            "issuance_burn", (treasury_account_name(self.treasury), -value), (IN_FLIGHT, value)
        )

    def book_remint(self, op: IssuanceOperation) -> None:
        """Ingestion books the re-mint like a mint (the customer credited) and marks it."""
        value = sats_to_amount(op.amount_sats)
        self.post(
            "issuance_mint",
            (treasury_account_name(self.treasury), value),
            (customer_account_name(op.customer_id), -value),
        )
        with self.db.uow() as uow:
            uow.issuance.mark_mint_credited(remint_id_of(op.id))
            uow.commit()

    def fund_custody(self, *amounts: int) -> None:
        """Confirmed custody outputs of the exchange's own Bitcoin (paid to change addresses: a
        customer's deposit not minted yet is owed, and no operator payout may spend it): the
        reserves paying out."""
        for amount in amounts:
            with self.db.uow() as uow:
                address = change_address(uow, self.wallet, self.clock)
                uow.commit()
            self.chain.fund(address.script_hex, amount)
        self.mine(CONFIRMATIONS)

    # -- running ---------------------------------------------------------------------------------

    def watch(self) -> None:
        tick = DepositWatcher(self.db.uow, self.chain, self.wallet, SETTINGS, self.clock).run_once()
        assert tick.error is None, tick.error

    def mine(self, count: int = 1) -> None:
        self.chain.mine(count)
        self.watch()

    def pay(self) -> None:
        tick = PayoutWorker(self.db.uow, self.chain, self.wallet, SETTINGS, self.clock).run_once()
        assert not tick.errors, tick.errors

    def redeem(
        self, sats: int, key: str = "k1", *, to: str = "dest", **kw: Any
    ) -> IssuanceOperation:
        address, _ = destination(self.wallet, to)
        arguments: dict[str, Any] = {
            "customer_id": ALICE,
            "amount_sats": sats,
            "address": address,
            "idempotency_key": key,
            "actor": f"customer:{ALICE}",
        }
        arguments.update(kw)
        return request_redemption(self.ctx, **arguments)

    def run(self, op_id: str) -> IssuanceOperation:
        mirror_holdings(self.db, self.ledger, self.treasury)  # as ingestion would have
        return self.router.run_operation(op_id)

    # -- reads -------------------------------------------------------------------------------------

    def operation(self, op_id: str) -> IssuanceOperation:
        with self.db.uow() as uow:
            op = uow.issuance.get_operation(op_id)
        assert op is not None
        return op

    def balance(self, name: str) -> Decimal:
        with self.db.uow() as uow:
            return uow.withdrawals.balance(AccountRef(name, self.istsi))

    def lines(self, customer: str = ALICE) -> dict[str, BalanceLine]:
        return {line.instrument.id: line for line in customer_balances(self.db.uow, customer)}

    def paid_to(self, script: str) -> list[int]:
        found = []
        for height in range(self.chain.tip_height + 1):
            for tx in self.chain.getblock(self.chain.getblockhash(height))["tx"]:
                for out in tx["vout"]:
                    if out["scriptPubKey"]["hex"] == script:
                        found.append(to_sats(out["value"]))
        return found

    def operations_count(self) -> int:
        with self.db.uow() as uow:
            return len(uow.issuance.operations())


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> EmbitCustodyWallet:
    sandbox = create_sandbox_custody(tmp_path_factory.mktemp("keys") / "custody", CHAIN)
    keys = load_signing_keys(sandbox.key_files[:2], chain=CHAIN)
    return EmbitCustodyWallet(sandbox.descriptor, CHAIN, keys)


@pytest.fixture
def world(database_url: str, wallet: EmbitCustodyWallet) -> Iterator[World]:
    db = bootstrap.database(database_url)
    w = World(db, wallet)
    w.customer(ALICE)
    w.give_istsi(ALICE, 1_000_000)
    yield w
    db.dispose()


def _stays_untouched(world: World) -> None:
    assert world.balance(customer_account_name(ALICE)) == Decimal("0.01")
    assert world.balance(IN_FLIGHT) == 0
    assert world.operations_count() == 0


# --- requests -----------------------------------------------------------------------------------


def test_a_request_moves_the_istsi_to_in_flight_and_opens_the_operation(world: World) -> None:
    op = world.redeem(300_000)
    assert (op.id, op.type, op.status, op.step) == (
        f"redeem:{ALICE}:k1",
        "token_withdrawal",
        "pending",
        "burn",
    )
    assert op.params["requested_by"] == f"customer:{ALICE}"
    # What the exchange owes: 0.007 iSTSi to the customer, 0.003 in flight.
    assert world.balance(customer_account_name(ALICE)) == Decimal("0.007")
    assert world.balance(IN_FLIGHT) == Decimal("0.003")
    line = world.lines()["iSTSi"]
    assert line.instrument == world.istsi
    assert (line.available, line.held, line.in_flight) == (
        Decimal("0.007"),
        Decimal(0),
        Decimal("0.003"),
    )


def test_the_same_idempotency_key_answers_42_with_the_first_operation(world: World) -> None:
    first = world.redeem(300_000)
    with pytest.raises(DuplicateOperationError) as raised:
        world.redeem(400_000)
    assert raised.value.code == 42
    assert raised.value.first_operation is not None
    assert (raised.value.first_operation["id"], raised.value.first_operation["amount_sats"]) == (
        first.id,
        300_000,
    )
    assert world.balance(IN_FLIGHT) == Decimal("0.003")  # taken once


def test_kyc_refusals_take_nothing(world: World) -> None:
    set_limits(
        world.db.uow,
        1,
        "burn",
        TierLimits(Decimal("0.002"), None, None),
        actor="officer",
        at=world.clock(),
        reason="test",
    )
    with pytest.raises(InsufficientKycTierError):
        world.redeem(300_000)
    _stays_untouched(world)

    listed, _ = destination(world.wallet, "listed")
    flag_address(world.db.uow, listed, actor="officer", at=world.clock(), reason="stolen coins")
    with pytest.raises(AddressBlacklistedError) as raised:
        world.redeem(100_000, to="listed")
    assert raised.value.code == 22
    _stays_untouched(world)

    freeze_customer(world.db.uow, ALICE, actor="officer", at=world.clock(), reason="review")
    with pytest.raises(ComplianceError):
        world.redeem(100_000, key="k2")
    _stays_untouched(world)


def test_bad_addresses_and_amounts_are_refused(world: World) -> None:
    mainnet = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
    with pytest.raises(InvalidAddressError) as raised:
        world.redeem(300_000, address=mainnet)
    assert raised.value.code == 64
    with pytest.raises(InvalidAmountError):
        world.redeem(20_000)  # the payout's fee could leave it under the dust limit
    with pytest.raises(InsufficientBalanceError) as short:
        world.redeem(1_000_001)
    assert short.value.code == 62
    _stays_untouched(world)


# --- the flow ------------------------------------------------------------------------------------


def _compensate(world: World, op_id: str) -> IssuanceOperation:
    return compensate_operation(
        world.ctx, DEFINITIONS, op_id, reason="customer asked", actor="operator"
    )


def test_a_redemption_is_burned_paid_in_a_batch_and_completed_at_n_confirmations(
    world: World,
) -> None:
    world.fund_custody(2_000_000)
    op = world.redeem(300_000)
    _, script = destination(world.wallet, "dest")
    other = request_payout(
        world.db.uow,
        world.wallet,
        SETTINGS,
        payout_id="ops-1",
        address=destination(world.wallet, "ops")[0],
        amount_sats=100_000,
        kind="operator",
        requested_by="ops",
        clock=world.clock,
    )
    waiting = world.run(op.id)
    assert (waiting.status, waiting.step) == ("waiting", "confirm")
    assert world.issuer.supply() == 700_000  # burned once
    world.book_burn(op)
    payout = get_payout(world.db.uow, payout_id_of(op.id))
    assert payout is not None
    assert (payout.kind, payout.amount_sats, payout.status) == ("redemption", 300_000, "queued")

    world.pay()
    batched = get_payout(world.db.uow, payout_id_of(op.id))
    first = get_payout(world.db.uow, other.id)
    assert batched is not None and first is not None
    assert batched.batch_id is not None and batched.batch_id == first.batch_id
    assert world.run(op.id).status == "waiting"

    for _ in range(CONFIRMATIONS + 1):
        world.mine()
        world.pay()
    done = world.run(op.id)
    assert done.status == "completed", done.last_error
    paid = get_payout(world.db.uow, payout_id_of(op.id))
    assert paid is not None and paid.fee_sats is not None and paid.fee_sats > 0
    assert done.result["received_sats"] == 300_000 - paid.fee_sats
    assert done.result["confirmations"] >= CONFIRMATIONS
    assert world.paid_to(script) == [300_000 - paid.fee_sats]  # paid once
    # The books after ingestion: nothing left in flight, the treasury's iSTSi down by the burn.
    assert world.balance(IN_FLIGHT) == 0
    assert world.balance(customer_account_name(ALICE)) == Decimal("0.007")
    assert world.balance(treasury_account_name(world.treasury)) == Decimal("0.007")
    assert world.lines()["iSTSi"].in_flight == 0
    with pytest.raises(InvalidOperationStateError):
        _compensate(world, op.id)


def test_a_burn_whose_answer_was_lost_is_sent_again_with_its_command_id_and_burns_once(
    world: World,
) -> None:
    world.issuer.lose_answers = 1
    op = world.redeem(300_000)
    retried = world.run(op.id)
    assert (retried.status, retried.step, retried.attempts) == ("pending", "burn", 1)
    assert world.issuer.supply() == 700_000  # it did commit
    with pytest.raises(InvalidOperationStateError, match="unknown"):
        _compensate(world, op.id)  # never refunded while the burn's outcome is unknown
    assert world.balance(IN_FLIGHT) == Decimal("0.003")

    after = world.run(op.id)
    assert (after.status, after.step) == ("waiting", "confirm")
    assert world.issuer.burns_sent == [burn_id_of(op.id)] * 2
    assert world.issuer.supply() == 700_000  # burned once
    with world.db.uow() as uow:
        burn = uow.issuance.get_burn(burn_id_of(op.id))
    assert burn is not None and burn.status == "committed" and burn.update_id


LATER = timedelta(hours=25)  # past the ledger's 24 h deduplication window


def _later(world: World) -> None:
    """A day and more passes, on sluice's clock and the ledger's (which then forgets the
    command ids it deduplicated)."""
    world.clock.now += LATER
    world.ledger.advance(LATER.total_seconds())


def test_a_burn_whose_answer_was_lost_is_not_resent_after_the_resend_window(
    world: World,
) -> None:
    world.issuer.lose_answers = 1
    op = world.redeem(300_000)
    assert world.run(op.id).step == "burn"  # retry: the outcome is unknown
    assert world.issuer.supply() == 700_000  # it did commit
    _later(world)
    stuck = world.run(op.id)
    assert (stuck.status, stuck.step) == ("stuck", "burn")
    assert "not sent again" in (stuck.last_error or "")
    assert world.issuer.burns_sent == [burn_id_of(op.id)]
    assert world.issuer.supply() == 700_000  # burned once
    with world.db.uow() as uow:
        alerts = [a for a in uow.books.alerts() if a.kind == "issuance_stuck"]
    assert [a.severity for a in alerts] == ["critical"]


def test_a_remint_ingestion_credited_counts_as_committed_and_is_never_resent(
    world: World,
) -> None:
    world.fund_custody(2_000_000)
    op = world.redeem(300_000)
    assert world.run(op.id).step == "confirm"
    world.book_burn(op)
    cancel_payout(
        world.db.uow, payout_id=payout_id_of(op.id), cancelled_by="ops", clock=world.clock
    )
    halt_minting(
        world.db.uow, reason="test", kind="test", details={}, at=world.clock(), actor="test"
    )
    assert world.run(op.id).step == "remint"  # waits while minting is halted
    resume_minting(world.db.uow, reason="test", actor="officer", at=world.clock())
    # The re-mint step recorded and sent it; the answer was lost, ingestion booked it.
    remint = MintRecord(
        id=remint_id_of(op.id),
        operation_id=op.id,
        customer_id=ALICE,
        owner=world.treasury,
        amount_sats=300_000,
        reason=remint_id_of(op.id),
        status="submitted",
        created_at=world.clock(),
    )
    record_mint(world.ctx, remint, actor="test")
    world.issuer.mint(world.treasury, 300_000, reason=remint.reason, command_id=remint.id)
    world.book_remint(op)
    _later(world)
    whole = world.run(op.id)
    assert whole.status == "compensated", whole.last_error
    assert world.issuer.supply() == 1_000_000  # re-minted once


def test_a_payout_cancelled_for_good_is_reminted_and_the_customer_made_whole(
    world: World,
) -> None:
    world.fund_custody(2_000_000)
    op = world.redeem(300_000)
    _, script = destination(world.wallet, "dest")
    assert world.run(op.id).step == "confirm"
    world.book_burn(op)
    cancel_payout(
        world.db.uow, payout_id=payout_id_of(op.id), cancelled_by="ops", clock=world.clock
    )
    minted = world.run(op.id)
    assert (minted.status, minted.step) == ("waiting", "remint")  # until ingestion credits it
    assert world.issuer.supply() == 1_000_000
    world.book_remint(op)
    whole = world.run(op.id)
    assert whole.status == "compensated", whole.last_error
    assert whole.result["payout_status"] == "cancelled"
    assert world.balance(customer_account_name(ALICE)) == Decimal("0.01")
    assert world.balance(IN_FLIGHT) == 0
    line = world.lines()["iSTSi"]
    assert (line.available, line.in_flight) == (Decimal("0.01"), Decimal(0))
    world.pay()
    world.mine(CONFIRMATIONS)
    assert world.paid_to(script) == []  # and never paid


def test_compensation_is_refused_while_a_batch_holds_the_payout_and_cancels_a_queued_one(
    world: World,
) -> None:
    world.fund_custody(2_000_000)
    held = world.redeem(300_000)
    world.run(held.id)
    world.book_burn(held)
    world.pay()  # batched: a signed transaction paying it is recorded
    with pytest.raises(InvalidOperationStateError, match="batch") as refused:
        _compensate(world, held.id)
    assert refused.value.code == 41
    after = world.operation(held.id)
    assert (after.status, after.step) == ("waiting", "confirm")
    payout = get_payout(world.db.uow, payout_id_of(held.id))
    assert payout is not None and payout.status == "broadcast" and payout.batch_id

    queued = world.redeem(200_000, key="k2")
    world.run(queued.id)
    world.book_burn(queued)
    moved = _compensate(world, queued.id)
    assert (moved.status, moved.step) == ("pending", "remint")
    cancelled = get_payout(world.db.uow, payout_id_of(queued.id))
    assert cancelled is not None and cancelled.status == "cancelled"
    assert world.run(queued.id).step == "remint"
    world.book_remint(queued)
    assert world.run(queued.id).status == "compensated"
    assert world.balance(customer_account_name(ALICE)) == Decimal("0.007")  # 0.003 still out


def test_a_refund_when_the_burn_never_committed(world: World) -> None:
    world.issuer.reject_burns = 1
    op = world.redeem(300_000)
    stuck = world.run(op.id)
    assert (stuck.status, stuck.step) == ("stuck", "burn")
    refunded = _compensate(world, op.id)
    assert refunded.status == "compensated"
    assert refunded.result["refunded"] is True
    assert world.balance(customer_account_name(ALICE)) == Decimal("0.01")
    assert world.balance(IN_FLIGHT) == 0
    assert world.issuer.supply() == 1_000_000
    # A late burn step never sends the burn of a refunded redemption.
    outcome = DEFINITION.step("burn")(world.ctx, world.operation(op.id))  # type: ignore[misc]
    assert outcome.kind == "fail"
    assert world.issuer.burns_sent == [burn_id_of(op.id)]
    with pytest.raises(InvalidOperationStateError):
        _compensate(world, op.id)

    # Before any burn was even tried: refunded too, and the router leaves it alone.
    untouched = world.redeem(200_000, key="k2")
    assert _compensate(world, untouched.id).status == "compensated"
    assert world.run(untouched.id).status == "compensated"
    assert world.issuer.burns_sent == [burn_id_of(op.id)]
    assert world.balance(customer_account_name(ALICE)) == Decimal("0.01")
    assert world.balance(IN_FLIGHT) == 0


def test_a_remint_passes_the_mint_guard_when_reserves_just_cover_the_supply(world: World) -> None:
    """Fully backed (reserves = supply): the re-mint restores the supply its burn took while the
    Bitcoin never left, so the guard must let it through rather than halt minting."""
    world.fund_custody(1_000_000)
    op = world.redeem(300_000)
    world.run(op.id)
    world.book_burn(op)
    cancel_payout(
        world.db.uow, payout_id=payout_id_of(op.id), cancelled_by="ops", clock=world.clock
    )
    minted = world.run(op.id)
    assert (minted.status, minted.step) == ("waiting", "remint"), minted.last_error
    with world.db.uow() as uow:
        assert not uow.issuance.minting_state().minting_halted
    assert world.issuer.supply() == 1_000_000


def test_a_rejected_burn_is_sent_again_on_an_operator_retry_and_burns_once(world: World) -> None:
    world.issuer.reject_burns = 1
    op = world.redeem(300_000)
    assert world.run(op.id).status == "stuck"
    assert world.issuer.supply() == 1_000_000
    retry_operation(world.ctx, op.id, reason="treasury topped up", actor="operator")
    after = world.run(op.id)
    assert (after.status, after.step) == ("waiting", "confirm"), after.last_error
    assert world.issuer.burns_sent == [burn_id_of(op.id)] * 2
    assert world.issuer.supply() == 700_000
    with pytest.raises(InvalidOperationStateError, match="re-mint"):
        DEFINITION.step("refund")(world.ctx, after)  # type: ignore[misc]  # burned: no refund


def test_concurrent_requests_with_one_key_take_the_istsi_once(world: World) -> None:
    threads = 4
    barrier = threading.Barrier(threads)
    outcomes: list[object] = []

    def request() -> None:
        barrier.wait(timeout=30)
        try:
            outcomes.append(world.redeem(300_000, key="same"))
        except Exception as exc:  # collected and judged below
            outcomes.append(exc)

    workers = [threading.Thread(target=request) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    created = [o for o in outcomes if isinstance(o, IssuanceOperation)]
    duplicates = [o for o in outcomes if isinstance(o, DuplicateOperationError)]
    assert len(created) == 1 and len(duplicates) == threads - 1, outcomes
    assert all(d.first_operation and d.first_operation["id"] == created[0].id for d in duplicates)
    assert world.balance(IN_FLIGHT) == Decimal("0.003")
    assert world.balance(customer_account_name(ALICE)) == Decimal("0.007")
    assert world.operations_count() == 1


# --- the burn's inputs --------------------------------------------------------------------------


def _treasury_holdings(world: World) -> dict[str, str | None]:
    """The treasury's active iSTSi holdings in the table → who reserved them."""
    mirror_holdings(world.db, world.ledger, world.treasury)
    with world.db.engine.connect() as connection:
        rows = connection.execute(
            select(holdings.c.contract_id, holdings.c.reserved_by).where(
                holdings.c.owner == world.treasury, holdings.c.archived_update_id.is_(None)
            )
        )
        return {str(row.contract_id): row.reserved_by for row in rows}


WITHDRAWAL = "wd-" + "0" * 32  # a withdrawal record's id, as the worker reserves under


def _holding_of(world: World, sats: int) -> str:
    return next(
        h.contract_id
        for h in world.ledger.active_holdings(world.treasury)
        if to_sats(h.amount) == sats
    )


def _reserve(world: World, contract_id: str | None, holder: str = WITHDRAWAL) -> None:
    with world.db.uow() as uow:
        if contract_id is None:
            uow.withdrawals.release(holder)
        else:
            assert uow.withdrawals.reserve([contract_id], holder)
        uow.commit()


def test_a_burn_never_spends_a_holding_a_withdrawal_reserved(world: World) -> None:
    """The treasury's iSTSi is one pool with two spenders: a holding the withdrawal worker
    reserved (for a customer's withdrawal, a merge or a split) is never burned; the burn
    reserves what it spends, under its own holder id, before it sends."""
    world.give_istsi("bob", 500_000)
    mirror_holdings(world.db, world.ledger, world.treasury)
    big = _holding_of(world, 1_000_000)  # the ledger's own pick (largest first)
    _reserve(world, big)
    op = world.redeem(300_000)  # the free 500,000 cover it
    done = world.run(op.id)
    assert (done.status, done.step) == ("waiting", "confirm"), done.last_error
    assert world.issuer.supply() == 1_200_000
    held = _treasury_holdings(world)
    assert held[big] == WITHDRAWAL  # still there, still the withdrawal's
    with world.db.uow() as uow:
        burned = uow.withdrawals.reserved_by(burn_holder(burn_id_of(op.id)))
    assert len(burned) == 1 and burned[0] not in held and burned[0] != big


def test_a_burn_waits_sending_nothing_while_the_free_holdings_fall_short(world: World) -> None:
    world.give_istsi("bob", 500_000)
    mirror_holdings(world.db, world.ledger, world.treasury)
    big = _holding_of(world, 1_000_000)
    _reserve(world, big)
    op = world.redeem(700_000)  # the free 500,000 do not cover it
    waiting = world.run(op.id)
    assert (waiting.status, waiting.step) == ("waiting", "burn"), waiting.last_error
    with world.db.uow() as uow:
        step = uow.issuance.steps(op.id)[0]  # newest first
    assert (step.step, step.outcome) == ("burn", "wait")
    assert "do not cover" in (step.error or "")
    assert world.issuer.burns_sent == [] and world.issuer.supply() == 1_500_000
    _reserve(world, None)  # the withdrawal settled without spending it
    world.clock.now += timedelta(minutes=5)
    done = world.run(op.id)
    assert (done.status, done.step) == ("waiting", "confirm"), done.last_error
    assert world.issuer.burns_sent == [burn_id_of(op.id)]
    assert world.issuer.supply() == 800_000


def test_a_rejected_burn_gives_back_the_holdings_it_reserved(world: World) -> None:
    world.issuer.reject_burns = 1
    op = world.redeem(300_000)
    assert world.run(op.id).status == "stuck"
    holder = burn_holder(burn_id_of(op.id))
    with world.db.uow() as uow:
        assert uow.withdrawals.reserved_by(holder) == []
    retry_operation(world.ctx, op.id, reason="sent again", actor="operator")
    after = world.run(op.id)
    assert (after.status, after.step) == ("waiting", "confirm"), after.last_error
    with world.db.uow() as uow:
        spent = uow.withdrawals.reserved_by(holder)
    assert len(spent) == 1 and spent[0] not in _treasury_holdings(world)  # burned, archived
