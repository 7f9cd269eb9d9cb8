"""``sluice customers``: register customers with their names (each screened against the
sanctions list), add names, show their KYC and limits used."""

from __future__ import annotations

from typing import Annotated

import typer

from sluice import bootstrap
from sluice.bootstrap import Database
from sluice.cli.common import (
    ActorOption,
    DbOption,
    actor_name,
    compliance_database,
    fail,
    kyc_registry,
    note,
    open_database,
    print_json,
    profile_json,
    utc_now,
)
from sluice.domain.amounts import format_amount
from sluice.domain.compliance import MONTH, OPERATIONS, usage_in_windows
from sluice.domain.customer_names import CustomerName, script_label
from sluice.screening.scripts import scripts_of
from sluice.services.customer_screening import NOT_SCREENED, ScreeningOutcome
from sluice.services.reference import add_customer_names, customer_names, register_customer

customers_app = typer.Typer(no_args_is_help=True, help="Customers: register them, show their KYC.")


def _names_json(names: list[CustomerName]) -> list[dict[str, object]]:
    """Each name with its script (told now for a name recorded before scripts were)."""
    return [
        {
            "name": name.name,
            "script": name.script or script_label(scripts_of(name.name)),
            "primary": name.primary,
        }
        for name in names
    ]


def _screening_note(outcome: ScreeningOutcome) -> None:
    if not outcome.screened:
        if outcome.names:
            note(f"names not screened: {NOT_SCREENED} (compliance.sanctions_list)")
        return
    if not outcome.hits:
        note(f"{len(outcome.names)} name(s) screened: no match")
        return
    for hit in outcome.hits:
        via = f" via {hit.transliteration}" if hit.transliteration else ""
        note(
            f"name {hit.name.name!r} matches {hit.result.matched_name!r} "
            f"({hit.result.entity_id}, score {hit.result.score:.1f}{via})"
        )
    note(
        f"customer {outcome.hits[0].customer_id} is {outcome.status or 'not active'}: "
        "see `sluice compliance queue`"
    )


def _customer_json(database: Database, customer_id: str, outcome: ScreeningOutcome) -> None:
    with database.uow() as uow:
        profile = uow.compliance.profiles([customer_id])[customer_id]
    names = customer_names(database.uow, customer_id)
    print_json(
        {**profile_json(profile), "names": _names_json(names), "screening": outcome.as_dict()}
    )
    _screening_note(outcome)


@customers_app.command("add")
def customers_add(
    customer_id: Annotated[str, typer.Argument(help="The exchange's id for the customer.")],
    name: Annotated[
        list[str],
        typer.Option(
            "--name",
            help="A name, screened against the sanctions list: the first is the legal (primary) "
            "name, each further one another name (other script, maiden name, alias).",
        ),
    ],
    account: Annotated[
        list[str] | None,
        typer.Option("--account", help="A deposit account id (repeat for several)."),
    ] = None,
    tier: Annotated[int, typer.Option("--tier", min=0, max=4, help="KYC tier 0–4.")] = 1,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Register a customer with their names, a KYC tier and deposit accounts (idempotent: names
    and accounts new to an existing customer are added). Every name is screened against the
    configured sanctions list; a match puts the customer under review."""
    registry = kyc_registry()
    with compliance_database(db) as database:
        outcome = register_customer(
            database.uow,
            customer_id,
            name[0],
            account or [],
            other_names=name[1:],
            tier=tier,
            actor=actor_name(actor),
            screening=bootstrap.name_screening(registry.screen),
        )
        _customer_json(database, customer_id, outcome)


@customers_app.command("add-name")
def customers_add_name(
    customer_id: Annotated[str, typer.Argument(help="The customer.")],
    name: Annotated[
        list[str],
        typer.Argument(help="Another name (other script, maiden name, alias); several allowed."),
    ],
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Give a customer more names; each is screened against the configured sanctions list (a
    match puts the customer under review). A name they already have is skipped."""
    registry = kyc_registry()
    with compliance_database(db) as database:
        outcome = add_customer_names(
            database.uow,
            customer_id,
            name,
            actor=actor_name(actor),
            screening=bootstrap.name_screening(registry.screen),
        )
        _customer_json(database, customer_id, outcome)


@customers_app.command("show")
def customers_show(
    customer_id: Annotated[str, typer.Argument(help="The customer.")],
    db: DbOption = None,
) -> None:
    """A customer's names (with their scripts), KYC tier, status, risk score and what they used
    of their limits."""
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
            names = uow.reference.customer_names_of(customer_id) or []
    finally:
        database.dispose()
    print_json({**profile_json(profile), "names": _names_json(names), "limits": windows})


def register(app: typer.Typer) -> None:
    app.add_typer(customers_app, name="customers")
