"""Custody payouts other than redemptions (an operator's, a held deposit's return) against the
mint guard, through the real watcher, router, embedded ledger and payouts service, on SQLite and
PostgreSQL.

Covers: an operator payout that would spend Bitcoin backing iSTSi in circulation is refused
(30, nothing queued, the refusal audited, minting not halted); one within the excess is queued
and counts as a pending outflow, so a later mint that it leaves uncovered is refused; a replay of
a queued payout answers it without a check; a return of a held deposit (Bitcoin nothing was
minted for) is queued and uses up the excess; a cancelled payout stops counting; and the guard's
figures count such payouts until the watcher saw their batch's inputs spent.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.errors import MintGuardError
from sluice.ports.issuance import GuardFigures
from sluice.services.audit import list_audit_records
from sluice.services.btc_payouts import PayoutView, cancel_payout, request_payout
from sluice.services.compliance import KycRegistry
from sluice.services.issuance_held import release_held_deposit, return_held_deposit
from sluice.store.bitcoin_tables import btc_outputs, btc_payouts
from sluice.store.rows import ts
from tests.integration.issuance_deposit_world import CHAIN, World, sender_script

MINTED = 200_000
HELD = 125_000
WHEN = datetime(2026, 12, 5, 6, 0, 0, tzinfo=UTC)


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


def address(world: World, n: int = 0x42) -> str:
    found = world.wallet.address_of(sender_script(n))
    assert found is not None
    return found


def operator_payout(world: World, payout_id: str, amount: int) -> PayoutView:
    return request_payout(
        world.db.uow,
        world.wallet,
        world.settings,
        payout_id=payout_id,
        address=address(world),
        amount_sats=amount,
        kind="operator",
        requested_by="ops",
        clock=world.clock,
    )


def figures(world: World) -> GuardFigures:
    with world.db.uow() as uow:
        return uow.issuance.guard_figures()


def audited(world: World, name: str) -> list[Any]:
    return [r for r in list_audit_records(world.db.uow, limit=10_000) if r.entry.operation == name]


def minted_and_held(world: World) -> str:
    """Alice's deposit minted (backing: MINTED sats), Bob's held (excess: HELD sats); answers
    the held deposit's operation id."""
    world.customer("alice")
    world.customer("bob", tier=0)  # tier 0 may not mint: his deposit is held
    minted = world.deposit("alice", MINTED)
    assert world.router.run_operation(minted).status == "waiting"  # minted, to be credited
    held = world.deposit("bob", HELD, sender=2)
    assert world.router.run_operation(held).status == "held"
    assert world.supply() == MINTED
    assert figures(world) == GuardFigures(
        supply=MINTED, reserves=MINTED + HELD, pending_redemptions=0, pending_payouts=0
    )
    return held


def test_an_operator_payout_may_spend_the_excess_only_and_then_counts_as_pending(
    world: World,
) -> None:
    held = minted_and_held(world)
    # Into the backing: refused, nothing queued, audited, minting goes on.
    with pytest.raises(MintGuardError) as refused:
        operator_payout(world, "ops-1", HELD + 1)
    assert refused.value.code == 30
    message = str(refused.value)
    for figure in (HELD + 1, MINTED, MINTED + HELD, HELD):
        assert str(figure) in message
    with world.db.uow() as uow:
        assert uow.btc_payouts.get_payout("ops-1") is None
    (record,) = audited(world, "btc_payout_refused")
    assert record.entry.operation_id == "ops-1" and "MintGuardError" in (record.entry.error or "")
    assert audited(world, "btc_payout_requested") == []
    assert not world.halted()

    # Within the excess: queued, and pending from now on.
    paid = operator_payout(world, "ops-1", 70_000)
    assert paid.status == "queued"
    assert figures(world) == GuardFigures(
        supply=MINTED, reserves=MINTED + HELD, pending_redemptions=0, pending_payouts=70_000
    )
    # Its replay is answered as it is, without a check (it would not fit a second time).
    assert operator_payout(world, "ops-1", 70_000) == paid
    with pytest.raises(MintGuardError):  # 55 000 sats of excess are left
        operator_payout(world, "ops-2", HELD - 70_000 + 1)
    assert operator_payout(world, "ops-2", HELD - 70_000).status == "queued"
    assert len(audited(world, "btc_payout_requested")) == 2

    # An officer releases Bob's deposit: its Bitcoin is being paid out, so its mint would not
    # be backed. The mint guard sees the pending payout and refuses it.
    release_held_deposit(world.ctx, held, reason="known sender", actor="officer")
    op = world.router.run_operation(held)
    assert op.status == "stuck" and "pending" in (op.last_error or "")
    assert world.mint(held) is None
    assert world.supply() == MINTED
    assert world.halted()


def test_a_return_of_a_held_deposit_passes_and_uses_up_the_excess(world: World) -> None:
    held = minted_and_held(world)
    op = return_held_deposit(world.ctx, held, address=address(world), reason="pay back", actor="o")
    assert (op.status, op.step) == ("returned", "done")
    assert figures(world) == GuardFigures(
        supply=MINTED, reserves=MINTED + HELD, pending_redemptions=0, pending_payouts=HELD
    )
    # The excess is gone: no operator payout fits, however small.
    with pytest.raises(MintGuardError) as refused:
        operator_payout(world, "ops-1", 60_000)
    assert refused.value.code == 30
    assert not world.halted()


def test_a_cancelled_payout_stops_counting(world: World) -> None:
    minted_and_held(world)
    operator_payout(world, "ops-1", HELD)
    assert figures(world).pending_payouts == HELD
    cancel_payout(world.db.uow, payout_id="ops-1", cancelled_by="ops", clock=world.clock)
    assert figures(world).pending_payouts == 0
    assert operator_payout(world, "ops-2", HELD).status == "queued"


def _output(db: bootstrap.Database, n: int, amount: int, *, batch: str, spent: bool) -> None:
    with db.engine.begin() as c:
        c.execute(
            sa.insert(btc_outputs).values(
                txid=f"{0x160000 + n:064x}",
                vout=0,
                kind="deposit",
                address="bcrt1q0addr0000",
                script_hex="00",
                customer_id="alice",
                amount_sats=amount,
                status="credited",
                block_height=1,
                block_hash="b1" * 32,
                input_outpoints="[]",
                first_seen_at=ts(WHEN),
                confirmed_at=None,
                credited_at=None,
                reserved_by=batch,
                spent_txid=f"{0xDEAD:064x}" if spent else None,
                spent_height=2 if spent else None,
                spent_block_hash="b2" * 32 if spent else None,
            )
        )


def test_other_payouts_are_pending_until_the_watcher_sees_their_inputs_spent(
    database_url: str,
) -> None:
    """A payout of another kind counts from its request (no batch yet) until a custody output
    its batch reserved is recorded spent: whatever its status says (the payouts worker may see
    the block before or after the watcher). Cancelled ones never count; redemptions are counted
    by their operations, not here."""
    db = bootstrap.database(database_url)
    try:
        _output(db, 1, 50_000, batch="b-paid", spent=True)
        _output(db, 2, 60_000, batch="b-watcher-first", spent=True)
        _output(db, 3, 70_000, batch="b-worker-first", spent=False)
        _output(db, 4, 80_000, batch="b-broadcast", spent=False)
        rows = [
            ("paid", "operator", "completed", "b-paid", 1_000),
            ("watcher-first", "return", "broadcast", "b-watcher-first", 2_000),
            ("worker-first", "operator", "mined", "b-worker-first", 4_000),
            ("broadcast", "return", "broadcast", "b-broadcast", 8_000),
            ("queued", "operator", "queued", None, 16_000),
            ("waiting-fee", "operator", "waiting_fee", None, 32_000),
            ("cancelled", "operator", "cancelled", None, 64_000),
            ("redemption", "redemption", "queued", None, 128_000),
        ]
        with db.engine.begin() as c:
            for name, kind, status, batch, amount in rows:
                c.execute(
                    sa.insert(btc_payouts).values(
                        id=f"p-{name}",
                        kind=kind,
                        address="bcrt1q0dest0000",
                        script_hex="00",
                        amount_sats=amount,
                        status=status,
                        batch_id=batch,
                        requested_by="test",
                        requested_at=ts(WHEN),
                    )
                )
        with db.uow() as uow:
            assert uow.issuance.guard_figures() == GuardFigures(
                supply=0,
                reserves=70_000 + 80_000,
                pending_redemptions=0,
                pending_payouts=4_000 + 8_000 + 16_000 + 32_000,
            )
    finally:
        db.dispose()
