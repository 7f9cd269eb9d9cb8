"""The sluice demo: an exchange, its customers and the token ledger, end to end in a few seconds.

What it shows, on the embedded defaults (two SQLite files in one data folder, the embedded
reference ledger):

1. **Setup.** A ledger with three nodes: ``dso`` (the token admins), ``exchange`` (the treasury)
   and ``wallets`` (the customers). A Canton-Coin-like instrument (``Amulet`` of the DSO party,
   "Canton Coin", CC) and a second token, USDX, whose admin allows no transfer preapprovals. The
   treasury pre-approves incoming Canton Coin. The Integration DB knows both instruments and five
   customers, each with a deposit account.
2. **Activity.** Customers tap the faucet and make a few hundred 1-step deposits to the treasury
   with their deposit account as the reason; a few carry a reason nobody knows (or none). One
   customer sends USDX, which can only arrive as an offer; it stays pending. The clock moves, so
   the exchange's node emits checkpoints.
3. **Crash and resume.** ``sluice ingest`` runs as a separate process and is killed with SIGKILL
   part-way. A second run resumes from the cursor the first one committed (not from zero) and
   ends at the ledger end.
4. **The books.** What each customer deposited against what sluice credited, suspense, the
   pending offer, the cursor, alerts, and the journal invariant
   ``Σ customers + suspense + in-flight + fees = treasury holdings``.

Every run starts from scratch: the data folder is wiped first (only when it is empty or was made
by the demo). What the customers do is a pure function of the seed (:func:`plan`), so a test can
check the report against it.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import psutil
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import create_engine

from sluice import bootstrap
from sluice.domain.amounts import ZERO
from sluice.domain.journal import (
    FEES,
    IN_FLIGHT,
    SUSPENSE,
    customer_account_name,
    treasury_account_name,
)
from sluice.domain.ledger import Cursor, InstrumentId
from sluice.ledger.local import EmbeddedLedger, RegistryPolicy
from sluice.services.books import check_invariant, customer_balances, treasury_view
from sluice.services.ingestion import connection_name
from sluice.services.reference import onboard_instrument, register_customer

TITLE = "sluice demo: customer deposits, ingestion killed and resumed, the books"
MARKER = ".sluice-demo"
NODE = "exchange"
DEPOSITS = 300
UNKNOWN_DEPOSITS = 8
UNKNOWN_REASONS: tuple[str | None, ...] = ("acct-zoe", "acct-alcie", None)
TAP = Decimal(100_000)
OFFER_AMOUNT = Decimal("250.00")
BATCH_SIZE = 20
POLL_S = 0.002
CHILD_TIMEOUT_S = 60.0

Balances = dict[str, dict[str, Decimal]]  # account name → instrument key → balance


# --- the plan: what the customers do (pure, from the seed) ---------------------------------------


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    name: str

    @property
    def account(self) -> str:
        return f"acct-{self.id}"


CUSTOMERS = (
    Customer("alice", "Alice Martin"),
    Customer("bob", "Bob Chen"),
    Customer("carol", "Carol Diaz"),
    Customer("dave", "Dave Okafor"),
    Customer("erin", "Erin Novak"),
)


@dataclass(frozen=True, slots=True)
class Deposit:
    customer: Customer
    amount: Decimal
    reason: str | None  # the customer's deposit account, one nobody knows, or none

    @property
    def attributable(self) -> bool:
        return self.reason == self.customer.account


@dataclass(frozen=True, slots=True)
class Plan:
    deposits: tuple[Deposit, ...]
    pauses: tuple[float, ...]  # seconds the clock moves after each deposit
    offer: Deposit  # USDX, which can only arrive as an offer
    offer_after: int  # sent after this many deposits

    def expected_balances(self) -> dict[str, Decimal]:
        """Per customer id: the Canton Coin sluice must credit."""
        totals = {c.id: ZERO for c in CUSTOMERS}
        for deposit in self.deposits:
            if deposit.attributable:
                totals[deposit.customer.id] += deposit.amount
        return totals

    def expected_suspense(self) -> Decimal:
        return sum((d.amount for d in self.deposits if not d.attributable), ZERO)

    def unattributed(self) -> int:
        return sum(1 for d in self.deposits if not d.attributable)


def plan(seed: int) -> Plan:
    """Who deposits what, with which reason: deterministic for a seed."""
    rng = random.Random(seed)
    unknown_at = set(rng.sample(range(DEPOSITS), UNKNOWN_DEPOSITS))
    deposits: list[Deposit] = []
    for index in range(DEPOSITS):
        customer = rng.choice(CUSTOMERS)
        amount = Decimal(rng.randrange(100, 50_000)) / 100
        reason = (
            UNKNOWN_REASONS[len(deposits) % len(UNKNOWN_REASONS)]
            if index in unknown_at
            else customer.account
        )
        deposits.append(Deposit(customer, amount, reason))
    pauses = tuple(rng.uniform(2.0, 30.0) for _ in range(DEPOSITS))
    sender = rng.choice(CUSTOMERS)
    offer = Deposit(sender, OFFER_AMOUNT, sender.account)
    return Plan(tuple(deposits), pauses, offer, rng.randrange(DEPOSITS // 3, 2 * DEPOSITS // 3))


# --- the world: the ledger and the Integration DB ------------------------------------------------


@dataclass(slots=True)
class World:
    data_dir: Path
    ledger_path: Path
    db_url: str
    treasury: str
    coin: InstrumentId
    usdx: InstrumentId
    parties: dict[str, Customer] = field(default_factory=dict)  # party → customer
    ledger_end: int = 0
    transactions: int = 0  # in the treasury's stream
    checkpoints: int = 0  # in the treasury's stream
    updates: int = 0  # on the whole ledger
    held_on_ledger: dict[InstrumentId, Decimal] = field(default_factory=dict)

    @property
    def connection(self) -> str:
        return connection_name(self.treasury, NODE)

    def symbol(self, instrument_key: str) -> str:
        return {self.coin.key(): "CC", self.usdx.key(): "USDX"}.get(instrument_key, instrument_key)


class FolderInUseError(Exception):
    """The data folder holds files the demo did not make; it is never wiped."""


def prepare_folder(data_dir: Path) -> None:
    """Start fresh: wipe the folder if the demo made it (or it is empty), refuse otherwise."""
    if data_dir.exists():
        if any(data_dir.iterdir()) and not (data_dir / MARKER).exists():
            raise FolderInUseError(
                f"{data_dir} is not empty and was not made by `sluice demo`, so it is left "
                "alone; pick another folder with --data"
            )
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    (data_dir / MARKER).write_text("made by `sluice demo`; wiped at the start of every run\n")


def build_ledger(data_dir: Path, seed: int, the_plan: Plan) -> World:
    """Parties, instruments, the treasury's preapproval, then the customers' activity."""
    path = data_dir / "ledger.db"
    ledger = EmbeddedLedger.open(str(path), seed=seed, checkpoint_interval_s=60.0)
    try:
        for node in ("dso", NODE, "wallets"):
            ledger.add_node(node)
        dso = ledger.allocate_party("dso", "dso")
        issuer = ledger.allocate_party("usdx-issuer", "dso")
        treasury = ledger.allocate_party("treasury", NODE)
        coin = ledger.create_instrument(dso, "Amulet", name="Canton Coin", symbol="CC")
        usdx = ledger.create_instrument(
            issuer, "USDX", RegistryPolicy(preapprovals_allowed=False), symbol="USDX"
        )
        ledger.create_preapproval(treasury, coin)
        world = World(data_dir, path, f"sqlite:///{data_dir / 'sluice.db'}", treasury, coin, usdx)
        party_of = {}
        for customer in CUSTOMERS:
            party = ledger.allocate_party(customer.id, "wallets")
            world.parties[party] = customer
            party_of[customer.id] = party
            ledger.tap(party, coin, TAP)
        ledger.mint(party_of[the_plan.offer.customer.id], usdx, the_plan.offer.amount)
        for index, (deposit, pause) in enumerate(
            zip(the_plan.deposits, the_plan.pauses, strict=True)
        ):
            if index == the_plan.offer_after:
                offer = the_plan.offer
                ledger.transfer(
                    party_of[offer.customer.id],
                    treasury,
                    usdx,
                    offer.amount,
                    reason=offer.reason,
                    expect_kind="offer",
                )
            ledger.transfer(
                party_of[deposit.customer.id],
                treasury,
                coin,
                deposit.amount,
                reason=deposit.reason,
                expect_kind="direct",
            )
            ledger.advance(pause)
        ledger.checkpoint()
        world.ledger_end = ledger.ledger_end(NODE)
        world.updates = ledger.update_count()
        for item in ledger.updates(treasury, 0):
            if "Transaction" in item["update"]:
                world.transactions += 1
            else:
                world.checkpoints += 1
        for holding in ledger.active_holdings(treasury):
            world.held_on_ledger[holding.instrument] = (
                world.held_on_ledger.get(holding.instrument, ZERO) + holding.amount
            )
    finally:
        ledger.close()  # flushes the journal, so `sluice ingest` in another process reads it all
    return world


def set_up_books(world: World) -> bootstrap.Database:
    """The Integration DB: both instruments onboarded, the customers and their deposit accounts."""
    database = bootstrap.database(world.db_url)
    onboard_instrument(database.uow, world.coin, transfer_kinds="direct")
    onboard_instrument(database.uow, world.usdx, transfer_kinds="offer")
    for customer in CUSTOMERS:
        register_customer(database.uow, customer.id, customer.name, [customer.account])
    return database


# --- ingestion in another process: killed, then resumed ------------------------------------------


@dataclass(frozen=True, slots=True)
class FirstRun:
    killed: bool
    cursor: Cursor | None


@dataclass(frozen=True, slots=True)
class SecondRun:
    started_after: int | None
    cursor: Cursor | None
    transactions: int | None
    checkpoints: int | None


def sluice_command() -> list[str]:
    """The installed ``sluice`` script next to this interpreter, or the same through Python."""
    script = Path(sys.executable).with_name("sluice")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from sluice.cli import main; main()"]


def ingest_command(world: World) -> list[str]:
    return [
        *sluice_command(),
        "ingest",
        "--once",
        "--party",
        world.treasury,
        "--db",
        world.db_url,
        "--ledger",
        str(world.ledger_path),
        "--node",
        NODE,
        "--batch-size",
        str(BATCH_SIZE),
    ]


def load_cursor(database: bootstrap.Database, world: World) -> Cursor | None:
    with database.uow() as uow:
        return uow.ingestion.load_cursor(world.connection)


def read_only(world: World) -> bootstrap.Database:
    """A read-only connection to the Integration DB: watching the cursor through it never takes
    the write lock the ingestion being watched needs (SQLite in WAL mode: readers never wait)."""
    path = world.db_url.removeprefix("sqlite:///")
    return bootstrap.Database(create_engine(f"sqlite:///file:{path}?mode=ro&uri=true"))


def run_and_kill(world: World) -> FirstRun:
    """Start ``sluice ingest``; SIGKILL it once its committed cursor is a third of the way in."""
    target = max(1, world.ledger_end // 3)
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    watcher = read_only(world)
    try:
        with (
            (world.data_dir / "ingest-1.log").open("w") as log,
            subprocess.Popen(ingest_command(world), stdout=log, stderr=log) as child,
        ):
            while time.monotonic() < deadline:
                cursor = load_cursor(watcher, world)
                if cursor is not None and target <= cursor.offset < world.ledger_end:
                    child.send_signal(signal.SIGKILL)
                    killed = child.wait() == -signal.SIGKILL  # not if it had just finished
                    return FirstRun(killed=killed, cursor=load_cursor(watcher, world))
                try:
                    child.wait(timeout=POLL_S)  # returns at once if it ended: it was too fast
                except subprocess.TimeoutExpired:
                    continue
                return FirstRun(killed=False, cursor=load_cursor(watcher, world))
            child.kill()
    finally:
        watcher.dispose()
    raise RuntimeError(f"`sluice ingest` made no progress in {CHILD_TIMEOUT_S:.0f}s")


SUMMARY = re.compile(r"ingested (\d+) transactions, (\d+) checkpoints")


def run_to_end(world: World, database: bootstrap.Database) -> SecondRun:
    started = load_cursor(database, world)
    done = subprocess.run(
        ingest_command(world), capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
    )
    (world.data_dir / "ingest-2.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"`sluice ingest` failed ({done.returncode}):\n{done.stderr}")
    found = SUMMARY.search(done.stderr)
    return SecondRun(
        started_after=started.offset if started else None,
        cursor=load_cursor(database, world),
        transactions=int(found.group(1)) if found else None,
        checkpoints=int(found.group(2)) if found else None,
    )


# --- the report ----------------------------------------------------------------------------------


def money(value: Decimal) -> str:
    return f"{value:,.2f}"


def mark(ok: bool) -> str:
    return "[green]✓[/]" if ok else "[bold red]✗[/]"


def short(party: str) -> str:
    """``hint::1220abcd…`` → ``hint::1220abcd…`` cut to something a table can show."""
    hint, _, fingerprint = party.partition("::")
    return f"{hint}::{fingerprint[:8]}…" if fingerprint else party


def show_setup(console: Console, world: World, the_plan: Plan) -> None:
    table = Table(title="1. The ledger and the books", title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("data folder", str(world.data_dir))
    table.add_row("ledger", f"{world.ledger_path} (nodes dso, exchange, wallets)")
    table.add_row("Integration DB", world.db_url)
    table.add_row("treasury", f"{short(world.treasury)} on node {NODE}, preapproval for CC")
    table.add_row("instruments", "CC = Amulet (Canton Coin) of dso; USDX (no preapprovals)")
    table.add_row("customers", ", ".join(f"{c.name} ({c.account})" for c in CUSTOMERS))
    offer = the_plan.offer
    table.add_row(
        "activity",
        f"{len(CUSTOMERS)} faucet taps; {len(the_plan.deposits)} 1-step CC deposits, "
        f"{the_plan.unattributed()} of them with an unknown or missing reason; "
        f"1 USDX offer ({money(offer.amount)} from {offer.customer.name})",
    )
    table.add_row(
        "treasury's stream",
        f"offsets 1…{world.ledger_end} on node {NODE}: {world.transactions} transactions it "
        f"takes part in and {world.checkpoints} checkpoints ({world.updates} updates on the "
        "whole ledger)",
    )
    console.print(table)


def show_ingestion(console: Console, world: World, first: FirstRun, second: SecondRun) -> bool:
    end = world.ledger_end
    console.print()
    console.print(
        f"[bold]2. Ingestion[/] in another process: sluice ingest --once --batch-size {BATCH_SIZE}"
    )
    killed_at = first.cursor.offset if first.cursor else 0
    if first.killed:
        console.print(
            f"  run 1: SIGKILL when its committed cursor was at offset [bold]{killed_at}[/] of "
            f"{end}; a batch it was still writing dies with its open transaction"
        )
    else:
        console.print(
            f"  run 1: [yellow]finished (offset {killed_at} of {end}) before it could be "
            "killed[/]; this machine is fast, the resume below then has nothing to do"
        )
    resumed = second.started_after == killed_at
    ended = second.cursor is not None and second.cursor.offset == end
    counted = ""
    if second.transactions is not None and second.checkpoints is not None:
        items = second.transactions + second.checkpoints
        counted = (
            f": ingested {second.transactions} transactions + {second.checkpoints} checkpoints"
            f" = {items} items: the {end - killed_at} after offset {killed_at}, not all {end}"
        )
    console.print(
        f"  run 2: resumed from offset {second.started_after} {mark(resumed)}{counted}; "
        f"ended at offset {second.cursor.offset if second.cursor else None} = ledger end "
        f"{mark(ended)}"
    )
    return resumed and ended


def show_customers(console: Console, world: World, the_plan: Plan, balances: Balances) -> bool:
    table = Table(title="3. Customer balances (CC)", title_justify="left")
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


def show_pending(console: Console, world: World, database: bootstrap.Database) -> bool:
    pending = treasury_view(database.uow, world.treasury, world.connection)["pending_instructions"]
    noun = "offer" if len(pending) == 1 else "offers"
    table = Table(title=f"4. Pending offers: {len(pending)} pending {noun}", title_justify="left")
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
    return len(pending) == 1


def show_cursor_and_alerts(console: Console, world: World, database: bootstrap.Database) -> None:
    cursor = load_cursor(database, world)
    with database.uow() as uow:
        alerts = Counter(alert.kind for alert in uow.books.alerts(limit=100_000))
    console.print()
    if cursor is not None:
        record_time = cursor.as_json()["record_time"]
        console.print(
            f"[bold]5. Cursor[/] of {short(world.treasury)}@{NODE}: offset {cursor.offset}, "
            f"record time {record_time} (the ledger's simulated clock), "
            f"last update {str(cursor.update_id)[:16]}…"
        )
    console.print(
        "[bold]   Alerts[/] for the operator: "
        + (", ".join(f"{kind} × {count}" for kind, count in sorted(alerts.items())) or "none")
        + " (one per deposit sluice could not attribute)"
    )


def total(balances: Balances, accounts: Iterable[str], instrument_key: str) -> Decimal:
    return sum((balances.get(name, {}).get(instrument_key, ZERO) for name in accounts), ZERO)


def show_books(console: Console, world: World, database: bootstrap.Database) -> bool:
    balances = customer_balances(database.uow)
    table = Table(title="6. The books per instrument", title_justify="left")
    columns = ("", "Σ customers", "suspense", "in flight", "fees", "treasury (ingested)")
    for name in (*columns, "on the ledger"):
        table.add_column(name, justify="right")
    customers = [name for name in balances if name.startswith("customer:")]
    for instrument in (world.coin, world.usdx):
        key = instrument.key()
        table.add_row(
            world.symbol(key),
            money(total(balances, customers, key)),
            money(total(balances, [SUSPENSE], key)),
            money(total(balances, [IN_FLIGHT], key)),
            money(total(balances, [FEES], key)),
            money(total(balances, [treasury_account_name(world.treasury)], key)),
            money(world.held_on_ledger.get(instrument, ZERO)),
        )
    console.print()
    console.print(table)
    check = check_invariant(database.uow)
    if check.holds:
        console.print(
            "[bold green]invariant holds[/]: Σ customers + suspense + in flight + fees = "
            "treasury holdings, for every instrument, and every cached balance = its postings"
        )
    else:
        console.print("[bold red]invariant broken:[/]")
        for problem in check.problems:
            console.print(f"  [red]✗ {problem}[/]")
    return check.holds


def show_next_steps(console: Console, world: World) -> None:
    console.print()
    console.print("[bold]Explore further[/] (the files stay in the data folder):")
    for comment, command in (
        (
            "follow the ledger (nothing new arrives here; Ctrl-C stops it cleanly)",
            f"sluice ingest --follow --party {world.treasury} --db {world.db_url} "
            f"--ledger {world.ledger_path} --node {NODE}",
        ),
        ("check the books", f"sluice check --db {world.db_url}"),
        (
            "ingest real Canton updates recorded in a file",
            "sluice ledger replay ../shared/reference/canton/fixtures/mock-txs.json "
            "--party alice::normalized",
        ),
    ):
        console.print(f"  # {comment}", style="dim", highlight=False)
        console.print(f"  {command}", soft_wrap=True, highlight=False, markup=False)


# --- the whole run -------------------------------------------------------------------------------


def run_demo(data_dir: Path, *, seed: int, console: Console) -> bool:
    """Run the demo in ``data_dir`` (wiped first); True when every check of the report holds:
    the books balance, each customer got what they deposited, suspense holds the rest, the offer
    is pending and ingestion resumed from its cursor to the ledger end."""
    started = time.perf_counter()
    console.print(Panel.fit(TITLE, subtitle=f"seed {seed}", style="bold"))
    try:
        prepare_folder(data_dir)
    except FolderInUseError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return False
    the_plan = plan(seed)
    with console.status("building the ledger: taps, deposits, an offer, checkpoints…"):
        world = build_ledger(data_dir, seed, the_plan)
    database = set_up_books(world)
    try:
        show_setup(console, world, the_plan)
        with console.status("ingesting in another process (to be killed part-way)…"):
            first = run_and_kill(world)
        with console.status("ingesting again: resuming from the cursor…"):
            second = run_to_end(world, database)
        resumed = show_ingestion(console, world, first, second)
        balances = customer_balances(database.uow)
        credited = show_customers(console, world, the_plan, balances)
        pending = show_pending(console, world, database)
        show_cursor_and_alerts(console, world, database)
        books = show_books(console, world, database)
    finally:
        database.dispose()
    show_next_steps(console, world)
    ok = books and credited and pending and resumed
    elapsed = time.perf_counter() - started
    with_start_up = time.time() - psutil.Process().create_time()
    verdict = "[bold green]all checks hold[/]" if ok else "[bold red]some checks failed[/]"
    console.print(
        f"\n{verdict} — the demo took {elapsed:.1f}s ({with_start_up:.1f}s with Python start-up)"
    )
    return ok
