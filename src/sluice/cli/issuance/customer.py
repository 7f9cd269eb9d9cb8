"""`sluice redeem` (a customer's iSTSi paid out as Bitcoin) and `sluice balances` (a customer's
balances per instrument)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from sluice.cli.common import (
    ActorOption,
    DbOption,
    JsonOption,
    actor_name,
    note,
    print_json,
    print_table,
    short_amount,
)
from sluice.cli.issuance.wiring import (
    database_only,
    issuance_session,
    operation_lines,
    write,
)
from sluice.services.issuance_router import operation_json


def redeem(
    customer: Annotated[str, typer.Option("--customer", help="The customer redeeming.")],
    amount: Annotated[
        int, typer.Option("--amount", min=1, help="Satoshis of iSTSi (1 iSTSi unit = 1 sat).")
    ],
    to: Annotated[str, typer.Option("--to", help="The Bitcoin address to pay.")],
    idempotency_key: Annotated[
        str,
        typer.Option(
            "--idempotency-key",
            help="The request's key: the same key again is refused (error 42) and shows the "
            "first request.",
        ),
    ],
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Redeem iSTSi for Bitcoin: the amount moves from the customer's account to in flight at
    once; the router burns it, pays the address (the network fee deducted) and completes at the
    payout's confirmations (`sluice issuance run`, or `sluice serve`)."""
    from sluice.services.issuance_redeem import request_redemption

    who = actor_name(actor)
    with issuance_session(db, as_json=as_json) as issuance:
        op = request_redemption(
            issuance.context,
            customer_id=customer,
            amount_sats=amount,
            address=to,
            idempotency_key=idempotency_key,
            actor=who,
        )
    record = operation_json(op)
    if as_json:
        print_json(record)
        return
    write(operation_lines(record))
    note(f"follow it with `sluice issuance show {op.id}`")


def balances(
    customer: Annotated[str, typer.Option("--customer", help="The customer.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """A customer's balances per instrument: available, held (deposits under KYC review) and in
    flight (withdrawals and redemptions not paid yet)."""
    from sluice.services.balances import customer_balances

    with database_only(db, as_json=as_json) as database:
        lines = customer_balances(database.uow, customer)
    if as_json:
        print_json({"customer_id": customer, "balances": [line.to_json() for line in lines]})
        return
    if not lines:
        note(f"customer {customer} has no balances")
        return
    table = Table(title=f"customer {customer}")
    for column in ("instrument", "admin", "available", "held", "in flight", "total"):
        numeric = column not in ("instrument", "admin")
        table.add_column(column, justify="right" if numeric else "left")
    for line in lines:
        table.add_row(
            line.instrument.id,
            line.instrument.admin,
            short_amount(line.available),
            short_amount(line.held),
            short_amount(line.in_flight),
            short_amount(line.total),
        )
    print_table(table)
