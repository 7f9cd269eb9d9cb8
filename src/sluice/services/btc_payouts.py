"""Bitcoin payouts: requests and reads. The stateless worker that batches, signs, broadcasts,
fee-bumps and follows them until they are confirmed is
:class:`~sluice.services.btc_payout_worker.PayoutWorker` (re-exported here, with
:class:`~sluice.services.btc_payout_worker.PayoutTick`); what follows is the hazard it is built
against.

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
   sent: the signed transaction is lost with the process and the payout is still queued. An
   operator may cancel a payout only while no batch holds it (the same conditional update).
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
   reserving inputs is one conditional update (only outputs still confirmed or credited,
   unreserved and unspent, all of them or the whole unit of work is rolled back). Of two
   workers racing, the second changes fewer rows than it asked for and records nothing; its
   signed transaction is never sent.
   Once recorded, a batch changes only from what is read again in the unit of work that writes
   the change (locked on PostgreSQL), and only while it still has the status, txid and bump
   count read: a worker acting on an older read (say, one missing another worker's fee bump)
   writes nothing, so it can neither take a bump for a double spend nor overwrite it.
4. *A reorg.* A mined batch whose spends the watcher clears goes back to ``broadcast``; the same
   transaction is sent again if the node does not hold it, never a new one. A batch is completed
   only at ``confirmations_min``, counted from the watcher's cursor. A reorg deeper than that
   which takes a *confirmed* batch's block away reopens it (critical alert, payouts back from
   ``completed`` to ``broadcast``): its recorded transaction is sent again, never a new one.
5. *A reorg that takes an input away.* If a reorg deeper than ``confirmations_min`` drops the
   transaction of a deposit a batch spends, no version of the batch is valid: the batch is
   ``orphaned`` (critical alert naming its payouts) and is never sent or bumped again. Until
   an operator releases it, a missing input that comes back makes it ``broadcast`` again (the
   same transaction). Its payouts are paid otherwise only once an operator releases it
   (``sluice btc batch release``), and the danger then is that the missing deposit comes back
   later: every old signed version of the batch would be valid again and could be mined next to
   a new batch paying the same payouts. So the new batch is made to conflict with them, the
   way a fee bump does: release keeps the batch's *surviving* inputs (confirmed, unspent)
   reserved for it, and queues its payouts again still marked with the batch
   (``batch_id``: waiting for its successor). The worker pays them together and alone in a
   *successor* batch that spends every one of those surviving inputs (plus other confirmed
   coins if they are not enough), taking them over in the unit of work that records it, all
   or nothing; they never join another batch, and they cannot be cancelled (an old version
   paying them may still be mined). Every old version spends all of the released batch's
   inputs, so it and the successor share an input: at most one of them can ever be mined.
   The same holds down a chain of releases: a successor must also share an input with every
   released batch it follows (they share inputs link by link). Release is refused unless the
   batch is orphaned, an input is still reorged, no spend of its inputs is recorded, the node
   holds none of its versions (mempool or chain), and it has a surviving input shared with
   every released batch it follows; with none, no successor could conflict with the old
   versions, and the operator waits for the deposit to come back or pays by other means
   (batched payouts cannot be cancelled). An input of a released batch that comes back after
   its successor was made stays reserved by the released batch: never spent by anything that
   could pay its payouts a second time. Otherwise a reserved output stays reserved for good.

Coins are only ever chosen from the custody's own confirmed outputs, as the watcher recorded them;
the node's wallet is never used.

How a payout could spend the Bitcoin behind iSTSi, and why it cannot here
-------------------------------------------------------------------------
Custody Bitcoin backs the iSTSi in circulation (``supply ≤ reserves − pending``, the mint
guard's rule). An operator's payout or a return spends custody coins without burning anything.
So :func:`request_payout` checks such a payout against the mint guard's figures under the
guard's lock, in the transaction that inserts it, and the guard counts it as a pending outflow
from then until the watcher sees its batch's inputs spent (when it leaves the reserves too):
a mint and a payout, or two payouts, are checked one after the other and each sees the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from sluice.domain.audit import AuditEntry
from sluice.domain.custody_fees import dust_limit_sats
from sluice.domain.errors import (
    DuplicateOperationError,
    InvalidAmountError,
    InvalidInputError,
    InvalidOperationStateError,
    MintGuardError,
    NotFoundError,
)
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.ports.bitcoin import BitcoinNode, CustodyWallet
from sluice.ports.bitcoin import NotFoundError as NodeNotFoundError
from sluice.ports.bitcoin_payouts import PAYOUT_WAITING_STATUSES, BatchRecord, PayoutRecord
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.btc_payout_events import failed_events, requested_event
from sluice.services.btc_payout_sending import released_lineage, unconflicted
from sluice.services.btc_payout_worker import PayoutTick, PayoutWorker
from sluice.services.controls import check_not_paused
from sluice.services.events import emit_all

Clock = Callable[[], datetime]

PAYOUT_KINDS = ("operator", "redemption", "return")
PAYOUT_ID_MAX = 200

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
    waiting = payout.status in PAYOUT_WAITING_STATUSES
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
        # A waiting payout's batch is a released one it waits to be paid by a successor of:
        # none of that batch's transactions is paying it.
        txid=None if batch is None or waiting else batch.txid,
        outpoints=() if batch is None or waiting else batch.outpoints,
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
    The same id again answers the first request when it asked for the same (without any check
    below); otherwise it is a :class:`DuplicateOperationError` naming what differs. Bad input
    changes nothing.

    A payout of any kind but ``redemption`` (an operator's, a held deposit's return) must not
    spend Bitcoin that backs iSTSi in circulation, is owed for a deposit not minted yet, or
    waits for a redemption's re-mint: in the transaction that inserts it, under the mint
    guard's lock, it is refused with :class:`MintGuardError` (30) when
    ``supply + unminted_deposits + awaiting_remint > reserves − pending − amount_sats`` (the
    mint guard's figures; ``pending`` includes the redemptions and other custody payouts not
    yet paid; a deposit being returned is counted by its return payout only). Every such
    payout is checked, so it needs confirmed reserves to cover it when it is requested.
    Nothing is written then and the refusal is audited (``btc_payout_refused``);
    minting is not halted (nothing was breached). The
    supply is our records' (mints not failed, minus burns committed): the ledger's supply is not
    available to this service. A redemption's payout is not checked: its iSTSi was burned
    first, and it is counted as pending from that burn."""
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
    refusal: str | None = None
    with uow_factory() as uow:
        repo = uow.btc_payouts
        existing = repo.get_payout(payout_id, lock=True)
        if existing is None:
            check_not_paused(uow)
            if kind != "redemption":
                # Under the mint guard's lock, so that the figures read here and the payout
                # inserted below are seen together by every later mint and payout. A request of
                # the same id that committed while this one waited for the lock is answered as
                # its replay (read again: the lock's wait ends after its commit).
                uow.issuance.lock_guard()
                existing = repo.get_payout(payout_id)
                if existing is None:
                    refusal = _dips_into_backing(uow, payout_id, kind, amount_sats)
            if existing is None and refusal is None and not repo.insert_payout(record):
                # A concurrent request of the same id committed first: answer as its replay.
                existing = repo.get_payout(payout_id)
        if existing is not None:
            _check_same(existing, address, amount_sats, kind)
            return _views(uow, [existing])[0]
        if refusal is None:
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
            emit_all(uow, [requested_event(record, now)])
            uow.commit()
            return _views(uow, [record])[0]
        uow.rollback()
    # Refused, nothing written: the refusal is audited in a transaction of its own.
    assert refusal is not None
    _audit_refusal(
        uow_factory,
        payout_id=payout_id,
        kind=kind,
        address=address,
        amount_sats=amount_sats,
        requested_by=requested_by,
        at=now,
        message=refusal,
    )
    raise MintGuardError(refusal)


def _dips_into_backing(uow: UnitOfWork, payout_id: str, kind: str, amount_sats: int) -> str | None:
    """Why a custody payout of ``kind`` (not a redemption: an operator's, a held deposit's
    return) would spend Bitcoin that is owed, else None: refused when it would leave less than
    what is owed in custody, i.e. when ``supply + unminted + awaiting re-mint > reserves −
    pending − amount``. Owed are the iSTSi in circulation, the redemptions and other payouts
    pending, the customers' deposits confirmed and not minted yet (waiting at KYC, held for an
    officer, before their mint: each is minted or returned later, and an operator payout that
    spent one would leave its mint refused by the guard), and the redemptions compensated by a
    re-mint not done yet (burned and never to be paid: their Bitcoin is the re-mint's). A
    deposit's own return is not held to its own amount: the return closes the operation
    (``returned``, step ``returning``) before it requests the payout, and the figures leave out
    the deposit this payout returns (``paying``), so it counts once, as this payout. The
    supply is our records' (mints not failed, minus burns committed): this service has no
    ledger to ask, and the mint guard, which does, still refuses any mint the payout leaves
    uncovered.

    Every payout is checked, with or without iSTSi in circulation: a payout therefore needs
    confirmed reserves to cover it when it is requested (with nothing owed, custody without
    issuance, it may take all of them). An exemption at zero supply, as there once was, let an
    operator take the Bitcoin of redemptions burned and not paid yet, once everything issued
    had been burned; the mint guard's model found it (``docs/verification.md``). Read under the
    guard's lock (the caller took it)."""
    figures = uow.issuance.guard_figures(paying=payout_id)
    owed = max(0, figures.supply) + figures.unminted_deposits + figures.awaiting_remint
    cover = figures.reserves - figures.pending - amount_sats
    if owed <= cover:
        return None
    excess = max(0, figures.reserves - figures.pending - owed)
    return (
        f"the {kind} payout {payout_id} of {amount_sats} sats would spend Bitcoin that is owed: "
        f"the reserves of {figures.reserves} sats less {figures.pending} sats of pending "
        f"outflows less this payout would fall below the iSTSi supply of {figures.supply} sats "
        f"(our records) plus {figures.unminted_deposits} sats of customers' deposits not minted "
        f"yet (to be minted or returned) plus {figures.awaiting_remint} sats of redemptions "
        f"awaiting their re-mint; at most {excess} sats of excess Bitcoin can be paid out now"
    )


def _audit_refusal(
    uow_factory: UnitOfWorkFactory,
    *,
    payout_id: str,
    kind: str,
    address: str,
    amount_sats: int,
    requested_by: str,
    at: datetime,
    message: str,
) -> None:
    """Record a refused payout request in a transaction of its own (nothing else was written)."""
    with uow_factory() as uow:
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=payout_id,
                    operation="btc_payout_refused",
                    actor=requested_by,
                    recorded_at=at,
                    parameters={"kind": kind, "address": address, "amount_sats": amount_sats},
                    checks=[{"check": "backing", "passed": False}],
                    error=f"MintGuardError: {message}",
                )
            ]
        )
        uow.commit()


def cancel_payout(
    uow_factory: UnitOfWorkFactory,
    *,
    payout_id: str,
    cancelled_by: str,
    clock: Clock,
    reason: str | None = None,
) -> PayoutView:
    """An operator cancels a payout that is not in a batch yet (queued or waiting_fee, e.g. one
    whose output would be dust at today's fees). Once batched it is not cancellable
    (:class:`InvalidOperationStateError`, code 41): a signed transaction paying it is recorded
    and may be mined; nor is one queued again by a release, waiting for the released batch's
    successor, whose old versions pay it. Cancelling a cancelled payout answers it as it is."""
    if not cancelled_by.strip():
        raise InvalidInputError("a cancellation names who cancelled")
    now = clock()
    with uow_factory() as uow:
        repo = uow.btc_payouts
        payout = repo.get_payout(payout_id, lock=True)
        if payout is None:
            raise NotFoundError(f"no payout {payout_id!r}")
        if payout.status == "cancelled":
            return _views(uow, [payout])[0]
        note = f"cancelled by {cancelled_by}" + (f": {reason}" if reason else "")
        if payout.status in PAYOUT_WAITING_STATUSES and payout.batch_id is not None:
            raise InvalidOperationStateError(
                f"payout {payout_id!r} waits for the successor of released batch "
                f"{payout.batch_id}, whose old signed versions pay it and may still be mined: "
                "it cannot be cancelled"
            )
        if payout.status not in PAYOUT_WAITING_STATUSES or not repo.cancel_payout(payout_id, note):
            raise InvalidOperationStateError(
                f"payout {payout_id!r} is {payout.status}"
                + (f" in batch {payout.batch_id}" if payout.batch_id else "")
                + ": only a payout not yet batched (queued or waiting_fee) can be cancelled"
            )
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=payout_id,
                    operation="btc_payout_cancelled",
                    actor=cancelled_by,
                    recorded_at=now,
                    parameters={"reason": reason, "amount_sats": payout.amount_sats},
                    state_changes=[
                        {"payout": payout_id, "from": payout.status, "status": "cancelled"}
                    ],
                )
            ]
        )
        emit_all(uow, failed_events([payout], status="cancelled", reason=note, at=now))
        uow.commit()
        cancelled = repo.get_payout(payout_id)
        assert cancelled is not None
        return _views(uow, [cancelled])[0]


@dataclass(frozen=True, slots=True)
class ReleasedBatch:
    """An orphaned batch an operator released: its surviving inputs, kept reserved for the
    successor that must spend them all, and its payouts, queued again for that successor."""

    batch_id: str
    kept_outpoints: tuple[str, ...]
    requeued: tuple[str, ...]
    released_by: str

    def to_json(self) -> dict[str, object]:
        return {
            "batch_id": self.batch_id,
            "status": "released",
            "kept_outpoints": list(self.kept_outpoints),
            "requeued_payouts": list(self.requeued),
            "released_by": self.released_by,
        }


def release_batch(
    uow_factory: UnitOfWorkFactory,
    node: BitcoinNode,
    *,
    batch_id: str,
    released_by: str,
    clock: Clock,
) -> ReleasedBatch:
    """An operator releases an ``orphaned`` batch (an input was reorged out of the chain): its
    unpaid payouts are queued again for its *successor*, a batch of them alone that spends
    every surviving input of this one (kept reserved for it), so that the successor and any
    old version of this batch can never both be mined. Refused
    (:class:`InvalidOperationStateError`, code 41) unless the batch is orphaned, an input is
    still reorged, no spend of its inputs is recorded, the node holds none of its versions
    (mempool or chain), and it has a surviving input (confirmed, unspent) shared with every
    released batch it succeeds. See point 5 of the header."""
    if not released_by.strip():
        raise InvalidInputError("a release names who released")
    with uow_factory() as uow:
        batch = uow.btc_payouts.get_batch(batch_id)
    if batch is None:
        raise NotFoundError(f"no payout batch {batch_id!r}")
    if batch.status != "orphaned":
        raise InvalidOperationStateError(
            f"batch {batch_id} is {batch.status}: only an orphaned batch can be released"
        )
    # The node first: a version it holds (mempool or chain) may be mined, and its payouts must
    # not be queued again. A node that cannot answer refuses the release (the error propagates).
    for version in batch.versions:
        txid = str(version["txid"])
        try:
            node.getrawtransaction(txid)
        except NodeNotFoundError:
            pass
        else:
            raise InvalidOperationStateError(
                f"batch {batch_id}: the node holds its version {txid} (mempool or chain): "
                "it may be mined, so it is not released"
            )
        try:
            node.getmempoolentry(txid)
        except NodeNotFoundError:
            continue
        raise InvalidOperationStateError(
            f"batch {batch_id}: its version {txid} is in the node's mempool: not released"
        )
    now = clock()
    with uow_factory() as uow:
        repo = uow.btc_payouts
        current = repo.get_batch(batch_id, lock=True)
        if current is None or (current.status, current.txid, current.bumps) != (
            batch.status,
            batch.txid,
            batch.bumps,
        ):
            raise InvalidOperationStateError(
                f"batch {batch_id} changed meanwhile: look at it again before releasing it"
            )
        if repo.spends(batch.outpoints):
            raise InvalidOperationStateError(
                f"batch {batch_id}: the watcher saw some of its inputs spent: not released"
            )
        outputs = repo.outputs(batch.outpoints)
        if not any(o not in outputs or outputs[o].status == "reorged" for o in batch.outpoints):
            raise InvalidOperationStateError(
                f"batch {batch_id}: its inputs are all back on the chain: it is followed again, "
                "not released"
            )
        kept = [o.outpoint for o in repo.reserved_spendable(batch_id)]
        if not kept:
            raise InvalidOperationStateError(
                f"batch {batch_id}: none of its inputs survived the reorg (none is confirmed and "
                "unspent), so no new batch could conflict with its old versions: if the missing "
                "deposit came back, one of them could be mined next to it and pay its payouts "
                "twice. It is not released: wait for the deposit to come back (the batch is then "
                "followed again), or pay its payouts by other means; batched payouts cannot be "
                "cancelled"
            )
        lineage = released_lineage(current, repo.batches(("released",), limit=100_000))
        loose = unconflicted(kept, lineage)
        if loose:
            raise InvalidOperationStateError(
                f"batch {batch_id} succeeds released batch(es) "
                + ", ".join(b.id for b in loose)
                + " but none of its surviving inputs is one of theirs, so a new batch could not "
                "conflict with their old versions: not released (see the release refused for "
                "want of a surviving input)"
            )
        note = (
            f"queued again for a successor of batch {batch_id}, orphaned by a reorg and released "
            f"by {released_by}: the successor spends its surviving inputs {', '.join(kept)}"
        )
        requeued = repo.requeue_payouts(batch_id, note)
        updated = replace(
            current,
            status="released",
            updated_at=now,
            last_error=(
                f"released by {released_by}; its payouts are queued again for a successor "
                f"spending its surviving inputs {', '.join(kept)}"
            ),
        )
        if not repo.update_batch(
            updated,
            expected_txid=current.txid,
            expected_status="orphaned",
            expected_bumps=current.bumps,
        ):
            raise InvalidOperationStateError(f"batch {batch_id} changed meanwhile")
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=batch_id,
                    operation="btc_batch_released",
                    actor=released_by,
                    recorded_at=now,
                    parameters={
                        "versions": [str(v["txid"]) for v in batch.versions],
                        "outpoints": list(batch.outpoints),
                    },
                    state_changes=[{"batch": batch_id, "status": "released"}]
                    + [{"output": o, "reserved_by": batch_id} for o in kept]
                    + [
                        {"payout": pid, "status": "queued", "successor_of": batch_id}
                        for pid in requeued
                    ],
                )
            ]
        )
        uow.commit()
    return ReleasedBatch(batch_id, tuple(kept), tuple(requeued), released_by)


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


__all__ = [
    "PAYOUT_KINDS",
    "PayoutTick",
    "PayoutView",
    "PayoutWorker",
    "ReleasedBatch",
    "cancel_payout",
    "get_payout",
    "list_payouts",
    "release_batch",
    "request_payout",
]
