"""``sluice reserves reconcile`` (one reconciliation run now), ``sluice reserves
reconciliations`` (the runs kept, newest first) and ``sluice reserves reconciliation RUN_ID``
(one run's report).

``reconcile`` reads every source this process can open, independently of what ingestion and the
watcher stored: the ledger's active contracts (the embedded ledger file, opened for reading, or
the participant, as the other commands open them), the Bitcoin node over the custody descriptor
(``[bitcoin]``, else the sandbox custody of ``sluice btc``), and the issuer's iSTSi supply
(read from issuance's issuer ledger — ``[issuance] control_url`` or the embedded ledger file —
without writing to it). A source this process cannot open is reported
as not read, with the reason. The run is stored and reacted to as a scheduled one would be
(alerts, the minting halt, the emergency pause).

Exit codes of ``reconcile``: 0 when nothing worse than a minor discrepancy was found, 3 when a
warning or worse was, 2 when a source failed to be read (and nothing worse than minor was found)
or the command was refused (bad options, no database, no treasury party).

JSON (a contract; units are integers as decimal strings): a RUN is ``{"id", "trigger"``
(``schedule`` | ``manual``), ``"status"`` (``ok`` | ``discrepancies`` | ``failed``), ``"worst"``
(``minor`` | ``warning`` | ``critical`` | ``emergency`` | null), ``"started_at"``,
``"finished_at"``, ``"sources": {"ledger", "custody", "supply"}`` (each ``{"state"``:
``compared`` | ``not_compared`` | ``not_read`` | ``failed``, ``"reason"``, and the figures read:
see docs/reserves.md), ``"actions"`` (``minting_halted``, ``minting_still_halted``,
``system_paused``, ``system_already_paused``, ``alert:<id>``,
``unchanged_since:<run id>:<count>``…), ``"discrepancies": [{"source", "instrument",
"severity", "expected_units", "actual_units", "difference_units", "message", "details"}…]}``.
``reconcile --json`` and ``reconciliation --json`` print one RUN; ``reconciliations --json`` a
list of RUNs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from sluice import bootstrap
from sluice.cli.common import (
    DbOption,
    JsonOption,
    LedgerOption,
    LedgerUrlOption,
    deployment,
    fail,
    fail_with,
    log_to_stderr,
    note,
    open_database,
    print_json,
    recorded_treasury,
    reserves_sources,
    utc_now,
)
from sluice.cli.reserves.wiring import reserves_app
from sluice.config import DeploymentConfig
from sluice.domain.errors import SluiceError
from sluice.ports.reserves import ReconciliationRun, severity_rank
from sluice.services.reconciliation import (
    get_run,
    list_runs,
    reconcile,
    run_json,
)
from sluice.services.reserves_settings import ReservesContext

# Exit code when a warning or worse was found (2 stays a refusal, as everywhere).
DISCREPANCY_EXIT = 3
SOURCE_FAILED_EXIT = 2


@reserves_app.command("reconcile")
def reserves_reconcile(
    db: DbOption = None,
    ledger: LedgerOption = None,
    ledger_url: LedgerUrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Reconcile now: the journal against the ledger's active contracts, custody outputs against
    the node's UTXO set, iSTSi supply against reserves. Exit 0: nothing worse than minor; 3: a
    warning or worse; 2: a source failed or the command was refused."""
    log_to_stderr()
    config = deployment()
    with ExitStack() as stack:
        ctx = _context(config, stack, db, ledger, ledger_url)
        try:
            run = reconcile(ctx, trigger="manual")
        except SluiceError as exc:
            fail_with(exc)
    _show(run, as_json=as_json)
    if severity_rank(run.worst) >= severity_rank("warning"):
        raise typer.Exit(DISCREPANCY_EXIT)
    if any(s.get("state") == "failed" for s in dict(run.report.get("sources", {})).values()):
        raise typer.Exit(SOURCE_FAILED_EXIT)


@reserves_app.command("reconciliations")
def reserves_reconciliations(
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The reconciliation runs kept, newest first."""
    with _database_context(db) as ctx:
        runs = list_runs(ctx, limit=limit)
    if as_json:
        print_json([run_json(run) for run in runs])
        return
    if not runs:
        note("no reconciliation runs yet")
        return
    for run in runs:
        typer.echo(_headline(run))


@reserves_app.command("reconciliation")
def reserves_reconciliation(
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """One reconciliation run's report: per source what was read and where, and what differed."""
    with _database_context(db) as ctx:
        try:
            run = get_run(ctx, run_id)
        except SluiceError as exc:
            fail_with(exc)
    _show(run, as_json=as_json)


# --- wiring --------------------------------------------------------------------------------------


@contextmanager
def _database_context(db: str | None) -> Iterator[ReservesContext]:
    """A context on the database alone (history reads need no other source)."""
    config = deployment()
    database = open_database(db or config.database_url)
    try:
        yield bootstrap.reserves_context(config, database, treasury="", clock=utc_now)
    finally:
        database.dispose()


def _context(
    config: DeploymentConfig,
    stack: ExitStack,
    db: str | None,
    ledger: Path | None,
    ledger_url: str | None,
) -> ReservesContext:
    """Every source this process can open (:func:`reserves_sources`), each closed by ``stack``;
    refused without a treasury party (the ledger source compares its holdings)."""
    database = open_database(db or config.database_url)
    stack.callback(database.dispose)
    treasury = recorded_treasury(config, database)
    if treasury is None:
        fail("no treasury party: set treasury.party (or SLUICE_TREASURY_PARTY)")
    return reserves_sources(
        config, stack, database, treasury=treasury, ledger=ledger, ledger_url=ledger_url
    )


# --- output --------------------------------------------------------------------------------------


def _headline(run: ReconciliationRun) -> str:
    return (
        f"{run.id}  {run.trigger:<8}  {run.status:<13}  worst {run.worst or '-':<9}  "
        f"{len(run.discrepancies)} discrepancies  finished {run_json(run)['finished_at']}"
    )


def _show(run: ReconciliationRun, *, as_json: bool) -> None:
    body = run_json(run)
    if as_json:
        print_json(body)
        return
    lines = [
        f"reconciliation {run.id} ({run.trigger}): {run.status}, worst {run.worst or 'none'}",
        f"  {body['started_at']} → {body['finished_at']}",
    ]
    for name, source in body["sources"].items():
        lines.append(f"  {name}: {source.get('state')}" + _because(source))
        lines += [f"    {line}" for line in _source_lines(name, source)]
    for found in body["discrepancies"]:
        lines.append(f"  {found['severity']}: [{found['source']}] {found['message']}")
    if body["actions"]:
        lines.append(f"  actions: {', '.join(body['actions'])}")
    typer.echo("\n".join(lines))


def _because(source: dict[str, Any]) -> str:
    reason = source.get("reason")
    return f" ({reason})" if reason else ""


def _source_lines(name: str, source: dict[str, Any]) -> list[str]:
    if source.get("state") in ("not_read", "failed"):
        return []
    if name == "ledger":
        lines = [
            f"ledger offset {source.get('ledger_offset')}, ingestion offset "
            f"{source.get('ingestion_offset')} ({source.get('connection')})"
        ]
        for key, entry in sorted(dict(source.get("instruments") or {}).items()):
            lines.append(
                f"{key}: journal {entry['expected']}, ledger {entry['actual']}"
                + (f" — {entry['severity']}" if entry.get("severity") else "")
            )
        return lines
    chain = dict(source.get("read_at") or {}).get("chain") or dict(source.get("read_at") or {}).get(
        "reserves"
    )
    at = f"block {chain['height']} {chain['block_hash']}" if chain else "?"
    if name == "custody":
        if source.get("state") != "compared":
            return [f"node scanned at {at}"]
        return [
            f"node scanned at {at}: DB {source['expected_units']} sats in "
            f"{source['outputs_db']} outputs, node {source['actual_units']} sats in "
            f"{source['outputs_node']}"
        ]
    return [
        f"supply {source['supply_units']} sats (issuer ledger); reserves "
        f"{source['reserves_units']} sats at {at} with ≥ {source['confirmations_min']} "
        f"confirmations; pending redemptions {source['pending_redemptions_units']}, payouts "
        f"{source['pending_payouts_units']} (DB)"
    ]
