"""What a customer (or the staff looking after them) reads about their accounts: the customer
and their KYC profile, balances, history, withdrawals, and how to deposit.

Every list is a bounded page (``limit`` 1 … 1000, ``offset`` from 0). Reads change nothing, with
one exception: asking for deposit instructions for a customer who has no deposit account yet
creates one (with a deterministic id, so two requests create the same one), audited, in the same
transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import get_args

from sluice.domain.audit import AuditEntry
from sluice.domain.errors import (
    InstrumentNotOnboardedError,
    InvalidInputError,
    InvalidOperationStateError,
    NotFoundError,
)
from sluice.domain.ledger import REASON_KEY, InstrumentId
from sluice.domain.withdrawals import Withdrawal, WithdrawalStatus
from sluice.ports import (
    CustomerRecord,
    HistoryRecord,
    InstrumentRecord,
    UnitOfWork,
    UnitOfWorkFactory,
)

WITHDRAWAL_STATUSES: tuple[str, ...] = get_args(WithdrawalStatus)
DEPOSIT_ACCOUNT_PREFIX = "acct-"


@dataclass(frozen=True, slots=True)
class DepositInstruction:
    """How a customer deposits one instrument: a transfer to ``treasury`` whose metadata carries
    ``deposit_account`` under ``reason_key``."""

    treasury: str
    instrument: InstrumentId
    # What the instrument is onboarded for (``direct``: credited once ingested; ``offer``:
    # credited once the exchange has accepted it).
    transfer_kinds: tuple[str, ...]
    deposit_account: str
    reason_key: str
    description: str


def _customer(uow: UnitOfWork, customer_id: str) -> CustomerRecord:
    record = uow.accounts.customer(customer_id)
    if record is None:
        raise NotFoundError(f"unknown customer {customer_id!r}")
    return record


def get_customer(uow_factory: UnitOfWorkFactory, customer_id: str) -> CustomerRecord:
    with uow_factory() as uow:
        return _customer(uow, customer_id)


def list_customers(
    uow_factory: UnitOfWorkFactory, *, offset: int = 0, limit: int = 100
) -> list[CustomerRecord]:
    """By customer id."""
    with uow_factory() as uow:
        return uow.accounts.customers(offset=offset, limit=limit)


def customer_balances(
    uow_factory: UnitOfWorkFactory, customer_id: str
) -> dict[InstrumentId, Decimal]:
    """What the exchange owes the customer, per instrument (withdrawals requested are already
    taken off)."""
    with uow_factory() as uow:
        balances = uow.accounts.customer_balances(customer_id)
        if not balances:
            # Balances exist only for known customers, so the (costlier) customer lookup is
            # needed only to tell "no balances yet" from "no such customer".
            _customer(uow, customer_id)
        return balances


def customer_history(
    uow_factory: UnitOfWorkFactory, customer_id: str, *, offset: int = 0, limit: int = 100
) -> list[HistoryRecord]:
    """The customer's deposits and the ledger transfers of their withdrawals, newest first."""
    with uow_factory() as uow:
        _customer(uow, customer_id)
        return uow.accounts.customer_history(customer_id, offset=offset, limit=limit)


def check_withdrawal_statuses(statuses: Collection[str]) -> tuple[str, ...]:
    unknown = sorted(set(statuses) - set(WITHDRAWAL_STATUSES))
    if unknown:
        raise InvalidInputError(
            f"unknown withdrawal status(es) {', '.join(unknown)}; "
            f"one of {', '.join(WITHDRAWAL_STATUSES)}"
        )
    return tuple(sorted(set(statuses)))


def customer_withdrawals(
    uow_factory: UnitOfWorkFactory,
    customer_id: str | None,
    *,
    statuses: Collection[str] = (),
    offset: int = 0,
    limit: int = 100,
) -> list[Withdrawal]:
    """Customers' withdrawals (not pool upkeep nor returns of held deposits), newest first;
    ``customer_id`` None: every customer's."""
    checked = check_withdrawal_statuses(statuses)
    with uow_factory() as uow:
        if customer_id is not None:
            _customer(uow, customer_id)
        return uow.accounts.customer_withdrawals(
            customer_id, statuses=checked, offset=offset, limit=limit
        )


def get_withdrawal(uow_factory: UnitOfWorkFactory, withdrawal_id: str) -> Withdrawal:
    with uow_factory() as uow:
        found = uow.withdrawals.get(withdrawal_id)
    if found is None:
        raise NotFoundError(f"unknown withdrawal {withdrawal_id!r}")
    return found


# --- deposit instructions ------------------------------------------------------------------------


def default_deposit_account(customer_id: str) -> str:
    """The id given to a customer's first deposit account when none was registered."""
    return DEPOSIT_ACCOUNT_PREFIX + customer_id


def _fallback_deposit_account(customer_id: str) -> str:
    """When the default id already belongs to someone else (registered by hand)."""
    digest = hashlib.sha256(customer_id.encode()).hexdigest()[:32]
    return f"{DEPOSIT_ACCOUNT_PREFIX}{digest}"


def _describe(treasury: str, record: InstrumentRecord, account: str) -> str:
    kinds = {
        "direct": "a direct transfer is credited once the exchange has seen it on the ledger",
        "offer": "an offer is credited once the exchange has accepted it",
    }
    how = "; ".join(kinds[k] for k in record.transfer_kinds if k in kinds)
    return (
        f"Send {record.instrument.id} (admin {record.instrument.admin}) to {treasury} with "
        f"{REASON_KEY} = {account} in the transfer's metadata" + (f"; {how}" if how else "") + "."
    )


def deposit_instructions(
    uow_factory: UnitOfWorkFactory,
    customer_id: str,
    *,
    treasury: str,
    instrument: InstrumentId | None = None,
    actor: str | None = None,
    at: datetime | None = None,
) -> list[DepositInstruction]:
    """How the customer deposits each enabled, onboarded instrument (or only ``instrument``,
    refused with :class:`InstrumentNotOnboardedError` if it is not one). A customer without a
    deposit account gets one here (audited as ``deposit_account_created``)."""
    with uow_factory() as uow:
        # Locks the customer's row, so two first requests create one account, not two.
        if not uow.compliance.profiles([customer_id], lock=True):
            raise NotFoundError(f"unknown customer {customer_id!r}")
        record = _customer(uow, customer_id)
        onboarded = [r for r in uow.reference.instruments() if r.enabled]
        if instrument is not None:
            onboarded = [r for r in onboarded if r.instrument == instrument]
            if not onboarded:
                raise InstrumentNotOnboardedError(
                    f"instrument {instrument.key()} is not onboarded (or it is disabled)"
                )
        if record.deposit_accounts:
            account = record.deposit_accounts[0]
        else:
            account = default_deposit_account(customer_id)
            if uow.reference.customer_of_deposit_account(account) is not None:
                account = _fallback_deposit_account(customer_id)
            if not uow.reference.add_deposit_account(account, customer_id):
                raise InvalidOperationStateError(
                    f"deposit account {account!r} already belongs to another customer; "
                    f"register one for {customer_id} by hand"
                )
            when = at or datetime.now(UTC)
            uow.audit.append(
                [
                    AuditEntry(
                        operation_id=f"deposit-account:{account}",
                        operation="deposit_account_created",
                        actor=actor or f"customer:{customer_id}",
                        recorded_at=when,
                        customer_id=customer_id,
                        kyc=record.profile.as_dict(),
                        parameters={"deposit_account": account},
                        state_changes=[{"deposit_account": account, "customer": customer_id}],
                    )
                ]
            )
            uow.commit()
    return [
        DepositInstruction(
            treasury=treasury,
            instrument=r.instrument,
            transfer_kinds=r.transfer_kinds,
            deposit_account=account,
            reason_key=REASON_KEY,
            description=_describe(treasury, r, account),
        )
        for r in onboarded
    ]
