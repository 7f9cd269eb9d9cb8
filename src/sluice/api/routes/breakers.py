"""Circuit breakers over HTTP: each flow's breaker, and forcing one open or closed."""

from __future__ import annotations

from fastapi import APIRouter

from sluice.api.breakers_schemas import BreakerForceIn, BreakerOut, breaker_out
from sluice.api.routes.common import ERRORS, Context, RouterAdmin, Staff
from sluice.services.breakers import Flow, breaker_report, force_breaker

router = APIRouter(tags=["system"], responses=ERRORS)


@router.get(
    "/v1/breakers",
    response_model=list[BreakerOut],
    summary="Each flow's circuit breaker: state, window, wait left, any forced state",
)
def breakers(context: Context, _caller: Staff) -> list[BreakerOut]:
    return [breaker_out(row) for row in breaker_report(context.uow)]


@router.post(
    "/v1/breakers/{name}/force",
    response_model=BreakerOut,
    summary="Force a flow's circuit breaker open or closed, or back to automatic (audited)",
)
def force(name: Flow, body: BreakerForceIn, context: Context, caller: RouterAdmin) -> BreakerOut:
    force_breaker(
        context.uow,
        flow=name,
        state=body.state,
        reason=body.reason,
        actor=caller.actor,
        at=context.clock(),
    )
    rows = {row["flow"]: row for row in breaker_report(context.uow)}
    return breaker_out(rows[name])
