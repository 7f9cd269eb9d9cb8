"""What the ``sluice reserves`` commands share: the Typer group."""

from __future__ import annotations

import typer

reserves_app = typer.Typer(
    invoke_without_command=True,
    help=(
        "Reserves: the reserve ratio, supply and reserves per instrument, and reconciliation "
        "against the ledger and the Bitcoin node."
    ),
)
