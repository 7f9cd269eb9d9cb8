"""How ingestion books the issuer's own mints and burns of iSTSi on the treasury.

The router (services/mint_guard.py, services/issuance_redeem.py) records every mint and burn it
decides before sending it, with the ``reason`` the ledger command carries:
``issuance:<operation id>`` and ``issuance:<operation id>:remint`` for mints,
``issuance:<operation id>:burn`` for burns. When the ledger's history shows the treasury's
holdings changed by such a command, the change is owed to someone the record names:

* a ``mint`` of a known mint record: journal ``issuance_mint`` (treasury +X, ``customer:<C>``
  credited), and the record is to be marked ``credited`` in the same transaction (the router's
  deposit ``credit`` step and the redemption's ``remint`` step wait for it);
* a ``burn`` of a known burn record: journal ``issuance_burn`` (treasury −X, ``in_flight``
  debited: the redemption request moved X from the customer to ``in_flight``).

Anything that does not fit is booked to suspense with a **critical** alert, never to a customer:
an amount other than the record's (X must equal the record's satoshis), another instrument than
iSTSi, a record the router gave up on (a mint or burn marked ``failed``: the operation may have
been compensated, so crediting would pay twice), a burn of a redemption that was refunded (the
customer already has the iSTSi back), a mint already credited or a burn already booked by another
update (a second ledger command with the same reason). Entries whose reason names no record are
left to :func:`sluice.domain.deposits.dispose_entry` (suspense, warning), as before.

Why it is safe: the booking and the ``credited`` mark commit with the batch that ingests the
update (exactly once: a replayed update is skipped by its id), each record is booked at most once
(``credited`` for mints; the burn record's ledger update id, and the batch's own memory of what it
booked, for burns), and the treasury's change is always booked in full to one account, so the
books invariant holds whatever happens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from sluice.domain.amounts import format_amount
from sluice.domain.deposits import Alert, Disposition, DispositionKind, net_holdings_change
from sluice.domain.history import HistoryEntry
from sluice.domain.journal import (
    IN_FLIGHT,
    SUSPENSE,
    AccountRef,
    customer_account_name,
    transfer_into,
    treasury_account_name,
)
from sluice.domain.ledger import InstrumentId

ISSUANCE_REASON_PREFIX = "issuance:"
ISSUANCE_ENTRY_KINDS = frozenset({"mint", "burn"})
# What the redemption's refund writes into a burn record it fences off (issuance_redeem.py).
REFUNDED_MARK = "refunded"
ISTSI_ID = "iSTSi"

RecordKind = Literal["mint", "burn"]


@dataclass(frozen=True, slots=True)
class IssuanceRecord:
    """A mint or burn the router recorded, as far as booking it needs (from MintRecord /
    BurnRecord). ``amount`` is the ledger amount (sats_to_amount of the record's satoshis)."""

    id: str
    kind: RecordKind
    reason: str
    customer_id: str
    owner: str
    amount: Decimal
    status: str  # submitted | committed | failed
    update_id: str | None = None
    credited: bool = False  # mints: ingestion booked it to the customer already

    @property
    def refunded(self) -> bool:
        return self.kind == "burn" and self.status == "failed" and self.update_id == REFUNDED_MARK


@dataclass(frozen=True, slots=True)
class IssuanceBooking:
    """What ingestion does with one mint or burn entry: the disposition to record (journal,
    alerts) and, for a mint booked to its customer, the record to mark ``credited``."""

    disposition: Disposition
    record: IssuanceRecord | None = None  # booked (not to suspense)


def is_issuance_entry(entry: HistoryEntry) -> bool:
    """A mint or burn whose reason is in the issuance namespace (the only ones worth a lookup)."""
    return (
        entry.kind in ISSUANCE_ENTRY_KINDS
        and entry.reason is not None
        and entry.reason.startswith(ISSUANCE_REASON_PREFIX)
    )


def book_issuance_entry(
    entry: HistoryEntry,
    *,
    update_id: str,
    party: str,
    records: Mapping[str, IssuanceRecord],
    booked_here: set[str],
) -> IssuanceBooking | None:
    """The booking of a mint or burn ``entry`` of the treasury ``party`` whose reason names one
    of ``records`` (by reason); None when it names none (the caller's default rule applies).

    ``booked_here`` holds the ids of records already booked by earlier entries of the same
    ingestion batch (updated here), so a second command with the same reason in one batch is
    caught like one in a later batch."""
    if not is_issuance_entry(entry) or entry.reason is None:
        return None
    record = records.get(entry.reason)
    if record is None or record.kind != entry.kind:
        return None
    change = net_holdings_change(entry)
    if not change:
        return None
    where = f"{update_id}:{entry.node_id}"
    problem = _problem(entry, change, record, update_id, party, booked_here)
    if problem is not None:
        return IssuanceBooking(
            _to_suspense(entry, change, record, where, update_id, party, problem)
        )
    ((instrument, amount),) = change.items()
    treasury = AccountRef(treasury_account_name(party), instrument)
    if record.kind == "mint":
        journal = transfer_into(
            f"ingest:{where}:{instrument.key()}",
            "issuance_mint",
            treasury=treasury,
            liability=AccountRef(customer_account_name(record.customer_id), instrument),
            amount=amount,
            update_id=update_id,
            description=f"mint {record.id}",
        )
    else:
        journal = transfer_into(
            f"ingest:{where}:{instrument.key()}",
            "issuance_burn",
            treasury=treasury,
            liability=AccountRef(IN_FLIGHT, instrument),
            amount=amount,
            update_id=update_id,
            description=f"burn {record.id}",
        )
    booked_here.add(record.id)
    kind: DispositionKind = "credited" if record.kind == "mint" else "burned"
    return IssuanceBooking(Disposition(kind, record.customer_id, (journal,)), record)


def _problem(
    entry: HistoryEntry,
    change: Mapping[InstrumentId, Decimal],
    record: IssuanceRecord,
    update_id: str,
    party: str,
    booked_here: set[str],
) -> str | None:
    """Why ``entry`` cannot be booked as ``record`` says (None: it can)."""
    if len(change) != 1:
        return f"it changed {len(change)} instruments, a {record.kind} changes one"
    ((instrument, amount),) = change.items()
    if instrument.id != ISTSI_ID:
        return f"it changed {instrument.key()}, not iSTSi"
    expected = record.amount if record.kind == "mint" else -record.amount
    if amount != expected:
        return (
            f"the treasury's holdings changed by {format_amount(amount)}, the record says "
            f"{format_amount(expected)}"
        )
    if record.owner != party:
        return f"the record's owner is {record.owner}, not the treasury {party}"
    if record.refunded:
        return "the redemption was refunded (the customer has the iSTSi back)"
    if record.status == "failed":
        return f"the router recorded the {record.kind} as failed (it may have been compensated)"
    if record.id in booked_here or record.credited:
        return f"the {record.kind} was booked already (a second command with the same reason)"
    if record.update_id is not None and record.update_id != update_id:
        return f"the {record.kind} committed as update {record.update_id}, not this one"
    return None


def _to_suspense(
    entry: HistoryEntry,
    change: Mapping[InstrumentId, Decimal],
    record: IssuanceRecord,
    where: str,
    update_id: str,
    party: str,
    problem: str,
) -> Disposition:
    journal = []
    alerts = []
    for instrument, amount in sorted(change.items()):
        journal.append(
            transfer_into(
                f"ingest:{where}:{instrument.key()}",
                f"issuance_{record.kind}_suspense",
                treasury=AccountRef(treasury_account_name(party), instrument),
                liability=AccountRef(SUSPENSE, instrument),
                amount=amount,
                update_id=update_id,
                description=f"{entry.kind} {record.id}: {problem}"[:200],
            )
        )
        alerts.append(
            Alert(
                id=f"issuance_{record.kind}_unexpected:{where}:{instrument.key()}",
                severity="critical",
                kind=f"issuance_{record.kind}_unexpected",
                message=(
                    f"{entry.kind} of {format_amount(amount)} {instrument.id} with reason "
                    f"{entry.reason!r} (record {record.id}, customer {record.customer_id}) "
                    f"cannot be booked: {problem}; held in suspense for review"
                ),
                update_id=update_id,
                details={
                    "node_id": str(entry.node_id),
                    "instrument": instrument.key(),
                    "amount": format_amount(amount),
                    "reason": entry.reason or "",
                    "record": record.id,
                    "customer_id": record.customer_id,
                    "problem": problem,
                },
            )
        )
    return Disposition("suspense", record.customer_id, tuple(journal), tuple(alerts))
