"""Reconciliation: our records against independent reads, on a schedule inside ``sluice serve``
and on demand (``sluice reserves reconcile``, ``POST /v1/reserves/reconcile``).

A run reads every source it has — the ledger's active contracts
(:mod:`sluice.services.reconciliation_checks`), the node's UTXO set over the custody descriptor
and the issuer's supply (:mod:`sluice.services.reconciliation_chain`) — classes each
discrepancy by the configured tolerances, and reacts:

* every discrepancy raises an alert (minor → info, warning → warning, critical and emergency →
  critical);
* the worst at critical or above halts minting (``reconciliation_critical``);
* an emergency also pauses the system (mode ``emergency``), unless it is paused already.

Each run is stored with its report (per source: what was read and where, the figures, why a
source was not read or not compared) and the actions taken. A source that cannot be read is
reported as failed; a run never raises into the serve loop for it.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog

from sluice.domain.deposits import Alert
from sluice.domain.deposits import Severity as AlertSeverity
from sluice.domain.errors import NotFoundError
from sluice.domain.ledger import format_timestamp
from sluice.ports.reserves import (
    Discrepancy,
    ReconciliationRun,
    RunStatus,
    RunTrigger,
    Severity,
    severity_rank,
    worst,
)
from sluice.services import controls
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.mint_guard import halt_minting_in
from sluice.services.reconciliation_chain import check_custody, check_supply, read_chain
from sluice.services.reconciliation_checks import SourceCheck, check_ledger, details_text
from sluice.services.reserves_settings import ReservesContext

log = structlog.get_logger("sluice.reconciliation")

ACTOR = "reconciliation"
HALT_KIND = "reconciliation_critical"
ALERT_SEVERITY: dict[Severity, AlertSeverity] = {
    "minor": "info",
    "warning": "warning",
    "critical": "critical",
    "emergency": "critical",
}


def _confirmations_min(ctx: ReservesContext) -> tuple[int, str]:
    """Custody's ``confirmations_min``, else (a context built without custody's settings) the
    default, said so in the report."""
    if ctx.confirmations_min is not None:
        return ctx.confirmations_min, "custody"
    return BitcoinSettings().confirmations_min, "default"


# --- a run ---------------------------------------------------------------------------------------


def _status(checks: Sequence[SourceCheck]) -> RunStatus:
    if any(check.discrepancies for check in checks):
        return "discrepancies"
    if any(check.state == "failed" for check in checks):
        return "failed"
    return "ok"


def new_run_id(at: datetime) -> str:
    stamp = at.strftime("%Y%m%dT%H%M%S")
    return f"recon-{stamp}-{secrets.token_hex(4)}"


def reconcile(ctx: ReservesContext, *, trigger: RunTrigger) -> ReconciliationRun:
    """Read every source, compare, react and store the run; answers it."""
    started = ctx.clock()
    run_id = new_run_id(started)
    confirmations_min, confirmations_from = _confirmations_min(ctx)
    ledger = check_ledger(ctx, ctx.connection, started)
    chain = read_chain(ctx)
    checks = [ledger, check_custody(ctx, chain), check_supply(ctx, chain, confirmations_min)]
    if checks[2].state in ("compared", "not_compared"):
        checks[2].report["confirmations_min_from"] = confirmations_from
    found = [d for check in checks for d in check.discrepancies]
    the_worst = worst(d.severity for d in found)
    finished = ctx.clock()
    actions = _pause_if_emergency(ctx, run_id, the_worst, found, finished)
    alerts = [_alert(run_id, n, d) for n, d in enumerate(found, start=1)]
    actions += [f"alert:{alert.id}" for alert in alerts]
    halting = severity_rank(the_worst) >= severity_rank("critical")
    if halting:
        actions.insert(0, "minting_halted")
    report = {"sources": {check.source: check.as_json() for check in checks}}
    run = ReconciliationRun(
        id=run_id,
        trigger=trigger,
        status=_status(checks),
        started_at=started,
        finished_at=finished,
        worst=the_worst,
        report=report,
        actions=tuple(actions),
        discrepancies=tuple(found),
    )
    with ctx.uow() as uow:
        uow.reserves.add_alerts(alerts, finished)
        if halting:
            halt_minting_in(
                uow,
                reason=f"reconciliation run {run_id} found a {the_worst} discrepancy",
                kind=HALT_KIND,
                details={"run_id": run_id, "worst": str(the_worst), "sources": _sources(found)},
                at=finished,
                actor=ACTOR,
                alert_id=f"{run_id}:halt",
            )
        uow.reserves.add_run(run)
        uow.commit()
    log.info(
        "reconciliation run",
        run_id=run_id,
        trigger=trigger,
        status=run.status,
        worst=the_worst,
        discrepancies=len(found),
        states={check.source: check.state for check in checks},
    )
    return run


def _sources(found: Sequence[Discrepancy]) -> str:
    return ",".join(sorted({d.source for d in found}))


def _alert(run_id: str, number: int, found: Discrepancy) -> Alert:
    return Alert(
        id=f"{run_id}:{number}",
        severity=ALERT_SEVERITY[found.severity],
        kind=f"reconciliation_{found.source}",
        message=f"reconciliation {found.severity}: {found.message}",
        details={
            "run_id": run_id,
            "source": found.source,
            "instrument": found.instrument,
            "severity": found.severity,
            "expected_units": str(found.expected_units),
            "actual_units": str(found.actual_units),
            **details_text(found.details),
        },
    )


def _pause_if_emergency(
    ctx: ReservesContext,
    run_id: str,
    the_worst: Severity | None,
    found: Sequence[Discrepancy],
    at: datetime,
) -> list[str]:
    """An emergency pauses the system (before the run is stored, so that a failure to store it
    leaves the system paused all the same); one already paused is left as it is."""
    if the_worst != "emergency":
        return []
    if controls.current_pause(ctx.uow) is not None:
        return ["system_already_paused"]
    controls.pause(
        ctx.uow,
        mode="emergency",
        reason=f"reconciliation run {run_id}: emergency discrepancy in {_sources(found)}",
        actor=ACTOR,
        at=at,
    )
    return ["system_paused"]


# --- reads ---------------------------------------------------------------------------------------


def list_runs(ctx: ReservesContext, *, limit: int = 20) -> list[ReconciliationRun]:
    with ctx.uow() as uow:
        return uow.reserves.runs(limit=limit)


def get_run(ctx: ReservesContext, run_id: str) -> ReconciliationRun:
    with ctx.uow() as uow:
        run = uow.reserves.run(run_id)
    if run is None:
        raise NotFoundError(f"no reconciliation run {run_id}")
    return run


def discrepancy_json(found: Discrepancy) -> dict[str, Any]:
    return {
        "source": found.source,
        "instrument": found.instrument,
        "severity": found.severity,
        "expected_units": str(found.expected_units),
        "actual_units": str(found.actual_units),
        "difference_units": str(found.difference_units),
        "message": found.message,
        "details": dict(found.details),
    }


def run_json(run: ReconciliationRun) -> dict[str, Any]:
    """A run as the CLI's ``--json`` and the API answer it."""
    return {
        "id": run.id,
        "trigger": run.trigger,
        "status": run.status,
        "worst": run.worst,
        "started_at": format_timestamp(run.started_at),
        "finished_at": format_timestamp(run.finished_at),
        "sources": dict(dict(run.report).get("sources", {})),
        "actions": list(run.actions),
        "discrepancies": [discrepancy_json(d) for d in run.discrepancies],
    }
