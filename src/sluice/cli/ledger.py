"""``sluice ledger``: serve the embedded ledger over HTTP, replay recorded updates."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from sluice.cli.common import (
    DbOption,
    LedgerOption,
    fail,
    ingestion_progress,
    kyc_registry,
    note,
    open_database,
    print_json,
)
from sluice.config import Settings
from sluice.domain.errors import SluiceError
from sluice.domain.ledger import check_party_id
from sluice.ledger.file import UpdateFile
from sluice.services.books import treasury_view
from sluice.services.ingestion import Ingestion, IngestionSettings, connection_name

ledger_app = typer.Typer(
    no_args_is_help=True, help="The token ledger: serve it over HTTP, replay recorded updates."
)


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


def register(app: typer.Typer) -> None:
    app.add_typer(ledger_app, name="ledger")
