"""Instruments: the list, onboarding and enabling/disabling (component changes: approvals)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from sluice.api.errors import JsonResponse
from sluice.api.operations import propose
from sluice.api.routes.common import ERRORS, PROPOSED, AnyPrincipal, ComponentUpdates, Context
from sluice.api.schemas import (
    InstrumentOut,
    InstrumentStateIn,
    OnboardIn,
    approval_out,
    instrument_out,
)
from sluice.domain.amounts import format_amount
from sluice.services.reference import (
    check_limits,
    check_registry_url,
    check_transfer_kinds,
    list_instruments,
)

router = APIRouter(prefix="/v1/instruments", tags=["instruments"], responses=ERRORS)


@router.get("", response_model=list[InstrumentOut], summary="Onboarded instruments")
def instruments(context: Context, _caller: AnyPrincipal) -> list[InstrumentOut]:
    return [instrument_out(record) for record in list_instruments(context.uow)]


@router.post(
    "",
    status_code=202,
    responses=PROPOSED,
    summary="Onboard an instrument or change its registry (needs approvals)",
)
def onboard(body: OnboardIn, context: Context, caller: ComponentUpdates) -> Response:
    kinds = check_transfer_kinds(body.transfer_kinds)
    parameters: dict[str, object] = {
        "admin": body.admin,
        "id": body.id,
        "registry_url": check_registry_url(body.registry_url) if body.registry_url else None,
        "trusted": body.trusted,
        "transfer_kinds": list(kinds),
        "limits": check_limits({k: format_amount(v) for k, v in body.limits.items()})
        if body.limits
        else None,
    }
    approval = propose(context, caller, "instrument.onboard", parameters, reason=body.reason)
    return JsonResponse(approval_out(approval).model_dump(mode="json"), 202)


def _state(
    body: InstrumentStateIn, context: Context, caller: ComponentUpdates, on: bool
) -> Response:
    approval = propose(
        context,
        caller,
        "instrument.enable" if on else "instrument.disable",
        {"admin": body.admin, "id": body.id},
        reason=body.reason,
    )
    return JsonResponse(approval_out(approval).model_dump(mode="json"), 202)


@router.post("/enable", status_code=202, responses=PROPOSED, summary="Enable (needs approvals)")
def enable(body: InstrumentStateIn, context: Context, caller: ComponentUpdates) -> Response:
    return _state(body, context, caller, True)


@router.post("/disable", status_code=202, responses=PROPOSED, summary="Disable (needs approvals)")
def disable(body: InstrumentStateIn, context: Context, caller: ComponentUpdates) -> Response:
    return _state(body, context, caller, False)
