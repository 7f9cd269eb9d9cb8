"""The demo's report: how a chapter is told, the formatting every chapter shares, and the
summary tables read from the books between the chapters that act (customer balances and pending
offers after ingestion, withdrawals and balances after the workers, then the cursor, the alerts
and the books per instrument with the journal invariant).

A chapter (:class:`Chapter`) does its part of the run and returns a story; its ``show`` prints the
story as numbered sections and says whether every check in it holds. Sections are numbered in
the order they are printed (:class:`Sections`), so a chapter added to the list in
:mod:`sluice.demo` renumbers the ones after it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

from rich.console import Console
from rich.table import Table

from sluice.demo.world import (
    CUSTOMERS,
    EVERYONE,
    NODE,
    SYMBOLS,
    Exchange,
    PlannedWithdrawal,
    World,
    held_on_ledger,
    load_cursor,
)
from sluice.domain.amounts import ZERO
from sluice.domain.journal import (
    COMPLIANCE_HOLD,
    FEES,
    IN_FLIGHT,
    SUSPENSE,
    customer_account_name,
    treasury_account_name,
)
from sluice.domain.ledger import Cursor, InstrumentId
from sluice.domain.withdrawals import Withdrawal
from sluice.services.books import BooksCheck, check_invariant, customer_balances, treasury_view
from sluice.services.withdrawals import list_withdrawals

Balances = dict[str, dict[str, Decimal]]  # account name → instrument key → balance
# What the console shows while a chapter runs (``console.status``): a spinner with a message.
Status = Callable[[str], AbstractContextManager[Any]]
Story = TypeVar("Story")


# --- chapters and sections -----------------------------------------------------------------------


@dataclass(slots=True)
class Sections:
    """Numbers the report's sections in the order they are printed, whichever chapter prints
    them."""

    printed: int = 0

    def next(self) -> int:
        self.printed += 1
        return self.printed


@dataclass(frozen=True, slots=True)
class Chapter(Generic[Story]):
    """One part of the demo. ``run`` does it with the exchange's services (saying what it does
    through ``status`` while it takes time) and returns what happened; ``show`` prints that as
    one or more numbered sections and returns True when every check in them holds. ``run``
    prints nothing, so the report reads the same on a terminal and in a file."""

    name: str
    run: Callable[[Exchange, Status], Story]
    show: Callable[[Console, Story, Sections], bool]


# --- formatting ----------------------------------------------------------------------------------


def money(value: Decimal) -> str:
    return f"{value:,.2f}"


def mark(ok: bool) -> str:
    return "[green]✓[/]" if ok else "[bold red]✗[/]"


def shorten(record_id: str) -> str:
    """``wd-6b39a7c9beaa…`` → ``wd-6b39a7c9…``, ``ap-wd-6b39a7c9beaa…`` → ``ap-wd-6b39a7c9…``."""
    prefix, _, digest = record_id.rpartition("-")
    return f"{prefix}-{digest[:8]}…" if prefix else f"{record_id[:11]}…"


def stamp(moment: datetime | None) -> str:
    return f"{moment:%H:%M:%S}" if moment else "?"


def short(party: str) -> str:
    """``hint::1220abcd…`` → ``hint::1220abcd…`` cut to something a table can show."""
    hint, _, fingerprint = party.partition("::")
    return f"{hint}::{fingerprint[:8]}…" if fingerprint else party


def total(balances: Balances, accounts: Iterable[str], instrument_key: str) -> Decimal:
    return sum((balances.get(name, {}).get(instrument_key, ZERO) for name in accounts), ZERO)


# --- after ingestion: what each customer was credited, the offers left pending -------------------


@dataclass(frozen=True, slots=True)
class Deposits:
    world: World
    balances: Balances
    pending: list[dict[str, Any]]  # the treasury's pending incoming offers


def read_deposits(exchange: Exchange, status: Status) -> Deposits:
    world, uow = exchange.world, exchange.database.uow
    pending = treasury_view(uow, world.treasury, world.connection)["pending_instructions"]
    return Deposits(world, customer_balances(uow), pending)


def show_customers(console: Console, story: Deposits, sections: Sections) -> bool:
    world, the_plan, balances = story.world, story.world.plan, story.balances
    table = Table(title=f"{sections.next()}. Customer balances (CC)", title_justify="left")
    for name in ("customer", "deposit account", "deposited on the ledger", "credited by sluice"):
        table.add_column(name, justify="right" if "ed " in name else "left")
    table.add_column("")
    ok = True
    expected = the_plan.expected_balances()
    for customer in CUSTOMERS:
        credited = balances.get(customer_account_name(customer.id), {}).get(world.coin.key(), ZERO)
        matches = credited == expected[customer.id]
        ok = ok and matches
        table.add_row(
            customer.name,
            customer.account,
            money(expected[customer.id]),
            money(credited),
            mark(matches),
        )
    suspense = balances.get(SUSPENSE, {}).get(world.coin.key(), ZERO)
    matches = suspense == the_plan.expected_suspense()
    unknown = sorted({d.reason or "none" for d in the_plan.deposits if not d.attributable})
    table.caption = f"suspense: deposits whose reason is {', '.join(unknown)}"
    table.add_row(
        "[italic]suspense[/]",
        "unknown reasons",
        money(the_plan.expected_suspense()),
        money(suspense),
        mark(matches),
        end_section=True,
    )
    console.print()
    console.print(table)
    return ok and matches


def show_pending(console: Console, story: Deposits, sections: Sections) -> bool:
    world, pending = story.world, story.pending
    noun = "offer" if len(pending) == 1 else "offers"
    table = Table(
        title=f"{sections.next()}. Pending offers: {len(pending)} pending {noun}",
        title_justify="left",
    )
    for name in ("from", "amount", "reason", "status"):
        table.add_column(name)
    for item in pending:
        sender = world.parties.get(item["sender"])
        symbol = world.symbol(InstrumentId(**item["instrument"]).key())
        table.add_row(
            sender.name if sender else short(item["sender"]),
            f"{money(Decimal(item['amount']))} {symbol}",
            item["reason"] or "",
            f"{item['status']} (not credited until accepted)",
        )
    console.print()
    console.print(table)
    return len(pending) == 2


def show_deposits(console: Console, story: Deposits, sections: Sections) -> bool:
    credited = show_customers(console, story, sections)
    pending = show_pending(console, story, sections)
    return credited and pending


DEPOSITS_CREDITED = Chapter("deposits credited, offers pending", read_deposits, show_deposits)


# --- after the workers: every withdrawal's outcome, each customer's balance ----------------------


@dataclass(frozen=True, slots=True)
class Withdrawals:
    world: World
    records: dict[str, Withdrawal]  # by id
    balances: Balances


def read_withdrawals(exchange: Exchange, status: Status) -> Withdrawals:
    uow = exchange.database.uow
    records = {r.id: r for r in list_withdrawals(uow) if r.kind == "withdrawal"}
    return Withdrawals(exchange.world, records, customer_balances(uow))


def outcome(record: Withdrawal, planned: PlannedWithdrawal) -> str:
    if record.status == "completed":
        return "paid once, through a worker crash" if planned.crash else "paid"
    if record.status == "failed":
        return f"refunded: {record.failure or record.last_error or 'failed'}"
    return f"in flight ({record.last_error or 'waiting'})"


def show_withdrawal_table(console: Console, story: Withdrawals, sections: Sections) -> bool:
    world, the_plan, records = story.world, story.world.plan, story.records
    table = Table(title=f"{sections.next()}. Withdrawals", title_justify="left")
    for name in ("withdrawal", "customer", "amount", "instrument", "path", "status", "outcome"):
        table.add_column(name, justify="right" if name == "amount" else "left")
    table.add_column("")
    ok = len(records) == len(the_plan.withdrawals)
    for planned in the_plan.withdrawals:
        record = records.get(planned.id)
        if record is None:
            ok = False
            table.add_row(shorten(planned.id), planned.customer.name, "", "", "", "missing", "")
            continue
        path = "offer" if record.offered_at is not None else "1-step"
        matches = (
            record.status == planned.expected_status
            and path == planned.path
            and record.amount == planned.amount
            and world.symbol(record.instrument.key()) == planned.symbol
        )
        ok = ok and matches
        table.add_row(
            shorten(record.id),
            planned.customer.name,
            money(record.amount),
            world.symbol(record.instrument.key()),
            path,
            record.status,
            outcome(record, planned),
            mark(matches),
        )
    console.print()
    console.print(table)
    return ok


def show_final_balances(console: Console, story: Withdrawals, sections: Sections) -> bool:
    world, the_plan, balances = story.world, story.world.plan, story.balances
    table = Table(
        title=f"{sections.next()}. Balances after deposits and withdrawals", title_justify="left"
    )
    table.add_column("customer")
    for symbol in SYMBOLS:
        for name in ("credited", "paid out", "balance"):
            table.add_column(f"{symbol} {name}", justify="right")
    table.add_column("")
    table.caption = (
        "credited: deposits sluice credited; paid out: withdrawals paid (a refunded one pays "
        "nothing); balance: the books, = credited − paid out"
    )
    ok = True
    for customer in EVERYONE:
        account = balances.get(customer_account_name(customer.id), {})
        cells: list[str] = []
        matches = True
        for symbol in SYMBOLS:
            balance = account.get(world.instrument(symbol).key(), ZERO)
            matches = matches and balance == the_plan.expected_final(customer, symbol)
            cells += [
                money(the_plan.credited(customer, symbol)),
                money(the_plan.paid_out(customer, symbol)),
                money(balance),
            ]
        ok = ok and matches
        table.add_row(customer.name, *cells, mark(matches))
    console.print()
    console.print(table)
    return ok


def show_withdrawals(console: Console, story: Withdrawals, sections: Sections) -> bool:
    withdrawals = show_withdrawal_table(console, story, sections)
    final = show_final_balances(console, story, sections)
    return withdrawals and final


WITHDRAWALS_SETTLED = Chapter("withdrawals and balances", read_withdrawals, show_withdrawals)


# --- the end: the cursor, the alerts, the books per instrument and the invariant -----------------


@dataclass(frozen=True, slots=True)
class Books:
    world: World
    cursor: Cursor | None
    alerts: Counter[str]  # alert kind → how many
    balances: Balances
    held_on_ledger: dict[InstrumentId, Decimal]  # the treasury's holdings, from the ledger
    check: BooksCheck


def read_books(exchange: Exchange, status: Status) -> Books:
    world, database = exchange.world, exchange.database
    held = held_on_ledger(exchange.ledger, world.treasury)
    cursor = load_cursor(database, world)
    with database.uow() as uow:
        alerts = Counter(alert.kind for alert in uow.books.alerts(limit=100_000))
    balances = customer_balances(database.uow)
    return Books(world, cursor, alerts, balances, held, check_invariant(database.uow))


def show_cursor_and_alerts(console: Console, story: Books, sections: Sections) -> bool:
    world, cursor, alerts = story.world, story.cursor, story.alerts
    number = f"{sections.next()}."
    console.print()
    if cursor is not None:
        record_time = cursor.as_json()["record_time"]
        console.print(
            f"[bold]{number} Cursor[/] of {short(world.treasury)}@{NODE}: offset {cursor.offset}, "
            f"record time {record_time} (the ledger's simulated clock), "
            f"last update {str(cursor.update_id)[:16]}…"
        )
    console.print(
        f"[bold]{' ' * len(number)}Alerts[/] for the operator: "
        + (", ".join(f"{kind} × {count}" for kind, count in sorted(alerts.items())) or "none")
        + " (deposit_unattributed: one per deposit sluice could not attribute)"
    )
    return True


def show_books_per_instrument(console: Console, story: Books, sections: Sections) -> bool:
    world, balances = story.world, story.balances
    table = Table(title=f"{sections.next()}. The books per instrument", title_justify="left")
    columns = (
        "",
        "Σ customers",
        "suspense",
        "compliance hold",
        "in flight",
        "fees",
        "treasury (ingested)",
    )
    for name in (*columns, "on the ledger"):
        table.add_column(name, justify="right")
    customers = [name for name in balances if name.startswith("customer:")]
    for instrument in (world.coin, world.usdx):
        key = instrument.key()
        table.add_row(
            world.symbol(key),
            money(total(balances, customers, key)),
            money(total(balances, [SUSPENSE], key)),
            money(total(balances, [COMPLIANCE_HOLD], key)),
            money(total(balances, [IN_FLIGHT], key)),
            money(total(balances, [FEES], key)),
            money(total(balances, [treasury_account_name(world.treasury)], key)),
            money(story.held_on_ledger.get(instrument, ZERO)),
        )
    console.print()
    console.print(table)
    check = story.check
    if check.holds:
        console.print(
            "[bold green]invariant holds[/]: Σ customers + suspense + compliance hold + in flight "
            "+ fees = treasury holdings, for every instrument, and every cached balance = its "
            "postings"
        )
    else:
        console.print("[bold red]invariant broken:[/]")
        for problem in check.problems:
            console.print(f"  [red]✗ {problem}[/]")
    return check.holds


def show_books(console: Console, story: Books, sections: Sections) -> bool:
    show_cursor_and_alerts(console, story, sections)
    return show_books_per_instrument(console, story, sections)


BOOKS = Chapter("the cursor, the alerts and the books", read_books, show_books)
