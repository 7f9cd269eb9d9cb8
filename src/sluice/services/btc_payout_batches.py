"""The payout worker's new batches and fee bumps: payouts batched with the custody's confirmed
outputs, signed and recorded *before* they are sent, and a batch left unmined replaced by a
version paying more fee that spends the very same inputs.

The header of :mod:`sluice.services.btc_payouts` explains how a payout could be paid twice and why
it cannot; :class:`~sluice.services.btc_payout_worker.PayoutWorker` runs these steps.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from decimal import Decimal

from sluice.domain.audit import AuditEntry
from sluice.domain.custody_fees import (
    BumpRefused,
    Coin,
    plan_bump,
    plan_fees,
    select_coins,
)
from sluice.domain.deposits import Alert
from sluice.domain.errors import BitcoinTransactionError
from sluice.ports.bitcoin import (
    BitcoinNodeError,
    NodeUnavailableError,
    TxOutput,
)
from sluice.ports.bitcoin_payouts import (
    PAYOUT_WAITING_STATUSES,
    BatchRecord,
    CustodyOutput,
    PayoutRecord,
)
from sluice.services.btc_payout_events import broadcast_events
from sluice.services.btc_payout_recording import (
    PayoutRecording,
    _check_fee,
    _refused_for_its_fee,
    _sizer,
    _spend_input,
    _version,
)
from sluice.services.btc_payout_sending import (
    CHANGE_BRANCH,
    INPUTS_MAX,
    WORKER,
    PayoutTick,
    _assignments,
    _update,
    _with_version,
    released_lineage,
    unconflicted,
)
from sluice.services.events import emit_all

# Every payout module logs as one: operators (and the demo, which routes it to its log file) know
# the payouts' logger by this name.
log = logging.getLogger("sluice.services.btc_payouts")


class PayoutBatching(PayoutRecording):
    """Fee bumps and new batches (see :class:`~sluice.services.btc_payout_worker.PayoutWorker`)."""

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
            # A bump never pays more than the configured cap: a batch unmined at the cap stays
            # as it is (an operator looks at why), custody's change is not spent on fees.
            rate_max=settings.fee_rate_max_sat_vb,
            # Each payout's output stays above its destination's dust limit.
            share_max=[p.amount_sats - self._least_output(p) for p in payouts],
        )
        if isinstance(plan, BumpRefused):
            self._note_bump_refused(batch, plan)
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
            if not _update(repo, updated, batch):
                return  # another worker bumped or settled it meanwhile
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
            emit_all(
                uow,
                broadcast_events(
                    batch.id, version, now, bumps=updated.bumps, replaces_txid=batch.txid
                ),
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
            _update(
                uow.btc_payouts,
                replace(
                    updated,
                    broadcast_height=None if sent.outcome == "unknown" else height,
                    last_error=bump_error,
                    updated_at=self._clock(),
                ),
                updated,
            )
            uow.commit()
        if bump_error is not None:
            tick.errors.append(f"batch {batch.id}: {bump_error}")

    def _note_bump_refused(self, batch: BatchRecord, refused: BumpRefused) -> None:
        """A batch that cannot be bumped waits as it is: noted on it once, and at the fee rate
        cap an alert (once per batch) tells operators that bumping stopped."""
        settings = self.settings
        if refused.reason == "rate_max":
            error = (
                f"unmined since height {batch.broadcast_height} at {batch.fee_rate_sat_vb} sat/vB: "
                f"a fee bump would go over fee_rate_max_sat_vb ({settings.fee_rate_max_sat_vb}), "
                "so it is no longer bumped"
            )
        else:
            error = (
                f"unmined since height {batch.broadcast_height}, but a fee bump would take more "
                f"than {settings.payout_fee_max_sats} sats of fee from a payout, or leave its "
                "output under the dust limit: it waits as it is"
            )
        if batch.last_error == error:
            return
        now = self._clock()
        with self._uow() as uow:
            repo = uow.btc_payouts
            if not _update(repo, replace(batch, last_error=error, updated_at=now), batch):
                return
            if refused.reason == "rate_max":
                repo.add_alert(
                    Alert(
                        id=f"btc_batch_fee_capped:{batch.id}",
                        severity="warning",
                        kind="btc_batch_fee_capped",
                        message=f"payout batch {batch.id}: {error}",
                        details={
                            "batch": batch.id,
                            "txid": batch.txid,
                            "fee_rate_sat_vb": batch.fee_rate_sat_vb,
                        },
                    ),
                    now,
                )
            uow.commit()
        log.warning("btc payouts: batch %s: %s", batch.id, error)

    # -- new batches ---------------------------------------------------------------------------

    def make_batches(self, tick: PayoutTick, cursor: int | None) -> None:
        self.make_successors(tick, cursor)
        settings = self.settings
        with self._uow() as uow:
            waiting = uow.btc_payouts.payouts(
                PAYOUT_WAITING_STATUSES, limit=settings.payout_batch_max, in_batch=False
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
            # A payout whose output would be dust (or nothing) once its share is deducted cannot
            # be in this batch: it would make the whole batch unsignable or refused, round after
            # round, and every other payout would wait behind it. It waits alone instead.
            dusty = [
                (p, s)
                for p, s in zip(chosen, plan.shares, strict=True)
                if p not in over and p.amount_sats - s < self._least_output(p)
            ]
            if not over and not dusty:
                self._record_batch(
                    chosen, [by_outpoint[c.key] for c in selected], plan, rate, change, cursor, tick
                )
                return
            if over:
                self._note_waiting_fee(over, max(plan.shares), rate, tick)
            if dusty:
                self._note_below_dust(dusty, rate, tick)
            left_out = {p.id for p in over} | {p.id for p, _ in dusty}
            chosen = [p for p in chosen if p.id not in left_out]

    # -- successors of released batches ---------------------------------------------------------

    def make_successors(self, tick: PayoutTick, cursor: int | None) -> None:
        """Each released batch's payouts still waiting go out together, alone, in its successor:
        a batch spending *every* surviving input of the released batch (plus other confirmed
        coins when they are not enough), so that it and any old version of the released batch
        share an input and at most one of them can ever be mined. They never join another
        batch, and wait (with their reason) while no such successor can be made."""
        with self._uow() as uow:
            waiting = uow.btc_payouts.payouts(PAYOUT_WAITING_STATUSES, limit=100_000, in_batch=True)
        groups: dict[str, list[PayoutRecord]] = {}
        for payout in waiting:
            assert payout.batch_id is not None
            groups.setdefault(payout.batch_id, []).append(payout)
        for released_id, payouts in groups.items():
            self._make_successor(released_id, payouts, tick, cursor)

    def _make_successor(
        self,
        released_id: str,
        payouts: Sequence[PayoutRecord],
        tick: PayoutTick,
        cursor: int | None,
    ) -> None:
        settings = self.settings
        dust = settings.chain.p2wsh_dust_limit_sats
        ids = [p.id for p in payouts]
        with self._uow() as uow:
            repo = uow.btc_payouts
            released = repo.get_batch(released_id)
            kept = repo.reserved_spendable(released_id)
            lineage = (
                released_lineage(released, repo.batches(("released",), limit=100_000))
                if released is not None
                else []
            )
            others = repo.spendable_outputs(dust)
            change_index = repo.next_change_index()
        if released is None or released.status != "released":
            status = "missing" if released is None else released.status
            self._note_error(
                ids, f"they wait for a successor of batch {released_id}, which is {status}", tick
            )
            return
        loose = unconflicted([c.outpoint for c in kept], lineage)
        if not kept or loose:
            # A surviving input reorged away since the release: the successor waits for it to
            # come back rather than be made without it.
            self._note_error(
                ids,
                f"waiting for the successor of released batch {released_id}: it must spend a "
                "confirmed input of "
                + ", ".join(b.id for b in (loose or [released]))
                + " (so that no old version can be mined with it), and none is spendable now",
                tick,
            )
            return
        total = sum(p.amount_sats for p in payouts)
        kept_sats = sum(c.amount_sats for c in kept)
        extra: list[CustodyOutput] = []
        if total > kept_sats:
            by_outpoint = {c.outpoint: c for c in others}
            selected = select_coins(
                [Coin(c.outpoint, c.amount_sats) for c in others],
                total - kept_sats,
                max_inputs=max(1, INPUTS_MAX - len(kept)),
            )
            if selected is None:
                room = max(1, INPUTS_MAX - len(kept))
                largest = sorted(others, key=lambda c: -c.amount_sats)[:room]
                self._note_insufficient(
                    payouts, kept_sats + sum(c.amount_sats for c in largest), 0, tick
                )
                return
            extra = [by_outpoint[c.key] for c in selected]
        inputs = [*kept, *extra]
        rate = self._fee_rate()
        change = self._wallet.derive(CHANGE_BRANCH, change_index)
        plan = plan_fees(
            [p.amount_sats for p in payouts],
            sum(c.amount_sats for c in inputs),
            rate=rate,
            vsize=_sizer(
                self._wallet, len(inputs), [p.script_hex for p in payouts], change.script_hex
            ),
            dust_limit=dust,
        )
        over = [
            p for p, s in zip(payouts, plan.shares, strict=True) if s > settings.payout_fee_max_sats
        ]
        dusty = [
            (p, s)
            for p, s in zip(payouts, plan.shares, strict=True)
            if p not in over and p.amount_sats - s < self._least_output(p)
        ]
        if over or dusty:
            # The released batch's payouts go together or not at all: one left for a later
            # batch might be paid by it without the released batch's inputs.
            if over:
                self._note_waiting_fee(over, max(plan.shares), rate, tick)
            if dusty:
                self._note_below_dust(dusty, rate, tick)
            return
        self._record_batch(
            payouts, inputs, plan, rate, change, cursor, tick, predecessor=released_id
        )
