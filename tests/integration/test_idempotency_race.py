"""Two requests with the same idempotency key at the same moment, on PostgreSQL, make exactly one
withdrawal: one record, one debit, and both callers get that same withdrawal.

How: two threads, released together by a ``threading.Barrier``, each call ``request_withdrawal``
(each call is its own unit of work on its own connection) with the same customer, key and
parameters; then the same through the HTTP API (uvicorn on a local port, one ``httpx`` client per
thread). Every round uses a new key and is judged on its own: no thread raised (a second insert
would fail on the unique key), both got the same withdrawal, the DB holds one withdrawal and one
``withdrawal_requested`` journal transaction for it, and the customer's balance went down once.
Over HTTP exactly one answer is 201 and the other is a replay's (200 with ``Idempotent-Replayed:
true``), also when both passed the route's own look-up before either had written.

That the two calls really overlapped is measured, not assumed:

* In *gated* rounds a third session holds ``LOCK TABLE withdrawals IN EXCLUSIVE MODE`` (plain reads
  pass, locking reads and inserts wait) while the threads are released. The test waits until
  ``pg_stat_activity`` shows both callers' sessions waiting on a lock, then commits the gate: both
  were inside their transactions before either could commit, and the second to get the lock had
  to find the first one's withdrawal.
* In *free* rounds nothing steers them. Each thread takes a timestamp when the barrier releases it
  and when its call returns; the calls overlapped when both had started before either returned.
  Most free rounds must overlap (the machine may be busy enough to serialise a few).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from sluice.domain.journal import IN_FLIGHT, AccountRef
from sluice.domain.withdrawals import Withdrawal, withdrawal_id
from sluice.services.books import check_invariant
from sluice.store import tables
from tests.api_support import ApiWorld, api_world, live_server

pytestmark = pytest.mark.postgres

FREE_ROUNDS = 20
GATED_ROUNDS = 5
HTTP_FREE_ROUNDS = 5
HTTP_GATED_ROUNDS = 3
FUNDS = Decimal(1_000)
AMOUNT = Decimal(7)
CUSTOMER = "cust-0"
# Bounds on every wait, so a lost wake-up fails the test instead of hanging it.
CALL_TIMEOUT_S = 60.0
WAITERS_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.005


@dataclass(frozen=True, slots=True)
class Call:
    """One caller's side of a race: when the barrier let it go, when its answer came, what."""

    entered: float
    left: float
    answer: object  # whatever the request returned, or the exception it raised


def overlapped(calls: list[Call]) -> bool:
    """Both calls had started before either returned."""
    return max(call.entered for call in calls) < min(call.left for call in calls)


def race(
    request: Callable[[], object], *, before_join: Callable[[], None] | None = None
) -> list[Call]:
    """Run ``request`` in two threads released together; ``before_join`` runs on this thread
    once both are on their way (the gated rounds release the gate there)."""
    barrier = threading.Barrier(2)
    calls: list[Call | None] = [None, None]

    def run(n: int) -> None:
        barrier.wait(timeout=CALL_TIMEOUT_S)
        entered = time.monotonic()
        try:
            answer: object = request()
        except BaseException as exc:  # judged by the main thread
            answer = exc
        calls[n] = Call(entered, time.monotonic(), answer)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    try:
        if before_join is not None:
            before_join()
    finally:
        for thread in threads:
            thread.join(timeout=CALL_TIMEOUT_S)
    assert not any(thread.is_alive() for thread in threads), "a request never returned"
    done = [call for call in calls if call is not None]
    assert len(done) == 2
    return done


class Gate:
    """A session holding an exclusive lock on the withdrawals table, and a way to see who waits."""

    def __init__(self, url: str) -> None:
        self._engine = sa.create_engine(url)

    @contextmanager
    def closed(self) -> Iterator[Callable[[], None]]:
        """Holds the lock; yields ``release``, which waits until two other sessions are waiting
        on a lock and then commits (releasing it). Released at the end in any case."""
        with self._engine.connect() as holder:
            holder.exec_driver_sql(f"LOCK TABLE {tables.withdrawals.name} IN EXCLUSIVE MODE")

            def release() -> None:
                waiting = self._wait_for_waiters(2)
                holder.commit()
                assert waiting >= 2, f"only {waiting} session(s) waited for the gate"

            try:
                yield release
            finally:
                holder.rollback()

    def _wait_for_waiters(self, count: int) -> int:
        query = sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        deadline = time.monotonic() + WAITERS_TIMEOUT_S
        with self._engine.connect() as observer:
            while True:
                waiting = int(observer.execute(query).scalar_one())
                observer.rollback()  # a fresh snapshot of pg_stat_activity each time
                if waiting >= count or time.monotonic() > deadline:
                    return waiting
                time.sleep(POLL_INTERVAL_S)

    def dispose(self) -> None:
        self._engine.dispose()


@pytest.fixture
def world(postgres_url: str) -> Iterator[ApiWorld]:
    built = api_world(postgres_url, customers=2)
    built.sandbox.deposit(CUSTOMER, FUNDS)
    built.sandbox.ingest()
    yield built
    built.sandbox.close()


@pytest.fixture
def gate(postgres_url: str) -> Iterator[Gate]:
    made = Gate(postgres_url)
    yield made
    made.dispose()


def recorded(world: ApiWorld, key: str) -> tuple[int, int]:
    """How many withdrawals and ``withdrawal_requested`` journal transactions the DB holds for
    the customer's key."""
    wid = withdrawal_id(CUSTOMER, key)
    withdrawals, journal = tables.withdrawals, tables.journal_transactions
    with world.sandbox.database.engine.connect() as connection:
        records = connection.execute(
            sa.select(sa.func.count()).where(withdrawals.c.id == wid)
        ).scalar_one()
        debits = connection.execute(
            sa.select(sa.func.count()).where(
                journal.c.kind == "withdrawal_requested",
                journal.c.description.like(f"withdrawal {wid} %"),
            )
        ).scalar_one()
    return int(records), int(debits)


def balances(world: ApiWorld) -> tuple[Decimal, Decimal]:
    """The customer's balance and the in-flight account, in the sandbox's coin."""
    coin = world.sandbox.coin
    with world.sandbox.database.uow() as uow:
        customer = uow.accounts.customer_balances(CUSTOMER)[coin]
        in_flight = uow.withdrawals.balance(AccountRef(IN_FLIGHT, coin))
    return customer, in_flight


def judge_round(world: ApiWorld, key: str, done: int) -> None:
    """One withdrawal and one debit for ``key``; ``done`` withdrawals made so far in all."""
    assert recorded(world, key) == (1, 1), key
    customer, in_flight = balances(world)
    assert customer == FUNDS - AMOUNT * done
    assert in_flight == AMOUNT * done


def service_request(world: ApiWorld, key: str) -> Callable[[], object]:
    def request() -> object:
        return world.sandbox.withdraw(CUSTOMER, AMOUNT, key=key)

    return request


def test_same_key_requested_twice_at_once_through_the_service_makes_one_withdrawal(
    world: ApiWorld, gate: Gate
) -> None:
    free_overlaps = 0
    for round_number in range(GATED_ROUNDS + FREE_ROUNDS):
        key = f"race-{round_number}"
        gated = round_number < GATED_ROUNDS
        if gated:
            with gate.closed() as release:
                calls = race(service_request(world, key), before_join=release)
            assert overlapped(calls), calls
        else:
            calls = race(service_request(world, key))
            free_overlaps += overlapped(calls)
        answers = [call.answer for call in calls]
        assert all(isinstance(answer, Withdrawal) for answer in answers), answers
        first, second = answers
        assert first == second
        assert isinstance(first, Withdrawal) and first.id == withdrawal_id(CUSTOMER, key)
        judge_round(world, key, round_number + 1)
    assert free_overlaps >= FREE_ROUNDS * 3 // 4, f"{free_overlaps} of {FREE_ROUNDS} overlapped"
    assert check_invariant(world.sandbox.database.uow).problems == []


def test_same_key_posted_twice_at_once_over_http_makes_one_withdrawal(
    world: ApiWorld, gate: Gate
) -> None:
    body = {
        "receiver": world.sandbox.customers[CUSTOMER],
        "instrument": {"admin": world.sandbox.coin.admin, "id": world.sandbox.coin.id},
        "amount": str(AMOUNT),
    }
    free_overlaps = 0
    with live_server(world.app, workers_max=8) as base:

        def post(key: str) -> Callable[[], object]:
            def request() -> object:
                with httpx.Client(base_url=base, timeout=CALL_TIMEOUT_S) as client:
                    return client.post(
                        f"/v1/customers/{CUSTOMER}/withdrawals",
                        json=body,
                        headers={**world.headers("user"), "Idempotency-Key": key},
                    )

            return request

        for round_number in range(HTTP_GATED_ROUNDS + HTTP_FREE_ROUNDS):
            key = f"http-race-{round_number}"
            if round_number < HTTP_GATED_ROUNDS:
                with gate.closed() as release:
                    calls = race(post(key), before_join=release)
                assert overlapped(calls), calls
            else:
                calls = race(post(key))
                free_overlaps += overlapped(calls)
            answers: list[Any] = [call.answer for call in calls]
            assert all(isinstance(answer, httpx.Response) for answer in answers), answers
            # The one that made it answers 201; the other answers exactly as a replay does,
            # whether it found the withdrawal before calling the service or inside it.
            created, replayed = sorted(answers, key=lambda answer: -answer.status_code)
            assert (created.status_code, replayed.status_code) == (201, 200), [
                answer.text for answer in answers
            ]
            assert "Idempotent-Replayed" not in created.headers
            assert replayed.headers.get("Idempotent-Replayed") == "true"
            ids = {answer.json()["id"] for answer in answers}
            assert ids == {withdrawal_id(CUSTOMER, key)}
            assert answers[0].json() == answers[1].json()
            judge_round(world, key, round_number + 1)
    assert free_overlaps >= HTTP_FREE_ROUNDS // 2, f"{free_overlaps} of {HTTP_FREE_ROUNDS}"
    assert check_invariant(world.sandbox.database.uow).problems == []
