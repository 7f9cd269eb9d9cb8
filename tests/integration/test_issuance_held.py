"""An officer's return of a held (or compensated, never minted) Bitcoin deposit
(services/issuance_held) and the reorg warning of services/issuance_intake, through the real
watcher, router, embedded ledger and KYC registry, on SQLite and PostgreSQL.

Covers: a return moves the operation out of ``held`` before its payout is requested, so a crash
between the two leaves it ``returned`` at ``returning`` — release refused, the router leaves it,
the same call finishes it with one payout — and a release is refused whenever a payout
``return:<op>`` exists; a deposit a reorg removed raises a warning alert and cannot be returned;
a listed return address is refused (22) and audited; a compensated deposit nothing was minted
for can be returned (once), unless its sender is listed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sluice import bootstrap
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.errors import AddressBlacklistedError, InvalidOperationStateError
from sluice.services import issuance_held
from sluice.services.audit import list_audit_records
from sluice.services.btc_payouts import request_payout
from sluice.services.compliance import KycRegistry
from sluice.services.issuance_deposit import DEFINITION
from sluice.services.issuance_held import release_held_deposit, return_held_deposit
from sluice.services.issuance_overrides import compensate_operation
from tests.integration.issuance_deposit_world import CHAIN, World, sender_script, write_sanctions

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


def address(world: World, n: int = 0x42) -> str:
    found = world.wallet.address_of(sender_script(n))
    assert found is not None
    return found


def payouts(world: World, op_id: str) -> list[Any]:
    with world.db.uow() as uow:
        return [p for p in uow.btc_payouts.payouts() if p.id == f"return:{op_id}"]


def held(world: World) -> str:
    world.customer("alice", tier=0)
    op_id = world.deposit("alice", SATS)
    assert world.router.run_operation(op_id).status == "held"
    return op_id


def listed(world: World, tmp_path: Path, address: str) -> None:
    world.ctx = replace(
        world.ctx, registry=KycRegistry(screen=write_sanctions(tmp_path / "sdn", address))
    )
    world.router.ctx = world.ctx


def test_a_crash_between_moving_and_paying_resumes_and_is_never_released(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    op_id = held(world)
    to = address(world)

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("crash before the payout was requested")

    monkeypatch.setattr(issuance_held, "request_payout", crash)
    with pytest.raises(RuntimeError):
        return_held_deposit(world.ctx, op_id, address=to, reason="refund", actor="officer-a")
    monkeypatch.undo()
    # Out of held before any payout: a release (officer B) is refused, the router leaves it.
    op = world.operation(op_id)
    assert (op.status, op.step) == ("returned", "returning")
    with pytest.raises(InvalidOperationStateError) as refused:
        release_held_deposit(world.ctx, op_id, reason="mint it", actor="officer-b")
    assert refused.value.code == 41
    assert world.router.run_operation(op_id).status == "returned"
    fence = world.mint(op_id)
    assert fence is not None and fence.status == "failed"  # no mint of it is ever sent
    # Another address is not taken while it resumes; the same call finishes it.
    with pytest.raises(InvalidOperationStateError):
        return_held_deposit(
            world.ctx, op_id, address=address(world, 0x43), reason="x", actor="officer-a"
        )
    op = return_held_deposit(world.ctx, op_id, address=to, reason="refund", actor="officer-a")
    assert (op.status, op.step) == ("returned", "done")
    (payout,) = payouts(world, op_id)
    assert (payout.kind, payout.address, payout.amount_sats) == ("return", to, SATS)
    assert world.operation(op_id).step == "done"
    assert world.supply() == 0
    assert len(audited(world, "issuance_deposit_returned")) == 1
    with pytest.raises(InvalidOperationStateError):
        return_held_deposit(world.ctx, op_id, address=to, reason="again", actor="officer-a")


def test_a_release_is_refused_once_a_return_payout_exists(world: World) -> None:
    # A return left half-done (payout queued, operation still held), as an older version could.
    op_id = held(world)
    request_payout(
        world.ctx.uow,
        world.ctx.wallet,
        world.ctx.bitcoin,
        payout_id=f"return:{op_id}",
        address=address(world),
        amount_sats=SATS,
        kind="return",
        requested_by="officer-a",
        clock=world.clock,
    )
    with pytest.raises(InvalidOperationStateError) as refused:
        release_held_deposit(world.ctx, op_id, reason="mint it", actor="officer-b")
    assert refused.value.code == 41 and f"return:{op_id}" in str(refused.value)
    assert world.operation(op_id).status == "held"
    assert world.router.run_operation(op_id).status == "held"
    assert world.mint(op_id) is None and world.supply() == 0
    # The return itself finishes (same payout id, same address).
    op = return_held_deposit(
        world.ctx, op_id, address=address(world), reason="refund", actor="officer-a"
    )
    assert (op.status, op.step) == ("returned", "done")
    assert len(payouts(world, op_id)) == 1


def test_a_deposit_a_reorg_removed_warns_and_is_not_returned(world: World) -> None:
    op_id = held(world)
    txid = op_id.split(":")[1]
    block = world.chain.getrawtransaction(txid)["blockhash"]
    depth = world.chain.tip_height - world.chain.getblock(block)["height"] + 1
    world.chain.reorg(depth, drop_txids=[txid])
    assert world.watcher.run_once().reorgs == 1
    assert not world.halted()  # nothing was minted against it
    (alert,) = [a for a in world.alerts() if a.kind == "issuance_deposit_reorged"]
    assert alert.severity == "warning" and f"{txid}:0" in alert.message and "held" in alert.message
    with pytest.raises(InvalidOperationStateError) as refused:
        return_held_deposit(
            world.ctx, op_id, address=address(world), reason="refund", actor="officer"
        )
    assert refused.value.code == 41 and "reorged" in str(refused.value)
    assert payouts(world, op_id) == []
    assert world.operation(op_id).status == "held"


def test_an_unminted_deposit_a_reorg_removed_warns(world: World) -> None:
    world.customer("alice")
    op_id = world.deposit("alice", SATS)  # pending at kyc: not minted
    txid = op_id.split(":")[1]
    block = world.chain.getrawtransaction(txid)["blockhash"]
    depth = world.chain.tip_height - world.chain.getblock(block)["height"] + 1
    world.chain.reorg(depth, drop_txids=[txid])
    assert world.watcher.run_once().reorgs == 1
    (alert,) = [a for a in world.alerts() if a.kind == "issuance_deposit_reorged"]
    assert alert.severity == "warning" and "pending at kyc" in alert.message


def test_a_listed_return_address_is_refused_and_audited(world: World, tmp_path: Path) -> None:
    evil = address(world, 0x66)
    listed(world, tmp_path, evil)
    op_id = held(world)
    with pytest.raises(AddressBlacklistedError) as refused:
        return_held_deposit(world.ctx, op_id, address=evil, reason="refund", actor="officer")
    assert refused.value.code == 22 and evil in str(refused.value)
    (record,) = audited(world, "issuance_deposit_return_refused")
    assert record.entry.error and record.entry.parameters["address"] == evil
    assert payouts(world, op_id) == []
    assert world.operation(op_id).status == "held"
    # Another address is fine.
    op = return_held_deposit(
        world.ctx, op_id, address=address(world), reason="refund", actor="officer"
    )
    assert op.status == "returned"


def test_a_compensated_unminted_deposit_can_be_returned_once(world: World) -> None:
    op_id = held(world)
    op = compensate_operation(
        world.ctx, {"bitcoin_deposit": DEFINITION}, op_id, reason="closing", actor="operator"
    )
    assert op.status == "compensated"
    to = address(world)
    op = return_held_deposit(world.ctx, op_id, address=to, reason="pay back", actor="officer")
    assert (op.status, op.step) == ("returned", "done")
    assert op.result["returned_from"] == "compensated"
    (payout,) = payouts(world, op_id)
    assert (payout.kind, payout.address, payout.amount_sats) == ("return", to, SATS)
    with pytest.raises(InvalidOperationStateError):
        return_held_deposit(world.ctx, op_id, address=to, reason="again", actor="officer")
    assert len(payouts(world, op_id)) == 1 and world.supply() == 0


def test_a_compensated_deposit_of_a_listed_sender_is_not_returned(
    world: World, tmp_path: Path
) -> None:
    evil = address(world, 0x66)
    listed(world, tmp_path, evil)
    world.customer("alice")
    op_id = world.deposit("alice", SATS, sender=0x66)
    assert world.router.run_operation(op_id).status == "held"
    compensate_operation(
        world.ctx, {"bitcoin_deposit": DEFINITION}, op_id, reason="closing", actor="operator"
    )
    with pytest.raises(InvalidOperationStateError) as refused:
        return_held_deposit(
            world.ctx, op_id, address=address(world), reason="pay back", actor="officer"
        )
    assert refused.value.code == 41 and evil in str(refused.value)
    assert payouts(world, op_id) == []
    assert world.operation(op_id).status == "compensated"
