"""Withdrawals: requests, the stateless worker that submits them, retries, refunds, pool upkeep.

This module holds the requests, cancelling and listing; the worker (settling, reserving,
submitting, fences, offers, pool upkeep) is in :mod:`sluice.services.withdrawal_worker`, and the
settings, input reservation, credit back and the hold after a DB restore are in
:mod:`sluice.services.withdrawal_attempts`. All of them are importable from here.

How a withdrawal could be paid twice, and why it cannot be here
----------------------------------------------------------------
A withdrawal is paid twice if two transfers carrying it commit on the ledger, or if it is paid
and also credited back. Each could happen in a naive design:

1. *Resubmitting after an unclear answer.* A command whose response was lost (timeout, crash of
   the worker right after submitting) may have committed, and may even commit long after its
   deadline: a local party's ``submit-and-wait`` carries no ``maxRecordTime``, so only the node's
   own timing bounds it. Submitting a second transfer with other inputs would pay again. Here
   every attempt of a record spends its *anchor*: one input the first attempt chose, which the
   record keeps reserved from then until it is finished (a retry is ``queued`` with the anchor as
   its only input and selects the rest around it, so a changed amount or fee is no problem). The
   ledger archives an input when a transaction spending it commits, so of all the attempts of one
   record at most one can ever commit, whatever the node's timing — attempts 1 and 3 share the
   anchor as much as 1 and 2 do. A retry is still decided only by *ingestion*: every attempt
   carries ``max_record_time = trec_tgt``, and the attempt is retried once ingestion has reached a
   record time at or past ``trec_tgt`` without seeing a transfer whose reason is the record's id
   (any attempt's: a late one completes the record all the same, and the retry in flight then
   fails on the spent anchor). If ingestion shows the anchor archived while the record is still
   live, a transaction that is not one of its attempts spent it (ingestion books a transfer of
   the record in the same transaction as the archive of its inputs): none of its attempts can
   commit any more, and it starts afresh with a new anchor.
2. *Two workers submitting the same withdrawal.* Workers claim records under row locks
   (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, one writer at a time on SQLite) and move them to
   ``submitting`` before calling out. Even if two submissions of one attempt did happen (a worker
   restarted between submitting and recording it), both spend the same reserved inputs under the
   same command id: the ledger archives inputs on commit, so at most one of them commits.
3. *Refunding a withdrawal that is still in flight.* The customer is credited back only when
   nothing of the record can commit any more, proven by the ledger rather than by a deadline:
   its only attempt never left (the worker had not claimed it, or refused to send it); or its
   anchor was archived by a transaction that is not one of its attempts. When the last attempt
   expires unseen and one may have left, the record is *fenced*: its next attempts are a
   self-transfer of the anchor alone (reason = the record's id, kind ``fence``), retried around
   the same anchor as long as it takes, and the customer is credited back by ingestion when it
   sees the fence commit. If a late attempt commits instead, ingestion completes the record and
   the fence can never commit. Offers rejected, withdrawn or expired are credited back by
   ingestion too. Never from a command error. A customer may cancel only a first attempt that
   never left (``queued`` or ``reserved``, attempt 1): the cancel and the worker's claim
   serialise on the record's row, whichever comes second sees the other's status; a retry cannot
   be cancelled (its earlier attempt may still commit); and no cancel is taken while the hold
   after a DB restore (point 5) is recorded, since the DB may then have forgotten a submission.
4. *Reusing inputs.* A holding is reserved by at most one live record (a conditional update that
   reserves all of a record's inputs or none) and stays reserved until the attempt is over — the
   anchor until the record is over.
5. *A restored Integration DB.* It forgets attempts submitted after the backup, whose transfers
   may still commit, and which may have spent inputs the restored record does not list.
   ``hold_until_safe`` stops all submissions until ingestion has passed the latest ``trec_tgt``
   any forgotten attempt could have had; meanwhile ingestion rebuilds the forgotten withdrawals
   from the chain (sluice writes the customer and kind into the transfer's metadata), so nothing
   is paid or credited twice. This one guard still rests on time: on the hold's span, and for a
   local party on the Canton adapter's margin (``local_margin_s``: a command is only sent while
   enough time is left before its deadline for the node's own bound to keep it from committing
   after it), which also stays as the second guard behind the anchor and the fence.

If a transfer for a finished withdrawal is ever seen anyway, ingestion books it to suspense with a
critical ``withdrawal_paid_twice`` alert rather than paying from the customer's balance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from sluice.domain.amounts import format_amount, parse_amount
from sluice.domain.audit import AuditEntry
from sluice.domain.compliance import ComplianceRequest
from sluice.domain.errors import (
    DuplicateOperationError,
    InstrumentNotOnboardedError,
    InsufficientBalanceError,
    InvalidAmountError,
    InvalidInputError,
    InvalidOperationStateError,
    NotFoundError,
)
from sluice.domain.events import Event
from sluice.domain.journal import (
    IN_FLIGHT,
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
)
from sluice.domain.ledger import InstrumentId, check_party_id
from sluice.domain.withdrawals import Withdrawal, withdrawal_id
from sluice.ports import UnitOfWorkFactory
from sluice.services.compliance import KycRegistry, check_operation_allowed
from sluice.services.controls import check_not_paused
from sluice.services.events import emit_all
from sluice.services.withdrawal_attempts import (
    HOLD_KEY,
    Clock,
    WithdrawalSettings,
    _fee_allowance,
    _refund,
    _try_reserve,
    hold_in_force,
    hold_until_safe,
    recorded_hold,
    release_hold,
    withdrawal_event,
)
from sluice.services.withdrawal_worker import WithdrawalWorker, WorkerTick

# The settings, the hold and the worker live in their own modules (see their docstrings); they
# are re-exported so that they stay importable from here.
__all__ = [
    "CANCELLABLE_STATUSES",
    "HOLD_KEY",
    "Clock",
    "WithdrawalSettings",
    "WithdrawalWorker",
    "WorkerTick",
    "cancel_withdrawal",
    "hold_in_force",
    "hold_until_safe",
    "list_withdrawals",
    "recorded_hold",
    "release_hold",
    "request_withdrawal",
]


# --- requests ----------------------------------------------------------------------------------


def request_withdrawal(
    uow_factory: UnitOfWorkFactory,
    *,
    treasury: str,
    customer_id: str,
    receiver: str,
    instrument: InstrumentId,
    amount: Decimal | str,
    idempotency_key: str,
    clock: Clock,
    settings: WithdrawalSettings | None = None,
    compliance: KycRegistry | None = None,
    actor: str | None = None,
    on_replay: Callable[[Withdrawal], None] | None = None,
) -> Withdrawal:
    """Pass the KYC registry, debit the customer, record the withdrawal and (when holdings are
    free) reserve its inputs and set its ``trec_tgt`` — all in one transaction. The same
    idempotency key again returns the first withdrawal (and tells ``on_replay``, so a caller can
    answer as a replay even when it lost a race to the first request). Bad input raises a clear
    error and changes nothing; a compliance denial changes nothing but the audit trail."""
    settings = settings or WithdrawalSettings()
    registry = compliance or KycRegistry()
    value = parse_amount(amount, field="amount")
    if value <= 0:
        raise InvalidAmountError(f"amount must be positive, got {format_amount(value)}")
    check_party_id(receiver)
    if receiver == treasury:
        raise InvalidInputError("a withdrawal cannot be paid to the treasury party itself")
    if not idempotency_key.strip():
        raise InvalidInputError("idempotency key must not be empty")
    wid = withdrawal_id(customer_id, idempotency_key)
    account = AccountRef(customer_account_name(customer_id), instrument)
    with uow_factory() as uow:
        check_not_paused(uow)
        repo = uow.withdrawals
        # The customer's row is locked first, then their balance row: a concurrent request of
        # the same customer (the same idempotency key included) waits here, then sees what the
        # first one wrote. Ingestion and the officer's commands lock in the same order.
        uow.compliance.profiles([customer_id], lock=True)
        balance = repo.balance(account, lock=True)
        existing = repo.get(wid, lock=True)
        if existing is not None:
            same = (existing.receiver, existing.instrument, existing.amount) == (
                receiver,
                instrument,
                value,
            )
            if not same:
                raise DuplicateOperationError(
                    f"idempotency key {idempotency_key!r} was already used for withdrawal "
                    f"{wid} with other parameters"
                )
            if on_replay is not None:
                on_replay(existing)
            return existing
        if not repo.customer_exists(customer_id):
            raise NotFoundError(f"unknown customer {customer_id!r}")
        record = repo.instrument(instrument)
        if record is None or not record.enabled:
            raise InstrumentNotOnboardedError(
                f"instrument {instrument.key()} is not onboarded"
                + ("" if record is None else " (it is disabled)")
            )
        now = clock()
        check_operation_allowed(
            uow,
            registry,
            ComplianceRequest(
                customer_id, "withdrawal", registry.settings.value(instrument, value), receiver
            ),
            operation_id=wid,
            at=now,
            actor=actor or f"customer:{customer_id}",
            parameters={"instrument": instrument.key(), "instrument_amount": format_amount(value)},
        )
        if balance < value:
            raise InsufficientBalanceError(
                f"customer {customer_id} has {format_amount(balance)} {instrument.id}, "
                f"cannot withdraw {format_amount(value)}"
            )
        repo.post(
            [
                JournalTransaction(
                    id=f"withdraw:{wid}",
                    kind="withdrawal_requested",
                    postings=(
                        Posting(account, value),
                        Posting(AccountRef(IN_FLIGHT, instrument), -value),
                    ),
                    description=f"withdrawal {wid} to {receiver}",
                )
            ]
        )
        withdrawal = Withdrawal(
            id=wid,
            kind="withdrawal",
            customer_id=customer_id,
            sender=treasury,
            receiver=receiver,
            instrument=instrument,
            amount=value,
            status="queued",
            attempts_max=settings.attempts_max,
            idempotency_key=idempotency_key,
            requested_at=clock(),
        )
        reserved = _try_reserve(
            uow,
            withdrawal,
            fee=_fee_allowance(record, withdrawal),
            now=clock(),
            clock=clock,
            settings=settings,
        )
        withdrawal = reserved or withdrawal
        repo.insert(withdrawal)
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=wid,
                    operation="withdrawal_requested",
                    actor=actor or f"customer:{customer_id}",
                    recorded_at=now,
                    customer_id=customer_id,
                    parameters={
                        "receiver": receiver,
                        "instrument": instrument.key(),
                        "amount": format_amount(value),
                        "idempotency_key": idempotency_key,
                    },
                    state_changes=[
                        {
                            "debited": customer_account_name(customer_id),
                            "amount": format_amount(value),
                        },
                        {"withdrawal": wid, "status": withdrawal.status},
                    ],
                )
            ]
        )
        if withdrawal.status == "reserved":
            assert withdrawal.trec_tgt is not None
            repo.record_attempt(wid, withdrawal.attempt, withdrawal.inputs, withdrawal.trec_tgt)
        emit_all(
            uow,
            _present(
                withdrawal_event(
                    "withdrawal_requested",
                    withdrawal,
                    at=now,
                    actor=actor or f"customer:{customer_id}",
                )
            ),
        )
        uow.commit()
        return withdrawal


# What a customer can still take back: the first attempt, while nothing of it has gone to the
# ledger (the worker moves a record to ``submitting``, under its row lock, before calling out).
# A retry is not: its earlier attempt may still commit late (a local party's command carries no
# deadline), so it ends only by its own transfer or by a fence (see the header).
CANCELLABLE_STATUSES: frozenset[str] = frozenset({"queued", "reserved"})
_NOT_CANCELLABLE = {
    "submitting": "it is being submitted to the ledger",
    "submitted": "it was submitted to the ledger and may still commit",
    "offered": "its offer is on the ledger (the receiver may still accept it)",
    "completed": "it was paid out",
    "failed": "it is already over",
}


def cancel_withdrawal(
    uow_factory: UnitOfWorkFactory,
    withdrawal_id: str,
    *,
    customer_id: str | None,
    actor: str,
    at: datetime,
) -> Withdrawal:
    """Take back a withdrawal that has not been submitted (``queued`` or ``reserved``): its
    inputs are released, the customer is credited back, it ends ``failed`` with failure
    ``cancelled`` and stops counting against their limits — in one transaction, audited.

    ``customer_id`` (a customer cancelling their own): another customer's withdrawal is not
    found. A worker that claimed the record first wins and the cancel is refused (41); a record
    cancelled first is never claimed for submission, because claims only take queued and
    reserved records and the two serialise on the record's row lock."""
    with uow_factory() as uow:
        check_not_paused(uow)
        repo = uow.withdrawals
        found = repo.get(withdrawal_id)
        if found is None or (customer_id is not None and found.customer_id != customer_id):
            raise NotFoundError(f"unknown withdrawal {withdrawal_id!r}")
        # The customer's row, then the record's, then the balances: the order every writer
        # of a customer's money locks in.
        if found.customer_id is not None:
            uow.compliance.profiles([found.customer_id], lock=True)
        record = repo.get(withdrawal_id, lock=True)
        assert record is not None, f"withdrawal {withdrawal_id} vanished"
        if record.kind != "withdrawal":
            raise InvalidOperationStateError(
                f"{withdrawal_id} is a {record.kind}, not a customer's withdrawal; it cannot "
                "be cancelled"
            )
        if record.status not in CANCELLABLE_STATUSES:
            raise InvalidOperationStateError(
                f"withdrawal {withdrawal_id} cannot be cancelled: "
                f"{_NOT_CANCELLABLE.get(record.status, record.status)} (status {record.status})"
            )
        if record.attempt > 1:
            raise InvalidOperationStateError(
                f"withdrawal {withdrawal_id} cannot be cancelled: attempt {record.attempt - 1} "
                "was submitted to the ledger and may still commit; it is either paid or credited "
                "back by itself"
            )
        if recorded_hold(uow) is not None:
            # After a DB restore the DB may not know that this record was submitted.
            raise InvalidOperationStateError(
                f"withdrawal {withdrawal_id} cannot be cancelled while submissions are on hold "
                "after a database restore: the ledger may hold an attempt this database has "
                "forgotten; try again once the hold has passed"
            )
        released = repo.release(record.id)
        if record.status == "reserved":
            repo.close_attempt(record.id, record.attempt, "cancelled", None)
        cancelled = replace(
            record, status="failed", failure="cancelled", inputs=(), last_error=None
        )
        if not repo.update(cancelled, expected_status=record.status):
            raise InvalidOperationStateError(
                f"withdrawal {withdrawal_id} changed while it was being cancelled; not cancelled"
            )
        repo.post([_refund(record)])
        uow.compliance.forget_usage([record.id])
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=record.id,
                    operation="withdrawal_cancelled",
                    actor=actor,
                    recorded_at=at,
                    customer_id=record.customer_id,
                    parameters={"status": record.status, "attempt": record.attempt},
                    state_changes=[
                        {
                            "credited": record.funding_account(),
                            "amount": format_amount(record.amount),
                        },
                        {"withdrawal": record.id, "status": "failed", "failure": "cancelled"},
                        {"inputs_released": released},
                    ],
                )
            ]
        )
        event = withdrawal_event("withdrawal_cancelled", cancelled, at=at, actor=actor)
        emit_all(uow, _present(event))
        uow.commit()
    return cancelled


def list_withdrawals(
    uow_factory: UnitOfWorkFactory,
    *,
    statuses: tuple[str, ...] = (),
    customer_id: str | None = None,
    limit: int = 1000,
) -> list[Withdrawal]:
    with uow_factory() as uow:
        return uow.withdrawals.find(statuses=statuses, customer_id=customer_id, limit=limit)


def _present(event: Event | None) -> list[Event]:
    return [] if event is None else [event]
