"""``sluice demo``: the whole flow on the embedded defaults, with a readable report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from sluice.cli.common import fail


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


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
