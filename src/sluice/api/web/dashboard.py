"""``/dashboard``: the staff overview — the key figures of each concern, each linking to its own
page under ``/dashboard/`` (``docs/web.md``). A figure the role may not read (its API endpoint
would refuse it) is left out, as its page would be refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from sluice.api.routes import reserves
from sluice.api.security import Caller
from sluice.api.web.dashboard_actions import (
    COMPLIANCE_OVERRIDE,
    STAFF_READS,
    USER_OPERATIONS,
    admitted,
    show,
    visible_pages,
)
from sluice.api.web.dashboard_ops import breakers, readiness
from sluice.api.web.pages import Page, staff_page
from sluice.domain.withdrawals import LIVE_STATUSES
from sluice.services import accounts
from sluice.services.alerts import list_alerts
from sluice.services.approvals import list_approvals
from sluice.services.controls import current_pause
from sluice.services.suspense import list_suspense

router = APIRouter(include_in_schema=False)

# Counted up to this many; beyond, the figure reads "N+".
COUNT_MAX = 500


@dataclass(frozen=True, slots=True)
class Figure:
    id: str
    label: str
    value: str
    href: str
    level: str = ""  # ok, warn or bad: how the figure is coloured


def _count(found: int) -> str:
    return f"{COUNT_MAX}+" if found >= COUNT_MAX else str(found)


def figures(page: Page) -> list[Figure]:
    context = page.context
    out: list[Figure] = []
    pause = current_pause(context.uow)
    out.append(
        Figure(
            "figure-system",
            "System",
            "running" if pause is None else pause.mode,
            "/dashboard/controls",
            "ok" if pause is None else "bad",
        )
    )
    ready, _checks = readiness(context)
    out.append(
        Figure(
            "figure-ready",
            "Readiness",
            "ready" if ready else "not ready",
            "/dashboard/health",
            "ok" if ready else "bad",
        )
    )
    opened = sum(1 for b in breakers(context) if b["state"] != "closed")
    out.append(
        Figure(
            "figure-breakers",
            "Breakers not closed",
            str(opened),
            "/dashboard/health",
            "bad" if opened else "ok",
        )
    )
    alerts = list_alerts(context.uow, status=["open"], limit=1)
    out.append(
        Figure(
            "figure-alerts",
            "Open alerts",
            str(alerts.total),
            "/dashboard/alerts",
            "warn" if alerts.total else "ok",
        )
    )
    waiting = list_approvals(context.uow, status="pending", limit=COUNT_MAX)
    out.append(
        Figure(
            "figure-approvals",
            "Approvals awaiting a signature",
            _count(len(waiting)),
            "/dashboard/approvals",
            "warn" if waiting else "ok",
        )
    )
    if admitted(page, STAFF_READS):
        live = accounts.customer_withdrawals(
            context.uow, None, statuses=sorted(LIVE_STATUSES), limit=COUNT_MAX
        )
        count = _count(len(live))
        out.append(Figure("figure-withdrawals", "Pending withdrawals", count, "/dashboard/pending"))
        out.append(_ratio(page))
    if admitted(page, USER_OPERATIONS):
        items = list_suspense(context.uow, open_only=True, limit=COUNT_MAX)
        out.append(
            Figure(
                "figure-suspense",
                "In suspense",
                _count(len(items)),
                "/dashboard/holds",
                "warn" if items else "ok",
            )
        )
    if admitted(page, COMPLIANCE_OVERRIDE):
        with context.uow() as uow:
            held = uow.compliance.holds(status="held", limit=COUNT_MAX)
            open_reviews = uow.compliance.reviews(open_only=True, limit=COUNT_MAX)
        out.append(
            Figure(
                "figure-holds",
                "Deposits on hold",
                _count(len(held)),
                "/dashboard/holds",
                "warn" if held else "ok",
            )
        )
        out.append(
            Figure(
                "figure-reviews",
                "Open reviews",
                _count(len(open_reviews)),
                "/dashboard/reviews",
                "warn" if open_reviews else "ok",
            )
        )
    return out


def _ratio(page: Page) -> Figure:
    """The lowest reserve ratio of any instrument now (``GET /v1/reserves``)."""
    report = reserves.reserves_now(page.context, Caller(page.principal, STAFF_READS))
    rows = [r for r in report["instruments"] if r.get("ratio_bps") is not None]
    if not rows:
        return Figure("figure-reserves", "Lowest reserve ratio", "—", "/dashboard/reserves")
    worst = min(rows, key=lambda r: r["ratio_bps"])
    level = {"ok": "ok", "warning": "warn"}.get(worst["level"], "bad")
    return Figure(
        "figure-reserves",
        "Lowest reserve ratio",
        f"{worst['ratio_bps'] / 100:.2f} %",
        "/dashboard/reserves",
        level,
    )


@router.get("/dashboard")
def overview(page: Annotated[Page, Depends(staff_page)]) -> HTMLResponse:
    pages = [row for row in visible_pages(page) if row[0] != "/dashboard"]
    return show(page, "dashboard/overview.html", live=True, figures=figures(page), pages=pages)
