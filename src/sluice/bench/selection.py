"""Measuring coin selection (:func:`sluice.domain.coin_selection.select_inputs`) on a large pool.

The pool is deterministic for a seed: mostly small holdings (dust from deposits and change) and
some large ones, every amount with 10 fractional digits, about one in ten locked (for good, until
a past moment, or until a future one). The targets mix small, medium and large withdrawals, plus
some equal to a holding (the exact path) or to the sum of two holdings (the changeless search).
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sluice.domain.amounts import from_units
from sluice.domain.coin_selection import Candidate, select_inputs

_UNITS_PER_TOKEN = 10**10


def _amount(rng: random.Random, low: int, high: int) -> Decimal:
    """A random amount in ``[low, high)`` tokens with all 10 fractional digits used."""
    return from_units(rng.randrange(low * _UNITS_PER_TOKEN, high * _UNITS_PER_TOKEN))


def build_pool(holdings: int, rng: random.Random, now: datetime) -> list[Candidate]:
    pool: list[Candidate] = []
    for index in range(holdings):
        amount = _amount(rng, 0, 10) if rng.random() < 0.7 else _amount(rng, 10, 100_000)
        locked_until: datetime | None = None
        locked = False
        draw = rng.random()
        if draw < 0.04:
            locked = True
        elif draw < 0.07:
            locked, locked_until = True, now - timedelta(minutes=rng.randrange(1, 600))
        elif draw < 0.10:
            locked, locked_until = True, now + timedelta(minutes=rng.randrange(1, 600))
        contract_id = f"00{rng.getrandbits(128):032x}:{index}"
        pool.append(Candidate(contract_id, amount, locked_until, locked))
    return pool


def _target(rng: random.Random, pool: list[Candidate]) -> Decimal:
    draw = rng.random()
    if draw < 0.35:
        return _amount(rng, 0, 50) + Decimal("0.0000000001")
    if draw < 0.70:
        return _amount(rng, 50, 20_000)
    if draw < 0.80:
        return _amount(rng, 20_000, 500_000)
    if draw < 0.90:
        return rng.choice(pool).amount
    first, second = rng.sample(pool, 2)
    return first.amount + second.amount


def measure_selection(holdings: int = 10_000, runs: int = 1_000, seed: int = 1) -> dict[str, float]:
    """Latency of ``select_inputs`` over ``holdings`` candidates for ``runs`` random targets."""
    rng = random.Random(seed)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    pool = build_pool(holdings, rng, now)
    targets = [_target(rng, pool) for _ in range(runs)]
    timings: list[float] = []
    for target in targets:
        started = time.perf_counter()
        select_inputs(pool, target, now=now)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    p99_index = min(len(timings) - 1, max(0, round(0.99 * len(timings)) - 1))
    return {
        "holdings": float(holdings),
        "runs": float(runs),
        "p50_ms": statistics.median(timings),
        "p99_ms": timings[p99_index],
        "max_ms": timings[-1],
    }
