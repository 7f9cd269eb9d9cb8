"""``/dashboard/reserves``: supply against reserves per instrument now, the reserve ratio over
time as a chart drawn on the server (an SVG in the page: no script, so it shows with scripts
off), and the reconciliation runs with a button to run one now.

The figures are ``GET /v1/reserves`` and ``GET /v1/reserves/history`` (staff reads), the runs
``GET /v1/reserves/reconciliations`` (auditors: compliance override or router admin), and the
button ``POST /v1/reserves/reconcile`` (router admin): the pages call those routes' own
functions, so they read, and a run reacts, exactly as over the API."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form
from fastapi.responses import HTMLResponse, RedirectResponse

from sluice.api.routes import reconciliation, reserves
from sluice.api.routes.common import PAGE_LIMIT_MAX, Paging
from sluice.api.security import Caller
from sluice.api.web.dashboard_actions import (
    AUDIT_READERS,
    ROUTER_ADMIN,
    STAFF_READS,
    act,
    admitted,
    allow,
    show,
)
from sluice.api.web.pages import Page, staff_page
from sluice.domain.errors import SluiceError
from sluice.domain.ledger import parse_timestamp
from sluice.services.reconciliation import reconcile

router = APIRouter(include_in_schema=False)

PATH = "/dashboard/reserves"
RUNS_SHOWN = 20
# The chart's drawing area, in the SVG's own units (it scales to the page's width).
WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 28


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float
    taken_at: str
    percent: float


@dataclass(frozen=True, slots=True)
class Chart:
    """One instrument's ratio over time, laid out for the SVG template."""

    instrument: str
    points: tuple[Point, ...]
    y_ticks: tuple[tuple[float, str], ...]  # (y, label)
    x_ticks: tuple[tuple[float, str], ...]
    thresholds: tuple[tuple[float, str, str], ...]  # (y, label, css class)

    @property
    def polyline(self) -> str:
        return " ".join(f"{p.x:.1f},{p.y:.1f}" for p in self.points)


def ratio_chart(
    instrument: str, readings: Sequence[dict[str, Any]], thresholds: dict[str, int]
) -> Chart | None:
    """The chart of ``readings`` (one instrument's, any order; those owing nothing are left out),
    with the warning and critical thresholds drawn across; None with no reading to draw."""
    rows = sorted(
        (
            (parse_timestamp(r["taken_at"]), int(r["ratio_bps"]) / 100)
            for r in readings
            if r.get("ratio_bps") is not None
        ),
        key=lambda row: row[0],
    )
    if not rows:
        return None
    lines = [
        (thresholds["warning_bps"] / 100, "warning", "chart-warning"),
        (thresholds["critical_bps"] / 100, "critical", "chart-critical"),
    ]
    values = [percent for _, percent in rows] + [value for value, _, _ in lines]
    low, high = min(values), max(values)
    margin = max((high - low) * 0.1, 0.5)
    low, high = low - margin, high + margin
    first, last = rows[0][0], rows[-1][0]
    span_s = (last - first).total_seconds() or 1.0
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(at: datetime) -> float:
        if len(rows) == 1:
            return LEFT + inner_w / 2
        return LEFT + (at - first).total_seconds() / span_s * inner_w

    def y_of(percent: float) -> float:
        return TOP + (high - percent) / (high - low) * inner_h

    points = tuple(
        Point(x_of(at), y_of(percent), at.strftime("%Y-%m-%d %H:%M:%S"), percent)
        for at, percent in rows
    )
    y_ticks = tuple((y_of(v), f"{v:.1f} %") for v in (low + (high - low) * i / 4 for i in range(5)))
    x_ticks: tuple[tuple[float, str], ...] = ((LEFT, first.strftime("%m-%d %H:%M")),)
    if len(rows) > 1:
        x_ticks += ((LEFT + inner_w, last.strftime("%m-%d %H:%M")),)
    return Chart(
        instrument,
        points,
        y_ticks,
        x_ticks,
        tuple((y_of(v), f"{label} {v:.1f} %", css) for v, label, css in lines),
    )


def _history(page: Page, caller: Caller) -> list[dict[str, Any]]:
    answer = reserves.reserves_history(page.context, Paging(0, PAGE_LIMIT_MAX), caller, None, None)
    return list(answer["items"])


def _runs(page: Page) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The latest runs, or None and why not (not this role's to read, or not configured)."""
    if not admitted(page, AUDIT_READERS):
        return None, "Reconciliation reports are read by compliance officers and router admins."
    caller = Caller(page.principal, AUDIT_READERS)
    try:
        answer = reconciliation.get_reconciliations(page.context, Paging(0, RUNS_SHOWN), caller)
    except SluiceError as exc:
        return None, str(exc)
    return [run.model_dump() for run in answer["items"]], None


@router.get(PATH)
def reserves_page(page: Annotated[Page, Depends(staff_page)]) -> HTMLResponse:
    caller = allow(page, STAFF_READS)
    report = reserves.reserves_now(page.context, caller)
    history = _history(page, caller)
    charts = []
    for key in sorted({r["instrument"] for r in history}):
        chart = ratio_chart(
            key, [r for r in history if r["instrument"] == key], report["thresholds"]
        )
        if chart is not None:
            charts.append(chart)
    runs, runs_note = _runs(page)
    return show(
        page,
        "dashboard/reserves.html",
        report=report,
        charts=charts,
        history=history[:50],
        runs=runs,
        runs_note=runs_note,
        may_reconcile=admitted(page, ROUTER_ADMIN) and page.context.reserves is not None,
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        bottom=HEIGHT - BOTTOM,
    )


@router.post(f"{PATH}/reconcile")
def reconcile_now(
    page: Annotated[Page, Depends(staff_page)],
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> RedirectResponse:
    def run(_caller: Caller) -> str:
        done = reconcile(reconciliation.reserves_of(page.context), trigger="manual")
        return f"Reconciliation {done.id}: {done.status}"

    return act(page, csrf_token, ROUTER_ADMIN, PATH, run)
