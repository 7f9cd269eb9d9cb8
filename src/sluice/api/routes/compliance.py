"""Compliance operations (compliance override): held deposits, the review queue, limits,
flagged addresses, checks and sanctions screening; and suspense (operators; assignment needs
approvals)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from sluice.api.errors import JsonResponse
from sluice.api.operations import propose
from sluice.api.routes.common import (
    ERRORS,
    PROPOSED,
    ComplianceOverride,
    Context,
    PageParams,
    StaffReads,
    UserOps,
)
from sluice.api.schemas import (
    SUSPENSE_ITEM_ID_PATTERN,
    AddressIn,
    AssignIn,
    ComplianceCheckIn,
    DecisionOut,
    FlaggedOut,
    HoldOut,
    LimitOut,
    LimitsIn,
    Page,
    ReasonIn,
    ResolutionIn,
    ReviewOut,
    ScreenIn,
    ScreenOut,
    SuspenseOut,
    WithdrawalOut,
    amount_text,
    approval_out,
    hold_out,
    page,
    review_out,
    suspense_out,
    withdrawal_out,
)
from sluice.domain.amounts import format_amount
from sluice.domain.compliance import OPERATIONS
from sluice.domain.errors import InvalidOperationStateError
from sluice.domain.ledger import InstrumentId
from sluice.services import compliance_officer as officer
from sluice.services.compliance import verify_operation_compliance
from sluice.services.suspense import get_suspense_item, list_suspense

router = APIRouter(tags=["compliance"], responses=ERRORS)

HoldId = Annotated[str, Path(min_length=1, max_length=700)]
ReviewId = Annotated[str, Path(min_length=1, max_length=700)]
ItemId = Annotated[str, Path(min_length=3, max_length=267, pattern=SUSPENSE_ITEM_ID_PATTERN)]


# --- held deposits -------------------------------------------------------------------------------


@router.get("/v1/compliance/holds", response_model=Page[HoldOut], summary="Held deposits")
def holds(
    context: Context,
    paging: PageParams,
    _caller: ComplianceOverride,
    status: Annotated[Literal["held", "released", "returned"] | None, Query()] = "held",
) -> dict[str, object]:
    with context.uow() as uow:
        items = uow.compliance.holds(status=status, offset=paging.offset, limit=paging.limit)
    return page([hold_out(h) for h in items], paging.offset, paging.limit)


@router.post(
    "/v1/compliance/holds/{hold_id}/release",
    response_model=HoldOut,
    summary="Credit a held deposit to its customer (compliance override)",
)
def release(
    hold_id: HoldId, body: ReasonIn, context: Context, caller: ComplianceOverride
) -> HoldOut:
    hold = officer.release_hold(
        context.uow,
        hold_id,
        actor=caller.actor,
        at=context.clock(),
        reason=body.reason,
        registry=context.compliance,
    )
    return hold_out(hold)


@router.post(
    "/v1/compliance/holds/{hold_id}/return",
    response_model=WithdrawalOut,
    summary="Pay a held deposit back to its sender (compliance override)",
)
def return_to_sender(
    hold_id: HoldId, body: ReasonIn, context: Context, caller: ComplianceOverride
) -> WithdrawalOut:
    record = officer.return_hold(
        context.uow,
        hold_id,
        treasury=context.treasury,
        actor=caller.actor,
        at=context.clock(),
        reason=body.reason,
        registry=context.compliance,
        attempts_max=context.withdrawal_settings.attempts_max,
    )
    return withdrawal_out(record)


# --- review queue --------------------------------------------------------------------------------


@router.get("/v1/compliance/reviews", response_model=Page[ReviewOut], summary="Review queue")
def reviews(
    context: Context,
    paging: PageParams,
    _caller: ComplianceOverride,
    open_only: bool = True,
) -> dict[str, object]:
    with context.uow() as uow:
        items = uow.compliance.reviews(
            open_only=open_only, offset=paging.offset, limit=paging.limit
        )
    return page([review_out(r) for r in items], paging.offset, paging.limit)


@router.post(
    "/v1/compliance/reviews/{review_id}/close",
    response_model=ReviewOut,
    summary="Close a review item",
)
def close(
    review_id: ReviewId, body: ResolutionIn, context: Context, caller: ComplianceOverride
) -> ReviewOut:
    closed = officer.close_review(
        context.uow, review_id, actor=caller.actor, at=context.clock(), resolution=body.resolution
    )
    return review_out(closed)


# --- limits and flagged addresses ----------------------------------------------------------------


@router.get("/v1/compliance/limits", response_model=list[LimitOut], summary="The limit ladder")
def limits(context: Context, _caller: ComplianceOverride) -> list[LimitOut]:
    ladder = context.compliance.settings.ladder
    with context.uow() as uow:
        overrides = uow.compliance.limit_overrides()
    out: list[LimitOut] = []
    for tier in range(5):
        for operation in OPERATIONS:
            step = overrides.get((tier, operation)) or ladder.of(tier, operation)
            out.append(
                LimitOut(
                    tier=tier,
                    operation=operation,
                    per_operation=amount_text(step.per_operation),
                    daily=amount_text(step.daily),
                    monthly=amount_text(step.monthly),
                )
            )
    return out


@router.put(
    "/v1/compliance/limits",
    status_code=202,
    responses=PROPOSED,
    summary="Change one (tier, operation) of the limit ladder (needs approvals)",
)
def change_limits(body: LimitsIn, context: Context, caller: ComplianceOverride) -> Response:
    approval = propose(
        context,
        caller,
        "compliance.limits",
        {
            "tier": body.tier,
            "operation": body.operation,
            "per_operation": amount_text(body.per_operation),
            "daily": amount_text(body.daily),
            "monthly": amount_text(body.monthly),
        },
        reason=body.reason,
    )
    return JsonResponse(approval_out(approval).model_dump(mode="json"), 202)


@router.get("/v1/compliance/flagged-addresses", response_model=list[FlaggedOut], summary="Flagged")
def flagged(context: Context, _caller: ComplianceOverride) -> list[FlaggedOut]:
    with context.uow() as uow:
        rows = uow.compliance.flagged_addresses()
    return [FlaggedOut(address=a, reason=r, flagged_by=b, flagged_at=t) for a, r, b, t in rows]


@router.post(
    "/v1/compliance/flagged-addresses",
    response_model=list[FlaggedOut],
    summary="Flag an address: every operation with it is refused",
)
def flag(body: AddressIn, context: Context, caller: ComplianceOverride) -> list[FlaggedOut]:
    officer.flag_address(
        context.uow, body.address, actor=caller.actor, at=context.clock(), reason=body.reason
    )
    return flagged(context, caller)


@router.post(
    "/v1/compliance/flagged-addresses/unflag",
    response_model=list[FlaggedOut],
    summary="Unflag an address",
)
def unflag(body: AddressIn, context: Context, caller: ComplianceOverride) -> list[FlaggedOut]:
    officer.unflag_address(
        context.uow, body.address, actor=caller.actor, at=context.clock(), reason=body.reason
    )
    return flagged(context, caller)


# --- checks and screening ------------------------------------------------------------------------


@router.post(
    "/v1/compliance/check",
    response_model=DecisionOut,
    summary="What the KYC registry would decide (nothing is recorded but the audit record)",
)
def check(body: ComplianceCheckIn, context: Context, caller: StaffReads) -> DecisionOut:
    instrument = (
        InstrumentId(body.instrument.admin, body.instrument.id) if body.instrument else None
    )
    value = (
        context.compliance.settings.value(instrument, body.amount)
        if instrument is not None
        else body.amount
    )
    decision = verify_operation_compliance(
        context.uow,
        context.compliance,
        body.customer_id,
        body.operation,
        value,
        body.counterparty,
        at=context.clock(),
        actor=caller.actor,
    )
    return DecisionOut(
        allowed=decision.allowed,
        code=decision.code,
        required_tier=decision.required_tier,
        reference_amount=format_amount(value),
        checks=[c.as_dict() for c in decision.checks],  # type: ignore[misc]
        risk_flags=list(decision.risk_flags),
    )


@router.post(
    "/v1/compliance/screen", response_model=ScreenOut, summary="Screen a name (sanctions list)"
)
def screen(body: ScreenIn, context: Context, _caller: ComplianceOverride) -> ScreenOut:
    screener = context.compliance.screen
    if screener is None:
        raise InvalidOperationStateError(
            "no sanctions list is configured (compliance.sanctions_list)"
        )
    match = screener.screen_name(body.name)
    return ScreenOut(
        name=match.name,
        matched=match.match,
        score=match.score,
        listed_name=match.matched_name,
        entity_id=match.entity_id,
    )


# --- suspense ------------------------------------------------------------------------------------


@router.get(
    "/v1/suspense",
    response_model=Page[SuspenseOut],
    summary="Deposits credited to suspense (no or unknown reason)",
)
def suspense(
    context: Context, paging: PageParams, _caller: UserOps, open_only: bool = True
) -> dict[str, object]:
    items = list_suspense(
        context.uow, open_only=open_only, offset=paging.offset, limit=paging.limit
    )
    return page([suspense_out(i) for i in items], paging.offset, paging.limit)


@router.post(
    "/v1/suspense/{item_id}/assign",
    status_code=202,
    responses=PROPOSED,
    summary="Give a suspense deposit to a customer (needs approvals)",
)
def assign(item_id: ItemId, body: AssignIn, context: Context, caller: UserOps) -> Response:
    item = get_suspense_item(context.uow, item_id)
    approval = propose(
        context,
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
    return JsonResponse(approval_out(approval).model_dump(mode="json"), 202)
