"""What the exchange does with each history entry it ingests: the 1-step deposit rules.

An entry changes the treasury's holdings by some amount per instrument; that change is always
booked, in full, to exactly one liability account, so nothing is ever lost:

* a completed incoming transfer whose reason is a known deposit account, of an onboarded
  instrument, is credited to that customer — if the KYC registry admits it; one it refuses (a
  frozen or listed sender or customer, a limit, a risk flag) is booked to the compliance-hold
  account instead, pending a compliance officer's review;
* a deposit from a listed or flagged sender is held the same way whatever its reason says;
* one with an unknown or missing reason, or of an instrument that is not onboarded, goes to
  suspense and raises an alert (an operator assigns it later);
* the network fees the treasury pays on its own housekeeping (self-transfers, merges, unlocks)
  go to the fee account;
* anything else that moves the treasury's holdings (an outgoing transfer no withdrawal explains,
  a mint, an unrecognised event) goes to suspense with an alert, for review (the issuer's own
  mints and burns of iSTSi are booked by :mod:`sluice.domain.issuance_books` instead).

Incoming offers change nothing yet: they are recorded as pending and credited only when accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import field
from decimal import Decimal
from typing import Literal

from sluice.domain.amounts import ZERO, format_amount
from sluice.domain.history import HistoryEntry
from sluice.domain.journal import (
    COMPLIANCE_HOLD,
    FEES,
    SUSPENSE,
    AccountRef,
    JournalTransaction,
    customer_account_name,
    transfer_into,
    treasury_account_name,
)
from sluice.domain.ledger import InstrumentId
from sluice.domain.values import value_class

DispositionKind = Literal[
    "credited", "suspense", "fee", "pending", "none", "review", "held", "burned"
]
Severity = Literal["critical", "warning", "info"]

FEE_KINDS = frozenset({"self_transfer", "merge_split", "unlock", "expire_dust"})


@value_class
class Alert:
    id: str
    severity: Severity
    kind: str
    message: str
    update_id: str | None = None
    details: Mapping[str, str] = field(default_factory=dict)


@value_class
class Disposition:
    kind: DispositionKind
    customer_id: str | None = None
    journal: tuple[JournalTransaction, ...] = ()
    alerts: tuple[Alert, ...] = ()


def net_holdings_change(entry: HistoryEntry) -> dict[InstrumentId, Decimal]:
    """Per instrument: the party's holdings created minus those archived in the entry."""
    created = entry.holdings_created
    if len(created) == 1 and not entry.holdings_archived:
        # Most entries (a deposit) create one holding: the same, without the sums.
        holding = created[0]
        amount = ZERO + holding.amount
        return {holding.instrument: amount} if amount != 0 else {}
    change: dict[InstrumentId, Decimal] = {}
    for holding in entry.holdings_created:
        change[holding.instrument] = change.get(holding.instrument, ZERO) + holding.amount
    for holding in entry.holdings_archived:
        change[holding.instrument] = change.get(holding.instrument, ZERO) - holding.amount
    return {instrument: amount for instrument, amount in change.items() if amount != 0}


# Asked before a deposit is credited (customer set) or sent to suspense (customer None): None to
# go ahead, else why it must be held. Asking for a credit records the usage when it admits it.
Admission = Callable[[HistoryEntry, InstrumentId, Decimal, str | None], str | None]


def dispose_entry(
    entry: HistoryEntry,
    *,
    update_id: str,
    party: str,
    customer_for_reason: Mapping[str, str],
    is_onboarded: Callable[[InstrumentId], bool],
    admit: Admission | None = None,
) -> Disposition:
    change = net_holdings_change(entry)
    if not change:
        return Disposition("pending" if entry.status == "pending" else "none")

    where = f"{update_id}:{entry.node_id}"
    journal: list[JournalTransaction] = []
    alerts: list[Alert] = []
    outcome: DispositionKind = "review"
    customer_id: str | None = None

    def book(instrument: InstrumentId, amount: Decimal, liability: str, kind: str) -> None:
        journal.append(
            transfer_into(
                f"ingest:{where}:{instrument.key()}",
                kind,
                treasury=AccountRef(treasury_account_name(party), instrument),
                liability=AccountRef(liability, instrument),
                amount=amount,
                update_id=update_id,
                description=f"{entry.kind} {entry.status or ''}".strip(),
            )
        )

    def alert(kind: str, severity: Severity, message: str, instrument: InstrumentId) -> None:
        alerts.append(
            Alert(
                id=f"{kind}:{where}:{instrument.key()}",
                severity=severity,
                kind=kind,
                message=message,
                update_id=update_id,
                details={
                    "node_id": str(entry.node_id),
                    "instrument": instrument.key(),
                    "amount": format_amount(change[instrument]),
                    "reason": entry.reason or "",
                    "sender": entry.sender or "",
                },
            )
        )

    for instrument, amount in sorted(change.items()):
        if entry.kind == "transfer_in":
            customer = customer_for_reason.get(entry.reason) if entry.reason else None
            onboarded = is_onboarded(instrument)
            crediting = customer if customer is not None and amount > 0 and onboarded else None
            held = admit(entry, instrument, amount, crediting) if admit and amount > 0 else None
            if held is not None:
                book(instrument, amount, COMPLIANCE_HOLD, "deposit_held")
                alert(
                    "deposit_held",
                    "warning",
                    f"deposit of {_shown(amount, instrument)} from {entry.sender} for "
                    f"{'customer ' + customer if customer else 'no known customer'} held for "
                    f"compliance review: {held}",
                    instrument,
                )
                outcome, customer_id = "held", customer
            elif not onboarded:
                book(instrument, amount, SUSPENSE, "deposit_suspense")
                alert(
                    "instrument_not_onboarded",
                    "warning",
                    f"deposit of {_shown(amount, instrument)} ({instrument.admin}) in an "
                    "instrument that is not onboarded; held in suspense",
                    instrument,
                )
                outcome = "suspense"
            elif customer is not None and amount > 0:
                book(instrument, amount, customer_account_name(customer), "deposit")
                outcome, customer_id = "credited", customer
            else:
                book(instrument, amount, SUSPENSE, "deposit_suspense")
                problem = (
                    "no reason"
                    if not entry.reason
                    else f"unknown deposit account {entry.reason!r}"
                    if customer is None
                    else "a negative amount"
                )
                alert(
                    "deposit_unattributed",
                    "warning",
                    f"deposit of {_shown(amount, instrument)} from {entry.sender} with "
                    f"{problem}; held in suspense",
                    instrument,
                )
                outcome = "suspense"
        elif entry.kind in FEE_KINDS and amount < 0:
            book(instrument, amount, FEES, "network_fee")
            outcome = "fee"
        else:
            book(instrument, amount, SUSPENSE, "unexplained")
            alert(
                "holdings_change_unexplained",
                "warning",
                f"{entry.kind} ({entry.status or 'no status'}) changed the treasury's holdings by "
                f"{_shown(amount, instrument)} and nothing explains it; booked to suspense for "
                "review",
                instrument,
            )
            outcome = "review"
    return Disposition(outcome, customer_id, tuple(journal), tuple(alerts))


def _shown(amount: Decimal, instrument: InstrumentId) -> str:
    """An amount as an alert message shows it (only alerts need it, so it is made for them)."""
    return f"{format_amount(amount)} {instrument.id}"
