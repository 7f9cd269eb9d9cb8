"""The exchange's inventory over HTTP (``docs/exchange.md``): what swaps pay from, and funding
it from a deposit in suspense.

``GET /v1/exchange/inventory`` lists the balance per instrument. ``POST
/v1/exchange/inventory/fundings`` proposes booking a suspense deposit to the inventory, a critical
operation (``exchange.inventory.fund``): it answers 202 with the proposal, which runs once enough
staff approved it (at once with ``approvals.required`` 1)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.responses import Response

from sluice.api.errors import JsonResponse
from sluice.api.operations import propose
from sluice.api.routes.common import ERRORS, PROPOSED, Context, StaffReads, UserOps
from sluice.api.schemas import Body, Reason, SuspenseItemId, approval_out
from sluice.domain.amounts import format_amount
from sluice.domain.errors import InvalidOperationStateError
from sluice.services.exchange_inventory import OPERATION, inventory_balances
from sluice.services.suspense import get_suspense_item

router = APIRouter(prefix="/v1/exchange", tags=["exchange"], responses=ERRORS)


class FundingIn(Body):
    item_id: SuspenseItemId
    reason: Reason


class InventoryOut(BaseModel):
    instrument: dict[str, str]
    balance: str


@router.get(
    "/inventory",
    response_model=list[InventoryOut],
    summary="The exchange's inventory per instrument (what swaps pay customers from)",
)
def inventory(context: Context, _caller: StaffReads) -> list[InventoryOut]:
    balances = inventory_balances(context.uow)
    return [
        InventoryOut(
            instrument={"id": instrument.id, "admin": instrument.admin},
            balance=format_amount(balance),
        )
        for instrument, balance in sorted(balances.items(), key=lambda kv: kv[0].key())
    ]


@router.post(
    "/inventory/fundings",
    status_code=202,
    responses=PROPOSED,
    summary="Book a suspense deposit to the exchange's inventory (needs approvals)",
)
def fund(body: FundingIn, context: Context, caller: UserOps) -> Response:
    item = get_suspense_item(context.uow, body.item_id)
    if item.assigned_to is not None:
        raise InvalidOperationStateError(
            f"deposit {item.id} was already assigned to {item.assigned_to}"
        )
    approval = propose(
        context,
        caller,
        OPERATION,
        {
            "item_id": item.id,
            "instrument_admin": item.instrument.admin,
            "instrument_id": item.instrument.id,
            "amount": format_amount(item.amount),
        },
        reason=body.reason,
    )
    return JsonResponse(approval_out(approval).model_dump(mode="json"), 202)
