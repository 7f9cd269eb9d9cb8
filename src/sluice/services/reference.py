"""Customers, their deposit accounts, and the instruments the exchange has onboarded."""

from __future__ import annotations

from collections.abc import Mapping

from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import InstrumentId, check_party_id
from sluice.ports import UnitOfWorkFactory


def register_customer(
    uow_factory: UnitOfWorkFactory, customer_id: str, name: str, deposit_accounts: list[str]
) -> None:
    """Create a customer (if new) and attach deposit accounts to it; idempotent."""
    if not customer_id.strip():
        raise InvalidInputError("customer id must not be empty")
    with uow_factory() as uow:
        uow.reference.add_customer(customer_id, name)
        for account in deposit_accounts:
            if not account.strip():
                raise InvalidInputError("deposit account id must not be empty")
            owner = uow.reference.customer_of_deposit_account(account)
            if owner is not None and owner != customer_id:
                raise InvalidInputError(
                    f"deposit account {account!r} already belongs to customer {owner!r}"
                )
            uow.reference.add_deposit_account(account, customer_id)
        uow.commit()


def onboard_instrument(
    uow_factory: UnitOfWorkFactory,
    instrument: InstrumentId,
    *,
    registry_url: str | None = None,
    trusted: bool = True,
    transfer_kinds: str = "direct",
    limits: Mapping[str, str] | None = None,
) -> bool:
    """Record an instrument as onboarded so its deposits are credited; idempotent."""
    check_party_id(instrument.admin)
    if not instrument.id:
        raise InvalidInputError("instrument id must not be empty")
    with uow_factory() as uow:
        added = uow.reference.add_instrument(
            instrument, registry_url, trusted, transfer_kinds, limits
        )
        uow.commit()
        return added
