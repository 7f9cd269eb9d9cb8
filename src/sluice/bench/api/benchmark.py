"""The whole benchmark: every scenario for each worker count, and the withdrawal check after each.

The check resends every key that was not answered 2xx, then requires the withdrawal records to be
exactly the keys answered 2xx and the books invariant to hold.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from sluice import bootstrap
from sluice.services.books import check_invariant
from sluice.store import tables

from .exchange import Exchange, api_server, prepare_exchange, server_stack
from .load import LoadRun, RawRun, idempotency_key, load_run, requests_for
from .python_generator import python_run
from .settings import (
    CLIENTS,
    DEFAULT_DB,
    DURATION_S,
    PACED_RATE,
    READ_P99_TARGET_MS,
    READS_PER_S_TARGET,
    REQUEST_TIMEOUT_S,
    SCENARIOS,
    WARMUP_S,
    WORKER_COUNTS,
)
from .wrk import install_wrk, wrk_run, wrk_version


@dataclass(frozen=True, slots=True)
class WithdrawalCheck:
    """Withdrawal requests against the records they left (see the module docstring)."""

    sent: int  # requests made, each with its own key (wrk's unsent one included)
    answered_ok: int  # 2xx answers, the resent unanswered ones included
    answered_failed: int
    resent: int  # unanswered in their run (see ClientTally.unsettled), sent again with their key
    resent_booked_before: int  # of those, answered 200: the first request had been booked
    recorded: int  # withdrawal records with one of the runs' keys
    missing: int  # answered 2xx, not recorded
    unexpected: int  # recorded, not answered 2xx
    books_balance: bool

    @property
    def exact(self) -> bool:
        return self.missing == 0 and self.unexpected == 0 and self.recorded == self.answered_ok


def resend(base: str, exchange: Exchange, key: str) -> int:
    """Send the withdrawal request of ``key`` (``<run>-<client>-<n>``) again; its status."""
    client_index = int(key.rsplit("-", 2)[1])
    request = requests_for("withdrawal", exchange)[client_index - 1]
    headers = {**dict(request.headers), "Idempotency-Key": key}
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as client:
        answer = client.post(request.path, content=request.body, headers=headers)
    return answer.status_code


def check_withdrawals(
    base: str, exchange: Exchange, runs: Sequence[tuple[str, RawRun]]
) -> WithdrawalCheck:
    """Settle the requests left unanswered by ``runs`` (run name, what it measured) by sending
    them again, then compare the keys answered 2xx with the withdrawal records, and check the
    books."""
    expected: set[str] = set()
    sent = failed = resent = booked_before = 0
    for run, raw in runs:
        for tally in raw.tallies:
            sent += tally.sent
            keys = {idempotency_key(run, tally.client, n) for n in range(1, tally.sent + 1)}
            keys -= set(tally.failed_keys)
            failed += len(tally.failed_keys)
            for key in tally.unsettled:
                resent += 1
                status = resend(base, exchange, key)
                booked_before += status == 200
                if not 200 <= status < 300:
                    keys.discard(key)
                    failed += 1
            expected |= keys
    table = tables.withdrawals
    database = bootstrap.database(exchange.url)
    try:
        with database.engine.connect() as connection:
            rows = connection.execute(
                sa.select(table.c.idempotency_key).where(
                    table.c.kind == "withdrawal",
                    sa.or_(*(table.c.idempotency_key.like(f"{run}-%") for run, _raw in runs)),
                )
            )
            recorded = [str(row[0]) for row in rows]
        books = check_invariant(database.uow).holds
    finally:
        database.dispose()
    found = set(recorded)
    return WithdrawalCheck(
        sent=sent,
        answered_ok=len(expected),
        answered_failed=failed,
        resent=resent,
        resent_booked_before=booked_before,
        recorded=len(recorded),
        missing=len(expected - found),
        unexpected=len(found - expected) + (len(recorded) - len(found)),
        books_balance=books,
    )


# --- the whole benchmark -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiBenchSettings:
    url: str = DEFAULT_DB
    clients: int = CLIENTS
    duration_s: float = DURATION_S
    warmup_s: float = WARMUP_S
    paced_rate: float | None = PACED_RATE
    worker_counts: tuple[int, ...] = WORKER_COUNTS
    tool: str = "auto"  # auto (wrk when it can be had) | wrk | python


@dataclass(frozen=True, slots=True)
class WorkersResult:
    workers: int
    runs: tuple[LoadRun, ...]
    withdrawals: WithdrawalCheck

    def run(self, scenario: str, mode: str = "closed") -> LoadRun | None:
        return next((r for r in self.runs if r.scenario == scenario and r.mode == mode), None)


@dataclass(frozen=True, slots=True)
class ApiBenchReport:
    db: str
    tool: str
    server: str  # see server_stack
    clients: int
    duration_s: float
    warmup_s: float
    paced_rate: float | None
    results: tuple[WorkersResult, ...]

    def target_met(self) -> bool:
        return any(_read_target_met(result, self.paced_rate) for result in self.results)

    @property
    def books_balance(self) -> bool:
        return all(result.withdrawals.books_balance for result in self.results)

    @property
    def withdrawals_exact(self) -> bool:
        return all(result.withdrawals.exact for result in self.results)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_met"] = self.target_met()
        data["books_balance"] = self.books_balance
        data["withdrawals_exact"] = self.withdrawals_exact
        return data


def _read_target_met(result: WorkersResult, paced_rate: float | None) -> bool:
    closed = result.run("balance")
    if closed is None or closed.errors or closed.requests_per_s < READS_PER_S_TARGET:
        return False
    paced = result.run("balance", "paced")
    if paced is not None and paced_rate is not None and paced_rate >= READS_PER_S_TARGET:
        return paced.errors == 0 and paced.p99_ms < READ_P99_TARGET_MS
    return closed.p99_ms < READ_P99_TARGET_MS


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def choose_tool(tool: str) -> str:
    """The load generator to use: ``wrk <version>`` or ``python``."""
    if tool == "python":
        return "python"
    found = install_wrk() if tool == "auto" else wrk_version()
    if found is not None:
        return found
    if tool == "wrk":
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    return "python"


def measure_workers(
    exchange: Exchange, workers: int, settings: ApiBenchSettings, tool: str, scratch: Path
) -> WorkersResult:
    """Every run against one server with ``workers`` processes, then the withdrawal check."""
    runs: list[LoadRun] = []
    withdrawal_runs: list[tuple[str, RawRun]] = []
    log = scratch / f"server-{workers}.log"
    with api_server(exchange, workers, log) as base:

        def closed(scenario: str, run: str, duration_s: float) -> RawRun:
            requests = requests_for(scenario, exchange)
            if tool == "python":
                return python_run(base, requests, run=run, duration_s=duration_s)
            return wrk_run(base, requests, run=run, duration_s=duration_s, scratch=scratch)

        for scenario in SCENARIOS:
            name = f"api-w{workers}-{scenario}"
            if settings.warmup_s > 0:
                warm = closed(scenario, f"{name}-warmup", settings.warmup_s)
                if scenario == "withdrawal":
                    withdrawal_runs.append((f"{name}-warmup", warm))
            raw = closed(scenario, name, settings.duration_s)
            if scenario == "withdrawal":
                withdrawal_runs.append((name, raw))
            runs.append(
                load_run(
                    raw,
                    workers=workers,
                    scenario=scenario,
                    mode="closed",
                    tool=tool,
                    load_1m=_load(),
                )
            )
            if scenario == "balance" and settings.paced_rate is not None:
                paced = python_run(
                    base,
                    requests_for("balance", exchange),
                    run=f"{name}-paced",
                    duration_s=settings.duration_s,
                    rate=settings.paced_rate,
                )
                runs.append(
                    load_run(
                        paced,
                        workers=workers,
                        scenario="balance",
                        mode="paced",
                        tool="python",
                        offered_per_s=settings.paced_rate,
                        load_1m=_load(),
                    )
                )
        check = check_withdrawals(base, exchange, withdrawal_runs)
    return WorkersResult(workers=workers, runs=tuple(runs), withdrawals=check)


def measure(settings: ApiBenchSettings, *, scratch: Path | None = None) -> ApiBenchReport:
    """The whole benchmark (see the module docstring); ``scratch`` keeps wrk's scripts and the
    server's log (a temporary folder when not given)."""
    if settings.clients < 1 or settings.duration_s <= 0 or settings.warmup_s < 0:
        raise ValueError("clients ≥ 1, duration > 0 and warm-up ≥ 0 are required")
    tool = choose_tool(settings.tool)
    with _scratch(scratch) as folder:
        results = []
        for workers in settings.worker_counts:
            exchange = prepare_exchange(settings.url, settings.clients)
            results.append(measure_workers(exchange, workers, settings, tool, folder))
    return ApiBenchReport(
        db=sa.engine.make_url(settings.url).get_backend_name(),
        tool=tool,
        server=server_stack(),
        clients=settings.clients,
        duration_s=settings.duration_s,
        warmup_s=settings.warmup_s,
        paced_rate=settings.paced_rate,
        results=tuple(results),
    )


@contextmanager
def _scratch(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="sluice-bench-api-") as folder:
        yield Path(folder)
