"""Events of the compliance hold of an iSTSi Bitcoin deposit, on SQLite and PostgreSQL.

Through the real watcher, router, embedded ledger and KYC registry (the world of
``test_issuance_held``): the router's ``kyc`` step holds a deposit (a listed sender, unreadable
inputs, the registry's refusal) and an officer releases or returns it, or an operator compensates
or resolves it. Each action leaves exactly its events, in the transaction that moves the
operation: the same action crashing before its commit leaves none, and done again after, it
writes them once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from sluice import bootstrap
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.errors import InvalidOperationStateError
from sluice.domain.events import EVENT_TYPES, Event
from sluice.services.compliance import KycRegistry
from sluice.services.issuance_deposit import DEFINITION
from sluice.services.issuance_held import release_held_deposit, return_held_deposit
from sluice.services.issuance_overrides import compensate_operation, resolve_operation
from tests.integration.issuance_deposit_world import CHAIN, World, sender_script, write_sanctions

SATS = 125_000
DEFINITIONS = {"bitcoin_deposit": DEFINITION}


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


# --- reading the outbox ------------------------------------------------------------------------


def all_events(world: World) -> list[Event]:
    with world.db.uow() as uow:
        return [row.event for row in uow.events.find(limit=100_000)]


class Outbox:
    """The events written since the last :meth:`new` (or since it was made)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.seen = {e.event_id for e in all_events(world)}

    def new(self) -> list[Event]:
        found = [e for e in all_events(self.world) if e.event_id not in self.seen]
        self.seen |= {e.event_id for e in found}
        for event in found:
            kind = EVENT_TYPES[event.type]
            assert (event.aggregate_type, event.schema_version) == (kind.aggregate_type, 1)
            event.encode()
        return found


def types(found: Sequence[Event]) -> list[str]:
    return sorted(e.type for e in found)


def one(found: Sequence[Event], type: str) -> Event:
    (event,) = [e for e in found if e.type == type]
    return event


# --- a commit that dies when it would commit a given event -------------------------------------


class CrashOn:
    """A unit of work factory whose transactions die before committing when they wrote an
    event of ``type`` (once): the unit of work rolls back, as after a crash."""

    def __init__(self, inner: Any, type: str) -> None:
        self.inner = inner
        self.type = type
        self.crashed = 0

    def __call__(self) -> _CrashingUow:
        return _CrashingUow(self.inner(), self)


class _Events:
    def __init__(self, inner: Any, written: list[str]) -> None:
        self._inner = inner
        self._written = written

    def add(self, events: Sequence[Event]) -> None:
        self._written.extend(e.type for e in events)
        self._inner.add(events)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _CrashingUow:
    def __init__(self, inner: Any, owner: CrashOn) -> None:
        self._inner = inner
        self._owner = owner
        self._uow: Any = None
        self._written: list[str] = []

    def __enter__(self) -> Any:
        self._uow = self._inner.__enter__()
        self.events = _Events(self._uow.events, self._written)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._inner.__exit__(kind, error, traceback)

    def commit(self) -> None:
        if self._owner.crashed == 0 and self._owner.type in self._written:
            self._owner.crashed += 1
            raise RuntimeError(f"crashed before committing {self._owner.type} (test)")
        self._uow.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._uow, name)


def crashing(world: World, type: str) -> CrashOn:
    """The world's services on a unit of work that dies before committing ``type``."""
    crash = CrashOn(world.db.uow, type)
    world.ctx = replace(world.ctx, uow=crash)
    world.router.ctx = world.ctx
    return crash


def healed(world: World) -> None:
    world.ctx = replace(world.ctx, uow=world.db.uow)
    world.router.ctx = world.ctx
    world.clock.now += timedelta(hours=1)  # past the crashed step's lease


# --- worlds --------------------------------------------------------------------------------------


def address(world: World, n: int = 0x42) -> str:
    found = world.wallet.address_of(sender_script(n))
    assert found is not None
    return found


def listed(world: World, tmp_path: Path, address: str) -> None:
    world.ctx = replace(
        world.ctx, registry=KycRegistry(screen=write_sanctions(tmp_path / "sdn", address))
    )
    world.router.ctx = world.ctx


def held_by_the_registry(world: World) -> str:
    world.customer("alice", tier=0)
    op_id = world.deposit("alice", SATS)
    assert world.router.run_operation(op_id).status == "held"
    return op_id


def outpoint_of(op_id: str) -> str:
    return op_id.removeprefix("btc-deposit:")


# --- holds ---------------------------------------------------------------------------------------


def test_a_listed_sender_holds_the_deposit_with_one_event_and_a_crashed_hold_writes_none(
    world: World, tmp_path: Path
) -> None:
    evil = address(world, 0x66)
    listed(world, tmp_path, evil)
    world.customer("alice")
    op_id = world.deposit("alice", SATS, sender=0x66)
    outbox = Outbox(world)
    # The router's move to held dies before its commit: the operation is not held, no event.
    crash = crashing(world, "btc_deposit_held")
    with pytest.raises(RuntimeError, match="crashed"):
        world.router.run_operation(op_id)
    assert crash.crashed == 1
    assert world.operation(op_id).status != "held"
    assert outbox.new() == []
    # Run again: held, with exactly its event.
    healed(world)
    listed(world, tmp_path, evil)
    assert world.router.run_operation(op_id).status == "held"
    found = outbox.new()
    assert types(found) == ["btc_deposit_held"]
    held = one(found, "btc_deposit_held")
    txid = world.operation(op_id).params["txid"]
    assert (held.aggregate_type, held.aggregate_id) == ("btc_deposit", f"{txid}:0")
    assert held.subject == f"sluice.btc_deposit.{txid}_0"
    assert held.payload == {
        "operation_id": op_id,
        "txid": txid,
        "vout": 0,
        "customer_id": "alice",
        "amount_sats": SATS,
        "refused": "listed_sender",
        "reason": world.operation(op_id).last_error,
        "listed_senders": [evil],
        "unreadable_inputs": [],
    }
    assert evil in held.payload["reason"]
    assert held.correlation_id == world.operation(op_id).correlation_id
    # A held operation the router meets again writes nothing more.
    world.router.run_operation(op_id)
    assert outbox.new() == []


def test_unreadable_inputs_and_the_registrys_refusal_hold_with_their_reasons(
    world: World,
) -> None:
    world.customer("bob")
    outbox = Outbox(world)
    unreadable = world.direct_deposit("bob", SATS)
    assert world.router.run_operation(unreadable).status == "held"
    found = outbox.new()
    held = one(found, "btc_deposit_held")
    assert [e.type for e in found if e.aggregate_type != "btc_deposit"] == []
    assert held.payload["refused"] == "unreadable_inputs"
    assert held.payload["listed_senders"] == [] and len(held.payload["unreadable_inputs"]) == 1
    assert held.aggregate_id == outpoint_of(unreadable)

    refused = held_by_the_registry(world)
    found = outbox.new()
    # The registry's refusal is its compliance action; the hold is the deposit's event.
    assert "btc_deposit_held" in types(found)
    held = one(found, "btc_deposit_held")
    assert held.aggregate_id == outpoint_of(refused)
    assert held.payload["refused"] == "insufficient_kyc_tier"
    action = one(found, "compliance_action_taken")
    assert (action.payload["action"], action.payload["subject"]) == ("mint_refused", refused)
    assert set(types(found)) == {
        "btc_deposit_held",
        "compliance_action_taken",
        "btc_deposit_seen",
        "btc_deposit_confirmed",
    }
    assert types(found).count("btc_deposit_held") == 1


# --- the officer's decisions -------------------------------------------------------------------


def test_a_release_writes_released_and_its_compliance_action_once(world: World) -> None:
    op_id = held_by_the_registry(world)
    outbox = Outbox(world)
    crash = crashing(world, "btc_deposit_released")
    with pytest.raises(RuntimeError, match="crashed"):
        release_held_deposit(world.ctx, op_id, reason="documents checked", actor="officer-b")
    assert crash.crashed == 1
    assert world.operation(op_id).status == "held"
    assert outbox.new() == []

    healed(world)
    moved = release_held_deposit(world.ctx, op_id, reason="documents checked", actor="officer-b")
    assert (moved.status, moved.step) == ("pending", "reserve")
    found = outbox.new()
    assert types(found) == ["btc_deposit_released", "compliance_action_taken"]
    released = one(found, "btc_deposit_released")
    txid = moved.params["txid"]
    assert released.aggregate_id == f"{txid}:0"
    assert released.payload == {
        "operation_id": op_id,
        "txid": txid,
        "vout": 0,
        "customer_id": "alice",
        "amount_sats": SATS,
        "step": "reserve",
        "actor": "officer-b",
        "reason": "documents checked",
    }
    action = one(found, "compliance_action_taken")
    assert (action.aggregate_type, action.aggregate_id) == ("customer", "alice")
    assert action.payload["action"] == "issuance_deposit_released"
    assert (action.payload["subject"], action.payload["actor"]) == (op_id, "officer-b")
    assert action.payload["reason"] == "documents checked"
    assert action.payload["changes"] == [
        {"operation": op_id, "status": "pending", "step": "reserve"}
    ]
    # Released, the router mints it: its mint event follows, nothing of the hold again.
    op = world.router.run_operation(op_id)
    assert op.step == "credit" or op.status == "completed"
    assert types(outbox.new()) == ["istsi_minted"]


def test_a_return_writes_returned_its_action_and_the_payout_once(world: World) -> None:
    op_id = held_by_the_registry(world)
    to = address(world)
    outbox = Outbox(world)
    crash = crashing(world, "btc_deposit_returned")
    with pytest.raises(RuntimeError, match="crashed"):
        return_held_deposit(world.ctx, op_id, address=to, reason="refund", actor="officer-a")
    assert crash.crashed == 1
    assert world.operation(op_id).status == "held"
    assert outbox.new() == []

    healed(world)
    op = return_held_deposit(world.ctx, op_id, address=to, reason="refund", actor="officer-a")
    assert (op.status, op.step) == ("returned", "done")
    found = outbox.new()
    assert types(found) == [
        "btc_deposit_returned",
        "btc_payout_requested",
        "compliance_action_taken",
    ]
    returned = one(found, "btc_deposit_returned")
    assert returned.aggregate_id == outpoint_of(op_id)
    assert returned.payload == {
        "operation_id": op_id,
        "txid": op.params["txid"],
        "vout": 0,
        "customer_id": "alice",
        "amount_sats": SATS,
        "returned_from": "held",
        "payout_id": f"return:{op_id}",
        "address": to,
        "actor": "officer-a",
        "reason": "refund",
    }
    payout = one(found, "btc_payout_requested")
    assert (payout.aggregate_id, payout.payload["kind"]) == (f"return:{op_id}", "return")
    action = one(found, "compliance_action_taken")
    assert action.payload["action"] == "issuance_deposit_returned"
    assert action.payload["subject"] == op_id
    # A second return is refused and writes nothing.
    with pytest.raises(InvalidOperationStateError):
        return_held_deposit(world.ctx, op_id, address=to, reason="again", actor="officer-a")
    assert outbox.new() == []


# --- an operator's compensation and resolution -------------------------------------------------


def test_a_compensated_deposit_then_returned_writes_each_event_once(world: World) -> None:
    op_id = held_by_the_registry(world)
    outbox = Outbox(world)
    crash = crashing(world, "issuance_operation_compensated")
    with pytest.raises(RuntimeError, match="crashed"):
        compensate_operation(world.ctx, DEFINITIONS, op_id, reason="closing", actor="operator")
    assert crash.crashed == 1
    assert "issuance_operation_compensated" not in types(outbox.new())

    healed(world)
    # The crash left the compensation's claim (stuck): compensated from there now.
    op = compensate_operation(world.ctx, DEFINITIONS, op_id, reason="closing", actor="operator")
    assert op.status == "compensated"
    found = outbox.new()
    assert types(found) == ["issuance_operation_compensated"]
    compensated = one(found, "issuance_operation_compensated")
    assert (compensated.aggregate_type, compensated.aggregate_id) == ("issuance", op_id)
    assert compensated.payload == {
        "operation_id": op_id,
        "operation_type": "bitcoin_deposit",
        "customer_id": "alice",
        "amount_sats": SATS,
        "status": "compensated",
        "step": "done",
        "was": "stuck",
        "compensation": "nothing minted",
        "actor": "operator",
        "reason": "closing",
    }

    to = address(world)
    return_held_deposit(world.ctx, op_id, address=to, reason="pay back", actor="officer")
    found = outbox.new()
    assert types(found) == [
        "btc_deposit_returned",
        "btc_payout_requested",
        "compliance_action_taken",
    ]
    assert one(found, "btc_deposit_returned").payload["returned_from"] == "compensated"


def test_a_held_deposit_compensated_directly_names_held_and_a_resolved_one_is_an_event(
    world: World,
) -> None:
    op_id = held_by_the_registry(world)
    outbox = Outbox(world)
    compensate_operation(world.ctx, DEFINITIONS, op_id, reason="closing", actor="operator")
    (compensated,) = outbox.new()
    assert compensated.type == "issuance_operation_compensated"
    assert compensated.payload["was"] == "held"

    world.customer("carol", tier=0)
    other = world.deposit("carol", SATS)
    assert world.router.run_operation(other).status == "held"
    outbox.new()
    resolve_operation(world.ctx, other, reason="handled outside", actor="operator")
    (resolved,) = outbox.new()
    assert (resolved.type, resolved.aggregate_id) == ("issuance_operation_resolved", other)
    assert resolved.payload["was"] == "held" and resolved.payload["status"] == "resolved"
    assert (resolved.payload["actor"], resolved.payload["reason"]) == (
        "operator",
        "handled outside",
    )
