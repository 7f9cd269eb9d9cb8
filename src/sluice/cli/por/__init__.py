"""``sluice por``: proof of reserves.

``snapshot`` takes a snapshot of customer liabilities from the journal, one Merkle-sum tree per
instrument, and publishes its roots; ``proof`` prints one customer's inclusion proof;
``verify`` checks a proof against a published root with nothing else (no database, no
configuration); ``reserves`` prints the signed reserves side of a snapshot and
``verify-reserves`` checks it. The construction is fixed in ``docs/proof-of-reserves.md``.
"""

from __future__ import annotations

import typer

# Each module adds its commands to ``por_app`` when it is imported, in this order.
from sluice.cli.por import reserves, snapshot, verify
from sluice.cli.por.wiring import por_app

__all__ = ["por_app", "register", "reserves", "snapshot", "verify"]


def register(app: typer.Typer) -> None:
    app.add_typer(por_app, name="por")
