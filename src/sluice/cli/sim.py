"""``sluice sim``: the simulation of customers, workers, crashes and ledger faults."""

from __future__ import annotations

from typing import Annotated

import typer

from sluice.cli.common import DbOption


def sim(
    seed: Annotated[int, typer.Option("--seed", help="Seed of the run (reproducible).")],
    steps: Annotated[int, typer.Option("--steps", min=1, help="Operations to run.")],
    crash_rate: Annotated[
        float, typer.Option("--crash-rate", min=0.0, max=1.0, help="Chance of a crash per step.")
    ] = 0.05,
    fault_rate: Annotated[
        float, typer.Option("--fault-rate", min=0.0, max=1.0, help="Chance of a ledger fault.")
    ] = 0.05,
    db: DbOption = None,
    late_commit_rate: Annotated[
        float,
        typer.Option(
            "--late-commit-rate",
            min=0.0,
            max=1.0,
            help="Share of the faults that commit the treasury's next command late.",
        ),
    ] = 0.0,
    via_http: Annotated[
        bool,
        typer.Option(
            "--via-http",
            help="Serve the ledger on a local port and talk to it through the Canton client.",
        ),
    ] = False,
) -> None:
    """Simulate customers, workers, crashes and ledger faults; check nothing is paid twice."""
    from sluice.sim import simulate_command

    raise typer.Exit(
        simulate_command(seed, steps, crash_rate, fault_rate, db, via_http, late_commit_rate)
    )


def register(app: typer.Typer) -> None:
    app.command("sim")(sim)
