"""The ``sluice`` command line: translates arguments into service calls and prints results."""

from __future__ import annotations

import dataclasses
import getpass
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn, get_args

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import ArgumentError

from sluice import bootstrap
from sluice.config import ConfigError, DeploymentConfig, Settings, load_config
from sluice.domain.access import ROLES, check_role
from sluice.domain.amounts import format_amount, parse_amount
from sluice.domain.compliance import (
    MONTH,
    OPERATIONS,
    HeldDeposit,
    Profile,
    ReviewItem,
    check_operation,
    usage_in_windows,
)
from sluice.domain.errors import InvalidInputError, SluiceError
from sluice.domain.ledger import InstrumentId, check_party_id, format_timestamp, parse_timestamp
from sluice.domain.withdrawals import Withdrawal, WithdrawalStatus
from sluice.ledger.canton import CantonCommands
from sluice.ledger.file import UpdateFile
from sluice.ports import ApiKeyRecord, IncomingOffer, InstrumentRecord
from sluice.screening import ListedSanctions
from sluice.services.access import create_api_key, list_api_keys, revoke_api_key
from sluice.services.audit import list_audit_records, verify_audit_log
from sluice.services.books import check_invariant, treasury_view
from sluice.services.compliance import (
    KycRegistry,
    RegistryGate,
    describe_decisions,
    verify_operation_compliance,
)
from sluice.services.compliance_officer import (
    change_tier,
    close_review,
    flag_address,
    limits_from_text,
    review_queue,
    screen_customers,
    set_customer_status,
    unflag_address,
)
from sluice.services.compliance_officer import release_hold as release_deposit
from sluice.services.compliance_officer import return_hold as return_deposit
from sluice.services.compliance_officer import set_limits as set_tier_limits
from sluice.services.deposit_worker import DepositWorker, list_incoming_offers
from sluice.services.ingestion import (
    Ingestion,
    IngestionProgress,
    IngestionSettings,
    connection_name,
    quarantine_update,
)
from sluice.services.recovery import (
    hold_state,
    largest_live_trec_tgt,
    offset_for_record_time,
    rewind_cursor,
)
from sluice.services.reference import (
    list_instruments,
    onboard_instrument,
    register_customer,
    set_instrument_enabled,
)
from sluice.services.withdrawals import (
    WithdrawalSettings,
    WithdrawalWorker,
    hold_until_safe,
    list_withdrawals,
    release_hold,
    request_withdrawal,
)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
ledger_app = typer.Typer(
    no_args_is_help=True, help="The token ledger: serve it over HTTP, replay recorded updates."
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (results go to docs/benchmarks.md).")
withdrawals_app = typer.Typer(
    no_args_is_help=True, help="Withdrawals: list them; hold submissions after a DB restore."
)
instruments_app = typer.Typer(
    no_args_is_help=True, help="Onboarded instruments: add, list, disable, enable."
)
deposits_app = typer.Typer(no_args_is_help=True, help="Deposits, as support needs to see them.")
workers_app = typer.Typer(no_args_is_help=True, help="The withdrawal and deposit workers.")
config_app = typer.Typer(no_args_is_help=True, help="The deployment configuration: check it.")
customers_app = typer.Typer(no_args_is_help=True, help="Customers: register them, show their KYC.")
compliance_app = typer.Typer(
    no_args_is_help=True,
    help="The KYC registry and the compliance officer: screen, check, review, release, freeze.",
)
audit_app = typer.Typer(no_args_is_help=True, help="The audit trail: verify its chain, list it.")
admin_app = typer.Typer(
    no_args_is_help=True, help="Administration of the HTTP API: create, list and revoke API keys."
)
app.add_typer(ledger_app, name="ledger")
app.add_typer(bench_app, name="bench")
app.add_typer(withdrawals_app, name="withdrawals")
app.add_typer(instruments_app, name="instruments")
app.add_typer(deposits_app, name="deposits")
app.add_typer(workers_app, name="workers")
app.add_typer(config_app, name="config")
app.add_typer(customers_app, name="customers")
app.add_typer(compliance_app, name="compliance")
app.add_typer(audit_app, name="audit")
app.add_typer(admin_app, name="admin")

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
AdminOption = Annotated[str, typer.Option("--admin", help="The instrument admin's party.")]
IdOption = Annotated[str, typer.Option("--id", help="The admin's id for the instrument.")]

STATUSES: tuple[str, ...] = get_args(WithdrawalStatus)


def main() -> None:
    app()


_config_file: Path | None = None


@app.callback()
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


def _time(value: datetime | None) -> str | None:
    return format_timestamp(value) if value is not None else None


def _short_amount(value: Decimal) -> str:
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


SandboxClockOption = Annotated[
    bool,
    typer.Option(
        "--sandbox-clock",
        help="Take the time from `sluice ledger serve`'s sandbox clock (needs --ledger-url) "
        "instead of the system's.",
    ),
]


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


def instrument_option(instrument: str | None, admin: str | None, id_: str | None) -> InstrumentId:
    """``--instrument ADMIN:ID`` (split at the last colon: party ids contain ``::``), or
    ``--admin`` and ``--id``."""
    if instrument is not None:
        if admin is not None or id_ is not None:
            fail("name the instrument with --instrument ADMIN:ID or with --admin and --id")
        head, sep, tail = instrument.rpartition(":")
        if not sep or not head or not tail or head.endswith(":"):
            fail(f"--instrument {instrument!r} is not ADMIN:ID (e.g. dso::1220abcd:Amulet)")
        admin, id_ = head, tail
    if not admin or not id_ or not id_.strip():
        fail("name the instrument: --instrument ADMIN:ID, or --admin and --id")
    try:
        check_party_id(admin)
    except InvalidInputError as exc:
        fail_with(exc)
    return InstrumentId(admin, id_)


# --- ledger replay and ingestion ---------------------------------------------------------------


@ledger_app.command("replay")
def ledger_replay(
    file: Annotated[Path, typer.Argument(help="JSON array or JSON lines of updates.")],
    party: Annotated[str, typer.Option("--party", help="The treasury party to ingest for.")],
    db: DbOption = None,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000)] = 500,
) -> None:
    """Ingest recorded updates for PARTY and print the treasury view as JSON."""
    with tempfile.TemporaryDirectory(prefix="sluice-replay-") as scratch:
        url = db or f"sqlite:///{Path(scratch) / 'replay.db'}"
        try:
            source = UpdateFile(file)
        except FileNotFoundError as exc:
            fail(str(exc))
        database = open_database(url)
        try:
            connection = connection_name(party, f"file:{file.name}")
            with ingestion_progress(f"replaying {file.name}") as on_batch:
                Ingestion(
                    database.uow,
                    source,
                    party,
                    connection=connection,
                    settings=IngestionSettings(batch_size_max=batch_size),
                    on_batch=on_batch,
                    compliance=kyc_registry(),
                ).run()
            view = treasury_view(database.uow, party, connection)
        except SluiceError as exc:
            fail(str(exc))
        finally:
            database.dispose()
    print_json(view)


@ledger_app.command("serve")
def ledger_serve(
    ledger: LedgerOption = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="0: any free port.")] = 7575,
    node: Annotated[
        str, typer.Option("--node", help="The node served at /v2 (every node: /nodes/NAME/v2).")
    ] = "exchange",
    list_limit: Annotated[
        int, typer.Option("--list-limit", min=1, help="Largest HTTP list answer (else 413).")
    ] = 200,
    auth_secret: Annotated[
        str | None,
        typer.Option(
            "--auth-secret",
            envvar="SLUICE_SERVE_AUTH_SECRET",
            help="Require HS256 bearer tokens signed with this secret.",
        ),
    ] = None,
    oauth_client: Annotated[
        list[str] | None,
        typer.Option(
            "--oauth-client",
            metavar="ID:SECRET",
            help="Serve /oauth/token (client credentials) for this client; repeatable.",
        ),
    ] = None,
    external_key: Annotated[
        list[str] | None,
        typer.Option(
            "--external-key",
            metavar="PARTY=KEYFILE",
            help="An external party's Ed25519 public key (raw 32 bytes, hex or PEM); "
            "its commands must come signed through /v2/interactive-submission.",
        ),
    ] = None,
    replay: Annotated[
        Path | None,
        typer.Option("--replay", help="Serve this file of recorded updates, read-only."),
    ] = None,
    create: Annotated[
        bool,
        typer.Option(
            "--create",
            help="Create an empty ledger file if there is none (nodes, parties and instruments "
            "are then made through /sandbox/v1, as `sluice demo --ledger-url` does).",
        ),
    ] = False,
) -> None:
    """Serve the embedded ledger over the JSON Ledger API v2 (HTTP and WebSocket), the Registry
    API of every token admin (/registries/ADMIN) and a sandbox control API (/sandbox/v1)."""
    from sluice.ledger.local.engine import EmbeddedLedger
    from sluice.ledger.local.server import LedgerServer, ServerAuth, load_public_key

    if oauth_client and not auth_secret:
        fail("--oauth-client needs --auth-secret (the tokens it issues are signed with it)")
    clients: dict[str, str] = {}
    for item in oauth_client or []:
        client_id, sep, secret = item.partition(":")
        if not sep or not client_id or not secret:
            fail(f"--oauth-client {item!r}: expected ID:SECRET")
        clients[client_id] = secret
    keys: dict[str, bytes] = {}
    for item in external_key or []:
        party, sep, key_file = item.partition("=")
        if not sep:
            fail(f"--external-key {item!r}: expected PARTY=KEYFILE")
        try:
            keys[check_party_id(party)] = load_public_key(Path(key_file))
        except (OSError, ValueError) as exc:
            fail(f"--external-key {item!r}: {exc}")
    auth = ServerAuth(auth_secret, oauth_clients=clients) if auth_secret else None
    if replay is not None:
        if not replay.is_file():
            fail(f"no such update file: {replay}")
        server = LedgerServer.replay(replay, host=host, port=port, list_limit=list_limit, auth=auth)
        embedded = None
    else:
        path = ledger or Settings.from_environment().ledger_path
        if not path.exists() and not create:
            fail(f"no embedded ledger at {path} (run `sluice demo`, or pass --create)")
        path.parent.mkdir(parents=True, exist_ok=True)
        embedded = EmbeddedLedger.open(str(path))
        server = LedgerServer(
            embedded,
            host=host,
            port=port,
            default_node=node,
            list_limit=list_limit,
            auth=auth,
            external_keys=keys,
        )
    try:
        server.serve_forever(
            on_ready=lambda url: note(
                f"serving {'the replay of ' + str(replay) if replay else 'the embedded ledger'} at "
                f"{url} (node {node} at /v2; /nodes/NAME/v2; registries at /registries/ADMIN"
                f"{'; sandbox control at /sandbox/v1' if embedded else ''}); Ctrl-C stops"
            )
        )
    finally:
        if embedded is not None:
            embedded.close()


@config_app.command("check")
def config_check(
    connect: Annotated[
        bool,
        typer.Option("--connect", help="Also reach the participant and each registry."),
    ] = False,
) -> None:
    """Validate the configuration and print it resolved (secrets hidden)."""
    config = deployment()
    print_json(config.redacted())
    if not connect:
        return
    database = open_database(config.database_url)
    try:
        link = open_ledger(config, database, None, None, None, writable=False)
        note(f"{link.description}: ledger end {link.client.ledger_end()}")
        link.close()
    except SluiceError as exc:
        fail_with(exc)
    finally:
        database.dispose()


@app.command("ingest")
def ingest(
    db: DbOption = None,
    party: Annotated[
        str | None, typer.Option("--party", help="Treasury party (default: SLUICE_TREASURY_PARTY).")
    ] = None,
    ledger: LedgerOption = None,
    node: Annotated[str | None, typer.Option("--node", help="Ledger node the party is on.")] = None,
    follow: Annotated[bool, typer.Option("--follow/--once", help="Keep polling.")] = True,
    quarantine: Annotated[
        str | None,
        typer.Option(
            "--quarantine",
            metavar="UPDATE_ID",
            help="Set a malformed update aside so ingestion can continue past it, then exit.",
        ),
    ] = None,
    from_offset: Annotated[
        int | None,
        typer.Option(
            "--from-offset",
            min=0,
            help="First move the cursor to this offset (re-read what follows; updates already "
            "ingested are skipped).",
        ),
    ] = None,
    from_record_time: Annotated[
        str | None,
        typer.Option(
            "--from-record-time",
            metavar="RFC3339",
            help="First move the cursor to just before the first update at or after this "
            "record time (after a node restore: offsets changed, record times did not).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000)] = 500,
    ledger_url: LedgerUrlOption = None,
) -> None:
    """Run the ingestion loop for the treasury party against the ledger, until stopped."""
    settings = Settings.from_environment()
    config = deployment()
    party = party or config.treasury.party
    if not party:
        fail("no treasury party: pass --party or set SLUICE_TREASURY_PARTY (or treasury.party)")
    if from_offset is not None and from_record_time is not None:
        fail("--from-offset and --from-record-time are alternatives: pass one of them")
    rewinding = from_offset is not None or from_record_time is not None
    if quarantine is not None and rewinding:
        fail("--quarantine cannot be combined with --from-offset / --from-record-time")
    since: datetime | None = None
    if from_record_time is not None:
        try:
            since = parse_timestamp(from_record_time, field="--from-record-time")
        except InvalidInputError as exc:
            fail_with(exc)
    database = open_database(db or config.database_url, settings)
    try:
        link = open_ledger(config, database, ledger, ledger_url, node, writable=False)
    except SluiceError as exc:
        database.dispose()
        fail_with(exc)
    connection = connection_name(party, link.node)
    if quarantine is not None:
        added = quarantine_update(
            database.uow, connection, quarantine, requested_by=os.environ.get("USER", "operator")
        )
        note(
            f"update {quarantine} {'set aside' if added else 'was already set aside'}; "
            "ingestion will skip it"
        )
        link.close()
        database.dispose()
        return
    try:
        client = link.client
        if rewinding:
            end = client.ledger_end()
            if since is not None:
                offset = offset_for_record_time(client, party, since)
            else:
                assert from_offset is not None
                offset = from_offset
                if offset > end:
                    fail(f"offset {offset} is after the ledger end {end} of {party}'s node")
            move = rewind_cursor(
                database.uow,
                connection,
                party,
                offset=offset,
                record_time=link.record_time_at(party, offset) if offset else None,
            )
            was = move.previous.offset if move.previous is not None else "none"
            note(
                f"cursor moved from offset {was} to {move.current.offset} (record time "
                f"{_time(move.current.record_time) or 'none'}); updates already ingested will "
                "be skipped"
            )
        with stop_signals() as stopping, ingestion_progress(f"ingesting for {party}") as on_batch:
            progress = Ingestion(
                database.uow,
                client,
                party,
                connection=connection,
                settings=IngestionSettings(batch_size_max=batch_size),
                on_batch=on_batch,
                compliance=kyc_registry(reload_on_hangup=follow),
            ).run(follow=follow, stop=stopping)
        note(
            f"ingested {progress.transactions} transactions, {progress.checkpoints} checkpoints"
            f" ({progress.skipped} already ingested, skipped); "
            f"cursor {progress.cursor.as_json() if progress.cursor else None}"
        )
    except SluiceError as exc:
        fail_with(exc)
    finally:
        link.close()
        database.dispose()


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


@app.command("check")
def check(db: DbOption = None) -> None:
    """Check the books: customers + suspense + in-flight + fees = treasury holdings."""
    database = open_database(db)
    result = check_invariant(database.uow)
    database.dispose()
    if result.holds:
        err.print("[green]the books balance[/]: every unit owed is held on the ledger")
        return
    for problem in result.problems:
        err.print(f"[red]✗[/] {escape(problem)}", soft_wrap=True)
    raise typer.Exit(1)


# --- withdrawals -------------------------------------------------------------------------------


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
        "trec_tgt": _time(record.trec_tgt),
        "inputs": list(record.inputs),
        "requested_at": _time(record.requested_at),
        "instruction_cid": record.instruction_cid,
        "offered_at": _time(record.offered_at),
        "outcome_update_id": record.outcome_update_id,
        "failure": record.failure,
        "last_error": record.last_error,
        "rebuilt": record.rebuilt,
    }


@app.command("withdraw")
def withdraw(
    customer: Annotated[str, typer.Option("--customer", help="The customer paying out.")],
    to: Annotated[str, typer.Option("--to", help="The receiving party.")],
    amount: Annotated[str, typer.Option("--amount", help="Exact decimal amount.")],
    key: Annotated[
        str, typer.Option("--key", help="Idempotency key: the same key again returns the first.")
    ],
    instrument: Annotated[
        str | None, typer.Option("--instrument", metavar="ADMIN:ID", help="The instrument.")
    ] = None,
    admin: Annotated[str | None, typer.Option("--admin", help="Instrument admin party.")] = None,
    instrument_id: Annotated[str | None, typer.Option("--id", help="Instrument id.")] = None,
    treasury: TreasuryOption = None,
    db: DbOption = None,
    ledger: LedgerOption = None,
    ledger_url: LedgerUrlOption = None,
    sandbox_clock: SandboxClockOption = False,
    as_json: JsonOption = False,
) -> None:
    """Request a withdrawal: debit the customer and queue the payout (workers submit it)."""
    settings = Settings.from_environment()
    what = instrument_option(instrument, admin, instrument_id)
    party = treasury_party(treasury, settings)
    now = current_time(ledger, ledger_url, sandbox_clock)
    database = open_database(db, settings)
    try:
        record = request_withdrawal(
            database.uow,
            treasury=party,
            customer_id=customer,
            receiver=to,
            instrument=what,
            amount=amount,
            idempotency_key=key,
            clock=lambda: now,
            settings=withdrawal_settings(),
            compliance=kyc_registry(),
        )
    except SluiceError as exc:
        fail_with(exc)
    finally:
        database.dispose()
    if as_json:
        print_json(withdrawal_json(record))
        return
    lines = [
        f"withdrawal {record.id}: {record.status}",
        f"  {_short_amount(record.amount)} {record.instrument.id} "
        f"from customer {record.customer_id} to {record.receiver}",
        f"  inputs: {', '.join(record.inputs) if record.inputs else 'none reserved yet'}",
        f"  trec_tgt: {_time(record.trec_tgt) or 'set when inputs are reserved'}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


def _statuses(option: str | None) -> tuple[str, ...]:
    if option is None:
        return ()
    chosen = tuple(s.strip() for s in option.split(",") if s.strip())
    unknown = [s for s in chosen if s not in STATUSES]
    if unknown or not chosen:
        fail(f"--status {option!r}: expected one or more of {', '.join(STATUSES)}")
    return chosen


@withdrawals_app.command("list")
def withdrawals_list(
    status: Annotated[
        str | None, typer.Option("--status", help="Only these statuses (comma-separated).")
    ] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 1000,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Withdrawals and pool upkeep records, newest state first."""
    statuses = _statuses(status)
    database = open_database(db)
    try:
        records = list_withdrawals(
            database.uow, statuses=statuses, customer_id=customer, limit=limit
        )
    finally:
        database.dispose()
    if as_json:
        print_json([withdrawal_json(r) for r in records])
        return
    if not records:
        note("no withdrawals" + (" match" if status or customer else ""))
        return
    table = Table(title=f"{len(records)} withdrawal(s)")
    for column in ("id", "kind", "customer", "amount", "instrument", "status", "attempt"):
        table.add_column(column, no_wrap=column == "id")
    table.add_column("trec_tgt")
    table.add_column("failure / last error")
    for r in records:
        table.add_row(
            r.id,
            r.kind,
            r.customer_id or "—",
            _short_amount(r.amount),
            r.instrument.id,
            r.status,
            f"{r.attempt}/{r.attempts_max}",
            _time(r.trec_tgt) or "—",
            r.failure or r.last_error or "",
        )
    print_table(table)


@withdrawals_app.command("hold")
def withdrawals_hold(
    until_safe: Annotated[
        bool,
        typer.Option(
            "--until-safe",
            help="Hold submissions until ingestion has passed every trec_tgt an attempt "
            "forgotten by a DB restore could have.",
        ),
    ] = False,
    release: Annotated[bool, typer.Option("--release", help="Lift the hold now.")] = False,
    treasury: TreasuryOption = None,
    node: Annotated[str | None, typer.Option("--node", help="Ledger node the party is on.")] = None,
    db: DbOption = None,
    ledger: LedgerOption = None,
    ledger_url: LedgerUrlOption = None,
    sandbox_clock: SandboxClockOption = False,
) -> None:
    """Show the withdrawal hold, set it (--until-safe) or lift it (--release)."""
    if until_safe and release:
        fail("--until-safe and --release are alternatives: pass one of them")
    settings = Settings.from_environment()
    database = open_database(db, settings)
    try:
        if release:
            release_hold(database.uow)
            note("hold released: workers submit withdrawals again")
            return
        if until_safe:
            span = withdrawal_settings()
            now = current_time(ledger, ledger_url, sandbox_clock)
            latest = largest_live_trec_tgt(database.uow)
            until = hold_until_safe(database.uow, clock=lambda: now, settings=span)
            why = (
                "the latest trec_tgt of a withdrawal in flight"
                if latest is not None and latest == until
                else f"now ({format_timestamp(now)}) + trec_span_s ({span.trec_span_s:g} s): an "
                "attempt submitted just before the backup was taken could have that trec_tgt"
            )
            note(f"withdrawal submissions held until {format_timestamp(until)}: {why}")
            note(
                "workers submit nothing until ingestion has passed that record time; "
                "then they lift the hold themselves"
            )
            return
        party = treasury_party(treasury, settings)
        state = hold_state(database.uow, connection_name(party, node or settings.node))
    finally:
        database.dispose()
    reached = _time(state.ingested_record_time) or "nothing yet"
    if state.until is None:
        note("no hold: workers submit withdrawals")
    elif state.in_force:
        note(
            f"withdrawal submissions held until {format_timestamp(state.until)}; "
            f"ingestion has reached {reached}"
        )
    else:
        note(
            f"the hold until {format_timestamp(state.until)} is over (ingestion has reached "
            f"{reached}); the next worker run clears it"
        )


# --- instruments -------------------------------------------------------------------------------


def _limits(text: str | None) -> dict[str, str]:
    """``key=value,key=value`` → a dict (the values are checked as exact decimals later)."""
    if text is None or not text.strip():
        return {}
    limits: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            fail(f"--limits {text!r}: expected key=value pairs separated by commas")
        if name in limits:
            fail(f"--limits: {name} is given twice")
        limits[name] = value
    return limits


def instrument_json(record: InstrumentRecord) -> dict[str, object]:
    return {
        "instrument": record.instrument.as_json(),
        "registry_url": record.registry_url,
        "trusted": record.trusted,
        "enabled": record.enabled,
        "transfer_kinds": list(record.transfer_kinds),
        "limits": dict(record.limits),
    }


@instruments_app.command("add")
def instruments_add(
    admin: AdminOption,
    instrument_id: IdOption,
    registry: Annotated[str, typer.Option("--registry", help="The admin's registry URL.")],
    trusted: Annotated[
        bool,
        typer.Option(
            "--trusted/--untrusted", help="Whether the exchange trusts the admin (required)."
        ),
    ],
    transfer_kinds: Annotated[
        str,
        typer.Option(
            "--transfer-kinds", help="What withdrawals may become: direct, offer, or both."
        ),
    ] = "direct",
    limits: Annotated[
        str | None,
        typer.Option(
            "--limits", metavar="KEY=VALUE,…", help="e.g. withdrawal_max=5000,transfer_fee=0.1"
        ),
    ] = None,
    db: DbOption = None,
    actor: ActorOption = None,
) -> None:
    """Onboard an instrument of a trusted admin so its deposits are credited."""
    instrument = InstrumentId(admin, instrument_id)
    parsed = _limits(limits)
    database = open_database(db)
    try:
        added = onboard_instrument(
            database.uow,
            instrument,
            registry_url=registry,
            trusted=trusted,
            transfer_kinds=transfer_kinds,
            limits=parsed,
            actor=actor_name(actor),
        )
        record = next(r for r in list_instruments(database.uow) if r.instrument == instrument)
    except SluiceError as exc:
        fail_with(exc)
    finally:
        database.dispose()
    if not added:
        note(
            f"instrument {instrument.key()} is already onboarded "
            f"({'enabled' if record.enabled else 'disabled'}); nothing changed"
        )
        return
    shown = ", ".join(f"{k}={v}" for k, v in record.limits.items()) or "none"
    note(
        f"onboarded {instrument.key()} for {', '.join(record.transfer_kinds)} withdrawals; "
        f"limits: {shown}"
    )


@instruments_app.command("list")
def instruments_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Every onboarded instrument, enabled or not."""
    database = open_database(db)
    try:
        records = list_instruments(database.uow)
    finally:
        database.dispose()
    if as_json:
        print_json([instrument_json(r) for r in records])
        return
    if not records:
        note("no instruments onboarded")
        return
    table = Table(title=f"{len(records)} instrument(s)")
    for column in ("id", "admin", "enabled", "trusted", "transfer kinds", "registry", "limits"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.instrument.id,
            r.instrument.admin,
            "yes" if r.enabled else "no",
            "yes" if r.trusted else "no",
            ", ".join(r.transfer_kinds),
            r.registry_url or "—",
            ", ".join(f"{k}={v}" for k, v in r.limits.items()),
        )
    print_table(table)


def _set_enabled(
    admin: str, instrument_id: str, enabled: bool, db: str | None, actor: str | None
) -> None:
    instrument = InstrumentId(admin, instrument_id)
    who = actor_name(actor)
    database = open_database(db)
    try:
        set_instrument_enabled(database.uow, instrument, enabled, actor=who)
    except SluiceError as exc:
        fail_with(exc)
    finally:
        database.dispose()
    if enabled:
        note(f"instrument {instrument.key()} enabled: its deposits are credited again")
    else:
        note(
            f"instrument {instrument.key()} disabled: its deposits go to suspense with an "
            "alert, and no withdrawal of it can be requested"
        )


@instruments_app.command("disable")
def instruments_disable(
    admin: AdminOption, instrument_id: IdOption, db: DbOption = None, actor: ActorOption = None
) -> None:
    """Stop crediting deposits of an instrument (they go to suspense) and refuse withdrawals."""
    _set_enabled(admin, instrument_id, False, db, actor)


@instruments_app.command("enable")
def instruments_enable(
    admin: AdminOption, instrument_id: IdOption, db: DbOption = None, actor: ActorOption = None
) -> None:
    """Credit deposits of a disabled instrument again."""
    _set_enabled(admin, instrument_id, True, db, actor)


# --- deposits ----------------------------------------------------------------------------------


def offer_json(offer: IncomingOffer, onboarded: set[InstrumentId]) -> dict[str, object]:
    transfer = offer.instruction.transfer
    return {
        "contract_id": offer.instruction.contract_id,
        "status": offer.status,
        "sender": transfer.sender,
        "amount": format_amount(transfer.amount),
        "instrument": transfer.instrument.as_json(),
        "instrument_onboarded": transfer.instrument in onboarded,
        "reason": transfer.reason,
        "known_account": offer.customer_id is not None,
        "customer_id": offer.customer_id,
        "requested_at": _time(transfer.requested_at),
        "execute_before": _time(transfer.execute_before),
        "action": offer.action,
        "attempts": offer.attempts,
        "last_error": offer.last_error,
    }


@deposits_app.command("offers")
def deposits_offers(
    treasury: TreasuryOption = None, db: DbOption = None, as_json: JsonOption = False
) -> None:
    """Pending incoming offers and what the deposit worker did with each."""
    settings = Settings.from_environment()
    party = treasury_party(treasury, settings)
    database = open_database(db, settings)
    try:
        offers = list_incoming_offers(database.uow, party)
        onboarded = {r.instrument for r in list_instruments(database.uow) if r.enabled}
    finally:
        database.dispose()
    if as_json:
        print_json([offer_json(o, onboarded) for o in offers])
        return
    if not offers:
        note("no pending incoming offers")
        return
    table = Table(title=f"{len(offers)} pending incoming offer(s)")
    columns = ("offer", "sender", "amount", "instrument", "reason", "customer", "status")
    for column in (*columns, "worker action", "attempts", "last error"):
        table.add_column(column)
    for offer in offers:
        transfer = offer.instruction.transfer
        instrument = transfer.instrument.id
        if transfer.instrument not in onboarded:
            instrument += " (not onboarded)"
        table.add_row(
            offer.instruction.contract_id[-16:],
            transfer.sender,
            _short_amount(transfer.amount),
            instrument,
            transfer.reason or "—",
            offer.customer_id or "unknown account",
            offer.status,
            offer.action or "—",
            str(offer.attempts),
            offer.last_error or "",
        )
    print_table(table)


# --- workers -----------------------------------------------------------------------------------


@workers_app.command("run")
def workers_run(
    once: Annotated[bool, typer.Option("--once", help="One round, then exit.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.05, max=3600.0, help="Seconds between rounds.")
    ] = 1.0,
    treasury: TreasuryOption = None,
    node: Annotated[str | None, typer.Option("--node", help="Ledger node the party is on.")] = None,
    db: DbOption = None,
    ledger: LedgerOption = None,
    ledger_url: LedgerUrlOption = None,
    sandbox_clock: SandboxClockOption = False,
) -> None:
    """Run the withdrawal and deposit workers until stopped.

    Against a participant node (`--ledger-url` or the configuration) any number of worker
    processes may run. Against an embedded ledger file, the file is opened for writing and has
    exactly one writer: run one worker process, and `sluice ingest` (a reader) alongside."""
    settings = Settings.from_environment()
    config = deployment()
    party = treasury_party(treasury or config.treasury.party, settings)
    worker_settings = withdrawal_settings()
    clock: Callable[[], datetime] | None = None
    if sandbox_clock:
        from sluice.ledger.local.remote import RemoteLedger

        if ledger_url is None:
            fail("--sandbox-clock needs --ledger-url (a `sluice ledger serve` URL)")
        clock = RemoteLedger(sandbox_base(ledger_url)).time
    database = open_database(db or config.database_url, settings)
    try:
        link = open_ledger(config, database, ledger, ledger_url, node, writable=True, clock=clock)
    except SluiceError as exc:
        database.dispose()
        fail_with(exc)
    clock = link.clock
    margin = config.ledger.local_margin_s
    if isinstance(link.commands, CantonCommands) and worker_settings.trec_span_s <= margin:
        link.close()
        database.dispose()
        fail(
            f"SLUICE_WITHDRAWAL_TREC_SPAN_S ({worker_settings.trec_span_s:g} s) must exceed "
            f"ledger.local_margin_s ({margin:g} s), or no local-party withdrawal could be submitted"
        )
    try:
        registry = kyc_registry(reload_on_hangup=not once)
        withdrawals = WithdrawalWorker(
            database.uow,
            link.commands,
            link.registries,
            treasury=party,
            connection=connection_name(party, link.node),
            clock=clock,
            settings=worker_settings,
            compliance=registry,
        )
        deposits = DepositWorker(
            database.uow,
            link.commands,
            link.registries,
            RegistryGate(database.uow, registry, clock),
            treasury=party,
        )
        held = ", submissions HELD (see `sluice withdrawals hold`)"
        with stop_signals() as stopping:
            while not stopping():
                paid = withdrawals.run_once()
                answered = deposits.run_once()
                link.flush()  # what was submitted becomes visible to `sluice ingest`
                paused = paid.paused or answered.paused
                if paused:
                    note(f"PAUSED ({paused}): nothing is submitted until `sluice` is resumed")
                elif once or paid.busy or answered.busy or paid.held:
                    note(
                        f"withdrawals: settled {paid.settled} (retried {paid.retried}, refunded "
                        f"{paid.refunded}), reserved {paid.reserved}, submitted {paid.submitted}, "
                        f"offers withdrawn {paid.offers_withdrawn}, upkeep {paid.upkeep_created}"
                        f"{held if paid.held else ''}; deposits: accepted {answered.accepted}, "
                        f"rejected {answered.rejected}, left alone {answered.left_alone}"
                    )
                for problem in (*paid.errors, *answered.errors):
                    note(f"  ! {problem}")
                if once:
                    break
                _sleep_unless(interval, stopping)
    except SluiceError as exc:
        fail_with(exc)
    finally:
        link.close()
        database.dispose()


def sandbox_base(participant_url: str) -> str:
    """The base URL of `sluice ledger serve` from one of its participant URLs."""
    base, _, _node = participant_url.rstrip("/").partition("/nodes/")
    return base


def _sleep_unless(seconds: float, stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.1))


# --- simulation, benchmarks, demo --------------------------------------------------------------


@app.command("sim")
def sim(
    seed: Annotated[int, typer.Option("--seed", help="Seed of the run (reproducible).")],
    steps: Annotated[int, typer.Option("--steps", min=1, help="Operations to run.")],
    crash_rate: Annotated[
        float, typer.Option("--crash-rate", min=0.0, max=1.0, help="Chance of a crash per step.")
    ] = 0.05,
    fault_rate: Annotated[
        float, typer.Option("--fault-rate", min=0.0, max=1.0, help="Chance of a ledger fault.")
    ] = 0.05,
    db: DbOption = None,
    via_http: Annotated[
        bool,
        typer.Option(
            "--via-http",
            help="Serve the ledger on a local port and talk to it through the Canton client.",
        ),
    ] = False,
) -> None:
    """Simulate customers, workers, crashes and ledger faults; check nothing is paid twice."""
    from sluice.sim import simulate_command

    raise typer.Exit(simulate_command(seed, steps, crash_rate, fault_rate, db, via_http))


@bench_app.command("withdrawals")
def bench_withdrawals(
    record: Annotated[
        Path | None, typer.Option("--record", help="Append the figures to this Markdown file.")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A short run (smoke test).")] = False,
    db: Annotated[
        str | None,
        typer.Option("--db", help="Database to benchmark; it is EMPTIED first (default: scratch)."),
    ] = None,
) -> None:
    """Measure withdrawal throughput and coin selection on the embedded ledger."""
    from sluice.bench.withdrawals import bench_command

    bench_command(record, quick, db)


@bench_app.command("wire")
def bench_wire(
    updates: Annotated[int, typer.Option("--updates", min=100, help="Stream length.")] = 20_000,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=10)] = 2,
    record: Annotated[
        Path | None, typer.Option("--record", help="Append the figures to this Markdown file.")
    ] = None,
) -> None:
    """Ingestion over WebSocket / HTTP from `sluice ledger serve` against in process."""
    from sluice.bench.wire import bench_command

    with err.status(f"measuring ingestion of {updates} updates in process and over the wire"):
        result = bench_command(updates, rounds, record)
    sys.stdout.write(json.dumps(result) + "\n")


@bench_app.command("screening")
def bench_screening(
    list_dir: Annotated[Path, typer.Option("--list", help="Sanctions list directory.")] = Path(
        "../shared/reference/sanctions"
    ),
    prefix: Annotated[str, typer.Option("--prefix", help="OFAC file set to load.")] = "full-",
    count: Annotated[
        int, typer.Option("--count", min=100, help="Screenings in the timed stream.")
    ] = 20_000,
    seed: Annotated[int | None, typer.Option("--seed", help="Labelled set seed.")] = None,
    record: Annotated[
        Path | None, typer.Option(help="Write the figures to this Markdown file.")
    ] = None,
) -> None:
    """Screenings per second and p99 on one core against the full list, and precision / recall
    at the default threshold on a labelled set of listed-name variations and unlisted names."""
    from sluice.bench.screening import DEFAULT_SEED, bench_command

    try:
        with err.status(f"loading {list_dir} ({prefix}*) and screening…"):
            bench_command(
                list_dir,
                prefix=prefix,
                count=count,
                seed=DEFAULT_SEED if seed is None else seed,
                record=record,
            )
    except SluiceError as exc:
        fail_with(exc)


@bench_app.command("api")
def bench_api(
    db: Annotated[
        str, typer.Option("--db", help="Database to serve from; it is EMPTIED first.")
    ] = "postgresql+psycopg://postgres@127.0.0.1:5432/sluice_bench_api",
    clients: Annotated[
        int, typer.Option("--clients", min=1, max=500, help="Concurrent clients.")
    ] = 50,
    duration: Annotated[
        float, typer.Option("--duration", min=1.0, max=600.0, help="Seconds per run.")
    ] = 10.0,
    warmup: Annotated[
        float, typer.Option("--warmup", min=0.0, max=60.0, help="Seconds of warm-up per run.")
    ] = 2.0,
    paced_rate: Annotated[
        float,
        typer.Option("--paced-rate", min=0.0, help="Balance reads/s of the paced run (0: none)."),
    ] = 1_000.0,
    workers: Annotated[
        list[int] | None,
        typer.Option("--workers", min=1, max=16, help="uvicorn worker processes (repeatable)."),
    ] = None,
    tool: Annotated[
        str,
        typer.Option("--tool", help="Load generator: auto (wrk if it can be had), wrk, python."),
    ] = "auto",
    record: Annotated[
        Path | None, typer.Option("--record", help="Write the figures to this Markdown file.")
    ] = None,
) -> None:
    """Balance reads and withdrawal requests per second and their p50 / p99 over HTTP, with
    concurrent clients against uvicorn, next to GET /health as the baseline."""
    from sluice.bench.api import WORKER_COUNTS, ApiBenchSettings, bench_command

    if tool not in ("auto", "wrk", "python"):
        raise typer.BadParameter("one of auto, wrk, python", param_hint="--tool")
    settings = ApiBenchSettings(
        url=db,
        clients=clients,
        duration_s=duration,
        warmup_s=warmup,
        paced_rate=paced_rate or None,
        worker_counts=tuple(workers or WORKER_COUNTS),
        tool=tool,
    )
    # No spinner: its refresh thread would share the GIL with the paced load generator.
    err.print(f"measuring the HTTP API with {clients} clients against {db}…")
    bench_command(settings, record)


@bench_app.command("ingest")
def bench_ingest(
    updates: Annotated[int, typer.Option("--updates", min=100, help="Stream length.")] = 100_000,
    db: Annotated[
        str, typer.Option("--db", help="Database to benchmark; it is EMPTIED first.")
    ] = "sqlite:///data/bench/bench.db",
    live_updates: Annotated[
        int, typer.Option(help="How many updates to replay one per DB transaction.")
    ] = 2_000,
    stream: Annotated[
        Path | None, typer.Option(help="Reuse (or keep) the generated stream at this path.")
    ] = None,
    record: Annotated[
        Path | None, typer.Option(help="Append the figures to this Markdown file.")
    ] = None,
) -> None:
    """Generate a realistic treasury stream, then measure replaying it into the database."""
    from sluice.bench.measure import measure_in_child
    from sluice.bench.record import append_result
    from sluice.bench.stream import generate

    path = stream or Path("data/bench") / f"stream-{updates}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    setup_file = path.with_suffix(".setup.json")
    if not (path.exists() and setup_file.exists()):
        with err.status(f"generating {updates} updates with the embedded ledger → {path}"):
            generate(path, updates)
    with err.status(f"measuring replay of {path} into {db}"):
        result = measure_in_child(path, db, live_updates)
    result["db"] = db.split("://", 1)[0]
    sys.stdout.write(json.dumps(result) + "\n")
    if record is not None:
        append_result(record, result, command=" ".join(["sluice", *sys.argv[1:]]))


# --- customers, the KYC registry, the compliance officer, the audit trail ----------------------

ActorOption = Annotated[
    str | None,
    typer.Option(
        "--actor",
        help="Who is acting, for the audit trail (default: SLUICE_ACTOR, else the login name).",
    ),
]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (goes into the audit trail).")]


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


def _now() -> datetime:
    return datetime.now(UTC)


def profile_json(profile: Profile) -> dict[str, object]:
    return {
        "customer_id": profile.customer_id,
        "tier": profile.tier,
        "status": profile.status,
        "status_reason": profile.status_reason,
        "risk_score": profile.risk_score,
    }


def hold_json(hold: HeldDeposit) -> dict[str, object]:
    return {
        "id": hold.id,
        "status": hold.status,
        "customer_id": hold.customer_id,
        "deposit_account": hold.deposit_account,
        "sender": hold.sender,
        "instrument": f"{hold.instrument_admin}:{hold.instrument_id}",
        "amount": format_amount(hold.amount),
        "update_id": hold.update_id,
        "why": hold.why,
        "held_at": _time(hold.held_at),
        "decided_by": hold.decided_by,
        "decided_at": _time(hold.decided_at),
        "withdrawal_id": hold.withdrawal_id,
    }


def review_json(review: ReviewItem) -> dict[str, object]:
    return {
        "id": review.id,
        "kind": review.kind,
        "customer_id": review.customer_id,
        "subject": review.subject,
        "reason": review.reason,
        "opened_at": _time(review.opened_at),
    }


@customers_app.command("add")
def customers_add(
    customer_id: Annotated[str, typer.Argument(help="The exchange's id for the customer.")],
    name: Annotated[str, typer.Option("--name", help="Legal name (screened against lists).")],
    account: Annotated[
        list[str] | None,
        typer.Option("--account", help="A deposit account id (repeat for several)."),
    ] = None,
    tier: Annotated[int, typer.Option("--tier", min=0, max=4, help="KYC tier 0–4.")] = 1,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Register a customer with a KYC tier and deposit accounts (idempotent)."""
    with compliance_database(db) as database:
        register_customer(
            database.uow, customer_id, name, account or [], tier=tier, actor=actor_name(actor)
        )
        with database.uow() as uow:
            profile = uow.compliance.profiles([customer_id])[customer_id]
    print_json(profile_json(profile))


@customers_app.command("show")
def customers_show(
    customer_id: Annotated[str, typer.Argument(help="The customer.")],
    db: DbOption = None,
) -> None:
    """A customer's KYC tier, status, risk score and what they used of their limits."""
    database = open_database(db)
    registry = kyc_registry()
    try:
        now = _now()
        with database.uow() as uow:
            session = registry.session(uow, [customer_id], since=now, lock=False)
            profile = session.profiles.get(customer_id)
            if profile is None:
                fail(f"unknown customer {customer_id!r}")
            usage = uow.compliance.usage([customer_id], now - MONTH).get(customer_id, [])
            windows = {}
            for operation in OPERATIONS:
                daily, monthly = usage_in_windows(usage, operation, now)
                limits = session.ladder.of(profile.tier, operation)
                windows[operation] = {
                    "used_24h": format_amount(daily),
                    "used_30d": format_amount(monthly),
                    **limits.as_dict(),
                }
    finally:
        database.dispose()
    print_json({**profile_json(profile), "limits": windows})


@compliance_app.command("screen")
def compliance_screen(
    list_dir: Annotated[
        Path, typer.Option("--list", help="Directory of the sanctions list (OFAC CSV / JSONL).")
    ],
    name: Annotated[str | None, typer.Option("--name", help="One name to screen.")] = None,
    batch: Annotated[
        Path | None, typer.Option("--batch", help="A file of names, one per line.")
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option("--prefix", help="Which OFAC file set of the directory (e.g. full-)."),
    ] = None,
) -> None:
    """Screen names against a sanctions list: one JSON line per name."""
    if (name is None) == (batch is None):
        fail("give exactly one of --name NAME or --batch FILE")
    try:
        screen = bootstrap.sanctions_screen(list_dir, prefix)
        if batch is not None:
            try:
                text = batch.read_text(encoding="utf-8")
            except OSError as exc:
                fail(f"cannot read {batch}: {exc.strerror or exc}")
            names = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            names = [name or ""]
        for line in bootstrap.screening_json_lines(screen, names):
            sys.stdout.write(line + "\n")
    except SluiceError as exc:
        fail_with(exc)


@compliance_app.command("check")
def compliance_check(
    customer: Annotated[str, typer.Option("--customer", help="The customer.")],
    operation: Annotated[
        str,
        typer.Option("--operation", help="deposit, withdrawal, mint, burn, transfer, exchange."),
    ],
    amount: Annotated[str, typer.Option("--amount", help="Amount in reference units.")],
    counterparty: Annotated[
        str | None, typer.Option("--counterparty", help="The other party, if any.")
    ] = None,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Ask the KYC registry whether an operation would be allowed now (audited, uses nothing)."""
    with compliance_database(db) as database:
        decision = verify_operation_compliance(
            database.uow,
            kyc_registry(),
            customer,
            check_operation(operation),
            parse_amount(amount, field="amount"),
            counterparty,
            at=_now(),
            actor=actor_name(actor),
        )
    print_json(describe_decisions([decision])[0])
    raise typer.Exit(0 if decision.allowed else 1)


@compliance_app.command("queue")
def compliance_queue(db: DbOption = None, as_json: JsonOption = False) -> None:
    """The review queue: open reviews, held deposits, customers not active, flagged addresses."""
    database = open_database(db)
    try:
        queue = review_queue(database.uow)
    finally:
        database.dispose()
    if as_json:
        print_json(
            {
                "reviews": [review_json(r) for r in queue.reviews],
                "holds": [hold_json(h) for h in queue.holds],
                "customers": [profile_json(p) for p in queue.customers],
                "flagged_addresses": [
                    {"address": a, "reason": r, "flagged_by": b, "flagged_at": _time(t)}
                    for a, r, b, t in queue.flagged_addresses
                ],
            }
        )
        return
    holds = Table(title=f"held deposits ({len(queue.holds)})")
    for column in ("hold", "customer", "sender", "amount", "why"):
        holds.add_column(column)
    for hold in queue.holds:
        holds.add_row(
            hold.id,
            hold.customer_id or "-",
            hold.sender,
            f"{_short_amount(hold.amount)} {hold.instrument_id}",
            hold.why,
        )
    print_table(holds)
    reviews = Table(title=f"open reviews ({len(queue.reviews)})")
    for column in ("review", "kind", "customer", "reason"):
        reviews.add_column(column)
    for review in queue.reviews:
        reviews.add_row(review.id, review.kind, review.customer_id or "-", review.reason)
    print_table(reviews)
    customers = Table(title=f"customers not active ({len(queue.customers)})")
    for column in ("customer", "tier", "status", "reason"):
        customers.add_column(column)
    for profile in queue.customers:
        customers.add_row(
            profile.customer_id, str(profile.tier), profile.status, profile.status_reason or ""
        )
    print_table(customers)
    if queue.flagged_addresses:
        flagged = Table(title=f"flagged addresses ({len(queue.flagged_addresses)})")
        for column in ("address", "reason", "by"):
            flagged.add_column(column)
        for address, reason, by, _at in queue.flagged_addresses:
            flagged.add_row(address, reason, by)
        print_table(flagged)


@compliance_app.command("release")
def compliance_release(
    hold_id: Annotated[str, typer.Argument(help="The held deposit (see `compliance queue`).")],
    reason: ReasonOption,
    customer: Annotated[
        str | None,
        typer.Option("--customer", help="Credit this customer (when the deposit named none)."),
    ] = None,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Release a held deposit: credit it to its customer."""
    with compliance_database(db) as database:
        hold = release_deposit(
            database.uow,
            hold_id,
            actor=actor_name(actor),
            at=_now(),
            reason=reason,
            customer_id=customer,
            registry=kyc_registry(),
        )
    print_json(hold_json(hold))


@compliance_app.command("return")
def compliance_return(
    hold_id: Annotated[str, typer.Argument(help="The held deposit (see `compliance queue`).")],
    reason: ReasonOption,
    treasury: TreasuryOption = None,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Return a held deposit to its sender (queued as a payout; the workers send it)."""
    settings = Settings.from_environment()
    party = treasury_party(treasury or deployment().treasury.party, settings)
    with compliance_database(db, settings) as database:
        record = return_deposit(
            database.uow,
            hold_id,
            treasury=party,
            actor=actor_name(actor),
            at=_now(),
            reason=reason,
            registry=kyc_registry(),
        )
    print_json(withdrawal_json(record))


def _status_command(
    customer: str, status: str, reason: str, actor: str | None, db: str | None
) -> None:
    with compliance_database(db) as database:
        profile = set_customer_status(
            database.uow, customer, status, actor=actor_name(actor), at=_now(), reason=reason
        )
    print_json(profile_json(profile))


CustomerArgument = Annotated[str, typer.Argument(help="The customer.")]


@compliance_app.command("freeze")
def compliance_freeze(
    customer: CustomerArgument, reason: ReasonOption, actor: ActorOption = None, db: DbOption = None
) -> None:
    """Freeze a customer: every operation of theirs is refused, deposits are held."""
    _status_command(customer, "frozen", reason, actor, db)


@compliance_app.command("unfreeze")
def compliance_unfreeze(
    customer: CustomerArgument, reason: ReasonOption, actor: ActorOption = None, db: DbOption = None
) -> None:
    """Make a frozen, under-review or blacklisted customer active again."""
    _status_command(customer, "active", reason, actor, db)


@compliance_app.command("status")
def compliance_status(
    customer: CustomerArgument,
    status: Annotated[str, typer.Argument(help="active, under_review, frozen or blacklisted.")],
    reason: ReasonOption,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Set a customer's KYC status."""
    _status_command(customer, status, reason, actor, db)


@compliance_app.command("tier")
def compliance_tier(
    customer: CustomerArgument,
    tier: Annotated[int, typer.Argument(min=0, max=4, help="The new KYC tier, 0–4.")],
    reason: ReasonOption,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Change a customer's KYC tier (after enhanced verification, say)."""
    with compliance_database(db) as database:
        profile = change_tier(
            database.uow, customer, tier, actor=actor_name(actor), at=_now(), reason=reason
        )
    print_json(profile_json(profile))


@compliance_app.command("limits")
def compliance_limits(
    tier: Annotated[
        int | None, typer.Option("--tier", min=0, max=4, help="Tier to change.")
    ] = None,
    operation: Annotated[
        str | None, typer.Option("--operation", help="Operation to change.")
    ] = None,
    per_operation: Annotated[
        str | None, typer.Option("--per-operation", help="Amount or 'none'.")
    ] = None,
    daily: Annotated[str | None, typer.Option("--daily", help="Amount or 'none'.")] = None,
    monthly: Annotated[str | None, typer.Option("--monthly", help="Amount or 'none'.")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (audited).")] = None,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Show the limit ladder in force; with --tier and --operation, set one step of it."""
    database = open_database(db)
    registry = kyc_registry()
    try:
        if tier is not None or operation is not None:
            if tier is None or operation is None or reason is None:
                fail("setting limits needs --tier, --operation and --reason")
            set_tier_limits(
                database.uow,
                tier,
                operation,
                limits_from_text(per_operation, daily, monthly),
                actor=actor_name(actor),
                at=_now(),
                reason=reason,
            )
        with database.uow() as uow:
            ladder = registry.session(uow, [], since=_now(), lock=False).ladder
    except SluiceError as exc:
        fail_with(exc)
    finally:
        database.dispose()
    print_json(
        [
            {"tier": t, "operation": op, **ladder.of(t, op).as_dict()}
            for t in range(5)
            for op in OPERATIONS
        ]
    )


@compliance_app.command("flag")
def compliance_flag(
    address: Annotated[str, typer.Argument(help="A party or address.")],
    reason: ReasonOption,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Flag an address: every operation with it is refused at once, deposits from it held."""
    with compliance_database(db) as database:
        added = flag_address(
            database.uow, address, actor=actor_name(actor), at=_now(), reason=reason
        )
    note(f"{address} flagged" if added else f"{address} was already flagged")


@compliance_app.command("unflag")
def compliance_unflag(
    address: Annotated[str, typer.Argument(help="A flagged party or address.")],
    reason: ReasonOption,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Lift an address's flag."""
    with compliance_database(db) as database:
        unflag_address(database.uow, address, actor=actor_name(actor), at=_now(), reason=reason)
    note(f"{address} unflagged")


@compliance_app.command("close-review")
def compliance_close_review(
    review_id: Annotated[str, typer.Argument(help="The review (see `compliance queue`).")],
    resolution: Annotated[str, typer.Option("--resolution", help="What was decided and why.")],
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Close a review item."""
    with compliance_database(db) as database:
        close_review(
            database.uow, review_id, actor=actor_name(actor), at=_now(), resolution=resolution
        )
    note(f"review {review_id} closed")


@compliance_app.command("screen-customers")
def compliance_screen_customers(
    list_dir: Annotated[
        Path | None,
        typer.Option(
            "--list", help="Sanctions list directory (default: compliance.sanctions_list)."
        ),
    ] = None,
    prefix: Annotated[str | None, typer.Option("--prefix", help="OFAC file set prefix.")] = None,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Screen every customer's name; matches go under review (run after each list update)."""
    config = deployment()
    directory = list_dir or config.compliance.sanctions_list
    if directory is None:
        fail("no sanctions list: pass --list DIR or set compliance.sanctions_list")
    with compliance_database(db) as database:
        screen = bootstrap.sanctions_screen(directory, prefix or config.compliance.sanctions_prefix)
        matches = screen_customers(
            database.uow,
            screen,
            actor=actor_name(actor),
            at=_now(),
            on_progress=lambda done, total: note(f"screened {done}/{total} customers"),
        )
    for customer_id, result in matches:
        sys.stdout.write(
            json.dumps({"customer_id": customer_id, **dataclasses.asdict(result)}) + "\n"
        )
    note(f"{len(matches)} match(es); see `sluice compliance queue`")


@audit_app.command("verify")
def audit_verify(db: DbOption = None) -> None:
    """Check the audit trail's hash chain; names any modified, deleted or reordered record."""
    database = open_database(db)
    try:
        result = verify_audit_log(
            database.uow,
            on_progress=lambda n: note(f"checked {n} records") if n % 100_000 == 0 else None,
        )
    finally:
        database.dispose()
    for finding in result.findings:
        sys.stdout.write(f"{finding.kind}: {finding.message}\n")
    if result.ok:
        sys.stdout.write(f"audit trail intact: {result.records_checked} records\n")
        return
    sys.stdout.write(
        f"audit trail BROKEN: {len(result.findings)} finding(s) in "
        f"{result.records_checked} records\n"
    )
    raise typer.Exit(1)


@audit_app.command("list")
def audit_list(
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer.")] = None,
    operation_id: Annotated[
        str | None, typer.Option("--operation-id", help="Only this operation.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000)] = 100,
    db: DbOption = None,
) -> None:
    """Audit records, newest last, as JSON lines."""
    database = open_database(db)
    try:
        records = list_audit_records(
            database.uow, customer_id=customer, operation_id=operation_id, limit=limit
        )
    finally:
        database.dispose()
    for record in records:
        entry = record.entry
        sys.stdout.write(
            json.dumps(
                {
                    "seq": record.seq,
                    "recorded_at": _time(entry.recorded_at),
                    "operation": entry.operation,
                    "operation_id": entry.operation_id,
                    "actor": entry.actor,
                    "customer_id": entry.customer_id,
                    "kyc": entry.kyc,
                    "parameters": entry.parameters,
                    "checks": list(entry.checks),
                    "state_changes": list(entry.state_changes),
                    "error": entry.error,
                    "hash": record.hash,
                },
                default=str,
            )
            + "\n"
        )


# --- the service and its API keys --------------------------------------------------------------


@app.command("serve")
def serve(
    host: Annotated[
        str | None,
        typer.Option("--host", help="Interface to listen on (default: api.host, 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", min=0, max=65535, help="Port (default: api.port, 8080; 0: any free port)."
        ),
    ] = None,
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            min=0.05,
            max=3600.0,
            help="Seconds between rounds of ingestion and the workers.",
        ),
    ] = 1.0,
    db: DbOption = None,
    ledger: LedgerOption = None,
    ledger_url: LedgerUrlOption = None,
) -> None:
    """Serve the HTTP API (OpenAPI at /openapi.json) with ingestion and the workers, until
    SIGTERM or Ctrl-C.

    With no configuration: an SQLite DB and an embedded ledger under the data directory
    (SLUICE_DATA_DIR, default ./data); the ledger is created on the first start with Canton Coin
    (Amulet) and USDX. Against an embedded ledger file this process is its only writer: stop
    `sluice workers run` on the same file first."""
    from sluice.server import serve as run_service

    config = deployment()
    settings = withdrawal_settings()
    try:
        clean = run_service(
            config,
            host=host,
            port=port,
            interval_s=interval,
            database_url=db,
            ledger_path=ledger,
            ledger_url=ledger_url,
            withdrawal_settings=settings,
        )
    except ArgumentError:
        fail("--db is not a database URL (expected sqlite:///path or postgresql://…)")
    except SluiceError as exc:
        fail_with(exc)
    if not clean:
        note("sluice stopped, but not cleanly: see the log above")
        raise typer.Exit(1)
    note("sluice stopped cleanly")


def api_key_json(record: ApiKeyRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "role": record.role,
        "customer_id": record.customer_id,
        "label": record.label,
        "created_by": record.created_by,
        "created_at": _time(record.created_at),
        "revoked_by": record.revoked_by,
        "revoked_at": _time(record.revoked_at),
    }


@admin_app.command("create-api-key")
def admin_create_api_key(
    role: Annotated[str, typer.Option("--role", help=f"One of: {', '.join(ROLES)}.")],
    customer: Annotated[
        str | None, typer.Option("--customer", help="The customer a `user` key acts for.")
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="What the key is for (shown in lists).")
    ] = None,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API key and print it: only its hash is stored, so it is shown this once."""
    try:
        checked = check_role(role)
    except ValueError as exc:
        fail(f"--role: {exc}")
    who = actor_name(actor)
    with compliance_database(db or deployment().database_url) as database:
        record, secret = create_api_key(
            database.uow, role=checked, customer_id=customer, label=label, actor=who, at=_now()
        )
    if as_json:
        print_json({**api_key_json(record), "key": secret})
    else:
        lines = [f"key: {secret}", f"id: {record.id}", f"role: {record.role}"]
        if record.customer_id:
            lines.append(f"customer: {record.customer_id}")
        if record.label:
            lines.append(f"label: {record.label}")
        sys.stdout.write("\n".join(lines) + "\n")
    note(
        "keep the key now: it will not be shown again (send it as the X-API-Key header; "
        f"revoke it with `sluice admin revoke-api-key {record.id}`)"
    )


@admin_app.command("list-api-keys")
def admin_list_api_keys(
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many keys.")] = 0,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """API keys (never their secrets), revoked ones included."""
    with compliance_database(db or deployment().database_url) as database:
        records = list_api_keys(database.uow, offset=offset, limit=limit)
    if as_json:
        print_json([api_key_json(r) for r in records])
        return
    if not records:
        note("no API keys (create one with `sluice admin create-api-key --role super_admin`)")
        return
    table = Table(title=f"{len(records)} API key(s)")
    for column in ("id", "role", "customer", "label", "created by", "created at", "revoked"):
        table.add_column(column, no_wrap=column == "id")
    for r in records:
        revoked = f"{_time(r.revoked_at)} by {r.revoked_by}" if r.revoked_at else ""
        table.add_row(
            r.id,
            r.role,
            r.customer_id or "—",
            r.label or "",
            r.created_by,
            _time(r.created_at),
            revoked,
        )
    print_table(table)


@admin_app.command("revoke-api-key")
def admin_revoke_api_key(
    key_id: Annotated[str, typer.Argument(help="The key's id (from list-api-keys).")],
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Revoke an API key: requests with it are refused from now on (within seconds)."""
    who = actor_name(actor)
    with compliance_database(db or deployment().database_url) as database:
        revoke_api_key(database.uow, key_id, actor=who, at=_now())
    note(f"API key {key_id} revoked")


@app.command("demo")
def demo(
    data: Annotated[
        Path, typer.Option("--data", help="Folder for the demo's ledger and database.")
    ] = Path("data/demo"),
    seed: Annotated[int, typer.Option(help="Seed for the demo's customers and amounts.")] = 1,
    via_http: Annotated[
        bool,
        typer.Option(
            "--via-http",
            help="Serve the ledger on a local port; every exchange call goes through the Canton "
            "client over HTTP and WebSocket.",
        ),
    ] = False,
    ledger_url: Annotated[
        str | None,
        typer.Option(
            "--ledger-url",
            help="Run against a `sluice ledger serve` at this URL (started with --create on a "
            "fresh ledger file).",
        ),
    ] = None,
) -> None:
    """Run the whole flow on the embedded defaults and print a readable report."""
    from sluice.demo import run_demo

    if via_http and ledger_url:
        fail("--via-http starts its own server; --ledger-url uses one already running: pick one")
    ok = run_demo(data, seed=seed, console=Console(), via_http=via_http, ledger_url=ledger_url)
    raise typer.Exit(0 if ok else 1)
