"""The circuit breakers endpoints' bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from sluice.api.schemas import Body, Out, Reason
from sluice.domain.ledger import parse_timestamp


class BreakerSettingsOut(Out):
    window: int = Field(description="calls the failure rate is computed over")
    min_calls: int = Field(description="calls in the window before the breaker may open")
    failure_rate: float = Field(description="share of failed calls that opens it (0.5: 50 %)")
    open_s: float = Field(description="seconds it stays open before letting probes through")
    probes: int = Field(description="calls let through half-open; all must succeed to close")


class BreakerOut(Out):
    """One flow's breaker as the serving process sees it."""

    flow: str
    description: str
    state: Literal["closed", "open", "half_open"]
    forced: Literal["open", "closed"] | None = Field(
        description="the operator's forced state; null: automatic"
    )
    forced_by: str | None
    forced_reason: str | None
    forced_at: datetime | None
    calls: int = Field(description="calls in the window")
    failures: int = Field(description="failed calls in the window")
    failure_rate: float
    open_remaining_s: float | None = Field(description="seconds before probes, while open")
    opened_count: int = Field(description="times it opened since the process started")
    settings: BreakerSettingsOut


class BreakerForceIn(Body):
    state: Literal["open", "closed", "auto"] = Field(
        description="open: refuse every call; closed: let every call through; auto: back to "
        "the automatic state"
    )
    reason: Reason


def breaker_out(row: dict[str, Any]) -> BreakerOut:
    forced_at = row["forced_at"]
    return BreakerOut(
        **{
            **row,
            "forced_at": parse_timestamp(forced_at) if forced_at else None,
            "settings": BreakerSettingsOut(**row["settings"]),
        }
    )
