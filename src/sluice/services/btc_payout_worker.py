"""The Bitcoin payout worker: :class:`PayoutWorker` follows open batches until they are confirmed
(mined, reorged, evicted, stuck, a crash to recover), bumps the fee of those left unmined and
makes new batches of the queued payouts.

The header of :mod:`sluice.services.btc_payouts` explains how a payout could be paid twice and why
it cannot here; the steps are split by part: sending a recorded batch in
:mod:`sluice.services.btc_payout_sending`, new batches and fee bumps in
:mod:`sluice.services.btc_payout_batches`, following them here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from sluice.domain.audit import AuditEntry
from sluice.domain.deposits import Alert
from sluice.ports import UnitOfWork
from sluice.ports.bitcoin import BitcoinNodeError, NodeUnavailableError
from sluice.ports.bitcoin_payouts import BATCH_FOLLOWED_STATUSES, BatchRecord, OutputSpend
from sluice.services.btc_payout_batches import PayoutBatching
from sluice.services.btc_payout_events import confirmed_events, failed_events
from sluice.services.btc_payout_sending import (
    WORKER,
    PayoutTick,
    _assignments,
    _Sent,
    _update,
    _with_version,
)
from sluice.services.controls import pause_state
from sluice.services.events import emit_all

# Confirmed batches are looked at again (their spends cleared by a reorg) while mined at most this
# many blocks under the watcher's cursor: a bound on the query, far beyond any reorg seen.
REOPEN_DEPTH_MAX = 1_000

# Every payout module logs as one: operators (and the demo, which routes it to its log file) know
# the payouts' logger by this name.
log = logging.getLogger("sluice.services.btc_payouts")


class PayoutWorker(PayoutBatching):
    """Stateless: everything it knows is in the DB, so any number may run and any may be killed
    at any point. Every change of a batch is decided from the batch read again in the unit of
    work that writes it, and written only while it still has the status, txid and bump count
    read: a worker acting on an older read writes nothing. One ``run_once`` follows the open
    batches (mined, confirmed, reorged, evicted, a crash to recover), bumps the fee of batches
    stuck unmined, and makes new batches of the queued payouts."""

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

    # -- following batches ---------------------------------------------------------------------

    def follow(self, tick: PayoutTick, cursor: int | None) -> None:
        with self._uow() as uow:
            repo = uow.btc_payouts
            batches = repo.batches(BATCH_FOLLOWED_STATUSES)
            if cursor is not None:
                # Confirmed batches are not followed, except those whose spends the watcher
                # cleared: a reorg deeper than confirmations_min took their block away.
                since = cursor - REOPEN_DEPTH_MAX
                batches += [
                    batch
                    for batch_id in repo.confirmed_batches_unspent(since)
                    if (batch := repo.get_batch(batch_id)) is not None
                ]
        for batch in batches:
            tick.followed += 1
            try:
                self._follow_one(batch, cursor, tick)
            except NodeUnavailableError:
                raise
            except BitcoinNodeError as exc:
                tick.errors.append(f"batch {batch.id}: {exc}")
                log.warning("btc payouts: batch %s: %s", batch.id, exc)

    def _follow_one(self, seen: BatchRecord, cursor: int | None, tick: PayoutTick) -> None:
        """Follow one batch. ``seen`` is only its id here: the batch is read again, locked,
        in the unit of work that reads its spends and writes what follows from them, so a
        worker whose list of batches is older than another worker's bump or mining decides from
        the batch as it is now, never from its snapshot."""
        with self._uow() as uow:
            repo = uow.btc_payouts
            batch = repo.get_batch(seen.id, lock=True)
            if batch is None or batch.status not in (*BATCH_FOLLOWED_STATUSES, "confirmed"):
                return
            spends = repo.spends(batch.outpoints)
            if spends:
                versions = {str(v["txid"]): v for v in batch.versions}
                foreign = {s.txid for s in spends.values()} - versions.keys()
                if foreign:
                    self._stuck(uow, batch, sorted(foreign), tick)
                    return
                txids = {s.txid for s in spends.values()}
                if len(spends) == len(batch.outpoints) and len(txids) == 1:
                    (spend,) = {s for s in spends.values() if s.txid in txids}
                    assert cursor is not None  # spends come from blocks the watcher processed
                    self._mined(uow, batch, versions[spend.txid], spend, cursor, tick)
                    return
                if batch.status != "confirmed":
                    return  # the watcher is between blocks: look again next round
            if batch.status == "confirmed":
                reopened = self._reopened(uow, batch, cursor, tick)
                if reopened is None or spends:
                    return
                batch = reopened
            outputs = repo.outputs(batch.outpoints)
            gone = sorted(
                o for o in batch.outpoints if o not in outputs or outputs[o].status == "reorged"
            )
            if gone:
                # An input left the chain with a reorg: no version of the batch is valid while
                # it is gone. Nothing is sent or bumped; an operator decides (see the header).
                self._orphaned(uow, batch, gone, tick)
                return
            if batch.status == "orphaned":
                resumed = self._resumed(uow, batch, cursor)
                if resumed is None:
                    return
                batch = resumed
            if batch.status == "mined":
                reorged = self._reorged(uow, batch, cursor, tick)
                if reorged is None:
                    return
                batch = reorged
        self._ensure_sent(batch, cursor, tick)

    def _mined(
        self,
        uow: UnitOfWork,
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
        repo = uow.btc_payouts
        if not _update(repo, updated, batch):
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
        if completed:
            done = set(completed)
            emit_all(
                uow,
                confirmed_events(
                    [p for p in repo.payouts_of_batch(batch.id) if p.id in done],
                    batch_id=batch.id,
                    txid=spend.txid,
                    block_height=spend.height,
                    block_hash=spend.block_hash,
                    confirmations=confirmations,
                    at=now,
                ),
            )
        uow.commit()
        if batch.status != "mined":
            tick.mined += 1
        if confirmed:
            tick.confirmed += 1
            tick.completed += len(completed)
            log.info("btc payouts: batch %s confirmed in %s", batch.id, spend.txid)

    def _reorged(
        self, uow: UnitOfWork, batch: BatchRecord, cursor: int | None, tick: PayoutTick
    ) -> BatchRecord | None:
        """The watcher cleared the batch's spends: its block left the active chain. The batch is
        back to broadcast with its latest version (the same inputs: whatever is mined next is
        still this batch). Its bump timer restarts at the current height: it was in a block a
        moment ago, so its fee was enough, and a bump now would only cost more."""
        now = self._clock()
        latest = batch.versions[-1]
        updated = replace(
            _with_version(batch, latest),
            status="broadcast",
            broadcast_height=self._height(cursor),
            mined_height=None,
            mined_block_hash=None,
            updated_at=now,
            last_error=f"its block {batch.mined_block_hash} was reorged away",
        )
        repo = uow.btc_payouts
        if not _update(repo, updated, batch):
            return None
        repo.assign_payouts(
            batch.id, _assignments(latest, "broadcast"), expected_statuses=("mined",)
        )
        uow.commit()
        tick.reorged += 1
        log.warning(
            "btc payouts: batch %s was reorged out of block %s", batch.id, batch.mined_block_hash
        )
        return updated

    def _reopened(
        self, uow: UnitOfWork, batch: BatchRecord, cursor: int | None, tick: PayoutTick
    ) -> BatchRecord | None:
        """A confirmed batch whose spends the watcher cleared: a reorg deeper than
        confirmations_min took its block away, and its payouts, completed, are no longer paid
        on the active chain. It is reopened with a critical alert: back to broadcast (its bump
        timer restarting now), its payouts back from completed to broadcast, and its recorded
        transaction sent again when the node does not hold it (never a new one)."""
        now = self._clock()
        repo = uow.btc_payouts
        message = (
            f"payout batch {batch.id} was confirmed in block {batch.mined_block_hash} at height "
            f"{batch.mined_height}, which a reorg deeper than confirmations_min took away: its "
            "payouts are not paid on the active chain any more; it is followed again"
        )
        latest = batch.versions[-1]
        updated = replace(
            _with_version(batch, latest),
            status="broadcast",
            broadcast_height=self._height(cursor),
            mined_height=None,
            mined_block_hash=None,
            updated_at=now,
            last_error=message,
        )
        if not _update(repo, updated, batch):
            return None
        ids = repo.reopen_payouts(batch.id, message)
        # Their outputs and fees as in the version that is sent again.
        repo.assign_payouts(
            batch.id,
            [replace(a, last_error=message) for a in _assignments(latest, "broadcast")],
            expected_statuses=("broadcast",),
        )
        repo.add_alert(
            Alert(
                id=f"btc_batch_reopened:{batch.id}:{batch.mined_block_hash}",
                severity="critical",
                kind="btc_batch_reopened",
                message=message,
                details={
                    "batch": batch.id,
                    "block_hash": str(batch.mined_block_hash),
                    "payouts": ",".join(ids),
                },
            ),
            now,
        )
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=batch.id,
                    operation="btc_batch_reopened",
                    actor=WORKER,
                    recorded_at=now,
                    parameters={"txid": batch.txid, "block_hash": batch.mined_block_hash},
                    state_changes=[{"payout": pid, "status": "broadcast"} for pid in ids],
                    error=message,
                )
            ]
        )
        uow.commit()
        tick.reopened += 1
        log.critical("btc payouts: %s", message)
        return updated

    def _orphaned(
        self, uow: UnitOfWork, batch: BatchRecord, gone: Sequence[str], tick: PayoutTick
    ) -> None:
        """An input of the batch was reorged away (a reorg deeper than confirmations_min took
        the deposit's transaction, and it is not back): every version of the batch spends it, so
        none can be mined unless it comes back. The batch is orphaned with a critical alert
        naming its payouts; it is never sent or bumped again, and its other inputs stay
        reserved, for the successor an operator's release (``sluice btc batch release``) leads
        to."""
        if batch.status == "orphaned":
            return
        now = self._clock()
        repo = uow.btc_payouts
        payouts = repo.payouts_of_batch(batch.id)
        ids = [p.id for p in payouts]
        message = (
            f"payout batch {batch.id}: its input(s) {', '.join(gone)} were reorged out of the "
            f"chain, so no version of it can be mined unless they come back; payouts "
            f"{', '.join(ids)} are not paid. It is not sent again. Once sure no version of it "
            "can be mined, an operator releases it (sluice btc batch release) and the payouts "
            "are paid by a successor spending its surviving inputs"
        )
        updated = replace(
            batch,
            status="orphaned",
            mined_height=None,
            mined_block_hash=None,
            updated_at=now,
            last_error=message,
        )
        if not _update(repo, updated, batch):
            return
        if batch.status == "mined":
            # Its block was reorged away with the input: its payouts are not mined any more.
            repo.assign_payouts(
                batch.id,
                _assignments(batch.versions[-1], "broadcast"),
                expected_statuses=("mined",),
            )
        repo.set_payouts_error(ids, message)
        repo.add_alert(
            Alert(
                id=f"btc_batch_orphaned:{batch.id}",
                severity="critical",
                kind="btc_batch_orphaned",
                message=message,
                details={
                    "batch": batch.id,
                    "reorged_inputs": ",".join(gone),
                    "payouts": ",".join(ids),
                },
            ),
            now,
        )
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=batch.id,
                    operation="btc_batch_orphaned",
                    actor=WORKER,
                    recorded_at=now,
                    parameters={"reorged_inputs": list(gone), "payouts": ids},
                    error=message,
                )
            ]
        )
        emit_all(
            uow,
            failed_events(payouts, status="orphaned", reason=message, at=now, batch_id=batch.id),
        )
        uow.commit()
        tick.orphaned += 1
        log.critical("btc payouts: %s", message)

    def _resumed(
        self, uow: UnitOfWork, batch: BatchRecord, cursor: int | None
    ) -> BatchRecord | None:
        """The orphaned batch's missing input is back on the chain: the batch is valid again and
        is followed as broadcast (its recorded transaction is what is sent)."""
        now = self._clock()
        updated = replace(
            batch,
            status="broadcast",
            broadcast_height=self._height(cursor),
            updated_at=now,
            last_error="its reorged input is back on the chain",
        )
        repo = uow.btc_payouts
        if not _update(repo, updated, batch):
            return None
        repo.set_payouts_error([p.id for p in repo.payouts_of_batch(batch.id)], None)
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=batch.id,
                    operation="btc_batch_resumed",
                    actor=WORKER,
                    recorded_at=now,
                    parameters={"txid": batch.txid},
                )
            ]
        )
        uow.commit()
        log.warning("btc payouts: batch %s: its reorged input is back; followed again", batch.id)
        return updated

    def _stuck(
        self, uow: UnitOfWork, batch: BatchRecord, foreign: Sequence[str], tick: PayoutTick
    ) -> None:
        if batch.status == "stuck":
            return
        now = self._clock()
        message = (
            f"payout batch {batch.id}: its custody inputs were spent by {', '.join(foreign)}, "
            "which is none of its versions; its payouts are not paid again automatically"
        )
        updated = replace(batch, status="stuck", updated_at=now, last_error=message)
        repo = uow.btc_payouts
        if not _update(repo, updated, batch):
            return
        if batch.status == "confirmed":
            # Completed on a block a reorg took away, and now spent by something else.
            repo.reopen_payouts(batch.id, message)
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
        emit_all(
            uow,
            failed_events(payouts, status="stuck", reason=message, at=now, batch_id=batch.id),
        )
        uow.commit()
        tick.stuck += 1
        log.critical("btc payouts: %s", message)

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


__all__ = ["PayoutTick", "PayoutWorker"]
