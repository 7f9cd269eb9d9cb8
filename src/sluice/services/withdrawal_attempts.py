"""What every attempt of a withdrawal rests on: the settings, reserving the attempt's inputs
(around the record's anchor), crediting a failed payout back, and the hold on submissions after a
DB restore. Shared by the requests in :mod:`sluice.services.withdrawals` and the worker in
:mod:`sluice.services.withdrawal_worker`; the header of :mod:`sluice.services.withdrawals` explains
how a withdrawal could be paid twice and why it cannot be here."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

from sluice.domain.amounts import format_amount, parse_amount
from sluice.domain.coin_selection import Candidate, select_around, select_inputs
from sluice.domain.errors import InvalidInputError
from sluice.domain.events import Event, new_event
from sluice.domain.journal import JournalTransaction
from sluice.domain.ledger import (
    Cursor,
    Holding,
    InstrumentId,
    format_timestamp,
    parse_timestamp,
)
from sluice.domain.withdrawals import PAYOUT_KINDS, Withdrawal
from sluice.ports import InstrumentRecord, UnitOfWork, UnitOfWorkFactory

HOLD_KEY = "withdrawals_hold_until"
Clock = Callable[[], datetime]


def instrument_payload(instrument: InstrumentId) -> dict[str, str]:
    """An instrument as every event's payload names it."""
    return {"id": instrument.id, "admin": instrument.admin}


def withdrawal_event(
    type: str,
    record: Withdrawal,
    *,
    at: datetime,
    actor: str | None = None,
    update_id: str | None = None,
    offset: int | None = None,
) -> Event | None:
    """The event of a payout's state change (``withdrawal_*``), aggregate = the record's id;
    ``None`` for pool upkeep (merges and splits are the treasury's own housekeeping, not
    withdrawals anyone outside waits for). ``kind`` tells a customer's withdrawal from the
    return of a held deposit to its sender."""
    if record.kind not in PAYOUT_KINDS:
        return None
    return new_event(
        type,
        record.id,
        {
            "withdrawal_id": record.id,
            "kind": record.kind,
            "customer_id": record.customer_id,
            "receiver": record.receiver,
            "instrument": instrument_payload(record.instrument),
            "amount": format_amount(record.amount),
            "status": record.status,
            "attempt": record.attempt,
            "failure": record.failure,
            "update_id": update_id or record.outcome_update_id,
            "offset": offset,
            "actor": actor,
        },
        at=at,
    )


def withdrawal_events(
    type: str, records: Iterable[Withdrawal], *, at: datetime, actor: str | None = None
) -> list[Event]:
    """:func:`withdrawal_event` for each payout of ``records``."""
    events = (withdrawal_event(type, record, at=at, actor=actor) for record in records)
    return [event for event in events if event is not None]


@dataclass(frozen=True, slots=True)
class WithdrawalSettings:
    # trec_tgt = now + this when inputs are reserved.
    trec_span_s: float = 120.0
    attempts_max: int = 3
    # An offer's execute_before (the admin expires it then) and when we withdraw it ourselves.
    offer_expiry_s: float = 7 * 24 * 3600.0
    offer_timeout_s: float = 24 * 3600.0
    claim_batch: int = 50
    # Pool upkeep: merge when more than merge_threshold holdings are below merge_small_below;
    # split while fewer than split_parallel holdings are at least split_large_at_least (0: off).
    merge_threshold: int = 40
    merge_small_below: Decimal = Decimal("10")
    split_parallel: int = 0
    split_large_at_least: Decimal = Decimal("100")
    # How often (clock time) a worker looks at the pool for upkeep.
    upkeep_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if self.trec_span_s <= 0 or self.offer_expiry_s <= 0 or self.offer_timeout_s <= 0:
            raise InvalidInputError("withdrawal time spans must be positive")
        if self.attempts_max < 1 or self.claim_batch < 1:
            raise InvalidInputError("attempts_max and claim_batch must be at least 1")


def holding_candidates(holdings: list[Holding]) -> list[Candidate]:
    return [
        Candidate(
            contract_id=h.contract_id,
            amount=h.amount,
            locked=h.lock is not None,
            locked_until=h.lock.expires_at if h.lock is not None else None,
        )
        for h in holdings
    ]


def _fee_allowance(record: InstrumentRecord | None, withdrawal: Withdrawal) -> Decimal:
    """What the admin may burn from the sender on top of the amount (the instrument's
    ``transfer_fee`` limit, set at onboarding); self-transfers pay none."""
    if withdrawal.sender == withdrawal.receiver:
        return Decimal(0)
    fee = record.limits.get("transfer_fee") if record is not None else None
    return parse_amount(fee, field="transfer_fee") if fee else Decimal(0)


def _lock_time(cursor: Cursor | None, clock: Clock) -> datetime:
    """The time against which lock expiry is judged: the last ingested record time (the ledger
    has certainly reached it), else the clock."""
    if cursor is not None and cursor.record_time is not None:
        return cursor.record_time
    return clock()


def _drop_spent_anchor(uow: UnitOfWork, record: Withdrawal) -> Withdrawal:
    """A live record whose anchor ingestion shows archived: a transaction that is not one of its
    attempts spent it (ingestion books a transfer of the record in the same transaction as the
    archive of its inputs), so none of its attempts can commit any more. It starts afresh: no
    anchor, nothing reserved. Any other record is returned as it is."""
    anchor = record.anchor
    if anchor is None or uow.ingestion.holdings_by_ids([anchor]):
        return record
    uow.withdrawals.release(record.id)
    fresh = replace(record, inputs=(), last_error=f"its anchor {anchor} was spent elsewhere")
    uow.withdrawals.update(fresh)
    return fresh


def _try_reserve(
    uow: UnitOfWork,
    withdrawal: Withdrawal,
    *,
    fee: Decimal,
    now: datetime,
    clock: Clock,
    settings: WithdrawalSettings,
) -> Withdrawal | None:
    """Select and reserve inputs (amount + ``fee``, locks judged at ``now``) for the record's
    next attempt; None if none can be found now. A record that has an anchor keeps it as its
    first input and selects the rest around it (None too if the anchor is no longer active: see
    :func:`_drop_spent_anchor`)."""
    repo = uow.withdrawals
    target = withdrawal.amount + fee
    holdings = repo.spendable_holdings(withdrawal.sender, withdrawal.instrument)
    anchor_id = withdrawal.anchor
    anchor = uow.ingestion.holdings_by_ids([anchor_id]).get(anchor_id) if anchor_id else None
    if anchor_id is not None and anchor is None:
        return None
    if anchor is None:
        selection = select_inputs(holding_candidates(holdings), target, now=now)
        if selection is None:
            return None
        inputs = tuple(c.contract_id for c in selection.inputs)
        if not repo.reserve(inputs, withdrawal.id):
            return None
    else:
        (candidate,) = holding_candidates([anchor])
        selection = select_around(candidate, holding_candidates(holdings), target, now=now)
        if selection is None:
            return None
        others = tuple(c.contract_id for c in selection.inputs if c.contract_id != anchor_id)
        if others and not repo.reserve(others, withdrawal.id):
            return None
        inputs = (anchor.contract_id, *others)
    return replace(
        withdrawal,
        status="reserved",
        inputs=inputs,
        trec_tgt=clock() + timedelta(seconds=settings.trec_span_s),
        last_error=None,
    )


def _refund(record: Withdrawal) -> JournalTransaction:
    assert record.is_payout
    return JournalTransaction(
        id=f"refund:{record.id}",
        kind="withdrawal_refunded",
        postings=record.credit_back(),
        description=f"{record.kind} {record.id} failed: credited back",
    )


# --- the hold after a DB restore ---------------------------------------------------------------


def hold_until_safe(
    uow_factory: UnitOfWorkFactory, *, clock: Clock, settings: WithdrawalSettings | None = None
) -> datetime:
    """Stop submissions until ingestion passes every ``trec_tgt`` an attempt forgotten by a DB
    restore could have had: the largest one the DB knows, or now + the span (an attempt submitted
    just before the restore), whichever is later. Workers lift the hold by themselves."""
    settings = settings or WithdrawalSettings()
    with uow_factory() as uow:
        latest = uow.withdrawals.largest_live_trec_tgt()
        until = clock() + timedelta(seconds=settings.trec_span_s)
        if latest is not None and latest > until:
            until = latest
        uow.withdrawals.set_control(HOLD_KEY, format_timestamp(until))
        uow.commit()
    return until


def release_hold(uow_factory: UnitOfWorkFactory) -> None:
    with uow_factory() as uow:
        uow.withdrawals.set_control(HOLD_KEY, None)
        uow.commit()


def recorded_hold(uow: UnitOfWork) -> datetime | None:
    """The hold as recorded (None: none), whether or not ingestion has passed it."""
    value = uow.withdrawals.control(HOLD_KEY)
    return parse_timestamp(value) if value else None


def hold_in_force(until: datetime | None, cursor: Cursor | None) -> bool:
    """A recorded hold stops submissions until ingestion's record time has reached it."""
    if until is None:
        return False
    return cursor is None or cursor.record_time is None or cursor.record_time < until
