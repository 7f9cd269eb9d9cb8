"""A customer's balances per instrument, as ``sluice balances --customer C`` shows them:

* ``available``: their customer account's balance (what they may withdraw, redeem or trade);
* ``held``: their deposits the KYC registry held for a compliance officer's review (ledger
  deposits in the compliance-hold account, and Bitcoin deposits whose mint of iSTSi is held);
* ``in_flight``: what left their account but is not paid yet (open withdrawals, and open
  redemptions of iSTSi).

Read in one transaction, so the three columns are of one moment: an amount is in exactly one of
them (a withdrawal's debit and its in-flight record are written together, as are a redemption's).
Reads change nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from sluice.domain.amounts import ZERO, format_amount
from sluice.domain.errors import NotFoundError
from sluice.domain.ledger import InstrumentId
from sluice.domain.withdrawals import LIVE_STATUSES, Withdrawal
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.ports.issuance import TERMINAL_STATUSES, sats_to_amount
from sluice.services.issuance_settings import ISTSI_ID

PAGE = 1000
# The most open withdrawals or holds read for one customer (a bound on the read, far above what a
# customer ever has open).
OPEN_ITEMS_MAX = 100_000
# Operation statuses of the router that are not final (their amount is still the customer's).
OPEN_OPERATION_STATUSES = ("pending", "waiting", "held", "stuck")


@dataclass(frozen=True, slots=True)
class BalanceLine:
    instrument: InstrumentId
    available: Decimal
    held: Decimal
    in_flight: Decimal

    @property
    def total(self) -> Decimal:
        return self.available + self.held + self.in_flight

    def to_json(self) -> dict[str, object]:
        return {
            "instrument": self.instrument.as_json(),
            "available": format_amount(self.available),
            "held": format_amount(self.held),
            "in_flight": format_amount(self.in_flight),
        }


def customer_balances(
    uow_factory: UnitOfWorkFactory, customer_id: str, *, istsi: InstrumentId | None = None
) -> list[BalanceLine]:
    """Every instrument the customer has (a balance row, a held deposit or something in
    flight), ordered by instrument. ``istsi`` names the iSTSi instrument (its admin is the issuer
    party); without it, it is the onboarded instrument ``iSTSi`` or the one in the customer's
    balances. :class:`NotFoundError` for an unknown customer."""
    with uow_factory() as uow:
        if uow.accounts.customer(customer_id) is None:
            raise NotFoundError(f"unknown customer {customer_id!r}")
        available = uow.accounts.customer_balances(customer_id)
        held: defaultdict[InstrumentId, Decimal] = defaultdict(lambda: ZERO)
        in_flight: defaultdict[InstrumentId, Decimal] = defaultdict(lambda: ZERO)
        for admin, instrument_id, amount in _held_deposits(uow, customer_id):
            held[InstrumentId(admin, instrument_id)] += amount
        for withdrawal in _open_withdrawals(uow, customer_id):
            in_flight[withdrawal.instrument] += withdrawal.amount
        held_sats, redeeming_sats = _open_issuance(uow, customer_id)
        if held_sats or redeeming_sats:
            token = istsi or _istsi(uow, available)
            held[token] += sats_to_amount(held_sats)
            in_flight[token] += sats_to_amount(redeeming_sats)
    instruments = sorted(set(available) | set(held) | set(in_flight), key=lambda i: (i.id, i.admin))
    return [
        BalanceLine(
            instrument=instrument,
            available=available.get(instrument, ZERO),
            held=held.get(instrument, ZERO),
            in_flight=in_flight.get(instrument, ZERO),
        )
        for instrument in instruments
    ]


def _held_deposits(uow: UnitOfWork, customer_id: str) -> list[tuple[str, str, Decimal]]:
    """(instrument admin, instrument id, amount) of the customer's deposits still held."""
    found: list[tuple[str, str, Decimal]] = []
    for offset in range(0, OPEN_ITEMS_MAX, PAGE):
        page = uow.compliance.holds(status="held", offset=offset, limit=PAGE)
        found.extend(
            (hold.instrument_admin, hold.instrument_id, hold.amount)
            for hold in page
            if hold.customer_id == customer_id
        )
        if len(page) < PAGE:
            break
    return found


def _open_withdrawals(uow: UnitOfWork, customer_id: str) -> list[Withdrawal]:
    found: list[Withdrawal] = []
    for offset in range(0, OPEN_ITEMS_MAX, PAGE):
        page = uow.accounts.customer_withdrawals(
            customer_id, statuses=sorted(LIVE_STATUSES), offset=offset, limit=PAGE
        )
        found.extend(page)
        if len(page) < PAGE:
            break
    return found


def _open_issuance(uow: UnitOfWork, customer_id: str) -> tuple[int, int]:
    """Sats of the customer's Bitcoin deposits held by KYC, and of their open redemptions."""
    held = redeeming = 0
    for status in OPEN_OPERATION_STATUSES:
        for op in uow.issuance.operations(
            status=status, customer_id=customer_id, limit=OPEN_ITEMS_MAX
        ):
            if op.status in TERMINAL_STATUSES:
                continue
            if op.type == "token_withdrawal":
                redeeming += op.amount_sats
            elif op.type == "bitcoin_deposit" and op.status == "held":
                held += op.amount_sats
    return held, redeeming


def _istsi(uow: UnitOfWork, balances: dict[InstrumentId, Decimal]) -> InstrumentId:
    onboarded = [r.instrument for r in uow.reference.instruments() if r.instrument.id == ISTSI_ID]
    owned = [i for i in balances if i.id == ISTSI_ID]
    for candidates in (onboarded, owned):
        if len(candidates) == 1:
            return candidates[0]
    raise NotFoundError(
        f"cannot tell which instrument is {ISTSI_ID} (onboarded: {len(onboarded)}, in the "
        f"customer's balances: {len(owned)}): pass it"
    )
