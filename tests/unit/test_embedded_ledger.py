"""The embedded reference ledger's token-standard semantics, driven through its Python API.

Covers parties, the clock and checkpoints, instruments and registry policies, transfers (self,
direct, offer) with every input check, transfer instructions (accept, reject, withdraw, admin
update, expiry), mint / burn / tap, preapprovals, max record time, deduplication and completions.
Each test builds a small three-node world in memory; views, faults, persistence and the
conservation property have their own ``test_embedded_ledger_*`` modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import REASON_KEY, InstrumentId, Transfer
from sluice.ledger.local import (
    DuplicateCommandError,
    EmbeddedLedger,
    ExpiredError,
    InactiveContractError,
    InputNotOwnedError,
    InsufficientFundsError,
    InvalidStateError,
    InvalidTransferError,
    LockedInputError,
    MaxRecordTimeExceededError,
    NotAuthorizedError,
    PreapprovalMissingError,
    PreapprovalNotAllowedError,
    RegistryPolicy,
    TooManyInputsError,
)

D = Decimal


@dataclass
class World:
    ledger: EmbeddedLedger
    dso: str
    treasury: str
    alice: str
    bob: str
    cc: InstrumentId


def make_world(policy: RegistryPolicy | None = None, **settings: Any) -> World:
    """dso (admin) on node "registry", treasury on "exchange", alice and bob on "customers";
    an instrument "Amulet"; alice holds 1000 and bob 500."""
    ledger = EmbeddedLedger.open(None, seed=11, **settings)
    for node in ("registry", "exchange", "customers"):
        ledger.add_node(node)
    dso = ledger.allocate_party("dso", "registry")
    treasury = ledger.allocate_party("treasury", "exchange")
    alice = ledger.allocate_party("alice", "customers")
    bob = ledger.allocate_party("bob", "customers")
    cc = ledger.create_instrument(dso, "Amulet", policy, name="Canton Coin", symbol="CC")
    ledger.tap(alice, cc, "1000")
    ledger.tap(bob, cc, "500")
    return World(ledger, dso, treasury, alice, bob, cc)


@pytest.fixture
def world() -> World:
    return make_world()


def balance(w: World, party: str) -> Decimal:
    return sum((h.amount for h in w.ledger.active_holdings(party, w.cc)), D(0))


def events(ledger: EmbeddedLedger, update_id: str, party: str) -> list[tuple[str, dict[str, Any]]]:
    value = ledger.update_by_id(update_id, party)["update"]["Transaction"]["value"]
    return [next(iter(e.items())) for e in value["events"]]


# --- parties, nodes, clock ------------------------------------------------------------------------


def test_party_ids_look_like_canton_and_are_deterministic_from_the_seed() -> None:
    first, second = EmbeddedLedger.open(None, seed=3), EmbeddedLedger.open(None, seed=3)
    other = EmbeddedLedger.open(None, seed=4)
    for ledger in (first, second, other):
        ledger.add_node("n")
    party = first.allocate_party("alice", "n")
    assert re.fullmatch(r"alice::1220[0-9a-f]{64}", party)
    assert second.allocate_party("alice", "n") == party
    assert other.allocate_party("alice", "n") != party
    assert first.allocate_party("alice", "n") != party  # a second alice is another party


def test_allocating_a_party_needs_a_known_node_and_a_plain_hint() -> None:
    ledger = EmbeddedLedger.open(None)
    ledger.add_node("n")
    with pytest.raises(InvalidInputError):
        ledger.allocate_party("alice", "nowhere")
    with pytest.raises(InvalidInputError):
        ledger.allocate_party("al::ice", "n")
    with pytest.raises(InvalidInputError):
        ledger.add_node("n")


def test_record_times_strictly_increase_and_follow_the_clock(world: World) -> None:
    ledger = world.ledger
    first = ledger.transfer(world.alice, world.alice, world.cc, "1")
    second = ledger.transfer(world.alice, world.alice, world.cc, "1")
    assert second.record_time == first.record_time + timedelta(microseconds=1)
    clock = ledger.advance(30)
    third = ledger.transfer(world.alice, world.alice, world.cc, "1")
    assert third.record_time == clock == ledger.time()
    assert clock > second.record_time


def test_clock_does_not_go_backwards(world: World) -> None:
    with pytest.raises(InvalidInputError):
        world.ledger.advance(-1)
    with pytest.raises(InvalidInputError):
        world.ledger.set_time(world.ledger.time() - timedelta(seconds=1))


# --- transfers ------------------------------------------------------------------------------------


def test_tap_mints_a_holding_for_the_tapper(world: World) -> None:
    assert balance(world, world.alice) == D("1000")
    totals = world.ledger.totals(world.cc)
    assert totals.minted == D("1500")
    assert totals.supply == D("1500")


def test_self_transfer_splits_inputs_into_amount_and_change(world: World) -> None:
    result = world.ledger.transfer(world.alice, world.alice, world.cc, "300")
    assert result.transfer_kind == "self"
    assert result.status == "completed"
    amounts = sorted(h.amount for h in world.ledger.active_holdings(world.alice))
    assert amounts == [D("300"), D("700")]
    assert result.burned == 0


def test_registry_reports_transfer_kind_self_direct_and_offer(world: World) -> None:
    registry = world.ledger.registry(world.dso)
    now = world.ledger.time()

    def kind(receiver: str) -> str:
        transfer = Transfer(world.alice, receiver, D(1), world.cc, now, now + timedelta(hours=1))
        factory = registry.transfer_factory(transfer)
        assert factory.factory_id == world.ledger.rules_id(world.dso)
        return factory.transfer_kind

    assert kind(world.alice) == "self"
    assert kind(world.treasury) == "offer"
    world.ledger.create_preapproval(world.treasury, world.cc)
    assert kind(world.treasury) == "direct"


def test_direct_transfer_to_a_preapproved_receiver_completes_at_once(world: World) -> None:
    world.ledger.create_preapproval(world.treasury, world.cc)
    result = world.ledger.transfer(world.alice, world.treasury, world.cc, "200", reason="acct-1")
    assert result.transfer_kind == "direct"
    assert result.status == "completed"
    assert balance(world, world.treasury) == D("200")
    assert balance(world, world.alice) == D("800")
    [received] = world.ledger.active_holdings(world.treasury)
    assert received.contract_id == result.receiver_holding_cids[0]


def test_transfer_without_preapproval_becomes_an_offer_with_locked_funds(world: World) -> None:
    result = world.ledger.transfer(world.alice, world.bob, world.cc, "100", reason="gift")
    assert result.transfer_kind == "offer"
    assert result.status == "pending"
    assert result.instruction_cid is not None
    holdings = world.ledger.active_holdings(world.alice)
    locked = [h for h in holdings if h.lock is not None]
    assert [h.amount for h in locked] == [D("100")]
    assert locked[0].lock is not None
    assert locked[0].lock.holders == (world.dso,)
    assert locked[0].lock.context == f"transfer to '{world.bob}'"
    assert balance(world, world.bob) == D("500")  # nothing moved yet
    [instruction] = world.ledger.active_instructions(world.bob)
    assert instruction.contract_id == result.instruction_cid
    assert instruction.status == "pending_receiver_acceptance"
    assert instruction.transfer.reason == "gift"
    assert instruction.transfer.input_holding_cids == (locked[0].contract_id,)


def test_two_transfers_over_one_input_cannot_both_commit(world: World) -> None:
    [holding] = world.ledger.active_holdings(world.alice)
    world.ledger.create_preapproval(world.treasury, world.cc)
    world.ledger.transfer(world.alice, world.treasury, world.cc, "10", inputs=[holding.contract_id])
    with pytest.raises(InactiveContractError):
        world.ledger.transfer(world.alice, world.bob, world.cc, "10", inputs=[holding.contract_id])
    assert world.ledger.holding(holding.contract_id) is None


def test_transfer_archives_every_input_even_when_one_would_do(world: World) -> None:
    world.ledger.tap(world.alice, world.cc, "5")
    cids = [h.contract_id for h in world.ledger.active_holdings(world.alice)]
    result = world.ledger.transfer(world.alice, world.alice, world.cc, "1", inputs=cids)
    assert all(world.ledger.holding(cid) is None for cid in cids)
    change = world.ledger.holding(result.sender_change_cids[0])
    assert change is not None
    assert change.amount == D("1004")


def test_insufficient_funds_are_rejected_and_nothing_commits(world: World) -> None:
    [holding] = world.ledger.active_holdings(world.alice)
    updates_before = world.ledger.update_count()
    with pytest.raises(InsufficientFundsError):
        world.ledger.transfer(
            world.alice, world.bob, world.cc, "1000.0000000001", inputs=[holding.contract_id]
        )
    with pytest.raises(InsufficientFundsError):
        world.ledger.transfer(world.alice, world.bob, world.cc, "5000")  # input selection
    assert world.ledger.update_count() == updates_before
    assert world.ledger.holding(holding.contract_id) is not None


def test_an_input_owned_by_someone_else_is_rejected(world: World) -> None:
    [bobs] = world.ledger.active_holdings(world.bob)
    with pytest.raises(InputNotOwnedError):
        world.ledger.transfer(world.alice, world.bob, world.cc, "1", inputs=[bobs.contract_id])


def test_an_input_of_another_instrument_is_rejected(world: World) -> None:
    other = world.ledger.create_instrument(world.dso, "Other")
    world.ledger.tap(world.alice, other, "10")
    [foreign] = world.ledger.active_holdings(world.alice, other)
    with pytest.raises(InvalidTransferError):
        world.ledger.transfer(world.alice, world.alice, world.cc, "1", inputs=[foreign.contract_id])


def test_an_input_listed_twice_or_no_input_is_rejected(world: World) -> None:
    [holding] = world.ledger.active_holdings(world.alice)
    with pytest.raises(InvalidTransferError):
        world.ledger.transfer(
            world.alice, world.bob, world.cc, "1", inputs=[holding.contract_id] * 2
        )
    with pytest.raises(InvalidTransferError):
        world.ledger.transfer(world.alice, world.bob, world.cc, "1", inputs=[])


def test_more_than_one_hundred_inputs_are_rejected(world: World) -> None:
    for _ in range(101):
        world.ledger.tap(world.treasury, world.cc, "1")
    cids = [h.contract_id for h in world.ledger.active_holdings(world.treasury)]
    assert len(cids) == 101
    with pytest.raises(TooManyInputsError):
        world.ledger.transfer(world.treasury, world.treasury, world.cc, "101", inputs=cids)
    merged = world.ledger.transfer(
        world.treasury, world.treasury, world.cc, "100", inputs=cids[:100]
    )
    assert merged.status == "completed"


def test_a_policy_can_lower_the_input_limit() -> None:
    w = make_world(RegistryPolicy(inputs_max=2))
    for _ in range(3):
        w.ledger.tap(w.treasury, w.cc, "1")
    cids = [h.contract_id for h in w.ledger.active_holdings(w.treasury)]
    with pytest.raises(TooManyInputsError):
        w.ledger.transfer(w.treasury, w.treasury, w.cc, "3", inputs=cids)


def test_a_locked_input_is_rejected_until_its_lock_expires(world: World) -> None:
    now = world.ledger.time()
    offer = world.ledger.transfer(
        world.alice, world.bob, world.cc, "100", execute_before=now + timedelta(minutes=10)
    )
    locked = next(h for h in world.ledger.active_holdings(world.alice) if h.lock is not None)
    with pytest.raises(LockedInputError):
        world.ledger.transfer(
            world.alice, world.alice, world.cc, "100", inputs=[locked.contract_id]
        )
    world.ledger.advance(601)
    result = world.ledger.transfer(
        world.alice, world.alice, world.cc, "100", inputs=[locked.contract_id]
    )
    kinds = [
        (kind, body.get("choice"))
        for kind, body in events(world.ledger, result.update_id, world.alice)
    ]
    assert ("ExercisedEvent", "Holding_OwnerExpireLock") in kinds
    # The instruction can no longer complete, and failing it returns nothing twice.
    assert offer.instruction_cid is not None
    with pytest.raises(ExpiredError):
        world.ledger.accept(offer.instruction_cid, world.bob)
    [expired] = world.ledger.expire_instructions()
    assert expired.status == "failed"
    assert expired.sender_change_cids == ()
    assert balance(world, world.alice) == D("1000")


def test_time_bounds_are_checked_against_ledger_time(world: World) -> None:
    now = world.ledger.time()
    with pytest.raises(InvalidTransferError, match="future"):
        world.ledger.transfer(
            world.alice, world.bob, world.cc, "1", requested_at=now + timedelta(seconds=5)
        )
    with pytest.raises(ExpiredError):
        world.ledger.transfer(
            world.alice,
            world.bob,
            world.cc,
            "1",
            requested_at=now - timedelta(hours=1),
            execute_before=now,
        )


def test_execute_before_may_not_exceed_the_policy_cap() -> None:
    w = make_world(RegistryPolicy(execute_before_span_max_s=3600))
    now = w.ledger.time()
    with pytest.raises(InvalidTransferError, match="at most 3600"):
        w.ledger.transfer(w.alice, w.bob, w.cc, "1", execute_before=now + timedelta(hours=2))
    ok = w.ledger.transfer(w.alice, w.bob, w.cc, "1", execute_before=now + timedelta(minutes=59))
    assert ok.status == "pending"


def test_a_transfer_fee_is_burned_from_the_sender_and_reported() -> None:
    w = make_world(RegistryPolicy(transfer_fee=D("0.25")))
    w.ledger.create_preapproval(w.treasury, w.cc)
    result = w.ledger.transfer(w.alice, w.treasury, w.cc, "100", reason="acct")
    assert result.burned == D("0.25")
    assert balance(w, w.alice) == D("899.75")
    assert balance(w, w.treasury) == D("100")
    totals = w.ledger.totals(w.cc)
    assert totals.fees == D("0.25")
    assert totals.supply == totals.minted - totals.fees
    root = events(w.ledger, result.update_id, w.alice)[0][1]
    assert (
        root["exerciseResult"]["meta"]["values"]["splice.lfdecentralizedtrust.org/burned"] == "0.25"
    )
    # Self transfers (merges and splits) are free.
    assert w.ledger.transfer(w.alice, w.alice, w.cc, "1").burned == 0


def test_amounts_must_be_positive_with_at_most_ten_decimals(world: World) -> None:
    with pytest.raises(InvalidInputError):
        world.ledger.transfer(world.alice, world.bob, world.cc, "0")
    with pytest.raises(InvalidInputError):
        world.ledger.transfer(world.alice, world.bob, world.cc, "0.00000000001")
    with pytest.raises(InvalidInputError):
        world.ledger.mint(world.alice, world.cc, "-1")


def test_only_the_sender_may_submit_its_transfer(world: World) -> None:
    [holding] = world.ledger.active_holdings(world.alice)
    now = world.ledger.time()
    transfer = Transfer(
        world.alice,
        world.bob,
        D(1),
        world.cc,
        now,
        now + timedelta(hours=1),
        (holding.contract_id,),
    )
    with pytest.raises(NotAuthorizedError):
        world.ledger.submit_transfer(transfer, act_as=[world.bob])


# --- preapprovals ---------------------------------------------------------------------------------


def test_a_policy_without_preapprovals_refuses_them_and_makes_offers() -> None:
    w = make_world(RegistryPolicy(preapprovals_allowed=False))
    with pytest.raises(PreapprovalNotAllowedError):
        w.ledger.create_preapproval(w.treasury, w.cc)
    assert w.ledger.transfer(w.alice, w.treasury, w.cc, "1").transfer_kind == "offer"


def test_cancelling_a_preapproval_turns_direct_transfers_into_offers(world: World) -> None:
    created = world.ledger.create_preapproval(world.treasury, world.cc)
    assert created.contract_id == world.ledger.preapproval_id(world.treasury, world.cc)
    with pytest.raises(InvalidStateError):
        world.ledger.create_preapproval(world.treasury, world.cc)
    world.ledger.cancel_preapproval(world.treasury, world.cc)
    assert world.ledger.preapproval_id(world.treasury, world.cc) is None
    with pytest.raises(PreapprovalMissingError):
        world.ledger.cancel_preapproval(world.treasury, world.cc)
    assert (
        world.ledger.transfer(world.alice, world.treasury, world.cc, "1").transfer_kind == "offer"
    )


def test_a_stale_choice_context_naming_a_cancelled_preapproval_is_rejected(world: World) -> None:
    world.ledger.create_preapproval(world.treasury, world.cc)
    now = world.ledger.time()
    [holding] = world.ledger.active_holdings(world.alice)
    transfer = Transfer(
        world.alice,
        world.treasury,
        D(1),
        world.cc,
        now,
        now + timedelta(hours=1),
        (holding.contract_id,),
    )
    factory = world.ledger.registry(world.dso).transfer_factory(transfer)
    assert factory.transfer_kind == "direct"
    world.ledger.cancel_preapproval(world.treasury, world.cc)
    with pytest.raises(PreapprovalMissingError):
        world.ledger.submit_transfer(
            transfer, factory_id=factory.factory_id, context=factory.choice_context.values
        )


def test_expecting_a_direct_transfer_without_preapproval_refuses_before_submitting(
    world: World,
) -> None:
    before = world.ledger.update_count()
    with pytest.raises(PreapprovalMissingError):
        world.ledger.transfer(world.alice, world.treasury, world.cc, "1", expect_kind="direct")
    assert world.ledger.update_count() == before


# --- transfer instructions ------------------------------------------------------------------------


def test_accept_completes_the_offer_into_a_receiver_holding(world: World) -> None:
    offer = world.ledger.transfer(world.alice, world.bob, world.cc, "100")
    assert offer.instruction_cid is not None
    accepted = world.ledger.accept(offer.instruction_cid, world.bob)
    assert accepted.status == "completed"
    assert len(accepted.receiver_holding_cids) == 1
    assert balance(world, world.bob) == D("600")
    assert balance(world, world.alice) == D("900")
    assert all(h.lock is None for h in world.ledger.active_holdings(world.alice))
    assert world.ledger.active_instructions(world.bob) == []
    with pytest.raises(InactiveContractError):
        world.ledger.accept(offer.instruction_cid, world.bob)


def test_reject_returns_the_funds_to_the_sender_unlocked(world: World) -> None:
    offer = world.ledger.transfer(world.alice, world.bob, world.cc, "100")
    assert offer.instruction_cid is not None
    rejected = world.ledger.reject(offer.instruction_cid, world.bob)
    assert rejected.status == "rejected"
    assert len(rejected.sender_change_cids) == 1
    returned = world.ledger.holding(rejected.sender_change_cids[0])
    assert returned is not None
    assert returned.amount == D("100")
    assert returned.lock is None
    assert balance(world, world.alice) == D("1000")
    assert balance(world, world.bob) == D("500")


def test_withdraw_returns_the_funds_to_the_sender(world: World) -> None:
    offer = world.ledger.transfer(world.alice, world.bob, world.cc, "100")
    assert offer.instruction_cid is not None
    withdrawn = world.ledger.withdraw(offer.instruction_cid, world.alice)
    assert withdrawn.status == "withdrawn"
    assert balance(world, world.alice) == D("1000")


def test_only_the_receiver_accepts_or_rejects_and_only_the_sender_withdraws(
    world: World,
) -> None:
    offer = world.ledger.transfer(world.alice, world.bob, world.cc, "100")
    cid = offer.instruction_cid
    assert cid is not None
    with pytest.raises(NotAuthorizedError):
        world.ledger.accept(cid, world.alice)
    with pytest.raises(NotAuthorizedError):
        world.ledger.reject(cid, world.treasury)
    with pytest.raises(NotAuthorizedError):
        world.ledger.withdraw(cid, world.bob)
    assert world.ledger.instruction(cid).contract_id == cid


def test_accepting_at_or_after_execute_before_fails(world: World) -> None:
    now = world.ledger.time()
    offer = world.ledger.transfer(
        world.alice, world.bob, world.cc, "100", execute_before=now + timedelta(seconds=60)
    )
    assert offer.instruction_cid is not None
    world.ledger.set_time(now + timedelta(seconds=60))
    with pytest.raises(ExpiredError):
        world.ledger.accept(offer.instruction_cid, world.bob)
    # Reject and withdraw stay possible: they only give the sender its funds back.
    assert world.ledger.withdraw(offer.instruction_cid, world.alice).status == "withdrawn"


def test_expire_instructions_fails_every_expired_offer_and_returns_funds(world: World) -> None:
    now = world.ledger.time()
    short = world.ledger.transfer(
        world.alice, world.bob, world.cc, "10", execute_before=now + timedelta(seconds=30)
    )
    long = world.ledger.transfer(
        world.alice, world.bob, world.cc, "20", execute_before=now + timedelta(hours=2)
    )
    assert world.ledger.expire_instructions() == []
    world.ledger.advance(31)
    [expired] = world.ledger.expire_instructions(world.dso)
    assert expired.kind == "update"
    assert expired.status == "failed"
    assert expired.instruction_cid == short.instruction_cid
    assert [i.contract_id for i in world.ledger.active_instructions(world.bob)] == [
        long.instruction_cid
    ]
    holdings = world.ledger.active_holdings(world.alice)
    assert sum(h.amount for h in holdings if h.lock is not None) == D("20")
    assert balance(world, world.alice) == D("1000")


def test_kyc_hold_keeps_a_transfer_in_the_internal_workflow_until_the_admin_passes_it() -> None:
    w = make_world(RegistryPolicy(kyc_hold=True))
    w.ledger.create_preapproval(w.treasury, w.cc)
    held = w.ledger.transfer(w.alice, w.treasury, w.cc, "100", reason="acct-7")
    assert held.transfer_kind == "offer"
    assert held.instruction_cid is not None
    [instruction] = w.ledger.active_instructions(w.treasury)
    assert instruction.status == "pending_internal_workflow"
    with pytest.raises(InvalidStateError):
        w.ledger.accept(held.instruction_cid, w.treasury)
    passed = w.ledger.admin_update(held.instruction_cid, approve=True)
    assert passed.status == "pending"
    assert passed.instruction_cid != held.instruction_cid
    assert passed.instruction_cid is not None
    [passed_on] = w.ledger.active_instructions(w.treasury)
    assert passed_on.status == "pending_receiver_acceptance"
    assert passed_on.original_instruction_cid == held.instruction_cid
    assert passed_on.correlation_id == held.instruction_cid
    assert passed_on.transfer.reason == "acct-7"
    with pytest.raises(InvalidStateError):
        w.ledger.admin_update(passed.instruction_cid, approve=True)
    accepted = w.ledger.accept(passed.instruction_cid, w.treasury)
    assert accepted.status == "completed"
    assert balance(w, w.treasury) == D("100")


def test_kyc_hold_rejection_by_the_admin_returns_the_funds() -> None:
    w = make_world(RegistryPolicy(kyc_hold=True))
    held = w.ledger.transfer(w.alice, w.treasury, w.cc, "100")
    assert held.instruction_cid is not None
    with pytest.raises(NotAuthorizedError):
        w.ledger.withdraw(held.instruction_cid, w.bob)
    failed = w.ledger.admin_update(held.instruction_cid, approve=False, reason="sanctioned")
    assert failed.status == "failed"
    assert len(failed.sender_change_cids) == 1
    assert balance(w, w.alice) == D("1000")
    assert w.ledger.active_instructions(w.treasury) == []


def test_kyc_hold_does_not_touch_self_transfers() -> None:
    w = make_world(RegistryPolicy(kyc_hold=True))
    assert w.ledger.transfer(w.alice, w.alice, w.cc, "1").status == "completed"


# --- mint, burn, tap ------------------------------------------------------------------------------


def test_the_admin_mints_with_a_reason_the_owner_can_see(world: World) -> None:
    minted = world.ledger.mint(world.treasury, world.cc, "42", reason="btc deposit 1")
    assert minted.act_as == (world.dso,)
    [(kind, root), *rest] = events(world.ledger, minted.update_id, world.treasury)
    assert kind == "ExercisedEvent"
    assert root["choice"] == "RegistryRules_Mint"
    meta = root["exerciseResult"]["meta"]["values"]
    assert meta["splice.lfdecentralizedtrust.org/tx-kind"] == "mint"
    assert meta[REASON_KEY] == "btc deposit 1"
    assert [k for k, _ in rest] == ["CreatedEvent"]
    assert world.ledger.totals(world.cc).minted == D("1542")


def test_the_admin_burns_holdings_and_returns_the_change(world: World) -> None:
    burned = world.ledger.burn(world.alice, world.cc, "250", reason="redemption 9")
    assert burned.burned == D("250")
    assert len(burned.sender_change_cids) == 1
    assert balance(world, world.alice) == D("750")
    totals = world.ledger.totals(world.cc)
    assert totals.burned == D("250")
    assert totals.supply == D("1250")
    root = events(world.ledger, burned.update_id, world.alice)[0][1]
    meta = root["exerciseResult"]["meta"]["values"]
    assert meta["splice.lfdecentralizedtrust.org/tx-kind"] == "burn"
    assert meta["splice.lfdecentralizedtrust.org/burned"] == "250.0"


def test_tapping_reports_a_mint_from_the_faucet(world: World) -> None:
    tapped = world.ledger.tap(world.bob, world.cc, "7")
    root = events(world.ledger, tapped.update_id, world.bob)[0][1]
    assert root["actingParties"] == [world.bob]
    assert root["exerciseResult"]["meta"]["values"] == {
        "splice.lfdecentralizedtrust.org/tx-kind": "mint",
        REASON_KEY: "tapped faucet",
    }


def test_an_issuer_can_switch_the_faucet_off() -> None:
    w = make_world()
    w.ledger.set_policy(w.cc, RegistryPolicy(tap_allowed=False))
    with pytest.raises(NotAuthorizedError):
        w.ledger.tap(w.alice, w.cc, "1")


# --- commands: max record time, deduplication, completions ----------------------------------------


def test_a_command_past_its_max_record_time_is_rejected_and_commits_nothing(world: World) -> None:
    deadline = world.ledger.time() + timedelta(seconds=10)
    world.ledger.set_time(deadline)
    before = world.ledger.update_count()
    with pytest.raises(MaxRecordTimeExceededError):
        world.ledger.transfer(world.alice, world.bob, world.cc, "1", max_record_time=deadline)
    assert world.ledger.update_count() == before
    ok = world.ledger.transfer(
        world.alice, world.bob, world.cc, "1", max_record_time=deadline + timedelta(seconds=1)
    )
    assert ok.record_time < deadline + timedelta(seconds=1)


def test_a_duplicate_command_raises_with_the_first_outcome(world: World) -> None:
    first = world.ledger.transfer(world.alice, world.alice, world.cc, "1", command_id="c-1")
    before = world.ledger.update_count()
    with pytest.raises(DuplicateCommandError) as raised:
        world.ledger.transfer(world.alice, world.alice, world.cc, "1", command_id="c-1")
    assert raised.value.first == first
    assert world.ledger.update_count() == before
    # The same command id from another submitter is another command.
    assert world.ledger.transfer(world.bob, world.bob, world.cc, "1", command_id="c-1")


def test_deduplication_ends_with_its_window() -> None:
    w = make_world(dedup_window_s=60)
    w.ledger.transfer(w.alice, w.alice, w.cc, "1", command_id="c-1")
    w.ledger.advance(59)
    with pytest.raises(DuplicateCommandError):
        w.ledger.transfer(w.alice, w.alice, w.cc, "1", command_id="c-1")
    w.ledger.advance(2)
    assert w.ledger.transfer(w.alice, w.alice, w.cc, "1", command_id="c-1").status == "completed"


def test_a_rejected_command_may_be_retried_with_the_same_command_id(world: World) -> None:
    with pytest.raises(MaxRecordTimeExceededError):
        world.ledger.transfer(
            world.alice,
            world.bob,
            world.cc,
            "5",
            command_id="retry",
            max_record_time=world.ledger.time(),
        )
    assert world.ledger.transfer(world.alice, world.bob, world.cc, "5", command_id="retry")


def test_completions_record_successes_with_offsets_and_errors_with_codes(world: World) -> None:
    ok = world.ledger.transfer(world.alice, world.alice, world.cc, "1", command_id="ok-1")
    with pytest.raises(InsufficientFundsError):
        world.ledger.burn(
            world.alice,
            world.cc,
            "2000",
            inputs=[world.ledger.active_holdings(world.alice)[0].contract_id],
            command_id="burn-1",
        )
    alice = world.ledger.completions(world.alice)
    done = next(c for c in alice if c.command_id == "ok-1")
    assert done.status == "ok"
    assert done.update_id == ok.update_id
    assert done.code == 0
    assert done.offset == world.ledger.ledger_end(world.alice) or done.offset is not None
    dso = world.ledger.completions(world.dso)
    failed = next(c for c in dso if c.command_id == "burn-1")
    assert failed.status == "error"
    assert failed.error == "insufficient_funds"
    assert failed.code == InsufficientFundsError.code
    assert failed.update_id is None
    assert "burning" in failed.message
    later = world.ledger.completions(world.alice, after_sequence=done.sequence)
    assert all(c.sequence > done.sequence for c in later)


def test_errors_are_typed_and_input_errors_are_value_errors(world: World) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the contract is "an input error is a ValueError"
        world.ledger.transfer(world.alice, world.bob, world.cc, "99999")
    assert issubclass(InsufficientFundsError, InvalidInputError)
    assert not issubclass(InactiveContractError, ValueError)


# --- checkpoints ----------------------------------------------------------------------------------


def checkpoints(ledger: EmbeddedLedger, party: str) -> list[dict[str, Any]]:
    return [
        u["update"]["OffsetCheckpoint"]["value"]
        for u in ledger.updates(party, 0)
        if "OffsetCheckpoint" in u["update"]
    ]


def test_an_explicit_checkpoint_reaches_every_node_at_the_synchronizer_time() -> None:
    w = make_world(checkpoint_interval_s=None)
    w.ledger.advance(5)
    time = w.ledger.checkpoint()
    for party in (w.dso, w.treasury, w.alice):
        [checkpoint] = checkpoints(w.ledger, party)
        assert checkpoint["offset"] == w.ledger.ledger_end(party)
        [sync] = checkpoint["synchronizerTimes"]
        assert sync["synchronizerId"] == w.ledger.synchronizer_id
        assert sync["recordTime"] == time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # Nothing can commit at or before a checkpoint's time.
    assert w.ledger.tap(w.alice, w.cc, "1").record_time > time


def test_checkpoints_are_emitted_every_interval_of_record_time() -> None:
    w = make_world(checkpoint_interval_s=60)
    assert checkpoints(w.ledger, w.treasury) == []
    w.ledger.advance(59)
    assert checkpoints(w.ledger, w.treasury) == []
    w.ledger.advance(1)
    assert len(checkpoints(w.ledger, w.treasury)) == 1
    w.ledger.advance(3600)  # one checkpoint for a long jump, not sixty
    assert len(checkpoints(w.ledger, w.treasury)) == 2


# --- registry API ---------------------------------------------------------------------------------


def test_registry_metadata_reports_the_instrument_and_its_supply(world: World) -> None:
    registry = world.ledger.registry(world.dso)
    assert registry.info()["adminId"] == world.dso
    [metadata] = registry.instruments()
    assert metadata.as_json() | {"totalSupplyAsOf": "t"} == {
        "id": "Amulet",
        "name": "Canton Coin",
        "symbol": "CC",
        "totalSupply": "1500.0000000000",
        "totalSupplyAsOf": "t",
        "decimals": 10,
        "supportedApis": {
            "splice-api-token-metadata-v1": 1,
            "splice-api-token-holding-v1": 1,
            "splice-api-token-transfer-instruction-v1": 1,
        },
    }
    assert registry.instrument("Amulet") == metadata


def test_registry_choice_contexts_name_the_rules_and_disclose_them(world: World) -> None:
    world.ledger.create_preapproval(world.treasury, world.cc)
    registry = world.ledger.registry(world.dso)
    now = world.ledger.time()
    transfer = Transfer(world.alice, world.treasury, D(1), world.cc, now, now + timedelta(hours=1))
    factory = registry.transfer_factory(transfer).as_json()
    assert factory["transferKind"] == "direct"
    values = factory["choiceContext"]["choiceContextData"]["values"]
    assert values["registry-rules"] == {"tag": "AV_ContractId", "value": factory["factoryId"]}
    preapproval = values["transfer-preapproval"]["value"]
    disclosed = {c["contractId"] for c in factory["choiceContext"]["disclosedContracts"]}
    assert disclosed == {factory["factoryId"], preapproval}
    for contract in factory["choiceContext"]["disclosedContracts"]:
        assert contract["createdEventBlob"]
        assert contract["synchronizerId"]
    offer = world.ledger.transfer(world.alice, world.bob, world.cc, "1")
    assert offer.instruction_cid is not None
    context = registry.accept_context(offer.instruction_cid).as_json()
    assert context["choiceContextData"]["values"]["expire-lock"] == {
        "tag": "AV_Bool",
        "value": True,
    }
    assert registry.reject_context(offer.instruction_cid) == registry.withdraw_context(
        offer.instruction_cid
    )


def test_the_registry_answers_only_for_its_own_instruments(world: World) -> None:
    other_admin = world.ledger.allocate_party("issuer", "registry")
    other = world.ledger.create_instrument(other_admin, "iSTSi")
    now = world.ledger.time()
    transfer = Transfer(world.alice, world.bob, D(1), other, now, now + timedelta(hours=1))
    with pytest.raises(InvalidInputError):
        world.ledger.registry(world.dso).transfer_factory(transfer)
    assert world.ledger.registry(other_admin).transfer_kind(transfer) == "offer"
