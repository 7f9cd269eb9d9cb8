"""``sluice breakers …`` commands: list each flow's breaker, force one open or closed."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from sluice import bootstrap
from sluice.cli.breakers.wiring import breakers_app
from sluice.cli.common import (
    ActorOption,
    DbOption,
    JsonOption,
    actor_name,
    compliance_database,
    deployment,
    fail,
    note,
    print_json,
    print_table,
    utc_now,
)
from sluice.services.breakers import (
    FLOWS,
    FORCE_CHOICES,
    breaker_report,
    configure_breakers,
    force_breaker,
)


@breakers_app.command("list")
def breakers_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Each flow's breaker: its settings and any state an operator forced. (A running
    `sluice serve` shows its live states, windows and waits at GET /v1/breakers.)"""
    config = deployment()
    with compliance_database(db or config.database_url) as database:
        registry = configure_breakers(bootstrap.breaker_settings(config))
        rows = breaker_report(database.uow, registry)
    if as_json:
        print_json(rows)
        return
    table = Table(title="circuit breakers")
    for column in ("flow", "state", "forced by", "reason", "window", "open s", "probes"):
        table.add_column(column, no_wrap=column in ("flow", "state"))
    for row in rows:
        settings = row["settings"]
        assert isinstance(settings, dict)
        forced = row["forced"]
        table.add_row(
            str(row["flow"]),
            f"forced {forced}" if forced else "automatic",
            str(row["forced_by"] or ""),
            str(row["forced_reason"] or ""),
            f"{settings['min_calls']}/{settings['window']} calls, "
            f"{settings['failure_rate']:.0%} failed",
            f"{settings['open_s']:g}",
            str(settings["probes"]),
        )
    print_table(table)


@breakers_app.command("force")
def breakers_force(
    flow: Annotated[str, typer.Argument(help=f"The flow: {', '.join(FLOWS)}.")],
    state: Annotated[
        str,
        typer.Argument(
            help="open (refuse every call), closed (let every call through) or auto (give it "
            "back to the automatic state)."
        ),
    ],
    reason: Annotated[str, typer.Option("--reason", help="Why, for the audit trail.")],
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Force a flow's circuit breaker open or closed, or back to automatic (audited). Running
    processes apply it within seconds."""
    if state not in FORCE_CHOICES:
        fail(f"state must be one of {', '.join(FORCE_CHOICES)}, got {state!r}")
    who = actor_name(actor)
    config = deployment()
    with compliance_database(db or config.database_url) as database:
        registry = configure_breakers(bootstrap.breaker_settings(config))
        row = force_breaker(
            database.uow,
            flow=flow,
            state=state,
            reason=reason,
            actor=who,
            at=utc_now(),
            registry=registry,
        )
    if as_json:
        print_json(
            {"flow": row.name, "forced": row.forced, "actor": row.actor, "reason": row.reason}
        )
        return
    if row.forced is None:
        note(f"the {row.name} breaker is automatic again")
    else:
        undo = f"sluice breakers force {row.name} auto --reason …"
        note(f"the {row.name} breaker is forced {row.forced} until `{undo}`")
