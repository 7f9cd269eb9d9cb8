"""Reconciliation: our records against independent reads, on a schedule inside ``sluice serve``
and on demand (``sluice reserves reconcile``, ``POST /v1/reserves/reconcile``).

A run reads every source it has — the ledger's active contracts
(:mod:`sluice.services.reconciliation_checks`), the node's UTXO set over the custody descriptor
and the issuer's supply (:mod:`sluice.services.reconciliation_chain`) — classes each
discrepancy by the configured tolerances, and reacts:

* every discrepancy raises an alert (minor → info, warning → warning, critical and emergency →
  critical);
* the worst at critical or above halts minting (``reconciliation_critical``);
* an emergency also pauses the system (mode ``emergency``), unless it is in an emergency pause
  already (another pause becomes the emergency);
* a finding identical to one of the previous run's is recorded but not alerted again, nor its
  halt while minting is still halted (:func:`_repeated`);
* a source left unchecked (not compared or failed) for too long raises a
  ``reconciliation_stale`` warning once per stale period (:func:`stale_alerts`).

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
from sluice.domain.events import Event, new_event
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
from sluice.services.events import emit_all
from sluice.services.mint_guard import halt_minting_in
from sluice.services.reconciliation_chain import check_custody, check_supply, read_chain
from sluice.services.reconciliation_checks import SourceCheck, check_ledger, details_text
from sluice.services.reserves_settings import ReservesContext

log = structlog.get_logger("sluice.reconciliation")

ACTOR = "reconciliation"
HALT_KIND = "reconciliation_critical"
# A source left unchecked (not compared, or failed) for longer than STALE_INTERVALS scheduled
# runs, and at least STALE_BOUND_MIN_S, raises a warning alert of STALE_KIND (no setting of its
# own: [reserves] has none for it). Looked for in the newest STALE_RUNS_LOOKED_AT stored runs.
STALE_KIND = "reconciliation_stale"
STALE_BOUND_MIN_S = 900.0
STALE_INTERVALS = 3
STALE_RUNS_LOOKED_AT = 100
UNCHECKED = ("not_compared", "failed")
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
    halting = severity_rank(the_worst) >= severity_rank("critical")
    report = {"sources": {check.source: check.as_json() for check in checks}}
    with ctx.uow() as uow:
        earlier = uow.reserves.runs(limit=STALE_RUNS_LOOKED_AT)
        repeated = _repeated(earlier[0] if earlier else None, found)
        alerts = [_alert(run_id, n, d) for n, d in enumerate(found, start=1) if n not in repeated]
        alerts += stale_alerts(earlier, checks, finished, stale_bound_s(ctx))
        # The same critical findings as the previous run, with minting still halted: the halt
        # stays in force without a new alert and record each run.
        halt_again = halting and (
            any(
                n not in repeated and severity_rank(d.severity) >= severity_rank("critical")
                for n, d in enumerate(found, start=1)
            )
            or not uow.issuance.minting_state().minting_halted
        )
        if halting:
            actions.insert(0, "minting_halted" if halt_again else "minting_still_halted")
        actions += [f"alert:{alert.id}" for alert in alerts]
        if repeated and earlier:
            actions.append(f"unchanged_since:{earlier[0].id}:{len(repeated)}")
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
        uow.reserves.add_alerts(alerts, finished)
        if halt_again:
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
        emit_all(uow, [run_event(run)])
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


def _finding(found: Discrepancy) -> tuple[str, str, str, int, int]:
    return (
        found.source,
        found.instrument,
        found.severity,
        found.expected_units,
        found.actual_units,
    )


def _repeated(previous: ReconciliationRun | None, found: Sequence[Discrepancy]) -> set[int]:
    """The numbers (from 1) of the findings the previous run made identically (same source,
    instrument, severity, expected and actual): a persistent discrepancy is alerted once, not
    at every run; any change in it is a new finding."""
    if previous is None:
        return set()
    before = {_finding(d) for d in previous.discrepancies}
    return {n for n, d in enumerate(found, start=1) if _finding(d) in before}


# --- sources left unchecked -----------------------------------------------------------------------


def stale_bound_s(ctx: ReservesContext) -> float:
    """How long a source may go without being compared before it is a warning:
    :data:`STALE_INTERVALS` scheduled runs, and at least :data:`STALE_BOUND_MIN_S`."""
    return max(STALE_BOUND_MIN_S, STALE_INTERVALS * ctx.settings.reconcile_interval_s)


def _state(run: ReconciliationRun, source: str) -> Any:
    return (dict(dict(run.report).get("sources", {})).get(source) or {}).get("state")


def stale_alerts(
    earlier: Sequence[ReconciliationRun],
    checks: Sequence[SourceCheck],
    now: datetime,
    bound_s: float,
    looked_at: int = STALE_RUNS_LOOKED_AT,
) -> list[Alert]:
    """A warning per source not compared (not compared or failed) in this run nor in the
    stored runs since it last was, for longer than ``bound_s``: a watcher always a block
    behind, a node whose scan always fails, a ledger never at ingestion's offset leave the
    source unchecked, which no discrepancy says. Runs where the source was not read (a process
    without it) neither end nor extend the period. Raised once per stale period: not when a run
    since the last compared one raised it (its actions list it); its id is of the last compared
    run (else of the first stored run that did not compare it; when none of the ``looked_at``
    runs compared it, of the day: a daily reminder)."""
    alerts: list[Alert] = []
    for check in checks:
        if check.state not in UNCHECKED:
            continue
        last_compared: ReconciliationRun | None = None
        first_unchecked: ReconciliationRun | None = None
        raised = False  # a run of this period raised it already (listed in its actions)
        prefix = f"alert:{STALE_KIND}:{check.source}:"
        for run in earlier:  # newest first
            state = _state(run, check.source)
            if state == "compared":
                last_compared = run
                break
            raised = raised or any(action.startswith(prefix) for action in run.actions)
            if state in UNCHECKED:
                first_unchecked = run
        if raised:
            continue
        if last_compared is not None:
            since, anchor = last_compared.finished_at, f"after:{last_compared.id}"
        elif first_unchecked is not None and len(earlier) < looked_at:
            since, anchor = first_unchecked.started_at, f"since:{first_unchecked.id}"
        elif first_unchecked is not None:
            # Unchecked in every run looked at: the run that raised it may be older than them,
            # and the first of them changes at every run; a reminder at most once a day.
            since, anchor = first_unchecked.started_at, f"still:{now:%Y-%m-%d}"
        else:
            continue  # this run is the first not to compare it
        seconds = int((now - since).total_seconds())
        if seconds <= bound_s:
            continue
        what = (
            f"since run {last_compared.id}"
            if last_compared is not None
            else f"in the {len(earlier)} stored runs looked at"
        )
        alerts.append(
            Alert(
                id=f"{STALE_KIND}:{check.source}:{anchor}",
                severity="warning",
                kind=STALE_KIND,
                message=(
                    f"reconciliation has not compared {check.source} {what} ({seconds} s, "
                    f"bound {int(bound_s)} s); now {check.state}: {check.reason}"
                ),
                details={
                    "source": check.source,
                    "state": check.state,
                    "reason": str(check.reason),
                    "last_compared_run": last_compared.id if last_compared else "",
                    "seconds": str(seconds),
                    "bound_s": str(int(bound_s)),
                },
            )
        )
    return alerts


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
    leaves the system paused all the same); one already in an emergency pause is left as it
    is, another pause becomes the emergency."""
    if the_worst != "emergency":
        return []
    current = controls.current_pause(ctx.uow)
    if current is not None and current.mode == "emergency":
        return ["system_already_paused"]
    # Any other pause (an operator's maintenance, say) is raised to an emergency: a resume
    # meant to end the maintenance must not lift it unawares.
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


def run_event(run: ReconciliationRun) -> Event:
    """``reconciliation_completed`` for a stored run (aggregate id the run's id)."""
    found = run.discrepancies
    return new_event(
        "reconciliation_completed",
        run.id,
        {
            "run_id": run.id,
            "trigger": run.trigger,
            "status": run.status,
            "worst": run.worst,
            "started_at": format_timestamp(run.started_at),
            "finished_at": format_timestamp(run.finished_at),
            "states": {
                str(source): str(dict(check).get("state"))
                for source, check in dict(dict(run.report).get("sources", {})).items()
            },
            "discrepancies": len(found),
            "discrepancy_sources": sorted({str(d.source) for d in found}),
            "actions": list(run.actions),
        },
        at=run.finished_at,
    )


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
