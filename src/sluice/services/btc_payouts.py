"""Bitcoin payouts: requests, and the stateless worker that batches, signs, broadcasts, fee-bumps
and follows them until they are confirmed.

How a payout could be paid twice, and why it cannot be here
-----------------------------------------------------------
A payout is paid twice if two transactions that each pay it are mined. A naive design allows it:

1. *Resending after a crash or an unclear answer.* A worker that signs, broadcasts, and crashes
   (or loses the node's answer) before recording it does not know whether the payment left. If
   the next round builds a new transaction for the payout from other coins, both can be mined.
   Here a payout enters a batch in the same database transaction that records the batch's signed
   raw transaction and reserves its inputs, and that is committed *before* anything is broadcast.
   From then on the only thing ever sent for it is that recorded transaction (or a fee bump of
   it, see 2): resending the same transaction cannot pay twice, so a crash at any step is
   recovered by sending it again (the node answers "already in the mempool / the chain", which
   counts as sent). A crash between signing and recording leaves nothing recorded and nothing
   sent: the signed transaction is lost with the process and the payout is still queued.
2. *Fee bumps and malleation.* A replacement has a new txid, and a third party can change the
   witness of ours. A worker that follows its payment by txid sees "not mined" when another
   version was, and pays again. Here a batch is identified by the custody *outpoints* it spends:
   every version of it (each fee bump) spends exactly the same inputs, and is recorded before it
   is broadcast, so at most one of them can ever be mined. The watcher records which transaction
   spent each custody output; when all of the batch's outpoints are spent by one of its versions,
   the batch is mined, whichever version it was. Outpoints spent by anything else (a double
   spend with our keys) stop the batch as ``stuck`` with a critical alert: it is never paid again
   automatically.
3. *Two workers batching the same payout, or spending the same coins.* Moving a payout into a
   batch is a conditional update (only while it is still ``queued`` or ``waiting_fee``), and
   reserving inputs is one conditional update (only outputs still unreserved and unspent, all of
   them or the whole unit of work is rolled back). Of two workers racing, the second changes
   fewer rows than it asked for and records nothing; its signed transaction is never sent.
4. *A reorg.* A mined batch whose spends the watcher clears goes back to ``broadcast``; the same
   transaction is sent again if the node does not hold it, never a new one. A batch is completed
   only at ``confirmations_min``, counted from the watcher's cursor, and confirmed inputs are never
   released: a reserved output stays reserved for good.

Coins are only ever chosen from the custody's own confirmed outputs, as the watcher recorded them;
the node's wallet is never used.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from sluice.domain.audit import AuditEntry
from sluice.domain.custody_fees import (
    Coin,
    FeePlan,
    dust_limit_sats,
    fee_rate_from_estimate,
    plan_bump,
    plan_fees,
    select_coins,
)
from sluice.domain.deposits import Alert
from sluice.domain.errors import (
    BitcoinTransactionError,
    DuplicateOperationError,
    InvalidAmountError,
    InvalidInputError,
)
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.ports.bitcoin import (
    BitcoinNode,
    BitcoinNodeError,
    CustodyWallet,
    DerivedAddress,
    NodeRejectedError,
    NodeUnavailableError,
    NotFoundError,
    SignedTransaction,
    SpendInput,
    TxOutput,
)
from sluice.ports.bitcoin_payouts import (
    BATCH_OPEN_STATUSES,
    PAYOUT_WAITING_STATUSES,
    BatchRecord,
    CustodyOutput,
    OutputSpend,
    PayoutAssignment,
    PayoutRecord,
)
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.controls import check_not_paused, pause_state

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

PAYOUT_KINDS = ("operator", "redemption", "return")
PAYOUT_ID_MAX = 200
WORKER = "btc-payouts-worker"
CHANGE_BRANCH = 1
# A batch spends at most this many custody outputs (a bound on the work and on the signing time).
INPUTS_MAX = 500
# Bitcoin Core's error code for "Transaction already in block chain".
RPC_ALREADY_IN_CHAIN = -27
# What nodes answer when they already hold the very transaction sent: it went out.
_ALREADY_KNOWN = (
    "already in block chain",
    "txn-already-in-mempool",
    "txn-already-known",
    "already have transaction",
)

# --- reads -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PayoutView:
    id: str
    kind: str
    address: str
    amount_sats: int
    fee_sats: int | None
    status: str
    batch_id: str | None
    txid: str | None
    outpoints: tuple[str, ...]
    confirmations: int
    vout: int | None
    requested_by: str
    requested_at: datetime
    completed_at: datetime | None = None
    last_error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "address": self.address,
            "txid": self.txid,
            "vout": self.vout,
            "outpoints": list(self.outpoints),
            "amount_sats": self.amount_sats,
            "fee_sats": self.fee_sats,
            "confirmations": self.confirmations,
            "status": self.status,
            "batch_id": self.batch_id,
            "requested_by": self.requested_by,
            "requested_at": self.requested_at.isoformat(),
            "completed_at": None if self.completed_at is None else self.completed_at.isoformat(),
            "last_error": self.last_error,
        }


def _view(payout: PayoutRecord, batch: BatchRecord | None, cursor: int | None) -> PayoutView:
    confirmations = 0
    if batch is not None and batch.mined_height is not None and cursor is not None:
        confirmations = max(0, cursor - batch.mined_height + 1)
    return PayoutView(
        id=payout.id,
        kind=payout.kind,
        address=payout.address,
        amount_sats=payout.amount_sats,
        fee_sats=payout.fee_sats,
        status=payout.status,
        batch_id=payout.batch_id,
        txid=None if batch is None else batch.txid,
        outpoints=() if batch is None else batch.outpoints,
        confirmations=confirmations,
        vout=payout.vout,
        requested_by=payout.requested_by,
        requested_at=payout.requested_at,
        completed_at=payout.completed_at,
        last_error=payout.last_error,
    )


def _views(uow: UnitOfWork, payouts: Iterable[PayoutRecord]) -> list[PayoutView]:
    repo = uow.btc_payouts
    cursor = repo.cursor_height()
    batches: dict[str, BatchRecord | None] = {}
    views = []
    for payout in payouts:
        batch = None
        if payout.batch_id is not None:
            if payout.batch_id not in batches:
                batches[payout.batch_id] = repo.get_batch(payout.batch_id)
            batch = batches[payout.batch_id]
        views.append(_view(payout, batch, cursor))
    return views


def list_payouts(
    uow_factory: UnitOfWorkFactory,
    settings: BitcoinSettings | None = None,
    *,
    limit: int = 1000,
) -> list[PayoutView]:
    """Every payout (oldest first, at most ``limit``), with its batch's txid and outpoints and
    its confirmations as the watcher counts them (from its cursor, whatever ``settings``, which
    callers holding the custody's settings may pass along)."""
    del settings
    if not 1 <= limit <= 10_000:
        raise InvalidInputError(f"limit must be 1–10000, got {limit}")
    with uow_factory() as uow:
        return _views(uow, uow.btc_payouts.payouts(limit=limit))


def get_payout(uow_factory: UnitOfWorkFactory, payout_id: str) -> PayoutView | None:
    with uow_factory() as uow:
        payout = uow.btc_payouts.get_payout(payout_id)
        return None if payout is None else _views(uow, [payout])[0]


# --- requests ----------------------------------------------------------------------------------


def request_payout(
    uow_factory: UnitOfWorkFactory,
    wallet: CustodyWallet,
    settings: BitcoinSettings | None = None,
    *,
    payout_id: str,
    address: str,
    amount_sats: int,
    kind: str,
    requested_by: str,
    clock: Clock,
) -> PayoutView:
    """Queue a payout of ``amount_sats`` (the network fee is deducted from it) to ``address``.
    The same id again answers the first request when it asked for the same; otherwise it is a
    :class:`DuplicateOperationError` naming what differs. Bad input changes nothing."""
    settings = settings or BitcoinSettings()
    if not isinstance(payout_id, str) or not payout_id.strip():
        raise InvalidInputError("a payout id must not be empty")
    if len(payout_id) > PAYOUT_ID_MAX:
        raise InvalidInputError(f"a payout id is at most {PAYOUT_ID_MAX} characters")
    if kind not in PAYOUT_KINDS:
        raise InvalidInputError(f"payout kind must be one of {', '.join(PAYOUT_KINDS)}: {kind!r}")
    if isinstance(amount_sats, bool) or not isinstance(amount_sats, int):
        raise InvalidAmountError(f"amount_sats must be a whole number of satoshis: {amount_sats!r}")
    if not requested_by.strip():
        raise InvalidInputError("a payout names who requested it")
    script_hex = wallet.validate_address(address)
    dust = dust_limit_sats(script_hex, settings.chain.dust_relay_fee_sat_per_kvb)
    least = settings.payout_fee_max_sats + dust + 1
    if amount_sats < least:
        raise InvalidAmountError(
            f"a payout of {amount_sats} sats to {address} could be left under the dust limit "
            f"({dust} sats) by its network fee (up to {settings.payout_fee_max_sats} sats): "
            f"it must be at least {least} sats"
        )
    now = clock()
    record = PayoutRecord(
        id=payout_id,
        kind=kind,
        address=address,
        script_hex=script_hex,
        amount_sats=amount_sats,
        status="queued",
        requested_by=requested_by,
        requested_at=now,
    )
    with uow_factory() as uow:
        repo = uow.btc_payouts
        existing = repo.get_payout(payout_id, lock=True)
        if existing is None:
            check_not_paused(uow)
            if not repo.insert_payout(record):
                # A concurrent request of the same id committed first: answer as its replay.
                existing = repo.get_payout(payout_id)
        if existing is not None:
            _check_same(existing, address, amount_sats, kind)
            return _views(uow, [existing])[0]
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=payout_id,
                    operation="btc_payout_requested",
                    actor=requested_by,
                    recorded_at=now,
                    parameters={"kind": kind, "address": address, "amount_sats": amount_sats},
                    state_changes=[{"payout": payout_id, "status": "queued"}],
                )
            ]
        )
        uow.commit()
        return _views(uow, [record])[0]


def _check_same(existing: PayoutRecord, address: str, amount_sats: int, kind: str) -> None:
    asked = {"address": address, "amount_sats": amount_sats, "kind": kind}
    first = {
        "address": existing.address,
        "amount_sats": existing.amount_sats,
        "kind": existing.kind,
    }
    differs = [
        f"{key} {first[key]!r} (not {asked[key]!r})" for key in asked if asked[key] != first[key]
    ]
    if differs:
        raise DuplicateOperationError(
            f"payout {existing.id!r} was already requested with " + ", ".join(differs)
        )


# --- the worker --------------------------------------------------------------------------------


@dataclass(slots=True)
class PayoutTick:
    followed: int = 0  # open batches looked at
    broadcast: int = 0  # first broadcasts (including a recovered signed batch)
    rebroadcast: int = 0  # the same transaction sent again (evicted, reorged, unanswered)
    # Signed batches found unsent or unrecorded (a crash or a lost answer) and settled.
    recovered: int = 0
    mined: int = 0
    confirmed: int = 0
    completed: int = 0  # payouts completed
    reorged: int = 0
    stuck: int = 0
    bumped: int = 0
    batches: int = 0  # new batches recorded
    batched: int = 0  # payouts moved into them
    waiting_fee: int = 0
    insufficient: int = 0  # payouts waiting for confirmed custody funds
    refused: int = 0  # batches testmempoolaccept refused
    paused: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return bool(
            self.broadcast
            or self.rebroadcast
            or self.mined
            or self.confirmed
            or self.reorged
            or self.bumped
            or self.batches
        )


@dataclass(frozen=True, slots=True)
class _Sent:
    """A broadcast's outcome: ``sent`` (the node holds it), ``unknown`` (no answer: check by
    txid next round) or ``rejected`` (the node refused it, ``reason`` says why)."""

    outcome: str
    reason: str | None = None


def _batch_id(outpoints: Iterable[str]) -> str:
    """A batch's id follows from the outpoints it spends: two workers that chose the same
    inputs would record the same batch, and the second is refused by the primary key."""
    digest = hashlib.sha256(",".join(sorted(outpoints)).encode()).hexdigest()
    return f"btcb-{digest[:32]}"


class PayoutWorker:
    """Stateless: everything it knows is in the DB, so any number may run and any may be killed
    at any point. One ``run_once`` follows the open batches (mined, confirmed, reorged, evicted,
    a crash to recover), bumps the fee of batches stuck unmined, and makes new batches of the
    queued payouts."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        node: BitcoinNode,
        wallet: CustodyWallet,
        settings: BitcoinSettings,
        clock: Clock,
        *,
        after_record: Callable[[BatchRecord], None] | None = None,
        after_broadcast: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        self._uow = uow_factory
        self._node = node
        self._wallet = wallet
        self.settings = settings
        self._clock = clock
        # Test hooks: called once a signed batch (or a bump) is committed and before it is sent,
        # and after a broadcast before recording it (crash tests raise there).
        self._after_record = after_record
        self._after_broadcast = after_broadcast

    def run_once(self) -> PayoutTick:
        """One round; while sluice is paused, nothing and ``tick.paused`` says why."""
        tick = PayoutTick()
        with self._uow() as uow:
            state = pause_state(uow)
            cursor = uow.btc_payouts.cursor_height()
        if state is not None:
            tick.paused = state.mode
            return tick
        for step in (self.follow, self.bump, self.make_batches):
            try:
                step(tick, cursor)
            except NodeUnavailableError as exc:
                tick.errors.append(f"{step.__name__}: the node is unavailable: {exc}")
                log.warning("btc payouts: %s: the node is unavailable: %s", step.__name__, exc)
            except BitcoinNodeError as exc:
                # Whatever the step had not recorded is done again next round, from the DB.
                tick.errors.append(f"{step.__name__}: the node refused: {exc}")
                log.warning("btc payouts: %s: the node refused: %s", step.__name__, exc)
        return tick

    def _height(self, cursor: int | None) -> int:
        """The height confirmations and bumps are counted at: the watcher's cursor, so that what
        the worker decides agrees with what the watcher has seen; the node's tip before the
        watcher has processed any block."""
        if cursor is not None:
            return cursor
        return int(self._node.getblockchaininfo()["blocks"])

    # -- following batches ---------------------------------------------------------------------

    def follow(self, tick: PayoutTick, cursor: int | None) -> None:
        with self._uow() as uow:
            batches = uow.btc_payouts.batches(BATCH_OPEN_STATUSES)
        for batch in batches:
            tick.followed += 1
            try:
                self._follow_one(batch, cursor, tick)
            except NodeUnavailableError:
                raise
            except BitcoinNodeError as exc:
                tick.errors.append(f"batch {batch.id}: {exc}")
                log.warning("btc payouts: batch %s: %s", batch.id, exc)

    def _follow_one(self, batch: BatchRecord, cursor: int | None, tick: PayoutTick) -> None:
        with self._uow() as uow:
            spends = uow.btc_payouts.spends(batch.outpoints)
        if spends:
            versions = {str(v["txid"]): v for v in batch.versions}
            foreign = {s.txid for s in spends.values()} - versions.keys()
            if foreign:
                self._stuck(batch, sorted(foreign), tick)
                return
            txids = {s.txid for s in spends.values()}
            if len(spends) < len(batch.outpoints) or len(txids) != 1:
                return  # the watcher is between blocks: look again next round
            (spend,) = {s for s in spends.values() if s.txid in txids}
            assert cursor is not None  # spends come from blocks the watcher processed
            self._mined(batch, versions[spend.txid], spend, cursor, tick)
            return
        if batch.status == "mined":
            batch = self._reorged(batch, tick)
        self._ensure_sent(batch, cursor, tick)

    def _mined(
        self,
        batch: BatchRecord,
        version: Mapping[str, Any],
        spend: OutputSpend,
        cursor: int,
        tick: PayoutTick,
    ) -> None:
        confirmations = cursor - spend.height + 1
        confirmed = confirmations >= self.settings.confirmations_min
        status = "confirmed" if confirmed else "mined"
        same = (batch.status, batch.mined_height, batch.mined_block_hash, batch.txid) == (
            status,
            spend.height,
            spend.block_hash,
            spend.txid,
        )
        if same:
            return
        now = self._clock()
        updated = replace(
            _with_version(batch, version),
            status=status,
            mined_height=spend.height,
            mined_block_hash=spend.block_hash,
            updated_at=now,
            last_error=None,
        )
        with self._uow() as uow:
            repo = uow.btc_payouts
            if not repo.update_batch(updated, expected_status=batch.status):
                return  # another worker moved it: next round sees what it did
            repo.assign_payouts(
                batch.id,
                _assignments(version, "mined"),
                expected_statuses=("batched", "broadcast", "mined"),
            )
            completed: list[str] = []
            if confirmed:
                completed = repo.complete_payouts(batch.id, now)
            uow.audit.append(
                [
                    AuditEntry(
                        operation_id=batch.id,
                        operation="btc_batch_confirmed" if confirmed else "btc_batch_mined",
                        actor=WORKER,
                        recorded_at=now,
                        parameters={
                            "txid": spend.txid,
                            "height": spend.height,
                            "block_hash": spend.block_hash,
                            "confirmations": confirmations,
                        },
                        state_changes=[{"payout": pid, "status": "completed"} for pid in completed],
                    )
                ]
            )
            uow.commit()
        if batch.status != "mined":
            tick.mined += 1
        if confirmed:
            tick.confirmed += 1
            tick.completed += len(completed)
            log.info("btc payouts: batch %s confirmed in %s", batch.id, spend.txid)

    def _reorged(self, batch: BatchRecord, tick: PayoutTick) -> BatchRecord:
        """The watcher cleared the batch's spends: its block left the active chain. The batch is
        back to broadcast with its latest version (the same inputs: whatever is mined next is
        still this batch)."""
        now = self._clock()
        latest = batch.versions[-1]
        updated = replace(
            _with_version(batch, latest),
            status="broadcast",
            mined_height=None,
            mined_block_hash=None,
            updated_at=now,
            last_error=f"its block {batch.mined_block_hash} was reorged away",
        )
        with self._uow() as uow:
            repo = uow.btc_payouts
            if not repo.update_batch(updated, expected_status="mined"):
                return batch
            repo.assign_payouts(
                batch.id, _assignments(latest, "broadcast"), expected_statuses=("mined",)
            )
            uow.commit()
        tick.reorged += 1
        log.warning(
            "btc payouts: batch %s was reorged out of block %s", batch.id, batch.mined_block_hash
        )
        return updated

    def _stuck(self, batch: BatchRecord, foreign: Sequence[str], tick: PayoutTick) -> None:
        if batch.status == "stuck":
            return
        now = self._clock()
        message = (
            f"payout batch {batch.id}: its custody inputs were spent by {', '.join(foreign)}, "
            "which is none of its versions; its payouts are not paid again automatically"
        )
        updated = replace(batch, status="stuck", updated_at=now, last_error=message)
        with self._uow() as uow:
            repo = uow.btc_payouts
            if not repo.update_batch(updated, expected_status=batch.status):
                return
            payouts = repo.payouts_of_batch(batch.id)
            repo.set_payouts_error([p.id for p in payouts], message)
            repo.add_alert(
                Alert(
                    id=f"btc_batch_stuck:{batch.id}",
                    severity="critical",
                    kind="btc_batch_stuck",
                    message=message,
                    details={
                        "batch": batch.id,
                        "spent_by": ",".join(foreign),
                        "payouts": ",".join(p.id for p in payouts),
                    },
                ),
                now,
            )
            uow.audit.append(
                [
                    AuditEntry(
                        operation_id=batch.id,
                        operation="btc_batch_stuck",
                        actor=WORKER,
                        recorded_at=now,
                        parameters={"spent_by": list(foreign)},
                        error=message,
                    )
                ]
            )
            uow.commit()
        tick.stuck += 1
        log.critical("btc payouts: %s", message)

    def _in_mempool(self, txid: str) -> bool:
        try:
            self._node.getmempoolentry(txid)
        except NotFoundError:
            return False
        return True

    def _ensure_sent(self, batch: BatchRecord, cursor: int | None, tick: PayoutTick) -> None:
        """A batch not seen mined: make sure the node holds it, sending the recorded transaction
        (never another) when it does not."""
        if batch.status == "signed":
            # A crash between recording and broadcasting, or an unanswered broadcast: if the
            # node holds it, it went out; otherwise send the very transaction recorded.
            tick.recovered += 1
            if any(self._in_mempool(str(v["txid"])) for v in batch.versions):
                self._record_sent(batch, _Sent("sent"), cursor, tick, counted=None)
                return
            self._send(batch, cursor, tick, counted="broadcast")
            return
        if self._in_mempool(batch.txid):
            if batch.broadcast_height is None:
                # A bump that went out but whose sending was not recorded: its timer starts.
                self._record_sent(batch, _Sent("sent"), cursor, tick, counted=None)
            return
        # Evicted, reorged out and not taken back, or a bump recorded but never sent.
        self._send(batch, cursor, tick, counted="rebroadcast")

    def _broadcast(self, raw_hex: str) -> _Sent:
        try:
            self._node.sendrawtransaction(raw_hex)
        except NodeUnavailableError as exc:
            return _Sent("unknown", str(exc))
        except NodeRejectedError as exc:
            text = str(exc).lower()
            if exc.code == RPC_ALREADY_IN_CHAIN or any(k in text for k in _ALREADY_KNOWN):
                return _Sent("sent")
            return _Sent("rejected", str(exc))
        return _Sent("sent")

    def _send(
        self, batch: BatchRecord, cursor: int | None, tick: PayoutTick, *, counted: str
    ) -> None:
        sent = self._broadcast(batch.raw_hex)
        if self._after_broadcast is not None:
            self._after_broadcast(batch)
        self._record_sent(batch, sent, cursor, tick, counted=counted)

    def _record_sent(
        self,
        batch: BatchRecord,
        sent: _Sent,
        cursor: int | None,
        tick: PayoutTick,
        *,
        counted: str | None,
    ) -> None:
        """Record a broadcast's outcome; when sent, count it in ``tick`` as ``counted``
        (``broadcast`` or ``rebroadcast``; None when the node was found holding it)."""
        now = self._clock()
        error: str | None
        if sent.outcome == "unknown":
            # No answer: whether it went out is checked by txid next round (a signed batch stays
            # signed; the same transaction is all that is ever sent for it).
            error = f"broadcast unanswered: {sent.reason}"
            updated = replace(batch, updated_at=now, last_error=error)
        else:
            # Sent, or refused: the refusal is kept and the same transaction retried, and a batch
            # left unmined is bumped after payout_bump_after_blocks either way. The bump timer
            # starts when a version first goes out; sending it again after an eviction does not
            # reset it.
            error = None if sent.outcome == "sent" else f"broadcast refused: {sent.reason}"
            height = batch.broadcast_height
            if height is None:
                height = self._height(cursor)
            updated = replace(
                batch, status="broadcast", broadcast_height=height, updated_at=now, last_error=error
            )
        if error is not None:
            tick.errors.append(f"batch {batch.id}: {error}")
            log.warning("btc payouts: batch %s: %s", batch.id, error)
        with self._uow() as uow:
            repo = uow.btc_payouts
            if not repo.update_batch(
                updated, expected_txid=batch.txid, expected_status=batch.status
            ):
                return
            if updated.status == "broadcast" and batch.status == "signed":
                repo.assign_payouts(
                    batch.id,
                    _assignments(batch.versions[-1], "broadcast"),
                    expected_statuses=("batched",),
                )
            uow.commit()
        if sent.outcome == "sent" and counted == "broadcast":
            tick.broadcast += 1
        elif sent.outcome == "sent" and counted == "rebroadcast":
            tick.rebroadcast += 1

    # -- fee bumps -----------------------------------------------------------------------------

    def bump(self, tick: PayoutTick, cursor: int | None) -> None:
        after = self.settings.payout_bump_after_blocks
        with self._uow() as uow:
            batches = uow.btc_payouts.batches(("broadcast",))
        if not batches:
            return
        height = self._height(cursor)
        for batch in batches:
            if batch.broadcast_height is None or height - batch.broadcast_height < after:
                continue
            if not self._in_mempool(batch.txid) and not _refused_for_its_fee(batch):
                # Nothing to replace: the node has it in a block the watcher has not reached
                # (it answered "already in block chain", or its inputs are spent), or its answer
                # was lost. Whatever it is, a replacement spending the same inputs cannot help.
                continue
            try:
                self._bump_one(batch, height, tick)
            except NodeUnavailableError:
                raise
            except (BitcoinNodeError, BitcoinTransactionError) as exc:
                tick.errors.append(f"batch {batch.id}: fee bump: {exc}")
                log.warning("btc payouts: batch %s: fee bump: %s", batch.id, exc)

    def _bump_one(self, batch: BatchRecord, height: int, tick: PayoutTick) -> None:
        with self._uow() as uow:
            repo = uow.btc_payouts
            payouts = repo.payouts_of_batch(batch.id)
            outputs = repo.outputs(batch.outpoints)
        latest = batch.versions[-1]
        placed: Mapping[str, Sequence[int]] = latest["payouts"]
        payouts = sorted(payouts, key=lambda p: placed[p.id][0])
        shares = [int(placed[p.id][1]) for p in payouts]
        scripts = [p.script_hex for p in payouts]
        change_script = latest.get("change_script")
        settings = self.settings
        vsize = _sizer(
            self._wallet,
            len(batch.outpoints),
            scripts,
            None if change_script is None else str(change_script),
        )
        plan = plan_bump(
            old_fee=batch.fee_sats,
            old_rate=Decimal(batch.fee_rate_sat_vb),
            # In a rising market the bump goes at least to today's estimate (within the cap).
            market_rate=self._fee_rate(),
            shares=shares,
            change_sats=batch.change_sats,
            vsize=vsize,
            factor=settings.payout_bump_factor,
            fee_max=settings.payout_fee_max_sats,
            dust_limit=settings.chain.p2wsh_dust_limit_sats,
        )
        if plan is None:
            error = (
                f"unmined since height {batch.broadcast_height}, but a fee bump would take more "
                f"than {settings.payout_fee_max_sats} sats of fee from a payout: it waits as it is"
            )
            if batch.last_error != error:
                with self._uow() as uow:
                    uow.btc_payouts.update_batch(
                        replace(batch, last_error=error, updated_at=self._clock()),
                        expected_txid=batch.txid,
                        expected_status="broadcast",
                    )
                    uow.commit()
                log.warning("btc payouts: batch %s: %s", batch.id, error)
            return
        inputs = [_spend_input(outputs[outpoint]) for outpoint in batch.outpoints]
        tx_outputs = [
            TxOutput(p.script_hex, p.amount_sats - share)
            for p, share in zip(payouts, plan.shares, strict=True)
        ]
        if plan.change_sats:
            assert change_script is not None
            tx_outputs.append(TxOutput(str(change_script), plan.change_sats))
        signed = self._wallet.sign(inputs, tx_outputs, rbf=True)
        _check_fee(signed, plan.fee_sats)
        version = _version(
            signed,
            plan.fee_sats,
            plan.rate,
            plan.vsize,
            payouts,
            plan.shares,
            plan.change_sats,
            str(change_script) if plan.change_sats else None,
        )
        now = self._clock()
        updated = replace(
            _with_version(batch, version),
            raw_hex=signed.raw_hex,
            versions=(*batch.versions, version),
            bumps=batch.bumps + 1,
            # Set once this version is known to have gone out (below, or by the next round).
            broadcast_height=None,
            updated_at=now,
            last_error=None,
        )
        # The new version is recorded before it is sent: whatever is mined, it is one of them.
        with self._uow() as uow:
            repo = uow.btc_payouts
            if not repo.update_batch(
                updated, expected_txid=batch.txid, expected_status="broadcast"
            ):
                return
            repo.assign_payouts(
                batch.id, _assignments(version, "broadcast"), expected_statuses=("broadcast",)
            )
            uow.audit.append(
                [
                    AuditEntry(
                        operation_id=batch.id,
                        operation="btc_batch_fee_bumped",
                        actor=WORKER,
                        recorded_at=now,
                        parameters={
                            "replaces": batch.txid,
                            "txid": signed.txid,
                            "fee_sats": plan.fee_sats,
                            "fee_rate_sat_vb": str(plan.rate),
                        },
                    )
                ]
            )
            uow.commit()
        tick.bumped += 1
        log.info("btc payouts: batch %s bumped: %s → %s", batch.id, batch.txid, signed.txid)
        if self._after_record is not None:
            self._after_record(updated)
        sent = self._broadcast(updated.raw_hex)
        if self._after_broadcast is not None:
            self._after_broadcast(updated)
        bump_error: str | None = None
        if sent.outcome != "sent":
            bump_error = f"fee bump {sent.outcome}: {sent.reason}"
        with self._uow() as uow:
            # The bump timer restarts from here when the node answered: a refused bump is retried
            # as the current version next round, and bumped again from its own fee later. An
            # unanswered one is looked for by txid next round, which starts the timer.
            uow.btc_payouts.update_batch(
                replace(
                    updated,
                    broadcast_height=None if sent.outcome == "unknown" else height,
                    last_error=bump_error,
                    updated_at=self._clock(),
                ),
                expected_txid=updated.txid,
                expected_status="broadcast",
            )
            uow.commit()
        if bump_error is not None:
            tick.errors.append(f"batch {batch.id}: {bump_error}")

    # -- new batches ---------------------------------------------------------------------------

    def make_batches(self, tick: PayoutTick, cursor: int | None) -> None:
        settings = self.settings
        with self._uow() as uow:
            waiting = uow.btc_payouts.payouts(
                PAYOUT_WAITING_STATUSES, limit=settings.payout_batch_max
            )
        if not waiting:
            return
        now = self._clock()
        waited = (now - waiting[0].requested_at).total_seconds()
        if len(waiting) < settings.payout_batch_max and waited < settings.payout_batch_window_s:
            return
        rate = self._fee_rate()
        dust = settings.chain.p2wsh_dust_limit_sats
        with self._uow() as uow:
            repo = uow.btc_payouts
            coins = repo.spendable_outputs(dust)
            change_index = repo.next_change_index()
        by_outpoint = {c.outpoint: c for c in coins}
        available = sum(
            c.amount_sats for c in sorted(coins, key=lambda c: -c.amount_sats)[:INPUTS_MAX]
        )
        # Oldest first, as many as the confirmed funds cover; the rest wait for funds.
        chosen: list[PayoutRecord] = []
        total = 0
        for payout in waiting:
            if total + payout.amount_sats > available:
                break
            chosen.append(payout)
            total += payout.amount_sats
        short = waiting[len(chosen) :]
        if short:
            self._note_insufficient(short, available, total, tick)
        change = self._wallet.derive(CHANGE_BRANCH, change_index)
        while chosen:
            selected = select_coins(
                [Coin(c.outpoint, c.amount_sats) for c in coins],
                sum(p.amount_sats for p in chosen),
                max_inputs=INPUTS_MAX,
            )
            assert selected is not None  # the chosen payouts fit the largest INPUTS_MAX coins
            plan = plan_fees(
                [p.amount_sats for p in chosen],
                sum(c.amount_sats for c in selected),
                rate=rate,
                vsize=_sizer(
                    self._wallet, len(selected), [p.script_hex for p in chosen], change.script_hex
                ),
                dust_limit=dust,
            )
            over = [
                p
                for p, s in zip(chosen, plan.shares, strict=True)
                if s > settings.payout_fee_max_sats
            ]
            if not over:
                self._record_batch(
                    chosen, [by_outpoint[c.key] for c in selected], plan, rate, change, cursor, tick
                )
                return
            share = max(plan.shares)
            self._note_waiting_fee(over, share, rate, tick)
            chosen = [p for p in chosen if p not in over]

    def _fee_rate(self) -> Decimal:
        settings = self.settings
        try:
            answer = self._node.estimatesmartfee(settings.fee_target_blocks)
        except NodeRejectedError as exc:
            log.warning("btc payouts: estimatesmartfee refused (%s): the floor is used", exc)
            answer = None
        return fee_rate_from_estimate(
            answer, settings.fee_rate_min_sat_vb, settings.fee_rate_max_sat_vb
        )

    def _note_insufficient(
        self, short: Sequence[PayoutRecord], available: int, covered: int, tick: PayoutTick
    ) -> None:
        tick.insufficient += len(short)
        needed = covered + sum(p.amount_sats for p in short)
        error = (
            f"waiting for confirmed custody funds: {available} sats spendable, "
            f"{needed} sats asked by the payouts queued up to this one"
        )
        now = self._clock()
        with self._uow() as uow:
            repo = uow.btc_payouts
            repo.set_payouts_waiting([p.id for p in short], None, error)
            for payout in short:
                repo.add_alert(
                    Alert(
                        id=f"btc_payout_insufficient_funds:{payout.id}",
                        severity="warning",
                        kind="btc_payout_insufficient_funds",
                        message=f"payout {payout.id} of {payout.amount_sats} sats: {error}",
                        details={"payout": payout.id, "available_sats": str(available)},
                    ),
                    now,
                )
            uow.commit()
        log.warning("btc payouts: %d payout(s) %s", len(short), error)

    def _note_waiting_fee(
        self, over: Sequence[PayoutRecord], share: int, rate: Decimal, tick: PayoutTick
    ) -> None:
        tick.waiting_fee += len(over)
        error = (
            f"its share of the network fee, {share} sats at {rate} sat/vB, is over "
            f"payout_fee_max_sats ({self.settings.payout_fee_max_sats}): it waits for lower fees"
        )
        with self._uow() as uow:
            uow.btc_payouts.set_payouts_waiting([p.id for p in over], "waiting_fee", error)
            uow.commit()

    def _record_batch(
        self,
        payouts: Sequence[PayoutRecord],
        inputs: Sequence[CustodyOutput],
        plan: FeePlan,
        rate: Decimal,
        change: DerivedAddress,
        cursor: int | None,
        tick: PayoutTick,
    ) -> None:
        tx_outputs = [
            TxOutput(p.script_hex, p.amount_sats - share)
            for p, share in zip(payouts, plan.shares, strict=True)
        ]
        change_script = change.script_hex if plan.change_sats else None
        if change_script is not None:
            tx_outputs.append(TxOutput(change_script, plan.change_sats))
        ids = [p.id for p in payouts]
        try:
            signed = self._wallet.sign([_spend_input(c) for c in inputs], tx_outputs, rbf=True)
            _check_fee(signed, plan.fee_sats)
        except (BitcoinTransactionError, InvalidInputError) as exc:
            self._note_error(ids, f"signing failed: {exc}", tick)
            return
        (accepted,) = self._node.testmempoolaccept([signed.raw_hex])
        if not accepted.get("allowed"):
            tick.refused += 1
            reason = accepted.get("reject-reason", "no reason given")
            self._note_error(ids, f"the node would refuse the batch: {reason}", tick)
            return
        now = self._clock()
        outpoints = tuple(c.outpoint for c in inputs)
        version = _version(
            signed,
            plan.fee_sats,
            rate,
            plan.vsize,
            payouts,
            plan.shares,
            plan.change_sats,
            change_script,
        )
        batch = _with_version(
            BatchRecord(
                id=_batch_id(outpoints),
                outpoints=outpoints,
                status="signed",
                txid=signed.txid,
                raw_hex=signed.raw_hex,
                versions=(version,),
                fee_sats=plan.fee_sats,
                fee_rate_sat_vb=str(rate),
                vsize=plan.vsize,
                change_sats=plan.change_sats,
                created_at=now,
                updated_at=now,
            ),
            version,
        )
        batch = replace(batch, change_address=change.address if change_script else None)
        with self._uow() as uow:
            repo = uow.btc_payouts
            if change_script is not None and not repo.add_change_address(
                change.address, change.script_hex, change.index, now
            ):
                tick.errors.append(f"change index {change.index} was taken meanwhile")
                return
            if not repo.insert_batch(batch):
                tick.errors.append(f"batch {batch.id} exists already")
                return
            if not repo.reserve_outputs(outpoints, batch.id):
                tick.errors.append("an input was reserved by another batch meanwhile")
                return
            moved = repo.assign_payouts(
                batch.id,
                _assignments(version, "batched"),
                expected_statuses=PAYOUT_WAITING_STATUSES,
            )
            if moved != len(payouts):
                # Another worker batched one of them: nothing of this batch is recorded, and its
                # signed transaction is never sent.
                tick.errors.append("a payout was batched by another worker meanwhile")
                return
            uow.audit.append(
                [
                    AuditEntry(
                        operation_id=batch.id,
                        operation="btc_batch_signed",
                        actor=WORKER,
                        recorded_at=now,
                        parameters={
                            "txid": signed.txid,
                            "outpoints": list(outpoints),
                            "fee_sats": plan.fee_sats,
                            "fee_rate_sat_vb": str(rate),
                            "change_sats": plan.change_sats,
                        },
                        state_changes=[
                            {"payout": p.id, "status": "batched", "fee_sats": share}
                            for p, share in zip(payouts, plan.shares, strict=True)
                        ],
                    )
                ]
            )
            uow.commit()
        tick.batches += 1
        tick.batched += len(payouts)
        log.info("btc payouts: batch %s signed: %s (%d payouts)", batch.id, signed.txid, len(ids))
        if self._after_record is not None:
            self._after_record(batch)
        self._send(batch, cursor, tick, counted="broadcast")

    def _note_error(self, ids: Sequence[str], error: str, tick: PayoutTick) -> None:
        tick.errors.append(error)
        log.warning("btc payouts: %s (payouts %s)", error, ", ".join(ids))
        with self._uow() as uow:
            uow.btc_payouts.set_payouts_waiting(ids, None, error)
            uow.commit()


# --- helpers -----------------------------------------------------------------------------------


def _sizer(
    wallet: CustodyWallet, inputs: int, scripts: Sequence[str], change_script: str | None
) -> Callable[[bool], int]:
    """The batch's virtual size with or without its change output, as the wallet counts it."""

    def vsize(with_change: bool) -> int:
        extra = [change_script] if with_change and change_script is not None else []
        return wallet.estimate_vsize(inputs, [*scripts, *extra])

    return vsize


# What a node answers when a batch's inputs are spent: by the batch itself (mined) or otherwise.
_INPUTS_GONE = ("missingorspent", "missing-inputs", "missing inputs", "txn-mempool-conflict")


def _refused_for_its_fee(batch: BatchRecord) -> bool:
    """The node refused the batch's current version for something a higher fee may cure (the
    mempool's minimum fee rose, a replacement paid too little), not because its inputs are
    gone."""
    error = (batch.last_error or "").lower()
    if not error.startswith(("broadcast refused", "fee bump rejected")):
        return False
    return not any(marker in error for marker in _INPUTS_GONE)


def _spend_input(output: CustodyOutput) -> SpendInput:
    return SpendInput(output.txid, output.vout, output.amount_sats, output.branch, output.index)


def _check_fee(signed: SignedTransaction, planned: int) -> None:
    """The wallet's own count of the fee (inputs − outputs) must be the plan's: anything else
    means outputs were not what was asked for, and nothing is recorded."""
    if signed.fee_sats != planned:
        raise BitcoinTransactionError(
            f"the signed transaction pays {signed.fee_sats} sats of fee, {planned} were planned"
        )


def _version(
    signed: SignedTransaction,
    fee_sats: int,
    rate: Decimal,
    vsize: int,
    payouts: Sequence[PayoutRecord],
    shares: Sequence[int],
    change_sats: int,
    change_script: str | None,
) -> dict[str, Any]:
    """A version as recorded in ``btc_batches.versions``: the payouts' outputs come first in
    their order, the change (if any) last."""
    return {
        "txid": signed.txid,
        "fee_sats": fee_sats,
        "fee_rate": str(rate),
        "vsize": vsize,
        "change_sats": change_sats,
        "change_vout": len(payouts) if change_sats else None,
        "change_script": change_script,
        "payouts": {
            p.id: [n, share] for n, (p, share) in enumerate(zip(payouts, shares, strict=True))
        },
    }


def _with_version(batch: BatchRecord, version: Mapping[str, Any]) -> BatchRecord:
    """The batch as of ``version``: its txid, fee and change."""
    return replace(
        batch,
        txid=str(version["txid"]),
        fee_sats=int(version["fee_sats"]),
        fee_rate_sat_vb=str(version["fee_rate"]),
        vsize=int(version["vsize"]),
        change_sats=int(version["change_sats"]),
        change_vout=version.get("change_vout"),
    )


def _assignments(version: Mapping[str, Any], status: str) -> list[PayoutAssignment]:
    placed: Mapping[str, Sequence[int]] = version["payouts"]
    return [
        PayoutAssignment(payout_id, int(vout), int(fee), status)
        for payout_id, (vout, fee) in placed.items()
    ]


__all__ = [
    "PAYOUT_KINDS",
    "PayoutTick",
    "PayoutView",
    "PayoutWorker",
    "get_payout",
    "list_payouts",
    "request_payout",
]
