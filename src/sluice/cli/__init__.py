"""The ``sluice`` command line: translates arguments into service calls and prints results."""

from __future__ import annotations

import typer

from sluice.cli import (
    admin,
    alerts,
    audit,
    bench,
    books,
    breakers,
    btc,
    compliance,
    config,
    customers,
    demo,
    deposits,
    events,
    exchange,
    exchange_inventory,
    ingest,
    instruments,
    issuance,
    ledger,
    oracle,
    por,
    reserves,
    serve,
    sim,
    withdrawals,
    workers,
)
from sluice.cli.common import configure

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
app.callback()(configure)

# Each part adds its commands with ``register(app)``. `sluice --help` lists the top-level
# commands, then the command groups, each in the order they are registered here.
PARTS = (
    ingest,  # ingest
    books,  # check
    ledger,  # ledger …
    bench,  # bench …
    withdrawals,  # withdraw, withdrawals …
    instruments,  # instruments …
    deposits,  # deposits …
    workers,  # workers …
    btc,  # btc …
    issuance,  # redeem, balances, issuance …
    exchange,  # quote, swap
    exchange_inventory,  # exchange …
    reserves,  # reserves …
    por,  # por …
    events,  # events …
    alerts,  # alerts …
    breakers,  # breakers …
    oracle,  # oracle …
    config,  # config …
    customers,  # customers …
    compliance,  # compliance …
    audit,  # audit …
    admin,  # admin …
    sim,  # sim
    serve,  # serve
    demo,  # demo
)
for part in PARTS:
    part.register(app)


def main() -> None:
    app()
