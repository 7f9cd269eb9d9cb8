"""Withdrawals and pool upkeep as records, and what ingestion does when it sees one on the ledger.

A withdrawal moves through these statuses::

    queued ──(inputs reserved, trec_tgt set)──▶ reserved ──(worker claims)──▶ submitting
      ▲                                                                            │
      │   attempt definitely failed (ingested record time ≥ trec_tgt, nothing seen)  ▼
      └──────────────────────── retry (attempt + 1) ◀──────────────────────── submitted
                                                                                   │
    ingestion sees the transfer carrying its id as reason:                          │
      direct   → completed                                                          │
      offer    → offered ──accept──▶ completed                                      │
                         ──reject / withdraw / expiry──▶ failed (customer credited back)
    retries exhausted, or the registry would make it the wrong kind → failed (credited back)

Every attempt of one record spends its *anchor*, the first of its inputs, chosen by its first
attempt and reserved by the record until it is finished; the ledger commits at most one
transaction spending a holding, so at most one attempt of a record can ever commit, however late
the node commits it. A retry is ``queued`` again with only the anchor in ``inputs`` and selects
the rest around it. A record that may have sent an attempt is credited back (or, for upkeep,
failed) only once its anchor is archived by a transaction that is not one of its attempts: a
*fence*, a self-transfer of the anchor alone that the worker submits as the record's last attempts
(``failure`` set, the record still awaiting an outcome), carrying the record's id as reason and
``fence`` as kind. Ingestion that sees a fence commit fails the record and credits it back; if it
sees one of the record's transfers instead, the record completes and the fence can never commit.

Merges and splits of the treasury's holdings are the same kind of record (``kind`` "merge" or
"split"): self-transfers through the same worker, with no customer and nothing to credit back.

The outcome of every submission is learned only from ingestion, which books it here:

* the customer was debited into ``in_flight`` when the withdrawal was requested;
* a transfer that pays the withdrawal out takes the amount off ``in_flight`` and any network fee
  the treasury paid off ``fees``;
* a failed offer puts the amount back from ``in_flight`` to the customer;
* a transfer for a withdrawal that is already completed or failed would be a double payment: it is
  booked to suspense with a critical alert (the worker is built so that this cannot happen, and
  the simulation checks that it never does);
* a transfer for a withdrawal the DB has no record of (after a DB restore) rebuilds the record
  from the metadata sluice writes on every withdrawal transfer, and debits the customer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Literal

from sluice.domain.amounts import ZERO, format_amount
from sluice.domain.deposits import Alert, Severity, net_holdings_change
from sluice.domain.history import HistoryEntry
from sluice.domain.journal import (
    COMPLIANCE_HOLD,
    FEES,
    IN_FLIGHT,
    SUSPENSE,
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
    treasury_account_name,
)
from sluice.domain.ledger import InstrumentId

# "return": a held deposit paid back to its sender, funded by the compliance-hold account.
WithdrawalKind = Literal["withdrawal", "merge", "split", "return"]
PAYOUT_KINDS: frozenset[str] = frozenset({"withdrawal", "return"})
WithdrawalStatus = Literal[
    "queued", "reserved", "submitting", "submitted", "offered", "completed", "failed"
]

# Metadata sluice writes on every transfer it submits, next to the reason (= the record's id).
KIND_KEY = "sluice.exchange/kind"
CUSTOMER_KEY = "sluice.exchange/customer"
# The kind a fence's self-transfer carries (its reason is the record it fences).
FENCE_KIND = "fence"

LIVE_STATUSES: frozenset[str] = frozenset(
    {"queued", "reserved", "submitting", "submitted", "offered"}
)
# A transfer for the current attempt may still commit until its trec_tgt has passed.
AWAITING_OUTCOME_STATUSES: frozenset[str] = frozenset({"reserved", "submitting", "submitted"})
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed"})


def withdrawal_id(customer_id: str, idempotency_key: str) -> str:
    """Derived from the request, so the same request twice names the same withdrawal."""
    digest = hashlib.sha256(f"{customer_id}\x1f{idempotency_key}".encode()).hexdigest()
    return f"wd-{digest[:32]}"


def upkeep_id(kind: str, inputs: tuple[str, ...], salt: str) -> str:
    digest = hashlib.sha256("\x1f".join((kind, salt, *sorted(inputs))).encode()).hexdigest()
    return f"{kind}-{digest[:32]}"


@dataclass(frozen=True, slots=True)
class Withdrawal:
    id: str
    kind: WithdrawalKind
    customer_id: str | None
    sender: str
    receiver: str
    instrument: InstrumentId
    amount: Decimal
    status: WithdrawalStatus
    attempt: int = 1
    attempts_max: int = 3
    idempotency_key: str | None = None
    trec_tgt: datetime | None = None
    inputs: tuple[str, ...] = ()
    requested_at: datetime | None = None
    instruction_cid: str | None = None
    offered_at: datetime | None = None
    outcome_update_id: str | None = None
    failure: str | None = None
    last_error: str | None = None
    rebuilt: bool = False

    @property
    def is_payout(self) -> bool:
        """A payment to someone else (a customer's withdrawal or a return), not pool upkeep."""
        return self.kind in PAYOUT_KINDS

    @property
    def anchor(self) -> str | None:
        """The holding every attempt spends (the first input), once the first attempt chose it."""
        return self.inputs[0] if self.inputs else None

    def may_have_left(self) -> bool:
        """Whether an attempt of this record may have reached the ledger: any earlier attempt
        (it may commit late), or the current one once a worker claimed it for submission —
        except when the worker refused to send it (``failure`` set by the registry check)."""
        if self.attempt > 1 or self.status == "submitting":
            return True
        return self.status == "submitted" and self.failure is None

    def funding_account(self) -> str:
        """The liability account the amount is owed from, and credited back to on failure."""
        if self.kind == "return":
            return COMPLIANCE_HOLD
        return customer_account_name(self.customer_id) if self.customer_id else SUSPENSE

    def credit_back(self) -> tuple[Posting, Posting]:
        """The postings that credit the amount back: out of in-flight, to the funding account."""
        return (
            Posting(AccountRef(IN_FLIGHT, self.instrument), self.amount),
            Posting(AccountRef(self.funding_account(), self.instrument), -self.amount),
        )

    def transfer_meta(self, *, fence: bool = False) -> dict[str, str]:
        meta: dict[str, str] = {KIND_KEY: FENCE_KIND if fence else self.kind}
        if self.customer_id is not None:
            meta[CUSTOMER_KEY] = self.customer_id
        return meta


@dataclass(frozen=True, slots=True)
class WithdrawalOutcome:
    """What ingestion does with one history entry that belongs to a withdrawal-like record."""

    withdrawal: Withdrawal  # its new state
    is_new: bool  # rebuilt from the chain: insert rather than update
    disposition: str
    journal: tuple[JournalTransaction, ...] = ()
    alerts: tuple[Alert, ...] = ()


def is_withdrawal_entry(entry: HistoryEntry, known: Withdrawal | None) -> bool:
    """Whether an entry is the ledger's side of a withdrawal, merge or split sluice made."""
    if entry.kind == "merge_split" and entry.reason:
        # A self-transfer's result carries tx-kind merge-split, which wins over the direction:
        # upkeep, or a fence of any record.
        return known is not None and (not known.is_payout or entry.meta.get(KIND_KEY) == FENCE_KIND)
    if entry.kind not in ("transfer_out", "self_transfer") or not entry.reason:
        return False
    if known is not None:
        return True
    return entry.meta.get(KIND_KEY) in ("withdrawal", "merge", "split")


def book_withdrawal_entry(
    entry: HistoryEntry,
    known: Withdrawal | None,
    *,
    update_id: str,
    record_time: datetime,
    party: str,
) -> WithdrawalOutcome:
    """Book an entry whose reason names a withdrawal-like record (``known``, or None when the DB
    has no record of it and it must be rebuilt from the entry's metadata)."""
    assert entry.reason is not None
    change = net_holdings_change(entry)
    where = f"{update_id}:{entry.node_id}"
    journal: list[JournalTransaction] = []
    alerts: list[Alert] = []

    def alert(kind: str, severity: Severity, message: str) -> None:
        alerts.append(
            Alert(
                id=f"{kind}:{where}",
                severity=severity,
                kind=kind,
                message=message,
                update_id=update_id,
                details={
                    "withdrawal": entry.reason or "",
                    "node_id": str(entry.node_id),
                    "status": entry.status or "",
                    "amount": format_amount(entry.amount) if entry.amount is not None else "",
                },
            )
        )

    def post(kind: str, postings: list[Posting], description: str) -> None:
        kept = tuple(p for p in postings if p.amount != 0)
        if kept:
            journal.append(
                JournalTransaction(
                    id=f"ingest:{where}:{kind}",
                    kind=kind,
                    postings=kept,
                    update_id=update_id,
                    description=description,
                )
            )

    def treasury(instrument: InstrumentId) -> AccountRef:
        return AccountRef(treasury_account_name(party), instrument)

    is_new = False
    record = known
    if record is None:
        record = _rebuild(entry, party, record_time)
        is_new = True
        alert(
            "withdrawal_rebuilt",
            "warning",
            f"{record.kind} {record.id} was found on the ledger with no record in the DB (was "
            f"the DB restored?); rebuilt from the chain"
            + (f" and customer {record.customer_id} debited" if record.customer_id else ""),
        )

    instrument = record.instrument
    # Who the amount is owed by: in flight, or for a rebuilt record the customer (suspense when
    # the metadata names none).
    owed = AccountRef(IN_FLIGHT, instrument)
    if is_new and record.is_payout:
        owed = AccountRef(record.funding_account(), instrument)
    # A merge_split entry's amount is the treasury's net change (the fee), not the transfer's.
    amount_matches = (
        entry.kind == "merge_split" or entry.amount is None or entry.amount == record.amount
    )
    other_instruments = {i: c for i, c in change.items() if i != instrument}
    for other, delta in sorted(other_instruments.items()):
        post(
            "unexplained",
            [Posting(treasury(other), delta), Posting(AccountRef(SUSPENSE, other), -delta)],
            f"{record.id}: holdings of another instrument moved",
        )
        alert(
            "holdings_change_unexplained",
            "warning",
            f"{record.kind} {record.id} moved {format_amount(delta)} of {other.key()}",
        )
    delta = change.get(instrument, ZERO)
    status = entry.status
    is_customer_payout = record.is_payout

    if not is_new and entry.meta.get(KIND_KEY) == FENCE_KIND:
        # A fence spent the anchor: no attempt of the record can commit any more.
        post(
            "network_fee",
            [Posting(treasury(instrument), delta), Posting(AccountRef(FEES, instrument), -delta)],
            f"fence of {record.kind} {record.id}",
        )
        if status != "completed" or record.status not in AWAITING_OUTCOME_STATUSES:
            # Cannot happen: a fence shares the anchor with every attempt of its record.
            alert(
                "withdrawal_fence_unexpected",
                "critical",
                f"a fence ({status}) of {record.kind} {record.id} committed while it was "
                f"{record.status}; the record is left as it was",
            )
            return WithdrawalOutcome(record, False, "review", tuple(journal), tuple(alerts))
        if is_customer_payout:
            post(
                "withdrawal_refunded",
                list(record.credit_back()),
                f"{record.kind} {record.id} fenced: credited back",
            )
        updated = replace(
            record,
            status="failed",
            failure=record.failure or "fenced",
            outcome_update_id=update_id,
        )
        return WithdrawalOutcome(updated, False, "withdrawal", tuple(journal), tuple(alerts))

    # A transfer for a record that is already finished: never booked as a payment.
    if not is_new and record.status in TERMINAL_STATUSES and status in ("completed", "pending"):
        post(
            "withdrawal_duplicate",
            [
                Posting(treasury(instrument), delta),
                Posting(AccountRef(SUSPENSE, instrument), -delta),
            ],
            f"second transfer for {record.id}",
        )
        alert(
            "withdrawal_paid_twice",
            "critical",
            f"a transfer for {record.kind} {record.id} committed after it was already "
            f"{record.status}; {format_amount(-delta)} {instrument.id} booked to suspense",
        )
        return WithdrawalOutcome(record, False, "review", tuple(journal), tuple(alerts))

    if not amount_matches:
        alert(
            "withdrawal_amount_mismatch",
            "critical",
            f"a transfer for {record.id} moved {entry.amount}, the record says {record.amount}",
        )

    if status == "completed":
        if is_customer_payout:
            paid = record.amount if amount_matches and entry.amount is not None else -delta
            post(
                "withdrawal_paid",
                [
                    Posting(treasury(instrument), delta),
                    Posting(owed, paid),
                    Posting(AccountRef(FEES, instrument), -delta - paid),
                ],
                f"withdrawal {record.id} paid out",
            )
        else:
            post(
                "network_fee",
                [
                    Posting(treasury(instrument), delta),
                    Posting(AccountRef(FEES, instrument), -delta),
                ],
                f"{record.kind} {record.id}",
            )
        # A late attempt may land while the record is being fenced: it is paid, not failed.
        updated = replace(record, status="completed", outcome_update_id=update_id, failure=None)
        return WithdrawalOutcome(updated, is_new, "withdrawal", tuple(journal), tuple(alerts))

    if status == "pending":
        # An offer: the funds stay in a treasury holding locked to the admin.
        postings = [
            Posting(treasury(instrument), delta),
            Posting(AccountRef(FEES, instrument), -delta),
        ]
        if is_new and is_customer_payout:
            postings += [
                Posting(owed, record.amount),
                Posting(AccountRef(IN_FLIGHT, instrument), -record.amount),
            ]
        post("withdrawal_offered", postings, f"withdrawal {record.id} offered")
        updated = replace(
            record,
            status="offered",
            instruction_cid=entry.correlation_id or entry.instruction_cid,
            offered_at=record_time,
            failure=None,
        )
        return WithdrawalOutcome(updated, is_new, "withdrawal", tuple(journal), tuple(alerts))

    if status in ("rejected", "withdrawn", "failed"):
        postings = [
            Posting(treasury(instrument), delta),
            Posting(AccountRef(FEES, instrument), -delta),
        ]
        if record.status == "offered" and is_customer_payout:
            postings += record.credit_back()
        post("withdrawal_refunded", postings, f"withdrawal {record.id} offer {status}")
        updated = replace(
            record,
            status="failed",
            failure=f"offer {status}",
            outcome_update_id=update_id,
        )
        return WithdrawalOutcome(updated, is_new, "withdrawal", tuple(journal), tuple(alerts))

    # Anything else naming the record (an unexpected status): booked for review.
    post(
        "unexplained",
        [Posting(treasury(instrument), delta), Posting(AccountRef(SUSPENSE, instrument), -delta)],
        f"{record.id}: {entry.kind} {status}",
    )
    if delta:
        alert(
            "holdings_change_unexplained",
            "warning",
            f"{entry.kind} ({status}) for {record.id} moved {format_amount(delta)}; in suspense",
        )
    return WithdrawalOutcome(record, False, "review", tuple(journal), tuple(alerts))


def _rebuild(entry: HistoryEntry, party: str, record_time: datetime) -> Withdrawal:
    kind_text = entry.meta.get(KIND_KEY, "withdrawal")
    kinds: dict[str, WithdrawalKind] = {"merge": "merge", "split": "split", "return": "return"}
    kind = kinds.get(kind_text, "withdrawal")
    assert entry.instrument is not None
    assert entry.amount is not None
    assert entry.reason
    return Withdrawal(
        id=entry.reason,
        kind=kind,
        customer_id=entry.meta.get(CUSTOMER_KEY) if kind in PAYOUT_KINDS else None,
        sender=party,
        receiver=entry.receiver or party,
        instrument=entry.instrument,
        amount=entry.amount,
        status="submitted",
        requested_at=record_time,
        rebuilt=True,
    )
