"""The world the demo builds: what the customers do (:func:`plan`, a pure function of the seed),
the ledger and the Integration DB it sets up from that plan, and the exchange's services bound to
them (:class:`Exchange`), which every chapter drives.

Nothing here prints: the chapters tell the story, :mod:`sluice.demo.report` formats it.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Literal

import structlog

from sluice import bootstrap
from sluice.domain.amounts import ZERO
from sluice.domain.ledger import Cursor, InstrumentId
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
from sluice.ports import LedgerClient, LedgerCommands, RegistryLookup
from sluice.services.compliance import KycRegistry, RegistryGate
from sluice.services.deposit_worker import DepositWorker
from sluice.services.ingestion import Ingestion, IngestionSettings, connection_name
from sluice.services.reference import onboard_instrument, register_customer
from sluice.services.withdrawals import WithdrawalSettings, WithdrawalWorker, request_withdrawal

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
POLL_S = 0.002
OFFICER = "demo-officer"  # the compliance officer who flags, freezes and releases

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
    plan: Plan  # what the customers do; the ledger was built from it
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
            data_dir,
            path,
            f"sqlite:///{data_dir / 'sluice.db'}",
            the_plan,
            treasury,
            coin,
            usdx,
            wire,
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


def load_cursor(database: bootstrap.Database, world: World) -> Cursor | None:
    with database.uow() as uow:
        return uow.ingestion.load_cursor(world.connection)


# --- the exchange: sluice's services in this process, on that ledger and database ----------------


@dataclass(slots=True)
class Exchange:
    """The exchange's services in this process, bound to the demo's ledger (in process, or over
    HTTP through the Canton client) and the Integration DB. Their clock is the ledger's."""

    world: World
    ledger: Ledger
    database: bootstrap.Database
    settings: WithdrawalSettings = field(default_factory=WithdrawalSettings)
    registry: KycRegistry = field(default_factory=KycRegistry)
    custody: object = None  # the Bitcoin chapter's custody (demo.bitcoin.Custody), reused by iSTSi

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


@contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Log lines (structlog) written while a chapter runs go to ``path`` in the data folder, not
    into the report; a logging set up by whoever runs the demo is left as it is."""
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
