"""The double-entry journal: accounts per instrument, balanced transactions, signed postings.

Assets (the treasury's holdings on the ledger) sit on one side, what the exchange owes on the
other (customers, suspense, in-flight withdrawals, fees, compliance holds, the exchange's
inventory). Postings are signed — debits positive, credits negative — and every transaction's
postings sum to zero, so per instrument

    Σ customer balances + suspense + in-flight + fees + holds + inventory = treasury holdings

holds after every transaction. Balances are cached per account and checked against the postings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from sluice.domain.amounts import ZERO
from sluice.domain.ledger import InstrumentId

Side = Literal["asset", "liability"]

SUSPENSE = "suspense"
IN_FLIGHT = "in_flight"
FEES = "fees"
# Deposits the KYC registry refused to credit, until a compliance officer releases or returns them.
COMPLIANCE_HOLD = "compliance_hold"
# The exchange's own stock of each instrument (``sluice.domain.exchange``, which names it too).
# The exchange's own stock of each instrument (swaps pay from it): owed to the house, so the
# invariant counts it among what the treasury's holdings cover.
EXCHANGE_INVENTORY = "exchange_inventory"
LIABILITY_NAMES = (SUSPENSE, IN_FLIGHT, FEES, COMPLIANCE_HOLD, EXCHANGE_INVENTORY)


def treasury_account_name(party: str) -> str:
    return f"treasury:{party}"


def customer_account_name(customer_id: str) -> str:
    return f"customer:{customer_id}"


@dataclass(frozen=True, slots=True, order=True)
class AccountRef:
    name: str
    instrument: InstrumentId

    @property
    def id(self) -> str:
        return f"{self.name}|{self.instrument.admin}|{self.instrument.id}"

    @property
    def side(self) -> Side:
        return "asset" if self.name.startswith("treasury:") else "liability"

    @property
    def customer_id(self) -> str | None:
        return self.name.removeprefix("customer:") if self.name.startswith("customer:") else None


@dataclass(frozen=True, slots=True)
class Posting:
    account: AccountRef
    amount: Decimal  # debit > 0, credit < 0


@dataclass(frozen=True, slots=True)
class JournalTransaction:
    """One balanced movement; ``id`` is chosen by the writer so a replay is refused by the DB."""

    id: str
    kind: str
    postings: tuple[Posting, ...]
    update_id: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        check_balanced(self.postings)


def check_balanced(postings: Iterable[Posting]) -> None:
    by_instrument: dict[InstrumentId, Decimal] = {}
    for posting in postings:
        by_instrument[posting.account.instrument] = (
            by_instrument.get(posting.account.instrument, ZERO) + posting.amount
        )
    for instrument, total in by_instrument.items():
        assert total == 0, f"journal transaction does not balance for {instrument}: {total}"


def balance_change(account: AccountRef, posting_amount: Decimal) -> Decimal:
    """How a posting moves the account's natural balance (assets: debits, liabilities: credits)."""
    return posting_amount if account.side == "asset" else -posting_amount


def transfer_into(
    txn_id: str,
    kind: str,
    *,
    treasury: AccountRef,
    liability: AccountRef,
    amount: Decimal,
    update_id: str | None = None,
    description: str | None = None,
) -> JournalTransaction:
    """The treasury's holdings change by ``amount`` (may be negative), owed to ``liability``."""
    return JournalTransaction(
        id=txn_id,
        kind=kind,
        postings=(Posting(treasury, amount), Posting(liability, -amount)),
        update_id=update_id,
        description=description,
    )


def check_books(
    balances: Mapping[AccountRef, Decimal], holdings: Mapping[InstrumentId, Decimal]
) -> list[str]:
    """The invariant of DESIGN §4, per instrument; returns the violations (empty when it holds)."""
    problems: list[str] = []
    liabilities: dict[InstrumentId, Decimal] = {}
    assets: dict[InstrumentId, Decimal] = {}
    for account, balance in balances.items():
        target = assets if account.side == "asset" else liabilities
        target[account.instrument] = target.get(account.instrument, ZERO) + balance
        if account.customer_id is not None and balance < 0:
            problems.append(f"{account.id}: customer balance is negative ({balance})")
    for instrument in sorted(set(liabilities) | set(assets) | set(holdings)):
        owed = liabilities.get(instrument, ZERO)
        booked = assets.get(instrument, ZERO)
        held = holdings.get(instrument, ZERO)
        if not owed == booked == held:
            problems.append(
                f"{instrument.key()}: liabilities {owed} ≠ treasury account {booked} "
                f"≠ holdings on the ledger {held}"
            )
    return problems
