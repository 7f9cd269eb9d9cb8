"""Chapter: the ledger and the books the demo built — the data folder, the ledger's nodes, the
treasury and its preapproval, the instruments, the customers, and the activity on the ledger
before sluice reads any of it."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from sluice.demo.report import Chapter, Sections, Status, money, short
from sluice.demo.world import BLOCKED, CUSTOMERS, NODE, Exchange, World


def run(exchange: Exchange, status: Status) -> World:
    """Nothing left to do: the world was built before the first chapter."""
    return exchange.world


def show(console: Console, world: World, sections: Sections) -> bool:
    the_plan = world.plan
    table = Table(
        title=f"{sections.next()}. The ledger and the books",
        title_justify="left",
        show_header=False,
    )
    table.add_column(style="bold")
    table.add_column()
    table.add_row("data folder", str(world.data_dir))
    where = str(world.ledger_path)
    if world.wire is not None:
        where = f"{world.wire.base_url} (served over HTTP; every exchange call goes over the wire)"
    table.add_row("ledger", f"{where} (nodes dso, exchange, wallets)")
    table.add_row("Integration DB", world.db_url)
    table.add_row("treasury", f"{short(world.treasury)} on node {NODE}, preapproval for CC")
    table.add_row("instruments", "CC = Amulet (Canton Coin) of dso; USDX (no preapprovals)")
    table.add_row(
        "customers",
        ", ".join(f"{c.name} ({c.account})" for c in CUSTOMERS)
        + f"; {BLOCKED.name} ({BLOCKED.account}) is on the exchange's block list",
    )
    offer, blocked = the_plan.offer, the_plan.blocked_offer
    table.add_row(
        "activity",
        f"{len(CUSTOMERS)} faucet taps; {len(the_plan.deposits)} 1-step CC deposits, "
        f"{the_plan.unattributed()} of them with an unknown or missing reason; "
        f"2 USDX offers ({money(offer.amount)} from {offer.customer.name}, "
        f"{money(blocked.amount)} from {blocked.customer.name})",
    )
    table.add_row(
        "treasury's stream",
        f"offsets 1…{world.ledger_end} on node {NODE}: {world.transactions} transactions it "
        f"takes part in and {world.checkpoints} checkpoints ({world.updates} updates on the "
        "whole ledger)",
    )
    console.print(table)
    return True


CHAPTER = Chapter("the ledger and the books", run, show)
