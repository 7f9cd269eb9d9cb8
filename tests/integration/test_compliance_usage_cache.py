"""The usage a writer keeps across its transactions (:class:`UsageCache`, as ingestion keeps it
batch after batch) decides exactly as reading everything afresh would, on SQLite and PostgreSQL.

How: one database, random scenarios (fixed seeds). Each "batch" of deposits is decided twice on
the same committed state — first by a session without the cache in a transaction that is rolled
back (the reference), then by a session with the cache, whose transaction commits (or, now and
then, is rolled back, and the cache cleared, as ingestion does on a failed batch). Every decision
of the two must be equal: each check with its reason (the 24 h and 30-day usage in them), the
error code and the risk flags. Between batches, other writers change usage behind the cache's
back — a withdrawal request, a usage row at a time ahead of the batches, a refunded withdrawal
forgotten — and time moves by minutes, hours, days, sometimes backwards. The risk rules look at
the latest 3 operations, so the slice the cache keeps is cut and extended often.

A second test shows the cache is used: with nobody else writing, a customer's second batch reads
no full span of their usage, and once another writer moves their usage version it is read afresh.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine

from sluice.domain.compliance import ComplianceDecision, ComplianceRequest, UsageRecord
from sluice.domain.risk import RiskRules
from sluice.services.compliance import ComplianceSettings, KycRegistry, UsageCache
from sluice.store.compliance_repository import SqlComplianceRepository
from sluice.store.database import open_database
from sluice.store.repositories import SqlReferenceRepository
from sluice.store.unit_of_work import SqlUnitOfWork

START = datetime(2026, 11, 20, 22, 50, 0, 125000, tzinfo=UTC)
CUSTOMERS = ("c0", "c1", "c2", "c3")
# How far the clock moves between batches: within an hour, across hours and days, to the edge
# of the 30-day window, and back.
MOVES = (
    timedelta(minutes=7),
    timedelta(minutes=50),
    timedelta(hours=3),
    timedelta(hours=23),
    timedelta(days=1, minutes=3),
    timedelta(days=29, hours=23),
    timedelta(minutes=-30),
)
RULES = RiskRules(
    recent_operations_max=3,
    velocity_count_max=3,
    velocity_window_s=7200.0,
    structuring_count_min=2,
    small_deposits_min=2,
    threshold=100,
)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = open_database(database_url)
    with engine.begin() as connection:
        reference = SqlReferenceRepository(connection)
        compliance = SqlComplianceRepository(connection)
        for index, customer in enumerate(CUSTOMERS):
            reference.add_customer(customer, customer)
            # Tier 1 customers meet their limits within a scenario; tier 4 ones do not.
            compliance.set_profile(customer, at=START, tier=1 if index % 2 else 4, status="active")
    yield engine
    engine.dispose()


def _outcome(decision: ComplianceDecision) -> tuple[Any, ...]:
    return (decision.code, decision.required_tier, decision.risk_flags, decision.checks)


def _decide_batch(
    engine: Engine,
    registry: KycRegistry,
    deposits: list[tuple[str, Decimal, datetime, str]],
    cache: UsageCache | None,
    *,
    commit: bool,
) -> list[tuple[Any, ...]]:
    """Decide the deposits in one session, as ingestion does with a batch."""
    times = [at for _, _, at, _ in deposits]
    with SqlUnitOfWork(engine) as uow:
        session = registry.session(
            uow,
            {customer for customer, _, _, _ in deposits},
            {sender for _, _, _, sender in deposits},
            since=min(times),
            until=max(times),
            operations=["deposit"],
            lock=True,
            cache=cache,
        )
        outcomes = [
            _outcome(
                session.decide(
                    ComplianceRequest(customer, "deposit", amount, sender),
                    operation_id=f"deposit:{customer}:{at.isoformat()}:{amount}",
                    at=at,
                    actor="test",
                    record=True,
                )
            )
            for customer, amount, at, sender in sorted(deposits, key=lambda item: item[2])
        ]
        session.flush()
        if commit:
            uow.commit()
    if cache is not None:
        if commit:
            cache.commit()
        else:
            cache.clear()
    return outcomes


def _other_writer(engine: Engine, rng: random.Random, now: datetime, step: int) -> str | None:
    """Someone else changes a customer's usage; returns a withdrawal id it recorded, if any."""
    customer = rng.choice(CUSTOMERS)
    choice = rng.random()
    with engine.begin() as connection:
        repo = SqlComplianceRepository(connection)
        if choice < 0.6:
            # A withdrawal request now, or one stamped a little ahead of ingestion's clock.
            ahead = timedelta(minutes=rng.choice([0, 0, 5, 90]))
            operation_id = f"withdrawal:{step}"
            amount = Decimal(rng.choice(["3", "9.5", "400000"]))
            repo.record_usage(
                customer,
                [UsageRecord(operation_id, "withdrawal", amount, now + ahead, "x::1220")],
            )
            return operation_id
        # A deposit released by an officer, counted at the time it arrived (in the past).
        back = timedelta(hours=rng.choice([1, 23, 25, 24 * 29]))
        repo.record_usage(
            customer,
            [UsageRecord(f"release:{step}", "deposit", Decimal("7"), now - back, "s::1220")],
        )
    return None


def _forget(engine: Engine, operation_id: str) -> None:
    with engine.begin() as connection:
        SqlComplianceRepository(connection).forget_usage([operation_id])


@pytest.mark.parametrize("seed", range(6))
def test_decisions_with_kept_usage_equal_those_read_afresh(engine: Engine, seed: int) -> None:
    rng = random.Random(seed)
    registry = KycRegistry(ComplianceSettings(risk=RULES))
    cache = UsageCache()
    now = START
    withdrawals: list[str] = []
    compared = 0
    kept_after_commit: list[int] = []
    for step in range(40):
        now += rng.choice(MOVES)
        count = rng.randint(1, 8)
        deposits = [
            (
                rng.choice(CUSTOMERS),
                # Small amounts trip the smurfing and velocity rules; large ones the tier-1
                # daily and monthly limits over a few batches.
                Decimal(rng.choice(["5", "12.5", "250000", "900000"])),
                now + timedelta(seconds=rng.randint(0, 1800), microseconds=rng.randint(0, 999)),
                rng.choice(["s1::1220", "s2::1220"]),
            )
            for _ in range(count)
        ]
        expected = _decide_batch(engine, registry, deposits, None, commit=False)
        commit = rng.random() > 0.1
        assert _decide_batch(engine, registry, deposits, cache, commit=commit) == expected, step
        compared += len(expected)
        if commit:
            kept_after_commit.append(len(cache))
        if rng.random() < 0.3:
            recorded = _other_writer(engine, rng, now, step)
            if recorded is not None:
                withdrawals.append(recorded)
        if withdrawals and rng.random() < 0.15:
            _forget(engine, withdrawals.pop(rng.randrange(len(withdrawals))))
    assert compared > 100
    # A committed batch leaves its customers kept (the cache is in use, not bypassed).
    assert kept_after_commit and min(kept_after_commit) > 0


def test_kept_customers_are_not_read_again_until_someone_else_changes_their_usage(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh: list[list[str]] = []
    usage_windows = SqlComplianceRepository.usage_windows

    def counting(self: SqlComplianceRepository, customer_ids: Any, *args: Any) -> Any:
        fresh.append(sorted(customer_ids))
        return usage_windows(self, customer_ids, *args)

    monkeypatch.setattr(SqlComplianceRepository, "usage_windows", counting)
    registry = KycRegistry(ComplianceSettings(risk=RULES))
    cache = UsageCache()
    first = [("c0", Decimal(5), START, "s1::1220"), ("c2", Decimal(5), START, "s1::1220")]
    later = [(c, amount, at + timedelta(minutes=10), s) for c, amount, at, s in first]
    _decide_batch(engine, registry, first, cache, commit=True)
    _decide_batch(engine, registry, later, cache, commit=True)
    assert fresh == [["c0", "c2"]]

    _other_writer_for(engine, "c2", START + timedelta(minutes=15))
    again = [(c, amount, at + timedelta(minutes=20), s) for c, amount, at, s in first]
    _decide_batch(engine, registry, again, cache, commit=True)
    assert fresh == [["c0", "c2"], ["c2"]]

    # A batch that does not commit leaves nothing kept.
    _decide_batch(engine, registry, first, cache, commit=False)
    assert len(cache) == 0


def _other_writer_for(engine: Engine, customer: str, at: datetime) -> None:
    with engine.begin() as connection:
        SqlComplianceRepository(connection).record_usage(
            customer, [UsageRecord("withdrawal:w", "withdrawal", Decimal(1), at, "x::1220")]
        )
