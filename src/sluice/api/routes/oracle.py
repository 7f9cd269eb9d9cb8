"""The price oracle over HTTP: each pair's health as ``sluice serve`` last read it."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from sluice.api.context import ApiContext
from sluice.api.routes.common import ERRORS, AnyPrincipal, Context
from sluice.domain.errors import SluiceError
from sluice.services.oracle import OracleService, status_json

router = APIRouter(tags=["oracle"], responses=ERRORS)


class OracleNotConfiguredError(SluiceError):
    """The deployment has no ``[[oracle.feeds]]`` (answered 503)."""

    code = 11
    error = "oracle_not_configured"
    http_status = 503


class RejectionOut(BaseModel):
    pair: str
    source: str | None
    rule: str
    detail: str
    observed: str | None
    at: datetime


class FeedHealthOut(BaseModel):
    pair: str
    kind: str
    health: str | None  # None: not read yet
    source: str | None
    fallback_fee: bool
    price: str | None
    observed_at: datetime | None
    updated_at: datetime | None
    last_rejection: RejectionOut | None


class OracleHealthOut(BaseModel):
    health: str
    feeds: list[FeedHealthOut]


def oracle_of(context: ApiContext) -> OracleService:
    found = context.oracle
    if found is None:
        raise OracleNotConfiguredError(
            "no price oracle: this deployment configures no [[oracle.feeds]]"
        )
    return found


@router.get(
    "/v1/oracle/health",
    response_model=OracleHealthOut,
    summary="The price oracle: each pair's health (healthy, degraded: the fallback in use at "
    "its fee, offline: refused), the price in use and the newest rejection with its rule; 503 "
    "when no feed is configured",
)
def oracle_health(context: Context, _caller: AnyPrincipal) -> OracleHealthOut:
    return OracleHealthOut.model_validate(status_json(oracle_of(context).oracle_status()))
