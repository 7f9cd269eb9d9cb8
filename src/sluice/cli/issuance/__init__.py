"""``sluice issuance``, ``sluice redeem`` and ``sluice balances``: iSTSi issued against Bitcoin
in custody.

A customer's confirmed Bitcoin deposit becomes a ``bitcoin_deposit`` operation of the router,
which checks KYC, reserves the deposit, mints iSTSi (1 unit = 1 sat) and waits until it is
credited; ``sluice redeem`` opens a ``token_withdrawal`` that burns the iSTSi and pays the
Bitcoin back. `sluice issuance run` (or `sluice serve`) moves them on; `list` and `show` follow
them; the overrides (`retry`, `compensate`, `resolve`, `resume-minting`) take approvals; a
compliance officer `release`s or `return`s a held deposit.

Listing, showing and balances read the Integration DB only. Every command has ``--json`` (one
JSON document on stdout, whose keys are a contract); a refused command writes ``error <code>
<name>: message`` on stderr, exits 2 and, under ``--json``, prints the error document
``{code, error, message, details}`` on stdout (a duplicate request: ``details.first``, the
first operation).
"""

from __future__ import annotations

import typer

# Each module adds its commands to ``issuance_app`` when it is imported; the import order is the
# order `sluice issuance --help` lists them in.
from sluice.cli.issuance import customer, operations, overrides
from sluice.cli.issuance.wiring import issuance_app

__all__ = ["customer", "issuance_app", "operations", "overrides", "register"]


def register(app: typer.Typer) -> None:
    app.command("redeem")(customer.redeem)
    app.command("balances")(customer.balances)
    app.add_typer(issuance_app, name="issuance")
