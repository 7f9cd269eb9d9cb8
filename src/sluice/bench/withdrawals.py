"""Measuring withdrawals end to end against the embedded ledger, next to the ledger's own rate.

What is measured, in one process and one run:

* **Raw transfers/s**: the embedded ledger alone — ``ledger.transfer(...)`` direct (pre-approved)
  transfers from one party holding as many holdings as the pipeline's treasury, to a few
  receivers, in a fresh in-memory ledger. This is the ceiling: what the ledger does without sluice.
* **Withdrawals/s with 1, 2 and 4 workers**: a :class:`sluice.sandbox.Sandbox` on a file SQLite DB
  (or PostgreSQL), its treasury funded by ``N`` customer deposits (``N`` holdings, ingested), then
  ``N`` withdrawals requested (timed on their own: requests/s). The timed part is the loop of
  ``k`` :class:`WithdrawalWorker` objects' ``run_once`` interleaved with ingestion, from the
  requests recorded to every withdrawal *completed as seen by ingestion*. On SQLite the workers
  take turns (one writer at a time); on PostgreSQL they run in threads against one ingestion loop.
  The embedded ledger is in-process behind its lock either way.
* **Ratio** = best withdrawals/s ÷ raw transfers/s (target ≥ 0.5).
* **Coin selection latency** (target p99 < 20 ms) over 10,000 holdings, with
  :func:`sluice.bench.selection.measure_selection`.

Every pipeline run starts from an emptied database and ends by checking the books invariant and
that every withdrawal completed; a run that does not is reported as such, not as a rate.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sluice.bench.measure import reset_database
from sluice.bench.record import insert_table_row, machine
from sluice.bench.selection import measure_selection
from sluice.ledger.local import EmbeddedLedger
from sluice.sandbox import Sandbox
from sluice.services.books import check_invariant
from sluice.services.withdrawals import WithdrawalSettings
from sluice.store import tables

WORKER_COUNTS = (1, 2, 4)
CUSTOMERS = 20


@dataclass(frozen=True, slots=True)
class Sizes:
    withdrawals: int  # also the number of holdings the treasury starts with
    selection_holdings: int
    selection_runs: int


FULL = Sizes(withdrawals=2_000, selection_holdings=10_000, selection_runs=1_000)
QUICK = Sizes(withdrawals=40, selection_holdings=2_000, selection_runs=20)
ROUNDS_MAX = 100_000  # bound on the timed loop; far above what any run needs
THREAD_IDLE_S = 0.001
RATIO_TARGET = 0.5
SELECTION_P99_TARGET_MS = 20.0
SECTION = "## Withdrawals (`sluice bench withdrawals`)"
HEADER = (
    "| date | machine | db | withdrawals | raw transfers/s | requests/s "
    "| withdrawals/s (1 / 2 / 4 workers) | ratio (best) | selection p50 / p99 ms (holdings) "
    "| targets | books | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


@dataclass(frozen=True, slots=True)
class PipelineRun:
    workers: int
    withdrawals: int
    requests_per_s: float
    withdrawals_per_s: float
    rounds: int  # worker rounds (SQLite) or ingestion passes (PostgreSQL) in the timed loop
    completed: int
    books_balance: bool

    @property
    def ok(self) -> bool:
        return self.completed == self.withdrawals and self.books_balance


# --- the amounts: deterministic for a seed -------------------------------------------------------


def deposit_amounts(count: int, rng: random.Random) -> list[Decimal]:
    """What the customers deposit: one treasury holding each, 100.00-199.99."""
    return [Decimal(rng.randrange(10_000, 20_000)) / 100 for _ in range(count)]


def withdrawal_amounts(count: int, rng: random.Random) -> list[Decimal]:
    """What they withdraw: 10.00-79.99, so every change holding stays above the merge threshold
    (upkeep plans nothing and the run measures withdrawals only)."""
    return [Decimal(rng.randrange(1_000, 8_000)) / 100 for _ in range(count)]


# --- the ledger's own rate -----------------------------------------------------------------------


def raw_transfer_rate(transfers: int, *, seed: int = 1) -> float:
    """Direct transfers per second of the embedded ledger alone (fresh, in memory): the sender
    holds ``transfers`` holdings (like the pipeline's treasury), receivers pre-approve."""
    ledger = EmbeddedLedger.open(None, seed=seed, checkpoint_interval_s=30.0)
    for node in ("registry", "exchange", "wallets"):
        ledger.add_node(node)
    dso = ledger.allocate_party("dso", "registry")
    sender = ledger.allocate_party("treasury", "exchange")
    coin = ledger.create_instrument(dso, "Amulet")
    receivers = [ledger.allocate_party(f"cust-{n}", "wallets") for n in range(CUSTOMERS)]
    for receiver in receivers:
        ledger.create_preapproval(receiver, coin)
    rng = random.Random(seed)
    for amount in deposit_amounts(transfers, rng):
        ledger.tap(sender, coin, amount)
    amounts = withdrawal_amounts(transfers, rng)
    started = time.perf_counter()
    for index, amount in enumerate(amounts):
        ledger.transfer(
            sender,
            receivers[index % CUSTOMERS],
            coin,
            amount,
            reason=f"raw-{index}",
            expect_kind="direct",
        )
    elapsed = time.perf_counter() - started
    ledger.close()
    return transfers / elapsed


# --- the pipeline --------------------------------------------------------------------------------


def completed_count(sandbox: Sandbox) -> int:
    table = tables.withdrawals
    with sandbox.database.engine.connect() as connection:
        count = connection.execute(
            sa.select(sa.func.count()).select_from(table).where(table.c.status == "completed")
        ).scalar_one()
    return int(count)


def fund_treasury(database_url: str, withdrawals: int, rng: random.Random) -> Sandbox:
    """An emptied DB, a sandbox whose treasury holds ``withdrawals`` deposits, all ingested."""
    reset_database(database_url)
    deposits = deposit_amounts(withdrawals, rng)
    tap = sum(deposits, Decimal(0)) / CUSTOMERS * 2 + 1_000
    sandbox = Sandbox.create(
        database_url,
        customers=CUSTOMERS,
        seed=rng.randrange(1 << 30),
        tap=tap,
        withdrawal_settings=WithdrawalSettings(),
    )
    for index, amount in enumerate(deposits):
        sandbox.deposit(f"cust-{index % CUSTOMERS}", amount)
    sandbox.ingest()
    return sandbox


def run_serialized(sandbox: Sandbox, workers: int) -> int:
    """The workers take turns, then ingestion; until a round where no worker had anything to do
    and ingestion found nothing new. Returns the rounds."""
    pool = [sandbox.withdrawal_worker() for _ in range(workers)]
    for rounds in range(1, ROUNDS_MAX + 1):
        busy = False
        for worker in pool:
            busy = worker.run_once().busy or busy
        progress = sandbox.ingest()
        if not busy and progress.transactions == 0:
            return rounds
    raise RuntimeError(f"withdrawals still in flight after {ROUNDS_MAX} rounds")


def run_threaded(sandbox: Sandbox, workers: int, withdrawals: int) -> int:
    """Each worker in its own thread, ingestion in this one, until ingestion has seen every
    withdrawal completed (PostgreSQL: workers claim with ``FOR UPDATE SKIP LOCKED``)."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        worker = sandbox.withdrawal_worker()
        try:
            while not stop.is_set():
                if not worker.run_once().busy:
                    stop.wait(THREAD_IDLE_S)
        except BaseException as exc:  # reported below, after the threads are joined
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=loop, name=f"worker-{n}") for n in range(workers)]
    for thread in threads:
        thread.start()
    passes = 0
    try:
        while not stop.is_set() and passes < ROUNDS_MAX:
            passes += 1
            sandbox.ingest()
            if completed_count(sandbox) >= withdrawals:
                break
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    if errors:
        raise RuntimeError(f"a worker thread failed: {errors[0]!r}") from errors[0]
    return passes


def measure_pipeline(
    database_url: str, *, withdrawals: int, workers: int, seed: int = 1
) -> PipelineRun:
    """Fund, request ``withdrawals`` (timed apart), then time the workers and ingestion until
    every withdrawal is completed as ingestion sees it."""
    rng = random.Random(seed)
    sandbox = fund_treasury(database_url, withdrawals, rng)
    try:
        amounts = withdrawal_amounts(withdrawals, rng)
        started = time.perf_counter()
        for index, amount in enumerate(amounts):
            sandbox.withdraw(f"cust-{index % CUSTOMERS}", amount, key=f"bench-{index}")
        requested = time.perf_counter() - started
        threaded = sandbox.database.engine.dialect.name == "postgresql" and workers > 1
        started = time.perf_counter()
        if threaded:
            rounds = run_threaded(sandbox, workers, withdrawals)
        else:
            rounds = run_serialized(sandbox, workers)
        elapsed = time.perf_counter() - started
        completed = completed_count(sandbox)
        books = check_invariant(sandbox.database.uow).holds
    finally:
        sandbox.close()
    return PipelineRun(
        workers=workers,
        withdrawals=withdrawals,
        requests_per_s=round(withdrawals / requested, 1),
        withdrawals_per_s=round(withdrawals / elapsed, 1),
        rounds=rounds,
        completed=completed,
        books_balance=books,
    )


# --- the whole benchmark -------------------------------------------------------------------------


def measure(
    database_url: str,
    *,
    withdrawals: int,
    selection_holdings: int,
    selection_runs: int,
    worker_counts: tuple[int, ...] = WORKER_COUNTS,
) -> dict[str, Any]:
    raw = raw_transfer_rate(withdrawals)
    runs = [
        measure_pipeline(database_url, withdrawals=withdrawals, workers=k) for k in worker_counts
    ]
    selection = measure_selection(holdings=selection_holdings, runs=selection_runs)
    best = max((run.withdrawals_per_s for run in runs if run.ok), default=0.0)
    return {
        "db": sa.engine.make_url(database_url).get_backend_name(),
        "withdrawals": withdrawals,
        "raw_transfers_per_s": round(raw, 1),
        "pipeline": [asdict(run) for run in runs],
        "best_withdrawals_per_s": best,
        "ratio": round(best / raw, 3),
        "selection_holdings": selection_holdings,
        "selection_runs": selection_runs,
        "selection_p50_ms": round(selection["p50_ms"], 3),
        "selection_p99_ms": round(selection["p99_ms"], 3),
        "all_completed": all(run.ok for run in runs),
    }


def targets(result: dict[str, Any]) -> str:
    ratio_met = result["ratio"] >= RATIO_TARGET
    p99_met = result["selection_p99_ms"] < SELECTION_P99_TARGET_MS
    return (
        f"ratio ≥ {RATIO_TARGET}: {'met' if ratio_met else 'NOT met'}; "
        f"p99 < {SELECTION_P99_TARGET_MS:.0f} ms: {'met' if p99_met else 'NOT met'}"
    )


def append_withdrawals_result(path: Path, result: dict[str, Any], *, command: str) -> None:
    """Add a row to the withdrawals table of ``path`` (the section and table are created the first
    time); everything else in the file is kept as it is."""
    runs = result["pipeline"]
    rates = " / ".join(
        f"{run['withdrawals_per_s']}" if run["completed"] == run["withdrawals"] else "incomplete"
        for run in runs
    )
    requests = round(min(run["requests_per_s"] for run in runs), 1)
    books = "balance" if all(run["books_balance"] for run in runs) else "BROKEN"
    row = (
        f"| {datetime.now(UTC):%Y-%m-%d} | {machine()}, load {os.getloadavg()[0]:.1f} "
        f"| {result['db']} "
        f"| {result['withdrawals']} | {result['raw_transfers_per_s']} | {requests} | {rates} "
        f"| {result['ratio']} | {result['selection_p50_ms']} / {result['selection_p99_ms']} "
        f"({result['selection_holdings']}) | {targets(result)} | {books} | `{command}` |\n"
    )
    insert_table_row(path, SECTION, HEADER, row)


@contextmanager
def database_for(db: str | None, quick: bool) -> Iterator[str]:
    """The database to measure: the one given (EMPTIED first), else a SQLite file — under
    ``data/bench`` for a full run, in a temporary folder for a quick one."""
    if db is not None:
        yield db
        return
    if not quick:
        Path("data/bench").mkdir(parents=True, exist_ok=True)
        yield "sqlite:///data/bench/withdrawals.db"
        return
    with tempfile.TemporaryDirectory(prefix="sluice-bench-withdrawals-") as scratch:
        yield f"sqlite:///{Path(scratch) / 'withdrawals.db'}"


def bench_command(record: Path | None, quick: bool, db: str | None = None) -> None:
    """``sluice bench withdrawals``: measure, print the figures as JSON, append them to
    ``record`` when given. ``quick`` uses a small N (smoke tests); ``db`` is emptied first."""
    sizes = QUICK if quick else FULL
    with database_for(db, quick) as url:
        result = measure(
            url,
            withdrawals=sizes.withdrawals,
            selection_holdings=sizes.selection_holdings,
            selection_runs=sizes.selection_runs,
        )
    sys.stdout.write(json.dumps(result) + "\n")
    if record is not None:
        command = " ".join(["sluice", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None
        append_withdrawals_result(
            record,
            result,
            command=command
            or ("sluice bench withdrawals" + (" --quick" if quick else "") + f" --record {record}"),
        )
