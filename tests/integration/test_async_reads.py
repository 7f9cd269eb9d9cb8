"""The API's asyncio reads on PostgreSQL (``store/async_reads``) and the balance endpoint's use
of them.

How: a :class:`~sluice.sandbox.Sandbox` on a fresh PostgreSQL database, funded through the real
entry points (ledger transfers, an offer the deposit worker accepts, ingestion). The reads run on
their own event loop (``asyncio.run``), as the application's lifespan opens them; faults are
made in PostgreSQL itself — the pool's connections terminated by ``pg_terminate_backend``, the
accounts table locked by another session — never by patching the pool.

Covers: balances read on the event loop equal the synchronous store's for every customer and
instrument, and an unknown customer reads empty; a connection killed between reads is replaced
and the read answered (it is tried once more); a read waiting longer than the pool's timeout for
a connection fails with code 40; the reads serve only on the loop that opened them; and over
HTTP the balance endpoint answers from the event loop when the lifespan opened the reads (the
worker-thread service is not called), an unknown customer still answers 404, and without the
lifespan (or on SQLite) the worker-thread path gives the same answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from decimal import Decimal

import pytest
import sqlalchemy as sa

from sluice.domain.errors import OperationTimeoutError
from sluice.sandbox import Sandbox
from sluice.services import accounts
from sluice.store.async_reads import PgAsyncReads
from tests.api_support import api_world
from tests.integration.test_withdrawals import fund

pytestmark = pytest.mark.postgres

D = Decimal


@pytest.fixture
def sb(postgres_url: str) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(postgres_url, customers=4)
    fund(sandbox, "cust-0", "100", "25.5")
    yield sandbox
    sandbox.close()


def _reads(sb: Sandbox, **kwargs: object) -> PgAsyncReads:
    return PgAsyncReads(sb.database.engine.url, **kwargs)  # type: ignore[arg-type]


def test_balances_read_on_the_event_loop_equal_the_store_s(sb: Sandbox) -> None:
    fund(sb, "cust-0", "30", instrument=sb.token)  # an offer, accepted by the deposit worker
    fund(sb, "cust-1", "7.25")
    customers = [*sb.customers, "nobody"]

    async def read_all() -> dict[str, dict[object, Decimal]]:
        reads = _reads(sb)
        await reads.open()
        try:
            return {c: dict(await reads.customer_balances(c)) for c in customers}
        finally:
            await reads.close()

    got = asyncio.run(read_all())
    assert got["cust-0"] == {sb.coin: D("125.5"), sb.token: D(30)}
    assert got["cust-1"] == {sb.coin: D("7.25")}
    assert got["cust-2"] == {} and got["nobody"] == {}
    for customer in sb.customers:
        assert got[customer] == accounts.customer_balances(sb.database.uow, customer)
    assert list(got["cust-0"]) == list(accounts.customer_balances(sb.database.uow, "cust-0"))


def _terminate_other_sessions(sb: Sandbox) -> int:
    with sb.database.engine.connect() as connection:
        killed = connection.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar_one()
    return int(killed)


def test_a_connection_killed_between_reads_is_replaced_and_the_read_answered(
    sb: Sandbox,
) -> None:
    async def scenario() -> tuple[dict[object, Decimal], int, dict[object, Decimal]]:
        reads = _reads(sb, min_size=1, max_size=1)
        await reads.open()
        try:
            before = dict(await reads.customer_balances("cust-0"))
            killed = await asyncio.to_thread(_terminate_other_sessions, sb)
            after = dict(await reads.customer_balances("cust-0"))
            return before, killed, after
        finally:
            await reads.close()

    before, killed, after = asyncio.run(scenario())
    assert killed >= 1  # the pool's only connection was among them
    assert before == after == {sb.coin: D("125.5")}


def test_a_read_waiting_past_the_pool_timeout_fails_with_code_40(sb: Sandbox) -> None:
    locked = threading.Event()
    release = threading.Event()

    def hold_the_accounts_table() -> None:
        with sb.database.engine.connect() as connection:
            connection.exec_driver_sql("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(30)
            connection.rollback()

    holder = threading.Thread(target=hold_the_accounts_table)
    holder.start()

    async def scenario() -> tuple[BaseException | None, dict[object, Decimal]]:
        reads = _reads(sb, min_size=1, max_size=1, timeout_s=0.3)
        await reads.open()
        try:
            assert await asyncio.to_thread(locked.wait, 10)
            blocked = asyncio.create_task(reads.customer_balances("cust-0"))
            await asyncio.sleep(0.1)  # the only connection now waits on the lock
            waiting = asyncio.create_task(reads.customer_balances("cust-0"))
            done = await asyncio.wait({waiting}, timeout=10)
            assert waiting in done[0]
            error = waiting.exception()
            release.set()
            return error, dict(await blocked)
        finally:
            release.set()
            await reads.close()

    try:
        error, first = asyncio.run(scenario())
    finally:
        release.set()
        holder.join(10)
    assert isinstance(error, OperationTimeoutError) and error.code == 40
    assert first == {sb.coin: D("125.5")}  # the one that held the connection got its answer


def test_the_reads_serve_only_on_the_loop_that_opened_them(sb: Sandbox) -> None:
    reads = _reads(sb)
    assert not reads.serving  # not open, and no loop running
    seen: dict[str, bool] = {}

    async def elsewhere() -> None:
        seen["other loop"] = reads.serving
        with pytest.raises(RuntimeError, match="not open on this event loop"):
            await reads.customer_balances("cust-0")

    async def scenario() -> None:
        await reads.open()
        try:
            seen["open"] = reads.serving
            await asyncio.to_thread(asyncio.run, elsewhere())
            with pytest.raises(RuntimeError, match="open already"):
                await reads.open()
        finally:
            await reads.close()
        seen["closed"] = reads.serving

    asyncio.run(scenario())
    assert seen == {"open": True, "other loop": False, "closed": False}


# --- over HTTP -----------------------------------------------------------------------------------


def test_the_balance_endpoint_answers_from_the_event_loop_when_the_lifespan_opened_the_reads(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = api_world(postgres_url)
    try:
        fund(world.sandbox, "cust-0", "40")
        headers = world.headers("user")
        expected = {
            "customer_id": "cust-0",
            "balances": [
                {
                    "instrument": {"admin": world.sandbox.coin.admin, "id": world.sandbox.coin.id},
                    "amount": "40.0000000000",
                }
            ],
        }
        # Without the lifespan (no `with`), the worker-thread service answers.
        answer = world.client().get("/v1/customers/cust-0/balances", headers=headers)
        assert answer.status_code == 200 and answer.json() == expected

        calls: list[str] = []
        thread_path = accounts.customer_balances

        def counted(uow: object, customer_id: str) -> object:
            calls.append(customer_id)
            return thread_path(uow, customer_id)  # type: ignore[arg-type]

        monkeypatch.setattr(accounts, "customer_balances", counted)
        with world.client() as client:  # runs the lifespan: the reads open on its loop
            assert world.context.reads is not None
            answer = client.get("/v1/customers/cust-0/balances", headers=headers)
            assert answer.status_code == 200 and answer.json() == expected
            assert calls == []  # answered on the event loop
            staff = world.headers("compliance_officer")
            missing = client.get("/v1/customers/nobody/balances", headers=staff)
            assert missing.status_code == 404 and missing.json()["code"] == 10
            empty = client.get("/v1/customers/cust-2/balances", headers=staff)
            assert empty.status_code == 200 and empty.json()["balances"] == []
            assert calls == ["nobody", "cust-2"]  # no balances: the service tells 404 from []
        assert not world.context.reads.serving  # closed with the lifespan
    finally:
        world.sandbox.close()
