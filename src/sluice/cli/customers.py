"""``sluice customers``: register customers, show their KYC and limits used."""

from __future__ import annotations

from typing import Annotated

import typer

from sluice.cli.common import (
    ActorOption,
    DbOption,
    actor_name,
    compliance_database,
    fail,
    kyc_registry,
    open_database,
    print_json,
    profile_json,
    utc_now,
)
from sluice.domain.amounts import format_amount
from sluice.domain.compliance import MONTH, OPERATIONS, usage_in_windows
from sluice.services.reference import register_customer

customers_app = typer.Typer(no_args_is_help=True, help="Customers: register them, show their KYC.")


@customers_app.command("add")
def customers_add(
    customer_id: Annotated[str, typer.Argument(help="The exchange's id for the customer.")],
    name: Annotated[str, typer.Option("--name", help="Legal name (screened against lists).")],
    account: Annotated[
        list[str] | None,
        typer.Option("--account", help="A deposit account id (repeat for several)."),
    ] = None,
    tier: Annotated[int, typer.Option("--tier", min=0, max=4, help="KYC tier 0–4.")] = 1,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Register a customer with a KYC tier and deposit accounts (idempotent)."""
    with compliance_database(db) as database:
        register_customer(
            database.uow, customer_id, name, account or [], tier=tier, actor=actor_name(actor)
        )
        with database.uow() as uow:
            profile = uow.compliance.profiles([customer_id])[customer_id]
    print_json(profile_json(profile))


@customers_app.command("show")
def customers_show(
    customer_id: Annotated[str, typer.Argument(help="The customer.")],
    db: DbOption = None,
) -> None:
    """A customer's KYC tier, status, risk score and what they used of their limits."""
    database = open_database(db)
    registry = kyc_registry()
    try:
        now = utc_now()
        with database.uow() as uow:
            session = registry.session(uow, [customer_id], since=now, lock=False)
            profile = session.profiles.get(customer_id)
            if profile is None:
                fail(f"unknown customer {customer_id!r}")
            usage = uow.compliance.usage([customer_id], now - MONTH).get(customer_id, [])
            windows = {}
            for operation in OPERATIONS:
                daily, monthly = usage_in_windows(usage, operation, now)
                limits = session.ladder.of(profile.tier, operation)
                windows[operation] = {
                    "used_24h": format_amount(daily),
                    "used_30d": format_amount(monthly),
                    **limits.as_dict(),
                }
    finally:
        database.dispose()
    print_json({**profile_json(profile), "limits": windows})


def register(app: typer.Typer) -> None:
    app.add_typer(customers_app, name="customers")
