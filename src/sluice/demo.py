"""The sluice demo: an exchange, its customers and the token ledger, end to end in a few seconds.

What it shows, on the embedded defaults (two SQLite files in one data folder, the embedded
reference ledger):

1. **Setup.** A ledger with three nodes: ``dso`` (the token admins), ``exchange`` (the treasury)
   and ``wallets`` (the customers). A Canton-Coin-like instrument (``Amulet`` of the DSO party,
   "Canton Coin", CC) and a second token, USDX, whose admin allows no transfer preapprovals. The
   treasury pre-approves incoming Canton Coin. The Integration DB knows both instruments, five
   customers and Mallory, who is on the exchange's block list, each with a deposit account.
2. **Activity.** Customers tap the faucet and make a few hundred 1-step deposits to the treasury
   with their deposit account as the reason; a few carry a reason nobody knows (or none). One
   customer and Mallory send USDX, which can only arrive as an offer; both stay pending. The clock
   moves, so the exchange's node emits checkpoints.
3. **Crash and resume.** ``sluice ingest`` runs as a separate process and is killed with SIGKILL
   part-way. A second run resumes from the cursor the first one committed (not from zero) and
   ends at the ledger end. It reads the ledger file read-only; the demo process is its only
   writer.
4. **The workers**, in the demo process against the same ledger, each step followed by ingestion
   (in process from here on): the deposit worker accepts the customer's USDX offer (credited once
   ingestion sees the accept) and rejects Mallory's (the compliance gate denies her party, the
   funds go back to her). The customers' wallets pre-approve CC; customers withdraw CC, paid in
   one step, and USDX, paid as offers the receiver answers: one accepted (paid), one rejected
   (credited back). Then a withdrawal worker dies right after submitting a withdrawal, before
   recording it; a new worker takes over, does not submit it again, ingestion sees the transfer,
   and the clock moves past the attempt's ``trec_tgt`` without anything being refunded: the
   withdrawal is paid exactly once (one transfer with its id as reason on the ledger).
5. **The HTTP API.** The application ``sluice serve`` runs (``create_app``) in uvicorn on a free
   local port, on the demo's Integration DB, driven with httpx as an exchange's systems and staff
   would: API keys per role (made by the ``create_api_key`` service; only their ids are shown), a
   customer's balance and deposit instructions, a withdrawal sent twice with one
   ``Idempotency-Key`` (one withdrawal), a large one (above a threshold set low for the demo)
   proposed and approved by two distinct staff members, an emergency pause (a withdrawal request
   answers 503 with code 50, a balance read still works) and resume, a request without credentials
   (401) and one for another customer's balance (404), and the pause in the audit trail with its
   request's correlation id. The demo's withdrawal worker then pays both withdrawals.
6. **The books.** What each customer deposited against what sluice credited, suspense, the
   pending offers, every deposit offer and withdrawal with its outcome, each customer's balance
   (deposits credited − withdrawals paid, refunds included), the cursor, alerts, and the journal
   invariant ``Σ customers + suspense + in-flight + fees = treasury holdings``.

**Over the wire.** ``--via-http`` serves the demo's ledger on a local port (as ``sluice ledger
serve`` does) and ``--ledger-url URL`` uses a ``sluice ledger serve`` already running (on a fresh
ledger: ``--create --ledger NEW_FILE``). Then every call of the exchange side — both ingestion runs
(the killed one is a separate process again), the workers' commands, the registries — goes through
the Canton client over HTTP and WebSocket, and the outside world (the admins, the customers'
wallets, the clock) is driven through the server's sandbox control API.

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
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil
import structlog
import uvicorn
from fastapi import FastAPI
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from sqlalchemy import create_engine

from sluice import bootstrap
from sluice.api.app import create_app
from sluice.api.context import ApiContext
from sluice.domain.access import Role
from sluice.domain.amounts import ZERO
from sluice.domain.journal import (
    COMPLIANCE_HOLD,
    FEES,
    IN_FLIGHT,
    SUSPENSE,
    customer_account_name,
    treasury_account_name,
)
from sluice.domain.ledger import REASON_KEY, Cursor, InstrumentId
from sluice.domain.withdrawals import Withdrawal, withdrawal_id
from sluice.ledger.canton import (
    CantonCommands,
    CantonLedgerClient,
    LedgerHttp,
    NoAuth,
    registry_lookup,
)
from sluice.ledger.local import EmbeddedLedger, RegistryPolicy
from sluice.ledger.local.adapters import EmbeddedCommands, embedded_registries
from sluice.ledger.local.remote import RemoteLedger
from sluice.ledger.local.server import LedgerServer
from sluice.ports import LedgerClient, LedgerCommands, RegistryLookup
from sluice.server import bind, url_of
from sluice.services.access import ApiKeyVerifier, create_api_key
from sluice.services.audit import verify_audit_log
from sluice.services.books import check_invariant, customer_balances, treasury_view
from sluice.services.compliance import KycRegistry, RegistryGate
from sluice.services.compliance_officer import (
    flag_address,
    freeze_customer,
    release_hold,
    review_queue,
    unfreeze_customer,
)
from sluice.services.deposit_worker import DepositWorker, list_incoming_offers
from sluice.services.ingestion import Ingestion, IngestionSettings, connection_name
from sluice.services.reference import onboard_instrument, register_customer
from sluice.services.settings import RuntimeSettings
from sluice.services.withdrawals import (
    WithdrawalSettings,
    WithdrawalWorker,
    list_withdrawals,
    request_withdrawal,
)

TITLE = (
    "sluice demo: customer deposits, ingestion killed and resumed, deposit offers, "
    "withdrawals (one through a worker crash), the HTTP API, the books"
)
MARKER = ".sluice-demo"
NODE = "exchange"
DEPOSITS = 300
UNKNOWN_DEPOSITS = 8
UNKNOWN_REASONS: tuple[str | None, ...] = ("acct-zoe", "acct-alcie", None)
TAP = Decimal(100_000)
OFFER_AMOUNT = Decimal("250.00")
BLOCKED_OFFER_AMOUNT = Decimal("500.00")
ONE_STEP_WITHDRAWALS = 4  # CC withdrawals paid in one step, each by another customer
USDX_PAID = Decimal("100.00")  # a USDX withdrawal the receiver accepts
USDX_REFUSED = Decimal("40.00")  # one the receiver rejects: credited back
WORKER_ROUNDS_MAX = 20  # bound on run_once + ingest rounds per step
STEP_S = 5.0  # how far the ledger clock moves between rounds
BATCH_SIZE = 20
POLL_S = 0.002
CHILD_TIMEOUT_S = 60.0

Balances = dict[str, dict[str, Decimal]]  # account name → instrument key → balance
# The outside world: the ledger object itself, or the sandbox control API of `sluice ledger serve`.
Ledger = EmbeddedLedger | RemoteLedger


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
# Registered like the others, but her party is on the exchange's block list: her USDX offer is
# rejected by the deposit worker's compliance gate. She makes no CC deposits.
BLOCKED = Customer("mallory", "Mallory Stone")
EVERYONE = (*CUSTOMERS, BLOCKED)


@dataclass(frozen=True, slots=True)
class Deposit:
    customer: Customer
    amount: Decimal
    reason: str | None  # the customer's deposit account, one nobody knows, or none

    @property
    def attributable(self) -> bool:
        return self.reason == self.customer.account


Symbol = Literal["CC", "USDX"]
SYMBOLS: tuple[Symbol, ...] = ("CC", "USDX")


@dataclass(frozen=True, slots=True)
class PlannedWithdrawal:
    key: str  # the customer's idempotency key
    customer: Customer
    amount: Decimal
    symbol: Symbol
    answer: Literal["accept", "reject"] | None  # the receiver's, for an offer (USDX)
    crash: bool = False  # the worker submitting it dies before recording the submission

    @property
    def id(self) -> str:
        return withdrawal_id(self.customer.id, self.key)

    @property
    def path(self) -> str:
        return "offer" if self.symbol == "USDX" else "1-step"

    @property
    def paid(self) -> bool:
        return self.answer != "reject"

    @property
    def expected_status(self) -> str:
        return "completed" if self.paid else "failed"


@dataclass(frozen=True, slots=True)
class Plan:
    deposits: tuple[Deposit, ...]
    pauses: tuple[float, ...]  # seconds the clock moves after each deposit
    offer: Deposit  # USDX, which can only arrive as an offer; the deposit worker accepts it
    offer_after: int  # sent after this many deposits (Mallory's right after it)
    blocked_offer: Deposit  # Mallory's USDX offer: rejected by the compliance gate
    withdrawals: tuple[PlannedWithdrawal, ...]

    def expected_balances(self) -> dict[str, Decimal]:
        """Per customer id: the Canton Coin sluice must credit."""
        totals = {c.id: ZERO for c in CUSTOMERS}
        for deposit in self.deposits:
            if deposit.attributable:
                totals[deposit.customer.id] += deposit.amount
        return totals

    def paid_out(self, customer: Customer, symbol: Symbol) -> Decimal:
        """What the withdrawals of ``customer`` in ``symbol`` must pay (refunded ones: nothing)."""
        return sum(
            (
                w.amount
                for w in self.withdrawals
                if w.customer == customer and w.symbol == symbol and w.paid
            ),
            ZERO,
        )

    def credited(self, customer: Customer, symbol: Symbol) -> Decimal:
        """What sluice must credit ``customer`` in ``symbol`` for deposits (accepted offers)."""
        if symbol == "CC":
            return self.expected_balances().get(customer.id, ZERO)
        return self.offer.amount if customer == self.offer.customer else ZERO

    def expected_final(self, customer: Customer, symbol: Symbol) -> Decimal:
        """Balance at the end: deposits credited − withdrawals paid (refunds included)."""
        return self.credited(customer, symbol) - self.paid_out(customer, symbol)

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
    offer_after = rng.randrange(DEPOSITS // 3, 2 * DEPOSITS // 3)
    credited = {c.id: ZERO for c in CUSTOMERS}
    for deposit in deposits:
        if deposit.attributable:
            credited[deposit.customer.id] += deposit.amount

    def cc_amount(customer: Customer) -> Decimal:
        # At most half of what the customer deposited, so the request is always covered.
        drawn = Decimal(rng.randrange(5_000, 200_000)) / 100
        return min(drawn, (credited[customer.id] / 2).quantize(Decimal("0.01")))

    one_step = rng.sample(CUSTOMERS, ONE_STEP_WITHDRAWALS)
    withdrawals = [
        PlannedWithdrawal(f"cc-{n}", customer, cc_amount(customer), "CC", None)
        for n, customer in enumerate(one_step, start=1)
    ]
    crashed = next(c for c in CUSTOMERS if c not in one_step)
    withdrawals += [
        PlannedWithdrawal("usdx-1", sender, USDX_PAID, "USDX", "accept"),
        PlannedWithdrawal("usdx-2", sender, USDX_REFUSED, "USDX", "reject"),
        PlannedWithdrawal("cc-crash", crashed, cc_amount(crashed), "CC", None, crash=True),
    ]
    return Plan(
        tuple(deposits),
        pauses,
        offer,
        offer_after,
        Deposit(BLOCKED, BLOCKED_OFFER_AMOUNT, BLOCKED.account),
        tuple(withdrawals),
    )


# --- the world: the ledger and the Integration DB ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wire:
    """Where the exchange side reaches the ledger when the demo runs over HTTP: a ``sluice ledger
    serve`` at ``base_url``."""

    base_url: str
    started_here: bool = False  # --via-http: the server stops with the demo

    @property
    def participant_url(self) -> str:
        return f"{self.base_url}/nodes/{NODE}"

    def registry_url(self, admin: str) -> str:
        return f"{self.base_url}/registries/{admin}"


@dataclass(slots=True)
class World:
    data_dir: Path
    ledger_path: Path
    db_url: str
    treasury: str
    coin: InstrumentId
    usdx: InstrumentId
    wire: Wire | None = None
    http: LedgerHttp | None = None  # one connection pool for every call over the wire
    parties: dict[str, Customer] = field(default_factory=dict)  # party → customer
    party_of: dict[str, str] = field(default_factory=dict)  # customer id → party
    ledger_end: int = 0
    transactions: int = 0  # in the treasury's stream
    checkpoints: int = 0  # in the treasury's stream
    updates: int = 0  # on the whole ledger
    held_on_ledger: dict[InstrumentId, Decimal] = field(default_factory=dict)

    @property
    def connection(self) -> str:
        node = bootstrap.participant_node(self.wire.participant_url) if self.wire else NODE
        return connection_name(self.treasury, node)

    def reader(self, ledger: Ledger) -> LedgerClient:
        """The treasury node's reading side: in process, or the Canton client over HTTP."""
        if self.wire is None:
            assert isinstance(ledger, EmbeddedLedger)
            return ledger.client(self.treasury)
        return CantonLedgerClient(self.connect())

    def connect(self) -> LedgerHttp:
        assert self.wire is not None
        if self.http is None:
            self.http = LedgerHttp(self.wire.participant_url, NoAuth())
        return self.http

    def symbol(self, instrument_key: str) -> str:
        return {self.coin.key(): "CC", self.usdx.key(): "USDX"}.get(instrument_key, instrument_key)

    def instrument(self, symbol: Symbol) -> InstrumentId:
        return self.coin if symbol == "CC" else self.usdx


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


def build_ledger(
    data_dir: Path, path: Path, ledger: Ledger, the_plan: Plan, wire: Wire | None
) -> World:
    """Parties, instruments, the treasury's preapproval, then the customers' activity.

    The ledger stays open: the demo process (or the server it talks to) is the only writer of its
    file for the whole run. Everything is flushed before returning, so ``sluice ingest`` in
    another process reads it all.
    """
    if ledger.nodes():
        raise FolderInUseError(
            "the demo needs a fresh ledger, this one already has nodes "
            f"({', '.join(ledger.nodes())}): start `sluice ledger serve --create --ledger NEW_FILE`"
        )
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
        world = World(
            data_dir, path, f"sqlite:///{data_dir / 'sluice.db'}", treasury, coin, usdx, wire
        )
        party_of = world.party_of
        for customer in EVERYONE:
            party = ledger.allocate_party(customer.id, "wallets")
            world.parties[party] = customer
            party_of[customer.id] = party
            if customer != BLOCKED:
                ledger.tap(party, coin, TAP)
        for offer in (the_plan.offer, the_plan.blocked_offer):
            ledger.mint(party_of[offer.customer.id], usdx, offer.amount)
        for index, (deposit, pause) in enumerate(
            zip(the_plan.deposits, the_plan.pauses, strict=True)
        ):
            if index == the_plan.offer_after:
                for offer in (the_plan.offer, the_plan.blocked_offer):
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
        for item in world.reader(ledger).updates(treasury, 0):
            if "Transaction" in item["update"]:
                world.transactions += 1
            else:
                world.checkpoints += 1
        world.held_on_ledger = held_on_ledger(ledger, treasury)
        ledger.flush()  # so `sluice ingest` in another process reads it all
    except BaseException:
        ledger.close()
        raise
    return world


def held_on_ledger(ledger: Ledger, party: str) -> dict[InstrumentId, Decimal]:
    """What ``party`` holds per instrument, straight from the ledger (locked holdings too)."""
    held: dict[InstrumentId, Decimal] = {}
    for holding in ledger.active_holdings(party):
        held[holding.instrument] = held.get(holding.instrument, ZERO) + holding.amount
    return held


def set_up_books(world: World) -> bootstrap.Database:
    """The Integration DB: both instruments onboarded, the customers and their deposit accounts."""
    database = bootstrap.database(world.db_url)
    wire = world.wire
    for instrument, kinds in ((world.coin, "direct"), (world.usdx, "offer")):
        onboard_instrument(
            database.uow,
            instrument,
            transfer_kinds=kinds,
            registry_url=wire.registry_url(instrument.admin) if wire else None,
        )
    for customer in EVERYONE:
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
    if world.wire is not None:
        source = ["--ledger-url", world.wire.participant_url]
    else:
        source = ["--ledger", str(world.ledger_path), "--node", NODE]
    return [
        *sluice_command(),
        "ingest",
        "--once",
        "--party",
        world.treasury,
        "--db",
        world.db_url,
        *source,
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


# --- the workers, in the demo process: deposit offers, withdrawals, a crash ----------------------


class WorkerCrashError(Exception):
    """What the crash hook raises: the worker dies between submitting and recording it."""


OFFICER = "demo-officer"


@dataclass(frozen=True, slots=True)
class OfferOutcome:
    """An incoming deposit offer: what the deposit worker decided, what the ledger then did."""

    contract_id: str
    customer: Customer | None
    amount: Decimal
    instrument_key: str
    reason: str | None
    action: str | None  # accept | reject | None (left alone)
    why: str
    status: str | None  # the last status ingestion saw: completed, rejected, pending…


@dataclass(frozen=True, slots=True)
class CrashStory:
    """The withdrawal whose worker died right after submitting it, and what followed."""

    withdrawal: PlannedWithdrawal
    crashed: bool  # the hook fired (False: the worker never got to submit it)
    status_after_crash: str | None
    submitted_by_successor: int  # submissions of the worker that took over, first round
    status_after_ingestion: str | None
    trec_tgt: datetime | None
    cursor_time: datetime | None  # ingestion's record time once the clock moved past trec_tgt
    settled_after_trec_tgt: int  # attempts the successor then settled (retried or refunded)
    transfers_on_ledger: int  # committed transfers carrying the withdrawal's id as reason


@dataclass(slots=True)
class WorkersStory:
    offers: list[OfferOutcome] = field(default_factory=list)
    preapprovals: int = 0
    requested: int = 0
    rounds: int = 0
    answered: list[tuple[PlannedWithdrawal, str]] = field(default_factory=list)
    crash: CrashStory | None = None


@dataclass(slots=True)
class Exchange:
    """The exchange's services in this process, bound to the demo's ledger (in process, or over
    HTTP through the Canton client) and the Integration DB. Their clock is the ledger's."""

    world: World
    ledger: Ledger
    database: bootstrap.Database
    settings: WithdrawalSettings = field(default_factory=WithdrawalSettings)
    registry: KycRegistry = field(default_factory=KycRegistry)

    def clock(self) -> datetime:
        return self.ledger.time()

    @property
    def commands(self) -> LedgerCommands:
        wire = self.world.wire
        if wire is None:
            assert isinstance(self.ledger, EmbeddedLedger)
            return EmbeddedCommands(self.ledger)
        margin = self.settings.trec_span_s / 4  # the embedded ledger commits at once
        return CantonCommands(self.world.connect(), clock=self.clock, local_margin_s=margin)

    @property
    def registries(self) -> RegistryLookup:
        if self.world.wire is None:
            assert isinstance(self.ledger, EmbeddedLedger)
            return embedded_registries(self.ledger)
        return registry_lookup(bootstrap.registry_urls(self.database.uow, {}))

    def ingest(self) -> None:
        """Ingest the treasury's stream up to the ledger end, in this process."""
        Ingestion(
            self.database.uow,
            self.world.reader(self.ledger),
            self.world.treasury,
            connection=self.world.connection,
            settings=IngestionSettings(),
            sleep=lambda _s: None,
            compliance=self.registry,
        ).run()

    def withdrawal_worker(
        self, after_submit: Callable[[Withdrawal], None] | None = None
    ) -> WithdrawalWorker:
        return WithdrawalWorker(
            self.database.uow,
            self.commands,
            self.registries,
            treasury=self.world.treasury,
            connection=self.world.connection,
            clock=self.clock,
            settings=self.settings,
            after_submit=after_submit,
            compliance=self.registry,
        )

    def deposit_worker(self) -> DepositWorker:
        """Its compliance gate is the KYC registry."""
        return DepositWorker(
            self.database.uow,
            self.commands,
            self.registries,
            RegistryGate(self.database.uow, self.registry, self.clock),
            treasury=self.world.treasury,
        )

    def request(self, planned: PlannedWithdrawal) -> Withdrawal:
        return request_withdrawal(
            self.database.uow,
            treasury=self.world.treasury,
            customer_id=planned.customer.id,
            receiver=self.world.party_of[planned.customer.id],
            instrument=self.world.instrument(planned.symbol),
            amount=planned.amount,
            idempotency_key=planned.key,
            clock=self.clock,
            settings=self.settings,
            compliance=self.registry,
        )

    def withdrawal(self, withdrawal_id: str) -> Withdrawal | None:
        with self.database.uow() as uow:
            return uow.withdrawals.get(withdrawal_id)

    def drive(self, worker: WithdrawalWorker) -> int:
        """``run_once`` then ingestion, the clock moving a little each round, until a round finds
        nothing to do. Returns the number of rounds."""
        for rounds in range(1, WORKER_ROUNDS_MAX + 1):
            tick = worker.run_once()
            self.ledger.advance(STEP_S)
            self.ingest()
            if not tick.busy:
                return rounds
        raise RuntimeError(f"the withdrawal worker was still busy after {WORKER_ROUNDS_MAX} rounds")


def transfers_with_reason(reader: LedgerClient, party: str, reason: str) -> int:
    """Committed ``TransferFactory_Transfer`` exercises in ``party``'s stream whose reason is
    ``reason``: the ledger's own count of the payments made for a withdrawal."""
    count = 0
    for item in reader.updates(party, 0):
        transaction: dict[str, Any] | None = item["update"].get("Transaction")
        if transaction is None:
            continue
        for event in transaction["value"]["events"]:
            exercised = event.get("ExercisedEvent")
            if exercised is None or exercised["choice"] != "TransferFactory_Transfer":
                continue
            meta = exercised["choiceArgument"]["transfer"]["meta"]["values"]
            count += meta.get(REASON_KEY) == reason
    return count


def answer_deposit_offers(exchange: Exchange) -> list[OfferOutcome]:
    """A compliance officer flags Mallory's party; the deposit worker answers the pending
    incoming offers (the KYC registry refuses Mallory's); ingestion then sees the accept credited
    and the reject returned."""
    world = exchange.world
    flag_address(
        exchange.database.uow,
        world.party_of[BLOCKED.id],
        actor=OFFICER,
        at=exchange.clock(),
        reason="on the exchange's block list",
    )
    exchange.deposit_worker().run_once()
    answered = list_incoming_offers(exchange.database.uow, world.treasury)
    exchange.ledger.advance(STEP_S)
    exchange.ingest()
    with exchange.database.uow() as uow:
        last_status = {
            record.correlation_id: record.status
            for record in uow.books.history(world.connection)
            if record.kind == "transfer_in" and record.correlation_id
        }
    outcomes = []
    for offer in answered:
        transfer = offer.instruction.transfer
        why = (
            "sender flagged: on the exchange's block list"
            if offer.action == "reject"
            else "the KYC registry allows it"
        )
        outcomes.append(
            OfferOutcome(
                contract_id=offer.instruction.contract_id,
                customer=world.parties.get(transfer.sender),
                amount=transfer.amount,
                instrument_key=transfer.instrument.key(),
                reason=transfer.reason,
                action=offer.action,
                why=why,
                status=last_status.get(offer.instruction.correlation_id),
            )
        )
    return outcomes


def pay_withdrawals(exchange: Exchange, the_plan: Plan, story: WorkersStory) -> None:
    """The customers' wallets pre-approve CC; every withdrawal but the crash one is requested and
    driven to its outcome; the receivers answer the USDX offers."""
    world, ledger = exchange.world, exchange.ledger
    for customer in CUSTOMERS:
        ledger.create_preapproval(world.party_of[customer.id], world.coin)
        story.preapprovals += 1
    planned = [w for w in the_plan.withdrawals if not w.crash]
    for item in planned:
        exchange.request(item)
        story.requested += 1
    story.rounds = exchange.drive(exchange.withdrawal_worker())
    for item in planned:
        record = exchange.withdrawal(item.id)
        if item.answer is None or record is None or record.instruction_cid is None:
            continue
        answer = ledger.accept if item.answer == "accept" else ledger.reject
        answer(record.instruction_cid, world.party_of[item.customer.id])
        story.answered.append((item, item.answer))
    ledger.advance(STEP_S)
    exchange.ingest()


def crash_a_worker(exchange: Exchange, planned: PlannedWithdrawal) -> CrashStory:
    """A worker dies right after submitting ``planned`` (before recording the submission); a new
    one takes over. Nothing may submit it again and nothing may refund it: it is paid once."""
    world, ledger = exchange.world, exchange.ledger
    exchange.request(planned)

    def die_after_submitting(record: Withdrawal) -> None:
        if record.id == planned.id:
            raise WorkerCrashError(f"worker died after submitting {record.id}")

    crashed = False
    try:
        exchange.withdrawal_worker(after_submit=die_after_submitting).run_once()
    except WorkerCrashError:
        crashed = True
    after_crash = exchange.withdrawal(planned.id)
    successor = exchange.withdrawal_worker()
    first = successor.run_once()
    ledger.advance(STEP_S)
    exchange.ingest()
    after_ingestion = exchange.withdrawal(planned.id)
    # Past trec_tgt: an attempt ingestion has not seen by now could never commit, so this is when
    # the worker would retry or refund it — it must do neither, the transfer was seen.
    ledger.advance(exchange.settings.trec_span_s + STEP_S)
    ledger.checkpoint()
    exchange.ingest()
    later = successor.run_once()
    exchange.ingest()
    with exchange.database.uow() as uow:
        cursor = uow.ingestion.load_cursor(world.connection)
    return CrashStory(
        withdrawal=planned,
        crashed=crashed,
        status_after_crash=after_crash.status if after_crash else None,
        submitted_by_successor=first.submitted,
        status_after_ingestion=after_ingestion.status if after_ingestion else None,
        trec_tgt=after_crash.trec_tgt if after_crash else None,
        cursor_time=cursor.record_time if cursor else None,
        settled_after_trec_tgt=later.settled,
        transfers_on_ledger=transfers_with_reason(world.reader(ledger), world.treasury, planned.id),
    )


def run_workers(exchange: Exchange, the_plan: Plan) -> WorkersStory:
    story = WorkersStory()
    story.offers = answer_deposit_offers(exchange)
    pay_withdrawals(exchange, the_plan, story)
    crashed = next(w for w in the_plan.withdrawals if w.crash)
    story.crash = crash_a_worker(exchange, crashed)
    exchange.ledger.checkpoint()  # so the cursor ends at the ledger end
    exchange.ingest()
    return story


HELD_CUSTOMER = CUSTOMERS[2]
HELD_AMOUNT = Decimal("75.00")


@dataclass(frozen=True, slots=True)
class ComplianceStory:
    """A deposit the KYC registry refused to credit: held, reviewed, released by an officer."""

    customer: Customer
    amount: Decimal
    balance_before: Decimal
    balance_while_held: Decimal
    held_while_held: Decimal
    hold_id: str | None
    why: str
    queue_holds: int
    balance_after_release: Decimal
    held_after_release: Decimal
    audit_records: int
    audit_intact: bool


def hold_and_release(exchange: Exchange) -> ComplianceStory:
    """An officer freezes a customer; the customer's next deposit arrives and is held, not
    credited; the officer reviews the queue, unfreezes the customer and releases the deposit."""
    world, ledger, uow = exchange.world, exchange.ledger, exchange.database.uow
    customer, coin = HELD_CUSTOMER, world.coin

    def balances() -> tuple[Decimal, Decimal]:
        all_balances = customer_balances(uow)
        own = all_balances.get(customer_account_name(customer.id), {}).get(coin.key(), ZERO)
        return own, all_balances.get(COMPLIANCE_HOLD, {}).get(coin.key(), ZERO)

    before, _ = balances()
    freeze_customer(
        uow, customer.id, actor=OFFICER, at=exchange.clock(), reason="account takeover suspected"
    )
    ledger.transfer(
        world.party_of[customer.id], world.treasury, coin, HELD_AMOUNT, reason=customer.account
    )
    ledger.advance(STEP_S)
    exchange.ingest()
    while_held, held = balances()
    queue = review_queue(uow)
    hold = next((h for h in queue.holds if h.customer_id == customer.id), None)
    if hold is not None:
        unfreeze_customer(
            uow, customer.id, actor=OFFICER, at=exchange.clock(), reason="identity re-verified"
        )
        release_hold(uow, hold.id, actor=OFFICER, at=exchange.clock(), reason="customer cleared")
    after, held_after = balances()
    audit = verify_audit_log(uow)
    return ComplianceStory(
        customer=customer,
        amount=HELD_AMOUNT,
        balance_before=before,
        balance_while_held=while_held,
        held_while_held=held,
        hold_id=hold.id if hold else None,
        why=hold.why if hold else "not held",
        queue_holds=len(queue.holds),
        balance_after_release=after,
        held_after_release=held_after,
        audit_records=audit.records_checked,
        audit_intact=audit.ok,
    )


def show_compliance(console: Console, world: World, story: ComplianceStory) -> bool:
    name, amount = story.customer.name, f"{money(story.amount)} CC"
    steps = [
        (
            f"officer freezes {name}; {name} deposits {amount}",
            f"held, not credited — {story.why}",
            story.balance_while_held == story.balance_before
            and story.held_while_held == story.amount,
        ),
        (
            "the review queue",
            f"{story.queue_holds} held deposit(s), {money(story.held_while_held)} CC in the "
            "compliance-hold account",
            story.queue_holds == 1 and story.hold_id is not None,
        ),
        (
            f"officer unfreezes {name} and releases the deposit",
            f"{name}: {money(story.balance_before)} → {money(story.balance_after_release)} CC; "
            f"compliance hold {money(story.held_after_release)}",
            story.balance_after_release == story.balance_before + story.amount
            and story.held_after_release == ZERO,
        ),
        (
            "sluice audit verify",
            f"{story.audit_records} records, hash chain "
            + ("intact" if story.audit_intact else "BROKEN"),
            story.audit_intact and story.audit_records > 0,
        ),
    ]
    table = Table(
        title="9. Compliance: a deposit the KYC registry refused, held, then released",
        title_justify="left",
    )
    for column in ("step", "result", ""):
        table.add_column(column)
    for step, result, ok in steps:
        table.add_row(step, result, mark(ok))
    console.print()
    console.print(table)
    return all(ok for _, _, ok in steps)


# --- the HTTP API: the exchange's systems and staff drive sluice over HTTP -----------------------

API_CUSTOMER = CUSTOMERS[0]  # the customer whose front end calls the API
API_OTHER = CUSTOMERS[1]  # whose balance API_CUSTOMER's key must not see
APPROVAL_ABOVE = Decimal(1000)  # withdrawals.approval_above for the demo (reference units)
# What the customer withdraws over HTTP: a small withdrawal (sent twice with one Idempotency-Key)
# and a large one that needs two staff approvals. The demo's withdrawal worker pays both.
API_WITHDRAWALS = (
    PlannedWithdrawal("api-order-1", API_CUSTOMER, Decimal("25.00"), "CC", None),
    PlannedWithdrawal("api-order-2", API_CUSTOMER, Decimal("1200.00"), "CC", None),
)
API_REFUSED_KEY = "api-order-3"  # asked for during the pause: refused, so never created
PAUSE_REASON = "incident drill"
API_ACTOR = "demo-admin"  # who creates the keys (with the service, as `sluice admin` does)
# The keys: who holds them (as the report names them), their role, the customer of a user key.
API_KEYS: tuple[tuple[str, Role, Customer | None], ...] = (
    ("super admin", "super_admin", None),
    ("system admin", "system_admin", None),
    ("operator", "operator", None),
    ("compliance officer", "compliance_officer", None),
    (f"{API_CUSTOMER.name} (user)", "user", API_CUSTOMER),
)
ANONYMOUS = "anonymous"
API_TIMEOUT_S = 10.0  # per HTTP request, and for the server to start and to stop


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One request of the chapter and what came of it."""

    who: str
    method: str
    path: str  # as shown: record ids shortened
    status: int
    code: int | None  # sluice's error code, for an error answer
    what: str
    ok: bool


@dataclass(slots=True)
class ApiStory:
    url: str = ""
    key_ids: list[tuple[str, str]] = field(default_factory=list)  # who → key id (never the key)
    calls: list[ApiCall] = field(default_factory=list)
    rounds: int = 0  # the withdrawal worker's rounds paying the API's withdrawals
    paid_after: int = 0  # how many calls came before the worker paid


@contextmanager
def api_log(path: Path) -> Iterator[None]:
    """The API's log lines (structlog) go to ``path`` in the data folder, not into the report;
    a logging set up by whoever runs the demo is left as it is."""
    if structlog.is_configured():
        yield
        return
    with path.open("w") as file:
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.dev.ConsoleRenderer(colors=False),
            ],
            logger_factory=structlog.WriteLoggerFactory(file),
        )
        try:
            yield
        finally:
            structlog.reset_defaults()


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` in uvicorn on a free local port, in a thread; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="sluice-demo-api", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + API_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start within {API_TIMEOUT_S:.0f}s")
            thread.join(POLL_S)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(API_TIMEOUT_S)
        sock.close()


def api_context(exchange: Exchange) -> ApiContext:
    """What ``sluice serve`` builds for its API (:func:`sluice.server.build_service`), on the
    demo's Integration DB, treasury, KYC registry and clock; large withdrawals need approvals
    above :data:`APPROVAL_ABOVE` instead of the default."""
    uow = exchange.database.uow
    return ApiContext(
        uow=uow,
        treasury=exchange.world.treasury,
        clock=exchange.clock,
        compliance=exchange.registry,
        settings=RuntimeSettings(
            uow, {"withdrawals.approval_above": str(APPROVAL_ABOVE)}, clock=exchange.clock
        ),
        keys=ApiKeyVerifier(uow),
        withdrawal_settings=exchange.settings,
    )


def error_code(response: httpx.Response) -> int | None:
    """sluice's code from an error answer's body ``{code, error, message, …}``."""
    if response.is_success:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, int) else None


def refusal(response: httpx.Response) -> str:
    """``code 50 system_paused`` for an error answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}"
    return f"code {body.get('code')} {body.get('error')}"


@dataclass(slots=True)
class ApiClient:
    """The exchange's side of the chapter: one HTTP client, a key per caller, every request
    recorded as a row of the report."""

    http: httpx.Client
    keys: dict[str, str]
    story: ApiStory
    last: tuple[str, str, str, httpx.Response] | None = field(default=None, init=False)

    def send(
        self,
        who: str,
        method: str,
        path: str,
        *,
        shown: str | None = None,
        body: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        headers: dict[str, str] = {}
        if who in self.keys:
            headers["X-API-Key"] = self.keys[who]
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        response = self.http.request(method, path, json=body, headers=headers)
        self.last = (who, method, shown or path, response)
        return response

    def note(self, what: str, ok: bool) -> bool:
        """Record the last request with what happened and whether that is what was meant to."""
        assert self.last is not None, "note() follows a send()"
        who, method, shown, response = self.last
        self.story.calls.append(
            ApiCall(who, method, shown, response.status_code, error_code(response), what, ok)
        )
        return ok


def create_demo_keys(exchange: Exchange, story: ApiStory) -> dict[str, str]:
    """A key per caller, made by the service ``sluice admin create-api-key`` uses; only each key's
    id goes into the report."""
    keys: dict[str, str] = {}
    for who, role, customer in API_KEYS:
        record, key = create_api_key(
            exchange.database.uow,
            role=role,
            customer_id=customer.id if customer else None,
            label=f"demo: {who}",
            actor=API_ACTOR,
            at=exchange.clock(),
        )
        keys[who] = key
        story.key_ids.append((who, record.id))
    return keys


def cc_balance(body: Any, coin: InstrumentId) -> Decimal | None:
    """The CC amount in a ``GET …/balances`` answer."""
    for row in body.get("balances", []) if isinstance(body, dict) else []:
        if row.get("instrument") == {"admin": coin.admin, "id": coin.id}:
            return Decimal(row["amount"])
    return None


def drive_the_api(exchange: Exchange, client: ApiClient) -> bool:
    """The requests of the chapter, in order; True when each answered as planned."""
    world = exchange.world
    coin, customer = world.coin, API_CUSTOMER
    user = API_KEYS[-1][0]
    small, large = API_WITHDRAWALS
    own = f"/v1/customers/{customer.id}"
    instrument = {"admin": coin.admin, "id": coin.id}

    def on_the_books() -> Decimal:
        balances = customer_balances(exchange.database.uow)
        return balances.get(customer_account_name(customer.id), {}).get(coin.key(), ZERO)

    def withdraw(planned_key: str, amount: Decimal) -> httpx.Response:
        return client.send(
            user,
            "POST",
            f"{own}/withdrawals",
            body={
                "receiver": world.party_of[customer.id],
                "instrument": instrument,
                "amount": str(amount),
            },
            idempotency_key=planned_key,
        )

    # The customer's front end: balance and where to deposit.
    before = on_the_books()
    answer = client.send(user, "GET", f"{own}/balances")
    shown = cc_balance(answer.json(), coin) if answer.status_code == 200 else None
    ok = client.note(
        f"CC {money(shown) if shown is not None else '?'} (the books: {money(before)})",
        shown == before,
    )
    answer = client.send(user, "GET", f"{own}/deposit-instructions")
    found = [
        item
        for item in (answer.json() if answer.status_code == 200 else [])
        if item["instrument"] == instrument
    ]
    ok &= client.note(
        f"send CC to {short(found[0]['treasury'])}, reason {found[0]['deposit_account']}"
        if found
        else "no instructions for CC",
        bool(found)
        and found[0]["treasury"] == world.treasury
        and found[0]["deposit_account"] == customer.account,
    )

    # A withdrawal, and the same request again (a retry after a timeout): one withdrawal.
    first = withdraw(small.key, small.amount)
    created = first.json() if first.status_code == 201 else {}
    ok &= client.note(
        f"{shorten(created.get('id', '?'))}: {money(small.amount)} CC, {created.get('status')}",
        first.status_code == 201 and created.get("id") == small.id,
    )
    again = withdraw(small.key, small.amount)
    replayed = again.headers.get("idempotent-replayed") == "true"
    ok &= client.note(
        f"the same {shorten(again.json().get('id', '?'))}"
        + (" (Idempotent-Replayed)" if replayed else ""),
        again.status_code == 200 and replayed and again.json().get("id") == small.id,
    )

    # A large withdrawal: a proposal two distinct staff members approve.
    proposed = withdraw(large.key, large.amount)
    approval = proposed.json() if proposed.status_code == 202 else {}
    approval_id = str(approval.get("id", "?"))
    ok &= client.note(
        f"{money(large.amount)} CC: proposal {shorten(approval_id)}, "
        f"{approval.get('approvals')} of {approval.get('required')} approvals",
        proposed.status_code == 202
        and approval.get("status") == "pending"
        and approval.get("approvals") == 0
        and approval.get("required") == 2,
    )
    for who, count, status in (("operator", 1, "pending"), ("system admin", 2, "executed")):
        vote = client.send(
            who,
            "POST",
            f"/v1/approvals/{approval_id}/approve",
            shown=f"/v1/approvals/{shorten(approval_id)}/approve",
            body={"comment": f"{who}: called the customer back"},
        )
        done = vote.json() if vote.status_code == 200 else {}
        result = done.get("result") or {}
        executed = f", {shorten(str(result.get('withdrawal_id')))} created"
        ok &= client.note(
            f"{done.get('approvals')} of {done.get('required')} approvals: {done.get('status')}"
            + (executed if done.get("status") == "executed" else ""),
            vote.status_code == 200
            and done.get("approvals") == count
            and done.get("status") == status
            and (status == "pending" or result.get("withdrawal_id") == large.id),
        )

    # The emergency pause: value stops moving, reads go on.
    paused = client.send(
        "compliance officer",
        "POST",
        "/v1/system/pause",
        body={"mode": "paused", "reason": PAUSE_REASON},
    )
    pause_correlation = paused.headers.get("x-correlation-id", "")
    ok &= client.note(
        f"paused ({paused.json().get('reason')}); X-Correlation-ID {pause_correlation[:8]}…",
        paused.status_code == 200 and paused.json().get("mode") == "paused",
    )
    refused = withdraw(API_REFUSED_KEY, small.amount)
    ok &= client.note(
        f"{refusal(refused)}: nothing created",
        refused.status_code == 503 and error_code(refused) == 50,
    )
    reserved = small.amount + large.amount
    answer = client.send(user, "GET", f"{own}/balances")
    shown = cc_balance(answer.json(), coin) if answer.status_code == 200 else None
    ok &= client.note(
        f"reads go on: CC {money(shown) if shown is not None else '?'} "
        f"({money(reserved)} reserved)",
        shown == before - reserved,
    )
    resumed = client.send(
        "system admin", "POST", "/v1/system/resume", body={"reason": "drill over"}
    )
    ok &= client.note(
        "running again",
        resumed.status_code == 200 and resumed.json().get("running") is True,
    )

    # Access control: no credentials, and another customer's data.
    anonymous = client.send(ANONYMOUS, "GET", f"{own}/balances")
    ok &= client.note(
        f"{refusal(anonymous)}: no credentials",
        anonymous.status_code == 401 and error_code(anonymous) == 1,
    )
    other = client.send(user, "GET", f"/v1/customers/{API_OTHER.id}/balances")
    ok &= client.note(
        f"{refusal(other)}: not this key's customer",
        other.status_code == 404 and error_code(other) == 10,
    )

    # The audit trail: the pause, with the correlation id of the request that made it.
    audit = client.send("super admin", "GET", "/v1/audit?limit=50")
    records = audit.json() if audit.status_code == 200 else []
    pause_record = next(
        (r for r in reversed(records) if r.get("operation") == "system_paused"), None
    )
    ok &= client.note(
        f"system_paused by {pause_record['actor'].split(':', 1)[0]}, correlation id "
        f"{str(pause_record['correlation_id'])[:8]}…"
        if pause_record
        else "no system_paused record",
        pause_record is not None
        and bool(pause_correlation)
        and pause_record["correlation_id"] == pause_correlation,
    )
    return ok


def settle_over_the_api(exchange: Exchange, client: ApiClient) -> bool:
    """The demo's withdrawal worker pays what was asked for over HTTP (1-step CC, the customer's
    wallet pre-approves it); the operator sees both completed and the books still balance."""
    client.story.paid_after = len(client.story.calls)
    client.story.rounds = exchange.drive(exchange.withdrawal_worker())
    exchange.ledger.checkpoint()  # so the cursor ends at the ledger end
    exchange.ingest()
    ok = True
    for planned in API_WITHDRAWALS:
        answer = client.send(
            "operator",
            "GET",
            f"/v1/withdrawals/{planned.id}",
            shown=f"/v1/withdrawals/{shorten(planned.id)}",
        )
        status = answer.json().get("status") if answer.status_code == 200 else None
        ok &= client.note(
            f"{status}: {money(planned.amount)} CC paid by the worker",
            status == "completed",
        )
    books = client.send("super admin", "GET", "/v1/books/check")
    holds = books.status_code == 200 and books.json().get("holds") is True
    ok &= client.note("the books balance" if holds else "the books do NOT balance", holds)
    return ok


def use_the_api(exchange: Exchange) -> tuple[ApiStory, bool]:
    """Serve the real application on the demo's Integration DB and drive it like an exchange's
    systems and staff would; then pay the withdrawals it took."""
    story = ApiStory()
    keys = create_demo_keys(exchange, story)
    app = create_app(api_context(exchange))
    with (
        api_log(exchange.world.data_dir / "api.log"),
        serving(app) as url,
        httpx.Client(base_url=url, timeout=API_TIMEOUT_S) as http,
    ):
        story.url = url
        client = ApiClient(http, keys, story)
        driven = drive_the_api(exchange, client)
        settled = settle_over_the_api(exchange, client)
    return story, driven and settled


API_CALLS = 17  # the rows of the chapter's table


def show_api(console: Console, story: ApiStory, ok: bool) -> bool:
    console.print()
    console.print(
        f"[bold]10. The HTTP API[/]: the application `sluice serve` runs, in uvicorn at "
        f"{story.url}, on the demo's Integration DB; withdrawals above "
        f"{money(APPROVAL_ABOVE)} reference units need 2 approvals"
    )
    console.print(
        "  API keys made with create_api_key (only a hash is stored; the keys are shown nowhere):"
    )
    console.print(
        "    " + ", ".join(f"{who} {key_id}" for who, key_id in story.key_ids), highlight=False
    )
    table = Table(title_justify="left")
    for name in ("who", "method", "path", "status", "what happened", ""):
        table.add_column(name, overflow="fold")
    for index, call in enumerate(story.calls, start=1):
        table.add_row(
            call.who,
            call.method,
            call.path,
            str(call.status),
            call.what,
            mark(call.ok),
            end_section=index == story.paid_after,
        )
    table.caption = (
        f"between the sections: the demo's withdrawal worker paid both withdrawals "
        f"({story.rounds} rounds of run_once + ingestion); the API's log: api.log"
    )
    console.print(table, highlight=False)
    return ok and len(story.calls) == API_CALLS and all(call.ok for call in story.calls)


# --- the report ----------------------------------------------------------------------------------


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


def show_setup(console: Console, world: World, the_plan: Plan) -> None:
    table = Table(title="1. The ledger and the books", title_justify="left", show_header=False)
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
    return len(pending) == 2


def show_workers(console: Console, world: World, story: WorkersStory) -> bool:
    console.print()
    console.print(
        "[bold]5. The workers[/], in the demo process (the only writer of the ledger file), "
        "ingestion in process after every step"
    )
    accepted = sum(1 for o in story.offers if o.action == "accept")
    rejected = sum(1 for o in story.offers if o.action == "reject")
    console.print(
        f"  deposit worker (KYC registry; {BLOCKED.name} flagged): accepted {accepted} offer(s), "
        f"rejected {rejected}"
    )
    console.print(f"  the wallets of {story.preapprovals} customers pre-approve CC")
    console.print(
        f"  {story.requested} withdrawals requested, each customer debited into in-flight at "
        f"once; withdrawal worker: {story.rounds} rounds of run_once + ingestion until nothing "
        "was left to do"
    )
    for planned, answer in story.answered:
        console.print(
            f"  {planned.customer.name}'s wallet {answer}s the {money(planned.amount)} USDX offer "
            f"of {shorten(planned.id)}"
        )
    crash = story.crash
    if crash is None:
        return False
    planned = crash.withdrawal
    died = crash.crashed and crash.status_after_crash == "submitting"
    console.print(
        f"  crash: worker 1 submitted {shorten(planned.id)} ({planned.customer.name}, "
        f"{money(planned.amount)} CC) and died before recording it: status "
        f"{crash.status_after_crash} {mark(died)}"
    )
    not_again = crash.submitted_by_successor == 0
    seen = crash.status_after_ingestion == "completed"
    console.print(
        f"         worker 2 took over and submitted it {crash.submitted_by_successor} more "
        f"time(s) {mark(not_again)}; ingestion saw the transfer: {crash.status_after_ingestion} "
        f"{mark(seen)}"
    )
    past = (
        crash.trec_tgt is not None
        and crash.cursor_time is not None
        and crash.cursor_time >= crash.trec_tgt
    )
    untouched = crash.settled_after_trec_tgt == 0
    console.print(
        f"         clock moved past trec_tgt {stamp(crash.trec_tgt)}, ingestion at "
        f"{stamp(crash.cursor_time)} {mark(past)}: worker 2 retried or refunded "
        f"{crash.settled_after_trec_tgt} attempt(s) {mark(untouched)}"
    )
    once = crash.transfers_on_ledger == 1
    console.print(
        f"         transfers on the ledger with reason {shorten(planned.id)}: "
        f"{crash.transfers_on_ledger} {mark(once)} (paid exactly once)"
    )
    return died and not_again and seen and past and untouched and once


def show_offers(console: Console, world: World, the_plan: Plan, story: WorkersStory) -> bool:
    table = Table(title="6. Deposit offers and what happened to them", title_justify="left")
    for name in ("from", "amount", "reason", "deposit worker", "on the ledger", "credited", ""):
        table.add_column(name, justify="right" if name == "amount" else "left")
    expected = {
        the_plan.offer.customer.id: ("accept", "completed"),
        the_plan.blocked_offer.customer.id: ("reject", "rejected"),
    }
    ok = len(story.offers) == len(expected)
    for offer in story.offers:
        symbol = world.symbol(offer.instrument_key)
        who = offer.customer.id if offer.customer else None
        matches = expected.get(who or "") == (offer.action, offer.status)
        ok = ok and matches
        credited = (
            f"{money(offer.amount)} {symbol} to {offer.customer.name if offer.customer else '?'}"
            if offer.status == "completed"
            else "nothing: the funds went back to the sender"
        )
        table.add_row(
            offer.customer.name if offer.customer else "?",
            f"{money(offer.amount)} {symbol}",
            offer.reason or "",
            f"{offer.action or 'left alone'} ({offer.why})",
            offer.status or "?",
            credited,
            mark(matches),
        )
    console.print()
    console.print(table)
    return ok


def outcome(record: Withdrawal, planned: PlannedWithdrawal) -> str:
    if record.status == "completed":
        return "paid once, through a worker crash" if planned.crash else "paid"
    if record.status == "failed":
        return f"refunded: {record.failure or record.last_error or 'failed'}"
    return f"in flight ({record.last_error or 'waiting'})"


def show_withdrawals(
    console: Console, world: World, the_plan: Plan, database: bootstrap.Database
) -> bool:
    records = {r.id: r for r in list_withdrawals(database.uow) if r.kind == "withdrawal"}
    table = Table(title="7. Withdrawals", title_justify="left")
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


def show_final_balances(
    console: Console, world: World, the_plan: Plan, database: bootstrap.Database
) -> bool:
    balances = customer_balances(database.uow)
    table = Table(title="8. Balances after deposits and withdrawals", title_justify="left")
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


def show_cursor_and_alerts(console: Console, world: World, database: bootstrap.Database) -> None:
    cursor = load_cursor(database, world)
    with database.uow() as uow:
        alerts = Counter(alert.kind for alert in uow.books.alerts(limit=100_000))
    console.print()
    if cursor is not None:
        record_time = cursor.as_json()["record_time"]
        console.print(
            f"[bold]11. Cursor[/] of {short(world.treasury)}@{NODE}: offset {cursor.offset}, "
            f"record time {record_time} (the ledger's simulated clock), "
            f"last update {str(cursor.update_id)[:16]}…"
        )
    console.print(
        "[bold]   Alerts[/] for the operator: "
        + (", ".join(f"{kind} × {count}" for kind, count in sorted(alerts.items())) or "none")
        + " (deposit_unattributed: one per deposit sluice could not attribute)"
    )


def total(balances: Balances, accounts: Iterable[str], instrument_key: str) -> Decimal:
    return sum((balances.get(name, {}).get(instrument_key, ZERO) for name in accounts), ZERO)


def show_books(console: Console, world: World, database: bootstrap.Database) -> bool:
    balances = customer_balances(database.uow)
    table = Table(title="12. The books per instrument", title_justify="left")
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
            money(world.held_on_ledger.get(instrument, ZERO)),
        )
    console.print()
    console.print(table)
    check = check_invariant(database.uow)
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


# --- the whole run -------------------------------------------------------------------------------


def run_demo(
    data_dir: Path,
    *,
    seed: int,
    console: Console,
    via_http: bool = False,
    ledger_url: str | None = None,
) -> bool:
    """Run the demo in ``data_dir`` (wiped first); True when every check of the report holds:
    the books balance, each customer got what they deposited, suspense holds the rest, both
    offers were pending and then accepted / rejected as planned, ingestion resumed from its
    cursor to the ledger end, every withdrawal ended as planned (the crashed one paid exactly
    once), each balance is deposits credited − withdrawals paid, and every request of the HTTP
    API answered as planned.

    ``via_http``: serve the ledger on a local port and go through the Canton client;
    ``ledger_url``: the same against a ``sluice ledger serve`` already running."""
    started = time.perf_counter()
    console.print(Panel.fit(TITLE, subtitle=f"seed {seed}", style="bold"))
    try:
        prepare_folder(data_dir)
    except FolderInUseError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return False
    the_plan = plan(seed)
    path = data_dir / "ledger.db"
    embedded: EmbeddedLedger | None = None
    server: LedgerServer | None = None
    ledger: Ledger
    wire: Wire | None = None
    if ledger_url is not None:
        wire = Wire(ledger_url.rstrip("/"))
        ledger = RemoteLedger(wire.base_url)
    else:
        embedded = EmbeddedLedger.open(str(path), seed=seed, checkpoint_interval_s=60.0)
        ledger = embedded
        if via_http:
            server = LedgerServer(embedded, default_node=NODE).start()
            wire = Wire(server.url, started_here=True)
            ledger = RemoteLedger(wire.base_url)
    try:
        with console.status("building the ledger: taps, deposits, offers, checkpoints…"):
            world = build_ledger(data_dir, path, ledger, the_plan, wire)
    except FolderInUseError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return False
    try:
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
            exchange = Exchange(world, ledger, database)
            with console.status("the workers: deposit offers, withdrawals, a worker crash…"):
                story = run_workers(exchange, the_plan)
            workers = show_workers(console, world, story)
            offers = show_offers(console, world, the_plan, story)
            withdrawals = show_withdrawals(console, world, the_plan, database)
            final = show_final_balances(console, world, the_plan, database)
            with console.status("compliance: a customer frozen, a deposit held and released…"):
                held = hold_and_release(exchange)
            compliance = show_compliance(console, world, held)
            with console.status("the HTTP API: keys, balances, withdrawals, approvals, a pause…"):
                api_story, api_ok = use_the_api(exchange)
            api = show_api(console, api_story, api_ok)
            world.held_on_ledger = held_on_ledger(ledger, world.treasury)
            show_cursor_and_alerts(console, world, database)
            books = show_books(console, world, database)
        finally:
            database.dispose()
    finally:
        if world.http is not None:
            world.http.close()
        ledger.close()
        if server is not None:
            server.stop()
        if embedded is not None and embedded is not ledger:
            embedded.close()
    show_next_steps(console, world)
    ok = all(
        (books, credited, pending, resumed, workers, offers, withdrawals, final, compliance, api)
    )
    elapsed = time.perf_counter() - started
    with_start_up = time.time() - psutil.Process().create_time()
    verdict = "[bold green]all checks hold[/]" if ok else "[bold red]some checks failed[/]"
    console.print(
        f"\n{verdict} — the demo took {elapsed:.1f}s ({with_start_up:.1f}s with Python start-up)"
    )
    return ok
