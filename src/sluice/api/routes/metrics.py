"""Prometheus metrics: ``GET /metrics`` (public, as the access matrix says), in the Prometheus
text format, from the application's registry (:mod:`sluice.monitoring.metrics`)."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from sluice.api.routes.common import Context
from sluice.monitoring.collectors import ensure_state
from sluice.monitoring.metrics import REGISTRY

router = APIRouter(tags=["system"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (public)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "text format"}},
)
def metrics(context: Context) -> Response:
    # A worker thread: collecting reads the database. A failing read shows in sluice_up and
    # sluice_scrape_errors_total; it never fails the scrape.
    ensure_state(context.uow, context.clock)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
