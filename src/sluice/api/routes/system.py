"""Health, readiness, status, emergency pause and resume, the books check."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import Response

from sluice.api.errors import JsonResponse
from sluice.api.routes.common import ERRORS, AnyPrincipal, Context, EmergencyPause, StaffReads
from sluice.api.schemas import BooksOut, HealthOut, PauseIn, PauseOut, ReadyOut, ReasonIn, StatusOut
from sluice.services.books import check_invariant
from sluice.services.controls import PauseState, current_pause, pause, resume

router = APIRouter(tags=["system"], responses=ERRORS)


def _pause_out(state: PauseState | None) -> PauseOut | None:
    if state is None:
        return None
    return PauseOut(mode=state.mode, reason=state.reason, actor=state.actor, since=state.since)


@router.get("/health", response_model=HealthOut, summary="Liveness (public)")
async def health() -> HealthOut:
    return HealthOut(status="ok")


@router.get(
    "/ready",
    response_model=ReadyOut,
    summary="Readiness (public): the database answers and the service loop is running",
    responses={503: {"model": ReadyOut}},
)
def ready(context: Context) -> Response:
    checks: dict[str, dict[str, Any]] = {}
    try:
        current_pause(context.uow)
        checks["database"] = {"ready": True, "detail": "answers"}
    except SQLAlchemyError as exc:
        checks["database"] = {"ready": False, "detail": f"{type(exc).__name__}"}
    for name, probe in context.readiness.items():
        try:
            ok, detail = probe()
        except Exception as exc:
            ok, detail = False, f"probe failed: {type(exc).__name__}"
        checks[name] = {"ready": ok, "detail": detail}
    is_ready = all(check["ready"] for check in checks.values())
    body = ReadyOut(ready=is_ready, checks=checks).model_dump(mode="json")
    return JsonResponse(body, 200 if is_ready else 503)


@router.get("/v1/system/status", response_model=StatusOut, summary="Running or paused")
def status(context: Context, _caller: AnyPrincipal) -> StatusOut:
    state = current_pause(context.uow)
    return StatusOut(
        running=state is None,
        pause=_pause_out(state),
        treasury=context.treasury,
        time=context.clock(),
    )


@router.post(
    "/v1/system/pause",
    response_model=PauseOut,
    summary="Emergency pause: stop every value-moving endpoint and worker (50/51/52)",
)
def pause_system(body: PauseIn, context: Context, caller: EmergencyPause) -> PauseOut:
    state = pause(
        context.uow, mode=body.mode, reason=body.reason, actor=caller.actor, at=context.clock()
    )
    out = _pause_out(state)
    assert out is not None
    return out


@router.post("/v1/system/resume", response_model=StatusOut, summary="Lift the pause")
def resume_system(body: ReasonIn, context: Context, caller: EmergencyPause) -> StatusOut:
    resume(context.uow, reason=body.reason, actor=caller.actor, at=context.clock())
    return StatusOut(running=True, pause=None, treasury=context.treasury, time=context.clock())


@router.get(
    "/v1/books/check",
    response_model=BooksOut,
    summary="Σ customers + suspense + in-flight + fees + holds = treasury holdings",
)
def books(context: Context, _caller: StaffReads) -> BooksOut:
    result = check_invariant(context.uow)
    return BooksOut(holds=result.holds, problems=result.problems)
