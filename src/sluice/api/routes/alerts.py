"""Alerts over HTTP: the alerts raised, and acknowledging one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from sluice.api.alerts_schemas import AlertOut, alert_out
from sluice.api.routes.common import ERRORS, Context, PageParams, Staff
from sluice.api.schemas import Page, page
from sluice.domain.deposits import Severity
from sluice.ports.alerts import AlertStatus
from sluice.services.alerts import acknowledge, list_alerts

router = APIRouter(tags=["alerts"], responses=ERRORS)


@router.get(
    "/v1/alerts",
    response_model=Page[AlertOut],
    summary="Alerts, newest first: the product's own and the alert rules'",
)
def alerts(
    context: Context,
    _caller: Staff,
    paging: PageParams,
    status: Annotated[
        list[AlertStatus] | None,
        Query(description="open, acknowledged and/or resolved (repeat it); default: all"),
    ] = None,
    severity: Annotated[Severity | None, Query(description="critical, warning or info")] = None,
) -> dict[str, object]:
    found = list_alerts(
        context.uow,
        status=status,
        severity=severity,
        limit=paging.limit,
        offset=paging.offset,
    )
    return page([alert_out(a) for a in found.alerts], paging.offset, paging.limit)


@router.post(
    "/v1/alerts/{alert_id}/acknowledge",
    response_model=AlertOut,
    summary="Acknowledge an alert (audited); the product's own alerts are resolved with it (41 "
    "when acknowledged before)",
)
def acknowledge_alert(alert_id: str, context: Context, caller: Staff) -> AlertOut:
    record = acknowledge(context.uow, alert_id, actor=caller.actor, at=context.clock())
    return alert_out(record)
