"""The withdrawal worker killed with SIGKILL while it submits: every withdrawal is still paid
exactly once.

The hazard: the worker marks a batch of withdrawals ``submitting``, submits them one by one, and
records them ``submitted`` together afterwards. A worker killed in between leaves transfers
committed on the ledger for records the DB still has in ``submitting`` — and others in
``submitting`` that never left. The next worker must not pay the first kind again, and must pay
the second kind once their deadline (``trec_tgt``) has passed unseen.

How: ``sluice ledger serve --create`` serves an embedded ledger (a real process, so whatever the
worker submitted stays committed when the worker dies). Customers deposit to the treasury; the
exchange (an SQLite Integration DB) ingests with ``sluice ingest`` and takes withdrawal requests
through the service, on the served ledger's clock. Then, round after round, a batch of
withdrawals is requested and ``sluice workers run`` is started as a process; the test reads the
treasury's update stream over HTTP and sends SIGKILL the moment a transfer of this batch shows
up on the ledger, while the worker is still submitting the rest. Right after each kill it reads
the DB: a withdrawal whose transfer is on the ledger while its record still says ``submitting``
is a kill that landed between submission and recording, and at least one kill must have landed
there. Then the ledger clock is moved past every deadline, and ``sluice ingest`` and ``sluice
workers run --once`` run in turn until nothing is left in flight. Every withdrawal must be
completed with exactly one transfer on the ledger paying its receiver; the customers' wallets on
the ledger and their balances in the DB must agree with that, and ``sluice check`` must find the
books balanced.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.domain.history import unwrap_update
from sluice.domain.ledger import REASON_KEY, InstrumentId
from sluice.ledger.canton.auth import NoAuth
from sluice.ledger.canton.client import CantonLedgerClient
from sluice.ledger.canton.transport import LedgerHttp
from sluice.ledger.local.remote import RemoteLedger
from sluice.services.books import customer_balances
from sluice.services.reference import onboard_instrument, register_customer
from sluice.services.withdrawals import WithdrawalSettings, request_withdrawal
from sluice.store import tables
from tests.e2e.test_cli_over_the_wire import (
    NODE,
    Served,
    environment,
    sluice,
    sluice_script,
    start_server,
)

pytestmark = pytest.mark.slow

CUSTOMERS = 4
DEPOSITS_EACH = 5  # one treasury holding each, so a whole batch can be reserved at once
DEPOSIT = Decimal(100)
TAPPED = Decimal(1_000)
ROUNDS = 3
BATCH = 6
# Bounds on every wait, so a hung process fails the test instead of hanging it.
SUBMIT_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.005
RECOVERY_ROUNDS_MAX = 6
TREC_SPAN_S = WithdrawalSettings().trec_span_s  # the default, which `sluice workers run` uses


@dataclass(frozen=True)
class Payout:
    """A transfer from the treasury seen on the ledger."""

    reason: str | None
    receiver: str
    amount: Decimal
    outcome: str  # the result tag: Completed, Pending, Failed


@dataclass
class TreasuryStream:
    """The treasury's transfers, read from its node's update stream over HTTP as they come."""

    client: CantonLedgerClient
    treasury: str
    after: int = 0
    payouts: list[Payout] = field(default_factory=list)

    def refresh(self) -> TreasuryStream:
        for raw in self.client.updates(self.treasury, self.after):
            kind, body = unwrap_update(raw)
            offset = body.get("offset")
            if isinstance(offset, int):
                self.after = max(self.after, offset)
            if kind == "transaction":
                self._read(body)
        return self

    def _read(self, body: Any) -> None:
        for event in body["events"]:
            exercised = event.get("ExercisedEvent")
            if exercised is None or exercised["choice"] != "TransferFactory_Transfer":
                continue
            transfer = exercised["choiceArgument"]["transfer"]
            output = (exercised.get("exerciseResult") or {}).get("output") or {}
            self.payouts.append(
                Payout(
                    reason=transfer["meta"]["values"].get(REASON_KEY),
                    receiver=transfer["receiver"],
                    amount=Decimal(transfer["amount"]),
                    outcome=str(output.get("tag", "")).removeprefix("TransferInstructionResult_"),
                )
            )

    def reasons(self) -> set[str]:
        return {payout.reason for payout in self.payouts if payout.reason is not None}

    def paid(self, reason: str, receiver: str) -> list[Payout]:
        """The transfers carrying ``reason`` that delivered to ``receiver``."""
        return [
            p
            for p in self.payouts
            if p.reason == reason and p.receiver == receiver and p.outcome == "Completed"
        ]


@dataclass
class Exchange:
    server: Served
    folder: Path
    db: str
    treasury: str
    coin: InstrumentId
    wallets: dict[str, str]  # customer id → wallet party
    env: dict[str, str]

    def remote(self) -> RemoteLedger:
        return RemoteLedger(self.server.url)

    @property
    def participant(self) -> tuple[str, ...]:
        return ("--ledger-url", self.server.node_url(NODE))

    def ingest(self) -> None:
        sluice(
            *("ingest", "--once", *self.participant, "--party", self.treasury, "--db", self.db),
            env=self.env,
        )

    def workers_command(self, *options: str) -> list[str]:
        return [
            sluice_script(),
            *("workers", "run", *self.participant, "--sandbox-clock"),
            *("--treasury", self.treasury, "--db", self.db),
            *options,
        ]

    def statuses(self) -> dict[str, str]:
        return {wid: status for wid, (status, _attempt) in self.records().items()}

    def records(self) -> dict[str, tuple[str, int]]:
        """Withdrawal id → (status, attempt), read without the write lock."""
        table = tables.withdrawals
        engine = sa.create_engine(self.db)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    sa.select(table.c.id, table.c.status, table.c.attempt).where(
                        table.c.kind == "withdrawal"
                    )
                )
                return {row.id: (row.status, row.attempt) for row in rows}
        finally:
            engine.dispose()

    def wallet(self, customer: str) -> Decimal:
        with self.remote() as ledger:
            held = ledger.active_holdings(self.wallets[customer], self.coin)
        return sum((h.amount for h in held), Decimal(0))


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Exchange]:
    """A served ledger where every customer deposited ``DEPOSITS_EACH`` times ``DEPOSIT`` to the
    treasury, and the exchange that has ingested it."""
    server = start_server(tmp_path / "server", "--create", "--ledger", str(tmp_path / "ledger.db"))
    try:
        with RemoteLedger(server.url) as ledger:
            for node in ("registry", NODE, "wallets"):
                ledger.add_node(node)
            dso = ledger.allocate_party("dso", "registry")
            treasury = ledger.allocate_party("treasury", NODE)
            coin = ledger.create_instrument(dso, "Amulet")
            ledger.create_preapproval(treasury, coin)
            wallets: dict[str, str] = {}
            for n in range(CUSTOMERS):
                wallet = ledger.allocate_party(f"cust-{n}", "wallets")
                wallets[f"cust-{n}"] = wallet
                ledger.create_preapproval(wallet, coin)
                ledger.tap(wallet, coin, TAPPED)
                for _ in range(DEPOSITS_EACH):
                    ledger.transfer(wallet, treasury, coin, DEPOSIT, reason=f"acct-{n}")
            ledger.advance(40)
            ledger.checkpoint()
            ledger.flush()
        db = f"sqlite:///{tmp_path / 'sluice.db'}"
        database = bootstrap.database(db)
        try:
            for n in range(CUSTOMERS):
                register_customer(database.uow, f"cust-{n}", f"Customer {n}", [f"acct-{n}"])
            onboard_instrument(database.uow, coin, registry_url=server.registry_url(dso))
        finally:
            database.dispose()
        built = Exchange(server, tmp_path, db, treasury, coin, wallets, environment(tmp_path / "d"))
        built.ingest()
        yield built
    finally:
        server.stop()


def request_batch(exchange: Exchange, round_number: int) -> dict[str, tuple[str, Decimal]]:
    """``BATCH`` withdrawals, each of another amount, spread over the customers; returns
    withdrawal id → (customer, amount)."""
    requested: dict[str, tuple[str, Decimal]] = {}
    database = bootstrap.database(exchange.db)
    try:
        with exchange.remote() as ledger:
            for n in range(BATCH):
                customer = f"cust-{(round_number * BATCH + n) % CUSTOMERS}"
                amount = Decimal(5) + Decimal(round_number * BATCH + n) / 100
                record = request_withdrawal(
                    database.uow,
                    treasury=exchange.treasury,
                    customer_id=customer,
                    receiver=exchange.wallets[customer],
                    instrument=exchange.coin,
                    amount=amount,
                    idempotency_key=f"round-{round_number}-{n}",
                    clock=ledger.time,
                )
                assert record.status == "reserved", record
                requested[record.id] = (customer, amount)
    finally:
        database.dispose()
    return requested


@dataclass(frozen=True)
class Kill:
    round_number: int
    # Withdrawals of the batch whose transfer was on the ledger while the DB still said
    # ``submitting``: the kill landed between submission and recording for them.
    between: tuple[str, ...]
    statuses: dict[str, str]


def kill_while_submitting(
    exchange: Exchange, stream: TreasuryStream, batch: set[str], round_number: int
) -> Kill:
    """Start ``sluice workers run``; SIGKILL it once a transfer of ``batch`` is on the ledger."""
    log = exchange.folder / f"worker-{round_number}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            exchange.workers_command("--interval", "0.1"),
            stdout=output,
            stderr=subprocess.STDOUT,
            env=exchange.env,
        )
    try:
        deadline = time.monotonic() + SUBMIT_TIMEOUT_S
        while not stream.refresh().reasons() & batch:
            assert process.poll() is None, f"the worker exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"nothing submitted: {log.read_text()}"
            time.sleep(POLL_INTERVAL_S)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=SUBMIT_TIMEOUT_S) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    statuses = exchange.statuses()
    on_ledger = stream.refresh().reasons()
    between = tuple(
        sorted(wid for wid in batch if wid in on_ledger and statuses[wid] == "submitting")
    )
    return Kill(round_number, between, {wid: statuses[wid] for wid in batch})


def recover(exchange: Exchange, requested: set[str]) -> None:
    """Past every deadline, ingestion and a worker round in turn until nothing is in flight."""
    for _ in range(RECOVERY_ROUNDS_MAX):
        exchange.ingest()
        if all(exchange.statuses()[wid] == "completed" for wid in requested):
            return
        with exchange.remote() as ledger:
            ledger.advance(TREC_SPAN_S + 10)
            ledger.checkpoint()
            ledger.flush()
        exchange.ingest()  # the missing attempts are over: they are queued for a retry
        done = subprocess.run(
            exchange.workers_command("--once"),
            env=exchange.env,
            capture_output=True,
            text=True,
            timeout=SUBMIT_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    left = {wid: s for wid, s in exchange.statuses().items() if s != "completed"}
    raise AssertionError(f"still not completed after {RECOVERY_ROUNDS_MAX} rounds: {left}")


def test_worker_killed_between_submitting_and_recording_pays_every_withdrawal_once(
    exchange: Exchange,
) -> None:
    http = LedgerHttp(exchange.server.node_url(NODE), NoAuth())
    stream = TreasuryStream(CantonLedgerClient(http, use_websocket=False), exchange.treasury)
    stream.refresh()
    wallets_before = {customer: exchange.wallet(customer) for customer in exchange.wallets}

    requested: dict[str, tuple[str, Decimal]] = {}
    kills: list[Kill] = []
    for round_number in range(ROUNDS):
        batch = request_batch(exchange, round_number)
        requested.update(batch)
        kills.append(kill_while_submitting(exchange, stream, set(batch), round_number))
    # At least one kill landed after a submission committed and before the worker recorded it.
    assert any(kill.between for kill in kills), kills

    recover(exchange, set(requested))
    # Those whose transfer had committed were completed by ingestion from their first attempt:
    # never submitted again, never retried. The ones the kill stopped before they left were
    # retried once their deadline had passed.
    records = exchange.records()
    landed = {wid for kill in kills for wid in kill.between}
    assert {records[wid] for wid in landed} == {("completed", 1)}
    assert any(records[wid][1] > 1 for wid in requested if wid not in landed), records

    stream.refresh()
    for wid, (customer, amount) in requested.items():
        paid = stream.paid(wid, exchange.wallets[customer])
        assert [p.amount for p in paid] == [amount], (wid, paid)
    # Nothing else was paid to the customers than the withdrawals, once each.
    to_customers = [p for p in stream.payouts if p.receiver in exchange.wallets.values()]
    assert sorted(p.reason or "" for p in to_customers if p.outcome == "Completed") == sorted(
        requested
    )
    balances = customer_balances_by_customer(exchange)
    for customer in exchange.wallets:
        taken = sum((a for c, a in requested.values() if c == customer), Decimal(0))
        assert exchange.wallet(customer) == wallets_before[customer] + taken, customer
        assert balances[customer] == DEPOSIT * DEPOSITS_EACH - taken, customer
    checked = sluice("check", "--db", exchange.db, env=exchange.env)
    assert "the books balance" in checked.stderr


def customer_balances_by_customer(exchange: Exchange) -> dict[str, Decimal]:
    database = bootstrap.database(exchange.db)
    try:
        found = customer_balances(database.uow)
    finally:
        database.dispose()
    coin = exchange.coin.key()
    return {
        account.removeprefix("customer:"): held.get(coin, Decimal(0))
        for account, held in found.items()
        if account.startswith("customer:")
    }
