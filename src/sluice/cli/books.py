"""``sluice check``: whether the books balance against the treasury's holdings."""

from __future__ import annotations

import typer
from rich.markup import escape

from sluice.cli.common import DbOption, err, open_database
from sluice.services.books import check_invariant


def check(db: DbOption = None) -> None:
    """Check the books: customers + suspense + in-flight + fees = treasury holdings."""
    database = open_database(db)
    result = check_invariant(database.uow)
    database.dispose()
    if result.holds:
        err.print("[green]the books balance[/]: every unit owed is held on the ledger")
        return
    for problem in result.problems:
        err.print(f"[red]✗[/] {escape(problem)}", soft_wrap=True)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("check")(check)
