"""The reconciliation endpoints' documents: a run with its per-source report and its
discrepancies (units are integers as decimal strings, as everywhere on the reserves side)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sluice.api.schemas import Out
from sluice.ports.reserves import ReconciliationRun
from sluice.services.reconciliation import run_json


class DiscrepancyOut(Out):
    source: Literal["ledger", "custody", "supply"]
    instrument: str = Field(description="the instrument's key; BTC for custody; * for a lag")
    severity: Literal["minor", "warning", "critical", "emergency"]
    expected_units: str = Field(description="what our records say")
    actual_units: str = Field(description="what the independent read found")
    difference_units: str = Field(description="actual − expected")
    message: str
    details: dict[str, Any]


class ReconciliationRunOut(Out):
    id: str
    trigger: Literal["schedule", "manual"]
    status: Literal["ok", "discrepancies", "failed"]
    worst: Literal["minor", "warning", "critical", "emergency"] | None
    started_at: str
    finished_at: str
    sources: dict[str, dict[str, Any]] = Field(
        description=(
            "per source (ledger, custody, supply): state (compared, not_compared, not_read, "
            "failed), reason, where each side was read (read_at) and the figures"
        )
    )
    actions: list[str] = Field(
        description=(
            "minting_halted, minting_still_halted, system_paused, system_already_paused, "
            "alert:<id>, unchanged_since:<run id>:<count>"
        )
    )
    discrepancies: list[DiscrepancyOut]


def run_out(run: ReconciliationRun) -> ReconciliationRunOut:
    return ReconciliationRunOut.model_validate(run_json(run))
