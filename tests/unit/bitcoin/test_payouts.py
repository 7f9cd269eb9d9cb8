"""Bitcoin payouts end to end on the in-memory chain: requests, batching, signing 2-of-3,
broadcast, fee bumps, crashes at each step, reorgs and double spends.

Everything is real but the node: the custody wallet is :class:`EmbitCustodyWallet` over sandbox
keys (two of three sign), the deposit watcher (:class:`DepositWatcher`) follows the
:class:`FakeChain` into a SQLite Integration DB and records which transaction spent each custody
output, and the payouts worker learns from those spends that a batch was mined. "Paid once" is
checked on the chain itself: the outputs to a payout's destination are counted over every block
of the active chain. A crash is an exception raised from one of the worker's test hooks (or from
the wallet right after signing); the next round is a new worker over the same DB and chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sluice import bootstrap
from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.chains import CHAINS, to_sats
from sluice.domain.errors import (
    DuplicateOperationError,
    InvalidAddressError,
    InvalidAmountError,
    InvalidInputError,
    MintGuardError,
)
from sluice.ports.bitcoin import NodeUnavailableError, SignedTransaction, SpendInput, TxOutput
from sluice.ports.bitcoin_payouts import BatchRecord
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.btc_addresses import change_address, deposit_address
from sluice.services.btc_payouts import (
    PayoutTick,
    PayoutView,
    PayoutWorker,
    list_payouts,
    request_payout,
)
from sluice.services.btc_watcher import DepositWatcher
from sluice.services.controls import pause, resume

CHAIN = CHAINS["regtest"]
START = datetime(2026, 12, 5, 6, 0, 0, tzinfo=UTC)
SETTINGS = BitcoinSettings(
    chain=CHAIN,
    confirmations_min=3,
    payout_fee_max_sats=20_000,
    payout_batch_max=10,
    payout_batch_window_s=0,
    payout_bump_after_blocks=2,
)


class CrashError(Exception):
    """The worker process dies here."""


@dataclass
class Clock:
    now: datetime = START

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@dataclass
class Custody:
    """One custody: its DB, the chain, the wallet and the watcher, and the payouts made."""

    database: bootstrap.Database
    chain: FakeChain
    wallet: EmbitCustodyWallet
    clock: Clock
    settings: BitcoinSettings = SETTINGS
    destinations: dict[str, str] = field(default_factory=dict)  # payout id → script

    @property
    def uow(self) -> Any:
        return self.database.uow

    def worker(self, **hooks: Any) -> PayoutWorker:
        settings = hooks.pop("settings", self.settings)
        node = hooks.pop("node", self.chain)
        wallet = hooks.pop("wallet", self.wallet)
        return PayoutWorker(self.uow, node, wallet, settings, self.clock, **hooks)

    def watch(self) -> None:
        tick = DepositWatcher(
            self.uow, self.chain, self.wallet, self.settings, self.clock
        ).run_once()
        assert tick.error is None, tick.error

    def mine(self, count: int = 1, *, include_mempool: bool = True) -> None:
        self.chain.mine(count, include_mempool=include_mempool)
        self.watch()

    def fund(self, *amounts: int) -> None:
        """Confirmed custody outputs of these amounts: the exchange's own Bitcoin, one change
        address each (a customer's deposit is owed to them until minted or returned: no operator
        payout may spend it)."""
        for amount in amounts:
            with self.uow() as uow:
                address = change_address(uow, self.wallet, self.clock)
                uow.commit()
            self.chain.fund(address.script_hex, amount)
        self.mine(self.settings.confirmations_min)

    def request(self, payout_id: str, amount: int, **overrides: Any) -> PayoutView:
        script = "0014" + hashlib.sha256(payout_id.encode()).hexdigest()[:40]
        address = self.wallet.address_of(script)
        assert address is not None
        self.destinations[payout_id] = script
        arguments: dict[str, Any] = {
            "payout_id": payout_id,
            "address": address,
            "amount_sats": amount,
            "kind": "operator",
            "requested_by": "ops",
            "clock": self.clock,
        }
        arguments.update(overrides)
        return request_payout(self.uow, self.wallet, self.settings, **arguments)

    def payouts(self) -> dict[str, PayoutView]:
        return {view.id: view for view in list_payouts(self.uow)}

    def batches(self) -> list[BatchRecord]:
        with self.uow() as uow:
            return list(uow.btc_payouts.batches())

    def paid(self, payout_id: str) -> list[tuple[str, int, int]]:
        """Every output to the payout's destination on the active chain: (txid, vout, sats)."""
        script = self.destinations[payout_id]
        found = []
        for height in range(self.chain.tip_height + 1):
            block = self.chain.getblock(self.chain.getblockhash(height))
            for tx in block["tx"]:
                for out in tx["vout"]:
                    if out["scriptPubKey"]["hex"] == script:
                        found.append((tx["txid"], int(out["n"]), to_sats(out["value"])))
        return found

    def settle(self, worker: PayoutWorker | None = None) -> PayoutTick:
        """Mine until the batches confirm, the watcher and the worker running after each."""
        worker = worker or self.worker()
        total = PayoutTick()
        for _ in range(self.settings.confirmations_min + 1):
            self.mine()
            tick = worker.run_once()
            total.completed += tick.completed
            total.confirmed += tick.confirmed
            total.mined += tick.mined
            total.broadcast += tick.broadcast
            total.rebroadcast += tick.rebroadcast
            assert not tick.errors, tick.errors
        return total

    def assert_paid_once(self, payout_id: str) -> None:
        view = self.payouts()[payout_id]
        assert view.status == "completed"
        assert view.fee_sats is not None
        ((txid, vout, sats),) = self.paid(payout_id)
        assert (view.txid, view.vout, sats) == (txid, vout, view.amount_sats - view.fee_sats)


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> EmbitCustodyWallet:
    sandbox = create_sandbox_custody(tmp_path_factory.mktemp("keys") / "custody", CHAIN)
    keys = load_signing_keys(sandbox.key_files[:2], chain=CHAIN)
    return EmbitCustodyWallet(sandbox.descriptor, CHAIN, keys)


@pytest.fixture
def custody(tmp_path: Path, wallet: EmbitCustodyWallet) -> Iterator[Custody]:
    database = bootstrap.database(f"sqlite:///{tmp_path / 'sluice.db'}")
    with database.uow() as uow:
        uow.reference.add_customer("alice", "Alice")
        uow.commit()
    chain = FakeChain(CHAIN, fee_rate_sat_vb=Decimal(5))
    yield Custody(database, chain, wallet, Clock())
    database.dispose()


# --- requests ----------------------------------------------------------------------------------


def test_a_payout_id_answers_its_first_request_and_refuses_other_parameters(
    custody: Custody,
) -> None:
    custody.fund(150_000)
    first = custody.request("p1", 100_000)
    assert (first.status, first.amount_sats, first.kind) == ("queued", 100_000, "operator")
    assert custody.request("p1", 100_000) == first
    with pytest.raises(DuplicateOperationError, match="amount_sats 100000 \\(not 100001\\)") as e:
        custody.request("p1", 100_001)
    assert e.value.code == 42
    with pytest.raises(DuplicateOperationError, match="kind 'operator' \\(not 'return'\\)"):
        custody.request("p1", 100_000, kind="return")
    with custody.uow() as uow:
        records = uow.audit.find(operation_id="p1", limit=10)
    assert [r.entry.operation for r in records] == ["btc_payout_requested"]


def test_a_request_is_checked_before_anything_is_recorded(custody: Custody) -> None:
    custody.fund(30_000)
    with pytest.raises(InvalidAddressError):
        custody.request("p1", 100_000, address="bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")
    with pytest.raises(InvalidAddressError):
        custody.request("p1", 100_000, address="bcrt1qnotanaddress")
    # The fee can take up to payout_fee_max_sats; what is left must not be dust (294 sats for
    # a P2WPKH output).
    with pytest.raises(InvalidAmountError, match="at least 20295 sats"):
        custody.request("p1", 20_294)
    with pytest.raises(InvalidInputError, match="payout kind"):
        custody.request("p1", 10**6, kind="gift")
    # Past the confirmed reserves (nothing else owed): refused, every payout is checked.
    with pytest.raises(MintGuardError, match="at most 30000 sats of excess"):
        custody.request("p1", 30_001)
    assert custody.request("p1", 20_295).status == "queued"


# --- batches -----------------------------------------------------------------------------------


def test_a_batch_of_payouts_is_signed_mined_confirmed_and_completed_once(
    custody: Custody,
) -> None:
    custody.fund(300_000, 200_000)
    amounts = {"p1": 150_000, "p2": 120_000, "p3": 90_000}
    for payout_id, amount in amounts.items():
        custody.request(payout_id, amount)
    tick = custody.worker().run_once()
    assert (tick.batches, tick.batched, tick.broadcast, tick.errors) == (1, 3, 1, [])
    (batch,) = custody.batches()
    assert batch.status == "broadcast"
    assert custody.chain.mempool_txids == [batch.txid]
    views = custody.payouts()
    assert {v.status for v in views.values()} == {"broadcast"}
    assert {v.batch_id for v in views.values()} == {batch.id}
    # The fee is the payouts': split evenly and deducted from each; the change is returned whole.
    shares = [v.fee_sats or 0 for v in views.values()]
    assert sum(shares) == batch.fee_sats and max(shares) - min(shares) <= 1
    assert batch.change_sats == 500_000 - sum(amounts.values())
    assert Decimal(batch.fee_rate_sat_vb) == 5
    tx = custody.chain.getrawtransaction(batch.txid)
    assert all(vin["sequence"] < 0xFFFFFFFE for vin in tx["vin"])  # RBF signalled
    assert {f"{vin['txid']}:{vin['vout']}" for vin in tx["vin"]} == set(batch.outpoints)

    custody.mine()
    tick = custody.worker().run_once()
    assert (tick.mined, tick.confirmed) == (1, 0)
    assert {v.status for v in custody.payouts().values()} == {"mined"}
    assert {v.confirmations for v in custody.payouts().values()} == {1}
    total = custody.settle()
    assert (total.confirmed, total.completed) == (1, 3)
    for payout_id in amounts:
        custody.assert_paid_once(payout_id)
    # The change came back to custody at a change address the watcher recognised.
    with custody.uow() as uow:
        # (the funding went to change addresses too: the exchange's own Bitcoin)
        change = [
            o
            for o in uow.btc_watch.outputs(limit=100)
            if o.kind == "change" and o.txid == batch.txid
        ]
        audit = [r.entry.operation for r in uow.audit.find(operation_id=batch.id, limit=10)]
    assert [(o.txid, o.amount_sats) for o in change] == [(batch.txid, batch.change_sats)]
    assert audit == ["btc_batch_signed", "btc_batch_mined", "btc_batch_confirmed"]
    # Nothing more happens, however many rounds run.
    for _ in range(3):
        custody.mine()
        tick = custody.worker().run_once()
        assert not tick.busy and tick.completed == 0


def test_payouts_wait_for_the_batch_window_or_a_full_batch(custody: Custody) -> None:
    custody.fund(1_000_000)
    custody.settings = replace(SETTINGS, payout_batch_window_s=60, payout_batch_max=3)
    custody.request("p1", 100_000)
    custody.request("p2", 100_000)
    assert custody.worker().run_once().batches == 0
    custody.request("p3", 100_000)
    custody.request("p4", 100_000)
    tick = custody.worker().run_once()
    assert (tick.batches, tick.batched) == (1, 3)  # full: the three oldest leave
    assert custody.payouts()["p4"].status == "queued"
    custody.clock.now += timedelta(seconds=61)
    tick = custody.worker().run_once()
    # Past the window, but the only coin is spent and its change not yet confirmed.
    assert (tick.batched, tick.insufficient) == (0, 1)
    total = custody.settle()  # the change confirms: the fourth leaves on its own
    assert total.completed == 3
    custody.settle()
    for payout_id in ("p1", "p2", "p3", "p4"):
        custody.assert_paid_once(payout_id)
    assert len(custody.batches()) == 2


def test_a_fee_share_over_the_cap_waits_until_fees_come_down(custody: Custody) -> None:
    custody.fund(500_000)
    custody.request("p1", 100_000)
    custody.chain.set_fee_rate(Decimal(150))  # about 190 vB × 150: over 20,000 sats
    tick = custody.worker().run_once()
    assert (tick.batches, tick.waiting_fee) == (0, 1)
    view = custody.payouts()["p1"]
    assert view.status == "waiting_fee"
    assert view.last_error is not None and "payout_fee_max_sats" in view.last_error
    assert custody.worker().run_once().waiting_fee == 1  # retried each round
    custody.chain.set_fee_rate(None)  # a young chain: no estimate, the floor
    tick = custody.worker().run_once()
    assert (tick.batches, tick.batched) == (1, 1)
    (batch,) = custody.batches()
    assert Decimal(batch.fee_rate_sat_vb) == SETTINGS.fee_rate_min_sat_vb
    view = custody.payouts()["p1"]
    assert (view.status, view.last_error) == ("broadcast", None)
    assert view.fee_sats == batch.fee_sats <= SETTINGS.payout_fee_max_sats
    custody.settle()
    custody.assert_paid_once("p1")


def test_without_confirmed_funds_payouts_stay_queued_with_an_alert(custody: Custody) -> None:
    address = deposit_address(custody.uow, custody.wallet, "alice", clock=custody.clock)
    custody.chain.fund(address.script_hex, 150_000)
    custody.mine()  # seen, not confirmed: not spendable yet
    # Redemptions' payouts (their iSTSi burned first) are queued whatever the reserves; an
    # operator's would be refused here (every other payout needs confirmed reserves).
    custody.request("p1", 100_000, kind="redemption")
    custody.request("p2", 100_000, kind="redemption")
    tick = custody.worker().run_once()
    assert (tick.batches, tick.insufficient) == (0, 2)
    view = custody.payouts()["p1"]
    assert view.status == "queued"
    assert view.last_error is not None and "confirmed custody funds" in view.last_error
    with custody.uow() as uow:
        alerts = [a.id for a in uow.books.alerts()]
    assert alerts == ["btc_payout_insufficient_funds:p1", "btc_payout_insufficient_funds:p2"]
    custody.mine(SETTINGS.confirmations_min)
    tick = custody.worker().run_once()
    # The oldest goes, the other waits for more funds.
    assert (tick.batched, tick.insufficient) == (1, 1)
    assert custody.payouts()["p1"].status == "broadcast"
    with custody.uow() as uow:
        assert len(uow.books.alerts()) == 2  # raised once each


def test_a_batch_the_node_would_refuse_is_not_recorded(custody: Custody) -> None:
    custody.fund(500_000)
    custody.request("p1", 100_000)

    class Refusing:
        def __getattr__(self, name: str) -> Any:
            return getattr(custody.chain, name)

        def testmempoolaccept(self, raw: list[str]) -> list[dict[str, Any]]:
            (answer,) = custody.chain.testmempoolaccept(raw)
            return [{**answer, "allowed": False, "reject-reason": "non-mandatory-script-verify"}]

    tick = custody.worker(node=Refusing()).run_once()
    assert (tick.batches, tick.refused) == (0, 1)
    assert custody.batches() == []
    assert custody.chain.mempool_txids == []
    view = custody.payouts()["p1"]
    assert view.status == "queued"
    assert view.last_error is not None and "non-mandatory-script-verify" in view.last_error
    with custody.uow() as uow:
        assert len(uow.btc_payouts.spendable_outputs(0)) == 1  # nothing reserved
    custody.worker().run_once()
    custody.settle()
    custody.assert_paid_once("p1")


def test_an_unreachable_node_is_reported_and_nothing_changes(custody: Custody) -> None:
    custody.fund(500_000)
    custody.request("p1", 100_000)
    custody.chain.down = True
    tick = custody.worker().run_once()
    assert tick.errors and "unavailable" in tick.errors[0]
    assert custody.batches() == []
    custody.chain.down = False
    custody.worker().run_once()
    custody.settle()
    custody.assert_paid_once("p1")


# --- fee bumps ---------------------------------------------------------------------------------


def _broadcast_unmined(custody: Custody, raws: list[str]) -> BatchRecord:
    """One payout broadcast, then blocks mined without it until it is bumped once."""
    custody.fund(400_000)
    custody.request("p1", 150_000)

    def keep(batch: BatchRecord) -> None:
        raws.append(batch.raw_hex)

    worker = custody.worker(after_broadcast=keep)
    worker.run_once()
    (first,) = custody.batches()
    custody.mine(SETTINGS.payout_bump_after_blocks - 1, include_mempool=False)
    assert worker.run_once().bumped == 0
    custody.mine(1, include_mempool=False)
    tick = worker.run_once()
    assert (tick.bumped, tick.errors) == (1, [])
    (bumped,) = custody.batches()
    assert bumped.id == first.id and bumped.outpoints == first.outpoints
    assert bumped.txid != first.txid
    assert [v["txid"] for v in bumped.versions] == [first.txid, bumped.txid]
    assert bumped.bumps == 1
    assert custody.chain.mempool_txids == [bumped.txid]  # the replacement evicted the first
    assert Decimal(bumped.fee_rate_sat_vb) >= Decimal(first.fee_rate_sat_vb) * Decimal("1.5")
    assert bumped.fee_sats >= first.fee_sats + bumped.vsize
    # The extra fee came out of the change: the payout still pays what it did.
    assert bumped.change_sats == first.change_sats - (bumped.fee_sats - first.fee_sats)
    view = custody.payouts()["p1"]
    assert (view.txid, view.status, view.batch_id) == (bumped.txid, "broadcast", first.id)
    return first


def test_a_fee_bump_changes_the_txid_and_the_bumped_version_completes_once(
    custody: Custody,
) -> None:
    raws: list[str] = []
    _broadcast_unmined(custody, raws)
    total = custody.settle()
    assert (total.confirmed, total.completed) == (1, 1)
    (batch,) = custody.batches()
    assert batch.txid == batch.versions[-1]["txid"]
    custody.assert_paid_once("p1")


def test_a_fee_bump_then_the_original_mined_completes_once(custody: Custody) -> None:
    raws: list[str] = []
    first = _broadcast_unmined(custody, raws)
    (bumped,) = custody.batches()
    # A miner still had the first version: it is mined instead of the bump.
    custody.chain.evict(bumped.txid)
    assert custody.chain.sendrawtransaction(raws[0]) == first.txid
    total = custody.settle()
    assert (total.confirmed, total.completed) == (1, 1)
    (batch,) = custody.batches()
    assert (batch.txid, batch.fee_sats, batch.change_sats) == (
        first.txid,
        first.fee_sats,
        first.change_sats,
    )
    custody.assert_paid_once("p1")


def test_an_evicted_batch_is_broadcast_again(custody: Custody) -> None:
    custody.fund(400_000)
    custody.request("p1", 150_000)
    worker = custody.worker()
    worker.run_once()
    (batch,) = custody.batches()
    custody.chain.evict(batch.txid)
    assert custody.chain.mempool_txids == []
    tick = worker.run_once()
    assert (tick.rebroadcast, tick.batches) == (1, 0)
    assert custody.chain.mempool_txids == [batch.txid]
    assert worker.run_once().rebroadcast == 0  # in the mempool: nothing to do
    custody.settle()
    custody.assert_paid_once("p1")


# --- crashes -----------------------------------------------------------------------------------


def _crash(batch: BatchRecord) -> None:
    raise CrashError(batch.id)


class CrashAfterSigning:
    """The wallet, dying right after it signed (before anything was recorded)."""

    def __init__(self, wallet: EmbitCustodyWallet) -> None:
        self._wallet = wallet
        self.signed: list[SignedTransaction] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wallet, name)

    def sign(
        self, inputs: list[SpendInput], outputs: list[TxOutput], *, rbf: bool = True
    ) -> SignedTransaction:
        self.signed.append(self._wallet.sign(inputs, outputs, rbf=rbf))
        raise CrashError("after signing")


def test_a_crash_after_signing_records_nothing_and_the_payout_is_paid_once(
    custody: Custody,
) -> None:
    custody.fund(400_000)
    custody.request("p1", 150_000)
    dying = CrashAfterSigning(custody.wallet)
    with pytest.raises(CrashError):
        custody.worker(wallet=dying).run_once()
    assert custody.batches() == []
    assert custody.chain.mempool_txids == []
    assert custody.payouts()["p1"].status == "queued"
    with custody.uow() as uow:
        assert len(uow.btc_payouts.spendable_outputs(0)) == 1
    tick = custody.worker().run_once()
    assert (tick.batches, tick.broadcast) == (1, 1)
    custody.settle()
    custody.assert_paid_once("p1")


@pytest.mark.parametrize("mined_meanwhile", [False, True])
def test_a_crash_after_recording_before_broadcast_sends_the_recorded_transaction(
    custody: Custody, mined_meanwhile: bool
) -> None:
    custody.fund(400_000)
    custody.request("p1", 150_000)
    with pytest.raises(CrashError):
        custody.worker(after_record=_crash).run_once()
    (batch,) = custody.batches()
    assert batch.status == "signed"
    assert custody.chain.mempool_txids == []
    assert custody.payouts()["p1"].status == "batched"
    if mined_meanwhile:
        # Another process sent it and it was mined before this worker came back.
        custody.chain.sendrawtransaction(batch.raw_hex)
        custody.mine()
    tick = custody.worker().run_once()
    assert tick.batches == 0
    assert tick.recovered == (0 if mined_meanwhile else 1)
    assert tick.mined == (1 if mined_meanwhile else 0)
    assert custody.chain.mempool_txids == ([] if mined_meanwhile else [batch.txid])
    custody.settle()
    custody.assert_paid_once("p1")


@pytest.mark.parametrize("mined_meanwhile", [False, True])
def test_a_crash_after_broadcast_before_recording_it_finds_it_by_txid(
    custody: Custody, mined_meanwhile: bool
) -> None:
    custody.fund(400_000)
    custody.request("p1", 150_000)
    with pytest.raises(CrashError):
        custody.worker(after_broadcast=_crash).run_once()
    (batch,) = custody.batches()
    assert batch.status == "signed"
    assert custody.chain.mempool_txids == [batch.txid]
    if mined_meanwhile:
        custody.mine()
    tick = custody.worker().run_once()
    assert (tick.batches, tick.errors) == (0, [])
    if not mined_meanwhile:
        assert tick.recovered == 1
        (recorded,) = custody.batches()
        assert recorded.status == "broadcast" and recorded.broadcast_height is not None
    custody.settle()
    custody.assert_paid_once("p1")


def test_a_crash_after_mining_before_confirmation_completes_once(custody: Custody) -> None:
    custody.fund(400_000)
    custody.request("p1", 150_000)
    custody.request("p2", 150_000)
    custody.worker().run_once()
    custody.mine()
    assert custody.worker().run_once().mined == 1
    # The worker is gone; blocks go by; a new one takes over.
    custody.mine(SETTINGS.confirmations_min)
    tick = custody.worker().run_once()
    assert (tick.mined, tick.confirmed, tick.completed) == (0, 1, 2)
    assert custody.worker().run_once().completed == 0
    custody.assert_paid_once("p1")
    custody.assert_paid_once("p2")


def test_a_crash_after_recording_a_bump_sends_the_bump(custody: Custody) -> None:
    custody.fund(400_000)
    custody.request("p1", 150_000)
    custody.worker().run_once()
    (first,) = custody.batches()
    custody.mine(SETTINGS.payout_bump_after_blocks, include_mempool=False)

    def crash_on_bump(batch: BatchRecord) -> None:
        if batch.bumps:
            raise CrashError(batch.id)

    with pytest.raises(CrashError):
        custody.worker(after_record=crash_on_bump).run_once()
    (bumped,) = custody.batches()
    assert bumped.txid != first.txid
    assert custody.chain.mempool_txids == [first.txid]  # the bump never left
    tick = custody.worker().run_once()
    assert (tick.rebroadcast, tick.bumped) == (1, 0)
    assert custody.chain.mempool_txids == [bumped.txid]
    custody.settle()
    custody.assert_paid_once("p1")


# --- reorgs and double spends ------------------------------------------------------------------


def test_a_reorg_that_drops_the_batch_sends_the_same_transaction_again(custody: Custody) -> None:
    custody.settings = replace(SETTINGS, payout_bump_after_blocks=10)
    custody.fund(400_000)
    custody.request("p1", 150_000)
    worker = custody.worker()
    worker.run_once()
    (batch,) = custody.batches()
    custody.mine()
    assert worker.run_once().mined == 1
    custody.chain.reorg(1, drop_txids=[batch.txid])
    custody.watch()
    tick = worker.run_once()
    assert (tick.reorged, tick.rebroadcast, tick.batches) == (1, 1, 0)
    assert custody.payouts()["p1"].status == "broadcast"
    assert custody.chain.mempool_txids == [batch.txid]
    custody.settle()
    custody.assert_paid_once("p1")


def test_a_reorg_that_moves_the_batch_to_another_block_keeps_it_mined(custody: Custody) -> None:
    custody.fund(400_000)
    custody.request("p1", 150_000)
    worker = custody.worker()
    worker.run_once()
    custody.mine()
    worker.run_once()
    (before,) = custody.batches()
    custody.chain.reorg(1)  # back to the mempool, into the new branch's first block
    custody.watch()
    tick = worker.run_once()
    assert tick.rebroadcast == 0
    (after,) = custody.batches()
    assert after.status == "mined" and after.mined_block_hash != before.mined_block_hash
    custody.settle()
    custody.assert_paid_once("p1")


def test_inputs_spent_by_another_transaction_stop_the_batch_for_good(custody: Custody) -> None:
    custody.fund(400_000)
    custody.request("p1", 150_000)
    worker = custody.worker()
    worker.run_once()
    (batch,) = custody.batches()
    with custody.uow() as uow:
        outputs = uow.btc_payouts.outputs(batch.outpoints)
    # Someone holding two keys spends the same inputs elsewhere, at a higher fee.
    inputs = [
        SpendInput(o.txid, o.vout, o.amount_sats, o.branch, o.index) for o in outputs.values()
    ]
    elsewhere = "0014" + "77" * 20
    theft = custody.wallet.sign(inputs, [TxOutput(elsewhere, 390_000)])
    custody.chain.sendrawtransaction(theft.raw_hex)
    assert custody.chain.mempool_txids == [theft.txid]
    custody.mine()
    tick = worker.run_once()
    assert (tick.stuck, tick.batches, tick.rebroadcast) == (1, 0, 0)
    (stuck,) = custody.batches()
    assert stuck.status == "stuck"
    with custody.uow() as uow:
        (alert,) = uow.books.alerts()
    assert (alert.severity, alert.kind) == ("critical", "btc_batch_stuck")
    assert theft.txid in alert.message
    view = custody.payouts()["p1"]
    assert view.status == "broadcast" and view.last_error is not None
    custody.fund(400_000)
    for _ in range(3):
        custody.mine()
        tick = worker.run_once()
        assert (tick.stuck, tick.batches, tick.broadcast, tick.rebroadcast) == (0, 0, 0, 0)
    assert custody.paid("p1") == []


def test_a_bump_without_change_takes_the_extra_fee_from_the_payout_up_to_its_cap(
    custody: Custody,
) -> None:
    # The inputs cover the payout with less than dust left over: no change output.
    custody.fund(150_300)
    custody.request("p1", 150_000)
    worker = custody.worker()
    worker.run_once()
    (first,) = custody.batches()
    assert (first.change_sats, first.change_vout) == (0, None)
    before = custody.payouts()["p1"].fee_sats
    assert before is not None
    custody.mine(SETTINGS.payout_bump_after_blocks, include_mempool=False)
    assert worker.run_once().bumped == 1
    (bumped,) = custody.batches()
    after = custody.payouts()["p1"].fee_sats
    assert after is not None and before < after <= SETTINGS.payout_fee_max_sats
    assert bumped.fee_sats == after + 300  # the leftover still goes to the fee
    # Bumped again and again, the fee would pass the payout's cap: the batch then waits as is.
    bumps = 1
    for _ in range(20):
        custody.mine(SETTINGS.payout_bump_after_blocks, include_mempool=False)
        bumps += worker.run_once().bumped
        (last,) = custody.batches()
        if last.last_error is not None:
            break
    assert 3 < bumps == last.bumps
    view = custody.payouts()["p1"]
    assert view.fee_sats is not None and view.fee_sats <= SETTINGS.payout_fee_max_sats
    assert last.last_error is not None and "waits as it is" in last.last_error
    assert custody.chain.mempool_txids == [last.txid]
    custody.settle()
    custody.assert_paid_once("p1")


class LosingAnswers:
    """The node, with the answer to ``sendrawtransaction`` lost on the way back (``delivered``:
    whether the transaction reached it first)."""

    def __init__(self, chain: FakeChain, *, delivered: bool) -> None:
        self._chain = chain
        self._delivered = delivered

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)

    def sendrawtransaction(self, raw_hex: str) -> str:
        if self._delivered:
            self._chain.sendrawtransaction(raw_hex)
        raise NodeUnavailableError("timed out")


@pytest.mark.parametrize("delivered", [False, True])
def test_an_unanswered_broadcast_is_settled_by_txid(custody: Custody, delivered: bool) -> None:
    custody.fund(400_000)
    custody.request("p1", 150_000)
    tick = custody.worker(node=LosingAnswers(custody.chain, delivered=delivered)).run_once()
    assert tick.batches == 1 and "unanswered" in tick.errors[0]
    (batch,) = custody.batches()
    assert batch.status == "signed"
    assert custody.chain.mempool_txids == ([batch.txid] if delivered else [])
    tick = custody.worker().run_once()
    assert (tick.recovered, tick.broadcast, tick.batches) == (1, 0 if delivered else 1, 0)
    assert custody.chain.mempool_txids == [batch.txid]
    custody.settle()
    custody.assert_paid_once("p1")


def test_nothing_moves_while_paused(custody: Custody) -> None:
    custody.fund(400_000)
    custody.request("p1", 150_000)
    pause(custody.uow, mode="paused", reason="audit", actor="ops", at=custody.clock())
    tick = custody.worker().run_once()
    assert (tick.paused, tick.batches) == ("paused", 0)
    assert custody.batches() == []
    resume(custody.uow, reason="done", actor="ops", at=custody.clock())
    assert custody.worker().run_once().batches == 1


def test_a_bump_in_a_rising_market_goes_to_the_current_estimate(custody: Custody) -> None:
    custody.fund(400_000)
    custody.request("p1", 150_000)
    worker = custody.worker()
    worker.run_once()
    (first,) = custody.batches()
    custody.chain.set_fee_rate(Decimal(40))
    custody.mine(SETTINGS.payout_bump_after_blocks, include_mempool=False)
    assert worker.run_once().bumped == 1
    (bumped,) = custody.batches()
    assert Decimal(first.fee_rate_sat_vb) == 5
    assert Decimal(bumped.fee_rate_sat_vb) >= 40
    custody.settle()
    custody.assert_paid_once("p1")


def test_a_batch_mined_beyond_the_watchers_cursor_is_not_bumped(custody: Custody) -> None:
    custody.fund(400_000)
    custody.request("p1", 150_000)
    worker = custody.worker()
    worker.run_once()
    (batch,) = custody.batches()
    custody.mine(SETTINGS.payout_bump_after_blocks, include_mempool=False)
    custody.chain.mine()  # it is mined; the watcher has not seen that block yet
    tick = worker.run_once()
    assert (tick.bumped, tick.errors) == (0, [])
    (same,) = custody.batches()
    assert (same.txid, same.bumps) == (batch.txid, 0)
    custody.settle()
    custody.assert_paid_once("p1")
