"""The exchange's inventory (``docs/exchange.md``): what swaps pay customers from, per instrument.

``exchange_inventory`` is a liability account like a customer's: the part of the treasury's
holdings that belongs to the exchange's own book. It is **funded from suspense**. The exchange
sends its own tokens to the treasury party with no reason (or one nobody knows); ingestion books
them to ``suspense`` like any unattributed deposit; an operator then books that deposit to the
inventory — a critical operation (``exchange.inventory.fund``, approval-gated through the API and
``sluice exchange fund``). Funding

* moves the amount from ``suspense`` to ``exchange_inventory`` in one balanced journal
  transaction keyed by the deposit (``inventory:<update id>:<node id>``), so it is booked once;
* records the deposit as assigned to :data:`INVENTORY_ASSIGNEE` (the suspense assignment row,
  keyed by the deposit, so a deposit goes to a customer or to the inventory, never both);
* appends an ``exchange_inventory_funded`` audit record and emits ``inventory_funded`` — all in
  one transaction. Funding again from the same deposit returns it as it is; a deposit already
  assigned to a customer is refused (41). Nothing is funded while sluice is paused.

There is no KYC usage: the exchange is not a customer. Swaps move inventory in both directions
(the sold instrument's inventory grows, the bought one's shrinks); :func:`inventory_balances`
reads it.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sluice.domain.errors import InvalidInputError, InvalidOperationStateError
from sluice.domain.exchange import EXCHANGE_INVENTORY
from sluice.domain.ledger import InstrumentId
from sluice.ports import SuspenseItem, UnitOfWorkFactory
from sluice.services.compliance import deposit_event
from sluice.services.controls import check_not_paused
from sluice.services.suspense import book_from_suspense, suspense_item_in

# Who a funded deposit reads as assigned to (``sluice suspense`` lists it so). Not a customer
# id: registering a customer under this id, or assigning a deposit to one, is refused.
INVENTORY_ASSIGNEE = EXCHANGE_INVENTORY
OPERATION = "exchange.inventory.fund"


def inventory_transaction_id(item: SuspenseItem) -> str:
    return f"inventory:{item.update_id}:{item.node_id}"


def fund_inventory(
    uow_factory: UnitOfWorkFactory,
    item_id: str,
    *,
    actor: str,
    at: datetime,
    approval_id: str | None = None,
    reason: str | None = None,
) -> SuspenseItem:
    """Book the deposit in suspense ``item_id`` (``<update id>:<node id>``) to the exchange's
    inventory of its instrument (see the module's docstring); the item as it now stands."""
    if not actor.strip():
        raise InvalidInputError("actor must not be empty")
    with uow_factory() as uow:
        check_not_paused(uow)
        item = suspense_item_in(uow, item_id)
        if item.assigned_to == INVENTORY_ASSIGNEE:
            return item
        if item.assigned_to is not None:
            raise InvalidOperationStateError(
                f"deposit {item.id} was already assigned to {item.assigned_to} by "
                f"{item.assigned_by}; it cannot fund the exchange's inventory"
            )
        if not uow.accounts.assign_suspense(
            item, INVENTORY_ASSIGNEE, actor=actor, at=at, approval_id=approval_id, reason=reason
        ):
            # Another assignment committed between the read and the insert; a new statement
            # sees whose it is.
            raced = suspense_item_in(uow, item_id)
            if raced.assigned_to == INVENTORY_ASSIGNEE:
                return raced
            raise InvalidOperationStateError(
                f"deposit {item.id} was assigned to {raced.assigned_to} meanwhile"
            )
        funded = book_from_suspense(
            uow,
            item,
            account=EXCHANGE_INVENTORY,
            assignee=INVENTORY_ASSIGNEE,
            transaction_id=inventory_transaction_id(item),
            kind="inventory_funded",
            operation="exchange_inventory_funded",
            description=f"deposit {item.id} in suspense booked to the exchange's inventory",
            event=deposit_event(
                "inventory_funded",
                item.id,
                at=at,
                instrument=item.instrument,
                amount=item.amount,
                status="inventory",
                sender=item.sender,
                deposit_account=item.reason,
                held_in="suspense",
                reason=reason,
                update_id=item.update_id,
                approval_id=approval_id,
                actor=actor,
            ),
            actor=actor,
            at=at,
            approval_id=approval_id,
            reason=reason,
        )
        uow.commit()
    return funded


def inventory_balances(uow_factory: UnitOfWorkFactory) -> dict[InstrumentId, Decimal]:
    """The exchange's inventory per instrument (instruments it never held are absent)."""
    with uow_factory() as uow:
        return uow.accounts.account_balances(EXCHANGE_INVENTORY)
