"""The dashboard's pages for acting on the exchange as a whole: ``/dashboard/alerts`` (with
acknowledge), ``/dashboard/approvals`` (proposals awaiting a signature, with approve and reject)
and ``/dashboard/controls`` (the emergency pause and resume).

Permissions are the API's routes': alerts are read and acknowledged by any staff role
(``/v1/alerts…``); approvals are listed to any principal and voted on by staff, the service
then checking that the voter holds the operation's own capability and has not voted before
(``/v1/approvals/{id}/approve|reject``); pausing and resuming need ``emergency_pause``
(``/v1/system/pause|resume``). Each action calls the route's service with the same arguments,
so it is audited the same way."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form
from fastapi.responses import HTMLResponse, RedirectResponse

from sluice.api.alerts_schemas import alert_out
from sluice.api.schemas import PauseIn, ReasonIn, VoteIn, approval_out
from sluice.api.security import Caller
from sluice.api.web.dashboard_actions import (
    ANY_PRINCIPAL,
    EMERGENCY_PAUSE,
    STAFF,
    act,
    admitted,
    allow,
    show,
)
from sluice.api.web.pages import Page, staff_page
from sluice.domain.approvals import APPROVAL_STATUSES
from sluice.services import alerts as alert_service
from sluice.services import controls
from sluice.services.approvals import list_approvals, vote_on_approval

router = APIRouter(include_in_schema=False)

ALERTS = "/dashboard/alerts"
APPROVALS = "/dashboard/approvals"
CONTROLS = "/dashboard/controls"
ROWS_MAX = 200
FieldText = Annotated[str, Form(max_length=1000)]
Csrf = Annotated[str, Form(max_length=200)]
ALERT_VIEWS = {"open": ["open"], "acknowledged": ["acknowledged"], "all": None}


# --- alerts --------------------------------------------------------------------------------------


@router.get(ALERTS)
def alerts_page(page: Annotated[Page, Depends(staff_page)], view: str = "open") -> HTMLResponse:
    allow(page, STAFF)
    view = view if view in ALERT_VIEWS else "open"
    found = alert_service.list_alerts(page.context.uow, status=ALERT_VIEWS[view], limit=ROWS_MAX)
    return show(
        page,
        "dashboard/alerts.html",
        alerts=[alert_out(a).model_dump() for a in found.alerts],
        total=found.total,
        view=view,
        views=list(ALERT_VIEWS),
    )


@router.post(ALERTS + "/acknowledge")
def acknowledge(
    page: Annotated[Page, Depends(staff_page)],
    alert_id: FieldText = "",
    csrf_token: Csrf = "",
) -> RedirectResponse:
    """``POST /v1/alerts/{id}/acknowledge``."""

    def run(caller: Caller) -> str:
        record = alert_service.acknowledge(
            page.context.uow, alert_id, actor=caller.actor, at=page.now
        )
        return f"Acknowledged alert {record.id} ({record.status})"

    return act(page, csrf_token, STAFF, ALERTS, run)


# --- approvals -----------------------------------------------------------------------------------


@router.get(APPROVALS)
def approvals_page(
    page: Annotated[Page, Depends(staff_page)], status: str = "pending"
) -> HTMLResponse:
    allow(page, ANY_PRINCIPAL)
    chosen = status if status in APPROVAL_STATUSES else None
    found = list_approvals(page.context.uow, status=chosen, limit=ROWS_MAX)
    me = page.principal.id
    rows: list[dict[str, Any]] = []
    for approval in found:
        row = approval_out(approval).model_dump()
        row["voted"] = any(v.principal_id == me for v in approval.votes)
        row["capability"] = approval.capability
        row["may_vote"] = (
            approval.status == "pending"
            and not row["voted"]
            and page.principal.may(approval.capability)
        )
        rows.append(row)
    return show(
        page,
        "dashboard/approvals.html",
        approvals=rows,
        shown=chosen or "all",
        statuses=[*APPROVAL_STATUSES, "all"],
        may_vote=admitted(page, STAFF),
    )


def _vote(
    page: Page,
    approval_id: str,
    decision: Literal["approve", "reject"],
    comment: str,
    csrf_token: str,
) -> RedirectResponse:
    """``POST /v1/approvals/{id}/approve|reject``."""

    def run(caller: Caller) -> str:
        body = VoteIn(comment=comment.strip() or None)
        result = vote_on_approval(
            page.context.uow,
            approval_id,
            principal=caller.require(),
            decision=decision,
            at=page.now,
            executors=page.context.executors,
            comment=body.comment,
        )
        done = "Approved" if decision == "approve" else "Rejected"
        return (
            f"{done} {result.id} ({result.operation}): now {result.status}, "
            f"{len(result.approvers)} of {result.required} approvals"
            + (f" — {result.error}" if result.error else "")
        )

    return act(page, csrf_token, STAFF, APPROVALS, run)


@router.post(APPROVALS + "/approve")
def approve(
    page: Annotated[Page, Depends(staff_page)],
    approval_id: FieldText = "",
    comment: FieldText = "",
    csrf_token: Csrf = "",
) -> RedirectResponse:
    return _vote(page, approval_id, "approve", comment, csrf_token)


@router.post(APPROVALS + "/reject")
def reject(
    page: Annotated[Page, Depends(staff_page)],
    approval_id: FieldText = "",
    comment: FieldText = "",
    csrf_token: Csrf = "",
) -> RedirectResponse:
    return _vote(page, approval_id, "reject", comment, csrf_token)


# --- pause and resume ----------------------------------------------------------------------------


@router.get(CONTROLS)
def controls_page(page: Annotated[Page, Depends(staff_page)]) -> HTMLResponse:
    allow(page, ANY_PRINCIPAL)
    return show(
        page,
        "dashboard/controls.html",
        pause=controls.current_pause(page.context.uow),
        modes=controls.PAUSE_MODES,
        may_pause=admitted(page, EMERGENCY_PAUSE),
    )


@router.post(CONTROLS + "/pause")
def pause(
    page: Annotated[Page, Depends(staff_page)],
    mode: Annotated[str, Form(max_length=20)] = "paused",
    reason: FieldText = "",
    csrf_token: Csrf = "",
) -> RedirectResponse:
    """``POST /v1/system/pause``."""

    def run(caller: Caller) -> str:
        body = PauseIn.model_validate({"mode": mode, "reason": reason})
        state = controls.pause(
            page.context.uow, mode=body.mode, reason=body.reason, actor=caller.actor, at=page.now
        )
        return f"The system is {state.mode}: {state.reason}"

    return act(page, csrf_token, EMERGENCY_PAUSE, CONTROLS, run)


@router.post(CONTROLS + "/resume")
def resume(
    page: Annotated[Page, Depends(staff_page)],
    reason: FieldText = "",
    csrf_token: Csrf = "",
) -> RedirectResponse:
    """``POST /v1/system/resume``."""

    def run(caller: Caller) -> str:
        body = ReasonIn(reason=reason)
        controls.resume(page.context.uow, reason=body.reason, actor=caller.actor, at=page.now)
        return "The system is running"

    return act(page, csrf_token, EMERGENCY_PAUSE, CONTROLS, run)
