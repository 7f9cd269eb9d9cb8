"""The ingestion writer's lock (port ``WriterLock``) on every engine, and the standby built on it.

How: the contract tests take two locks for the same (party, node) in this process — on
PostgreSQL two sessions of their own, on SQLite two open files of the same lock file, which
``flock`` treats as two holders — and check that one excludes the other, that the loser can name
the holder, and that a lock whose session ended (``pg_terminate_backend``) or whose file was
replaced is no longer held, so a fenced unit of work refuses to commit. The standby services are
driven with a ``stop`` that counts polls (no sleeping). The service loop's ingestion part runs
on a sandbox while a second lock stands for another ``sluice serve``: it ingests nothing while
that one holds the lock (the workers still run), logs who holds it, and takes over once it is
released. Killing a real writer process is in ``tests/e2e/test_standby_ingester.py``.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog.testing

from sluice import bootstrap
from sluice.domain.journal import customer_account_name
from sluice.ports import WriterLock
from sluice.sandbox import Sandbox
from sluice.server import IngestionStandby, Part, ServiceLoop, ingestion_part
from sluice.services.books import customer_balances
from sluice.services.ingestion import Ingestion, IngestionProgress, IngestionSettings
from sluice.services.standby import (
    IngestionLockHeldError,
    IngestionLockLostError,
    fenced,
    run_as_writer,
    take_lock,
)
from sluice.store.writer_lock import (
    FileWriterLock,
    NoWriterLock,
    PgWriterLock,
    lock_file_path,
    lock_key,
    writer_lock,
)

# A party of this test run alone: advisory locks are shared by every session on the database, so
# another test run on the same PostgreSQL must not hold this run's lock.
PARTY = f"treasury::1220{os.getpid():08x}"
NODE = "exchange"
CONNECTION = f"{PARTY}@{NODE}"
ME = f"pid {os.getpid()} on {socket.gethostname()}"


@pytest.fixture
def database(database_url: str) -> Iterator[bootstrap.Database]:
    db = bootstrap.database(database_url)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def locks(database: bootstrap.Database) -> Iterator[Callable[[str], WriterLock]]:
    """Makes locks on the DB (each one a separate holder); releases them all at the end."""
    made: list[WriterLock] = []

    def make(connection: str = CONNECTION) -> WriterLock:
        lock = database.writer_lock(connection)
        made.append(lock)
        return lock

    try:
        yield make
    finally:
        for lock in made:
            lock.release()


def break_session(database: bootstrap.Database, lock: WriterLock) -> None:
    """What a database restart does to the lock's session (PostgreSQL), or replacing the lock
    file does to a file lock."""
    if isinstance(lock, PgWriterLock):
        with database.engine.connect() as connection:
            ended = connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = :name AND datname = current_database()"
                ),
                {"name": lock.application_name},
            ).all()
        assert ended and all(row[0] for row in ended)
    else:
        assert isinstance(lock, FileWriterLock)
        lock.path.unlink()


# --- the port's contract -----------------------------------------------------------------------


def test_one_holder_at_a_time_and_the_other_can_name_it(
    locks: Callable[[str], WriterLock],
) -> None:
    writer, standby = locks(CONNECTION), locks(CONNECTION)
    assert writer.try_acquire()
    assert writer.try_acquire()  # taking a held lock again is a no-op
    assert writer.held()
    assert not standby.try_acquire()
    assert not standby.held()
    assert standby.holder() == ME
    writer.release()
    assert not writer.held()
    assert standby.try_acquire()
    assert not writer.try_acquire()


def test_locks_of_different_pairs_do_not_exclude_each_other(
    locks: Callable[[str], WriterLock],
) -> None:
    assert locks(CONNECTION).try_acquire()
    assert locks(f"{PARTY}@wallets").try_acquire()
    assert locks(f"other::1220bb@{NODE}").try_acquire()


def test_a_lock_whose_session_broke_is_no_longer_held_and_can_be_taken_again(
    database: bootstrap.Database, locks: Callable[[str], WriterLock]
) -> None:
    writer, standby = locks(CONNECTION), locks(CONNECTION)
    assert writer.try_acquire()
    break_session(database, writer)
    assert not writer.held()
    assert standby.try_acquire()
    assert not writer.try_acquire()


def test_a_fenced_unit_of_work_commits_only_while_the_lock_is_held(
    database: bootstrap.Database, locks: Callable[[str], WriterLock]
) -> None:
    writer = locks(CONNECTION)
    assert writer.try_acquire()
    uow = fenced(database.uow, writer)
    with uow() as work:
        work.withdrawals.set_control("standby-test", "first")
        work.commit()
    break_session(database, writer)
    with uow() as work, pytest.raises(IngestionLockLostError, match="not committed"):
        work.withdrawals.set_control("standby-test", "second")
        work.commit()
    with database.uow() as work:
        assert work.withdrawals.control("standby-test") == "first"


# --- which lock for which database -------------------------------------------------------------


def test_the_lock_follows_the_engine(tmp_path: Path) -> None:
    memory = bootstrap.database("sqlite://")
    on_file = bootstrap.database(f"sqlite:///{tmp_path / 'books.db'}")
    try:
        assert isinstance(memory.writer_lock(CONNECTION), NoWriterLock)
        lock = on_file.writer_lock(CONNECTION)
        assert isinstance(lock, FileWriterLock)
        assert lock.path.parent == tmp_path.resolve()
        assert lock.path.name.startswith("books.db.ingestion-")
        assert lock.path == lock_file_path(tmp_path.resolve() / "books.db", CONNECTION)
        assert lock_file_path(tmp_path / "books.db", f"{PARTY}@wallets") != lock.path
    finally:
        memory.dispose()
        on_file.dispose()


def test_the_file_lock_holder_writes_its_pid_over_the_previous_holders(tmp_path: Path) -> None:
    lock = FileWriterLock(tmp_path / "x.lock")
    assert lock.holder() is None
    lock.path.write_text(f"pid=4000000 host={'a-long-host-name' * 4}\n")  # a dead holder's
    assert lock.try_acquire()
    try:
        assert lock.path.read_text() == f"pid={os.getpid()} host={socket.gethostname()}\n"
        assert lock.holder() == ME
    finally:
        lock.release()


@pytest.mark.postgres
def test_the_advisory_lock_lives_on_a_named_session_outside_the_pool(postgres_url: str) -> None:
    database = bootstrap.database(postgres_url)
    lock = database.writer_lock(CONNECTION)
    try:
        assert isinstance(lock, PgWriterLock)
        assert lock.try_acquire()
        high, low = (lock_key(CONNECTION) >> 32) & 0xFFFFFFFF, lock_key(CONNECTION) & 0xFFFFFFFF
        with database.engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT a.application_name, a.state FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                    "AND l.classid::text::bigint = :high AND l.objid::text::bigint = :low"
                ),
                {"high": high, "low": low},
            ).all()
        # Held by its own idle session (no open transaction), named after this process.
        assert rows == [
            (f"sluice-ingestion pid={os.getpid()} host={socket.gethostname()}"[:63], "idle")
        ]
    finally:
        lock.release()
        database.dispose()


def test_the_lock_key_is_stable() -> None:
    assert lock_key(CONNECTION) == lock_key(CONNECTION)
    assert lock_key(CONNECTION) != lock_key(f"{PARTY}@wallets")
    assert lock_key("treasury::1220aa@exchange") == -8792618042084496426


# --- waiting as a standby ----------------------------------------------------------------------


def stop_after(polls: int) -> Callable[[], bool]:
    count = [0]

    def stop() -> bool:
        count[0] += 1
        return count[0] > polls

    return stop


def test_a_standby_waits_names_the_holder_once_and_takes_over_when_it_is_released(
    locks: Callable[[str], WriterLock],
) -> None:
    writer, standby = locks(CONNECTION), locks(CONNECTION)
    assert writer.try_acquire()
    heard: list[str] = []
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 3:
            writer.release()  # the writer goes away while the standby waits

    assert take_lock(standby, party=PARTY, node=NODE, notify=heard.append, sleep=nap)
    assert standby.held()
    assert naps == [0.5, 0.5, 0.5]
    assert heard == [
        f"waiting as standby for the ingestion lock of {PARTY} on {NODE} (held by {ME})",
        f"took over ingestion of {PARTY} on {NODE}",
    ]


def test_a_standby_that_is_stopped_while_waiting_holds_nothing(
    database: bootstrap.Database, locks: Callable[[str], WriterLock]
) -> None:
    writer, standby = locks(CONNECTION), locks(CONNECTION)
    assert writer.try_acquire()
    ran: list[str] = []
    result = run_as_writer(
        standby,
        database.uow,
        lambda _uow: ran.append("ran"),
        party=PARTY,
        node=NODE,
        stop=stop_after(3),
        sleep=lambda _s: None,
    )
    assert result is None
    assert ran == []
    assert not standby.held()
    assert writer.held()


def test_without_waiting_a_held_lock_is_an_error_naming_its_holder(
    locks: Callable[[str], WriterLock],
) -> None:
    assert locks(CONNECTION).try_acquire()
    with pytest.raises(IngestionLockHeldError, match=f"held by {ME}; leave out --no-wait"):
        take_lock(locks(CONNECTION), party=PARTY, node=NODE, wait=False)


def test_a_writer_that_loses_its_lock_waits_again_and_goes_on_once_it_holds_it(
    database: bootstrap.Database, locks: Callable[[str], WriterLock]
) -> None:
    writer, intruder = locks(CONNECTION), locks(CONNECTION)
    heard: list[str] = []
    attempts: list[str] = []

    def work(uow: Callable[[], object]) -> str:
        attempts.append("attempt")
        if len(attempts) == 1:
            break_session(database, writer)
            assert intruder.try_acquire()  # someone else holds it now
            with fenced(database.uow, writer)() as unit:
                unit.commit()  # refused: raises IngestionLockLostError
        return "done"

    def nap(_seconds: float) -> None:
        intruder.release()

    assert (
        run_as_writer(
            writer, database.uow, work, party=PARTY, node=NODE, notify=heard.append, sleep=nap
        )
        == "done"
    )
    assert attempts == ["attempt", "attempt"]
    assert heard[0].startswith("the ingestion lock was lost")
    assert heard[0].endswith("waiting as standby again")
    assert heard[1].startswith(f"waiting as standby for the ingestion lock of {PARTY} on {NODE}")
    assert heard[-1] == f"took over ingestion of {PARTY} on {NODE}"
    assert not writer.held()  # released when the work returned


# --- the service loop of a second `sluice serve` -----------------------------------------------


@pytest.fixture
def sandbox(database_url: str) -> Iterator[Sandbox]:
    sb = Sandbox.create(database_url, customers=1)
    try:
        yield sb
    finally:
        sb.close()


def test_a_standby_serve_ingests_nothing_until_the_other_writer_is_gone(
    sandbox: Sandbox,
) -> None:
    other_serve = writer_lock(sandbox.database.engine, sandbox.connection)
    mine = writer_lock(sandbox.database.engine, sandbox.connection)
    assert other_serve.try_acquire()
    standby = IngestionStandby(mine, sandbox.treasury, sandbox.node)
    ingestion = Ingestion(
        fenced(sandbox.database.uow, mine),
        sandbox.ledger_client(),
        sandbox.treasury,
        connection=sandbox.connection,
        compliance=sandbox.compliance,
    )
    workers: list[str] = []

    def worker_round() -> None:
        workers.append("round")

    stopping = threading.Event()
    loop = ServiceLoop(
        [ingestion_part(ingestion, stopping, standby), Part("workers", worker_round)],
        stopping=stopping,
    )
    sandbox.deposit("cust-0", "25")

    def credited() -> Decimal:
        balances = customer_balances(sandbox.database.uow)
        return balances.get(customer_account_name("cust-0"), {}).get(sandbox.coin.key(), Decimal(0))

    try:
        with structlog.testing.capture_logs() as logs:
            loop.run_round()
            loop.run_round()
            assert credited() == 0
            assert workers == ["round", "round"]  # the rest of the loop runs as usual
            assert not standby.holding
            other_serve.release()
            loop.run_round()
            assert standby.holding
            assert credited() == Decimal(25)
        events = [entry["event"] for entry in logs]
        waiting = (
            f"waiting as standby for the ingestion lock of {sandbox.treasury} on "
            f"{sandbox.node} (held by {ME})"
        )
        assert events.count(waiting) == 1  # said once, not every round
        assert f"took over ingestion of {sandbox.treasury} on {sandbox.node}" in events
        assert loop.status()["ingestion"].failures_in_a_row == 0
    finally:
        mine.release()
        other_serve.release()


def test_a_serve_that_lost_its_lock_mid_run_commits_nothing_more_and_takes_it_again_next_round(
    sandbox: Sandbox,
) -> None:
    mine = writer_lock(sandbox.database.engine, sandbox.connection)
    standby = IngestionStandby(mine, sandbox.treasury, sandbox.node)
    batches: list[int] = []

    def after_batch(_progress: IngestionProgress) -> None:
        batches.append(1)
        if len(batches) == 1:
            break_session(sandbox.database, mine)  # the database restarts after one batch

    ingestion = Ingestion(
        fenced(sandbox.database.uow, mine),
        sandbox.ledger_client(),
        sandbox.treasury,
        connection=sandbox.connection,
        settings=IngestionSettings(batch_size_max=1),
        on_batch=after_batch,
        compliance=sandbox.compliance,
    )
    for amount in ("1", "2", "3"):
        sandbox.deposit("cust-0", amount)
    end = sandbox.ledger_client().ledger_end()
    part = ingestion_part(ingestion, threading.Event(), standby)
    try:
        outcome = part.run()
        assert outcome is not None and len(outcome.problems) == 1
        assert "ingestion lock was lost" in outcome.problems[0]
        assert "waiting as standby again" in outcome.problems[0]
        assert not standby.holding
        assert batches == [1]
        with sandbox.database.uow() as work:
            stopped = work.ingestion.load_cursor(sandbox.connection)
        assert stopped is not None and stopped.offset < end  # only the first batch went in
        part.run()
        assert standby.holding
        with sandbox.database.uow() as work:
            finished = work.ingestion.load_cursor(sandbox.connection)
        assert finished is not None and finished.offset == end
    finally:
        mine.release()
