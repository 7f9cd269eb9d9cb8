"""Bitcoin custody, on the in-memory chain of the embedded defaults: the customers deposit to
their custody addresses (now and then dust), miners mine (now and then blocks that leave the
mempool out, so a payout waits and is fee-bumped), the chain reorganises 1–3 blocks deep (now and
then dropping a transaction), the node evicts a mempool transaction, the deposit watcher runs, an
operator requests a payout (now and then the same one again), and the payouts worker runs, dying
now and then right after recording a batch or right after broadcasting it. Now and then the
connection of the watcher or the worker to the node drops in the middle of a round — for a
broadcast, after the node took the transaction, so that its answer is lost.

The custody is made the first time one of these actions is drawn, so a run that draws none pays
nothing for it. Its keys are fixed (made from constant seeds, never from the run's random source,
which they would not draw from anyway): the transactions the worker signs, and so their txids and
whatever is ordered by them, are the same in every process — a seed gives the same run.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import TypeVar

import structlog
from embit import bip32  # type: ignore[import-untyped]
from embit.descriptor.checksum import add_checksum  # type: ignore[import-untyped]

from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import SigningKey
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.chains import CHAINS
from sluice.domain.errors import MintGuardError
from sluice.ports.bitcoin import JsonObject, NodeUnavailableError
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.btc_addresses import deposit_address
from sluice.services.btc_payouts import PayoutWorker, request_payout
from sluice.services.btc_watcher import DepositWatcher
from sluice.sim.actors.actor import Action, Actor
from sluice.sim.faults import crash_point
from sluice.sim.state import BitcoinCustody, PayoutRequest, SimulationState

WATCHER = "btc_watcher"
PAYOUTS = "btc_payouts"
CHAIN = CHAINS["regtest"]
# Confirmations above the deepest reorg drawn (3): a confirmed output is never reorged, as on a
# real chain with a sensible confirmations_min. Short windows and bumps after two blocks, so
# batching and fee bumps happen within a few hundred steps; a watcher that reads a few blocks
# per round, so it is now and then behind the tip.
SETTINGS = BitcoinSettings(
    chain=CHAIN,
    confirmations_min=4,
    payout_batch_max=4,
    payout_batch_window_s=30.0,
    payout_bump_after_blocks=2,
    watch_blocks_max=6,
)
REORG_DEPTH_MAX = 3
DEPOSIT_SATS = (10_000, 5_000_000)
PAYOUT_SATS = (100_000, 1_500_000)  # at least the fee cap and the dust limit
FEE_RATES_SAT_VB = (None, Decimal(2), Decimal(5), Decimal(12))
_Result = TypeVar("_Result")


@contextmanager
def quiet() -> Iterator[None]:
    """The custody services log every round (the watcher with structlog, the payouts worker with
    logging); what a simulation prints is its JSON line, and what happened is in its outcomes."""
    disabled = logging.root.manager.disable
    with structlog.testing.capture_logs():
        logging.disable(max(disabled, logging.WARNING))
        try:
            yield
        finally:
            logging.disable(disabled)


def quietly(call: Callable[[], _Result]) -> _Result:
    with quiet():
        return call()


@functools.cache
def custody_wallet() -> EmbitCustodyWallet:
    """The simulation's 2-of-3 custody over three fixed keys (the descriptor holds their public
    halves; two of them sign). Made once per process: it caches what it derives."""
    roots = [
        bip32.HDKey.from_seed(
            hashlib.sha256(b"sluice simulation custody key %d" % n).digest(),
            version=CHAIN.xprv_version,
        )
        for n in range(3)
    ]
    xpubs = [root.to_public().to_base58(version=CHAIN.xpub_version) for root in roots]
    descriptor = add_checksum(f"wsh(sortedmulti(2,{','.join(f'{x}/0/*' for x in xpubs)}))")
    keys = [SigningKey(root, source=f"simulation key {n}") for n, root in enumerate(roots[:2])]
    return EmbitCustodyWallet(str(descriptor), CHAIN, keys)


class DroppingLink:
    """The node as the exchange's processes reach it, whose connection can be made to drop at the
    n-th call of a round: before the call reaches the node or, for a broadcast, after the node
    took the transaction (its answer is lost — the payouts worker must then check by txid, never
    send a new transaction)."""

    def __init__(self, node: FakeChain) -> None:
        self.node = node
        self._calls_left: int | None = None
        self.dropped: str | None = None  # the call at which it dropped

    def arm(self, calls: int) -> None:
        """Drop the connection at the call after ``calls`` more have gone through."""
        self._calls_left, self.dropped = calls, None

    def disarm(self) -> None:
        self._calls_left = None

    def _drops(self, call: str) -> bool:
        if self._calls_left is None:
            return False
        if self._calls_left == 0:
            self._calls_left, self.dropped = None, call
            return True
        self._calls_left -= 1
        return False

    def _check(self, call: str) -> None:
        if self._drops(call):
            raise NodeUnavailableError("the connection to the node dropped")

    def getblockchaininfo(self) -> JsonObject:
        self._check("getblockchaininfo")
        return self.node.getblockchaininfo()

    def getblockhash(self, height: int) -> str:
        self._check("getblockhash")
        return self.node.getblockhash(height)

    def getblock(self, block_hash: str) -> JsonObject:
        self._check("getblock")
        return self.node.getblock(block_hash)

    def getrawtransaction(self, txid: str, block_hash: str | None = None) -> JsonObject:
        self._check("getrawtransaction")
        return self.node.getrawtransaction(txid, block_hash)

    def sendrawtransaction(self, raw_hex: str) -> str:
        drops = self._drops("sendrawtransaction")
        txid = self.node.sendrawtransaction(raw_hex)
        if drops:
            raise NodeUnavailableError("the connection dropped before the node answered")
        return txid

    def testmempoolaccept(self, raw_hexes: list[str]) -> list[JsonObject]:
        self._check("testmempoolaccept")
        return self.node.testmempoolaccept(raw_hexes)

    def estimatesmartfee(self, conf_target: int) -> JsonObject:
        self._check("estimatesmartfee")
        return self.node.estimatesmartfee(conf_target)

    def scantxoutset(self, descriptors: list[str | JsonObject]) -> JsonObject:
        self._check("scantxoutset")
        return self.node.scantxoutset(descriptors)

    def getmempoolentry(self, txid: str) -> JsonObject:
        self._check("getmempoolentry")
        return self.node.getmempoolentry(txid)


def custody(sim: SimulationState) -> BitcoinCustody:
    """The run's custody, made on first use."""
    if sim.bitcoin is None:
        node = FakeChain(CHAIN, clock=sim.sandbox.clock)
        sim.bitcoin = BitcoinCustody(node, custody_wallet(), SETTINGS, DroppingLink(node))
        sim.dirty = True  # the checks read the btc_* tables from now on
    return sim.bitcoin


def watcher(sim: SimulationState) -> DepositWatcher:
    bitcoin = custody(sim)
    return sim.process(
        WATCHER,
        lambda: DepositWatcher(
            sim.sandbox.database.uow,
            bitcoin.link,
            bitcoin.wallet,
            bitcoin.settings,
            sim.sandbox.clock,
        ),
    )


def payout_worker(sim: SimulationState) -> PayoutWorker:
    bitcoin = custody(sim)

    def after_record(*_: object) -> None:
        crash_point(sim, "btc_after_record")

    def after_broadcast(*_: object) -> None:
        crash_point(sim, "btc_after_broadcast")

    return sim.process(
        PAYOUTS,
        lambda: PayoutWorker(
            sim.sandbox.database.uow,
            bitcoin.link,
            bitcoin.wallet,
            bitcoin.settings,
            sim.sandbox.clock,
            after_record=after_record,
            after_broadcast=after_broadcast,
        ),
    )


# --- the outside world: customers, miners, the node --------------------------------------------


def deposit(sim: SimulationState) -> None:
    """A customer pays their current custody address; one deposit in eight is dust."""
    bitcoin = custody(sim)
    customer = sim.rng.choice(sim.customer_ids)
    address = deposit_address(
        sim.sandbox.database.uow, bitcoin.wallet, customer, clock=sim.sandbox.clock
    )
    if sim.rng.random() < 0.125:
        sats = sim.rng.randint(1, CHAIN.p2wsh_dust_limit_sats - 1)
        sim.result.outcomes["btc_deposit_dust"] += 1
    else:
        sats = sim.rng.randint(*DEPOSIT_SATS)
        sim.result.outcomes["btc_deposit"] += 1
    txid, _ = bitcoin.node.fund(address.script_hex, sats)
    bitcoin.funded[txid] = (customer, sats)


def mine(sim: SimulationState) -> None:
    """1–5 blocks; a quarter of the time they leave the mempool out (full blocks), and now and
    then the fee market moves."""
    node = custody(sim).node
    if sim.rng.random() < 0.15:
        node.set_fee_rate(sim.rng.choice(FEE_RATES_SAT_VB))
    include_mempool = sim.rng.random() >= 0.25
    node.mine(sim.rng.randint(1, 5), include_mempool=include_mempool)
    sim.result.outcomes["btc_blocks_mined" if include_mempool else "btc_blocks_mined_empty"] += 1


def reorg(sim: SimulationState) -> None:
    """The top 1–3 blocks are replaced by a longer branch; a third of the time one of their
    transactions (a deposit, a payout batch) is dropped and never comes back."""
    node = custody(sim).node
    depth = min(sim.rng.randint(1, REORG_DEPTH_MAX), node.tip_height)
    if depth < 1:
        return
    dropped: list[str] = []
    if sim.rng.random() < 1 / 3:
        candidates = [
            tx["txid"]
            for height in range(node.tip_height - depth + 1, node.tip_height + 1)
            for tx in node.getblock(node.getblockhash(height))["tx"][1:]  # not the coinbase
        ]
        if candidates:
            dropped.append(sim.rng.choice(candidates))
    node.reorg(depth, drop_txids=dropped)
    sim.result.outcomes[f"btc_reorg_{depth}" + ("_dropping" if dropped else "")] += 1


def evict(sim: SimulationState) -> None:
    """The node drops a mempool transaction (and what spends it), as under memory pressure."""
    node = custody(sim).node
    waiting = node.mempool_txids
    if waiting:
        node.evict(sim.rng.choice(waiting))
        sim.result.outcomes["btc_evicted"] += 1


# --- the exchange: the watcher, payout requests, the payouts worker ----------------------------


def drop_link_now_and_then(sim: SimulationState) -> DroppingLink:
    """A tenth of the time, the connection to the node drops within the round's first calls."""
    link = custody(sim).link
    assert isinstance(link, DroppingLink)
    if sim.rng.random() < 0.1:
        link.arm(sim.rng.randint(0, 6))
    return link


def watch(sim: SimulationState) -> None:
    link = drop_link_now_and_then(sim)
    try:
        tick = quietly(watcher(sim).run_once)
    finally:
        link.disarm()
    outcomes = sim.result.outcomes
    outcomes["btc_watch_reorgs"] += tick.reorgs
    outcomes["btc_confirmed"] += tick.confirmed
    if link.dropped:
        outcomes[f"btc_link_dropped_at_{link.dropped}"] += 1
    elif tick.error is not None:
        sim.violation("error", f"the deposit watcher stopped: {tick.error}")


def request(sim: SimulationState) -> None:
    """An operator queues a payout to an address of its own; a fifth of the time, one already
    requested is sent again (the same id and terms: nothing new)."""
    bitcoin = custody(sim)
    # Its own payouts only (the issuance actor adds the redemptions' to follow them).
    own = [p for p in bitcoin.payouts.values() if p.id.startswith("sim-payout-")]
    if own and sim.rng.random() < 0.2:
        payout = sim.rng.choice(own)
        sim.result.outcomes["btc_payout_repeated"] += 1
    else:
        number = len(bitcoin.payouts) + 1
        # A P2WPKH script of its own: every output to it on the chain pays this payout.
        digest = hashlib.sha256(b"sluice simulation payout %d" % number).hexdigest()
        script = "0014" + digest[:40]
        address = bitcoin.wallet.address_of(script)
        assert address is not None
        payout = PayoutRequest(
            f"sim-payout-{number}", address, script, sim.rng.randint(*PAYOUT_SATS)
        )
        sim.result.outcomes["btc_payout_requested"] += 1
    try:
        request_payout(
            sim.sandbox.database.uow,
            bitcoin.wallet,
            bitcoin.settings,
            payout_id=payout.id,
            address=payout.address,
            amount_sats=payout.amount_sats,
            kind="operator",
            requested_by="sim-operator",
            clock=sim.sandbox.clock,
        )
    except MintGuardError:
        # It would spend Bitcoin that backs the iSTSi minted: refused, nothing queued.
        sim.result.outcomes["btc_payout_refused_by_guard"] += 1
        return
    bitcoin.payouts[payout.id] = payout


def pay(sim: SimulationState) -> None:
    link = drop_link_now_and_then(sim)
    try:
        tick = quietly(payout_worker(sim).run_once)
    finally:
        link.disarm()
    outcomes = sim.result.outcomes
    if link.dropped:
        outcomes[f"btc_link_dropped_at_{link.dropped}"] += 1
    outcomes["btc_batches"] += tick.batches
    outcomes["btc_bumped"] += tick.bumped
    outcomes["btc_rebroadcast"] += tick.rebroadcast
    outcomes["btc_recovered"] += tick.recovered
    outcomes["btc_batches_reorged"] += tick.reorged
    outcomes["btc_payouts_completed"] += tick.completed
    outcomes["btc_payouts_insufficient"] += tick.insufficient
    # What the worker could not do this round (a bump the node refused because the batch was
    # mined beyond the watcher's cursor, …) it tries again; a stuck batch raises an alert, which
    # the alerts check reports.
    outcomes["btc_worker_errors"] += len(tick.errors)


ACTOR = Actor(
    "bitcoin",
    (
        Action("btc_deposit", 3, deposit),
        Action("btc_mine", 4, mine, ledger_only=True),
        Action("btc_reorg", 1, reorg, ledger_only=True),
        Action("btc_evict", 1, evict, ledger_only=True),
        Action("btc_watch", 4, watch),
        Action("btc_request_payout", 2, request),
        Action("btc_pay", 3, pay),
    ),
)
