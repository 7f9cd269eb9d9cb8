"""The payout worker's recording of a batch: the fee rate, the notes left on payouts that must
wait, and a planned batch signed and recorded *before* it is sent.

:class:`~sluice.services.btc_payout_batches.PayoutBatching` plans new batches, successors and fee
bumps on top of these steps; the header of :mod:`sluice.services.btc_payouts` explains how a
payout could be paid twice and why it cannot.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

from sluice.domain.audit import AuditEntry
from sluice.domain.custody_fees import (
    FeePlan,
    dust_limit_sats,
    fee_rate_from_estimate,
)
from sluice.domain.deposits import Alert
from sluice.domain.errors import BitcoinTransactionError, InvalidInputError
from sluice.ports.bitcoin import (
    CustodyWallet,
    DerivedAddress,
    NodeRejectedError,
    SignedTransaction,
    SpendInput,
    TxOutput,
)
from sluice.ports.bitcoin_payouts import (
    PAYOUT_WAITING_STATUSES,
    BatchRecord,
    CustodyOutput,
    PayoutRecord,
)
from sluice.services.btc_payout_sending import (
    CHANGE_BRANCH,
    WORKER,
    PayoutTick,
    PayoutWorkerBase,
    _assignments,
    _with_version,
)

# Every payout module logs as one: operators (and the demo, which routes it to its log file) know
# the payouts' logger by this name.
log = logging.getLogger("sluice.services.btc_payouts")


class PayoutRecording(PayoutWorkerBase):
    """Batches recorded before they are sent (planned by
    :class:`~sluice.services.btc_payout_batches.PayoutBatching`)."""

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

    def _least_output(self, payout: PayoutRecord) -> int:
        """The least output a payout may be paid with: one satoshi over its destination's dust
        limit (a dust output is refused by the network's relay policy)."""
        relay = self.settings.chain.dust_relay_fee_sat_per_kvb
        return dust_limit_sats(payout.script_hex, relay) + 1

    def _note_below_dust(
        self, dusty: Sequence[tuple[PayoutRecord, int]], rate: Decimal, tick: PayoutTick
    ) -> None:
        """Payouts left out of a batch because their share of the fee would leave their output
        under the dust limit: they wait for lower fees (or an operator cancels them), each with
        its reason and one warning alert."""
        tick.waiting_fee += len(dusty)
        now = self._clock()
        with self._uow() as uow:
            repo = uow.btc_payouts
            for payout, share in dusty:
                error = (
                    f"its share of the network fee, {share} sats at {rate} sat/vB, would leave "
                    f"{payout.amount_sats - share} sats, under its address's dust limit (the "
                    f"least output is {self._least_output(payout)} sats): it waits for lower "
                    "fees, or an operator cancels it"
                )
                repo.set_payouts_waiting([payout.id], "waiting_fee", error)
                repo.add_alert(
                    Alert(
                        id=f"btc_payout_below_dust:{payout.id}",
                        severity="warning",
                        kind="btc_payout_below_dust",
                        message=f"payout {payout.id} of {payout.amount_sats} sats: {error}",
                        details={"payout": payout.id, "fee_share_sats": str(share)},
                    ),
                    now,
                )
            uow.commit()
        log.warning("btc payouts: %d payout(s) left out of a batch: under dust", len(dusty))

    def _record_batch(
        self,
        payouts: Sequence[PayoutRecord],
        inputs: Sequence[CustodyOutput],
        plan: FeePlan,
        rate: Decimal,
        change: DerivedAddress,
        cursor: int | None,
        tick: PayoutTick,
        *,
        predecessor: str | None = None,
    ) -> None:
        """Sign, check and record a batch, then send it. With ``predecessor`` it is the
        successor of that released batch: the inputs reserved by it (all of its surviving ones)
        are taken over, the others reserved, in the same unit of work."""
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
                id=_batch_id(outpoints, predecessor),
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
            kept = [c.outpoint for c in inputs if predecessor and c.reserved_by == predecessor]
            fresh = [c.outpoint for c in inputs if c.outpoint not in kept]
            if predecessor is not None and not repo.take_over_outputs(kept, predecessor, batch.id):
                tick.errors.append(
                    f"the surviving inputs of released batch {predecessor} changed meanwhile"
                )
                return
            if fresh and not repo.reserve_outputs(fresh, batch.id):
                tick.errors.append("an input was reserved by another batch meanwhile")
                return
            moved = repo.assign_payouts(
                batch.id,
                _assignments(version, "batched"),
                expected_statuses=PAYOUT_WAITING_STATUSES,
                predecessor=predecessor,
            )
            if moved != len(payouts):
                # Another worker batched one of them: nothing of this batch is recorded, and its
                # signed transaction is never sent.
                tick.errors.append("a payout was batched by another worker meanwhile")
                return
            issued = []
            if change_script is not None:
                # Every custody address issued is audited, change as well as deposits (the
                # same record the address service writes), in the batch's own transaction.
                issued.append(
                    AuditEntry(
                        operation_id=f"btc-address:{change.address}",
                        operation="btc_change_address_issued",
                        actor=WORKER,
                        recorded_at=now,
                        parameters={
                            "branch": CHANGE_BRANCH,
                            "index": change.index,
                            "reason": f"change of batch {batch.id}",
                        },
                        state_changes=[
                            {"address": change.address, "customer": None, "index": change.index}
                        ],
                    )
                )
            uow.audit.append(
                [
                    *issued,
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
                            "successor_of": predecessor,
                        },
                        state_changes=[
                            {"payout": p.id, "status": "batched", "fee_sats": share}
                            for p, share in zip(payouts, plan.shares, strict=True)
                        ],
                    ),
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


def _batch_id(outpoints: Iterable[str], predecessor: str | None = None) -> str:
    """A batch's id follows from the outpoints it spends (and, for a successor, the released
    batch it succeeds, whose very inputs it may spend again if the missing one came back): two
    workers that chose the same inputs would record the same batch, and the second is refused
    by the primary key."""
    key = ",".join(sorted(outpoints))
    if predecessor is not None:
        key = f"{key};successor of {predecessor}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"btcb-{digest[:32]}"


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
