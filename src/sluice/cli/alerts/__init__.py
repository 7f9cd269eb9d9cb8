"""``sluice alerts``: the alerts raised (by the product and by the alert rules), acknowledging
them, and checking and evaluating the rules."""

from __future__ import annotations

import typer

# Each module adds its commands to ``alerts_app`` when it is imported, in this order.
from sluice.cli.alerts import commands
from sluice.cli.alerts.wiring import alerts_app

__all__ = ["alerts_app", "commands", "register"]


def register(app: typer.Typer) -> None:
    app.add_typer(alerts_app, name="alerts")
