"""Measuring what the KYC registry costs a withdrawal request as a customer's history grows.

One exchange per engine, in an emptied database: an onboarded instrument and, for each history
size (10, 1,000 and 10,000 by default), one customer on KYC tier 4 with a large balance and that
many earlier operations this month — deposits and withdrawals of a few units, to a handful of
counterparties, spread evenly over the 30 days before the run, recorded as usage the way the
operations record it (rows and their hour and day totals). Then withdrawal requests are timed
through the service, :func:`sluice.services.withdrawals.request_withdrawal` with the real
:class:`~sluice.services.compliance.KycRegistry` (its session reads the customer's usage, decides
the limits and the risk rules, writes the usage, and the request debits, records and audits),
one request per customer in turn so the machine's noise falls on every size alike, after a few
untimed warm-up requests. Each request is a new withdrawal (new idempotency key) of 1 unit to a
receiver the customer already paid.

Reported per engine, as one JSON line: ``history_ops``, the p50 and p99 request time in ms for
each size, and ``ratio_10000_to_10`` = p50 of the largest history ÷ p50 of the smallest (the
target is ≤ 1.3: a request costs about the same whatever the history).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sluice import bootstrap
from sluice.bench.measure import reset_database
from sluice.bench.record import insert_table_row, machine
from sluice.domain.compliance import MONTH, UsageRecord
from sluice.domain.journal import AccountRef, customer_account_name, transfer_into
from sluice.domain.ledger import InstrumentId
from sluice.services.compliance import KycRegistry
from sluice.services.reference import onboard_instrument, register_customer
from sluice.services.withdrawals import request_withdrawal

SECTION = "## Compliance cost of a request (`sluice bench compliance`)"
HEADER = (
    "| date | machine | engine | history ops | request p50 ms | request p99 ms "
    "| ratio 10,000 : 10 (p50) | target | command |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)
HISTORY_OPS = (10, 1_000, 10_000)
RATIO_TARGET = 1.3
SQLITE_URL = "sqlite:///data/bench/compliance.db"
POSTGRESQL_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/sluice_bench_compliance"
TREASURY = "treasury::1220b0"
COIN = InstrumentId("dso::1220c0", "Amulet")
RECEIVERS = tuple(f"receiver-{index}::1220d0" for index in range(5))
WARM_UP = 5
ROWS_PER_INSERT = 2_000


@dataclass(frozen=True, slots=True)
class EngineResult:
    engine: str
    history_ops: list[int]
    request_ms_p50: list[float]
    request_ms_p99: list[float]
    ratio_10000_to_10: float

    def as_json(self) -> dict[str, object]:
        return {
            "engine": self.engine,
            "history_ops": self.history_ops,
            "request_ms_p50": self.request_ms_p50,
            "request_ms_p99": self.request_ms_p99,
            "ratio_10000_to_10": self.ratio_10000_to_10,
        }


def customer_for(history_ops: int) -> str:
    return f"history-{history_ops}"


def prepare(database: bootstrap.Database, history: Sequence[int], now: datetime) -> None:
    """The instrument, and one funded tier-4 customer per history size with its earlier usage."""
    onboard_instrument(database.uow, COIN, actor="benchmark", at=now)
    for size in history:
        customer = customer_for(size)
        register_customer(database.uow, customer, customer, [f"account-{size}"], tier=4, at=now)
        with database.uow() as uow:
            uow.withdrawals.post(
                [
                    transfer_into(
                        f"fund:{customer}",
                        "deposit",
                        treasury=AccountRef(f"treasury:{TREASURY}", COIN),
                        liability=AccountRef(customer_account_name(customer), COIN),
                        amount=Decimal(1_000_000),
                    )
                ]
            )
            uow.commit()
        records = earlier_operations(customer, size, now)
        for start in range(0, len(records), ROWS_PER_INSERT):
            with database.uow() as uow:
                uow.compliance.record_usage(customer, records[start : start + ROWS_PER_INSERT])
                uow.commit()


def earlier_operations(customer: str, count: int, now: datetime) -> list[UsageRecord]:
    """``count`` deposits and withdrawals of 1–9 units, evenly spread over the month before
    ``now`` (the last a minute before it)."""
    spread = MONTH - timedelta(minutes=1)
    step = spread / count
    first = now - spread
    records = []
    for index in range(count):
        withdrawal = index % 3 == 0
        records.append(
            UsageRecord(
                operation_id=f"earlier:{customer}:{index}",
                operation="withdrawal" if withdrawal else "deposit",
                amount=Decimal(1 + index % 9),
                occurred_at=first + step * index,
                counterparty=RECEIVERS[index % len(RECEIVERS)]
                if withdrawal
                else f"sender-{index % 7}::1220e0",
            )
        )
    return records


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def measure_engine(url: str, *, history: Sequence[int], requests: int) -> EngineResult:
    """Build the exchange in the emptied database at ``url`` and time ``requests`` withdrawal
    requests per history size (see the module docstring)."""
    reset_database(url)
    database = bootstrap.database(url)
    registry = KycRegistry()
    try:
        prepare(database, history, datetime.now(UTC))
        timings: dict[int, list[float]] = {size: [] for size in history}
        for index in range(WARM_UP + requests):
            for size in history:
                customer = customer_for(size)
                started = time.perf_counter()
                request_withdrawal(
                    database.uow,
                    treasury=TREASURY,
                    customer_id=customer,
                    receiver=RECEIVERS[index % len(RECEIVERS)],
                    instrument=COIN,
                    amount="1",
                    idempotency_key=f"bench-{index}",
                    clock=lambda: datetime.now(UTC),
                    compliance=registry,
                )
                elapsed_ms = (time.perf_counter() - started) * 1000.0
                if index >= WARM_UP:
                    timings[size].append(elapsed_ms)
    finally:
        database.engine.dispose()
    p50 = [round(statistics.median(timings[size]), 3) for size in history]
    p99 = [round(_percentile(sorted(timings[size]), 0.99), 3) for size in history]
    return EngineResult(
        engine=database.engine.dialect.name,
        history_ops=list(history),
        request_ms_p50=p50,
        request_ms_p99=p99,
        ratio_10000_to_10=round(p50[-1] / p50[0], 3),
    )


def append_compliance_result(path: Path, result: EngineResult, *, command: str) -> None:
    """Add one row to the benchmark's table in ``path`` (the section and table are made on first
    use); everything else in the file, prose under the table included, is kept in place."""
    met = "met" if result.ratio_10000_to_10 <= RATIO_TARGET else "NOT met"
    row = (
        f"| {datetime.now(UTC):%Y-%m-%d} | {machine()}, load {os.getloadavg()[0]:.1f} "
        f"| {result.engine} | {' / '.join(f'{size:,}' for size in result.history_ops)} "
        f"| {' / '.join(f'{value:.2f}' for value in result.request_ms_p50)} "
        f"| {' / '.join(f'{value:.2f}' for value in result.request_ms_p99)} "
        f"| {result.ratio_10000_to_10} | ratio ≤ {RATIO_TARGET}: {met} | `{command}` |\n"
    )
    insert_table_row(path, SECTION, HEADER, row)


def bench_command(
    urls: Sequence[str],
    *,
    requests: int,
    history: Sequence[int] = HISTORY_OPS,
    record: Path | None = None,
) -> list[EngineResult]:
    """``sluice bench compliance``: measure each engine, print one JSON line each, append the
    rows to ``record`` when given."""
    results = []
    for url in urls:
        result = measure_engine(url, history=history, requests=requests)
        sys.stdout.write(json.dumps(result.as_json()) + "\n")
        sys.stdout.flush()
        results.append(result)
    if record is not None:
        command = (
            " ".join(["sluice", *sys.argv[1:]])
            if sys.argv[1:2] == ["bench"]
            else f"sluice bench compliance --record {record}"
        )
        for result in results:
            append_compliance_result(record, result, command=command)
    return results
