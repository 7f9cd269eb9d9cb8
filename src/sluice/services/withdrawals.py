"""Withdrawals: requests, the stateless worker that submits them, retries, refunds, pool upkeep.

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
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal

from sluice.domain.amounts import format_amount, parse_amount
from sluice.domain.audit import AuditEntry
from sluice.domain.coin_selection import (
    Candidate,
    plan_merge,
    plan_split,
    select_around,
    select_inputs,
)
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
from sluice.domain.journal import (
    IN_FLIGHT,
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
)
from sluice.domain.ledger import (
    REASON_KEY,
    Cursor,
    Holding,
    InstrumentId,
    Transfer,
    check_party_id,
    format_timestamp,
    parse_timestamp,
)
from sluice.domain.withdrawals import (
    AWAITING_OUTCOME_STATUSES,
    LIVE_STATUSES,
    Withdrawal,
    upkeep_id,
    withdrawal_id,
)
from sluice.ports import (
    CommandError,
    InstrumentRecord,
    LedgerCommands,
    RegistryError,
    RegistryLookup,
    UnitOfWork,
    UnitOfWorkFactory,
    WithdrawalRepository,
)
from sluice.services.compliance import KycRegistry, check_operation_allowed, undo_failed_payouts
from sluice.services.controls import check_not_paused, pause_state

HOLD_KEY = "withdrawals_hold_until"
Clock = Callable[[], datetime]


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
        uow.commit()
    return cancelled


def _candidates(holdings: list[Holding]) -> list[Candidate]:
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
        selection = select_inputs(_candidates(holdings), target, now=now)
        if selection is None:
            return None
        inputs = tuple(c.contract_id for c in selection.inputs)
        if not repo.reserve(inputs, withdrawal.id):
            return None
    else:
        (candidate,) = _candidates([anchor])
        selection = select_around(candidate, _candidates(holdings), target, now=now)
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


# --- the worker --------------------------------------------------------------------------------


@dataclass(slots=True)
class WorkerTick:
    settled: int = 0
    retried: int = 0
    refunded: int = 0
    reserved: int = 0
    submitted: int = 0
    submit_errors: int = 0
    offers_withdrawn: int = 0
    upkeep_created: int = 0
    # Records whose last attempt expired and that may have sent one: their anchor is fenced
    # before they are credited back (or, for upkeep, failed).
    fenced: int = 0
    held: bool = False
    # The pause mode in force (paused, emergency, maintenance): the worker did nothing at all.
    paused: str | None = None
    # Payouts not reserved or not submitted this round because their customer is no longer
    # active or their receiver was flagged since the request.
    compliance_blocked: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return bool(
            self.settled
            or self.reserved
            or self.submitted
            or self.submit_errors
            or self.offers_withdrawn
            or self.upkeep_created
        )


class WithdrawalWorker:
    """Stateless: everything it knows is in the DB, so any number may run and any may be killed
    at any point. One ``run_once`` settles expired attempts, reserves inputs for queued records,
    submits reserved ones, withdraws offers left unanswered too long and plans pool upkeep."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        commands: LedgerCommands,
        registries: RegistryLookup,
        *,
        treasury: str,
        connection: str,
        clock: Clock,
        settings: WithdrawalSettings | None = None,
        after_submit: Callable[[Withdrawal], None] | None = None,
        compliance: KycRegistry | None = None,
    ) -> None:
        self._uow = uow_factory
        self._registry = compliance or KycRegistry()
        self._commands = commands
        self._registries = registries
        self.treasury = treasury
        self.connection = connection
        self._clock = clock
        self.settings = settings or WithdrawalSettings()
        # A test hook: called between a submission and recording it (crash tests raise here).
        self._after_submit = after_submit
        self._next_upkeep: datetime | None = None

    def run_once(self, *, upkeep: bool = True) -> WorkerTick:
        """One round; while sluice is paused, nothing (not even a claim) and ``tick.paused``
        says why."""
        tick = WorkerTick()
        with self._uow() as uow:
            state = pause_state(uow)
        if state is not None:
            tick.paused = state.mode
            return tick
        self.settle_expired(tick)
        self.reserve_queued(tick)
        self.submit_reserved(tick)
        if tick.paused is not None:
            return tick
        self.withdraw_stale_offers(tick)
        if upkeep:
            self.plan_upkeep(tick)
        return tick

    # -- settling attempts whose trec_tgt has passed ---------------------------------------------

    def settle_expired(self, tick: WorkerTick) -> None:
        with self._uow() as uow:
            repo = uow.withdrawals
            cursor = repo.cursor(self.connection)
            if cursor is None or cursor.record_time is None:
                return
            due = repo.claim(
                AWAITING_OUTCOME_STATUSES,
                self.settings.claim_batch,
                trec_tgt_at_most=cursor.record_time,
            )
            failed = [self._settle(repo, record, cursor, tick) for record in due]
            undo_failed_payouts(
                uow,
                [record for record in failed if record is not None],
                at=cursor.record_time,
                actor="withdrawal-worker",
            )
            uow.commit()

    def _settle(
        self, repo: WithdrawalRepository, record: Withdrawal, cursor: Cursor, tick: WorkerTick
    ) -> Withdrawal | None:
        """Ingestion has passed ``trec_tgt`` and saw no transfer for the record: retry it around
        its anchor, fence it, or — when nothing of it can commit any more — fail it. Returns the
        record when it is a payout that failed here (credited back)."""
        tick.settled += 1
        repo.close_attempt(record.id, record.attempt, "expired", record.last_error)
        unseen = f"attempt {record.attempt} expired unseen at {cursor.record_time}"
        anchor = record.anchor
        # Only the anchor stays reserved. Ingestion books a transfer of this record in the same
        # transaction as the archive of the inputs it spent, so if the anchor cannot be reserved
        # again (it is archived) while the record is still live, a transaction that is not one of
        # its attempts spent it: none of them can ever commit.
        repo.release(record.id)
        anchored = anchor is not None and repo.reserve([anchor], record.id)
        final = record.failure is not None or record.attempt >= record.attempts_max
        if not anchored and record.is_payout and not final:
            tick.retried += 1
            repo.update(
                replace(
                    record,
                    status="queued",
                    attempt=record.attempt + 1,
                    inputs=(),
                    trec_tgt=None,
                    last_error=f"{unseen}; its anchor was spent elsewhere: inputs chosen afresh",
                )
            )
            return None
        if anchored and not final:
            assert anchor is not None
            if record.is_payout:
                tick.retried += 1
                # The rest is selected around the anchor (the amount or the fee may have changed).
                repo.update(
                    replace(
                        record,
                        status="queued",
                        attempt=record.attempt + 1,
                        inputs=(anchor,),
                        trec_tgt=None,
                        last_error=unseen,
                    )
                )
                return None
            # A merge or split is tried again with the same inputs (its amount is theirs).
            rest = record.inputs[1:]
            if not rest or repo.reserve(rest, record.id):
                tick.retried += 1
                retried = replace(
                    record,
                    status="reserved",
                    attempt=record.attempt + 1,
                    trec_tgt=self._clock() + timedelta(seconds=self.settings.trec_span_s),
                    last_error=unseen,
                )
                repo.update(retried)
                assert retried.trec_tgt is not None
                repo.record_attempt(retried.id, retried.attempt, retried.inputs, retried.trec_tgt)
                return None
            # Another of its inputs is gone: it cannot succeed any more; it is fenced below.
        failure = record.failure or (
            f"{record.attempt} attempt(s) expired without committing"
            if record.is_payout
            else "expired without committing"
        )
        if anchored and record.may_have_left():
            assert anchor is not None
            tick.fenced += 1
            ending = "credited back" if record.is_payout else "failed"
            fence = replace(
                record,
                status="reserved",
                attempt=record.attempt + 1,
                inputs=(anchor,),
                trec_tgt=self._clock() + timedelta(seconds=self.settings.trec_span_s),
                failure=failure,
                last_error=f"{unseen}; fencing its anchor before it is {ending}",
            )
            repo.update(fence)
            assert fence.trec_tgt is not None
            repo.record_attempt(fence.id, fence.attempt, fence.inputs, fence.trec_tgt)
            return None
        # Nothing of it can commit any more: no attempt left, or its anchor was spent elsewhere.
        repo.release(record.id)
        if record.is_payout:
            tick.refunded += 1
            repo.post([_refund(record)])
        settled = replace(record, status="failed", failure=failure, inputs=())
        repo.update(settled)
        return settled if record.is_payout else None

    # -- reserving inputs for queued records ------------------------------------------------------

    def reserve_queued(self, tick: WorkerTick) -> None:
        with self._uow() as uow:
            repo = uow.withdrawals
            now = _lock_time(repo.cursor(self.connection), self._clock)
            instruments: dict[InstrumentId, InstrumentRecord | None] = {}
            claimed = repo.claim(["queued"], self.settings.claim_batch)
            blocked = self._compliance_blocked(uow, claimed)
            for claimed_record in claimed:
                record = _drop_spent_anchor(uow, claimed_record)
                if record.id in blocked:
                    tick.compliance_blocked += 1
                    message = f"waiting: {blocked[record.id]}"
                    if record.last_error != message:
                        repo.update(replace(record, last_error=message))
                    continue
                if record.instrument not in instruments:
                    instruments[record.instrument] = repo.instrument(record.instrument)
                reserved = _try_reserve(
                    uow,
                    record,
                    fee=_fee_allowance(instruments[record.instrument], record),
                    now=now,
                    clock=self._clock,
                    settings=self.settings,
                )
                if reserved is None:
                    message = "no free holdings cover the amount yet; waiting"
                    if record.last_error != message:
                        repo.update(replace(record, last_error=message))
                    continue
                repo.update(reserved)
                assert reserved.trec_tgt is not None
                repo.record_attempt(
                    reserved.id, reserved.attempt, reserved.inputs, reserved.trec_tgt
                )
                tick.reserved += 1
            uow.commit()

    # -- submitting -------------------------------------------------------------------------------

    def submit_reserved(self, tick: WorkerTick) -> None:
        with self._uow() as uow:
            # Asked again right before claiming: a pause that came during this round stops the
            # calls out to the ledger.
            state = pause_state(uow)
            if state is not None:
                tick.paused = state.mode
                return
            until = recorded_hold(uow)
            if hold_in_force(until, uow.withdrawals.cursor(self.connection)):
                tick.held = True
                return
            if until is not None:
                uow.withdrawals.set_control(HOLD_KEY, None)  # ingestion has passed it
            claimed = uow.withdrawals.claim(["reserved"], self.settings.claim_batch)
            # Frozen or flagged since they were reserved: not submitted; they stay reserved,
            # expire at trec_tgt and wait in the queue like any retry. A fence pays nobody and
            # always leaves.
            blocked = self._compliance_blocked(
                uow, [record for record in claimed if record.failure is None]
            )
            tick.compliance_blocked += len(blocked)
            claimed = [record for record in claimed if record.id not in blocked]
            uow.withdrawals.update_many([replace(r, status="submitting") for r in claimed])
            kinds = {
                instrument: uow.withdrawals.instrument(instrument)
                for instrument in {record.instrument for record in claimed}
            }
            fenced = [r.anchor for r in claimed if r.failure is not None and r.anchor is not None]
            anchors = uow.ingestion.holdings_by_ids(fenced) if fenced else {}
            uow.commit()
        if not claimed:
            return
        now = self._clock()
        done: list[Withdrawal] = []
        for record in claimed:
            instrument = kinds.get(record.instrument)
            allowed = instrument.transfer_kinds if instrument is not None else ("direct",)
            if record.failure is not None:
                error, failure = self._submit_fence(record, anchors, now)
            else:
                error, failure = self._submit(record, allowed, now)
            if error is not None:
                tick.submit_errors += 1
                tick.errors.append(f"{record.id}: {error}")
            else:
                tick.submitted += 1
            if self._after_submit is not None:
                self._after_submit(record)
            done.append(
                replace(
                    record,
                    status="submitted",
                    last_error=error,
                    failure=failure or record.failure,
                )
            )
        # Recorded together, in one transaction. A crash before this leaves the records in
        # ``submitting``, which is settled exactly like ``submitted`` once trec_tgt has passed;
        # a record ingestion has meanwhile completed (or settled) is left as it is. So is one
        # that has moved on to a later attempt (or fence) while this worker was away and is
        # ``submitting`` again under another worker: written back, this attempt's row would
        # replace the live attempt's and could refund a record that attempt then pays.
        with self._uow() as uow:
            uow.withdrawals.update_many(done, expected_status="submitting", same_attempt=True)
            uow.commit()

    def _compliance_blocked(self, uow: UnitOfWork, records: list[Withdrawal]) -> dict[str, str]:
        """Payouts that may not leave now: the KYC registry allowed them when they were
        requested, but the customer has since been frozen (or put under review, or blacklisted)
        or the receiver flagged. Flagging freezes every operation at once, queued ones included."""
        payouts = [record for record in records if record.is_payout]
        if not payouts:
            return {}
        customers = {r.customer_id for r in payouts if r.customer_id and r.kind == "withdrawal"}
        session = self._registry.session(
            uow, customers, {r.receiver for r in payouts}, since=self._clock(), lock=False
        )
        blocked: dict[str, str] = {}
        for record in payouts:
            profile = session.profiles.get(record.customer_id or "")
            if record.kind == "withdrawal" and profile is not None and profile.status != "active":
                blocked[record.id] = f"customer {record.customer_id} is {profile.status}"
            listed = session.listed(record.receiver)
            if listed is not None:
                blocked[record.id] = f"receiver {record.receiver} is {listed}"
        return blocked

    def _submit(
        self, record: Withdrawal, allowed: tuple[str, ...], now: datetime
    ) -> tuple[str | None, str | None]:
        """Submit the record's current attempt. Returns (error, permanent failure)."""
        assert record.trec_tgt is not None
        meta = {REASON_KEY: record.id, **record.transfer_meta()}
        transfer = Transfer(
            sender=record.sender,
            receiver=record.receiver,
            amount=record.amount,
            instrument=record.instrument,
            requested_at=now,
            execute_before=now + timedelta(seconds=self.settings.offer_expiry_s),
            input_holding_cids=record.inputs,
            meta=meta,
        )
        try:
            factory = self._registries(record.instrument).transfer_factory(transfer)
        except RegistryError as exc:
            return f"registry: {exc}", None
        expected = ("self",) if not record.is_payout else allowed
        if factory.transfer_kind not in expected:
            # Not submitted; refunded once trec_tgt has passed (an earlier submission of this
            # attempt by a worker that crashed could still be in flight until then).
            failure = (
                f"the registry would make this transfer {factory.transfer_kind!r}; "
                f"{record.instrument.key()} is onboarded for {', '.join(expected)} only"
            )
            return failure, failure
        try:
            self._commands.submit_transfer(
                transfer,
                factory,
                act_as=record.sender,
                command_id=f"{record.id}-{record.attempt}",
                max_record_time=record.trec_tgt,
            )
        except CommandError as exc:
            return f"{'rejected' if exc.definite else 'unconfirmed'}: {exc}", None
        return None, None

    def _submit_fence(
        self, record: Withdrawal, anchors: dict[str, Holding], now: datetime
    ) -> tuple[str | None, str | None]:
        """Submit a fence: a self-transfer of the record's anchor alone, with the record's id as
        reason and ``fence`` as kind. Returns (error, None): the record's failure stays."""
        assert record.trec_tgt is not None
        assert record.anchor is not None
        anchor = anchors.get(record.anchor)
        if anchor is None:
            # Archived already: by this fence's earlier attempt (ingestion fails the record
            # when it sees it) or by another transaction (settled once trec_tgt has passed).
            return f"fence not sent: its anchor {record.anchor} is already archived", None
        transfer = Transfer(
            sender=record.sender,
            receiver=record.sender,
            amount=anchor.amount,
            instrument=record.instrument,
            requested_at=now,
            execute_before=now + timedelta(seconds=self.settings.offer_expiry_s),
            input_holding_cids=(anchor.contract_id,),
            meta={REASON_KEY: record.id, **record.transfer_meta(fence=True)},
        )
        try:
            factory = self._registries(record.instrument).transfer_factory(transfer)
        except RegistryError as exc:
            return f"fence: registry: {exc}", None
        if factory.transfer_kind != "self":
            return f"fence: the registry would make it {factory.transfer_kind!r}", None
        try:
            self._commands.submit_transfer(
                transfer,
                factory,
                act_as=record.sender,
                command_id=f"{record.id}-fence-{record.attempt}",
                max_record_time=record.trec_tgt,
            )
        except CommandError as exc:
            return f"fence {'rejected' if exc.definite else 'unconfirmed'}: {exc}", None
        return None, None

    # -- offers left unanswered -------------------------------------------------------------------

    def withdraw_stale_offers(self, tick: WorkerTick) -> None:
        with self._uow() as uow:
            repo = uow.withdrawals
            cursor = repo.cursor(self.connection)
            if cursor is None or cursor.record_time is None:
                return
            deadline = cursor.record_time - timedelta(seconds=self.settings.offer_timeout_s)
            stale: list[tuple[Withdrawal, str]] = []
            for record in repo.claim(["offered"], self.settings.claim_batch):
                if record.offered_at is None or record.offered_at > deadline:
                    continue
                if record.instruction_cid is None:
                    continue
                live = repo.live_instruction(record.instruction_cid)
                if live is not None:
                    stale.append((record, live))
            uow.commit()
        for record, instruction_cid in stale:
            try:
                context = self._registries(record.instrument).choice_context(
                    "withdraw", instruction_cid
                )
                self._commands.exercise_instruction(
                    "withdraw",
                    instruction_cid,
                    context,
                    act_as=record.sender,
                    command_id=f"{record.id}-withdraw-{instruction_cid[-16:]}",
                )
                tick.offers_withdrawn += 1
            except (CommandError, RegistryError) as exc:
                tick.errors.append(f"{record.id}: withdrawing the offer failed: {exc}")

    # -- pool upkeep ------------------------------------------------------------------------------

    def plan_upkeep(self, tick: WorkerTick) -> None:
        """Merge many small holdings, or split a large one, as a self-transfer record. Looks at
        the pool at most once per ``upkeep_interval_s`` of clock time (it reads every holding)."""
        if not self.settings.merge_threshold and not self.settings.split_parallel:
            return
        now_clock = self._clock()
        if self._next_upkeep is not None and now_clock < self._next_upkeep:
            return
        self._next_upkeep = now_clock + timedelta(seconds=self.settings.upkeep_interval_s)
        with self._uow() as uow:
            repo = uow.withdrawals
            cursor = repo.cursor(self.connection)
            if cursor is None:
                return
            now = _lock_time(cursor, self._clock)
            # One upkeep record per instrument at a time.
            live = repo.find(statuses=sorted(LIVE_STATUSES), kinds=("merge", "split"))
            busy = {r.instrument for r in live}
            for instrument in uow.reference.instruments():
                if not instrument.enabled or instrument.instrument in busy:
                    continue
                record = self._plan_for(repo, self.treasury, instrument.instrument, now, cursor)
                if record is not None:
                    tick.upkeep_created += 1
            uow.commit()

    def _plan_for(
        self,
        repo: WithdrawalRepository,
        party: str,
        instrument: InstrumentId,
        now: datetime,
        cursor: Cursor,
    ) -> Withdrawal | None:
        candidates = _candidates(repo.spendable_holdings(party, instrument))
        if not candidates:
            return None
        settings = self.settings
        inputs: tuple[str, ...] = ()
        amount = Decimal(0)
        kind: str | None = None
        if settings.merge_threshold:
            merge = plan_merge(
                candidates,
                now=now,
                threshold=settings.merge_threshold,
                small_below=settings.merge_small_below,
            )
            if merge:
                kind = "merge"
                inputs = tuple(c.contract_id for c in merge)
                amount = sum((c.amount for c in merge), Decimal(0))
        if kind is None and settings.split_parallel:
            split = plan_split(
                candidates,
                now=now,
                parallel=settings.split_parallel,
                large_at_least=settings.split_large_at_least,
            )
            if split is not None:
                kind = "split"
                inputs = (split.contract_id,)
                amount = parse_amount((split.amount / 2).quantize(Decimal("1e-10")))
        if kind is None or amount <= 0:
            return None
        record = Withdrawal(
            id=upkeep_id(kind, inputs, str(cursor.offset)),
            kind="merge" if kind == "merge" else "split",
            customer_id=None,
            sender=party,
            receiver=party,
            instrument=instrument,
            amount=amount,
            status="reserved",
            attempts_max=settings.attempts_max,
            inputs=inputs,
            requested_at=self._clock(),
            trec_tgt=self._clock() + timedelta(seconds=settings.trec_span_s),
        )
        if repo.get(record.id) is not None or not repo.reserve(inputs, record.id):
            return None
        repo.insert(record)
        assert record.trec_tgt is not None
        repo.record_attempt(record.id, 1, inputs, record.trec_tgt)
        return record


def _refund(record: Withdrawal) -> JournalTransaction:
    assert record.is_payout
    return JournalTransaction(
        id=f"refund:{record.id}",
        kind="withdrawal_refunded",
        postings=(
            Posting(AccountRef(IN_FLIGHT, record.instrument), record.amount),
            Posting(AccountRef(record.funding_account(), record.instrument), -record.amount),
        ),
        description=f"{record.kind} {record.id} failed: credited back",
    )


def list_withdrawals(
    uow_factory: UnitOfWorkFactory,
    *,
    statuses: tuple[str, ...] = (),
    customer_id: str | None = None,
    limit: int = 1000,
) -> list[Withdrawal]:
    with uow_factory() as uow:
        return uow.withdrawals.find(statuses=statuses, customer_id=customer_id, limit=limit)
