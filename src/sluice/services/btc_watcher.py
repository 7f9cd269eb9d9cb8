"""The deposit watcher: follows the Bitcoin chain block by block and records every output to a
custody script, the spends of custody outputs, and confirmations.

Guarantees:

* **One block, one transaction.** A block's row in ``btc_blocks`` (the cursor is the highest
  row), the custody outputs found in it, the custody outputs its inputs spend and the deposits
  that reach ``confirmations_min`` at it are committed together — the tracking-record pattern of
  ingestion. A crash loses a whole block or nothing, and a restart resumes from the cursor.
* **Confirmed exactly once.** Confirmations are counted from the cursor (``cursor_height −
  block_height + 1``), and ``seen → confirmed`` is a status change in the block's transaction,
  so a replayed or restarted watcher cannot confirm twice. A confirmed customer deposit opens its
  ``bitcoin_deposit`` issuance operation in that same transaction (services/issuance_intake.py).
* **Reorgs are undone, not forgotten.** A reorg is detected by the hash chain (the node's hash at
  the cursor's height, or the next block's ``previousblockhash``, differs from the cursor's). The
  watcher walks back to the fork point comparing stored hashes with ``getblockhash``, and in one
  transaction deletes the blocks above it, marks the outputs found only in them ``reorged`` and
  clears the spends recorded in them; then it applies the new branch. The same ``txid:vout``
  seen again is the same row, and counts its confirmations again from its new block. A confirmed
  (or credited) deposit that is reorged raises an alert (critical when credited) and is audited;
  a credited one that comes back stays credited, so it is never credited twice. A credited
  deposit reorged also halts minting (issuance_intake, in the rollback's transaction).
* **A rollback undoes only what it was computed from.** The fork point is found outside any
  transaction; the rollback's transaction first checks (and locks) the stored tip it was found
  under. When another watcher moved it meanwhile, nothing is rolled back and the round ends (the
  next one checks again), so a second watcher never undoes the first one's new branch nor
  reports its deposits reorged.
* **Only blocks of the active chain, on top of their parent.** A block whose ``getblock``
  answer says ``confirmations < 1`` (the node left its branch, e.g. one read ahead just before a
  reorg) is never applied, and a block's transaction refuses it unless the stored row at
  ``height − 1`` is its ``previousblockhash`` (another watcher may have moved the stored chain
  since it was fetched). Either ends the round; the next one resolves it from the stored
  cursor.
* **``confirmations_min`` may change between runs.** Lowered, it confirms the outputs that
  already have enough confirmations at the next round, with no new block needed (in a
  transaction that holds the stored tip, audited with the setting's value). Raised, it applies
  to outputs still ``seen``; an output already ``confirmed`` (or ``credited``) stays so.
  Confirmation is a decision taken once at the cursor: the mint may have credited the deposit
  and a payout may have spent the output, so a setting never takes it back — only a reorg does
  (above).
* **Matched on scripts only.** Outputs are matched on ``scriptPubKey.hex``, never on address
  fields (old nodes answer ``addresses``, new ones ``address``). Outputs under the chain's dust
  limit are recorded as ``dust`` and never confirmed or credited.
* **Survives the node.** A node that is down, restarting or behind ends the round with
  ``tick.error`` and the cursor where it was; nothing escapes :meth:`DepositWatcher.run_once`.

Speed: the custody scripts and the unspent custody outpoints are kept in memory (scripts reloaded
when the address count changes, outpoints when the cursor moved under this watcher or after a
reorg), so an output or input that is not custody's costs a dictionary lookup and no SQL; a
block's writes are one statement per kind; and the next block is read from the node while the
current one is written, so a round costs about the larger of the two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import structlog

from sluice.domain.audit import AuditEntry
from sluice.domain.chains import to_sats
from sluice.domain.deposits import Alert
from sluice.domain.errors import InvalidOperationStateError
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.ports.bitcoin import (
    BitcoinNode,
    BitcoinNodeError,
    CustodyWallet,
    JsonObject,
    NotFoundError,
)
from sluice.ports.bitcoin_watch import (
    DEPOSIT_BRANCH,
    ConfirmedOutput,
    CustodyAddress,
    FoundOutput,
    FoundSpend,
    RolledBack,
    WatchedBlock,
)
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.btc_deposits import confirmed_events, reorged_events, seen_events

# The custody reads are written in btc_deposits; the CLI, the API and the demo import them here.
from sluice.services.btc_deposits import custody_balance as custody_balance
from sluice.services.btc_deposits import list_deposits as list_deposits
from sluice.services.events import emit_all
from sluice.services.issuance_intake import on_deposits_reorged, open_deposit_operations

log = structlog.get_logger("sluice.bitcoin")

Clock = Callable[[], datetime]
ACTOR = "btc-watcher"
# Stored hashes compared per read while walking back to a fork point.
_WALK_BATCH = 64
# Reorgs handled in one round before it ends (a chain that keeps changing is followed next round).
_REORGS_PER_ROUND_MAX = 3


@dataclass(slots=True)
class WatchTick:
    """One round: blocks applied, reorgs undone (and the blocks they rolled back), custody
    outputs found (``dust`` apart), outputs that reached ``confirmations_min`` (deposits and
    change), the node's tip and the watcher's cursor after the round, and why the round stopped
    early (node down or behind)."""

    blocks: int = 0
    reorgs: int = 0
    rolled_back_blocks: int = 0
    outputs: int = 0
    dust: int = 0
    confirmed: int = 0
    tip_height: int | None = None
    cursor_height: int | None = None
    error: str | None = None

    @property
    def busy(self) -> bool:
        return bool(self.blocks or self.reorgs)


def _result(pending: Future[JsonObject] | None) -> JsonObject | None:
    """The block read ahead; None when none was, or when it left the node meanwhile (a reorg:
    the block at the next height is then asked for by height)."""
    if pending is None:
        return None
    try:
        return pending.result()
    except NotFoundError:
        return None


def _settle(pending: Future[JsonObject] | None) -> None:
    """Wait for a read no longer wanted (its answer or error is dropped): the node is then free
    for the next call."""
    if pending is not None:
        pending.exception()


class _ChainChangedError(Exception):
    """The next block does not extend the cursor: a reorg happened while reading."""


class _ChainMovedError(Exception):
    """The stored chain moved under this watcher (another one rolled back or applied blocks)
    between reading the cursor and acting on it (rolling back to a fork point, confirming what
    is due): nothing was done."""


class DepositWatcher:
    """Follows the chain from the stored cursor. Any number may run: a block is applied by
    whichever claims its row first, and a watcher whose cursor moved under it reloads."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        node: BitcoinNode,
        wallet: CustodyWallet,
        settings: BitcoinSettings,
        clock: Clock,
    ) -> None:
        self._uow = uow_factory
        self._node = node
        self._wallet = wallet
        self.settings = settings
        self._clock = clock
        # Custody scripts → their address rows, and how many rows that was loaded from.
        self._scripts: dict[str, CustodyAddress] = {}
        self._address_count = -1
        # Custody outputs in the active chain not spent yet, and how many outputs still "seen"
        # each block height holds (to know when a block brings confirmations due).
        self._unspent: set[tuple[str, int]] = set()
        self._seen: dict[int, int] = {}
        # The cursor the in-memory state matches; None: reload before the next block.
        self._cursor: WatchedBlock | None = None
        self._loaded = False

    # -- one round ---------------------------------------------------------------------------

    def run_once(self) -> WatchTick:
        tick = WatchTick()
        try:
            self._round(tick)
        except _ChainMovedError:
            # What another watcher did is re-checked from the stored cursor next round.
            self._loaded = False
            log.info("btc watcher: the stored chain moved under this round; it ends")
        except BitcoinNodeError as exc:
            tick.error = f"the bitcoin node did not answer: {exc}"
            log.warning(
                "btc watcher: node unavailable; the cursor stays",
                error=str(exc),
                cursor_height=tick.cursor_height,
            )
        if tick.busy:
            log.info(
                "btc watcher",
                blocks=tick.blocks,
                reorgs=tick.reorgs,
                outputs=tick.outputs,
                confirmed=tick.confirmed,
                cursor_height=tick.cursor_height,
            )
        return tick

    def _round(self, tick: WatchTick) -> None:
        cursor = self._refresh()
        tick.cursor_height = cursor.height if cursor else None
        info = self._node.getblockchaininfo()
        tip = int(info["blocks"])
        tick.tip_height = tip
        if cursor is not None:
            if tip < cursor.height:
                if self._stored_hash(tip) in (None, self._node.getblockhash(tip)):
                    tick.error = (
                        f"the bitcoin node is behind: its tip is at height {tip}, the watcher "
                        f"is at {cursor.height}; waiting for it"
                    )
                    log.warning("btc watcher: node behind", tip=tip, cursor=cursor.height)
                    return
                cursor = self._undo_reorg(tick)
            elif self._node.getblockhash(cursor.height) != cursor.hash:
                cursor = self._undo_reorg(tick)
            tick.cursor_height = cursor.height if cursor else None
        if cursor is not None:
            self._confirm_due(cursor, tick)
        # The next block is read while this one is written: its ``getblock`` (the node's work
        # and the answer's transfer) overlaps the block's transaction (its SQL and the commit's
        # flush to disk), so a round costs about the larger of the two, not their sum. One read
        # at a time: the main thread calls the node only when no read is in flight.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="btc-watch-read") as reader:
            pending: Future[JsonObject] | None = None
            try:
                while tick.blocks < self.settings.watch_blocks_max:
                    height = cursor.height + 1 if cursor else self.settings.watch_start_height
                    block = _result(pending)
                    pending = None
                    if block is None:
                        if height > tip:
                            break
                        block = self._node.getblock(self._node.getblockhash(height))
                    # Bitcoin Core names the next block of the active chain: no getblockhash.
                    following = block.get("nextblockhash")
                    if (
                        isinstance(following, str)
                        and tick.blocks + 1 < self.settings.watch_blocks_max
                    ):
                        pending = reader.submit(self._node.getblock, following)
                    try:
                        applied = self._apply(block, cursor, tick)
                    except _ChainChangedError:
                        _settle(pending)
                        pending = None
                        if tick.reorgs >= _REORGS_PER_ROUND_MAX:
                            break
                        cursor = self._undo_reorg(tick)
                        tick.cursor_height = cursor.height if cursor else None
                        continue
                    if not applied:
                        # Another watcher applied it, or moved the stored chain, or the node
                        # left the block's branch meanwhile: the next round starts from the
                        # stored cursor and the node's chain as they are then.
                        break
                    cursor = self._cursor
                    tick.cursor_height = height
            finally:
                _settle(pending)

    def _refresh(self) -> WatchedBlock | None:
        """The stored cursor; the in-memory state reloaded when it does not match it."""
        with self._uow() as uow:
            repo = uow.btc_watch
            cursor = repo.cursor()
            if not self._loaded or cursor != self._cursor:
                self._load(uow)
            self._load_scripts(uow)
        self._cursor = cursor
        return cursor

    def _load(self, uow: UnitOfWork) -> None:
        repo = uow.btc_watch
        self._unspent = {(o.txid, o.vout) for o in repo.unspent_outputs()}
        self._seen = repo.seen_heights()
        self._loaded = True

    def _load_scripts(self, uow: UnitOfWork) -> None:
        repo = uow.btc_watch
        count = repo.address_count()
        if count != self._address_count:
            addresses = repo.addresses()
            self._check_descriptor(addresses)
            self._scripts = {a.script_hex: a for a in addresses}
            self._address_count = count

    def _check_descriptor(self, addresses: list[CustodyAddress]) -> None:
        """The newest address of each branch is what this wallet derives there: a watcher
        configured with another custody's descriptor would otherwise watch addresses whose
        coins it cannot spend, and say nothing."""
        newest: dict[int, CustodyAddress] = {}
        for address in addresses:
            if address.index >= newest.get(address.branch, address).index:
                newest[address.branch] = address
        for address in newest.values():
            if self._wallet.derive(address.branch, address.index).script_hex != address.script_hex:
                raise InvalidOperationStateError(
                    f"custody address {address.address} (branch {address.branch}, index "
                    f"{address.index}) is not what the configured descriptor derives there: "
                    "the watcher is configured with another custody's descriptor"
                )

    def _stored_hash(self, height: int) -> str | None:
        with self._uow() as uow:
            return uow.btc_watch.block_hashes(height, height).get(height)

    # -- applying a block --------------------------------------------------------------------

    def _apply(
        self, block: Mapping[str, Any], cursor: WatchedBlock | None, tick: WatchTick
    ) -> bool:
        height = int(block["height"])
        block_hash = str(block["hash"])
        previous = block.get("previousblockhash")
        if cursor is not None and (previous != cursor.hash or height != cursor.height + 1):
            raise _ChainChangedError
        confirmations = block.get("confirmations")
        if isinstance(confirmations, int) and confirmations < 1:
            # Core answers -1 for a block off its active chain: one read (ahead, or before a
            # reorg) from a branch the node has left since. Never applied.
            log.info("btc watcher: block left the node's chain", height=height, hash=block_hash)
            return False
        now = self._clock()
        threshold = height - self.settings.confirmations_min + 1
        with self._uow() as uow:
            repo = uow.btc_watch
            # Read after the block was fetched: an address paid in it was issued (committed)
            # before it was handed out, so before the block existed, so it is in this count.
            self._load_scripts(uow)
            found, spends = self._scan(block)
            watched = WatchedBlock(height, block_hash, previous, len(found))
            # Refused when the stored row at height - 1 is not this block's parent (another
            # watcher moved the stored chain since this one fetched it) or the height is taken.
            if not repo.claim_block(watched, now):
                uow.rollback()
                self._loaded = False
                return False
            repo.record_outputs(found, height, block_hash, now)
            # An address known funded stays funded: only the others are written.
            funded = {o.script_hex for o in found if self._scripts[o.script_hex].funded_at is None}
            repo.mark_funded([self._scripts[script].address for script in funded], now)
            repo.record_spends(spends, height, block_hash)
            seen = dict(self._seen)
            for output in found:
                if output.status == "seen":
                    seen[height] = seen.get(height, 0) + 1
            confirmed: list[ConfirmedOutput] = []
            if any(at <= threshold for at in seen):
                confirmed = repo.confirm(threshold, now)
                seen = {at: n for at, n in seen.items() if at > threshold}
            self._audit_confirmed(uow, confirmed, watched, now)
            emit_all(uow, seen_events(found, watched, now))
            emit_all(uow, confirmed_events(confirmed, watched, now))
            open_deposit_operations(uow, confirmed, now)
            uow.commit()
        # The block is committed: the in-memory state follows it.
        for spend in spends:
            self._unspent.discard((spend.txid, spend.vout))
        spent = {(spend.txid, spend.vout) for spend in spends}
        self._unspent.update((o.txid, o.vout) for o in found if (o.txid, o.vout) not in spent)
        self._seen = seen
        self._cursor = watched
        for script in funded:
            self._scripts[script] = replace(self._scripts[script], funded_at=now)
        tick.blocks += 1
        tick.outputs += sum(1 for o in found if o.status != "dust")
        tick.dust += sum(1 for o in found if o.status == "dust")
        tick.confirmed += len(confirmed)
        return True

    def _confirm_due(self, cursor: WatchedBlock, tick: WatchTick) -> None:
        """Confirm what is due at the cursor without a new block: outputs ``seen`` that have
        ``confirmations_min`` already (it was lowered since they were last counted). Nothing is
        read when none is due (the in-memory count of ``seen`` outputs per height tells)."""
        threshold = cursor.height - self.settings.confirmations_min + 1
        if not any(at <= threshold for at in self._seen):
            return
        now = self._clock()
        with self._uow() as uow:
            repo = uow.btc_watch
            # Counted from this cursor only while it is the stored tip (locked): a rollback by
            # another watcher meanwhile would make the count wrong.
            if not repo.holds_tip(cursor):
                uow.rollback()
                raise _ChainMovedError
            confirmed = repo.confirm(threshold, now)
            self._audit_confirmed(uow, confirmed, cursor, now, catch_up=True)
            emit_all(uow, confirmed_events(confirmed, cursor, now))
            open_deposit_operations(uow, confirmed, now)
            uow.commit()
        self._seen = {at: n for at, n in self._seen.items() if at > threshold}
        tick.confirmed += len(confirmed)

    def _scan(self, block: Mapping[str, Any]) -> tuple[list[FoundOutput], list[FoundSpend]]:
        """The block's outputs to custody scripts and its inputs spending custody outputs, in
        block order (an output spent later in the same block is found, then spent)."""
        scripts = self._scripts
        unspent = self._unspent
        dust_limit = self.settings.chain.p2wsh_dust_limit_sats
        created: set[tuple[str, int]] = set()
        found: list[FoundOutput] = []
        spends: list[FoundSpend] = []
        for tx in block["tx"]:
            txid = tx["txid"]
            for vin in tx["vin"]:
                spent_txid = vin.get("txid")
                if spent_txid is None:
                    continue  # coinbase
                key = (spent_txid, vin["vout"])
                if key in unspent or key in created:
                    spends.append(FoundSpend(spent_txid, vin["vout"], txid))
            inputs: tuple[str, ...] | None = None
            for out in tx["vout"]:
                address = scripts.get(out["scriptPubKey"]["hex"])
                if address is None:
                    continue
                if inputs is None:
                    inputs = tuple(
                        f"{vin['txid']}:{vin['vout']}" for vin in tx["vin"] if "txid" in vin
                    )
                amount = to_sats(out["value"])
                vout = int(out["n"])
                found.append(
                    FoundOutput(
                        txid=txid,
                        vout=vout,
                        kind="deposit" if address.branch == DEPOSIT_BRANCH else "change",
                        address=address.address,
                        script_hex=address.script_hex,
                        customer_id=address.customer_id,
                        amount_sats=amount,
                        status="dust" if amount < dust_limit else "seen",
                        input_outpoints=inputs,
                    )
                )
                created.add((txid, vout))
        return found, spends

    def _audit_confirmed(
        self,
        uow: UnitOfWork,
        confirmed: list[ConfirmedOutput],
        block: WatchedBlock,
        now: datetime,
        *,
        catch_up: bool = False,
    ) -> None:
        """One record per block that confirmed deposits, naming each (with its customer): a
        block may confirm thousands, and the trail's cost is per record. The customer's id is on
        the record when the block confirmed only theirs. ``catch_up``: confirmed at the cursor
        with no new block, after ``confirmations_min`` was lowered (its own record, naming the
        setting)."""
        deposits = [o for o in confirmed if o.kind == "deposit"]
        if not deposits:
            return
        height = block.height
        customers = sorted({o.customer_id or "" for o in deposits})
        statuses: dict[str, int] = {}
        for o in deposits:
            statuses[o.status] = statuses.get(o.status, 0) + 1
        operation_id = f"btc-confirmed:{height}:{block.hash}"
        extra: dict[str, Any] = {}
        if catch_up:
            operation_id += f":min-{self.settings.confirmations_min}"
            extra["confirmations_min"] = self.settings.confirmations_min
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=operation_id,
                    operation="btc_deposits_confirmed",
                    actor=ACTOR,
                    recorded_at=now,
                    customer_id=customers[0] if len(customers) == 1 and customers[0] else None,
                    parameters={
                        "cursor_height": height,
                        "cursor_hash": block.hash,
                        "customers": customers,
                        "amount_sats": sum(o.amount_sats for o in deposits),
                        # Rows of plain values: cheaper to hash than one mapping each.
                        "columns": ["output", "customer", "amount_sats", "block_height"],
                        "deposits": [
                            [o.outpoint, o.customer_id, o.amount_sats, o.block_height]
                            for o in deposits
                        ],
                        **extra,
                    },
                    state_changes=[
                        {"status": status, "deposits": count}
                        for status, count in sorted(statuses.items())
                    ],
                )
            ]
        )

    # -- reorgs ------------------------------------------------------------------------------

    def _undo_reorg(self, tick: WatchTick) -> WatchedBlock | None:
        """Roll back to the fork point (the highest stored block the node still has at its
        height); returns the cursor after it."""
        with self._uow() as uow:
            cursor = uow.btc_watch.cursor()
            low = uow.btc_watch.lowest_height()
        if cursor is None or low is None:
            return None
        fork = self._fork_point(cursor.height, low)
        now = self._clock()
        with self._uow() as uow:
            # The fork point was found outside any transaction: the rollback happens only if
            # the stored chain still ends at the tip it was found under, else another watcher
            # handled the reorg (or more) meanwhile, and undoing its blocks would report its
            # deposits reorged for nothing.
            rolled = uow.btc_watch.roll_back(fork, tip=cursor)
            if rolled is None:
                uow.rollback()
                raise _ChainMovedError
            self._report_reorg(uow, rolled, cursor, now)
            emit_all(uow, reorged_events(rolled.reorged, rolled.fork_height, now))
            on_deposits_reorged(uow, rolled, now)
            uow.commit()
        tick.reorgs += 1
        tick.rolled_back_blocks += len(rolled.blocks)
        log.warning(
            "btc watcher: reorg rolled back",
            fork_height=fork,
            blocks=len(rolled.blocks),
            outputs_reorged=len(rolled.reorged),
            spends_cleared=rolled.spends_cleared,
        )
        self._loaded = False
        return self._refresh()

    def _fork_point(self, top: int, low: int) -> int:
        """The highest stored height whose hash the node has at that height; ``low - 1`` when
        none (nothing the watcher applied is on the node's chain any more)."""
        high = top
        while high >= low:
            batch_low = max(low, high - _WALK_BATCH + 1)
            with self._uow() as uow:
                stored = uow.btc_watch.block_hashes(batch_low, high)
            for height in range(high, batch_low - 1, -1):
                ours = stored.get(height)
                if ours is None:
                    continue
                try:
                    theirs = self._node.getblockhash(height)
                except NotFoundError:
                    continue  # the node's chain is shorter than this
                if theirs == ours:
                    return height
            high = batch_low - 1
        return low - 1

    def _report_reorg(
        self, uow: UnitOfWork, rolled: RolledBack, cursor: WatchedBlock, now: datetime
    ) -> None:
        alerts: list[Alert] = []
        entries: list[AuditEntry] = []
        for o in rolled.reorged:
            if o.status not in ("confirmed", "credited"):
                continue
            credited = o.status == "credited"
            what = "deposit" if o.kind == "deposit" else "change output"
            alerts.append(
                Alert(
                    id=f"btc-reorged:{o.txid}:{o.vout}:{o.block_hash}",
                    severity="critical" if credited else "warning",
                    kind=f"btc_{o.kind}_reorged",
                    message=(
                        f"{o.status} {what} {o.txid}:{o.vout} of {o.amount_sats} sats"
                        + (f" (customer {o.customer_id})" if o.customer_id else "")
                        + f" left the chain with block {o.block_height} {o.block_hash}"
                        + (": it was credited" if credited else "")
                    ),
                    details={
                        "txid": o.txid,
                        "vout": str(o.vout),
                        "amount_sats": str(o.amount_sats),
                        "customer": o.customer_id or "",
                        "block_height": str(o.block_height),
                        "block_hash": o.block_hash or "",
                        "status": o.status,
                    },
                )
            )
            entries.append(
                AuditEntry(
                    operation_id=f"btc-output:{o.txid}:{o.vout}",
                    operation=f"btc_{o.kind}_reorged",
                    actor=ACTOR,
                    recorded_at=now,
                    customer_id=o.customer_id,
                    parameters={
                        "amount_sats": o.amount_sats,
                        "block_height": o.block_height,
                        "block_hash": o.block_hash,
                        "was": o.status,
                    },
                    state_changes=[{"output": o.outpoint, "status": "reorged"}],
                )
            )
        entries.insert(
            0,
            AuditEntry(
                operation_id=f"btc-reorg:{rolled.fork_height}:{cursor.hash}",
                operation="btc_reorg",
                actor=ACTOR,
                recorded_at=now,
                parameters={
                    "fork_height": rolled.fork_height,
                    "old_tip_height": cursor.height,
                    "old_tip_hash": cursor.hash,
                    "blocks_rolled_back": len(rolled.blocks),
                    "spends_cleared": rolled.spends_cleared,
                },
                state_changes=[
                    {"output": o.outpoint, "was": o.status, "status": "reorged"}
                    for o in rolled.reorged
                ],
            ),
        )
        uow.btc_watch.add_alerts(alerts, now)
        uow.audit.append(entries)
