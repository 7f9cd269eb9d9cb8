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
see docs/reserves.md), ``"actions"`` (``minting_halted``, ``system_paused``,
``system_already_paused``, ``alert:<id>``…), ``"discrepancies": [{"source", "instrument",
"severity", "expected_units", "actual_units", "difference_units", "message", "details"}…]}``.
``reconcile --json`` and ``reconciliation --json`` print one RUN; ``reconciliations --json`` a
list of RUNs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, TypeVar

import structlog
import typer

from sluice import bootstrap
from sluice.cli.common import (
    DbOption,
    JsonOption,
    deployment,
    fail,
    fail_with,
    note,
    open_database,
    print_json,
    uses_participant,
    utc_now,
)
from sluice.cli.reserves.wiring import reserves_app
from sluice.config import DeploymentConfig
from sluice.domain.errors import SluiceError
from sluice.ports import ActiveContractsReader
from sluice.ports.issuance import IssuerLedger
from sluice.ports.reserves import ReconciliationRun, severity_rank
from sluice.services.ingestion import connection_name
from sluice.services.reconciliation import (
    get_run,
    list_runs,
    reconcile,
    run_json,
)
from sluice.services.reserves import find_istsi
from sluice.services.reserves_settings import ReservesContext

T = TypeVar("T")

# Exit code when a warning or worse was found (2 stays a refusal, as everywhere).
DISCREPANCY_EXIT = 3
SOURCE_FAILED_EXIT = 2

LedgerOption = Annotated[
    Path | None, typer.Option("--ledger", help="The embedded ledger file (default: configured).")
]
LedgerUrlOption = Annotated[
    str | None,
    typer.Option("--ledger-url", help="A participant's JSON API URL (default: configured)."),
]


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
    _log_to_stderr()
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


def _log_to_stderr() -> None:
    """The run's log line on stderr: stdout is for the report (``--json``)."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


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


def _treasury(config: DeploymentConfig, database: bootstrap.Database) -> str:
    from sluice.server.world import TREASURY_KEY

    if config.treasury.party:
        return config.treasury.party
    with database.uow() as uow:
        recorded = uow.withdrawals.control(TREASURY_KEY)
    if not recorded:
        fail("no treasury party: set treasury.party (or SLUICE_TREASURY_PARTY)")
    return recorded


def _context(
    config: DeploymentConfig,
    stack: ExitStack,
    db: str | None,
    ledger: Path | None,
    ledger_url: str | None,
) -> ReservesContext:
    """Every source this process can open, each closed by ``stack``; what cannot be opened is
    left out (reported as not read) with a note on stderr."""
    database = open_database(db or config.database_url)
    stack.callback(database.dispose)
    treasury = _treasury(config, database)
    reader, node, embedded = _ledger(config, database, stack, ledger, ledger_url)
    custody = _opened("Bitcoin custody", lambda: bootstrap.bitcoin_custody(config))
    if custody is not None:
        stack.callback(custody.close)
        if not custody.configured:
            note("custody: the sandbox custody on the embedded chain ([bitcoin] not configured)")
    issuer = _issuer(config, database, stack, embedded)
    base = bootstrap.reserves_context(
        config,
        database,
        treasury=treasury,
        clock=utc_now,
        ledger=reader,
        custody=custody,
        connection=connection_name(treasury, node),
    )
    if issuer is not None:
        base = replace(base, issuer=issuer, istsi=issuer.instrument)
    return base


def _ledger(
    config: DeploymentConfig,
    database: bootstrap.Database,
    stack: ExitStack,
    ledger: Path | None,
    ledger_url: str | None,
) -> tuple[ActiveContractsReader | None, str, Any]:
    """The reader of the ledger's active contracts, the node ingestion's cursor is named by, and
    the embedded ledger (for issuance's issuer, so the file is opened once)."""
    if uses_participant(config, ledger, ledger_url):
        link = _opened(
            "the participant",
            lambda: bootstrap.canton_connection(config, database, participant_url=ledger_url),
        )
        if link is None:
            return None, config.ledger.node, None
        stack.callback(link.close)
        return bootstrap.active_contracts_reader(link), link.node, None
    from sluice.ledger.local.engine import EmbeddedLedger

    path = ledger or config.ledger_path
    node = config.ledger.node
    if not path.exists():
        note(f"ledger: not read (no embedded ledger at {path})")
        return None, node, None
    opened = _opened("the embedded ledger", lambda: EmbeddedLedger.open(str(path), read_only=True))
    if opened is None:
        return None, node, None
    stack.callback(opened.close)
    reader = _opened("the ledger's node", lambda: opened.node_client(node))
    return reader, node, opened


def _issuer(
    config: DeploymentConfig, database: bootstrap.Database, stack: ExitStack, embedded: Any
) -> IssuerLedger | None:
    """The issuer's ledger, for reading iSTSi's supply only: nothing is created or written on
    it (building issuance would create iSTSi where it is missing). iSTSi is the instrument the
    books know (:func:`find_istsi`); its ledger is ``[issuance] control_url`` (a served embedded
    ledger), else the embedded ledger file opened above."""
    from sluice.ledger.local.issuer import EmbeddedIssuerLedger, RemoteIssuerLedger
    from sluice.ledger.local.remote import RemoteLedger

    with database.uow() as uow:
        istsi = find_istsi(
            uow,
            utc_now(),
            instrument_id=config.issuance.instrument_id,
            issuer_party=config.issuance.issuer_party,
        )
    if istsi is None:
        note("supply: not read (no iSTSi instrument in the books: issuance has not run here)")
        return None
    control_url = config.issuance.control_url
    if control_url is not None:
        remote = RemoteLedger(control_url, timeout_s=config.ledger.timeout_s)
        stack.callback(remote.close)
        return RemoteIssuerLedger(remote, istsi.admin, istsi.id)
    if embedded is None:
        note("supply: not read (no issuer ledger: set [issuance] control_url)")
        return None
    return EmbeddedIssuerLedger(embedded, istsi.admin, istsi.id)


def _opened(what: str, open_it: Callable[[], T]) -> T | None:
    """``open_it()``, or None with a note when it cannot be opened: that source is not read."""
    try:
        return open_it()
    except Exception as exc:
        note(f"{what}: not opened ({type(exc).__name__}: {exc}); its source is not read")
        return None


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
