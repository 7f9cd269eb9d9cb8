"""The ``[reserves]`` section of the deployment file: how often ``sluice serve`` records the
reserve figures and reconciles, the tolerances that class a discrepancy, the reserve-ratio
thresholds that raise alerts, and the secret proof-of-liabilities nonces are derived from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from sluice.config.sections import _Section
from sluice.domain.reserves import Tolerances


class ToleranceConfig(_Section):
    """A difference relative to what our records expect, in basis points (rounded up): up to
    ``minor_bps`` minor, up to ``warning_bps`` a warning, up to ``critical_bps`` critical (which
    halts minting), beyond an emergency (which pauses the system). A surplus is never classed
    worse than ``surplus_max``."""

    minor_bps: Annotated[int, Field(ge=0, le=10_000)] = 1
    warning_bps: Annotated[int, Field(ge=0, le=10_000)] = 10
    critical_bps: Annotated[int, Field(ge=0, le=10_000)] = 100
    surplus_max: Literal["minor", "warning", "critical", "emergency"] = "warning"

    @model_validator(mode="after")
    def _ordered(self) -> ToleranceConfig:
        if not self.minor_bps <= self.warning_bps <= self.critical_bps:
            raise ValueError("tolerances must satisfy minor_bps ≤ warning_bps ≤ critical_bps")
        return self

    def tolerances(self) -> Tolerances:
        return Tolerances(self.minor_bps, self.warning_bps, self.critical_bps, self.surplus_max)


class ReservesConfig(_Section):
    """Reserves, reconciliation and proof of reserves.

    ``reading_interval_s``: how often `sluice serve` records the reserve figures (their
    history); ``reconcile_interval_s``: how often it reconciles (0: only on demand).
    ``ratio_warning_bps`` / ``ratio_critical_bps``: a reserve ratio below these raises a warning
    / critical alert. ``scan_gap``: custody addresses scanned past the highest index issued on
    each branch. ``scan_timeout_s``: how long one custody scan (the node's ``scantxoutset``,
    minutes on a mainnet-sized UTXO set) may take, waiting for another scan included.
    ``por_secret_file``: 32 random bytes the per-customer nonces of proofs of
    liabilities are derived from (default ``<data_dir>/por-secret``, made on first use, mode
    0600; keep it with the database's backups: without it, past snapshots' proofs cannot be
    issued again)."""

    reading_interval_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    reconcile_interval_s: Annotated[float, Field(ge=0, le=7 * 86_400)] = 300.0
    tolerances: ToleranceConfig = ToleranceConfig()
    ratio_warning_bps: Annotated[int, Field(ge=0, le=1_000_000)] = 10_100
    ratio_critical_bps: Annotated[int, Field(ge=0, le=1_000_000)] = 10_000
    scan_gap: Annotated[int, Field(ge=0, le=100_000)] = 20
    scan_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 600.0
    por_secret_file: Path | None = None

    @model_validator(mode="after")
    def _thresholds(self) -> ReservesConfig:
        if self.ratio_critical_bps > self.ratio_warning_bps:
            raise ValueError("ratio_critical_bps must not be above ratio_warning_bps")
        return self
