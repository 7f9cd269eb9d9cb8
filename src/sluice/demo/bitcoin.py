"""Chapter: Bitcoin custody, on the embedded defaults — a sandbox 2-of-3 custody (three keys made in
the data folder, two of them sign) on the in-memory chain.

The customers get deposit addresses and deposit (one of them dust); blocks are mined and the
deposit watcher confirms the deposits at 6 confirmations. A reorg two blocks deep drops one
unconfirmed deposit and moves another to a block of the new branch: the first ends ``reorged``,
the second is the same deposit in its new block, confirmed once. Three payouts are queued and
leave in one 2-of-3 transaction, their share of the fee deducted; the worker that broadcast it
dies before recording that, and the next one finds it in the mempool instead of paying again.
The fee market rises and blocks come without it, so it is fee-bumped (a new txid, the same
inputs, the same payouts), mined and completed at 6 confirmations — each destination paid by one
transaction on the chain. Last, the custody balance at the watcher's height and block hash, which
is the chain's own UTXO set for the custody's descriptors.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from rich.console import Console
from rich.table import Table

from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.demo.report import Chapter, Sections, Status, mark
from sluice.demo.world import CUSTOMERS, OFFICER, Customer, Exchange
from sluice.domain.chains import CHAINS, to_coins, to_sats
from sluice.ports.bitcoin import NotFoundError
from sluice.ports.bitcoin_payouts import BatchRecord
from sluice.ports.bitcoin_watch import CustodyBalance, DepositView
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.btc_addresses import change_address, deposit_address
from sluice.services.btc_payouts import PayoutView, PayoutWorker, list_payouts, request_payout
from sluice.services.btc_watcher import DepositWatcher, custody_balance, list_deposits

CHAIN = CHAINS["regtest"]
# Batches leave as soon as a payout waits (the three are queued before the worker runs).
SETTINGS = BitcoinSettings(chain=CHAIN, payout_batch_window_s=0.0, payout_bump_after_blocks=2)
KEYS_DIR = "bitcoin-keys"
LOG_FILE = "bitcoin.log"
FIRST_DEPOSITS = (50_000_000, 25_000_000, 10_000_000)  # Alice, Bob, Carol
DUST_SATS = 300  # Dave's, under the regtest P2WSH dust limit (330)
DROPPED_SATS = 2_000_000  # Erin's, dropped by the reorg
MOVED_SATS = 3_000_000  # Bob's second, moved to the new branch
PAYOUTS = (
    ("demo-payout-1", "operator", 10_000_000),
    ("demo-payout-2", "redemption", 5_000_000),
    ("demo-payout-3", "return", 2_000_000),
)
# The exchange's own Bitcoin in custody, which the operator payout and the return are paid from.
FLOAT_SATS = 15_000_000
ROUNDS_MAX = 10  # bound on the empty blocks mined while waiting for the fee bump


class WorkerDied(Exception):  # noqa: N818 - not an error: the demo kills the worker on purpose
    """The payouts worker dies right after broadcasting, before recording it."""


@dataclass(frozen=True, slots=True)
class Step:
    what: str
    result: str
    ok: bool


@dataclass(slots=True)
class BitcoinStory:
    """What the custody did, step by step, and the deposits, payouts and balance at the end."""

    names: dict[str, str]  # customer id → name
    steps: list[Step] = field(default_factory=list)
    deposits: list[DepositView] = field(default_factory=list)
    payouts: list[PayoutView] = field(default_factory=list)
    balance: CustodyBalance | None = None
    chain_sats: int = 0  # the chain's UTXO set for the custody's descriptors

    def check(self, what: str, result: str, ok: bool) -> None:
        self.steps.append(Step(what, result, ok))


def btc(sats: int) -> str:
    return f"{to_coins(sats):.8f} BTC"


def sats_text(sats: int) -> str:
    return f"{sats:,} sats"


def outside_address(wallet: EmbitCustodyWallet, payout_id: str) -> str:
    """A P2WPKH address outside custody (a made-up key hash) for a payout to pay."""
    address = wallet.address_of("0014" + hashlib.sha256(payout_id.encode()).hexdigest()[:40])
    assert address is not None
    return address


@contextmanager
def custody_log(path: Path) -> Iterator[None]:
    """The custody services' log lines (the watcher's structlog, the payouts worker's logging) go
    to ``path`` in the data folder, not into the report; logging set up by whoever runs the demo
    is left as it is."""
    with path.open("w") as file:
        configure = not structlog.is_configured()
        if configure:
            structlog.configure(
                processors=[
                    structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.dev.ConsoleRenderer(colors=False),
                ],
                logger_factory=structlog.WriteLoggerFactory(file),
            )
        payouts_log = logging.getLogger("sluice.services.btc_payouts")
        handler: logging.Handler | None = None
        propagate = payouts_log.propagate
        if not logging.getLogger().handlers:
            handler = logging.StreamHandler(file)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            payouts_log.addHandler(handler)
            payouts_log.propagate = False
        try:
            yield
        finally:
            if handler is not None:
                payouts_log.removeHandler(handler)
                payouts_log.propagate = propagate
            if configure:
                structlog.reset_defaults()


class Custody:
    """The demo's custody: keys, wallet, chain, watcher, as the chapter drives them."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.uow = exchange.database.uow
        made = create_sandbox_custody(exchange.world.data_dir / KEYS_DIR, CHAIN)
        keys = load_signing_keys(list(made.key_files[:2]), chain=CHAIN)
        self.wallet = EmbitCustodyWallet(made.descriptor, CHAIN, keys)
        self.node = FakeChain(CHAIN, clock=exchange.clock)
        self.watcher = DepositWatcher(self.uow, self.node, self.wallet, SETTINGS, exchange.clock)

    def address(self, customer: Customer) -> str:
        derived = deposit_address(self.uow, self.wallet, customer.id, clock=self.exchange.clock)
        return derived.script_hex

    def mine_and_watch(self, blocks: int = 1, *, include_mempool: bool = True) -> list[str]:
        hashes = self.node.mine(blocks, include_mempool=include_mempool)
        tick = self.watcher.run_once()
        assert tick.error is None, tick.error
        return hashes

    def deposits(self) -> dict[tuple[str, int], DepositView]:
        return {(d.txid, d.vout): d for d in list_deposits(self.uow)}

    def worker(self, *, die_after_broadcast: bool = False) -> PayoutWorker:
        def die(_batch: BatchRecord) -> None:
            raise WorkerDied

        return PayoutWorker(
            self.uow,
            self.node,
            self.wallet,
            SETTINGS,
            self.exchange.clock,
            after_broadcast=die if die_after_broadcast else None,
        )

    def batch(self, batch_id: str | None) -> BatchRecord | None:
        if batch_id is None:
            return None
        with self.uow() as uow:
            return uow.btc_payouts.get_batch(batch_id)

    def payments_on_chain(self, script_hex: str) -> list[tuple[str, int]]:
        """Every output of the active chain paying ``script_hex``: (txid, sats)."""
        found = []
        for height in range(self.node.tip_height + 1):
            for tx in self.node.getblock(self.node.getblockhash(height))["tx"]:
                for out in tx["vout"]:
                    if out["scriptPubKey"]["hex"] == script_hex:
                        found.append((tx["txid"], to_sats(out["value"])))
        return found

    def in_active_chain(self, txid: str) -> bool:
        try:
            return bool(self.node.getrawtransaction(txid).get("confirmations", 0) > 0)
        except NotFoundError:
            return False


def deposits_confirmed(custody: Custody, story: BitcoinStory) -> None:
    """Deposit addresses for every customer; three deposits and a dust one, confirmed at 6."""
    alice, bob, carol, dave, _erin = CUSTOMERS
    funded = [
        (customer, custody.node.fund(custody.address(customer), sats))
        for customer, sats in (
            *zip((alice, bob, carol), FIRST_DEPOSITS, strict=True),
            (dave, DUST_SATS),
        )
    ]
    custody.mine_and_watch()
    seen = custody.deposits()
    custody.mine_and_watch(SETTINGS.confirmations_min - 1)
    after = custody.deposits()
    names = ", ".join(
        f"{customer.name} {btc(sats)}"
        for customer, sats in zip((alice, bob, carol), FIRST_DEPOSITS, strict=True)
    )
    statuses = [(seen[outpoint].status, after[outpoint].status) for _, outpoint in funded]
    story.check(
        f"deposits to custody addresses: {names}; {dave.name} {sats_text(DUST_SATS)}",
        "seen at 1 confirmation, confirmed at "
        f"{SETTINGS.confirmations_min}; the dust one recorded as dust, never confirmed",
        statuses == [("seen", "confirmed")] * 3 + [("dust", "dust")],
    )


def reorg(custody: Custody, story: BitcoinStory) -> None:
    """A reorg 2 blocks deep: Erin's unconfirmed deposit dropped, Bob's second one moved."""
    _alice, bob, _carol, _dave, erin = CUSTOMERS
    node = custody.node
    # Bob's first address was funded: he is given a new one.
    dropped = node.fund(custody.address(erin), DROPPED_SATS)
    moved = node.fund(custody.address(bob), MOVED_SATS)
    old_block = custody.mine_and_watch()[0]
    custody.mine_and_watch()
    before = custody.deposits()
    node.reorg(2, drop_txids=[dropped[0]])
    tick = custody.watcher.run_once()
    after_reorg = custody.deposits()
    new_block = after_reorg[moved].block_hash
    custody.mine_and_watch(SETTINGS.confirmations_min - after_reorg[moved].confirmations)
    after = custody.deposits()
    rows = list_deposits(custody.uow)
    counted = sum(1 for d in rows if (d.txid, d.vout) == moved)
    confirmed = sum(d.amount_sats for d in rows if d.status == "confirmed")
    story.check(
        f"{erin.name} deposits {btc(DROPPED_SATS)}, {bob.name} {btc(MOVED_SATS)} (a new "
        f"address: his first was funded); both in block {before[moved].block_height}, 2 "
        "confirmations",
        f"reorg of depth 2 seen ({tick.reorgs} reorg, {tick.rolled_back_blocks} blocks rolled "
        "back): "
        f"{erin.name}'s dropped → {after[dropped].status}; {bob.name}'s moved from "
        f"{old_block[:12]}… to {str(new_block)[:12]}…, the same deposit, "
        f"{after[moved].status} once at {after[moved].confirmations}; confirmed in all "
        f"{btc(confirmed)}",
        before[dropped].status == before[moved].status == "seen"
        and tick.reorgs == 1
        and after[dropped].status == "reorged"
        and new_block != old_block
        and after[moved].status == "confirmed"
        and counted == 1
        and confirmed == sum(FIRST_DEPOSITS) + MOVED_SATS,
    )


def payouts(custody: Custody, story: BitcoinStory) -> None:
    """Three payouts in one 2-of-3 batch; a crash after its broadcast; a fee bump; completion."""
    uow, clock, node = custody.uow, custody.exchange.clock, custody.node
    addresses = {payout_id: outside_address(custody.wallet, payout_id) for payout_id, *_ in PAYOUTS}

    def request(payout_id: str, kind: str, sats: int) -> PayoutView:
        return request_payout(
            uow,
            custody.wallet,
            SETTINGS,
            payout_id=payout_id,
            address=addresses[payout_id],
            amount_sats=sats,
            kind=kind,
            requested_by=OFFICER,
            clock=clock,
        )

    # Customers' deposits are owed to them (as iSTSi once minted, or back): payouts other than
    # redemptions are paid from the exchange's own Bitcoin. Its float goes to a change address of
    # the custody (it is not a deposit: nothing is minted against it).
    with uow() as work:
        float_address = change_address(work, custody.wallet, clock)
        work.commit()
    node.fund(float_address.script_hex, FLOAT_SATS)
    custody.mine_and_watch()
    for payout in PAYOUTS:
        request(*payout)
    repeated = request(*PAYOUTS[0])
    queued = list_payouts(uow)
    story.check(
        f"{len(PAYOUTS)} payouts queued ({', '.join(f'{k} {btc(s)}' for _, k, s in PAYOUTS)}); "
        f"the first one requested again with its id",
        f"{len(queued)} payouts, all {', '.join(sorted({p.status for p in queued}))}; the "
        f"repeat answered the first request ({repeated.status})",
        len(queued) == len(PAYOUTS) and all(p.status == "queued" for p in queued),
    )

    died = False
    try:
        custody.worker(die_after_broadcast=True).run_once()
    except WorkerDied:
        died = True
    signed = list_payouts(uow)
    batch_id = signed[0].batch_id
    first = custody.batch(batch_id)
    in_mempool = node.mempool_txids
    worker = custody.worker()
    recovered = worker.run_once()
    sent = custody.batch(batch_id)
    story.check(
        "the payouts worker batches them, signs 2 of 3, records the batch, broadcasts it — and "
        "dies before recording the broadcast",
        f"one transaction {first.txid[:12] if first else '?'}… spending "
        f"{len(first.outpoints) if first else 0} custody output(s), in the mempool; a new "
        f"worker finds it there ({recovered.recovered} recovered): {sent.status if sent else '?'}"
        ", nothing sent twice",
        died
        and first is not None
        and sent is not None
        and len({p.batch_id for p in signed}) == 1
        and in_mempool == [first.txid]
        and node.mempool_txids == [first.txid]
        and sent.txid == first.txid
        and sent.status == "broadcast",
    )

    bumped_tick = None
    for _ in range(ROUNDS_MAX):
        custody.mine_and_watch(include_mempool=False)
        tick = worker.run_once()
        if tick.bumped:
            bumped_tick = tick
            break
    bumped = custody.batch(batch_id)
    same = [p.batch_id for p in list_payouts(uow)]
    story.check(
        "blocks come without it (full blocks)",
        f"fee-bumped after {SETTINGS.payout_bump_after_blocks} blocks (RBF): txid "
        f"{first.txid[:12] if first else '?'}… → {bumped.txid[:12] if bumped else '?'}…, fee "
        f"{sats_text(first.fee_sats if first else 0)} → "
        f"{sats_text(bumped.fee_sats if bumped else 0)} (the extra from the change); the same "
        "inputs, the same batch, the same payouts",
        bumped_tick is not None
        and first is not None
        and bumped is not None
        and bumped.txid != first.txid
        and bumped.outpoints == first.outpoints
        and bumped.fee_sats > first.fee_sats
        and same == [batch_id] * len(PAYOUTS)
        and node.mempool_txids == [bumped.txid],
    )

    custody.mine_and_watch()
    worker.run_once()
    custody.mine_and_watch(SETTINGS.confirmations_min - 1)
    worker.run_once()
    done = list_payouts(uow)
    final = custody.batch(batch_id)
    paid = {
        p.id: custody.payments_on_chain(custody.wallet.validate_address(p.address)) for p in done
    }
    story.payouts = done
    story.check(
        "the bumped transaction is mined; the watcher and the worker follow it to "
        f"{SETTINGS.confirmations_min} confirmations",
        f"{sum(p.status == 'completed' for p in done)} of {len(done)} completed; each "
        "destination paid by one transaction, the amount less its share of the fee; the "
        "replaced version never mined",
        final is not None
        and first is not None
        and all(p.status == "completed" for p in done)
        and all(
            paid[p.id] == [(final.txid, p.amount_sats - (p.fee_sats or 0))] and p.fee_sats
            for p in done
        )
        and custody.in_active_chain(final.txid)
        and not custody.in_active_chain(first.txid),
    )


def balance(custody: Custody, story: BitcoinStory) -> None:
    """The custody balance at the watcher's height and hash, against the chain's UTXO set."""
    story.balance = found = custody_balance(custody.uow)
    scan = custody.node.scantxoutset(
        [{"desc": custody.wallet.descriptor_of_branch(b), "range": [0, 20]} for b in (0, 1)]
    )
    story.chain_sats = to_sats(scan["total_amount"])
    story.deposits = list_deposits(custody.uow)
    tip = custody.node.getblockchaininfo()
    story.check(
        f"sluice btc balance at height {found.height} ({str(found.block_hash)[:12]}…)",
        f"{btc(found.total_sats)} in {len(found.utxos)} outputs ({btc(found.confirmed_sats)} "
        f"confirmed); the chain's UTXO set for the custody's descriptors: "
        f"{btc(story.chain_sats)}",
        found.height == tip["blocks"]
        and found.block_hash == tip["bestblockhash"]
        and found.total_sats == story.chain_sats,
    )


def run(exchange: Exchange, status: Status) -> BitcoinStory:
    story = BitcoinStory({c.id: c.name for c in CUSTOMERS})
    with (
        status("bitcoin custody: deposits, a reorg, a batched payout, a crash, a fee bump…"),
        custody_log(exchange.world.data_dir / LOG_FILE),
    ):
        custody = exchange.custody = Custody(exchange)  # the iSTSi chapter goes on with it
        for part in (deposits_confirmed, reorg, payouts, balance):
            part(custody, story)
    return story


def show(console: Console, story: BitcoinStory, sections: Sections) -> bool:
    steps = Table(
        title=f"{sections.next()}. Bitcoin custody: a 2-of-3 sandbox custody on the in-memory "
        "chain",
        title_justify="left",
    )
    for column in ("step", "result", ""):
        steps.add_column(column)
    for step in story.steps:
        steps.add_row(step.what, step.result, mark(step.ok))
    console.print()
    console.print(steps)

    deposits = Table(title=f"{sections.next()}. Bitcoin deposits", title_justify="left")
    for column in ("customer", "amount", "confirmations", "status", "block", "outpoint"):
        deposits.add_column(column, justify="right" if column == "confirmations" else "left")
    order = {customer_id: n for n, customer_id in enumerate(story.names)}

    def by_block(d: DepositView) -> tuple[bool, int, int]:
        return d.block_height is None, d.block_height or 0, order.get(d.customer or "", 0)

    for d in sorted(story.deposits, key=by_block):
        deposits.add_row(
            story.names.get(d.customer or "", d.customer or ""),
            btc(d.amount_sats),
            str(d.confirmations),
            d.status,
            str(d.block_height) if d.block_height is not None else "–",
            f"{d.txid[:12]}…:{d.vout}",
        )
    console.print()
    console.print(deposits)

    payouts = Table(title=f"{sections.next()}. Bitcoin payouts", title_justify="left")
    for column in ("payout", "kind", "amount", "fee", "txid", "confirmations", "status"):
        payouts.add_column(column, justify="right" if column == "confirmations" else "left")
    for p in story.payouts:
        payouts.add_row(
            p.id,
            p.kind,
            btc(p.amount_sats),
            sats_text(p.fee_sats or 0),
            f"{p.txid[:12]}…" if p.txid else "–",
            str(p.confirmations),
            p.status,
        )
    if story.balance is not None:
        payouts.caption = (
            f"custody balance {btc(story.balance.total_sats)} at height {story.balance.height}"
        )
    console.print()
    console.print(payouts)
    return bool(story.steps) and all(step.ok for step in story.steps)


CHAPTER = Chapter("bitcoin custody", run, show)
