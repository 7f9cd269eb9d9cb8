"""``sluice serve``: the HTTP API with ingestion and the workers in one process."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.exc import ArgumentError

from sluice.cli.common import (
    DbOption,
    LedgerOption,
    LedgerUrlOption,
    deployment,
    fail,
    fail_with,
    note,
    withdrawal_settings,
)
from sluice.domain.errors import SluiceError


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


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
