"""``sluice oracle …``: the price oracle's health, pair by pair, and the prices it refused.

``status`` reads every configured feed now (``--no-refresh``: only what was last recorded) and
shows each pair's health (``healthy``, ``degraded``: the secondary in use at the fallback fee,
``offline``: refused), the price in use and the newest rejection with its rule. It exits 0 when
every pair is healthy, 1 when one is degraded and 2 when one is offline, so a check can act on it.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from sluice import bootstrap
from sluice.cli.common import (
    DbOption,
    JsonOption,
    compliance_database,
    deployment,
    log_to_stderr,
    print_json,
    print_table,
    timestamp_or_none,
)
from sluice.services.oracle import rejection_json, status_json

oracle_app = typer.Typer(
    no_args_is_help=True,
    help="The price oracle: each pair's health and the prices it refused.",
)
EXIT_BY_HEALTH = {"healthy": 0, "degraded": 1, "offline": 2}


def register(app: typer.Typer) -> None:
    app.add_typer(oracle_app, name="oracle")


@oracle_app.command("status")
def oracle_status(
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh/--no-refresh",
            help="Read every feed now (the default), or show what was last recorded.",
        ),
    ] = True,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Each pair's health, price in use and newest rejection. Exit 0: all healthy; 1: one is
    degraded (the fallback in use); 2: one is offline (its exchange refused)."""
    config = deployment()
    log_to_stderr()  # health changes are logged; stdout is the status
    with compliance_database(db or config.database_url) as database:
        service = bootstrap.oracle_service(config, database.uow)
        try:
            if refresh:
                service.refresh()
            status = service.oracle_status()
        finally:
            service.close()
    if as_json:
        print_json(status_json(status))
    else:
        table = Table(title=f"price oracle: {status.health}")
        for column in ("pair", "kind", "health", "source", "price", "observed", "last rejection"):
            table.add_column(column, no_wrap=column in ("pair", "health"))
        for feed in status.feeds:
            last = feed.last_rejection
            table.add_row(
                feed.pair,
                feed.kind,
                feed.health or "not read yet",
                (feed.source or "") + (" (fallback fee)" if feed.fallback_fee else ""),
                feed.price or "",
                timestamp_or_none(feed.observed_at) or "",
                f"{last.rule}: {last.detail}" if last is not None else "",
            )
        if not status.feeds:
            table.caption = "no feeds configured ([[oracle.feeds]] in the configuration file)"
        print_table(table)
    raise typer.Exit(EXIT_BY_HEALTH[status.health])


@oracle_app.command("rejections")
def oracle_rejections(
    pair: Annotated[str | None, typer.Option("--pair", help="Only this pair.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The prices and reads the oracle refused, newest first, each with the rule it broke."""
    config = deployment()
    with compliance_database(db or config.database_url) as database:
        service = bootstrap.oracle_service(config, database.uow)
        try:
            found = service.rejections(pair, limit=limit)
        finally:
            service.close()
    rows = [rejection_json(item) for item in found]
    if as_json:
        print_json(rows)
        return
    table = Table(title="oracle rejections")
    for column in ("at", "pair", "source", "rule", "observed", "detail"):
        table.add_column(column, no_wrap=column in ("at", "pair", "rule"))
    for item in found:
        table.add_row(
            timestamp_or_none(item.at) or "",
            item.pair,
            item.source or "",
            item.rule,
            item.observed or "",
            item.detail,
        )
    print_table(table)
