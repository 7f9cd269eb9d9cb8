"""The API's hot reads on PostgreSQL without a worker thread: psycopg's asyncio pool.

The rest of the store is synchronous (SQLAlchemy), and the API runs it on worker threads. For a
read the API answers most often — a customer's balances — the hand-over to a thread, the GIL
traffic it brings and a transaction's ``BEGIN`` / ``ROLLBACK`` round trips cost more than the read
itself. :class:`PgAsyncReads` answers those reads on the event loop instead:

* **One statement, autocommit.** Each read is a single ``SELECT`` (one snapshot, so nothing is
  lost by not opening a transaction) sent on a pooled connection in autocommit: one round trip.
* **The same query as the synchronous store.** The statement is built by the repository's own
  query function (:func:`sluice.store.account_repository.balances_query`) and compiled once for
  psycopg, so both paths read the same rows in the same order.
* **No ping per read.** A connection broken since its last use (the server restarted, say) fails
  its statement; the pool discards it and the read is tried once more on another connection. A
  read is side-effect free, so trying it again is always safe.
* **Bounded waits.** Waiting for a free connection longer than ``timeout_s`` answers
  :class:`~sluice.domain.errors.OperationTimeoutError` (code 40).

The pool belongs to the event loop that opened it (the application's lifespan does); it is
closed on the same loop.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy import bindparam
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL

from sluice.domain.errors import OperationTimeoutError
from sluice.domain.journal import customer_account_name
from sluice.domain.ledger import InstrumentId
from sluice.store.account_repository import balances_query
from sluice.store.database import conninfo

POOL_MIN = 2
POOL_MAX = 10
TIMEOUT_S = 10.0
# How the pool's connections show in pg_stat_activity.
APPLICATION_NAME = "sluice-api-reads"


def _compiled_balances_sql() -> str:
    statement = balances_query(bindparam("account_name"))
    compiled = statement.compile(dialect=postgresql.psycopg.dialect())  # type: ignore[no-untyped-call]
    return str(compiled)


class PgAsyncReads:
    """:class:`sluice.ports.AsyncReads` on PostgreSQL."""

    def __init__(
        self,
        url: str | URL,
        *,
        min_size: int = POOL_MIN,
        max_size: int = POOL_MAX,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._conninfo = conninfo(url)
        self._min_size = min_size
        self._max_size = max_size
        self._timeout_s = timeout_s
        self._pool: AsyncConnectionPool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._balances_sql = _compiled_balances_sql()

    @property
    def serving(self) -> bool:
        """True when the pool is open on the running event loop."""
        try:
            return self._pool is not None and asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    async def open(self) -> None:
        if self._pool is not None:
            raise RuntimeError("the read pool is open already")
        pool = AsyncConnectionPool(
            self._conninfo,
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._timeout_s,
            kwargs={"autocommit": True, "application_name": APPLICATION_NAME},
            name="sluice-reads",
            open=False,
        )
        await pool.open()
        self._pool = pool
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        pool, self._pool, self._loop = self._pool, None, None
        if pool is not None:
            await pool.close()

    async def _fetch(self, sql: str, params: dict[str, object]) -> list[tuple[object, ...]]:
        pool = self._pool
        if pool is None or not self.serving:
            raise RuntimeError("the read pool is not open on this event loop")
        try:
            return await self._fetch_on(pool, sql, params)
        except psycopg.OperationalError:
            # The pool has discarded the broken connection; a read is safe to try once more.
            return await self._fetch_on(pool, sql, params)

    async def _fetch_on(
        self, pool: AsyncConnectionPool, sql: str, params: dict[str, object]
    ) -> list[tuple[object, ...]]:
        try:
            async with pool.connection() as connection:
                cursor = await connection.execute(sql, params)
                return await cursor.fetchall()
        except PoolTimeout as exc:
            raise OperationTimeoutError(
                f"no database connection became free within {self._timeout_s:.0f} s"
            ) from exc

    async def customer_balances(self, customer_id: str) -> dict[InstrumentId, Decimal]:
        rows = await self._fetch(
            self._balances_sql, {"account_name": customer_account_name(customer_id)}
        )
        balances: dict[InstrumentId, Decimal] = {}
        for admin, instrument, balance in rows:
            assert isinstance(balance, Decimal), "accounts.balance is NUMERIC"
            balances[InstrumentId(str(admin), str(instrument))] = balance
        return balances
