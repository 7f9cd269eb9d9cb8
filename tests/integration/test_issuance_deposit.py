"""Bitcoin deposit → iSTSi (services/issuance_deposit, issuance_intake, issuance_held, mint_guard)
through the real watcher, router, embedded ledger and KYC registry, on SQLite and PostgreSQL.

Covers: a deposit that confirms opens one operation (a replayed or restarted watcher opens no
second) which runs kyc → reserve → mint → credit (ingestion's credit simulated with
``mark_mint_credited``); KYC refusals (frozen customer, a tier that may not mint) hold it with a
review item and nothing minted; a sender on the sanctions list holds it and both officer actions
are refused (41); an unreadable input holds it (fail closed) and a release mints it; a return
queues a payout of kind ``return`` and closes it ``returned``; a guard breach (30) halts minting
with a critical alert, later mints are refused (31) and the operation waits until minting is
resumed; a reorg that removes a minted deposit halts minting; a crash between recording and
sending a mint (and between sending and recording its result) mints once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sluice import bootstrap
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.errors import InvalidOperationStateError, MintGuardError, MintingHaltedError
from sluice.ports.issuance import MintRecord
from sluice.services.audit import list_audit_records, verify_audit_log
from sluice.services.btc_payouts import get_payout
from sluice.services.compliance import KycRegistry
from sluice.services.issuance_deposit import DEFINITION, mint_id, review_id
from sluice.services.issuance_held import release_held_deposit, return_held_deposit
from sluice.services.issuance_settings import IssuanceSettings
from sluice.services.mint_guard import guard_status, halt_minting, record_mint, resume_minting
from tests.integration.issuance_deposit_world import (
    CHAIN,
    World,
    sender_script,
    write_sanctions,
)

SATS = 125_000


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> EmbitCustodyWallet:
    keys_dir = tmp_path_factory.mktemp("custody") / "keys"
    custody = create_sandbox_custody(keys_dir, CHAIN)
    return EmbitCustodyWallet(custody.descriptor, CHAIN, load_signing_keys(custody.key_files))


@pytest.fixture
def world(database_url: str, wallet: EmbitCustodyWallet) -> Iterator[World]:
    db = bootstrap.database(database_url)
    world = World(db, wallet, KycRegistry())
    yield world
    db.dispose()


def audited(world: World, name: str) -> list[Any]:
    return [r for r in list_audit_records(world.db.uow, limit=10_000) if r.entry.operation == name]


def test_a_confirmed_deposit_is_minted_once_and_credited(world: World) -> None:
    world.customer("alice")
    op_id = world.deposit("alice", SATS, confirm=False)
    # Not confirmed yet: no operation.
    assert world.watcher.run_once().error is None
    assert world.operations() == []
    world.confirm()
    (op,) = world.operations()
    assert (op.id, op.type, op.status, op.step) == (op_id, "bitcoin_deposit", "pending", "kyc")
    assert (op.customer_id, op.amount_sats) == ("alice", SATS)
    txid = op_id.split(":")[1]
    assert op.params == {"txid": txid, "vout": 0, "address": op.params["address"]}
    # A restarted watcher and more blocks: still one operation.
    world.watcher = world.new_watcher()
    world.confirm()
    world.chain.mine(3)
    assert world.watcher.run_once().error is None
    assert [o.id for o in world.operations()] == [op_id]

    op = world.router.run_operation(op_id)
    assert (op.status, op.step) == ("waiting", "credit")
    mint = world.mint(op_id)
    assert mint is not None
    assert (mint.status, mint.owner, mint.amount_sats, mint.credited) == (
        "committed",
        world.treasury,
        SATS,
        False,
    )
    assert mint.reason == f"issuance:{op_id}"
    assert world.supply() == SATS and world.treasury_sats() == SATS
    with world.db.uow() as uow:
        output = uow.btc_watch.output(txid, 0)
    assert output is not None and output.status == "credited"
    # Waiting for ingestion: running again changes nothing.
    assert world.router.run_operation(op_id).status == "waiting"
    world.credit(op_id)
    op = world.router.run_operation(op_id)
    assert (op.status, op.step) == ("completed", "done")
    assert op.result["mint_id"] == mint_id(op_id)
    assert world.supply() == SATS
    status = guard_status(world.ctx)
    assert status["supply_sats"] == SATS and status["reserves_sats"] == SATS
    assert status["headroom_sats"] == 0 and status["minting_halted"] is False
    assert [s.step for s in world.steps(op_id)] == ["kyc", "reserve", "mint", "credit", "credit"]
    assert audited(world, "issuance_mint_recorded") and audited(world, "issuance_mint_sent")
    assert verify_audit_log(world.db.uow).ok


def test_a_deposit_to_the_customers_party_completes_at_once(world: World) -> None:
    world.customer("alice")
    party = world.ledger.allocate_party("alice", "exchange")
    with world.db.uow() as uow:
        assert uow.issuance.set_customer_party("alice", party, world.clock(), mint_to_party=True)
        uow.commit()
    op_id = world.deposit("alice", SATS)
    op = world.router.run_operation(op_id)
    assert op.status == "completed"
    mint = world.mint(op_id)
    assert mint is not None and mint.owner == party
    assert world.treasury_sats() == 0 and world.supply() == SATS


@pytest.mark.parametrize("refusal", ["frozen", "tier"])
def test_a_kyc_refusal_holds_the_deposit(world: World, refusal: str) -> None:
    if refusal == "frozen":
        world.customer("alice", status="frozen")
    else:
        world.customer("alice", tier=0)
    op_id = world.deposit("alice", SATS)
    op = world.router.run_operation(op_id)
    assert (op.status, op.step) == ("held", "kyc")
    assert op.last_error
    assert world.mint(op_id) is None and world.supply() == 0
    with world.db.uow() as uow:
        review = uow.compliance.review(review_id(op_id))
        output = uow.btc_watch.output(op_id.split(":")[1], 0)
    assert review is not None and review.kind == "deposit_held" and review.subject == op_id
    assert review.closed_at is None
    assert output is not None and output.status == "confirmed"  # BTC held, not reserved
    assert audited(world, "issuance_deposit_held")
    # Held stays held: the router leaves it alone.
    assert world.router.run_operation(op_id).status == "held"


def test_a_listed_sender_holds_the_deposit_for_good(
    world: World, tmp_path: Path, wallet: EmbitCustodyWallet
) -> None:
    evil = wallet.address_of(sender_script(0x66))
    assert evil is not None
    world.ctx = replace(
        world.ctx, registry=KycRegistry(screen=write_sanctions(tmp_path / "sdn", evil))
    )
    world.router.ctx = world.ctx
    world.customer("alice")
    op_id = world.deposit("alice", SATS, sender=0x66)
    op = world.router.run_operation(op_id)
    assert op.status == "held"
    assert "sanctions list" in (op.last_error or "")
    assert op.result["kyc"]["listed_senders"] == [evil]
    with pytest.raises(InvalidOperationStateError) as refused:
        release_held_deposit(world.ctx, op_id, reason="looks fine", actor="officer")
    assert refused.value.code == 41 and evil in str(refused.value)
    with pytest.raises(InvalidOperationStateError) as refused:
        return_held_deposit(
            world.ctx, op_id, address=return_address(world), reason="send back", actor="officer"
        )
    assert refused.value.code == 41
    assert world.operation(op_id).status == "held"
    assert world.mint(op_id) is None
    with world.db.uow() as uow:
        assert uow.btc_payouts.get_payout(f"return:{op_id}") is None


def return_address(world: World) -> str:
    address = world.wallet.address_of(sender_script(0x42))
    assert address is not None
    return address


def test_an_unreadable_input_holds_and_a_release_mints(world: World) -> None:
    world.customer("alice")
    op_id = world.direct_deposit("alice", SATS)
    op = world.router.run_operation(op_id)
    assert op.status == "held"
    assert op.result["kyc"]["refused"] == "unreadable_inputs"
    released = release_held_deposit(world.ctx, op_id, reason="sender known", actor="officer")
    assert (released.status, released.step) == ("pending", "reserve")
    op = world.router.run_operation(op_id)
    assert (op.status, op.step) == ("waiting", "credit")
    assert world.supply() == SATS
    with world.db.uow() as uow:
        review = uow.compliance.review(review_id(op_id))
    assert review is not None and review.closed_at is not None
    (record,) = audited(world, "issuance_deposit_released")
    assert record.entry.kyc["override"] is True
    # Released once: neither action again.
    with pytest.raises(InvalidOperationStateError):
        release_held_deposit(world.ctx, op_id, reason="again", actor="officer")
    with pytest.raises(InvalidOperationStateError):
        return_held_deposit(
            world.ctx, op_id, address=return_address(world), reason="x", actor="officer"
        )


def test_a_return_pays_the_deposit_back(world: World) -> None:
    world.customer("alice", tier=0)
    op_id = world.deposit("alice", SATS)
    assert world.router.run_operation(op_id).status == "held"
    address = return_address(world)
    op = return_held_deposit(world.ctx, op_id, address=address, reason="refund", actor="officer")
    assert (op.status, op.step) == ("returned", "done")
    assert op.result["return_payout"] == f"return:{op_id}"
    payout = get_payout(world.db.uow, f"return:{op_id}")
    assert payout is not None
    assert (payout.kind, payout.address, payout.amount_sats, payout.status) == (
        "return",
        address,
        SATS,
        "queued",
    )
    assert world.operation(op_id).status == "returned"
    fence = world.mint(op_id)  # a failed record: no mint of it is ever sent
    assert fence is not None and fence.status == "failed" and world.supply() == 0
    with pytest.raises(InvalidOperationStateError):
        release_held_deposit(world.ctx, op_id, reason="oops", actor="officer")
    with pytest.raises(InvalidOperationStateError):
        return_held_deposit(world.ctx, op_id, address=address, reason="again", actor="officer")


def test_a_guard_breach_halts_minting_until_resumed(world: World) -> None:
    world.customer("alice")
    op_id = world.deposit("alice", SATS)
    too_much = MintRecord(
        id="issuance:manual:mint",
        operation_id=op_id,
        customer_id="alice",
        owner=world.treasury,
        amount_sats=SATS + 1,
        reason="issuance:manual",
        status="submitted",
        created_at=world.clock(),
    )
    with pytest.raises(MintGuardError) as breach:
        record_mint(world.ctx, too_much, actor="test")
    assert breach.value.code == 30
    for figure in (str(SATS + 1), str(SATS)):
        assert figure in str(breach.value)
    assert world.halted()
    (alert,) = [a for a in world.alerts() if a.kind == "mint_guard_breach"]
    assert alert.severity == "critical"
    with world.db.uow() as uow:
        assert uow.issuance.get_mint(too_much.id) is None
    assert audited(world, "issuance_minting_halted")
    # Later mints are refused while halted: the operation waits, nothing minted.
    fits = replace(too_much, id="issuance:other:mint", amount_sats=1)
    with pytest.raises(MintingHaltedError) as halted:
        record_mint(world.ctx, fits, actor="test")
    assert halted.value.code == 31
    op = world.router.run_operation(op_id)
    assert (op.status, op.step) == ("waiting", "mint")
    assert world.supply() == 0
    resume_minting(world.db.uow, reason="checked the reserves", actor="officer", at=world.clock())
    assert not world.halted()
    assert audited(world, "issuance_minting_resumed")
    op = world.router.run_operation(op_id)
    assert (op.status, op.step) == ("waiting", "credit")
    assert world.supply() == SATS


def test_the_ledgers_supply_counts_in_the_guard(world: World) -> None:
    world.customer("alice")
    op_id = world.deposit("alice", SATS)
    # Minted outside sluice: our records do not know it, the ledger's supply does.
    world.issuer.mint(world.treasury, 1, reason="outside", command_id="outside-1")
    op = world.router.run_operation(op_id)
    assert (op.status, op.step) == ("stuck", "mint")
    assert world.halted() and world.supply() == 1
    assert world.mint(op_id) is None


def test_a_reorg_after_the_mint_halts_minting(world: World) -> None:
    world.customer("alice")
    op_id = world.deposit("alice", SATS)
    assert world.router.run_operation(op_id).step == "credit"
    txid = op_id.split(":")[1]
    height = world.chain.getrawtransaction(txid)["blockhash"]
    depth = world.chain.tip_height - world.chain.getblock(height)["height"] + 1
    world.chain.reorg(depth, drop_txids=[txid])
    assert world.watcher.run_once().reorgs == 1
    assert world.halted()
    (alert,) = [a for a in world.alerts() if a.kind == "issuance_reserve_reorged"]
    assert alert.severity == "critical" and f"{txid}:0" in alert.message
    assert audited(world, "issuance_minting_halted")


def test_a_crash_between_recording_and_sending_mints_once(world: World) -> None:
    world.customer("alice")
    before_send = world.deposit("alice", SATS)
    after_send = world.deposit("alice", SATS, sender=2)
    for op_id in (before_send, after_send):
        # The mint step recorded its mint (guard checked), then the process died.
        record_mint(world.ctx, _step_mint(world, op_id), actor="test")
    # The second one even reached the ledger, but its result was never recorded.
    world.issuer.mint(
        world.treasury, SATS, reason=f"issuance:{after_send}", command_id=mint_id(after_send)
    )
    assert world.supply() == SATS
    for op_id in (before_send, after_send):
        op = world.router.run_operation(op_id)
        assert (op.status, op.step) == ("waiting", "credit")
        mint = world.mint(op_id)
        assert mint is not None and mint.status == "committed" and mint.update_id
    assert world.supply() == 2 * SATS  # each once: the same command ids
    assert world.treasury_sats() == 2 * SATS


def _step_mint(world: World, op_id: str) -> MintRecord:
    return MintRecord(
        id=mint_id(op_id),
        operation_id=op_id,
        customer_id="alice",
        owner=world.treasury,
        amount_sats=SATS,
        reason=f"issuance:{op_id}",
        status="submitted",
        created_at=world.clock(),
    )


THREADS = 8
EACH = 10_000


def test_concurrent_mints_never_exceed_the_reserves(
    postgres_url: str, wallet: EmbitCustodyWallet
) -> None:
    """PostgreSQL: THREADS mints at once against reserves that cover only some of them; the
    guard's lock makes them check one after the other. Minting halts at the first breach, so
    the mints that went in are those checked before it: together never above the reserves."""
    db = bootstrap.database(postgres_url)
    try:
        world = World(db, wallet, KycRegistry())
        world.customer("alice")
        reserve = EACH * 3 + EACH // 2  # covers three mints, not four
        op_id = world.deposit("alice", reserve)
        barrier = threading.Barrier(THREADS)
        outcomes: list[str] = []
        lock = threading.Lock()

        def mint(n: int) -> None:
            record = replace(
                _step_mint(world, op_id),
                id=f"issuance:race-{n}:mint",
                reason=f"issuance:race-{n}",
                amount_sats=EACH,
            )
            barrier.wait()
            try:
                record_mint(world.ctx, record, actor="test")
                outcome = "recorded"
            except MintGuardError:
                outcome = "breach"
            except MintingHaltedError:
                outcome = "halted"
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=mint, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(outcomes) == THREADS
        assert outcomes.count("recorded") == 3
        assert outcomes.count("breach") >= 1
        with db.uow() as uow:
            figures = uow.issuance.guard_figures()
            assert uow.issuance.minting_state().minting_halted
        assert figures.supply == 3 * EACH <= figures.reserves == reserve
    finally:
        db.dispose()


# --- resending, compensation and the reserve at mint time (review C2, C3, M4) --------------------

LATER = timedelta(hours=25)  # past the ledger's 24 h deduplication window


def _later(world: World) -> None:
    """A day and more passes, on sluice's clock and the ledger's (which then forgets the
    command ids it deduplicated)."""
    world.clock.now += LATER
    world.ledger.advance(LATER.total_seconds())


def test_a_mint_whose_answer_was_lost_is_not_resent_after_the_resend_window(
    world: World,
) -> None:
    world.customer("alice")
    op_id = world.deposit("alice", SATS)
    record_mint(world.ctx, _step_mint(world, op_id), actor="test")
    # Sent, committed on the ledger, and the answer lost (the step answered retry).
    world.issuer.mint(world.treasury, SATS, reason=f"issuance:{op_id}", command_id=mint_id(op_id))
    _later(world)
    op = world.router.run_operation(op_id)
    assert (op.status, op.step) == ("stuck", "mint")
    assert "not sent again" in (op.last_error or "")
    assert world.supply() == SATS  # minted once: nothing resent the ledger no longer remembers
    mint = world.mint(op_id)
    assert mint is not None and mint.status == "submitted"
    assert [a.severity for a in world.alerts() if a.kind == "issuance_stuck"] == ["critical"]


def test_a_mint_ingestion_credited_counts_as_committed_and_is_never_resent(
    world: World,
) -> None:
    world.customer("alice")
    op_id = world.deposit("alice", SATS)
    record_mint(world.ctx, _step_mint(world, op_id), actor="test")
    world.issuer.mint(world.treasury, SATS, reason=f"issuance:{op_id}", command_id=mint_id(op_id))
    world.credit(op_id)  # booked by ingestion while the record still said submitted
    _later(world)
    op = world.router.run_operation(op_id)
    assert (op.status, op.step) == ("completed", "done"), op.last_error
    assert world.supply() == SATS


def test_a_compensated_deposit_is_fenced_against_a_late_mint_step(world: World) -> None:
    world.customer("alice")
    op_id = world.deposit("alice", SATS)
    halt_minting(
        world.db.uow, reason="test", kind="test", details={}, at=world.clock(), actor="test"
    )
    at_mint = world.router.run_operation(op_id)
    assert (at_mint.status, at_mint.step) == ("waiting", "mint")
    resume_minting(world.db.uow, reason="test", actor="officer", at=world.clock())
    # The operator's compensation runs while a router's mint step is still under way.
    outcome = DEFINITION.compensate(world.ctx, at_mint)
    assert (outcome.kind, outcome.status) == ("done", "compensated")
    fence = world.mint(op_id)
    assert fence is not None and fence.status == "failed"
    late = DEFINITION.step("mint")(world.ctx, at_mint)  # type: ignore[misc]
    assert late.kind == "fail" and "compensated" in (late.error or "")
    assert world.supply() == 0 and world.treasury_sats() == 0
    # Compensating again is harmless; a minted deposit is still refused.
    assert DEFINITION.compensate(world.ctx, at_mint).kind == "done"
    minted = world.deposit("alice", SATS, sender=2)
    assert world.router.run_operation(minted).step == "credit"
    with pytest.raises(InvalidOperationStateError) as refused:
        DEFINITION.compensate(world.ctx, world.operation(minted))
    assert refused.value.code == 41


def test_a_mint_after_minting_resumes_waits_while_its_deposit_is_reorged(world: World) -> None:
    world.customer("alice")
    op_id = world.deposit("alice", SATS)
    halt_minting(
        world.db.uow, reason="test", kind="test", details={}, at=world.clock(), actor="test"
    )
    assert world.router.run_operation(op_id).step == "mint"  # reserved (credited), waiting
    txid = op_id.split(":")[1]
    height = world.chain.getblock(world.chain.getrawtransaction(txid)["blockhash"])["height"]
    world.chain.reorg(world.chain.tip_height - height + 1, drop_txids=[txid])
    assert world.watcher.run_once().reorgs == 1
    # Other reserves: the aggregate guard alone would let the mint through.
    world.deposit("alice", 2 * SATS, sender=2)
    resume_minting(world.db.uow, reason="another cause", actor="officer", at=world.clock())
    op = world.router.run_operation(op_id)
    assert (op.status, op.step) == ("waiting", "mint")
    last = world.steps(op_id)[-1]
    assert (last.step, last.outcome, dict(last.detail)) == (
        "mint",
        "wait",
        {"reserve": "not credited"},
    )
    assert "reorged, not credited" in (last.error or "")
    assert world.mint(op_id) is None and world.supply() == 0


@pytest.mark.parametrize("window_s", [0.0, 24 * 3600.0, 30 * 3600.0])
def test_the_resend_window_stays_inside_the_ledgers_deduplication_window(window_s: float) -> None:
    with pytest.raises(ValueError, match="deduplication window"):
        IssuanceSettings(resend_window_s=window_s)
    assert IssuanceSettings().resend_window_s == 12 * 3600.0
