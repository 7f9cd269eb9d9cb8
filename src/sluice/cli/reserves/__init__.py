"""``sluice reserves``: what backs what each customer is owed.

``sluice reserves`` shows the reserve ratio, supply and reserves per instrument, each with the
block height and hash or the ledger offset it was read at; ``sluice reserves reconcile`` reads
every source independently and classes what disagrees.
"""

from __future__ import annotations

import typer

# Each module adds its commands to ``reserves_app`` when it is imported, in this order.
from sluice.cli.reserves import reconcile, show
from sluice.cli.reserves.wiring import reserves_app

__all__ = ["reconcile", "register", "reserves_app", "show"]


def register(app: typer.Typer) -> None:
    app.add_typer(reserves_app, name="reserves")
