"""``sluice breakers``: each flow's circuit breaker, and an operator's override."""

from __future__ import annotations

import typer

# Each module adds its commands to ``breakers_app`` when it is imported, in this order.
from sluice.cli.breakers import commands
from sluice.cli.breakers.wiring import breakers_app

__all__ = ["breakers_app", "commands", "register"]


def register(app: typer.Typer) -> None:
    app.add_typer(breakers_app, name="breakers")
