"""What the ``sluice alerts`` commands share: the Typer group."""

from __future__ import annotations

import typer

alerts_app = typer.Typer(
    no_args_is_help=True,
    help="Alerts: list, acknowledge, and the alert rules.",
)
