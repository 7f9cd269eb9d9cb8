"""Suspense: deposits nobody could be credited with, and giving one to its customer.

A deposit with no reason, an unknown deposit account, or of an instrument that is not onboarded
is booked by ingestion to the ``suspense`` account (DESIGN §5). Once support has found out whose it
is, an operator assigns it (a critical operation: the API asks for approvals first). Assigning

* moves the amount from suspense to the customer's account in one balanced journal transaction,
  keyed by the deposit (``assign:<update id>:<node id>``), so it can be booked only once;
* records who assigned it to whom, when and under which approval, at most once per deposit;
* counts against the customer's deposit usage, as a released held deposit does;
* appends a ``suspense_assigned`` audit record — all in one transaction.

Assigning again to the same customer returns the item as it is (an approval executed twice
changes nothing); to another customer it is refused. Nothing is assigned while sluice is paused.
"""

from __future__ import annotations

from datetime import datetime

from sluice.domain.amounts import format_amount
from sluice.domain.audit import AuditEntry
from sluice.domain.compliance import UsageRecord
from sluice.domain.errors import InvalidInputError, InvalidOperationStateError, NotFoundError
from sluice.domain.events import Event
from sluice.domain.exchange import EXCHANGE_INVENTORY
from sluice.domain.journal import (
    SUSPENSE,
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
)
from sluice.ports import SuspenseItem, UnitOfWork, UnitOfWorkFactory
from sluice.services.compliance import KycRegistry, deposit_event
from sluice.services.controls import check_not_paused
from sluice.services.events import emit_all

UPDATE_ID_LENGTH_MAX = 256
NODE_ID_MAX = 2**31 - 1


def parse_item_id(item_id: str) -> tuple[str, int]:
    """``<update id>:<node id>`` → (update id, node id). Update ids may contain colons; node ids
    never do, so the split is at the last one."""
    update_id, separator, node_text = item_id.rpartition(":")
    if (
        not separator
        or not update_id
        or len(update_id) > UPDATE_ID_LENGTH_MAX
        or not node_text.isascii()
        or not node_text.isdigit()
        or len(node_text) > 10
        or int(node_text) > NODE_ID_MAX
    ):
        raise InvalidInputError(
            f"suspense item id must be '<update id>:<node id>' (a non-negative integer), "
            f"got {item_id!r}"
        )
    return update_id, int(node_text)


def suspense_item_in(uow: UnitOfWork, item_id: str) -> SuspenseItem:
    """The suspense item ``item_id`` as ``uow`` reads it; 404 when there is none."""
    update_id, node_id = parse_item_id(item_id)
    item = uow.accounts.suspense_item(update_id, node_id)
    if item is None:
        raise NotFoundError(f"no deposit in suspense with id {item_id!r}")
    return item


def list_suspense(
    uow_factory: UnitOfWorkFactory, *, open_only: bool = True, offset: int = 0, limit: int = 100
) -> list[SuspenseItem]:
    """Deposits in suspense, oldest first; ``open_only``: those not yet assigned."""
    with uow_factory() as uow:
        return uow.accounts.suspense_items(open_only=open_only, offset=offset, limit=limit)


def get_suspense_item(uow_factory: UnitOfWorkFactory, item_id: str) -> SuspenseItem:
    with uow_factory() as uow:
        return suspense_item_in(uow, item_id)


def _check_assignable(item: SuspenseItem, customer_id: str) -> SuspenseItem | None:
    """The item itself when it is already the customer's; refused when it is someone else's."""
    if item.assigned_to is None:
        return None
    if item.assigned_to == customer_id:
        return item
    raise InvalidOperationStateError(
        f"deposit {item.id} was already assigned to {item.assigned_to} by {item.assigned_by}"
    )


def assign_suspense(
    uow_factory: UnitOfWorkFactory,
    item_id: str,
    customer_id: str,
    *,
    actor: str,
    at: datetime,
    approval_id: str | None = None,
    reason: str | None = None,
    registry: KycRegistry | None = None,
) -> SuspenseItem:
    """Credit a deposit held in suspense to ``customer_id`` (see the module's docstring)."""
    if not actor.strip():
        raise InvalidInputError("actor must not be empty")
    with uow_factory() as uow:
        check_not_paused(uow)
        item = suspense_item_in(uow, item_id)
        if customer_id == EXCHANGE_INVENTORY:
            raise InvalidInputError(
                f"{EXCHANGE_INVENTORY!r} is the exchange's inventory, not a customer: fund it "
                "with `sluice exchange fund` (the exchange.inventory.fund approval)"
            )
        # The customer's row first, then the balances (the order every writer locks in).
        profile = uow.compliance.profiles([customer_id], lock=True).get(customer_id)
        if profile is None:
            raise NotFoundError(f"unknown customer {customer_id!r}")
        done = _check_assignable(item, customer_id)
        if done is not None:
            return done
        if not uow.accounts.assign_suspense(
            item, customer_id, actor=actor, at=at, approval_id=approval_id, reason=reason
        ):
            # Another assignment committed between the read and the insert (the insert waited
            # for it); a new statement sees it.
            done = _check_assignable(suspense_item_in(uow, item_id), customer_id)
            assert done is not None, f"{item_id} is assigned yet reads as open"
            return done
        value = (registry or KycRegistry()).settings.value(item.instrument, item.amount)
        uow.compliance.record_usage(
            customer_id, [UsageRecord(f"assign:{item.id}", "deposit", value, at, item.sender)]
        )
        assigned = book_from_suspense(
            uow,
            item,
            account=customer_account_name(customer_id),
            assignee=customer_id,
            transaction_id=f"assign:{item.id}",
            kind="suspense_assigned",
            operation="suspense_assigned",
            description=f"deposit {item.id} in suspense assigned to {customer_id}",
            event=deposit_event(
                "deposit_released",
                item.id,
                at=at,
                instrument=item.instrument,
                amount=item.amount,
                status="released",
                customer_id=customer_id,
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
            customer_id=customer_id,
            kyc=profile.as_dict(),
        )
        uow.commit()
    return assigned


def book_from_suspense(
    uow: UnitOfWork,
    item: SuspenseItem,
    *,
    account: str,
    assignee: str,
    transaction_id: str,
    kind: str,
    operation: str,
    description: str,
    event: Event,
    actor: str,
    at: datetime,
    approval_id: str | None,
    reason: str | None,
    customer_id: str | None = None,
    kyc: dict[str, object] | None = None,
) -> SuspenseItem:
    """In ``uow`` (not committed), for a deposit whose assignment to ``assignee`` was just
    recorded: the journal transaction (of ``kind``) moving it from suspense to ``account``, its
    audit record (``operation``) and ``event``; the item as it now reads."""
    uow.withdrawals.post(
        [
            JournalTransaction(
                id=transaction_id,
                kind=kind,
                postings=(
                    Posting(AccountRef(SUSPENSE, item.instrument), item.amount),
                    Posting(AccountRef(account, item.instrument), -item.amount),
                ),
                description=description,
            )
        ]
    )
    uow.audit.append(
        [
            AuditEntry(
                operation_id=transaction_id,
                operation=operation,
                actor=actor,
                recorded_at=at,
                customer_id=customer_id,
                kyc=kyc,
                parameters={
                    "item": item.id,
                    "instrument": item.instrument.key(),
                    "amount": format_amount(item.amount),
                    "sender": item.sender,
                    "deposit_reason": item.reason,
                    "approval_id": approval_id,
                    "reason": reason,
                },
                state_changes=[
                    {
                        "debited": SUSPENSE,
                        "credited": account,
                        "amount": format_amount(item.amount),
                    },
                    {"suspense_item": item.id, "assigned_to": assignee},
                ],
            )
        ]
    )
    emit_all(uow, [event])
    booked = uow.accounts.suspense_item(item.update_id, item.node_id)
    assert booked is not None
    return booked
