"""The reserve figures over HTTP, for staff: ``GET /v1/reserves`` (every instrument's supply,
reserves and ratio now, with the block or ledger offset each side was read at) and
``GET /v1/reserves/history`` (the readings kept, newest first).

Both read the Integration DB alone, so they answer whether or not this process has the
independent sources (``ApiContext.reserves``): without it, iSTSi is issuance's instrument (or the
one onboarded ``iSTSi``) and the thresholds are the defaults. The bodies are the CLI's ``--json``
documents (:mod:`sluice.cli.reserves.show` lists their keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Query

from sluice.api.context import ApiContext
from sluice.api.reserves_schemas import ReadingOut, ReserveReportOut
from sluice.api.routes.common import ERRORS, Context, PageParams, StaffReads
from sluice.api.schemas import Page, Rfc3339, page
from sluice.domain.ledger import InstrumentId
from sluice.ports import UnitOfWorkFactory
from sluice.services.reserves import (
    HISTORY_LIMIT_MAX,
    default_connection,
    read_report,
    reading_history,
    reading_json,
    report_json,
    resolve_instrument,
)
from sluice.services.reserves_settings import Clock, ReservesSettings

router = APIRouter(prefix="/v1/reserves", tags=["reserves"], responses=ERRORS)

InstrumentKey = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=700,
        description="the instrument's key (<id>@<admin>), or an id only one instrument has",
    ),
]


@dataclass(frozen=True, slots=True)
class _Reads:
    uow: UnitOfWorkFactory
    clock: Clock
    istsi: InstrumentId | None
    settings: ReservesSettings
    connection: str


def _reads(context: ApiContext) -> _Reads:
    """What the figures are read with: the reserves context when this process has one, else
    the API's own database, clock and issuance."""
    node = _ledger_node(context.deployment)
    reserves = context.reserves
    if reserves is not None:
        return _Reads(
            reserves.uow,
            reserves.clock,
            reserves.istsi,
            reserves.settings,
            default_connection(reserves.treasury, node),
        )
    issuance = context.issuance
    istsi = issuance.context.issuer.instrument if issuance is not None else None
    return _Reads(
        context.uow,
        context.clock,
        istsi,
        ReservesSettings(),
        default_connection(context.treasury, node),
    )


def _ledger_node(deployment: Any) -> str | None:
    """``[ledger] node`` from the deployment's configuration (ingestion's connection is the
    treasury's on that node)."""
    ledger = deployment.get("ledger") if hasattr(deployment, "get") else None
    node = ledger.get("node") if isinstance(ledger, dict) else None
    return node if isinstance(node, str) and node else None


@router.get(
    "",
    response_model=ReserveReportOut,
    response_model_exclude_unset=True,
    summary="Supply, reserves and the reserve ratio per instrument, with their read points",
)
def reserves_now(context: Context, _caller: StaffReads) -> dict[str, Any]:
    reads = _reads(context)
    report = read_report(reads.uow, reads.clock, istsi=reads.istsi, connection=reads.connection)
    return report_json(report, reads.settings)


@router.get(
    "/history",
    response_model=Page[ReadingOut],
    response_model_exclude_unset=True,
    summary="The reserve readings kept, newest first (filter by instrument, since a time)",
)
def reserves_history(
    context: Context,
    paging: PageParams,
    _caller: StaffReads,
    instrument: InstrumentKey = None,
    since: Annotated[
        Rfc3339 | None, Query(description="only readings taken at or after (RFC 3339)")
    ] = None,
) -> dict[str, Any]:
    reads = _reads(context)
    key = resolve_instrument(reads.uow, instrument) if instrument is not None else None
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    wanted = min(paging.offset + paging.limit, HISTORY_LIMIT_MAX)
    found = reading_history(reads.uow, key, since=since, limit=wanted)
    items = [reading_json(r, reads.settings) for r in found[paging.offset :]]
    return page(items, paging.offset, paging.limit)
