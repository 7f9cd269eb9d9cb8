"""``sluice config``: check the deployment configuration."""

from __future__ import annotations

from typing import Annotated

import typer

from sluice.cli.common import deployment, fail_with, note, open_database, open_ledger, print_json
from sluice.domain.errors import SluiceError

config_app = typer.Typer(no_args_is_help=True, help="The deployment configuration: check it.")


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


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
