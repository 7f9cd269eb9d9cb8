"""What to try after the demo, on the files it leaves in its data folder: follow the ledger,
serve the HTTP API, check the books, the compliance officer's view, screening, replaying real
Canton updates. Printed once the demo has closed its ledger and database."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from sluice.demo.api import API_CUSTOMER
from sluice.demo.world import NODE, World


def serve_steps(world: World) -> list[tuple[str, str]]:
    """``sluice serve`` on the demo's files, when the demo's ledger is a file of its own."""
    if world.wire is not None and not world.wire.started_here:
        return []
    key = "sluice admin create-api-key --role user --customer"
    return [
        (
            "serve the HTTP API, ingestion and the workers on the demo's files (the only writer of "
            "the ledger file while it runs); the demo's keys were never shown, so make one",
            f"{key} {API_CUSTOMER.id} --db {world.db_url}; "
            f"sluice serve --db {world.db_url} --ledger {world.ledger_path} --port 8080",
        ),
        (
            "then, in another terminal, with the key it printed",
            'curl -H "X-API-Key: sk_…" '
            f"http://127.0.0.1:8080/v1/customers/{API_CUSTOMER.id}/balances",
        ),
    ]


def show_next_steps(console: Console, world: World) -> None:
    console.print()
    console.print("[bold]Explore further[/] (the files stay in the data folder):")
    steps: list[tuple[str, str]] = []
    if world.wire is not None and world.wire.started_here:
        steps.append(
            (
                "serve the demo's ledger again (the next command reads it through the Canton "
                "client; Ctrl-C stops the server)",
                f"sluice ledger serve --ledger {world.ledger_path} --port 7575",
            )
        )
    participant = "http://127.0.0.1:7575/nodes/exchange"
    if world.wire is not None and not steps:
        participant = world.wire.participant_url
    for comment, command in (
        *steps,
        (
            "follow the ledger (nothing new arrives here; Ctrl-C stops it cleanly)",
            f"sluice ingest --follow --party {world.treasury} --db {world.db_url} "
            + (
                f"--ledger-url {participant}"
                if world.wire
                else f"--ledger {world.ledger_path} --node {NODE}"
            ),
        ),
        *serve_steps(world),
        ("check the books", f"sluice check --db {world.db_url}"),
        (
            "the compliance officer's view, and the audit trail's hash chain",
            f"sluice compliance queue --db {world.db_url}; sluice audit verify --db {world.db_url}",
        ),
        (
            "screen names against the OFAC sample list",
            "sluice compliance screen --list ../shared/reference/sanctions --prefix sample- "
            '--name "Elvis Angus Logan Morey"',
        ),
        (
            "ingest real Canton updates recorded in a file",
            "sluice ledger replay ../shared/reference/canton/fixtures/mock-txs.json "
            "--party alice::normalized",
        ),
    ):
        console.print(f"  # {comment}", style="dim", highlight=False)
        console.print(f"  {command}", soft_wrap=True, highlight=False, markup=False)


# The keys the demo makes for signing in to the pages (written to this file in the data folder).
DASHBOARD_KEYS = "dashboard-keys.txt"
DASHBOARD_ROLES = (("super_admin", None), ("compliance_officer", None), ("user", API_CUSTOMER.id))


def dashboard_keys(world: World) -> list[tuple[str, str | None, str]]:
    """One sign-in key per role of :data:`DASHBOARD_ROLES` on the demo's Integration DB, also
    written to ``dashboard-keys.txt`` (readable by its owner only): (role, customer, key)."""
    from sluice import bootstrap
    from sluice.services.access import create_api_key

    database = bootstrap.database(world.db_url)
    made: list[tuple[str, str | None, str]] = []
    try:
        for role, customer in DASHBOARD_ROLES:
            _record, key = create_api_key(
                database.uow,
                role=role,
                customer_id=customer,
                label="demo dashboard",
                actor="demo",
                at=datetime.now(UTC),
            )
            made.append((role, customer, key))
    finally:
        database.dispose()
    path = world.data_dir / DASHBOARD_KEYS
    path.touch(mode=0o600)
    path.write_text("".join(f"{role}\t{customer or '-'}\t{key}\n" for role, customer, key in made))
    return made


def show_dashboard(console: Console, world: World) -> None:
    """The report's last lines: the one command that serves the pages on the demo's data, and
    the keys to sign in with."""
    if world.wire is not None and not world.wire.started_here:
        return
    made = dashboard_keys(world)
    console.print()
    console.print("[bold]The dashboard and the customer page[/] on the demo's data:")
    if world.data_dir.resolve() == Path("data/demo").resolve():
        command = "make dashboard"
    else:
        command = f"sluice serve --db {world.db_url} --ledger {world.ledger_path} --port 8080"
    console.print(
        f"  {command}     # then open http://localhost:8080/login (Ctrl-C stops it)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    for role, customer, key in made:
        who = f"{role} ({customer})" if customer else role
        console.print(
            f"  sign in as {who:<24} {key}", markup=False, highlight=False, soft_wrap=True
        )
    console.print(
        f"  (the keys are also in {world.data_dir / DASHBOARD_KEYS})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
