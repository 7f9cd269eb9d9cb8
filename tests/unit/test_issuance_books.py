"""The booking rule of the issuer's mints and burns (domain/issuance_books.py), entry by entry:
what is booked to the customer or against in-flight, and every case that must go to suspense."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from sluice.domain.history import HistoryEntry
from sluice.domain.issuance_books import IssuanceRecord, book_issuance_entry
from sluice.domain.journal import IN_FLIGHT, SUSPENSE
from sluice.domain.ledger import Holding, InstrumentId

TREASURY = "treasury::1220aa"
ISTSI = InstrumentId("issuer::1220bb", "iSTSi")
OTHER = InstrumentId("issuer::1220bb", "Other")
X = Decimal("0.00100000")


def holding(cid: str, amount: Decimal, instrument: InstrumentId = ISTSI) -> Holding:
    return Holding(contract_id=cid, owner=TREASURY, instrument=instrument, amount=amount)


def entry(
    kind: str, reason: str, *created: Holding, archived: tuple[Holding, ...] = ()
) -> HistoryEntry:
    return HistoryEntry(
        node_id=3,
        kind=kind,  # type: ignore[arg-type]
        status="completed",
        sender=None,
        receiver=TREASURY,
        instrument=ISTSI,
        amount=X,
        reason=reason,
        correlation_id=None,
        holdings_created=created,
        holdings_archived=archived,
    )


MINT = IssuanceRecord(
    id="issuance:op:mint",
    kind="mint",
    reason="issuance:op",
    customer_id="alice",
    owner=TREASURY,
    amount=X,
    status="committed",
    update_id="u1",
)
BURN = IssuanceRecord(
    id="issuance:r:burn",
    kind="burn",
    reason="issuance:r:burn",
    customer_id="alice",
    owner=TREASURY,
    amount=X,
    status="submitted",
)


def book(e: HistoryEntry, record: IssuanceRecord, booked: set[str] | None = None) -> Any:
    return book_issuance_entry(
        e,
        update_id="u1",
        party=TREASURY,
        records={record.reason: record},
        booked_here=booked if booked is not None else set(),
    )


def test_a_mint_is_credited_to_its_customer() -> None:
    booked: set[str] = set()
    result = book(entry("mint", MINT.reason, holding("h1", X)), MINT, booked)
    assert result.record == MINT and booked == {MINT.id}
    assert (result.disposition.kind, result.disposition.customer_id) == ("credited", "alice")
    (txn,) = result.disposition.journal
    assert txn.kind == "issuance_mint"
    assert {(p.account.name, p.amount) for p in txn.postings} == {
        (f"treasury:{TREASURY}", X),
        ("customer:alice", -X),
    }
    assert result.disposition.alerts == ()


def test_a_burn_debits_in_flight_with_its_change_counted() -> None:
    # The treasury's holding of 2X is archived and X comes back as change.
    e = entry("burn", BURN.reason, holding("c", X), archived=(holding("h", 2 * X),))
    result = book(e, BURN)
    (txn,) = result.disposition.journal
    assert (txn.kind, result.disposition.kind) == ("issuance_burn", "burned")
    assert {(p.account.name, p.amount) for p in txn.postings} == {
        (f"treasury:{TREASURY}", -X),
        (IN_FLIGHT, X),
    }


def test_unknown_reasons_and_other_kinds_are_left_to_the_default_rule() -> None:
    assert book(entry("mint", "issuance:other", holding("h", X)), MINT) is None
    assert book(entry("transfer_in", MINT.reason, holding("h", X)), MINT) is None
    assert book(entry("burn", MINT.reason, archived=(holding("h", X),)), MINT) is None
    assert book(entry("mint", MINT.reason), MINT) is None  # no change of the holdings


@pytest.mark.parametrize(
    ("e", "record", "why"),
    [
        (entry("mint", MINT.reason, holding("h", 2 * X)), MINT, "record says"),
        (
            entry("mint", MINT.reason, holding("h", X, OTHER)),
            replace(MINT),
            "not iSTSi",
        ),
        (
            entry("mint", MINT.reason, holding("h", X), holding("o", X, OTHER)),
            MINT,
            "2 instruments",
        ),
        (entry("mint", MINT.reason, holding("h", X)), replace(MINT, owner="else"), "owner"),
        (entry("mint", MINT.reason, holding("h", X)), replace(MINT, status="failed"), "failed"),
        (entry("mint", MINT.reason, holding("h", X)), replace(MINT, credited=True), "already"),
        (entry("mint", MINT.reason, holding("h", X)), replace(MINT, update_id="u0"), "u0"),
        (
            entry("burn", BURN.reason, archived=(holding("h", X),)),
            replace(BURN, status="failed", update_id="refunded"),
            "refunded",
        ),
    ],
)
def test_what_cannot_be_right_goes_to_suspense_with_a_critical_alert(
    e: HistoryEntry, record: IssuanceRecord, why: str
) -> None:
    booked: set[str] = set()
    result = book(e, record, booked)
    assert result.record is None and booked == set()
    assert result.disposition.kind == "suspense"
    assert all(
        p.account.name in (SUSPENSE, f"treasury:{TREASURY}")
        for txn in result.disposition.journal
        for p in txn.postings
    )
    assert result.disposition.alerts
    assert all(a.severity == "critical" for a in result.disposition.alerts)
    assert why in result.disposition.alerts[0].message


def test_a_record_booked_earlier_in_the_batch_is_not_booked_again() -> None:
    booked: set[str] = set()
    first = book(entry("mint", MINT.reason, holding("h1", X)), MINT, booked)
    second = book(entry("mint", MINT.reason, holding("h2", X)), MINT, booked)
    assert first.disposition.kind == "credited"
    assert second.disposition.kind == "suspense" and second.record is None
