"""Events of Bitcoin custody, iSTSi issuance and reserves, on SQLite and PostgreSQL.

Each flow runs through the real services (the deposit watcher and payouts worker on the in-memory
chain, the router with the embedded ledger's issuer, ingestion, reserves and reconciliation), as
their own tests drive them; then the outbox is read: each state change wrote exactly its events,
with the envelope the catalogue gives (aggregate type, schema version, subject), in the
transaction of the change, so a step that rolls back writes none. Every alert in the alerts table
has exactly one ``alert_raised`` event.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from sluice import bootstrap
from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.deposits import Alert
from sluice.domain.errors import InsufficientBalanceError, MintGuardError
from sluice.domain.events import EVENT_TYPES, Event
from sluice.ports import UnitOfWork
from sluice.ports.issuance import MintRecord
from sluice.services.btc_addresses import deposit_address
from sluice.services.btc_payouts import cancel_payout, get_payout
from sluice.services.btc_watcher import DepositWatcher
from sluice.services.compliance import KycRegistry
from sluice.services.issuance_deposit import mint_id
from sluice.services.issuance_overrides import compensate_operation
from sluice.services.issuance_redeem import burn_id_of, payout_id_of, remint_id_of
from sluice.services.mint_guard import record_mint
from sluice.services.reconciliation import reconcile
from sluice.services.reserves import record_readings
from sluice.store.bitcoin_rows import alert_events
from sluice.store.events_repository import add_commit_listener, remove_commit_listener
from tests.integration import test_ingestion_issuance as ingestion_books
from tests.integration import test_issuance_redeem as redeem
from tests.integration.test_reconciliation import SATS, Reconciled, open_world
from tests.unit.bitcoin.test_payouts import SETTINGS as PAYOUT_SETTINGS
from tests.unit.bitcoin.test_payouts import Clock, Custody

CHAIN = redeem.CHAIN
CUSTODY_TYPES = {
    name
    for name, kind in EVENT_TYPES.items()
    if kind.aggregate_type in ("btc_deposit", "btc_payout", "issuance", "reserve")
}


# --- reading the outbox --------------------------------------------------------------------------


def events(uow_factory: Any, type: str | None = None) -> list[Event]:
    with uow_factory() as uow:
        return [row.event for row in uow.events.find(limit=100_000, type=type)]


def of(found: list[Event], type: str, aggregate_id: str | None = None) -> list[Event]:
    return [
        e
        for e in found
        if e.type == type and (aggregate_id is None or e.aggregate_id == aggregate_id)
    ]


def counts(found: list[Event], types: set[str] = CUSTODY_TYPES) -> dict[str, int]:
    result: dict[str, int] = {}
    for e in found:
        if e.type in types:
            result[e.type] = result.get(e.type, 0) + 1
    return result


def check_envelope(event: Event) -> None:
    kind = EVENT_TYPES[event.type]
    assert (event.aggregate_type, event.schema_version) == (kind.aggregate_type, 1)
    assert event.subject.startswith(f"sluice.{kind.aggregate_type}.")
    assert isinstance(event.occurred_at, datetime) and event.occurred_at.tzinfo is not None
    assert len(event.event_id) == 36
    event.encode()  # JSON as published


def check_all(uow_factory: Any) -> list[Event]:
    """Every event well formed, ids unique, and one ``alert_raised`` per alert row."""
    found = events(uow_factory)
    for event in found:
        check_envelope(event)
    assert len({e.event_id for e in found}) == len(found)
    with uow_factory() as uow:
        alerts = uow.books.alerts(limit=100_000)
    raised = of(found, "alert_raised")
    assert sorted(e.aggregate_id for e in raised) == sorted(a.id for a in alerts)
    by_id = {a.id: a for a in alerts}
    for event in raised:
        alert = by_id[event.aggregate_id]
        assert event.payload["severity"] == alert.severity
        assert event.payload["kind"] == alert.kind
        assert event.payload["message"] == alert.message
    return found


class CrashingCommits:
    """A unit of work factory whose next ``crashes`` commits raise before committing: the process
    dies there, and the unit of work rolls back on exit."""

    def __init__(self, inner: Any, crashes: int = 1) -> None:
        self.inner = inner
        self.crashes = crashes

    def __call__(self) -> _Crashing:
        return _Crashing(self.inner(), self)


class _Crashing:
    def __init__(self, inner: Any, owner: CrashingCommits) -> None:
        self._inner = inner
        self._owner = owner
        self._uow: UnitOfWork | None = None

    def __enter__(self) -> Any:
        self._uow = self._inner.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._inner.__exit__(kind, error, traceback)

    def commit(self) -> None:
        if self._owner.crashes > 0:
            self._owner.crashes -= 1
            raise RuntimeError("crashed before the commit (test)")
        assert self._uow is not None
        self._uow.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._uow, name)


# --- worlds --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> EmbitCustodyWallet:
    sandbox = create_sandbox_custody(tmp_path_factory.mktemp("keys") / "custody", CHAIN)
    keys = load_signing_keys(sandbox.key_files[:2], chain=CHAIN)
    return EmbitCustodyWallet(sandbox.descriptor, CHAIN, keys)


@pytest.fixture
def custody(database_url: str, wallet: EmbitCustodyWallet) -> Iterator[Custody]:
    database = bootstrap.database(database_url)
    with database.uow() as uow:
        uow.reference.add_customer("alice", "Alice")
        uow.commit()
    yield Custody(database, FakeChain(CHAIN, fee_rate_sat_vb=Decimal(5)), wallet, Clock())
    database.dispose()


@pytest.fixture
def reconciled(database_url: str, wallet: EmbitCustodyWallet) -> Iterator[Reconciled]:
    world = open_world(database_url, wallet)
    yield world
    world.db.dispose()


@pytest.fixture
def redeeming(database_url: str, wallet: EmbitCustodyWallet) -> Iterator[redeem.World]:
    db = bootstrap.database(database_url)
    world = redeem.World(db, wallet)
    world.customer(redeem.ALICE)
    world.give_istsi(redeem.ALICE, 1_000_000)
    yield world
    db.dispose()


# --- deposits ------------------------------------------------------------------------------------


def test_a_deposit_is_seen_then_confirmed_and_a_crashed_block_writes_nothing(
    custody: Custody,
) -> None:
    address = deposit_address(custody.uow, custody.wallet, "alice", clock=custody.clock)
    txid, vout = custody.chain.fund(address.script_hex, 250_000)
    outpoint = f"{txid}:{vout}"
    custody.chain.mine(1)
    # The watcher dies before the block's commit: nothing of it is written, no event either.
    crashing = DepositWatcher(
        CrashingCommits(custody.uow), custody.chain, custody.wallet, PAYOUT_SETTINGS, custody.clock
    )
    with pytest.raises(RuntimeError, match="crashed"):
        crashing.run_once()
    assert counts(events(custody.uow)) == {}
    with custody.uow() as uow:
        assert uow.btc_watch.output(txid, vout) is None

    custody.watch()
    seen_block = custody.chain.getblock(custody.chain.getblockhash(custody.chain.tip_height))
    found = events(custody.uow)
    assert counts(found) == {"btc_deposit_seen": 1}
    (seen,) = of(found, "btc_deposit_seen", outpoint)
    assert seen.aggregate_type == "btc_deposit"
    assert seen.subject == f"sluice.btc_deposit.{txid}_{vout}"
    assert seen.payload == {
        "txid": txid,
        "vout": vout,
        "customer_id": "alice",
        "address": address.address,
        "amount_sats": 250_000,
        "block_height": seen_block["height"],
        "block_hash": seen_block["hash"],
        "confirmations": 1,
        "dust": False,
    }

    custody.mine(PAYOUT_SETTINGS.confirmations_min - 1)
    found = events(custody.uow)
    assert counts(found) == {"btc_deposit_seen": 1, "btc_deposit_confirmed": 1}
    (confirmed,) = of(found, "btc_deposit_confirmed", outpoint)
    assert confirmed.payload["confirmations"] == PAYOUT_SETTINGS.confirmations_min
    assert (confirmed.payload["amount_sats"], confirmed.payload["customer_id"]) == (
        250_000,
        "alice",
    )
    assert confirmed.payload["block_hash"] == seen_block["hash"]
    assert confirmed.payload["recredit"] is False
    # More blocks: nothing more.
    custody.mine(2)
    assert counts(events(custody.uow)) == {"btc_deposit_seen": 1, "btc_deposit_confirmed": 1}
    check_all(custody.uow)


def test_a_deposit_minted_then_reorged_away(reconciled: Reconciled) -> None:
    world = reconciled
    (op,) = world.operations()
    txid = op.id.split(":")[1]
    outpoint = f"{txid}:0"
    found = check_all(world.db.uow)
    # Seen, confirmed, minted once: the router's answer committed it; ingestion booking the
    # same mint later wrote nothing more.
    assert counts(found) == {
        "btc_deposit_seen": 1,
        "btc_deposit_confirmed": 1,
        "istsi_minted": 1,
    }
    (minted,) = of(found, "istsi_minted", op.id)
    mint = world.mint(op.id)
    assert mint is not None and mint.credited
    assert minted.aggregate_type == "issuance"
    assert minted.payload == {
        "operation_id": op.id,
        "mint_id": mint_id(op.id),
        "customer_id": "alice",
        "owner": world.treasury,
        "amount_sats": SATS,
        "amount": "0.0040000000",
        "update_id": mint.update_id,
        "remint": False,
    }
    assert of(found, "btc_deposit_confirmed", outpoint)[0].payload["confirmations"] == 2

    block = world.chain.getrawtransaction(txid)["blockhash"]
    depth = world.chain.tip_height - world.chain.getblock(block)["height"] + 1
    world.chain.reorg(depth, drop_txids=[txid])
    assert world.watcher.run_once().reorgs == 1
    found = check_all(world.db.uow)
    (reorged,) = of(found, "btc_deposit_reorged")
    assert reorged.aggregate_id == outpoint
    assert (reorged.payload["was"], reorged.payload["amount_sats"]) == ("credited", SATS)
    assert reorged.payload["customer_id"] == "alice"
    # The reorg's alerts (a credited deposit gone, minting halted) were raised as events too.
    kinds = {e.payload["kind"] for e in of(found, "alert_raised")}
    assert {"btc_deposit_reorged", "issuance_reserve_reorged"} <= kinds
    critical = [e for e in of(found, "alert_raised") if e.payload["kind"] == "btc_deposit_reorged"]
    assert critical[0].payload["severity"] == "critical"
    assert critical[0].payload["details"]["txid"] == txid


def test_a_mint_the_guard_refuses_writes_no_mint_event_but_its_alert(
    reconciled: Reconciled,
) -> None:
    world = reconciled
    before = counts(events(world.db.uow))
    (op,) = world.operations()
    too_much = MintRecord(
        id="issuance:manual:mint",
        operation_id=op.id,
        customer_id="alice",
        owner=world.treasury,
        amount_sats=SATS + 1,
        reason="issuance:manual",
        status="submitted",
        created_at=world.clock(),
    )
    committed: list[Event] = []
    add_commit_listener(committed.extend)
    try:
        with pytest.raises(MintGuardError):
            record_mint(world.ctx, too_much, actor="test")
    finally:
        remove_commit_listener(committed.extend)
    found = check_all(world.db.uow)
    assert counts(found) == before
    (breach,) = [e for e in of(found, "alert_raised") if e.payload["kind"] == "mint_guard_breach"]
    assert breach.aggregate_id == f"mint_guard_breach:{too_much.id}"
    assert breach.payload["severity"] == "critical"
    # Written through the unit of work's outbox: the commit listeners learnt of it.
    assert breach.event_id in {e.event_id for e in committed}


@pytest.fixture
def books(database_url: str, wallet: EmbitCustodyWallet) -> Iterator[ingestion_books.Books]:
    db = bootstrap.database(database_url)
    world = ingestion_books.Books(
        db,
        wallet,
        KycRegistry(),
        FakeChain(CHAIN, fee_rate_sat_vb=Decimal(5)),
        settings=ingestion_books.SETTINGS,
    )
    world.customer("alice")
    yield world
    db.dispose()


def test_mints_and_burns_whose_answer_was_lost_are_committed_by_ingestion_once(
    books: ingestion_books.Books,
) -> None:
    world = books
    mint = world.record_mint("issuance:op-1", "alice", 2_000, status="submitted")
    minted = world.issuer.mint(world.treasury, 2_000, reason=mint.reason, command_id=mint.id)
    burn = world.record_burn("issuance:op-2:burn", "alice", 500, status="submitted")
    burned = world.issuer.burn(world.treasury, 500, reason=burn.reason, command_id=burn.id)
    done = world.record_mint("issuance:op-3", "alice", 1_000)  # the router committed it
    world.issuer.mint(world.treasury, 1_000, reason=done.reason, command_id=done.id)
    world.ingest()
    found = check_all(world.db.uow)
    assert counts(found) == {"istsi_minted": 1, "istsi_burned": 1}
    (mint_event,) = of(found, "istsi_minted", "op-1")
    assert (mint_event.payload["mint_id"], mint_event.payload["update_id"]) == (
        mint.id,
        minted.update_id,
    )
    (burn_event,) = of(found, "istsi_burned", "op-2")
    assert (burn_event.payload["burn_id"], burn_event.payload["update_id"]) == (
        burn.id,
        burned.update_id,
    )
    world.ingest()
    assert counts(events(world.db.uow)) == {"istsi_minted": 1, "istsi_burned": 1}


# --- reserves and reconciliation -----------------------------------------------------------------


def test_each_reading_and_each_run_writes_its_event(reconciled: Reconciled, tmp_path: Path) -> None:
    world = reconciled
    ctx = world.reserves(tmp_path / "por-secret")
    readings = record_readings(ctx)
    found = events(world.db.uow, "reserve_updated")
    assert len(found) == len(readings) >= 1
    by_instrument = {e.aggregate_id: e for e in found}
    assert set(by_instrument) == {r.instrument for r in readings}
    for reading in readings:
        event = by_instrument[reading.instrument]
        assert event.aggregate_type == "reserve"
        assert event.occurred_at == reading.taken_at
        assert event.payload["reading_id"] == reading.id
        assert event.payload["ratio_bps"] == reading.ratio_bps
        assert event.payload["supply_units"] == str(reading.supply_units)
        assert event.payload["reserves_units"] == str(reading.reserves_units)
        assert event.payload["level"] in ("ok", "warning", "critical")
    istsi = by_instrument[world.istsi.key()]
    assert (istsi.payload["kind"], istsi.payload["supply"], istsi.payload["ratio_bps"]) == (
        "istsi",
        "0.004",
        10_000,
    )

    run = reconcile(ctx, trigger="manual")
    (completed,) = events(world.db.uow, "reconciliation_completed")
    assert completed.aggregate_id == run.id and completed.aggregate_type == "reserve"
    assert completed.payload["status"] == "ok" and completed.payload["worst"] is None
    assert completed.payload["states"] == {
        "ledger": "compared",
        "custody": "compared",
        "supply": "compared",
    }
    assert (completed.payload["discrepancies"], completed.payload["trigger"]) == (0, "manual")
    check_all(world.db.uow)


# --- payouts -------------------------------------------------------------------------------------


def test_a_payout_requested_broadcast_bumped_and_confirmed(custody: Custody) -> None:
    custody.fund(400_000)
    custody.request("p1", 150_000)
    (requested,) = events(custody.uow, "btc_payout_requested")
    assert requested.aggregate_id == "p1" and requested.aggregate_type == "btc_payout"
    assert requested.payload == {
        "payout_id": "p1",
        "kind": "operator",
        "address": custody.payouts()["p1"].address,
        "amount_sats": 150_000,
        "requested_by": "ops",
        "status": "queued",
    }
    worker = custody.worker()
    worker.run_once()
    (first,) = custody.batches()
    (broadcast,) = events(custody.uow, "btc_payout_broadcast")
    assert broadcast.payload["fee_bump"] is False and broadcast.payload["replaces_txid"] is None
    assert (broadcast.payload["txid"], broadcast.payload["batch_id"]) == (first.txid, first.id)
    # Unmined until it is bumped: a second broadcast event, saying so.
    custody.mine(PAYOUT_SETTINGS.payout_bump_after_blocks, include_mempool=False)
    assert worker.run_once().bumped == 1
    (bumped,) = custody.batches()
    first_event, bump_event = events(custody.uow, "btc_payout_broadcast")
    assert bump_event.aggregate_id == "p1"
    assert bump_event.payload["fee_bump"] is True
    assert bump_event.payload["replaces_txid"] == first.txid
    assert (bump_event.payload["txid"], bump_event.payload["bumps"]) == (bumped.txid, 1)
    assert Decimal(bump_event.payload["fee_rate_sat_vb"]) > Decimal(
        first_event.payload["fee_rate_sat_vb"]
    )
    assert bump_event.payload["fee_rate_sat_vb"] == bumped.fee_rate_sat_vb

    custody.settle(worker)
    view = custody.payouts()["p1"]
    assert view.status == "completed"
    found = check_all(custody.uow)
    assert counts(found) == {
        "btc_payout_requested": 1,
        "btc_payout_broadcast": 2,
        "btc_payout_confirmed": 1,
    }
    (confirmed,) = of(found, "btc_payout_confirmed", "p1")
    assert confirmed.payload["txid"] == bumped.txid == view.txid
    assert confirmed.payload["received_sats"] == 150_000 - (view.fee_sats or 0)
    assert confirmed.payload["confirmations"] >= PAYOUT_SETTINGS.confirmations_min
    assert confirmed.payload["vout"] == view.vout


def test_a_cancelled_payout_fails_and_a_refused_request_writes_nothing(custody: Custody) -> None:
    custody.fund(200_000)  # the exchange's own Bitcoin: a payout needs reserves to cover it
    before = counts(check_all(custody.uow))
    custody.request("p1", 150_000)
    cancel_payout(custody.uow, payout_id="p1", cancelled_by="ops", clock=custody.clock)
    (failed,) = events(custody.uow, "btc_payout_failed")
    assert failed.aggregate_id == "p1"
    assert (failed.payload["status"], failed.payload["amount_sats"]) == ("cancelled", 150_000)
    assert failed.payload["reason"] == "cancelled by ops"
    # Cancelling again changes nothing and writes nothing.
    cancel_payout(custody.uow, payout_id="p1", cancelled_by="ops", clock=custody.clock)
    # A bad request changes nothing.
    with pytest.raises(Exception, match="dust"):
        custody.request("p2", 1_000)
    after = counts(check_all(custody.uow))
    assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {
        "btc_payout_requested": 1,
        "btc_payout_failed": 1,
    }


# --- redemptions ---------------------------------------------------------------------------------


def test_a_redemption_burned_paid_and_completed(redeeming: redeem.World) -> None:
    world = redeeming
    world.fund_custody(2_000_000)
    # Refused (too little iSTSi): rolled back, nothing written.
    with pytest.raises(InsufficientBalanceError):
        world.redeem(5_000_000, key="too-much")
    assert counts(events(world.db.uow)) == {}

    op = world.redeem(300_000)
    (requested,) = events(world.db.uow, "redemption_requested")
    address, _ = redeem.destination(world.wallet, "dest")
    assert requested.aggregate_id == op.id and requested.aggregate_type == "issuance"
    assert requested.correlation_id == op.correlation_id
    assert requested.payload == {
        "operation_id": op.id,
        "customer_id": redeem.ALICE,
        "amount_sats": 300_000,
        "amount": "0.0030000000",
        "address": address,
        "status": "pending",
    }
    assert world.run(op.id).step == "confirm"
    world.book_burn(op)
    (burned,) = events(world.db.uow, "istsi_burned")
    assert burned.aggregate_id == op.id
    assert (burned.payload["burn_id"], burned.payload["amount_sats"]) == (
        burn_id_of(op.id),
        300_000,
    )
    assert burned.payload["update_id"]
    world.pay()
    for _ in range(redeem.CONFIRMATIONS + 1):
        world.mine()
        world.pay()
    done = world.run(op.id)
    assert done.status == "completed"
    found = check_all(world.db.uow)
    assert counts(found) == {
        "redemption_requested": 1,
        "istsi_burned": 1,
        "btc_payout_requested": 1,
        "btc_payout_broadcast": 1,
        "btc_payout_confirmed": 1,
        "redemption_completed": 1,
    }
    payout_id = payout_id_of(op.id)
    (payout_requested,) = of(found, "btc_payout_requested", payout_id)
    assert payout_requested.payload["kind"] == "redemption"
    (completed,) = of(found, "redemption_completed", op.id)
    paid = get_payout(world.db.uow, payout_id)
    assert paid is not None
    assert completed.payload["status"] == "completed"
    assert completed.payload["payout_id"] == payout_id
    assert completed.payload["txid"] == paid.txid
    assert completed.payload["received_sats"] == 300_000 - (paid.fee_sats or 0)
    assert completed.correlation_id == op.correlation_id
    # In the order they happened.
    order = [e.type for e in found if e.type in CUSTODY_TYPES]
    assert order.index("redemption_requested") < order.index("istsi_burned")
    assert order.index("btc_payout_confirmed") < order.index("redemption_completed")


def test_a_redemption_whose_payout_is_cancelled_is_reminted(redeeming: redeem.World) -> None:
    world = redeeming
    world.fund_custody(2_000_000)
    op = world.redeem(300_000)
    world.run(op.id)
    world.book_burn(op)
    cancel_payout(
        world.db.uow, payout_id=payout_id_of(op.id), cancelled_by="ops", clock=world.clock
    )
    assert world.run(op.id).step == "remint"
    world.book_remint(op)
    assert world.run(op.id).status == "compensated"
    found = check_all(world.db.uow)
    assert counts(found) == {
        "redemption_requested": 1,
        "istsi_burned": 1,
        "btc_payout_requested": 1,
        "btc_payout_failed": 1,
        "istsi_minted": 1,
        "redemption_failed": 1,
    }
    (reminted,) = of(found, "istsi_minted", op.id)
    assert reminted.payload["remint"] is True
    assert reminted.payload["mint_id"] == remint_id_of(op.id)
    (failed,) = of(found, "redemption_failed", op.id)
    assert (failed.payload["status"], failed.payload["compensation"]) == ("compensated", "remint")
    assert failed.payload["payout_status"] == "cancelled"


def test_a_stuck_redemption_is_an_event_and_its_refund_fails_it(redeeming: redeem.World) -> None:
    world = redeeming
    world.issuer.reject_burns = 1
    op = world.redeem(300_000)
    stuck = world.run(op.id)
    assert stuck.status == "stuck"
    (event,) = events(world.db.uow, "issuance_operation_stuck")
    assert event.aggregate_id == op.id
    assert (event.payload["step"], event.payload["was"]) == ("burn", "pending")
    assert "rejected" in event.payload["error"]
    refunded = compensate_operation(
        world.ctx, redeem.DEFINITIONS, op.id, reason="customer asked", actor="operator"
    )
    assert refunded.status == "compensated"
    found = check_all(world.db.uow)
    assert counts(found) == {
        "redemption_requested": 1,
        "issuance_operation_stuck": 1,
        "redemption_failed": 1,
    }
    (failed,) = of(found, "redemption_failed", op.id)
    assert failed.payload["compensation"] == "refund"
    # The stuck alert went out as an event too.
    assert [e.payload["kind"] for e in of(found, "alert_raised")] == ["issuance_stuck"]


# --- alerts --------------------------------------------------------------------------------------


def test_alert_events_carry_the_alert() -> None:
    alert = Alert("a-1", "warning", "k", "text", None, {"n": "1"})
    (event,) = alert_events([alert], "2026-12-05T06:00:00Z")
    assert (event.type, event.aggregate_type, event.aggregate_id) == (
        "alert_raised",
        "alert",
        "a-1",
    )
    assert event.occurred_at == datetime.fromisoformat("2026-12-05T06:00:00+00:00")
    assert event.payload == {
        "alert_id": "a-1",
        "severity": "warning",
        "kind": "k",
        "message": "text",
        "update_id": None,
        "details": {"n": "1"},
    }
