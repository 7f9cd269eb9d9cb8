"""The payout worker's base: what it holds, and sending a batch's recorded transaction.

:class:`PayoutWorkerBase` broadcasts a batch's recorded raw transaction and records the outcome;
it never builds one. New batches and fee bumps are in :mod:`sluice.services.btc_payout_batches`,
following batches in :mod:`sluice.services.btc_payout_worker`. The header of
:mod:`sluice.services.btc_payouts` explains how a payout could be paid twice and why it cannot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sluice.ports import UnitOfWorkFactory
from sluice.ports.bitcoin import (
    BitcoinNode,
    CustodyWallet,
    NodeRejectedError,
    NodeUnavailableError,
    NotFoundError,
)
from sluice.ports.bitcoin_payouts import BatchRecord, BitcoinPayoutRepository, PayoutAssignment
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.btc_payout_events import broadcast_events
from sluice.services.events import emit_all

# Every payout module logs as one: operators (and the demo, which routes it to its log file) know
# the payouts' logger by this name.
log = logging.getLogger("sluice.services.btc_payouts")

Clock = Callable[[], datetime]

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
    reopened: int = 0  # confirmed batches whose block a deep reorg took away
    orphaned: int = 0  # batches found spending an output a reorg took away
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


class PayoutWorkerBase:
    """The worker's settings, ports and test hooks, and the sending of a batch's recorded
    transaction (see :class:`~sluice.services.btc_payout_worker.PayoutWorker`)."""

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

    def _height(self, cursor: int | None) -> int:
        """The height confirmations and bumps are counted at: the watcher's cursor, so that what
        the worker decides agrees with what the watcher has seen; the node's tip before the
        watcher has processed any block."""
        if cursor is not None:
            return cursor
        return int(self._node.getblockchaininfo()["blocks"])

    def _in_mempool(self, txid: str) -> bool:
        try:
            self._node.getmempoolentry(txid)
        except NotFoundError:
            return False
        return True

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
            current = _current(repo, batch)
            if current is None:
                return  # another worker moved it meanwhile: what it did stands
            updated = replace(
                current,
                status=updated.status,
                broadcast_height=updated.broadcast_height
                if current.broadcast_height is None
                else current.broadcast_height,
                updated_at=now,
                last_error=error,
            )
            if not _update(repo, updated, batch):
                return
            if updated.status == "broadcast" and batch.status == "signed":
                repo.assign_payouts(
                    batch.id,
                    _assignments(batch.versions[-1], "broadcast"),
                    expected_statuses=("batched",),
                )
                emit_all(
                    uow,
                    broadcast_events(
                        batch.id, batch.versions[-1], now, bumps=current.bumps, error=error
                    ),
                )
            uow.commit()
        if sent.outcome == "sent" and counted == "broadcast":
            tick.broadcast += 1
        elif sent.outcome == "sent" and counted == "rebroadcast":
            tick.rebroadcast += 1


def _current(repo: BitcoinPayoutRepository, read: BatchRecord) -> BatchRecord | None:
    """The batch as it is now (locked on PostgreSQL), if it is still at the version ``read``
    (status, txid and bump count); None when another worker moved it meanwhile."""
    current = repo.get_batch(read.id, lock=True)
    if current is None or (current.status, current.txid, current.bumps) != (
        read.status,
        read.txid,
        read.bumps,
    ):
        return None
    return current


def _update(repo: BitcoinPayoutRepository, updated: BatchRecord, read: BatchRecord) -> bool:
    """Write ``updated`` only while the row still has the version ``read`` (status, txid, bump
    count): a worker acting on an older read changes nothing."""
    return repo.update_batch(
        updated, expected_txid=read.txid, expected_status=read.status, expected_bumps=read.bumps
    )


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


def released_lineage(batch: BatchRecord, released: Iterable[BatchRecord]) -> list[BatchRecord]:
    """The released batches whose old versions a successor of ``batch`` must conflict with:
    those sharing an input with it, and, in turn, with them (a successor spends its released
    batch's inputs, so a chain of releases shares inputs link by link). ``batch`` itself is
    first when it is released."""
    pool = {r.id: r for r in released}
    found: list[BatchRecord] = []
    spent = set(batch.outpoints)
    if batch.id in pool:
        found.append(pool.pop(batch.id))
    grew = True
    while grew:
        grew = False
        for other in list(pool.values()):
            if spent & set(other.outpoints):
                found.append(pool.pop(other.id))
                spent |= set(other.outpoints)
                grew = True
    return found


def unconflicted(kept: Iterable[str], lineage: Iterable[BatchRecord]) -> list[BatchRecord]:
    """The batches of ``lineage`` none of whose inputs is in ``kept``: a successor spending
    ``kept`` would not conflict with their old versions."""
    keep = set(kept)
    return [b for b in lineage if not keep & set(b.outpoints)]
