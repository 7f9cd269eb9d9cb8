"""A hot-standby ``sluice ingest`` takes over from a writer killed with SIGKILL, again and again,
and the books end as if one process had ingested the whole stream.

How: the test process writes a stream into an embedded ledger file on a thread, at a steady pace
(1-step deposits with known and unknown reasons, offers of a token without preapprovals that
the treasury accepts, treasury payouts, clock advances that make checkpoints), flushing as it
goes, until the last takeover is done. Five ``sluice ingest --follow`` processes (batches of 5)
start together for the same treasury and node and one Integration DB: one holds the writer lock
(a lock file next to the SQLite DB, an advisory lock on PostgreSQL) and ingests, the other four
say they wait as standbys, naming the writer's pid, and a sixth run with ``--no-wait`` is
refused (exit code 2, error 41 naming the holder). While the stream is still being written,
whoever writes is killed with SIGKILL once the committed cursor has passed a target, three
times: each time a standby must take the lock, say it took over and move the cursor on within a
few seconds, and the others must name the new writer. When the stream is complete and
ingested, the last writer and the last standby are stopped with SIGTERM. Then ``sluice check``
passes, the cursor is at the ledger end, the ingested update ids are exactly the stream's
transactions, and history, balances and alerts equal those of one uninterrupted in-process run
into a second DB. Runs on SQLite and on PostgreSQL.

The same for ``sluice serve``: two of them on one DB and one ledger served over HTTP (``sluice
ledger serve``; two serves cannot share an embedded ledger file, which has one writer). The
second says it waits as a standby naming the first's pid, while its API answers and ``/ready``
is 200; the first ingests a deposit; it is killed with SIGKILL, a further deposit is made, and
the second must say it took over within a few seconds and credit it, with the cursor at the
ledger end, ``sluice check`` passing and a clean exit on SIGTERM.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.domain.journal import customer_account_name
from sluice.ledger.local import EmbeddedLedger, RegistryPolicy
from sluice.ledger.local.remote import RemoteLedger
from sluice.services.books import check_invariant, customer_balances
from sluice.services.ingestion import Ingestion, IngestionSettings, connection_name
from sluice.services.reference import onboard_instrument, register_customer
from sluice.store import tables
from tests.conftest import PG_ADMIN_URL, missing, postgres_available
from tests.e2e.test_cli_over_the_wire import free_port, start_server
from tests.e2e.test_crash_recovery import (
    CursorProbe,
    Stream,
    prepare,
    second_postgres_database,
    state_of,
)
from tests.e2e.test_serve import Served
from tests.e2e.test_serve import environment as serve_environment
from tests.e2e.test_serve import wait_for as serve_ready

pytestmark = pytest.mark.slow

NODE = "exchange"
CUSTOMERS = 20
STREAM_ITEMS_MAX = 10_000  # a bound on the stream; it is written until the last takeover
WRITE_PAUSE_S = 0.02  # between two ledger operations: ingestion in batches of 5 keeps up
FLUSH_EVERY = 10
KILL_AT = (250, 600, 950)  # the cursor offsets past which the current writer is killed
BATCH_SIZE = 5
TAKEOVER_MAX_S = 5.0
START_MAX_S = 60.0  # for a new process to say it waits (imports, migrations)
RUN_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.01
SLUICE = Path(sys.executable).with_name("sluice")
TOOK_OVER = "took over ingestion of"
WAITING = "waiting as standby for the ingestion lock of"


class LiveStream:
    """An embedded ledger file being written by a thread of this process."""

    def __init__(self, path: Path, seed: int = 31) -> None:
        self._rng = random.Random(seed)
        ledger = EmbeddedLedger.open(str(path), seed=seed, checkpoint_interval_s=20.0)
        for node in (NODE, "wallets", "registry"):
            ledger.add_node(node)
        dso = ledger.allocate_party("dso", "registry")
        issuer = ledger.allocate_party("issuer", "registry")
        self.treasury = ledger.allocate_party("treasury", NODE)
        self.coin = ledger.create_instrument(dso, "Amulet")
        self.token = ledger.create_instrument(
            issuer, "USDX", RegistryPolicy(preapprovals_allowed=False)
        )
        ledger.create_preapproval(self.treasury, self.coin)
        self.people = [ledger.allocate_party(f"customer-{n}", "wallets") for n in range(CUSTOMERS)]
        for person in self.people:
            ledger.tap(person, self.coin, 1_000_000)
            ledger.mint(person, self.token, 1_000_000)
            ledger.create_preapproval(person, self.coin)
        ledger.tap(self.treasury, self.coin, 50_000)
        ledger.flush()
        self.ledger = ledger
        self.path = path
        self.done = threading.Event()
        self._finishing = threading.Event()
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._write, name="ledger-writer", daemon=True)

    def describe(self) -> Stream:
        return Stream(
            path=self.path,
            treasury=self.treasury,
            end=STREAM_ITEMS_MAX,
            accounts={f"acct-{n}": f"cust-{n}" for n in range(CUSTOMERS)},
            onboarded=(self.coin, self.token),
        )

    def start(self) -> None:
        self._thread.start()

    def _write(self) -> None:
        rng, ledger, people, treasury = self._rng, self.ledger, self.people, self.treasury
        try:
            operations = 0
            while not self._finishing.is_set() and ledger.ledger_end(treasury) < STREAM_ITEMS_MAX:
                n = rng.randrange(CUSTOMERS)
                amount = Decimal(rng.randrange(1, 500_000)).scaleb(-4)
                roll = rng.random()
                if roll < 0.75:
                    reason = f"acct-{n}" if rng.random() < 0.9 else f"unknown-{rng.randrange(9)}"
                    ledger.transfer(people[n], treasury, self.coin, amount, reason=reason)
                elif roll < 0.88:
                    offer = ledger.transfer(
                        people[n], treasury, self.token, amount, reason=f"acct-{n}"
                    )
                    assert offer.instruction_cid is not None
                    ledger.accept(offer.instruction_cid, treasury)
                else:
                    ledger.transfer(treasury, people[n], self.coin, amount / 10, reason="payout")
                ledger.advance(rng.uniform(0.5, 5.0))
                operations += 1
                if operations % FLUSH_EVERY == 0:
                    ledger.flush()
                time.sleep(WRITE_PAUSE_S)
            ledger.checkpoint()
            ledger.flush()
        except BaseException as exc:
            self.failure = exc
            raise
        finally:
            self.done.set()

    def finish(self) -> int:
        """Stop the writer thread; the treasury node's ledger end."""
        self._finishing.set()
        self._thread.join(RUN_TIMEOUT_S)
        assert not self._thread.is_alive(), "the ledger writer did not finish"
        assert self.failure is None, f"the ledger writer failed: {self.failure!r}"
        end = self.ledger.ledger_end(self.treasury)
        self.ledger.close()
        return end


@dataclass
class Ingester:
    """One ``sluice ingest --follow`` process and its stderr."""

    process: subprocess.Popen[bytes]
    log: Path
    name: str
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def ingest_command(url: str, stream: LiveStream) -> list[str]:
    return [
        str(SLUICE),
        "ingest",
        "--party",
        stream.treasury,
        "--db",
        url,
        "--ledger",
        str(stream.path),
        "--node",
        NODE,
        "--batch-size",
        str(BATCH_SIZE),
    ]


def start_ingester(url: str, stream: LiveStream, directory: Path, name: str) -> Ingester:
    log = directory / f"ingest-{name}.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*ingest_command(url, stream), "--follow"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "COLUMNS": "400"},  # one stderr line per note
        )
    return Ingester(process, log, name)


def wait_for(condition: object, timeout_s: float, what: str) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took. Fails after the bound."""
    assert callable(condition)
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)
    return time.monotonic() - started


def holder_pid(database: bootstrap.Database, connection: str) -> int | None:
    """The pid the lock's holder published (lock file or application name), as a standby sees it."""
    lock = database.writer_lock(connection)
    try:
        holder = lock.holder()
    finally:
        lock.release()
    found = re.match(r"pid (\d+)", holder or "")
    return int(found.group(1)) if found else None


@dataclass(frozen=True, slots=True)
class Takeover:
    killed_pid: int
    cursor_at_kill: int
    took_over_pid: int
    seconds: float


def holding(ingesters: list[Ingester], pid: int | None) -> Ingester | None:
    return next((ingester for ingester in ingesters if ingester.pid == pid), None)


def run_with_kills(
    url: str, database: bootstrap.Database, stream: LiveStream, directory: Path
) -> list[Takeover]:
    """Start one writer and its standbys (one more than there are kills, so one is left waiting
    at the end), then kill whoever writes at each target of ``KILL_AT``."""
    connection = connection_name(stream.treasury, NODE)
    probe = CursorProbe(url, connection)
    everyone = [start_ingester(url, stream, directory, str(n)) for n in range(len(KILL_AT) + 2)]
    takeovers: list[Takeover] = []

    def holder() -> Ingester | None:
        return holding(everyone, holder_pid(database, connection))

    def standbys_name(writer: Ingester) -> bool:
        """Every live process but the writer says it waits, naming the writer's pid."""
        named = f"(held by pid {writer.pid} on "
        return all(
            named in ingester.text()
            for ingester in everyone
            if ingester is not writer and ingester.process.poll() is None
        )

    try:
        wait_for(lambda: holder() is not None, START_MAX_S, "a writer")
        writer = holder()
        assert writer is not None
        wait_for(partial(standbys_name, writer), START_MAX_S, "the others to wait as standbys")
        refused = subprocess.run(
            [*ingest_command(url, stream), "--once", "--no-wait"],
            capture_output=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        assert refused.returncode == 2, refused.stderr.decode()
        assert (
            f"error 41 ingestion_lock_held: the ingestion lock of {stream.treasury} on {NODE} "
            f"is held by pid {writer.pid} on "
        ) in " ".join(refused.stderr.decode().split())
        stream.start()
        for target in KILL_AT:
            wait_for(lambda t=target: probe.offset() >= t, RUN_TIMEOUT_S, f"the cursor at {target}")
            assert not stream.done.is_set(), "the stream ended before the kill"
            assert writer.process.poll() is None, writer.text()
            writer.process.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            assert writer.process.wait(timeout=RUN_TIMEOUT_S) == -signal.SIGKILL
            cursor_at_kill = probe.offset()
            wait_for(
                lambda w=writer: (h := holder()) is not None and h is not w,
                TAKEOVER_MAX_S,
                "a standby to take the lock",
            )
            successor = holder()
            assert successor is not None
            wait_for(
                lambda s=successor: TOOK_OVER in s.text(),
                TAKEOVER_MAX_S,
                "the standby to say it took over",
            )
            seconds = time.monotonic() - killed_at
            wait_for(
                lambda c=cursor_at_kill: probe.offset() > c,
                RUN_TIMEOUT_S,
                "the new writer to move the cursor",
            )
            takeovers.append(Takeover(writer.pid, cursor_at_kill, successor.pid, seconds))
            writer = successor
            wait_for(partial(standbys_name, writer), TAKEOVER_MAX_S, "the standbys' new holder")
        end = stream.finish()
        wait_for(lambda: probe.offset() >= end, RUN_TIMEOUT_S, f"the cursor at the end {end}")
        last = [ingester for ingester in everyone if ingester.process.poll() is None]
        assert len(last) == 2, [ingester.name for ingester in last]
        for ingester in last:
            ingester.process.send_signal(signal.SIGTERM)
        for ingester in last:
            code = ingester.process.wait(timeout=RUN_TIMEOUT_S)
            assert code == 0, f"{ingester.name} exited with {code}: {ingester.text()}"
        (standby,) = [ingester for ingester in last if ingester is not writer]
        assert TOOK_OVER not in standby.text()  # the last standby never wrote
        assert "stopped while waiting as standby" in standby.text()
    finally:
        probe.dispose()
        for ingester in everyone:
            if ingester.process.poll() is None:
                ingester.process.kill()
                ingester.process.wait()
    return takeovers


def ingested_update_ids(database: bootstrap.Database) -> list[str]:
    with database.engine.connect() as connection:
        return list(connection.execute(sa.select(tables.ingested_updates.c.update_id)).scalars())


def stream_transaction_ids(stream: LiveStream) -> list[str]:
    ledger = EmbeddedLedger.open(str(stream.path), read_only=True)
    try:
        return [
            item["update"]["Transaction"]["value"]["updateId"]
            for item in ledger.client(stream.treasury).updates(stream.treasury, None)
            if "Transaction" in item["update"]
        ]
    finally:
        ledger.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The DB both processes ingest into, and one for the uninterrupted reference run."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'books.db'}", f"sqlite:///{tmp_path / 'reference.db'}"
        return
    if not postgres_available():
        missing(f"PostgreSQL at {PG_ADMIN_URL}")
    url: str = request.getfixturevalue("postgres_url")
    with second_postgres_database() as reference_url:
        yield url, reference_url


def test_a_standby_ingester_takes_over_from_a_killed_writer_and_nothing_is_ingested_twice(
    database_urls: tuple[str, str], tmp_path: Path
) -> None:
    assert SLUICE.exists(), f"the sluice console script is not installed at {SLUICE}"
    url, reference_url = database_urls
    stream = LiveStream(tmp_path / "ledger.db")
    described = stream.describe()
    database = prepare(url, described)
    reference = prepare(reference_url, described)
    try:
        takeovers = run_with_kills(url, database, stream, tmp_path)
        assert len(takeovers) == len(KILL_AT)
        for takeover in takeovers:
            assert takeover.cursor_at_kill > 0
            assert takeover.seconds < TAKEOVER_MAX_S, takeovers
        assert len({t.cursor_at_kill for t in takeovers}) == len(KILL_AT)
        assert len({t.took_over_pid for t in takeovers}) == len(KILL_AT)

        checked = subprocess.run(
            [str(SLUICE), "check", "--db", url],
            capture_output=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr.decode()
        assert b"the books balance" in checked.stderr

        transactions = stream_transaction_ids(stream)
        ingested = ingested_update_ids(database)
        assert len(transactions) > KILL_AT[-1] // 2
        assert sorted(ingested) == sorted(transactions)  # each one, once

        ledger = EmbeddedLedger.open(str(stream.path), read_only=True)
        try:
            end = ledger.ledger_end(stream.treasury)
            Ingestion(
                reference.uow,
                ledger.client(stream.treasury),
                stream.treasury,
                connection=connection_name(stream.treasury, NODE),
                settings=IngestionSettings(batch_size_max=500),
            ).run()
        finally:
            ledger.close()
        expected = state_of(reference, described)
        actual = state_of(database, described)
        assert check_invariant(database.uow).problems == []
        assert actual["view"]["cursor"] == expected["view"]["cursor"]
        assert actual["view"]["cursor"]["offset"] == end
        assert actual["view"]["holdings"] == expected["view"]["holdings"]
        assert actual["history"] == expected["history"]
        assert actual["balances"] == expected["balances"]
        assert actual["alerts"] == expected["alerts"]
    finally:
        database.dispose()
        reference.dispose()


# --- a second `sluice serve` ---------------------------------------------------------------------


def start_serve(folder: Path, env: dict[str, str], name: str, db: str, ledger_url: str) -> Served:
    """``sluice serve`` on the DB and the participant URL, returned once ``/health`` is 200."""
    port = free_port()
    log = folder / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                *(str(SLUICE), "serve", "--port", str(port), "--interval", "0.2"),
                *("--db", db, "--ledger-url", ledger_url),
            ],
            cwd=folder,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    served = Served(process, f"http://127.0.0.1:{port}", log)
    serve_ready(served, "/health")
    return served


def balance_of(database: bootstrap.Database, customer: str) -> Decimal:
    accounts = customer_balances(database.uow)
    return sum(accounts.get(customer_account_name(customer), {}).values(), Decimal(0))


def test_a_standby_serve_answers_requests_and_takes_over_ingestion_from_a_killed_one(
    database_url: str, tmp_path: Path
) -> None:
    ledger_server = start_server(
        tmp_path / "ledger", "--create", "--ledger", str(tmp_path / "l.db")
    )
    database = bootstrap.database(database_url)
    try:
        with RemoteLedger(ledger_server.url) as ledger:
            for node in ("registry", NODE, "wallets"):
                ledger.add_node(node)
            dso = ledger.allocate_party("dso", "registry")
            treasury = ledger.allocate_party("treasury", NODE)
            customer = ledger.allocate_party("cust-0", "wallets")
            coin = ledger.create_instrument(dso, "Amulet")
            ledger.create_preapproval(treasury, coin)
            ledger.tap(customer, coin, 1_000)
            ledger.transfer(customer, treasury, coin, Decimal(100), reason="acct-0")
            ledger.flush()
        register_customer(database.uow, "cust-0", "Customer 0", ["acct-0"])
        onboard_instrument(database.uow, coin, registry_url=ledger_server.registry_url(dso))
        participant = ledger_server.node_url(NODE)
        probe = CursorProbe(
            database_url, connection_name(treasury, bootstrap.participant_node(participant))
        )
        env = serve_environment(tmp_path, SLUICE_TREASURY_PARTY=treasury)
        first = start_serve(tmp_path, env, "first", database_url, participant)
        second: Served | None = None
        try:
            wait_for(lambda: probe.offset() >= ledger_server.ledger_end(), START_MAX_S, "ingest")
            assert balance_of(database, "cust-0") == Decimal(100)
            second = start_serve(tmp_path, env, "second", database_url, participant)
            waiting = (
                f"{WAITING} {treasury} on {bootstrap.participant_node(participant)} "
                f"(held by pid {first.process.pid} on "
            )
            wait_for(lambda: waiting in second.output(), START_MAX_S, "the standby's line")
            serve_ready(second, "/ready")  # the standby's API and service loop run
            assert second.get("/v1/instruments").status_code == 401  # it answers requests

            with RemoteLedger(ledger_server.url) as ledger:
                ledger.transfer(customer, treasury, coin, Decimal(20), reason="acct-0")
                ledger.flush()
            wait_for(lambda: balance_of(database, "cust-0") == 120, RUN_TIMEOUT_S, "the writer")

            first.process.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            first.process.wait(timeout=RUN_TIMEOUT_S)
            with RemoteLedger(ledger_server.url) as ledger:
                ledger.transfer(customer, treasury, coin, Decimal(3), reason="acct-0")
                ledger.flush()
            wait_for(lambda: TOOK_OVER in second.output(), TAKEOVER_MAX_S, "the takeover")
            assert time.monotonic() - killed_at < TAKEOVER_MAX_S
            wait_for(lambda: balance_of(database, "cust-0") == 123, RUN_TIMEOUT_S, "the standby")
            assert probe.offset() == ledger_server.ledger_end()
            assert second.terminate() == 0, second.output()
        finally:
            probe.dispose()
            for served in (first, second):
                if served is not None and served.process.poll() is None:
                    served.process.kill()
                    served.process.wait()
        checked = subprocess.run(
            [str(SLUICE), "check", "--db", database_url],
            capture_output=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr.decode()
    finally:
        database.dispose()
        ledger_server.stop()
