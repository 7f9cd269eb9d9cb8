"""The withdrawal worker: settles expired attempts (retry, fence or credit back), reserves inputs
for queued records, submits reserved ones, withdraws offers left unanswered and plans pool upkeep.
The header of :mod:`sluice.services.withdrawals` explains how a withdrawal could be paid twice and
why it cannot be here."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal

from sluice.domain.amounts import parse_amount
from sluice.domain.coin_selection import plan_merge, plan_split
from sluice.domain.events import Event
from sluice.domain.ledger import REASON_KEY, Cursor, Holding, InstrumentId, Transfer
from sluice.domain.withdrawals import (
    AWAITING_OUTCOME_STATUSES,
    LIVE_STATUSES,
    Withdrawal,
    upkeep_id,
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
from sluice.services.breakers import BreakerOpenError
from sluice.services.compliance import KycRegistry, undo_failed_payouts
from sluice.services.controls import pause_state
from sluice.services.events import emit_all
from sluice.services.withdrawal_attempts import (
    HOLD_KEY,
    Clock,
    WithdrawalSettings,
    _drop_spent_anchor,
    _fee_allowance,
    _lock_time,
    _refund,
    _try_reserve,
    hold_in_force,
    holding_candidates,
    recorded_hold,
    withdrawal_events,
)

# --- the worker --------------------------------------------------------------------------------

# The namespace of the ids of ``withdrawal_submitted`` events (one per record and attempt).
_SUBMITTED_NAMESPACE = uuid.UUID("5b0c3f5e-8f1d-4d7a-9a51-2f3e6c1d7b40")


def submitted_event_id(withdrawal_id: str, attempt: int) -> str:
    """The id of the ``withdrawal_submitted`` event of a record's attempt: the same every time
    the attempt is claimed, so it is written once."""
    return str(uuid.uuid5(_SUBMITTED_NAMESPACE, f"withdrawal_submitted:{withdrawal_id}:{attempt}"))


def _announce_once(uow: UnitOfWork, events: list[Event]) -> list[Event]:
    """``withdrawal_submitted`` events with their deterministic ids, less those of attempts the
    outbox already holds."""
    fresh: list[Event] = []
    for event in events:
        event_id = submitted_event_id(event.aggregate_id, int(event.payload["attempt"]))
        if uow.events.get(event_id) is None:
            fresh.append(replace(event, event_id=event_id))
    return fresh


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
    # Claimed records not sent because a circuit breaker refused the call before it reached the
    # registry or the ledger: back to ``reserved``, same attempt, for the next round.
    breaker_refused: int = 0
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
        # A ``reserved`` record was never sent on its current attempt: ``submitting`` is
        # committed before any call, and a worker a breaker refused puts back only records it
        # did not send. Its trec_tgt passed while it waited (a breaker open, a compliance
        # block), so it is given a fresh one on the same attempt (through the queue for a
        # payout, which also asks compliance again): no attempt is counted, none can fail it.
        unsent = record.status == "reserved"
        step = 0 if unsent else 1
        if unsent:
            unseen = (
                f"attempt {record.attempt} not sent before its trec_tgt "
                f"(passed at {cursor.record_time})"
            )
        else:
            repo.close_attempt(record.id, record.attempt, "expired", record.last_error)
            unseen = f"attempt {record.attempt} expired unseen at {cursor.record_time}"
        anchor = record.anchor
        # Only the anchor stays reserved. Ingestion books a transfer of this record in the same
        # transaction as the archive of the inputs it spent, so if the anchor cannot be reserved
        # again (it is archived) while the record is still live, a transaction that is not one of
        # its attempts spent it: none of them can ever commit.
        repo.release(record.id)
        anchored = anchor is not None and repo.reserve([anchor], record.id)
        final = record.failure is not None or (not unsent and record.attempt >= record.attempts_max)
        if not anchored and record.is_payout and not final:
            tick.retried += 1
            repo.update(
                replace(
                    record,
                    status="queued",
                    attempt=record.attempt + step,
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
                        attempt=record.attempt + step,
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
                    attempt=record.attempt + step,
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
                attempt=record.attempt + step,
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
            # Frozen or flagged since they were reserved: not submitted; they stay reserved and,
            # once trec_tgt has passed, go back to the queue on the same attempt (never sent),
            # where compliance is asked again. A fence pays nobody and always leaves.
            blocked = self._compliance_blocked(
                uow, [record for record in claimed if record.failure is None]
            )
            tick.compliance_blocked += len(blocked)
            claimed = [record for record in claimed if record.id not in blocked]
            submitting = [replace(r, status="submitting") for r in claimed]
            uow.withdrawals.update_many(submitting)
            # Emitted as the attempt is claimed for the ledger (so it always precedes the
            # completion ingestion may see); a fence is no payment attempt. Once per attempt:
            # a claim a breaker then refuses goes back to ``reserved`` on the same attempt and
            # is claimed again, so the event's id is derived from (record, attempt) and an
            # attempt already announced is not announced again (the claim holds the record's
            # row, so no other worker announces it meanwhile).
            emit_all(
                uow,
                _announce_once(
                    uow,
                    withdrawal_events(
                        "withdrawal_submitted",
                        [r for r in submitting if r.failure is None],
                        at=self._clock(),
                        actor="withdrawal-worker",
                    ),
                ),
            )
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
        for index, record in enumerate(claimed):
            instrument = kinds.get(record.instrument)
            allowed = instrument.transfer_kinds if instrument is not None else ("direct",)
            try:
                if record.failure is not None:
                    error, failure = self._submit_fence(record, anchors, now)
                else:
                    error, failure = self._submit(record, allowed, now)
            except BreakerOpenError as exc:
                # Refused before the call was made: nobody sent this attempt (only a reserved
                # record is claimed, and this worker sent nothing of it), so this record and
                # the rest of the round go back to ``reserved`` on the same attempt and
                # trec_tgt, and are submitted once the breaker lets calls through.
                waiting = claimed[index:]
                tick.breaker_refused += len(waiting)
                done += [
                    replace(r, status="reserved", last_error=f"not submitted: {exc}")
                    for r in waiting
                ]
                break
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
        candidates = holding_candidates(repo.spendable_holdings(party, instrument))
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
