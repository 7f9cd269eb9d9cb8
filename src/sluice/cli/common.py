"""What every command group shares: the common options, the output and error helpers, the
configuration named by the root ``--config``, and the wiring of databases, ledgers, the KYC
registry and the reserves side's sources from the deployment configuration."""

from __future__ import annotations

import dataclasses
import getpass
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn, TypeVar

import structlog
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import ArgumentError

from sluice import bootstrap
from sluice.config import ConfigError, DeploymentConfig, Settings, load_config
from sluice.domain.amounts import format_amount, parse_amount
from sluice.domain.compliance import Profile
from sluice.domain.errors import InvalidInputError, SluiceError
from sluice.domain.ledger import check_party_id, format_timestamp
from sluice.domain.withdrawals import Withdrawal
from sluice.ports import ActiveContractsReader
from sluice.ports.issuance import IssuerLedger
from sluice.screening import ListedSanctions
from sluice.services.compliance import KycRegistry
from sluice.services.ingestion import IngestionProgress, connection_name
from sluice.services.reserves import find_istsi
from sluice.services.reserves_settings import ReservesContext
from sluice.services.withdrawals import WithdrawalSettings

T = TypeVar("T")

err = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Integration DB URL (sqlite:///path or postgresql://…)."),
]
TreasuryOption = Annotated[
    str | None,
    typer.Option("--treasury", help="Treasury party (default: SLUICE_TREASURY_PARTY)."),
]
LedgerOption = Annotated[
    Path | None,
    typer.Option("--ledger", help="Embedded ledger file (default: data/ledger.db)."),
]
LedgerUrlOption = Annotated[
    str | None,
    typer.Option(
        "--ledger-url",
        help="A participant's JSON Ledger API (a Canton node, or `sluice ledger serve`); "
        "default: the configuration's ledger.participant_url.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]

ActorOption = Annotated[
    str | None,
    typer.Option(
        "--actor",
        help="Who is acting, for the audit trail (default: SLUICE_ACTOR, else the login name).",
    ),
]

SandboxClockOption = Annotated[
    bool,
    typer.Option(
        "--sandbox-clock",
        help="Take the time from `sluice ledger serve`'s sandbox clock (needs --ledger-url) "
        "instead of the system's.",
    ),
]


_config_file: Path | None = None


def configure(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="SLUICE_CONFIG",
            help="Deployment configuration (TOML); environment variables override it.",
        ),
    ] = None,
) -> None:
    """sluice: deposits, withdrawals and compliance between an exchange and its ledgers."""
    global _config_file
    _config_file = config


def deployment() -> DeploymentConfig:
    """The validated deployment configuration (file + environment); exits listing every problem."""
    try:
        return load_config(_config_file)
    except ConfigError as exc:
        fail(str(exc))


# --- errors and output -----------------------------------------------------------------------


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, then exit (2: the input was refused)."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


def fail_with(exc: SluiceError) -> NoReturn:
    """``error <code> <name>: message`` on one line, exit 2."""
    err.print(
        f"[bold red]error {exc.code} {exc.error}:[/] {escape(str(exc))}",
        soft_wrap=True,
        highlight=False,
    )
    raise typer.Exit(2)


def note(message: str) -> None:
    err.print(escape(message), soft_wrap=True, highlight=False)


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def print_table(table: Table) -> None:
    # Made per call so that COLUMNS set by the caller's environment is honoured.
    Console(highlight=False).print(table)


def timestamp_or_none(value: datetime | None) -> str | None:
    return format_timestamp(value) if value is not None else None


def short_amount(value: Decimal) -> str:
    """An amount for people: exact, without trailing zeros."""
    return f"{value.normalize():f}"


@contextmanager
def ingestion_progress(label: str, total: int | None = None) -> Iterator[Any]:
    """A progress bar on stderr for long ingestion work; returns the on-batch callback."""
    columns = [
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} updates"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(label, total=total)

        def on_batch(progress: IngestionProgress) -> None:
            bar.update(task, completed=progress.transactions + progress.checkpoints)

        yield on_batch


@contextmanager
def stop_signals() -> Iterator[Callable[[], bool]]:
    """SIGTERM and Ctrl-C ask a loop to stop after its current round (yields "was it asked?");
    the previous handlers come back afterwards."""
    requested = False

    def request(_signum: int, _frame: FrameType | None) -> None:
        nonlocal requested
        requested = True

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield lambda: requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


# --- wiring from the embedded defaults ---------------------------------------------------------


def open_database(db: str | None, settings: Settings | None = None) -> bootstrap.Database:
    url = db or (settings or Settings.from_environment()).database_url
    try:
        return bootstrap.database(url)
    except ArgumentError:
        fail("--db is not a database URL (expected sqlite:///path or postgresql://…)")


def treasury_party(option: str | None, settings: Settings) -> str:
    party = option or settings.treasury_party
    if not party:
        fail("no treasury party: pass --treasury or set SLUICE_TREASURY_PARTY")
    try:
        return check_party_id(party)
    except InvalidInputError as exc:
        fail_with(exc)


def uses_participant(config: DeploymentConfig, ledger: Path | None, ledger_url: str | None) -> bool:
    """Whether a command talks to a participant node (``--ledger-url``, or a configured one and
    no ``--ledger`` file) rather than to the embedded ledger file."""
    return ledger_url is not None or (ledger is None and config.ledger.kind == "canton")


def current_time(ledger: Path | None, ledger_url: str | None, sandbox_clock: bool) -> datetime:
    """What time it is for deadlines (``trec_tgt``): the served sandbox's clock, the system's
    against a participant node, else the embedded ledger file's."""
    if sandbox_clock:
        from sluice.ledger.local.remote import RemoteLedger

        if ledger_url is None:
            fail("--sandbox-clock needs --ledger-url (a `sluice ledger serve` URL)")
        remote = RemoteLedger(sandbox_base(ledger_url))
        try:
            return remote.time()
        except SluiceError as exc:
            fail_with(exc)
        finally:
            remote.close()
    config = deployment()
    if uses_participant(config, ledger, ledger_url):
        return datetime.now(UTC)
    return ledger_time_or_now(ledger or config.ledger_path)


def ledger_time_or_now(path: Path) -> datetime:
    """The embedded ledger's time when its file exists (record times are what ``trec_tgt`` is
    compared with), else the wall clock in UTC."""
    from sluice.ledger.local.engine import EmbeddedLedger

    if not path.exists():
        return datetime.now(UTC)
    embedded = EmbeddedLedger.open(str(path), read_only=True)
    try:
        return embedded.time()
    finally:
        embedded.close()


def withdrawal_settings() -> WithdrawalSettings:
    """:class:`WithdrawalSettings`, each overridable as ``SLUICE_WITHDRAWAL_<NAME>`` (for example
    ``SLUICE_WITHDRAWAL_TREC_SPAN_S=300``)."""
    defaults = WithdrawalSettings()
    changes: dict[str, Any] = {}
    for item in dataclasses.fields(WithdrawalSettings):
        variable = f"SLUICE_WITHDRAWAL_{item.name.upper()}"
        text = os.environ.get(variable, "").strip()
        if not text:
            continue
        default = getattr(defaults, item.name)
        value: object
        try:
            if isinstance(default, Decimal):
                value = parse_amount(text, field=variable)
            elif isinstance(default, int):
                value = int(text)
            else:
                value = float(text)
                if not math.isfinite(value):
                    raise ValueError(text)
        except ValueError:
            fail(f"{variable}={text!r} is not a valid {type(default).__name__}")
        changes[item.name] = value
    try:
        return dataclasses.replace(defaults, **changes)
    except InvalidInputError as exc:
        fail_with(exc)


def open_ledger(
    config: DeploymentConfig,
    database: bootstrap.Database,
    ledger: Path | None,
    ledger_url: str | None,
    node: str | None,
    *,
    writable: bool,
    clock: Callable[[], datetime] | None = None,
) -> bootstrap.LedgerConnection:
    """The ledger a command works on: ``--ledger-url`` (or a configured participant) through the
    Canton client, else the embedded ledger file."""
    if uses_participant(config, ledger, ledger_url):
        return bootstrap.canton_connection(
            config, database, participant_url=ledger_url, clock=clock
        )
    path = ledger or config.ledger_path
    return bootstrap.embedded_connection(path, node or config.ledger.node, writable=writable)


def sandbox_base(participant_url: str) -> str:
    """The base URL of `sluice ledger serve` from one of its participant URLs."""
    base, _, _node = participant_url.rstrip("/").partition("/nodes/")
    return base


# --- the reserves side's sources ----------------------------------------------------------------


def recorded_treasury(config: DeploymentConfig, database: bootstrap.Database) -> str | None:
    """The treasury party: ``treasury.party``, else the one an embedded world recorded in the
    DB; None when neither is known."""
    from sluice.server.world import TREASURY_KEY

    if config.treasury.party:
        return config.treasury.party
    with database.uow() as uow:
        recorded = uow.withdrawals.control(TREASURY_KEY)
    return recorded or None


def reserves_sources(
    config: DeploymentConfig,
    stack: ExitStack,
    database: bootstrap.Database,
    *,
    treasury: str,
    ledger: Path | None,
    ledger_url: str | None,
) -> ReservesContext:
    """The reserves context on every source this process can open, each closed by ``stack``:
    the ledger's active contracts (the embedded ledger file opened for reading, or the
    participant), Bitcoin custody (``[bitcoin]``, else the sandbox custody) and the issuer's
    ledger for iSTSi's supply. What cannot be opened is left out — the reserves side reports it
    as not read — with a note on stderr; the ledger is not read without a ``treasury`` party."""
    reader, node, embedded = _reserves_ledger(config, database, stack, ledger, ledger_url)
    if reader is not None and not treasury:
        note("ledger: not read (no treasury party: set treasury.party)")
        reader = None
    custody = _opened("Bitcoin custody", lambda: bootstrap.bitcoin_custody(config))
    if custody is not None:
        stack.callback(custody.close)
        if not custody.configured:
            note("custody: the sandbox custody on the embedded chain ([bitcoin] not configured)")
    issuer = _reserves_issuer(config, database, stack, embedded)
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
        base = dataclasses.replace(base, issuer=issuer, istsi=issuer.instrument)
    return base


def _reserves_ledger(
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


def _reserves_issuer(
    config: DeploymentConfig, database: bootstrap.Database, stack: ExitStack, embedded: Any
) -> IssuerLedger | None:
    """The issuer's ledger, for reading iSTSi's supply only: nothing is created or written on
    it (building issuance would create iSTSi where it is missing). iSTSi is the instrument the
    books know (:func:`~sluice.services.reserves.find_istsi`); its ledger is ``[issuance]
    control_url`` (a served embedded ledger), else the embedded ledger file opened above."""
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


# --- the KYC registry and who is acting --------------------------------------------------------


@contextmanager
def compliance_database(
    db: str | None, settings: Settings | None = None
) -> Iterator[bootstrap.Database]:
    """The Integration DB for one command: a refused request ends it with its error code, and
    the database is closed whatever happens."""
    database = open_database(db, settings)
    try:
        yield database
    except SluiceError as exc:
        fail_with(exc)
    finally:
        database.dispose()


def actor_name(option: str | None) -> str:
    name = option or os.environ.get("SLUICE_ACTOR") or getpass.getuser()
    if not name.strip():
        fail("say who is acting: --actor NAME or SLUICE_ACTOR")
    return name


def kyc_registry(*, reload_on_hangup: bool = False) -> KycRegistry:
    """The KYC registry of the deployment configuration (limits, risk rules, sanctions list).

    ``reload_on_hangup`` (long-running commands): SIGHUP reloads the sanctions list from its
    directory without stopping; a damaged list is refused and the one in force stays."""
    try:
        registry = bootstrap.kyc_registry(deployment())
    except SluiceError as exc:
        fail_with(exc)
    screen = registry.screen
    if reload_on_hangup and isinstance(screen, ListedSanctions):

        def reload(_signum: int, _frame: FrameType | None) -> None:
            try:
                fresh = screen.reload()
            except (SluiceError, OSError, ValueError) as exc:
                note(f"sanctions list NOT reloaded, the previous one stays in force: {exc}")
                return
            note(f"sanctions list reloaded: {fresh.entity_count} entities from {fresh.source}")

        signal.signal(signal.SIGHUP, reload)
    return registry


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- JSON shapes printed by more than one command group ---------------------------------------


def withdrawal_json(record: Withdrawal) -> dict[str, object]:
    return {
        "id": record.id,
        "kind": record.kind,
        "customer_id": record.customer_id,
        "sender": record.sender,
        "receiver": record.receiver,
        "instrument": record.instrument.as_json(),
        "amount": format_amount(record.amount),
        "status": record.status,
        "attempt": record.attempt,
        "attempts_max": record.attempts_max,
        "idempotency_key": record.idempotency_key,
        "trec_tgt": timestamp_or_none(record.trec_tgt),
        "inputs": list(record.inputs),
        "requested_at": timestamp_or_none(record.requested_at),
        "instruction_cid": record.instruction_cid,
        "offered_at": timestamp_or_none(record.offered_at),
        "outcome_update_id": record.outcome_update_id,
        "failure": record.failure,
        "last_error": record.last_error,
        "rebuilt": record.rebuilt,
    }


def profile_json(profile: Profile) -> dict[str, object]:
    return {
        "customer_id": profile.customer_id,
        "tier": profile.tier,
        "status": profile.status,
        "status_reason": profile.status_reason,
        "risk_score": profile.risk_score,
    }


def log_to_stderr() -> None:
    """The services' log lines on stderr, as `sluice serve` writes them: stdout is for results
    (``--json``, JSON lines). Left as it is when logging is configured already."""
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
