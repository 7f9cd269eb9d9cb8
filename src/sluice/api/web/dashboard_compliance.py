"""The compliance pages: ``/dashboard/holds`` (deposits in suspense and deposits on compliance
hold) and ``/dashboard/reviews`` (the compliance review queue).

Each section and action has the permission of the API's route for it:

* suspense: listed by ``user_operations`` (``GET /v1/suspense``); assigning one to a customer
  records a ``suspense.assign`` proposal that runs once approved (``POST
  /v1/suspense/{id}/assign``: ``user_operations``);
* holds: listed, released to the customer and returned to the sender by ``compliance_override``
  (``/v1/compliance/holds…``), each through :mod:`sluice.services.compliance_officer`;
* the review queue: read and closed by ``compliance_override`` (``/v1/compliance/reviews…``).

A page shows the sections the role may see and is refused (403) to a role that may see none.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form
from fastapi.responses import HTMLResponse, RedirectResponse

from sluice.api.operations import propose
from sluice.api.routes import compliance
from sluice.api.routes.common import Paging
from sluice.api.schemas import AssignIn, ReasonIn, ResolutionIn
from sluice.api.security import Caller
from sluice.api.web.dashboard_actions import (
    COMPLIANCE_OVERRIDE,
    USER_OPERATIONS,
    act,
    admitted,
    allow,
    show,
)
from sluice.api.web.pages import Page, PageForbiddenError, staff_page
from sluice.domain.amounts import format_amount
from sluice.services import compliance_officer as officer
from sluice.services.suspense import get_suspense_item

router = APIRouter(include_in_schema=False)

HOLDS = "/dashboard/holds"
REVIEWS = "/dashboard/reviews"
ROWS_MAX = 200
FieldText = Annotated[str, Form(max_length=1000)]
Csrf = Annotated[str, Form(max_length=200)]


def _rows(answer: dict[str, object]) -> list[dict[str, Any]]:
    items = answer["items"]
    assert isinstance(items, list)
    return [item.model_dump() for item in items]


@router.get(HOLDS)
def holds_page(page: Annotated[Page, Depends(staff_page)]) -> HTMLResponse:
    sees_suspense = admitted(page, USER_OPERATIONS)
    sees_holds = admitted(page, COMPLIANCE_OVERRIDE)
    if not (sees_suspense or sees_holds):
        raise PageForbiddenError(f"role {page.principal.role} sees neither suspense nor holds")
    paging = Paging(0, ROWS_MAX)
    suspense = holds = None
    if sees_suspense:
        caller = Caller(page.principal, USER_OPERATIONS)
        suspense = _rows(compliance.suspense(page.context, paging, caller, True))
    if sees_holds:
        caller = Caller(page.principal, COMPLIANCE_OVERRIDE)
        holds = _rows(compliance.holds(page.context, paging, caller, "held"))
    return show(page, "dashboard/holds.html", suspense=suspense, holds=holds)


@router.post(HOLDS + "/suspense/assign")
def assign(
    page: Annotated[Page, Depends(staff_page)],
    item_id: FieldText = "",
    customer_id: FieldText = "",
    reason: FieldText = "",
    csrf_token: Csrf = "",
) -> RedirectResponse:
    """``POST /v1/suspense/{id}/assign``: a ``suspense.assign`` proposal, run once approved."""

    def run(caller: Caller) -> str:
        body = AssignIn(customer_id=customer_id.strip(), reason=reason)
        item = get_suspense_item(page.context.uow, item_id)
        approval = propose(
            page.context,
            caller,
            "suspense.assign",
            {
                "item_id": item.id,
                "customer_id": body.customer_id,
                "instrument_admin": item.instrument.admin,
                "instrument_id": item.instrument.id,
                "amount": format_amount(item.amount),
            },
            customer_id=body.customer_id,
            reason=body.reason,
        )
        return (
            f"Assigning {item.id} to {body.customer_id} was proposed as {approval.id}: "
            f"{approval.status}, {len(approval.approvers)} of {approval.required} approvals"
        )

    return act(page, csrf_token, USER_OPERATIONS, HOLDS, run)


@router.post(HOLDS + "/release")
def release(
    page: Annotated[Page, Depends(staff_page)],
    hold_id: FieldText = "",
    reason: FieldText = "",
    csrf_token: Csrf = "",
) -> RedirectResponse:
    """``POST /v1/compliance/holds/{id}/release``: credit the deposit to its customer."""

    def run(caller: Caller) -> str:
        body = ReasonIn(reason=reason)
        hold = officer.release_hold(
            page.context.uow,
            hold_id,
            actor=caller.actor,
            at=page.now,
            reason=body.reason,
            registry=page.context.compliance,
        )
        return f"Released {hold.id} to {hold.customer_id}"

    return act(page, csrf_token, COMPLIANCE_OVERRIDE, HOLDS, run)


@router.post(HOLDS + "/return")
def return_to_sender(
    page: Annotated[Page, Depends(staff_page)],
    hold_id: FieldText = "",
    reason: FieldText = "",
    csrf_token: Csrf = "",
) -> RedirectResponse:
    """``POST /v1/compliance/holds/{id}/return``: pay the deposit back to its sender."""

    def run(caller: Caller) -> str:
        body = ReasonIn(reason=reason)
        record = officer.return_hold(
            page.context.uow,
            hold_id,
            treasury=page.context.treasury,
            actor=caller.actor,
            at=page.now,
            reason=body.reason,
            registry=page.context.compliance,
            attempts_max=page.context.withdrawal_settings.attempts_max,
        )
        return f"Returning {hold_id} to its sender as {record.id} ({record.status})"

    return act(page, csrf_token, COMPLIANCE_OVERRIDE, HOLDS, run)


@router.get(REVIEWS)
def reviews_page(page: Annotated[Page, Depends(staff_page)], closed: bool = False) -> HTMLResponse:
    caller = allow(page, COMPLIANCE_OVERRIDE)
    answer = compliance.reviews(page.context, Paging(0, ROWS_MAX), caller, not closed)
    return show(page, "dashboard/reviews.html", reviews=_rows(answer), closed=closed)


@router.post(REVIEWS + "/close")
def close_review(
    page: Annotated[Page, Depends(staff_page)],
    review_id: FieldText = "",
    resolution: FieldText = "",
    csrf_token: Csrf = "",
) -> RedirectResponse:
    """``POST /v1/compliance/reviews/{id}/close``."""

    def run(caller: Caller) -> str:
        body = ResolutionIn(resolution=resolution)
        closed = officer.close_review(
            page.context.uow,
            review_id,
            actor=caller.actor,
            at=page.now,
            resolution=body.resolution,
        )
        return f"Closed review {closed.id}"

    return act(page, csrf_token, COMPLIANCE_OVERRIDE, REVIEWS, run)
