"""Measuring ingestion from a file of updates: the decode floor, batched replay, live replay.

Runs in a child process (see :func:`measure_in_child`) so its peak memory is its own and not the
stream generator's.
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from sluice import bootstrap
from sluice.bench.stream import StreamSetup
from sluice.ledger.file import UpdateFile
from sluice.services.books import check_invariant
from sluice.services.ingestion import Ingestion, IngestionSettings, connection_name
from sluice.services.reference import onboard_instrument, register_customer


@dataclass(frozen=True, slots=True)
class Measurement:
    updates: int
    median_update_bytes: int
    decode_floor_per_s: float
    updates_per_s: float
    ratio: float
    live_updates: int
    live_updates_per_s: float
    peak_rss_mb: float
    books_balance: bool


def decode_floor(path: Path) -> tuple[int, float, int]:
    """Decode every line with the fastest decoder available and do nothing else."""
    sizes: list[int] = []
    started = time.perf_counter()
    count = 0
    with path.open("rb") as handle:
        for line in handle:
            orjson.loads(line)
            count += 1
            if count % 97 == 0:
                sizes.append(len(line))
    elapsed = time.perf_counter() - started
    median = int(statistics.median(sizes)) if sizes else 0
    return count, count / elapsed, median


def reset_database(url: str) -> None:
    """Empty the benchmark database so every run starts from nothing."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        engine.dispose()
        if database:
            for suffix in ("", "-wal", "-shm"):
                Path(database + suffix).unlink(missing_ok=True)
        return
    name = engine.url.database
    admin = sa.create_engine(engine.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        exists = connection.exec_driver_sql(
            "SELECT 1 FROM pg_database WHERE datname = %(name)s", {"name": name}
        ).first()
        if not exists:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP SCHEMA IF EXISTS public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


def set_up_exchange(database: bootstrap.Database, setup: StreamSetup) -> None:
    """What the exchange knows before it ingests: the instruments and the customers' accounts."""
    for instrument in setup.instruments:
        onboard_instrument(database.uow, instrument)
    by_customer: dict[str, list[str]] = {}
    for account, customer in setup.accounts.items():
        by_customer.setdefault(customer, []).append(account)
    for customer, accounts in by_customer.items():
        register_customer(database.uow, customer, customer, accounts)


def replay(
    path: Path, setup: StreamSetup, url: str, *, batch_size: int, limit: int | None
) -> tuple[int, float]:
    """Ingest the file into an emptied database; returns (items, seconds)."""
    reset_database(url)
    database = bootstrap.database(url)
    party = setup.party
    set_up_exchange(database, setup)
    ingestion = Ingestion(
        database.uow,
        _Limited(UpdateFile(path), limit),
        party,
        connection=connection_name(party, "bench"),
        settings=IngestionSettings(batch_size_max=batch_size),
    )
    started = time.perf_counter()
    progress = ingestion.run()
    elapsed = time.perf_counter() - started
    database.dispose()
    return progress.transactions + progress.checkpoints, elapsed


class _Limited:
    def __init__(self, source: UpdateFile, limit: int | None) -> None:
        self._source = source
        self._limit = limit

    def ledger_end(self) -> int:
        return self._source.ledger_end()

    def updates(self, party: str, after_offset: int | None, *, limit: int | None = None) -> Any:
        return self._source.updates(party, after_offset, limit=self._limit)

    def offset_at_record_time(self, party: str, time: datetime) -> int:
        return self._source.offset_at_record_time(party, time)


def measure(path: Path, url: str, live_updates: int) -> Measurement:
    setup = StreamSetup.read(path.with_suffix(".setup.json"))
    count, floor, median = decode_floor(path)
    live_count, live_elapsed = replay(path, setup, url, batch_size=1, limit=live_updates)
    total, elapsed = replay(path, setup, url, batch_size=1000, limit=None)
    # The high-water mark of ingestion itself, before the check below loads the whole journal.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    database = bootstrap.database(url)
    books = check_invariant(database.uow).holds
    database.dispose()
    rate = total / elapsed
    return Measurement(
        updates=count,
        median_update_bytes=median,
        decode_floor_per_s=round(floor, 1),
        updates_per_s=round(rate, 1),
        ratio=round(rate / floor, 3),
        live_updates=live_count,
        live_updates_per_s=round(live_count / live_elapsed, 1),
        peak_rss_mb=round(peak, 1),
        books_balance=books,
    )


def _child(path: str, url: str, live_updates: int, queue: Any) -> None:
    queue.put(asdict(measure(Path(path), url, live_updates)))


def measure_in_child(path: Path, url: str, live_updates: int) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(str(path), url, live_updates, queue))
    process.start()
    result: dict[str, Any] = queue.get()
    process.join()
    return result
