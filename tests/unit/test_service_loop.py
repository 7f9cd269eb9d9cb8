"""The service loop of ``sluice serve`` and the embedded world it runs on.

How: the loop's parts are the real ingestion, withdrawal worker and deposit worker of an
in-process :class:`~sluice.sandbox.Sandbox` (embedded ledger in memory, SQLite DB), run on the
loop's own thread; the tests drive the world from outside as customers would (a deposit on the
ledger, a withdrawal request through ``services.withdrawals``) and wait with bounded polls for
what the loop must do. Failing, stuck and paused parts are small stand-ins next to the real ones.
:func:`~sluice.server.prepare_embedded_world` is checked on a ledger file under ``tmp_path``:
created once with the sandbox's world, then reused with the same treasury. :func:`build_service`
is checked for what it refuses and for the parts and readiness of a service on the defaults.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import structlog.testing

from sluice import bootstrap
from sluice.config import DeploymentConfig, LedgerConfig
from sluice.domain.errors import InvalidInputError
from sluice.domain.journal import customer_account_name
from sluice.ledger.local import EmbeddedLedger
from sluice.sandbox import Sandbox
from sluice.server import (
    TREASURY_KEY,
    FollowedClock,
    Outcome,
    Part,
    ServiceLoop,
    build_service,
    deposit_part,
    ingestion_part,
    pause_reason,
    prepare_embedded_world,
    withdrawal_part,
)
from sluice.services.audit import list_audit_records
from sluice.services.books import customer_balances
from sluice.services.controls import pause, resume
from sluice.services.reference import list_instruments
from sluice.services.withdrawals import list_withdrawals, request_withdrawal

WAIT_S = 20.0


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def counting(calls: list[int]) -> Callable[[], None]:
    """A part that only counts its runs."""

    def run() -> None:
        calls.append(1)

    return run


@pytest.fixture
def sandbox(sqlite_url: str) -> Iterator[Sandbox]:
    sb = Sandbox.create(sqlite_url, customers=2)
    try:
        yield sb
    finally:
        sb.close()


def sandbox_loop(
    sb: Sandbox, *, interval_s: float = 0.02, extra: list[Part] | None = None
) -> ServiceLoop:
    stopping = threading.Event()
    parts = [
        ingestion_part(sb.ingestion(), stopping),
        withdrawal_part(sb.withdrawal_worker()),
        deposit_part(sb.deposit_worker()),
        *(extra or []),
    ]
    return ServiceLoop(
        parts, interval_s=interval_s, paused=pause_reason(sb.database.uow), stopping=stopping
    )


def balance(sb: Sandbox, customer: str) -> Decimal:
    accounts = customer_balances(sb.database.uow)
    return accounts.get(customer_account_name(customer), {}).get(sb.coin.key(), Decimal(0))


def test_a_requested_withdrawal_is_submitted_and_completed_by_the_loop(sandbox: Sandbox) -> None:
    loop = sandbox_loop(sandbox).start()
    try:
        sandbox.deposit("cust-0", "100")
        wait_for(lambda: balance(sandbox, "cust-0") == Decimal(100), "the deposit to be credited")
        requested = request_withdrawal(
            sandbox.database.uow,
            treasury=sandbox.treasury,
            customer_id="cust-0",
            receiver=sandbox.customers["cust-0"],
            instrument=sandbox.coin,
            amount="40",
            idempotency_key="w-1",
            clock=sandbox.clock,
            settings=sandbox.withdrawal_settings,
            compliance=sandbox.compliance,
        )
        assert requested.status != "completed"

        def status() -> str:
            (record,) = [w for w in list_withdrawals(sandbox.database.uow) if w.id == requested.id]
            return record.status

        wait_for(lambda: status() == "completed", "the withdrawal to complete")
        assert balance(sandbox, "cust-0") == Decimal(60)
        assert loop.status()["withdrawals"].last_error is None
        assert loop.status()["ingestion"].runs >= 2
    finally:
        assert loop.stop(timeout_s=10)


def test_stop_after_a_round_returns_promptly_and_closes_once(sandbox: Sandbox) -> None:
    closed: list[str] = []
    stopping = threading.Event()
    loop = ServiceLoop(
        [ingestion_part(sandbox.ingestion(), stopping)],
        interval_s=60.0,  # asleep between rounds: stop must wake it
        stopping=stopping,
        close=lambda: closed.append("closed"),
    ).start()
    wait_for(lambda: loop.rounds >= 1, "a first round")
    started = time.monotonic()
    assert loop.stop(timeout_s=10)
    assert time.monotonic() - started < 2.0
    assert not loop.alive
    assert loop.stop(timeout_s=1)  # stopping twice closes once
    assert closed == ["closed"]


def test_stop_lets_the_round_in_progress_finish_before_closing(sandbox: Sandbox) -> None:
    entered, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def slow() -> None:
        entered.set()
        release.wait(10)
        finished.append("slow part finished")

    loop = ServiceLoop(
        [Part("slow", slow)], interval_s=0.01, close=lambda: finished.append("closed")
    ).start()
    assert entered.wait(10)
    stopper = threading.Thread(target=loop.stop, kwargs={"timeout_s": 10})
    stopper.start()
    wait_for(loop.stopping.is_set, "stop() to be called")
    assert finished == []  # stop() waits for the round: nothing is closed under it
    assert stopper.is_alive()
    release.set()
    stopper.join(10)
    assert finished == ["slow part finished", "closed"]


def test_an_exception_in_one_part_is_recorded_and_the_others_keep_running() -> None:
    calls: list[int] = []

    def broken() -> None:
        raise InvalidInputError("the node answered nonsense")

    loop = ServiceLoop(
        [
            Part("first", counting(calls)),
            Part("broken", broken),
            Part("last", lambda: Outcome(busy=True, counts={"n": len(calls)})),
        ],
        interval_s=0.01,
    ).start()
    try:
        wait_for(lambda: loop.rounds >= 3, "three rounds")
        status = loop.status()
        assert status["broken"].failures_in_a_row >= 3
        assert status["broken"].last_error == "InvalidInputError: the node answered nonsense"
        assert status["broken"].last_success_at is None
        assert status["last"].runs >= 3
        assert status["last"].last_error is None
        ready, detail = loop.readiness()
        assert ready
        assert "failing: broken: InvalidInputError: the node answered nonsense" in detail
    finally:
        loop.stop(timeout_s=5)


def test_a_part_that_recovers_clears_its_failure_count() -> None:
    failures = iter([True, True, False])

    def flaky() -> None:
        if next(failures, False):
            raise InvalidInputError("not yet")

    loop = ServiceLoop([Part("flaky", flaky)], interval_s=0.01)
    for _ in range(3):
        loop.run_round()
    status = loop.status()["flaky"]
    assert (status.runs, status.failures_in_a_row) == (3, 0)
    assert status.last_error == "InvalidInputError: not yet"  # kept for the operator
    assert status.last_success_at is not None


def test_a_failure_that_repeats_is_logged_in_full_once_then_at_growing_intervals() -> None:
    def broken() -> None:
        raise InvalidInputError("participant unreachable")

    loop = ServiceLoop([Part("broken", broken)], interval_s=0.01)
    with structlog.testing.capture_logs() as logs:
        for _ in range(9):
            loop.run_round()
    failed = [e for e in logs if e["event"] == "service loop part failed"]
    still = [
        e["failures_in_a_row"] for e in logs if e["event"] == "service loop part still failing"
    ]
    assert len(failed) == 1
    assert failed[0]["exc_info"] is True
    assert still == [2, 4, 8]
    assert loop.status()["broken"].failures_in_a_row == 9


def test_readiness_follows_the_thread_and_goes_false_when_stopped() -> None:
    loop = ServiceLoop([Part("idle", lambda: None)], interval_s=0.01)
    assert loop.readiness() == (False, "not started")
    loop.start()
    wait_for(lambda: loop.readiness()[0], "the loop to be ready")
    assert loop.stop(timeout_s=5)
    assert loop.readiness() == (False, "stopped")


def test_readiness_goes_false_while_a_round_is_stuck_and_back_when_it_ends() -> None:
    stuck, release = threading.Event(), threading.Event()

    def part() -> None:
        if stuck.is_set():
            release.wait(10)

    loop = ServiceLoop([Part("part", part)], interval_s=0.01, stale_after_s=0.2).start()
    try:
        wait_for(lambda: loop.readiness()[0], "the loop to be ready")
        stuck.set()
        wait_for(lambda: not loop.readiness()[0], "readiness to go stale")
        assert "last round finished" in loop.readiness()[1]
        stuck.clear()
        release.set()
        wait_for(lambda: loop.readiness()[0], "readiness to come back")
    finally:
        release.set()
        loop.stop(timeout_s=5)


def test_value_moving_parts_are_skipped_while_paused_and_run_after_resume(
    sandbox: Sandbox,
) -> None:
    moved: list[int] = []
    read: list[int] = []
    loop = ServiceLoop(
        [
            Part("reads", counting(read)),
            Part("moves", counting(moved), moves_value=True),
        ],
        interval_s=0.01,
        paused=pause_reason(sandbox.database.uow),
    )
    now = datetime.now(UTC)
    pause(sandbox.database.uow, mode="emergency", reason="drill", actor="ops", at=now)
    loop.run_round()
    loop.run_round()
    assert (len(read), len(moved)) == (2, 0)
    assert loop.status()["moves"].skipped is not None
    assert "emergency" in (loop.status()["moves"].skipped or "")
    resume(sandbox.database.uow, reason="drill over", actor="ops", at=now)
    loop.run_round()
    assert (len(read), len(moved)) == (3, 1)
    assert loop.status()["moves"].skipped is None


def test_an_unreadable_pause_switch_stops_value_moving_parts() -> None:
    moved: list[int] = []

    def unreadable() -> str | None:
        raise InvalidInputError("database is gone")

    loop = ServiceLoop(
        [Part("moves", counting(moved), moves_value=True)],
        interval_s=0.01,
        paused=unreadable,
    )
    loop.run_round()
    assert moved == []
    assert "unreadable" in (loop.status()["moves"].skipped or "")


def test_part_names_must_differ_and_the_interval_be_positive() -> None:
    with pytest.raises(InvalidInputError):
        ServiceLoop([Part("a", lambda: None), Part("a", lambda: None)])
    with pytest.raises(InvalidInputError):
        ServiceLoop([], interval_s=0)


# --- the embedded world ------------------------------------------------------------------------


def test_a_new_embedded_world_is_created_onboarded_and_its_treasury_recorded(
    tmp_path: Path,
) -> None:
    database = bootstrap.database(f"sqlite:///{tmp_path / 'sluice.db'}")
    path = tmp_path / "data" / "ledger.db"
    try:
        world = prepare_embedded_world(path, database)
        try:
            assert world.created
            assert path.exists()
            assert not path.with_name("ledger.db.new").exists()
            assert world.treasury.startswith("treasury::")
            assert world.ledger.node_of(world.treasury) == "exchange"
            ids = {(r.instrument.id, r.transfer_kinds) for r in list_instruments(database.uow)}
            assert ids == {("Amulet", ("direct",)), ("USDX", ("offer",))}
            coin = next(
                r.instrument for r in list_instruments(database.uow) if r.instrument.id == "Amulet"
            )
            assert world.ledger.preapproval_id(world.treasury, coin) is not None
            # The world starts at the wall clock's time, not at the embedded default.
            assert abs(world.ledger.time() - datetime.now(UTC)) < timedelta(minutes=5)
        finally:
            world.ledger.close()
        with database.uow() as uow:
            assert uow.withdrawals.control(TREASURY_KEY) == world.treasury
        operations = [r.entry.operation for r in list_audit_records(database.uow)]
        assert operations.count("treasury_recorded") == 1

        again = prepare_embedded_world(path, database)
        again.ledger.close()
        assert not again.created
        assert again.treasury == world.treasury
        operations = [r.entry.operation for r in list_audit_records(database.uow)]
        assert operations.count("treasury_recorded") == 1
    finally:
        database.dispose()


def test_an_existing_ledger_with_a_fresh_database_finds_and_records_its_treasury(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.db"
    first = bootstrap.database(f"sqlite:///{tmp_path / 'first.db'}")
    world = prepare_embedded_world(path, first)
    world.ledger.close()
    first.dispose()
    fresh = bootstrap.database(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        again = prepare_embedded_world(path, fresh)
        again.ledger.close()
        assert again.treasury == world.treasury
        with fresh.uow() as uow:
            assert uow.withdrawals.control(TREASURY_KEY) == world.treasury
    finally:
        fresh.dispose()


def test_a_named_ledger_file_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    database = bootstrap.database(f"sqlite:///{tmp_path / 'sluice.db'}")
    try:
        with pytest.raises(InvalidInputError, match="no embedded ledger"):
            prepare_embedded_world(tmp_path / "missing.db", database, create=False)
        assert not (tmp_path / "missing.db").exists()
    finally:
        database.dispose()


def test_a_configured_treasury_must_be_a_party_on_the_node(tmp_path: Path) -> None:
    database = bootstrap.database(f"sqlite:///{tmp_path / 'sluice.db'}")
    path = tmp_path / "ledger.db"
    try:
        prepare_embedded_world(path, database).ledger.close()
        with pytest.raises(InvalidInputError, match="not a party"):
            prepare_embedded_world(path, database, treasury="someone::1220" + "ab" * 32)
    finally:
        database.dispose()


def test_the_followed_clock_moves_the_ledger_to_the_wall_clock_and_never_back() -> None:
    ledger = EmbeddedLedger.open(None)
    wall = [datetime(2030, 1, 1, tzinfo=UTC)]
    clock = FollowedClock(ledger, lambda: wall[0])
    assert ledger.time() < wall[0]
    clock.follow()
    assert ledger.time() == wall[0]
    wall[0] -= timedelta(hours=1)  # the wall clock stepped back: the ledger's time stands
    clock.follow()
    assert ledger.time() == datetime(2030, 1, 1, tzinfo=UTC)
    assert clock() == datetime(2030, 1, 1, tzinfo=UTC)


def test_the_followed_clock_moves_the_ledger_only_once_it_is_a_step_behind() -> None:
    ledger = EmbeddedLedger.open(None)
    start = ledger.time()
    wall = [start + timedelta(seconds=1)]
    clock = FollowedClock(ledger, lambda: wall[0], step_s=2.0)
    clock.follow()
    assert ledger.time() == start  # less than a step behind: not journaled
    assert clock() == wall[0]  # readers still see the wall clock
    wall[0] = start + timedelta(seconds=3)
    clock.follow()
    assert ledger.time() == wall[0]


# --- wiring ------------------------------------------------------------------------------------


def test_a_service_on_a_participant_needs_a_configured_treasury(tmp_path: Path) -> None:
    config = DeploymentConfig(
        data_dir=tmp_path, ledger=LedgerConfig(kind="canton", participant_url="http://127.0.0.1:9")
    )
    with pytest.raises(InvalidInputError, match="no treasury party"):
        build_service(config)


def test_a_service_on_a_named_ledger_file_does_not_create_it(tmp_path: Path) -> None:
    config = DeploymentConfig(data_dir=tmp_path, ledger=LedgerConfig(path=tmp_path / "named.db"))
    with pytest.raises(InvalidInputError, match="no embedded ledger"):
        build_service(config)
    assert not (tmp_path / "named.db").exists()


def test_a_service_on_the_defaults_is_ready_once_its_loop_has_run_and_not_after_closing(
    tmp_path: Path,
) -> None:
    service = build_service(DeploymentConfig(data_dir=tmp_path / "data"), interval_s=0.05)
    try:
        assert service.world is not None and service.world.created
        assert [part.name for part in service.loop.parts] == [
            "clock",
            "ingestion",
            "withdrawals",
            "deposits",
            "flush",
            "approvals",
        ]
        probe = service.context.readiness["service_loop"]
        assert probe()[0] is False
        service.loop.start()
        wait_for(lambda: probe()[0], "the service loop to be ready")
        assert service.context.executors  # the approvals part runs the API's executors
        assert not service.has_api_keys()
    finally:
        assert service.close(timeout_s=10)
    assert probe() == (False, "stopped")
