"""Ingestion killed with SIGKILL at random points of a long stream ends exactly where an
uninterrupted run ends.

How: the embedded ledger writes a stream of a few thousand updates to a SQLite file (many
customers' 1-step deposits with known, unknown and missing reasons, deposits of an instrument the
exchange did not onboard, offers of a token without preapprovals that the treasury accepts,
treasury payouts, clock advances that make checkpoints). A reference run ingests all of it
in-process into DB A, in batches of 500. Then ``sluice ingest --once`` runs as a real process
against DB B in batches of 5 and is killed with SIGKILL several times: each kill waits until the
committed cursor has passed a target offset drawn from a seeded RNG, then a further random few
milliseconds, so it lands at a varied point — mostly inside a batch's transaction, where the
process spends nearly all its time. A last run is let finish. B must then equal A in every
observable way: the treasury view (cursor, holdings, pending instructions, history), the full
history records, every balance, the alerts, and the books' invariant. Runs on SQLite and on
PostgreSQL.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.domain.ledger import InstrumentId
from sluice.ledger.local import EmbeddedLedger, RegistryPolicy
from sluice.services.books import check_invariant, customer_balances, treasury_view
from sluice.services.ingestion import Ingestion, IngestionSettings, connection_name
from sluice.services.reference import onboard_instrument, register_customer
from sluice.store import tables
from tests.conftest import PG_ADMIN_URL, missing, postgres_available

pytestmark = pytest.mark.slow

NODE = "exchange"
CUSTOMERS = 60
STREAM_ITEMS = 3000
KILLS = 6
CRASH_BATCH_SIZE = 5
# Bounds on every wait, so a hung process fails the test instead of hanging it.
RUN_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 0.005
SLUICE = Path(sys.executable).with_name("sluice")


@dataclass(frozen=True, slots=True)
class Stream:
    """A ledger file and what the exchange knows before ingesting it."""

    path: Path
    treasury: str
    end: int  # the treasury node's ledger end: the cursor a complete run stops at
    accounts: dict[str, str]  # deposit account → customer id
    onboarded: tuple[InstrumentId, ...]


def build_stream(path: Path, seed: int = 20) -> Stream:
    rng = random.Random(seed)
    ledger = EmbeddedLedger.open(str(path), seed=seed, checkpoint_interval_s=20.0)
    for node in (NODE, "wallets", "registry"):
        ledger.add_node(node)
    dso = ledger.allocate_party("dso", "registry")
    issuer = ledger.allocate_party("issuer", "registry")
    stranger = ledger.allocate_party("stranger", "registry")
    treasury = ledger.allocate_party("treasury", NODE)
    coin = ledger.create_instrument(dso, "Amulet")
    token = ledger.create_instrument(issuer, "USDX", RegistryPolicy(preapprovals_allowed=False))
    foreign = ledger.create_instrument(stranger, "Foreign")
    ledger.create_preapproval(treasury, coin)
    ledger.create_preapproval(treasury, foreign)
    people = [ledger.allocate_party(f"customer-{n}", "wallets") for n in range(CUSTOMERS)]
    for person in people:
        ledger.tap(person, coin, 1_000_000)
        ledger.tap(person, foreign, 1_000)
        ledger.mint(person, token, 1_000_000)
        ledger.create_preapproval(person, coin)
    ledger.tap(treasury, coin, 50_000)

    payouts = 0
    while ledger.ledger_end(treasury) < STREAM_ITEMS:
        n = rng.randrange(CUSTOMERS)
        amount = Decimal(rng.randrange(1, 500_000)).scaleb(-4)
        roll = rng.random()
        if roll < 0.70:
            known = rng.random() < 0.85
            reason = f"acct-{n}" if known else rng.choice([None, f"unknown-{rng.randrange(99)}"])
            ledger.transfer(people[n], treasury, coin, amount, reason=reason)
        elif roll < 0.72:
            ledger.transfer(people[n], treasury, foreign, amount / 1000, reason=f"acct-{n}")
        elif roll < 0.85:
            offer = ledger.transfer(people[n], treasury, token, amount, reason=f"acct-{n}")
            assert offer.instruction_cid is not None
            if rng.random() < 0.9:  # the rest stay pending
                ledger.accept(offer.instruction_cid, treasury)
        else:
            payouts += 1
            ledger.transfer(treasury, people[n], coin, amount / 10, reason=f"payout-{payouts}")
        ledger.advance(rng.uniform(0.5, 5.0))
    ledger.checkpoint()
    end = ledger.ledger_end(treasury)
    ledger.flush()
    ledger.close()
    return Stream(
        path=path,
        treasury=treasury,
        end=end,
        accounts={f"acct-{n}": f"cust-{n}" for n in range(CUSTOMERS)},
        onboarded=(coin, token),
    )


def prepare(url: str, stream: Stream) -> bootstrap.Database:
    """Open (migrate) a DB and give it the exchange's customers and onboarded instruments."""
    database = bootstrap.database(url)
    for account, customer in stream.accounts.items():
        register_customer(database.uow, customer, customer.upper(), [account])
    for instrument in stream.onboarded:
        onboard_instrument(database.uow, instrument)
    return database


def state_of(database: bootstrap.Database, stream: Stream) -> dict[str, Any]:
    """Everything a client can observe of the ingested books."""
    connection = connection_name(stream.treasury, NODE)
    with database.uow() as uow:
        history = uow.books.history(connection)
        alerts = sorted(uow.books.alerts(limit=1_000_000), key=lambda alert: alert.id)
    return {
        "view": treasury_view(database.uow, stream.treasury, connection),
        "history": history,
        "balances": customer_balances(database.uow),
        "alert_ids": [alert.id for alert in alerts],
        "alerts": alerts,
    }


class CursorProbe:
    """Reads the committed cursor without taking SQLite's write lock (a plain engine, no
    ``BEGIN IMMEDIATE``), so polling does not slow the process under test."""

    def __init__(self, url: str, connection: str) -> None:
        self._engine = sa.create_engine(url)
        self._connection = connection

    def offset(self) -> int:
        cursors = tables.ledger_cursors
        query = sa.select(cursors.c.offset).where(cursors.c.connection == self._connection)
        with self._engine.connect() as connection:
            found = connection.execute(query).scalar()
        return int(found) if found is not None else 0

    def dispose(self) -> None:
        self._engine.dispose()


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; returns whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(POLL_INTERVAL_S)
    return condition()


def ingest_command(url: str, stream: Stream) -> list[str]:
    return [
        str(SLUICE),
        "ingest",
        "--once",
        "--party",
        stream.treasury,
        "--db",
        url,
        "--ledger",
        str(stream.path),
        "--node",
        NODE,
        "--batch-size",
        str(CRASH_BATCH_SIZE),
    ]


@dataclass(frozen=True, slots=True)
class Kill:
    target: int  # the cursor offset waited for before the final random delay
    delay_s: float
    killed: bool  # False: the process had already finished
    cursor_after: int


def finished_or_past(process: subprocess.Popen[bytes], probe: CursorProbe, target: int) -> bool:
    return process.poll() is not None or probe.offset() >= target


def kill_repeatedly(url: str, stream: Stream, log: Path, rng: random.Random) -> list[Kill]:
    """Start ``sluice ingest`` again and again, SIGKILL each run at a random point."""
    probe = CursorProbe(url, connection_name(stream.treasury, NODE))
    targets = sorted(rng.sample(range(stream.end // 20, stream.end * 9 // 10), KILLS))
    kills: list[Kill] = []
    try:
        with log.open("ab") as stderr:
            for drawn in targets:
                # Each run must get past where the last one was killed: kills land at new points.
                target = max(drawn, probe.offset() + 1)
                process = subprocess.Popen(
                    ingest_command(url, stream), stdout=subprocess.DEVNULL, stderr=stderr
                )
                try:
                    reached = wait_for(
                        partial(finished_or_past, process, probe, target), RUN_TIMEOUT_S
                    )
                    assert reached, f"ingestion never reached offset {target}"
                    delay_s = rng.uniform(0.0, 0.05)
                    try:
                        # Waits out the delay, or returns early if the run finishes by itself.
                        process.wait(timeout=delay_s)
                        killed = False
                    except subprocess.TimeoutExpired:
                        process.send_signal(signal.SIGKILL)
                        killed = process.wait(timeout=RUN_TIMEOUT_S) == -signal.SIGKILL
                finally:
                    if process.poll() is None:
                        process.kill()
                        process.wait()
                kills.append(Kill(target, delay_s, killed, probe.offset()))
    finally:
        probe.dispose()
    return kills


@contextmanager
def second_postgres_database() -> Iterator[str]:
    """Another fresh PostgreSQL database (the ``postgres_url`` fixture gives only one)."""
    name = f"sluice_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two empty Integration DBs on the same engine: the reference run's and the crash runs'."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'reference.db'}", f"sqlite:///{tmp_path / 'crashed.db'}"
        return
    if not postgres_available():
        missing(f"PostgreSQL at {PG_ADMIN_URL}")
    crashed_url: str = request.getfixturevalue("postgres_url")
    with second_postgres_database() as reference_url:
        yield reference_url, crashed_url


def test_ingestion_killed_at_random_points_ends_in_the_state_of_an_uninterrupted_run(
    database_urls: tuple[str, str], tmp_path: Path
) -> None:
    assert SLUICE.exists(), f"the sluice console script is not installed at {SLUICE}"
    reference_url, crashed_url = database_urls
    stream = build_stream(tmp_path / "ledger.db")
    assert stream.end >= STREAM_ITEMS

    reference = prepare(reference_url, stream)
    crashed = prepare(crashed_url, stream)
    try:
        ledger = EmbeddedLedger.open(str(stream.path), read_only=True)
        try:
            progress = Ingestion(
                reference.uow,
                ledger.client(stream.treasury),
                stream.treasury,
                connection=connection_name(stream.treasury, NODE),
                settings=IngestionSettings(batch_size_max=500),
            ).run()
        finally:
            ledger.close()
        assert progress.cursor is not None and progress.cursor.offset == stream.end
        expected = state_of(reference, stream)
        assert check_invariant(reference.uow).problems == []
        assert {alert.kind for alert in expected["alerts"]} == {
            "deposit_unattributed",
            "instrument_not_onboarded",
            "holdings_change_unexplained",  # the payouts: no withdrawal records them yet
        }
        assert len(expected["view"]["pending_instructions"]) > 0
        assert len(expected["history"]) > STREAM_ITEMS // 2

        log = tmp_path / "ingest.log"
        kills = kill_repeatedly(crashed_url, stream, log, random.Random(7))
        mid_way = [k for k in kills if k.killed and 0 < k.cursor_after < stream.end]
        # Every kill interrupted a running ingestion part-way, each at a different point.
        assert len(mid_way) == KILLS, f"not every kill landed mid-way: {kills}"
        assert len({k.cursor_after for k in mid_way}) == KILLS, f"kills at the same point: {kills}"

        final = subprocess.run(
            ingest_command(crashed_url, stream),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        assert final.returncode == 0, final.stderr.decode() + log.read_text()

        actual = state_of(crashed, stream)
        assert check_invariant(crashed.uow).problems == []
        assert actual["view"]["cursor"] == expected["view"]["cursor"]
        assert actual["view"]["holdings"] == expected["view"]["holdings"]
        assert actual["view"]["pending_instructions"] == expected["view"]["pending_instructions"]
        assert actual["view"]["history"] == expected["view"]["history"]
        assert actual["history"] == expected["history"]
        assert actual["balances"] == expected["balances"]
        assert actual["alert_ids"] == expected["alert_ids"]
        assert actual["alerts"] == expected["alerts"]
    finally:
        reference.dispose()
        crashed.dispose()
