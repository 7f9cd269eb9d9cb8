"""The demo's iSTSi issuance chapter (:mod:`sluice.demo.issuance`), after the Bitcoin custody
chapter it goes on from, on a small demo world: the demo's own ledger and Integration DB
(:func:`build_ledger` and :func:`set_up_books` with a plan of no Canton Coin deposits, so it builds
in a moment), the sandbox custody on the in-memory chain.

How: both chapters run against the real :class:`Exchange`, then the issuance chapter's report is
printed to a string. Every step it reports must hold, and what it reports is checked again
independently of the chapter, from the Integration DB, the ledger and the chain: each deposit has
one operation and was minted once on the ledger (reorg included), the sanctioned sender's deposit
is held with a review item and no mint, the two redemptions left in one batch and completed, the
held transfers were approved and rejected as planned, and supply stays within reserves with the
treasury's iSTSi equal to the customers' on the books.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console

from sluice.demo import bitcoin, issuance
from sluice.demo.issuance import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    ERIN,
    LISTED_SATS,
    OWN_PARTY_SATS,
    REDEMPTIONS,
    TO_CAROL_SATS,
    TO_ERIN_SATS,
    TREASURY_DEPOSITS,
    IssuanceStory,
)
from sluice.demo.report import Sections
from sluice.demo.world import (
    BLOCKED,
    BLOCKED_OFFER_AMOUNT,
    CUSTOMERS,
    OFFER_AMOUNT,
    Customer,
    Deposit,
    Exchange,
    Plan,
    build_ledger,
    held_on_ledger,
    prepare_folder,
    set_up_books,
)
from sluice.domain.chains import to_sats
from sluice.domain.ledger import REASON_KEY
from sluice.ledger.local import EmbeddedLedger
from sluice.ports import UnitOfWorkFactory
from sluice.ports.issuance import IssuanceOperation, amount_to_sats
from sluice.services.balances import BalanceLine, customer_balances
from sluice.services.books import check_invariant
from sluice.services.btc_payouts import list_payouts
from sluice.services.btc_watcher import list_deposits
from sluice.services.compliance_officer import review_queue
from sluice.services.issuance_deposit import mint_id, review_id
from sluice.services.issuance_redeem import payout_id_of

STEPS = 8


@dataclass
class Told:
    story: IssuanceStory
    report: str
    exchange: Exchange
    data: Path

    @property
    def uow(self) -> UnitOfWorkFactory:
        return self.exchange.database.uow

    def operations(self) -> list[IssuanceOperation]:
        with self.uow() as uow:
            return uow.issuance.operations()

    def deposit_ops(self) -> dict[str, IssuanceOperation]:
        """The chapter's deposit operations by customer id."""
        return {
            op.customer_id: op
            for op in self.operations()
            if op.type == "bitcoin_deposit" and op.id in self.story.ids
        }

    def istsi(self, party: str) -> int:
        """The party's iSTSi on the ledger, in sats."""
        held = held_on_ledger(self.exchange.ledger, party)
        return amount_to_sats(sum((v for i, v in held.items() if i.id == "iSTSi"), Decimal(0)))

    def books(self, customer: Customer) -> BalanceLine:
        """The customer's iSTSi on our books."""
        (line,) = [
            b for b in customer_balances(self.uow, customer.id) if b.instrument.id == "iSTSi"
        ]
        return line

    def ledger_mints(self) -> dict[str, int]:
        """Reason → mints of iSTSi carrying it, read from the treasury's whole stream."""
        world = self.exchange.world
        found: dict[str, int] = {}
        for item in world.reader(self.exchange.ledger).updates(world.treasury, 0):
            transaction = item["update"].get("Transaction")
            for event in transaction["value"]["events"] if transaction else ():
                exercised = event.get("ExercisedEvent", {})
                if exercised.get("choice") == "RegistryRules_Mint":
                    reason = exercised["choiceArgument"]["meta"]["values"].get(REASON_KEY)
                    found[reason] = found.get(reason, 0) + 1
        return found


@pytest.fixture(scope="module")
def told(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Told]:
    data = tmp_path_factory.mktemp("demo") / "data"
    prepare_folder(data)
    first = CUSTOMERS[0]
    small = Plan(
        deposits=(),
        pauses=(),
        offer=Deposit(first, OFFER_AMOUNT, first.account),
        offer_after=0,
        blocked_offer=Deposit(BLOCKED, BLOCKED_OFFER_AMOUNT, BLOCKED.account),
        withdrawals=(),
    )
    path = data / "ledger.db"
    ledger = EmbeddedLedger.open(str(path), seed=16, checkpoint_interval_s=60.0)
    world = build_ledger(data, path, ledger, small, None)
    database = set_up_books(world)
    exchange = Exchange(world, ledger, database)
    bitcoin.CHAPTER.run(exchange, lambda _message: nullcontext())
    story = issuance.CHAPTER.run(exchange, lambda _message: nullcontext())
    output = io.StringIO()
    console = Console(file=output, width=600, color_system=None)  # no row wraps
    ok = issuance.CHAPTER.show(console, story, Sections())
    assert ok, output.getvalue()
    yield Told(story, output.getvalue(), exchange, data)
    database.dispose()
    ledger.close()


def test_every_step_of_the_chapter_holds_and_is_reported(told: Told) -> None:
    report = told.report
    assert [step.ok for step in told.story.steps] == [True] * STEPS
    assert "1. iSTSi issuance" in report
    assert "2. iSTSi operations" in report and "3. iSTSi mint guard" in report
    assert "✗" not in report and report.count("✓") == STEPS
    assert "no operation at 5 confirmations; at 6 the watcher opens one each" in report
    assert "minting halted" in report and "the officer resumes minting" in report
    assert "held at kyc" in report and "is on the sanctions list" in report
    assert "2 payouts in 1 batch" in report
    assert "the KYC hold worker: approved" in report
    assert f"receiver {ERIN.id} is frozen" in report
    # The custody chapter's deposits have operations the chapter does not run: said, not shown.
    assert "not shown: 4 deposit operation(s)" in report


def test_each_deposit_has_one_operation_and_was_minted_once_through_the_reorg(told: Told) -> None:
    ops = told.deposit_ops()
    assert sorted(ops) == sorted(c.id for c in (ALICE, BOB, DAVE, ERIN))
    outpoints = [op.id for op in told.operations() if op.type == "bitcoin_deposit"]
    assert len(outpoints) == len(set(outpoints))
    mints = told.ledger_mints()
    for customer, sats in TREASURY_DEPOSITS:
        op = ops[customer.id]
        assert (op.status, op.amount_sats) == ("completed", sats)
        assert mints[f"issuance:{op.id}"] == 1
        with told.uow() as uow:
            record = uow.issuance.get_mint(mint_id(op.id))
        assert (
            record is not None and record.credited and record.owner == told.exchange.world.treasury
        )
    # The reorged deposits are back on the chain, credited once, and minting is on again.
    deposits = {d.txid: d for d in list_deposits(told.uow)}
    for customer, _ in TREASURY_DEPOSITS:
        txid = ops[customer.id].id.split(":")[1]
        assert deposits[txid].status == "credited" and deposits[txid].confirmations >= 6
    with told.uow() as uow:
        assert not uow.issuance.minting_state().minting_halted
        critical = {a.kind for a in uow.books.alerts() if a.severity == "critical"}
    assert critical, "the reorg of credited deposits raised no critical alert"
    assert list(told.story.minted.values()) == [1, 1]


def test_dave_is_minted_on_his_party_and_the_sanctioned_deposit_is_held(told: Told) -> None:
    ops = told.deposit_ops()
    dave, erin = ops[DAVE.id], ops[ERIN.id]
    assert dave.status == "completed" and told.ledger_mints().get(f"issuance:{dave.id}") is None
    with told.uow() as uow:
        dave_mint = uow.issuance.get_mint(mint_id(dave.id))
        erin_mint = uow.issuance.get_mint(mint_id(erin.id))
    assert dave_mint is not None and dave_mint.owner == told.exchange.world.party_of[DAVE.id]
    assert dave_mint.amount_sats == OWN_PARTY_SATS
    assert [b for b in customer_balances(told.uow, DAVE.id) if b.instrument.id == "iSTSi"] == []
    assert (erin.status, erin.step, erin.amount_sats) == ("held", "kyc", LISTED_SATS)
    assert erin_mint is None
    assert "sanctions list" in (erin.last_error or "")
    reviews = {r.id: r for r in review_queue(told.uow).reviews}
    assert review_id(erin.id) in reviews and reviews[review_id(erin.id)].customer_id == ERIN.id


def test_the_redemptions_were_burned_and_paid_in_one_batch(told: Told) -> None:
    redeemed = {op.customer_id: op for op in told.operations() if op.type == "token_withdrawal"}
    assert sorted(redeemed) == sorted(c.id for c, _ in REDEMPTIONS)
    ids = {payout_id_of(op.id) for op in redeemed.values()}
    payouts = [p for p in list_payouts(told.uow) if p.id in ids]
    assert all(p.kind == "redemption" for p in payouts)
    assert len(payouts) == 2
    assert len({p.batch_id for p in payouts}) == 1 and len({p.txid for p in payouts}) == 1
    assert all(p.status == "completed" and p.confirmations >= 6 for p in payouts)
    by_amount = {p.amount_sats: p for p in payouts}
    for customer, sats in REDEMPTIONS:
        op = redeemed[customer.id]
        assert op.status == "completed"
        payout = by_amount[sats]
        assert op.result["received_sats"] == sats - (payout.fee_sats or 0) < sats
        with told.uow() as uow:
            burn = uow.issuance.get_burn(f"issuance:{op.id}:burn")
        assert burn is not None and burn.status == "committed" and burn.amount_sats == sats
    minted = {c.id: s for c, s in TREASURY_DEPOSITS}
    for customer, sats in REDEMPTIONS:
        line = told.books(customer)
        assert amount_to_sats(line.available) == minted[customer.id] - sats
        assert line.in_flight == 0 and line.held == 0


def test_held_transfers_were_approved_and_rejected_by_kyc(told: Told) -> None:
    world = told.exchange.world
    with told.uow() as uow:
        decisions = {d.receiver: d for d in uow.issuance.decisions()}
    to_carol = decisions[world.party_of[CAROL.id]]
    to_erin = decisions[world.party_of[ERIN.id]]
    assert to_carol.approve and to_carol.amount_sats == TO_CAROL_SATS
    assert not to_erin.approve and to_erin.amount_sats == TO_ERIN_SATS
    assert "frozen" in to_erin.reason
    assert to_carol.update_id is not None and to_erin.update_id is not None
    assert told.istsi(world.party_of[CAROL.id]) == TO_CAROL_SATS
    assert told.istsi(world.party_of[ERIN.id]) == 0
    assert told.istsi(world.party_of[DAVE.id]) == OWN_PARTY_SATS - TO_CAROL_SATS
    assert told.story.held_on_parties == {
        DAVE.id: OWN_PARTY_SATS - TO_CAROL_SATS,
        CAROL.id: TO_CAROL_SATS,
        ERIN.id: 0,
    }


def test_supply_stays_within_reserves_and_the_treasury_matches_the_books(told: Told) -> None:
    guard = told.story.guard
    minted = sum(s for _, s in TREASURY_DEPOSITS) + OWN_PARTY_SATS
    burned = sum(s for _, s in REDEMPTIONS)
    assert guard["supply_sats"] == guard["ledger_supply_sats"] == minted - burned
    assert guard["supply_sats"] <= guard["reserves_sats"] - guard["pending_redemptions_sats"]
    assert guard["headroom_sats"] >= 0 and not guard["minting_halted"]
    # Reserves are the chain's: the custody's unspent outputs (the held deposit and the change
    # included), less the custody chapter's dust, which is never confirmed.
    custody = told.exchange.custody
    assert isinstance(custody, bitcoin.Custody)
    scan = custody.node.scantxoutset(
        [{"desc": custody.wallet.descriptor_of_branch(b), "range": [0, 40]} for b in (0, 1)]
    )
    assert guard["reserves_sats"] == to_sats(scan["total_amount"]) - bitcoin.DUST_SATS
    world = told.exchange.world
    treasury = told.istsi(world.treasury)
    customers = sum(amount_to_sats(told.books(c).total) for c in (ALICE, BOB))
    assert treasury == customers == minted - OWN_PARTY_SATS - burned
    assert treasury + sum(told.story.held_on_parties.values()) == guard["ledger_supply_sats"]
    assert check_invariant(told.uow).holds
