"""The KYC hold worker (:func:`decide_held_transfers`) on SQLite and PostgreSQL, against an
in-memory embedded ledger whose iSTSi holds every transfer between parties for the issuer.

Customers ``cust-a`` and ``cust-b`` have their own parties (alice, bob); carol's party belongs to
nobody; the treasury is the exchange. Covers: a transfer between two KYC-ok customers approved
(the receiver then accepts it and holds the amount; the sender's usage counted), a transfer to
the treasury approved, rejected to a frozen customer, to a flagged party and to an unknown party
(the sender's holding comes back unlocked), a second run doing nothing, the first decision
standing after a crash between the decision row and the command (then resent once), a crash
after the command and a lost response (the resend records the committed update, nothing moves
twice), the limit per call, the audit records, a decision the ledger refuses for good closed
(marked, audited, alerted, never resent) and a flagged sender party rejected.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

import pytest

from sluice import bootstrap
from sluice.ledger.local import EmbeddedLedger
from sluice.ledger.local.issuer import EmbeddedIssuerLedger, create_istsi
from sluice.ports.issuance import IssuerRejectedError, IssuerResult, sats_to_amount
from sluice.services.audit import list_audit_records, verify_audit_log
from sluice.services.compliance import KycRegistry
from sluice.services.compliance_officer import (
    change_tier,
    flag_address,
    freeze_customer,
    unfreeze_customer,
)
from sluice.services.issuance_settings import IssuanceContext
from sluice.services.issuance_transfers import (
    REFUSED_PREFIX,
    HoldTick,
    command_id_of,
    decide_held_transfers,
    refused,
)

OFFICER = "officer-1"


@dataclass
class World:
    db: bootstrap.Database
    ledger: EmbeddedLedger
    issuer: EmbeddedIssuerLedger
    ctx: IssuanceContext
    parties: dict[str, str]

    def now(self) -> datetime:
        return self.ledger.time()

    def held_sats(self, name: str) -> int:
        party = self.parties[name]
        holdings = self.ledger.active_holdings(party, self.issuer.instrument)
        return int(sum((h.amount for h in holdings), Decimal(0)) / Decimal("0.00000001"))

    def send(self, sender: str, receiver: str, sats: int) -> str:
        result = self.ledger.transfer(
            self.parties[sender],
            self.parties[receiver],
            self.issuer.instrument,
            sats_to_amount(sats),
            reason="p2p",
        )
        assert result.instruction_cid is not None
        return result.instruction_cid

    def with_issuer(self, issuer: Any) -> IssuanceContext:
        return IssuanceContext(
            uow=self.db.uow,
            clock=self.now,
            issuer=issuer,
            registry=self.ctx.registry,
            wallet=self.ctx.wallet,
            node=self.ctx.node,
            treasury=self.ctx.treasury,
        )


@pytest.fixture
def world(database_url: str) -> Iterator[World]:
    db = bootstrap.database(database_url)
    ledger = EmbeddedLedger.open(None, seed=5, checkpoint_interval_s=None)
    for node in ("registry", "exchange", "wallets"):
        ledger.add_node(node)
    parties = {
        "issuer": ledger.allocate_party("issuer", "registry"),
        "treasury": ledger.allocate_party("treasury", "exchange"),
        "alice": ledger.allocate_party("alice", "wallets"),
        "bob": ledger.allocate_party("bob", "wallets"),
        "carol": ledger.allocate_party("carol", "wallets"),
    }
    create_istsi(ledger, parties["issuer"])
    issuer = EmbeddedIssuerLedger(ledger, parties["issuer"])
    with db.uow() as uow:
        for customer, party in (("cust-a", "alice"), ("cust-b", "bob")):
            uow.reference.add_customer(customer, customer)
            assert uow.issuance.set_customer_party(customer, parties[party], ledger.time())
        uow.commit()
    for name in ("alice", "carol"):
        issuer.mint(parties[name], 10_000, reason="issuance:seed", command_id=f"seed-{name}")
    ctx = IssuanceContext(
        uow=db.uow,
        clock=ledger.time,
        issuer=issuer,
        registry=KycRegistry(),
        wallet=cast(Any, None),  # the worker needs neither Bitcoin side
        node=cast(Any, None),
        treasury=parties["treasury"],
    )
    yield World(db, ledger, issuer, ctx, parties)
    db.dispose()


def decisions(world: World) -> dict[str, Any]:
    with world.db.uow() as uow:
        return {d.instruction_cid: d for d in uow.issuance.decisions()}


def audited(world: World, cid: str) -> list[str]:
    records = list_audit_records(world.db.uow, operation_id=command_id_of(cid))
    return [r.entry.operation for r in records]


def test_a_transfer_between_kyc_ok_customers_is_approved_once(world: World) -> None:
    cid = world.send("alice", "bob", 2_500)
    to_treasury = world.send("alice", "treasury", 500)

    assert decide_held_transfers(world.ctx) == HoldTick(approved=2)
    assert world.issuer.held_transfers() == []
    found = decisions(world)
    assert found[cid].approve and found[cid].reason == "approved"
    assert (found[cid].sender, found[cid].receiver, found[cid].amount_sats) == (
        world.parties["alice"],
        world.parties["bob"],
        2_500,
    )
    assert found[cid].update_id is not None
    assert world.ledger.update_by_id(found[cid].update_id, world.parties["issuer"])
    assert found[to_treasury].approve

    # The receivers accept what was passed on to them.
    for name in ("bob", "treasury"):
        (offer,) = world.ledger.active_instructions(world.parties[name])
        assert offer.status == "pending_receiver_acceptance"
        world.ledger.accept(offer.contract_id, world.parties[name])
    assert (world.held_sats("alice"), world.held_sats("bob"), world.held_sats("treasury")) == (
        7_000,
        2_500,
        500,
    )
    with world.db.uow() as uow:
        usage = uow.compliance.usage(["cust-a"], world.now().replace(year=2000))["cust-a"]
    assert [(u.operation, u.operation_id) for u in usage] == [
        ("transfer", command_id_of(cid)),
        ("transfer", command_id_of(to_treasury)),
    ]
    assert audited(world, cid) == ["compliance_check:transfer", "istsi_transfer_approved"]

    # Nothing left to do: a second run changes nothing.
    updates = world.ledger.update_count()
    assert decide_held_transfers(world.ctx) == HoldTick()
    assert world.ledger.update_count() == updates
    assert decisions(world) == found
    assert verify_audit_log(world.db.uow).ok


def test_transfers_to_a_frozen_customer_a_flagged_party_or_an_unknown_party_are_rejected(
    world: World,
) -> None:
    freeze_customer(world.db.uow, "cust-b", actor=OFFICER, at=world.now(), reason="court order 9")
    to_frozen = world.send("alice", "bob", 1_000)
    to_unknown = world.send("alice", "carol", 2_000)
    from_unknown = world.send("carol", "alice", 3_000)

    assert decide_held_transfers(world.ctx) == HoldTick(rejected=3)
    found = decisions(world)
    assert not found[to_frozen].approve
    assert found[to_frozen].reason == "receiver cust-b is frozen: court order 9"
    assert (
        found[to_unknown].reason
        == f"receiver {world.parties['carol']} is not a known customer's party"
    )
    assert (
        found[from_unknown].reason
        == f"sender {world.parties['carol']} is not a known customer's party"
    )
    assert all(d.update_id for d in found.values())
    # Every sender has its holding back, unlocked; nothing reached anyone.
    assert world.issuer.held_transfers() == []
    assert (world.held_sats("alice"), world.held_sats("carol"), world.held_sats("bob")) == (
        10_000,
        10_000,
        0,
    )
    assert all(
        h.lock is None
        for name in ("alice", "carol")
        for h in world.ledger.active_holdings(world.parties[name], world.issuer.instrument)
    )
    assert world.ledger.active_instructions(world.parties["bob"]) == []
    assert audited(world, to_frozen) == ["istsi_transfer_rejected"]
    (record,) = list_audit_records(world.db.uow, operation_id=command_id_of(to_frozen))
    assert record.entry.error == "receiver cust-b is frozen: court order 9"
    assert record.entry.parameters["receiver_customer"] == "cust-b"

    flag_address(world.db.uow, world.parties["bob"], actor=OFFICER, at=world.now(), reason="fraud")
    unfreeze_customer(world.db.uow, "cust-b", actor=OFFICER, at=world.now(), reason="lifted")
    to_flagged = world.send("alice", "bob", 1_000)
    assert decide_held_transfers(world.ctx) == HoldTick(rejected=1)
    assert decisions(world)[to_flagged].reason == (
        f"receiver party {world.parties['bob']} is flagged (fraud)"
    )


class CrashingIssuer:
    """The issuer, crashing the worker around its first ``decide_transfer``: before the command
    is sent (``after=False``) or once it committed (``after=True``)."""

    def __init__(self, issuer: EmbeddedIssuerLedger, *, after: bool) -> None:
        self._issuer = issuer
        self._after = after
        self.instrument = issuer.instrument
        self.held_transfers = issuer.held_transfers
        self.supply = issuer.supply

    def decide_transfer(
        self, instruction_cid: str, *, approve: bool, reason: str, command_id: str
    ) -> IssuerResult:
        if self._after:
            self._issuer.decide_transfer(
                instruction_cid, approve=approve, reason=reason, command_id=command_id
            )
        raise RuntimeError("worker killed")


def test_a_crash_before_the_command_keeps_the_first_decision_and_resends_it(world: World) -> None:
    cid = world.send("alice", "bob", 2_500)
    with pytest.raises(RuntimeError, match="worker killed"):
        decide_held_transfers(world.with_issuer(CrashingIssuer(world.issuer, after=False)))
    first = decisions(world)[cid]
    assert first.approve and first.update_id is None
    assert [h.instruction_cid for h in world.issuer.held_transfers()] == [cid]

    # The customer is frozen meanwhile: the decision taken stands, and is sent once.
    freeze_customer(world.db.uow, "cust-b", actor=OFFICER, at=world.now(), reason="late news")
    assert decide_held_transfers(world.ctx) == HoldTick(resent=1)
    again = decisions(world)[cid]
    assert again.approve and again.update_id is not None
    assert world.issuer.held_transfers() == []
    (offer,) = world.ledger.active_instructions(world.parties["bob"])
    assert offer.status == "pending_receiver_acceptance"
    assert audited(world, cid) == ["compliance_check:transfer", "istsi_transfer_approved"]
    assert decide_held_transfers(world.ctx) == HoldTick()


def test_a_crash_after_the_command_records_the_committed_update_on_the_next_run(
    world: World,
) -> None:
    cid = world.send("alice", "bob", 2_500)
    with pytest.raises(RuntimeError, match="worker killed"):
        decide_held_transfers(world.with_issuer(CrashingIssuer(world.issuer, after=True)))
    assert decisions(world)[cid].update_id is None
    assert world.issuer.held_transfers() == []  # it committed
    updates = world.ledger.update_count()

    assert decide_held_transfers(world.ctx) == HoldTick(resent=1)
    update_id = decisions(world)[cid].update_id
    assert update_id is not None
    assert world.ledger.update_by_id(update_id, world.parties["issuer"])
    assert world.ledger.update_count() == updates  # answered by deduplication
    assert len(world.ledger.active_instructions(world.parties["bob"])) == 1
    assert decide_held_transfers(world.ctx) == HoldTick()


def test_a_lost_response_is_resent_and_commits_once(world: World) -> None:
    cid = world.send("alice", "bob", 2_500)
    world.ledger.faults.drop_next_responses(1)
    assert decide_held_transfers(world.ctx) == HoldTick(failed=1)
    assert decisions(world)[cid].update_id is None
    assert decide_held_transfers(world.ctx) == HoldTick(resent=1)
    assert decisions(world)[cid].update_id is not None
    assert len(world.ledger.active_instructions(world.parties["bob"])) == 1
    assert world.held_sats("alice") == 10_000  # 2 500 of it locked for bob's offer


def test_the_work_per_call_is_bounded(world: World) -> None:
    first = world.send("alice", "bob", 100)
    second = world.send("alice", "bob", 200)
    assert decide_held_transfers(world.ctx, limit=1) == HoldTick(approved=1)
    assert list(decisions(world)) == [first]
    assert [h.instruction_cid for h in world.issuer.held_transfers()] == [second]
    assert decide_held_transfers(world.ctx, limit=1) == HoldTick(approved=1)
    assert decide_held_transfers(world.ctx) == HoldTick()


def test_a_sender_the_registry_refuses_is_rejected_and_no_usage_counted(world: World) -> None:
    change_tier(world.db.uow, "cust-a", 0, actor=OFFICER, at=world.now(), reason="lapsed KYC")
    cid = world.send("alice", "bob", 2_500)
    assert decide_held_transfers(world.ctx) == HoldTick(rejected=1)
    decision = decisions(world)[cid]
    assert not decision.approve and decision.reason.startswith("sender cust-a: ")
    assert world.held_sats("alice") == 10_000 and world.held_sats("bob") == 0
    with world.db.uow() as uow:
        assert uow.compliance.usage(["cust-a"], world.now().replace(year=2000)) in (
            {},
            {"cust-a": []},
        )
    assert audited(world, cid) == ["compliance_check:transfer", "istsi_transfer_rejected"]


class RefusingIssuer:
    """The issuer whose ledger refuses every decision for good (the instruction expired)."""

    def __init__(self, issuer: EmbeddedIssuerLedger) -> None:
        self.instrument = issuer.instrument
        self.held_transfers = issuer.held_transfers
        self.supply = issuer.supply
        self.sent: list[str] = []

    def decide_transfer(
        self, instruction_cid: str, *, approve: bool, reason: str, command_id: str
    ) -> IssuerResult:
        self.sent.append(command_id)
        raise IssuerRejectedError(f"instruction {instruction_cid} expired")


def test_a_decision_the_ledger_refuses_for_good_is_closed_audited_alerted_and_not_resent(
    world: World,
) -> None:
    cid = world.send("alice", "bob", 2_500)
    refusing = RefusingIssuer(world.issuer)
    ctx = world.with_issuer(refusing)
    assert decide_held_transfers(ctx) == HoldTick(failed=1)
    decision = decisions(world)[cid]
    assert decision.approve and refused(decision)
    assert decision.update_id == f"{REFUSED_PREFIX}instruction {cid} expired"[:200]
    assert audited(world, cid) == [
        "compliance_check:transfer",
        "istsi_transfer_approved",
        "istsi_transfer_refused",
    ]
    records = list_audit_records(world.db.uow, operation_id=command_id_of(cid))
    assert records[-1].entry.error == f"instruction {cid} expired"
    with world.db.uow() as uow:
        alerts = [a for a in uow.books.alerts() if a.kind == "istsi_transfer_refused"]
    assert [(a.id, a.severity) for a in alerts] == [(f"istsi-transfer-refused:{cid}", "warning")]

    # Closed: neither the held loop nor the resend loop sends it again, so refusals cannot pile
    # up among the unsent decisions.
    assert decide_held_transfers(ctx) == HoldTick()
    assert decide_held_transfers(ctx) == HoldTick()
    assert refusing.sent == [command_id_of(cid)]
    assert audited(world, cid)[-1] == "istsi_transfer_refused"
    assert len(audited(world, cid)) == 3
    assert verify_audit_log(world.db.uow).ok


def test_a_listed_sender_party_is_rejected_although_its_customer_is_active(world: World) -> None:
    flag_address(world.db.uow, world.parties["alice"], actor=OFFICER, at=world.now(), reason="mule")
    cid = world.send("alice", "bob", 2_500)
    assert decide_held_transfers(world.ctx) == HoldTick(rejected=1)
    decision = decisions(world)[cid]
    assert not decision.approve
    assert decision.reason == f"sender party {world.parties['alice']} is flagged (mule)"
    assert world.held_sats("alice") == 10_000 and world.held_sats("bob") == 0
    assert world.ledger.active_instructions(world.parties["bob"]) == []
    assert audited(world, cid) == ["istsi_transfer_rejected"]
