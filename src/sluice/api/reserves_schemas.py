"""Response bodies of the reserve figures (:mod:`sluice.api.routes.reserves`).

They are the documents ``sluice reserves --json`` and ``sluice reserves history --json`` print
(:func:`sluice.services.reserves.reading_json`), field for field: units are integers in the
instrument's smallest unit as decimal strings (they may pass 2^53), amounts decimal strings,
times RFC 3339 UTC. A read point carries only the fields of its source.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sluice.api.schemas import Out


class ReadPointOut(Out):
    source: Literal["chain", "ledger", "db"] = Field(
        description="chain: the deposit watcher's block; ledger: ingestion's cursor; db: the "
        "Integration DB's own records"
    )
    height: int | None = Field(
        default=None, description="chain only: the block's height (null before the first)"
    )
    block_hash: str | None = Field(
        default=None, description="chain only: the block's hash (null before the first)"
    )
    offset: int | None = Field(
        default=None, description="ledger only: the offset ingested (null before the first)"
    )


class ReadingOut(Out):
    id: int | None = Field(description="the stored reading's id; null in a live report")
    instrument: str = Field(description="the instrument's key, <id>@<admin>")
    kind: Literal["istsi", "token"]
    decimals: int = Field(description="the decimals a unit counts in: 8 for iSTSi, 10 for tokens")
    supply_units: str = Field(
        description="what is owed, in units: iSTSi's supply, or a token's liabilities"
    )
    supply: str
    reserves_units: str = Field(
        description="what backs it, in units: confirmed custody less pending payouts (iSTSi), "
        "or the treasury's holdings (tokens)"
    )
    reserves: str
    ratio_bps: int | None = Field(
        description="reserves × 10000 ÷ supply, rounded down (10000 = 100 %); null when nothing "
        "is owed"
    )
    level: Literal["ok", "warning", "critical"] = Field(
        description="the ratio against the configured thresholds"
    )
    read_at: dict[str, ReadPointOut] = Field(
        description="where each side was read: supply, reserves"
    )
    figures: dict[str, str] = Field(description="the breakdown, name → amount")
    taken_at: str


class ThresholdsOut(Out):
    warning_bps: int = Field(description="iSTSi below this: a warning")
    critical_bps: int = Field(description="any instrument below this: critical")
    full_bps: int = Field(description="100 %")


class ReserveReportOut(Out):
    taken_at: str
    thresholds: ThresholdsOut
    instruments: list[ReadingOut] = Field(description="iSTSi first, then tokens by key")
