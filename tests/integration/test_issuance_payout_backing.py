"""Custody payouts other than redemptions (an operator's, a held deposit's return) against the
mint guard, through the real watcher, router, embedded ledger and payouts service, on SQLite and
PostgreSQL.

Covers: an operator payout that would spend Bitcoin backing iSTSi in circulation, or a customer's
deposit not minted yet (waiting at KYC, held for an officer), is refused (30, nothing queued,
the refusal audited, minting not halted); one within the excess (the exchange's own Bitcoin, on
a change address) is queued and counts as a pending outflow; a held deposit released after such
payouts is still minted (the mint's rule does not count the deposit being minted); a replay of
a queued payout answers it without a check; a return of a held deposit is allowed with no excess
at all and is then counted once (as its payout, not also as owed); a cancelled payout stops
counting; and the guard's figures count such payouts until the watcher saw their batch's inputs
spent.
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
from sluice.services.btc_addresses import change_address
from sluice.services.btc_payouts import PayoutView, cancel_payout, request_payout
from sluice.services.compliance import KycRegistry
from sluice.services.issuance_held import release_held_deposit, return_held_deposit
from sluice.store.bitcoin_tables import btc_outputs, btc_payouts
from sluice.store.rows import ts
from tests.integration.issuance_deposit_world import CHAIN, World, sender_script

MINTED = 200_000
HELD = 125_000
SURPLUS = 125_000  # the exchange's own Bitcoin, on a change address
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
    """Alice's deposit minted (backing: MINTED sats), Bob's held (owed: HELD sats, to be minted
    or returned); answers the held deposit's operation id."""
    world.customer("alice")
    world.customer("bob", tier=0)  # tier 0 may not mint: his deposit is held
    minted = world.deposit("alice", MINTED)
    assert world.router.run_operation(minted).status == "waiting"  # minted, to be credited
    held = world.deposit("bob", HELD, sender=2)
    assert world.router.run_operation(held).status == "held"
    assert world.supply() == MINTED
    assert figures(world) == GuardFigures(
        supply=MINTED,
        reserves=MINTED + HELD,
        pending_redemptions=0,
        pending_payouts=0,
        unminted_deposits=HELD,
    )
    return held


def surplus(world: World, sats: int = SURPLUS) -> None:
    """The exchange's own Bitcoin: paid to a custody change address (no deposit, no customer),
    confirmed. It is reserves nobody is owed."""
    with world.db.uow() as uow:
        change = change_address(uow, world.wallet, world.clock)
        uow.commit()
    world.chain.fund(change.script_hex, sats, mine=True)
    world.confirm()


def test_an_operator_payout_may_not_spend_a_deposit_not_minted_yet(world: World) -> None:
    held = minted_and_held(world)
    # Bob's held deposit is the only Bitcoin beyond the backing, and it is owed: refused.
    with pytest.raises(MintGuardError) as refused:
        operator_payout(world, "ops-1", 60_000)
    assert refused.value.code == 30
    message = str(refused.value)
    assert f"plus {HELD} sats of customers' deposits not minted yet" in message
    assert "at most 0 sats of excess Bitcoin" in message
    with world.db.uow() as uow:
        assert uow.btc_payouts.get_payout("ops-1") is None
    (record,) = audited(world, "btc_payout_refused")
    assert record.entry.operation_id == "ops-1" and "MintGuardError" in (record.entry.error or "")
    assert not world.halted()
    # Released, it is minted: the mint's own rule does not count it against itself.
    release_held_deposit(world.ctx, held, reason="known sender", actor="officer")
    assert world.router.run_operation(held).status == "waiting"
    mint = world.mint(held)
    assert mint is not None and mint.status == "committed"
    assert world.supply() == MINTED + HELD
    assert figures(world).unminted_deposits == 0
    assert not world.halted()


def test_a_deposit_not_yet_through_kyc_is_counted_and_kept_from_payouts_before_the_first_mint(
    world: World,
) -> None:
    world.customer("alice")
    waiting = world.deposit("alice", MINTED)  # confirmed: its operation is open at kyc
    assert world.operation(waiting).step == "kyc"
    assert figures(world) == GuardFigures(
        supply=0,
        reserves=MINTED,
        pending_redemptions=0,
        pending_payouts=0,
        unminted_deposits=MINTED,
    )
    # No iSTSi in circulation yet, but the deposit is owed (minted or returned later): every
    # payout is checked, so an operator payout may not spend it before the first mint either.
    with pytest.raises(MintGuardError, match=f"{MINTED} sats of customers' deposits not minted"):
        operator_payout(world, "ops-1", 60_000)


def test_an_operator_payout_may_spend_the_excess_only_and_then_counts_as_pending(
    world: World,
) -> None:
    held = minted_and_held(world)
    surplus(world)
    assert figures(world).reserves == MINTED + HELD + SURPLUS
    # Into what is owed (the backing and Bob's deposit): refused, nothing queued, audited.
    with pytest.raises(MintGuardError) as refused:
        operator_payout(world, "ops-1", SURPLUS + 1)
    assert refused.value.code == 30
    message = str(refused.value)
    for figure in (SURPLUS + 1, MINTED, MINTED + HELD + SURPLUS, HELD, SURPLUS):
        assert str(figure) in message
    assert audited(world, "btc_payout_requested") == []
    assert not world.halted()

    # Within the excess: queued, and pending from now on.
    paid = operator_payout(world, "ops-1", 70_000)
    assert paid.status == "queued"
    assert figures(world) == GuardFigures(
        supply=MINTED,
        reserves=MINTED + HELD + SURPLUS,
        pending_redemptions=0,
        pending_payouts=70_000,
        unminted_deposits=HELD,
    )
    # Its replay is answered as it is, without a check (it would not fit a second time).
    assert operator_payout(world, "ops-1", 70_000) == paid
    with pytest.raises(MintGuardError):  # 55 000 sats of excess are left
        operator_payout(world, "ops-2", SURPLUS - 70_000 + 1)
    assert operator_payout(world, "ops-2", SURPLUS - 70_000).status == "queued"
    assert len(audited(world, "btc_payout_requested")) == 2

    # An officer releases Bob's deposit after those payouts were requested: its Bitcoin was
    # kept out of them, so it is minted and the guard is not breached.
    release_held_deposit(world.ctx, held, reason="known sender", actor="officer")
    assert world.router.run_operation(held).status == "waiting"
    mint = world.mint(held)
    assert mint is not None and mint.status == "committed"
    assert world.supply() == MINTED + HELD
    assert not world.halted()
    assert figures(world) == GuardFigures(
        supply=MINTED + HELD,
        reserves=MINTED + HELD + SURPLUS,
        pending_redemptions=0,
        pending_payouts=SURPLUS,
        unminted_deposits=0,
    )


def test_a_return_of_a_held_deposit_passes_and_is_then_counted_once(world: World) -> None:
    held = minted_and_held(world)
    # No excess at all: the deposit's own amount does not count against its return.
    op = return_held_deposit(world.ctx, held, address=address(world), reason="pay back", actor="o")
    assert (op.status, op.step) == ("returned", "done")
    assert figures(world) == GuardFigures(
        supply=MINTED,
        reserves=MINTED + HELD,
        pending_redemptions=0,
        pending_payouts=HELD,
        unminted_deposits=0,
    )
    # No excess: no operator payout fits, however small.
    with pytest.raises(MintGuardError) as refused:
        operator_payout(world, "ops-1", 60_000)
    assert refused.value.code == 30
    # The exchange's own Bitcoin may be paid out in full: the returned deposit is counted once
    # (as the return payout), not also as owed for a mint.
    surplus(world)
    assert operator_payout(world, "ops-1", SURPLUS).status == "queued"
    with pytest.raises(MintGuardError):
        operator_payout(world, "ops-2", 60_000)
    assert not world.halted()


def test_a_return_payout_requested_while_still_held_is_counted_once(world: World) -> None:
    """A return left half-done by an older version: its payout queued, the operation held."""
    held = minted_and_held(world)
    returned = request_payout(
        world.db.uow,
        world.wallet,
        world.settings,
        payout_id=f"return:{held}",
        address=address(world),
        amount_sats=HELD,
        kind="return",
        requested_by="officer",
        clock=world.clock,
    )
    assert returned.status == "queued"
    assert world.operation(held).status == "held"
    assert figures(world) == GuardFigures(
        supply=MINTED,
        reserves=MINTED + HELD,
        pending_redemptions=0,
        pending_payouts=HELD,
        unminted_deposits=0,
    )
    surplus(world)
    assert operator_payout(world, "ops-1", SURPLUS).status == "queued"
    # Its payout cancelled, the held deposit is owed again.
    cancel_payout(world.db.uow, payout_id=f"return:{held}", cancelled_by="ops", clock=world.clock)
    assert figures(world).unminted_deposits == HELD


def test_a_cancelled_payout_stops_counting(world: World) -> None:
    minted_and_held(world)
    surplus(world)
    operator_payout(world, "ops-1", SURPLUS)
    assert figures(world).pending_payouts == SURPLUS
    cancel_payout(world.db.uow, payout_id="ops-1", cancelled_by="ops", clock=world.clock)
    assert figures(world).pending_payouts == 0
    assert operator_payout(world, "ops-2", SURPLUS).status == "queued"


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
