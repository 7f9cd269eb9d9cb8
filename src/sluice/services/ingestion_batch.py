"""One batch of ledger updates decided: parsed in order, replays and quarantined updates skipped,
deposits passed through the KYC registry, and everything the batch writes collected into one
:class:`IngestBatch` (see :mod:`sluice.services.ingestion` for what ingestion guarantees)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sluice.domain.amounts import format_amount
from sluice.domain.audit import AuditEntry
from sluice.domain.compliance import (
    ComplianceDecision,
    ComplianceRequest,
    HeldDeposit,
    ReviewItem,
)
from sluice.domain.deposits import dispose_entry
from sluice.domain.events import Event
from sluice.domain.history import (
    HistoryEntry,
    ParsedTransaction,
    item_offset,
    parse_transaction,
    parse_update,
    unwrap_update,
)
from sluice.domain.journal import JournalTransaction
from sluice.domain.ledger import Checkpoint, Cursor, Holding, InstrumentId, TransferInstruction
from sluice.domain.withdrawals import Withdrawal, book_withdrawal_entry, is_withdrawal_entry
from sluice.ports import EntryRecord, IngestBatch, IngestedUpdate, IngestionRepository
from sluice.services.compliance import ComplianceSession, KycRegistry, deposit_event
from sluice.services.issuance_ingestion import IssuanceBatchBooks
from sluice.services.withdrawal_attempts import withdrawal_event

CLOSED_STATUS_BY_ENTRY = {
    "completed": "completed",
    "rejected": "rejected",
    "withdrawn": "withdrawn",
    "failed": "failed",
    # An update that passes an instruction on replaces it with a new one.
    "pending": "superseded",
}


@dataclass(slots=True)
class IngestionProgress:
    transactions: int = 0
    checkpoints: int = 0
    skipped: int = 0
    quarantined: int = 0
    batches: int = 0
    read_retries: int = 0
    cursor: Cursor | None = None
    reached_end: bool = False


@dataclass(frozen=True, slots=True)
class _Skip:
    """An update not applied: already ingested (no key) or quarantined by an operator."""

    offset: int | None
    quarantine_key: str | None


_Step = ParsedTransaction | Checkpoint | _Skip


@dataclass(slots=True)
class _BatchState:
    """What the batch being built has seen so far, so later updates in it can refer back."""

    batch: IngestBatch
    cursor: Cursor | None
    holdings: dict[str, Holding] = field(default_factory=dict)
    instructions: dict[str, TransferInstruction] = field(default_factory=dict)
    customers: Mapping[str, str] = field(default_factory=dict)
    withdrawals: dict[str, Withdrawal] = field(default_factory=dict)
    seen_ids: set[str] = field(default_factory=set)
    # The KYC registry's view of the customers and senders of the batch's deposits.
    compliance: ComplianceSession | None = None
    audit: list[AuditEntry] = field(default_factory=list)
    # Deposit entries (update id, node id) with an amount admitted without a decision of the
    # registry (no customer to decide for): their credit or hold gets a record of its own.
    undecided: set[tuple[str, int]] = field(default_factory=set)
    failed_payouts: list[tuple[Withdrawal, datetime]] = field(default_factory=list)
    issuance: IssuanceBatchBooks = field(default_factory=IssuanceBatchBooks)
    # The batch's events, inserted in one statement with its writes.
    events: list[Event] = field(default_factory=list)
    # Why the registry held a deposit: (update id, node id, instrument key) → reason.
    held_why: dict[tuple[str, int, str], str] = field(default_factory=dict)


class BatchDecisions:
    """The part of :class:`~sluice.services.ingestion.Ingestion` that turns a batch's updates
    into its writes; the loop around it reads, commits and moves the cursor."""

    party: str
    connection: str
    _registry: KycRegistry
    _onboarded: set[InstrumentId] | None

    def _parse(
        self,
        kind: str,
        body: Mapping[str, Any],
        state: _BatchState,
        known: set[str],
        quarantined: set[str],
    ) -> _Step | None:
        if kind == "malformed":
            unwrap_update(body)  # raises the precise error
            return None
        if kind == "checkpoint":
            wrapped = {"update": {"OffsetCheckpoint": {"value": body}}}
            return parse_update(wrapped, self.party, state.holdings.get, state.instructions.get)
        if kind != "transaction":
            return None
        update_id = body.get("updateId")
        if isinstance(update_id, str):
            if update_id in quarantined:
                return _Skip(item_offset(body), update_id)
            if update_id in known or update_id in state.seen_ids:
                return _Skip(item_offset(body), None)
        tx = parse_transaction(body, self.party, state.holdings.get, state.instructions.get)
        state.seen_ids.add(tx.update_id)
        for entry in tx.entries:
            for holding in entry.holdings_created:
                state.holdings[holding.contract_id] = holding
            for holding in entry.holdings_archived:
                state.holdings.pop(holding.contract_id, None)
        for instruction in tx.instructions_created:
            state.instructions[instruction.contract_id] = instruction
        return tx

    def _apply(self, step: _Step, state: _BatchState, progress: IngestionProgress) -> None:
        if isinstance(step, _Skip):
            if step.quarantine_key is not None:
                progress.quarantined += 1
                state.batch.quarantine_skipped.append(step.quarantine_key)
            else:
                progress.skipped += 1
            if step.offset is not None:
                state.cursor = _advance(state.cursor, step.offset, None, None, None)
        elif isinstance(step, Checkpoint):
            progress.checkpoints += 1
            state.cursor = _advance(state.cursor, step.offset, None, step.record_time, None)
        else:
            self._apply_transaction(step, state)
            progress.transactions += 1

    def _apply_transaction(self, tx: ParsedTransaction, state: _BatchState) -> None:
        batch = state.batch
        batch.updates.append(IngestedUpdate(tx.update_id, tx.offset, tx.record_time, "ingested"))
        is_onboarded = (self._onboarded or set()).__contains__
        admit = self._admission(tx, state)  # one for all the update's entries
        closing: dict[str, str] = {}
        for entry in tx.entries:
            for holding in entry.holdings_created:
                batch.holdings_created.append((holding, tx.update_id, tx.offset))
            for holding in entry.holdings_archived:
                batch.holdings_archived.append((holding.contract_id, tx.update_id, tx.offset))
            if entry.instruction_cid and entry.status in CLOSED_STATUS_BY_ENTRY:
                closing[entry.instruction_cid] = CLOSED_STATUS_BY_ENTRY[entry.status]
            known = state.withdrawals.get(entry.reason) if entry.reason else None
            if is_withdrawal_entry(entry, known):
                self._apply_withdrawal_entry(entry, known, tx, state)
                continue
            disposition = dispose_entry(
                entry,
                update_id=tx.update_id,
                party=self.party,
                customer_for_reason=state.customers,
                is_onboarded=is_onboarded,
                admit=admit,
            )
            if entry.kind == "mint" or entry.kind == "burn":
                disposition = state.issuance.dispose(entry, tx.update_id, disposition)
            if disposition.kind in ("credited", "held") and (
                (tx.update_id, entry.node_id) in state.undecided
            ):
                # Decided amounts were audited with their decision (see _admission).
                self._audit_deposit(tx, entry, disposition.kind, disposition.customer_id, state)
            batch.journal.extend(disposition.journal)
            batch.alerts.extend(disposition.alerts)
            batch.entries.append(
                _entry_record(tx, entry, disposition.kind, disposition.customer_id)
            )
            if entry.kind == "transfer_in" and disposition.kind in _DEPOSIT_OUTCOMES:
                self._deposit_events(tx, entry, disposition.journal, state)
        for instruction in tx.instructions_created:
            transfer = instruction.transfer
            direction = "in" if transfer.receiver == self.party != transfer.sender else "out"
            batch.instructions_created.append((instruction, direction, tx.update_id))
        for cid in tx.instructions_archived:
            batch.instructions_closed.append((cid, closing.get(cid, "archived"), tx.update_id))
        state.cursor = _advance(
            state.cursor, tx.offset, tx.update_id, tx.record_time, tx.synchronizer_id
        )

    def _admission(
        self, tx: ParsedTransaction, state: _BatchState
    ) -> Callable[[HistoryEntry, InstrumentId, Decimal, str | None], str | None]:
        """The KYC registry's answer for one deposit of ``tx`` (see ``dispose_entry``); a refused
        deposit is recorded as held, with a review item for the compliance officer.

        A deposit for a customer is decided, and what comes of the decision is certain from it:
        allowed, ``dispose_entry`` credits the customer; refused, it books the amount to the
        compliance hold. So one audit record says both — the decision (the customer's KYC
        state, every check with its reason, the usage it adds) named ``deposit_credited`` or
        ``deposit_held``, with the credit's target among its state changes."""

        def admit(
            entry: HistoryEntry, instrument: InstrumentId, amount: Decimal, customer: str | None
        ) -> str | None:
            session = state.compliance
            assert session is not None, "a batch with deposits has a compliance session"
            instrument_key = instrument.key()
            operation_id = f"deposit:{tx.update_id}:{entry.node_id}:{instrument_key}"
            why: str | None
            if customer is None:
                state.undecided.add((tx.update_id, entry.node_id))
                why = session.listed(entry.sender) if entry.sender else None
                if why is not None:
                    why = f"sender {entry.sender} is {why}"
            else:
                decision = session.decide(
                    ComplianceRequest(
                        customer,
                        "deposit",
                        self._registry.settings.value(instrument, amount),
                        entry.sender,
                    ),
                    operation_id=operation_id,
                    at=tx.record_time,
                    actor=f"ingestion:{self.connection}",
                    record=True,
                    parameters={
                        "instrument": instrument_key,
                        "instrument_amount": format_amount(amount),
                        "update_id": tx.update_id,
                        "deposit_account": entry.reason,
                    },
                    audited_as=_deposit_outcome(customer),
                )
                why = None if decision.allowed else decision.summary()
            if why is not None:
                state.held_why[(tx.update_id, entry.node_id, instrument_key)] = why
                hold_id = f"hold:{tx.update_id}:{entry.node_id}:{instrument_key}"
                session.hold(
                    HeldDeposit(
                        id=hold_id,
                        sender=entry.sender or "",
                        instrument_admin=instrument.admin,
                        instrument_id=instrument.id,
                        amount=amount,
                        update_id=tx.update_id,
                        why=why,
                        held_at=tx.record_time,
                        customer_id=customer,
                        deposit_account=entry.reason,
                    )
                )
                session.open_review(
                    ReviewItem(
                        id=f"review:{hold_id}",
                        kind="deposit_held",
                        reason=why,
                        opened_at=tx.record_time,
                        customer_id=customer,
                        subject=hold_id,
                    )
                )
            return why

        return admit

    def _deposit_events(
        self,
        tx: ParsedTransaction,
        entry: HistoryEntry,
        journal: Iterable[JournalTransaction],
        state: _BatchState,
    ) -> None:
        """``deposit_credited`` / ``deposit_held``, one per instrument the deposit booked."""
        deposit_id = f"{tx.update_id}:{entry.node_id}"
        for txn in journal:
            outcome = _DEPOSIT_BOOKINGS.get(txn.kind)
            if outcome is None:
                continue
            type, status, held_in = outcome
            treasury, liability = txn.postings
            instrument = treasury.account.instrument
            customer = liability.account.customer_id
            why: str | None = None  # a credit has no reason (admit refused nothing)
            if held_in is not None:
                customer = state.customers.get(entry.reason) if entry.reason else None
                if held_in == "suspense":
                    why = _suspense_reason(entry, instrument, customer, self._onboarded)
                else:
                    why = state.held_why.get((tx.update_id, entry.node_id, instrument.key()))
            state.events.append(
                deposit_event(
                    type,
                    deposit_id,
                    at=tx.record_time,
                    instrument=instrument,
                    amount=treasury.amount,
                    status=status,
                    customer_id=customer,
                    sender=entry.sender,
                    deposit_account=entry.reason,
                    held_in=held_in,
                    reason=why,
                    update_id=tx.update_id,
                    offset=tx.offset,
                    hold_id=(
                        f"hold:{tx.update_id}:{entry.node_id}:{instrument.key()}"
                        if held_in == "compliance_hold"
                        else None
                    ),
                )
            )

    def _audit_deposit(
        self,
        tx: ParsedTransaction,
        entry: HistoryEntry,
        outcome: str,
        customer_id: str | None,
        state: _BatchState,
    ) -> None:
        target = "compliance_hold" if outcome == "held" else f"customer:{customer_id}"
        record = AuditEntry(
            operation_id=f"deposit:{tx.update_id}:{entry.node_id}",
            operation=f"deposit_{outcome}",
            actor=f"ingestion:{self.connection}",
            recorded_at=tx.record_time,
            customer_id=customer_id,
            parameters={
                "update_id": tx.update_id,
                "sender": entry.sender,
                "deposit_account": entry.reason,
                "instrument": entry.instrument.key() if entry.instrument else None,
                "amount": format_amount(entry.amount) if entry.amount is not None else None,
            },
            state_changes=[{"credited": target}],
        )
        if state.compliance is not None:
            state.compliance.audit(record)
        else:
            state.audit.append(record)

    def _apply_withdrawal_entry(
        self,
        entry: HistoryEntry,
        known: Withdrawal | None,
        tx: ParsedTransaction,
        state: _BatchState,
    ) -> None:
        batch = state.batch
        outcome = book_withdrawal_entry(
            entry, known, update_id=tx.update_id, record_time=tx.record_time, party=self.party
        )
        record = outcome.withdrawal
        state.withdrawals[record.id] = record
        if outcome.is_new or record.id in batch.withdrawals_new:
            batch.withdrawals_new[record.id] = record
        else:
            batch.withdrawals_changed[record.id] = record
        batch.journal.extend(outcome.journal)
        batch.alerts.extend(outcome.alerts)
        batch.entries.append(_entry_record(tx, entry, outcome.disposition, record.customer_id))
        if (
            record.is_payout
            and record.status == "failed"
            and (known is None or known.status != "failed")
        ):
            state.failed_payouts.append((record, tx.record_time))
        if record.status == "completed" and (known is None or known.status != "completed"):
            event = withdrawal_event(
                "withdrawal_completed",
                record,
                at=tx.record_time,
                update_id=tx.update_id,
                offset=tx.offset,
            )
            if event is not None:
                state.events.append(event)
        if known is None or known.status != record.status:
            state.audit.append(
                AuditEntry(
                    operation_id=record.id,
                    operation=f"{record.kind}_{record.status}",
                    actor=f"ingestion:{self.connection}",
                    recorded_at=tx.record_time,
                    customer_id=record.customer_id,
                    parameters={"update_id": tx.update_id, "entry": entry.kind},
                    state_changes=[
                        {
                            "status": record.status,
                            "was": known.status if known is not None else None,
                            "failure": record.failure,
                        }
                    ],
                )
            )


# A deposit's booking (journal kind) → its event's type, status and where it is held.
_DEPOSIT_BOOKINGS: dict[str, tuple[str, str, str | None]] = {
    "deposit": ("deposit_credited", "credited", None),
    "deposit_held": ("deposit_held", "held", "compliance_hold"),
    "deposit_suspense": ("deposit_held", "held", "suspense"),
}
_DEPOSIT_OUTCOMES = frozenset({"credited", "held", "suspense"})


def _suspense_reason(
    entry: HistoryEntry,
    instrument: InstrumentId,
    customer: str | None,
    onboarded: set[InstrumentId] | None,
) -> str:
    """Why a deposit went to suspense (what the alert raised for it says at length)."""
    if instrument not in (onboarded or set()):
        return "instrument not onboarded"
    if not entry.reason:
        return "no deposit account"
    if customer is None:
        return "unknown deposit account"
    return "negative amount"


def _deposit_outcome(
    customer: str,
) -> Callable[[ComplianceDecision], tuple[str, dict[str, object]]]:
    """How a deposit decision for ``customer`` is audited: named for what ingestion does with
    the deposit, with the credit's target as ``_audit_deposit`` records it."""

    def outcome(decision: ComplianceDecision) -> tuple[str, dict[str, object]]:
        if decision.allowed:
            return "deposit_credited", {"credited": f"customer:{customer}"}
        return "deposit_held", {"credited": "compliance_hold"}

    return outcome


class _CustomerLookup(Mapping[str, str]):
    """Deposit account → customer: prefetched for the batch, asked for one by one otherwise
    (a reason can also come from an instruction recorded in an earlier batch)."""

    def __init__(
        self, repo: IngestionRepository, known: dict[str, str], asked: Iterable[str] = ()
    ) -> None:
        """``known``: what the repository answered for the reasons ``asked``; those it found
        no customer for need not be asked again."""
        self._repo = repo
        self._known: dict[str, str | None] = dict(known)
        for reason in asked:
            self._known.setdefault(reason, None)

    def _customer(self, reason: str) -> str | None:
        if reason not in self._known:
            self._known[reason] = self._repo.customers_for_reasons([reason]).get(reason)
        return self._known[reason]

    def __getitem__(self, reason: str) -> str:
        customer = self._customer(reason)
        if customer is None:
            raise KeyError(reason)
        return customer

    def get(self, reason: str, default: Any = None) -> Any:
        # Mapping.get goes through __getitem__ and a KeyError for every unknown reason.
        customer = self._customer(reason)
        return default if customer is None else customer

    def __iter__(self) -> Iterator[str]:
        return (reason for reason, customer in self._known.items() if customer is not None)

    def __len__(self) -> int:
        return sum(1 for customer in self._known.values() if customer is not None)


def _entry_record(
    tx: ParsedTransaction, entry: HistoryEntry, disposition: str, customer_id: str | None
) -> EntryRecord:
    return EntryRecord(
        update_id=tx.update_id,
        offset=tx.offset,
        record_time=tx.record_time,
        entry=entry,
        disposition=disposition,
        customer_id=customer_id,
    )


def _advance(
    cursor: Cursor | None,
    offset: int,
    update_id: str | None,
    record_time: datetime | None,
    synchronizer_id: str | None,
) -> Cursor:
    if cursor is None:
        return Cursor(offset, update_id, record_time, synchronizer_id)
    latest = cursor.record_time
    if record_time is not None and (latest is None or record_time > latest):
        latest = record_time
    return Cursor(
        offset=offset,
        update_id=update_id if update_id is not None else cursor.update_id,
        record_time=latest,
        synchronizer_id=synchronizer_id or cursor.synchronizer_id,
    )


def _collect_consumed(body: Mapping[str, Any], into: set[str]) -> None:
    # Runs over every event of a batch: the exact-type tests come first (a decoded update holds
    # plain dicts, lists and strs), and most events are created ones (no ExercisedEvent).
    events = body.get("events")
    if not (type(events) is list or isinstance(events, list)):
        return
    add = into.add
    for event in events:
        if type(event) is dict or isinstance(event, dict):
            exercised = event.get("ExercisedEvent")
            if exercised is None or not (type(exercised) is dict or isinstance(exercised, dict)):
                continue
            if exercised.get("consuming"):
                cid = exercised.get("contractId")
                if type(cid) is str or isinstance(cid, str):
                    add(cid)
