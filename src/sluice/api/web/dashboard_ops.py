"""The dashboard's operational pages, all read-only: ``/dashboard/health`` (readiness of each
component, the circuit breakers), ``/dashboard/ingestion`` (ingestion's cursor against the
ledger's end, the queues) and ``/dashboard/pending`` (withdrawals, incoming offers, redemptions
and Bitcoin payouts still waiting for something).

Each reads what the API's endpoint for the same thing reads, under the same permission:
readiness is ``GET /ready`` itself, the breakers ``GET /v1/breakers`` (staff), the lag the gauges
``GET /metrics`` computes, the queues ``GET /v1/withdrawals`` and the router's operations (staff
reads)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form
from fastapi.responses import HTMLResponse, RedirectResponse
from prometheus_client.core import Metric

from sluice.api.breakers_schemas import BreakerForceIn, breaker_out
from sluice.api.context import ApiContext
from sluice.api.routes import system
from sluice.api.schemas import withdrawal_out
from sluice.api.security import Caller
from sluice.api.web.dashboard_actions import (
    ROUTER_ADMIN,
    STAFF,
    STAFF_READS,
    act,
    admitted,
    allow,
    show,
)
from sluice.api.web.pages import Page, staff_page
from sluice.domain.amounts import format_amount
from sluice.domain.ledger import Cursor
from sluice.domain.withdrawals import LIVE_STATUSES
from sluice.monitoring.collectors import (
    ISSUANCE_QUEUES,
    ISSUANCE_STATUSES,
    PAYOUT_STATUSES,
    STATE,
    ensure_state,
)
from sluice.services import accounts
from sluice.services.breakers import breaker_report, force_breaker
from sluice.services.btc_payouts import list_payouts
from sluice.services.controls import current_pause
from sluice.services.deposit_worker import list_incoming_offers
from sluice.services.reserves import default_connection

router = APIRouter(include_in_schema=False)

# Rows each table of the pending page shows (the oldest beyond are counted, not listed).
ROWS_MAX = 200
# The gauges the ingestion page shows, in this order, with how a person reads them.
INGESTION_GAUGES = (
    ("sluice_ingestion_cursor_offset", "Cursor (last ledger offset stored)"),
    ("sluice_ledger_end_offset", "Ledger end offset"),
    ("sluice_ingestion_lag_offsets", "Lag (offsets)"),
    ("sluice_ingestion_lag_seconds", "Lag (record time, seconds)"),
    ("sluice_ingestion_cursor_age_seconds", "Time since the cursor's record time (seconds)"),
    ("sluice_bitcoin_watcher_height", "Bitcoin watcher: highest block processed"),
    ("sluice_bitcoin_node_height", "Bitcoin node: tip"),
    ("sluice_bitcoin_watcher_lag_blocks", "Bitcoin watcher lag (blocks)"),
)


def readiness(context: ApiContext) -> tuple[bool, dict[str, dict[str, Any]]]:
    """``GET /ready``'s answer: whether ready, and each component's check."""
    answer = system.ready(context)
    body = json.loads(bytes(answer.body))
    return bool(body["ready"]), dict(body["checks"])


def breakers(context: ApiContext) -> list[dict[str, Any]]:
    """``GET /v1/breakers``'s rows."""
    return [breaker_out(row).model_dump() for row in breaker_report(context.uow)]


@router.get("/dashboard/health")
def health(page: Annotated[Page, Depends(staff_page)]) -> HTMLResponse:
    allow(page, STAFF)
    ready, checks = readiness(page.context)
    return show(
        page,
        "dashboard/health.html",
        live=True,
        ready=ready,
        checks=checks,
        breakers=breakers(page.context),
        pause=current_pause(page.context.uow),
        may_force=admitted(page, ROUTER_ADMIN),
    )


@router.post("/dashboard/health/force")
def force(
    page: Annotated[Page, Depends(staff_page)],
    flow: Annotated[str, Form(max_length=100)] = "",
    state: Annotated[str, Form(max_length=20)] = "",
    reason: Annotated[str, Form(max_length=1000)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> RedirectResponse:
    """``POST /v1/breakers/{name}/force`` (router admin)."""

    def run(caller: Caller) -> str:
        body = BreakerForceIn.model_validate({"state": state, "reason": reason})
        force_breaker(
            page.context.uow,
            flow=flow,
            state=body.state,
            reason=body.reason,
            actor=caller.actor,
            at=page.now,
        )
        return (
            f"The {flow} breaker is forced {body.state}"
            if body.state != "auto"
            else (f"The {flow} breaker is automatic again")
        )

    return act(page, csrf_token, ROUTER_ADMIN, "/dashboard/health", run)


def gauges(context: ApiContext) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The scrape-time gauges as ``/metrics`` would answer them now: name → (labels, value)."""
    ensure_state(context.uow, context.clock)
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    families: Iterable[Metric] = STATE.collect()
    for family in families:
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def stored_cursor(context: ApiContext) -> tuple[str, Cursor | None]:
    """Ingestion's connection for the treasury (on ``[ledger] node``) and its stored cursor."""
    ledger = context.deployment.get("ledger")
    node = ledger.get("node") if isinstance(ledger, dict) else None
    connection = default_connection(context.treasury, node if isinstance(node, str) else None)
    with context.uow() as uow:
        return connection, uow.ingestion.load_cursor(connection)


def _one(found: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float | None:
    values = found.get(name) or []
    return values[0][1] if len(values) == 1 else None


@router.get("/dashboard/ingestion")
def ingestion(page: Annotated[Page, Depends(staff_page)]) -> HTMLResponse:
    allow(page, STAFF)
    found = gauges(page.context)
    figures = [(name, label, _one(found, name)) for name, label in INGESTION_GAUGES]
    depth = {
        (labels["queue"], labels["status"]): v for labels, v in found.get("sluice_queue_depth", [])
    }
    oldest = {
        (labels["queue"], labels["status"]): v
        for labels, v in found.get("sluice_queue_oldest_age_seconds", [])
    }
    queues = [
        {
            "queue": queue,
            "status": status,
            "depth": int(count),
            "oldest_s": oldest.get((queue, status)),
        }
        for (queue, status), count in sorted(depth.items())
    ]
    components = sorted((labels["component"], v == 1) for labels, v in found.get("sluice_up", []))
    connection, cursor = stored_cursor(page.context)
    age_s = (
        (page.now - cursor.record_time).total_seconds()
        if cursor is not None and cursor.record_time is not None
        else None
    )
    return show(
        page,
        "dashboard/ingestion.html",
        live=True,
        connection=connection,
        cursor=cursor,
        cursor_age_s=age_s,
        figures=figures,
        queues=queues,
        components=components,
        lag=_one(found, "sluice_ingestion_lag_offsets"),
    )


def pending_withdrawals(context: ApiContext) -> list[dict[str, Any]]:
    records = accounts.customer_withdrawals(
        context.uow, None, statuses=sorted(LIVE_STATUSES), limit=ROWS_MAX
    )
    return [withdrawal_out(r).model_dump() for r in records]


def pending_offers(context: ApiContext) -> list[dict[str, Any]]:
    offers = list_incoming_offers(context.uow, context.treasury)[:ROWS_MAX]
    return [
        {
            "id": o.instruction.contract_id,
            "customer_id": o.customer_id,
            "sender": o.instruction.transfer.sender,
            "instrument": o.instruction.transfer.instrument.key(),
            "amount": format_amount(o.instruction.transfer.amount),
            "status": o.status,
            "action": o.action,
            "attempts": o.attempts,
            "last_error": o.last_error,
        }
        for o in offers
    ]


def pending_redemptions(context: ApiContext) -> list[dict[str, Any]]:
    kinds = [kind for kind, queue in ISSUANCE_QUEUES.items() if queue == "redemptions"]
    found = []
    with context.uow() as uow:
        for kind in kinds:
            for status in ISSUANCE_STATUSES:
                found.extend(uow.issuance.operations(type=kind, status=status, limit=ROWS_MAX))
    found.sort(key=lambda op: op.created_at)
    return [
        {
            "id": op.id,
            "customer_id": op.customer_id,
            "amount_sats": op.amount_sats,
            "status": op.status,
            "step": op.step,
            "attempts": op.attempts,
            "created_at": op.created_at,
            "last_error": op.last_error,
        }
        for op in found[:ROWS_MAX]
    ]


def pending_payouts(context: ApiContext) -> list[dict[str, Any]]:
    views = [v for v in list_payouts(context.uow, limit=10_000) if v.status in PAYOUT_STATUSES]
    return [v.to_json() for v in views[:ROWS_MAX]]


@router.get("/dashboard/pending")
def pending(page: Annotated[Page, Depends(staff_page)]) -> HTMLResponse:
    allow(page, STAFF_READS)
    return show(
        page,
        "dashboard/pending.html",
        live=True,
        withdrawals=pending_withdrawals(page.context),
        offers=pending_offers(page.context),
        redemptions=pending_redemptions(page.context),
        payouts=pending_payouts(page.context),
        rows_max=ROWS_MAX,
    )
