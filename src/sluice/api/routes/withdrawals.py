"""Withdrawals across customers: list, status, cancel while not yet submitted."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from sluice.api.routes.common import (
    ERRORS,
    Context,
    OwnOnly,
    OwnOrCompliance,
    PageParams,
    StaffReads,
)
from sluice.api.schemas import Page, WithdrawalOut, page, withdrawal_out
from sluice.domain.errors import NotFoundError
from sluice.domain.withdrawals import WithdrawalStatus
from sluice.services import accounts
from sluice.services.withdrawals import cancel_withdrawal

router = APIRouter(prefix="/v1/withdrawals", tags=["withdrawals"], responses=ERRORS)

WithdrawalId = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")]


@router.get("", response_model=Page[WithdrawalOut], summary="All customers' withdrawals")
def list_withdrawals(
    context: Context,
    paging: PageParams,
    _caller: StaffReads,
    status: Annotated[list[WithdrawalStatus] | None, Query(max_length=10)] = None,
) -> dict[str, object]:
    records = accounts.customer_withdrawals(
        context.uow, None, statuses=status or (), offset=paging.offset, limit=paging.limit
    )
    return page([withdrawal_out(r) for r in records], paging.offset, paging.limit)


@router.get("/{withdrawal_id}", response_model=WithdrawalOut, summary="A withdrawal's status")
def get_withdrawal(
    withdrawal_id: WithdrawalId, context: Context, caller: OwnOrCompliance
) -> WithdrawalOut:
    record = accounts.get_withdrawal(context.uow, withdrawal_id)
    if record.kind != "withdrawal":
        raise NotFoundError(f"no withdrawal {withdrawal_id}")
    caller.check_customer(record.customer_id)
    return withdrawal_out(record)


@router.post(
    "/{withdrawal_id}/cancel",
    response_model=WithdrawalOut,
    summary="Cancel a withdrawal not yet submitted (the customer is credited back)",
)
def cancel(withdrawal_id: WithdrawalId, context: Context, caller: OwnOnly) -> WithdrawalOut:
    record = cancel_withdrawal(
        context.uow,
        withdrawal_id,
        customer_id=caller.customer_scope,
        actor=caller.actor,
        at=context.clock(),
    )
    return withdrawal_out(record)
