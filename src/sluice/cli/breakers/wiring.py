"""What the ``sluice breakers`` commands share: the Typer group."""

from __future__ import annotations

import typer

breakers_app = typer.Typer(
    no_args_is_help=True,
    help="Circuit breakers: their states, and forcing one open or closed.",
)
