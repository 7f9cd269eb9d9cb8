"""Deliberately broken versions of the functions tests/verification/test_crosshair.py checks.

Each one is a plausible mistake that breaks one promise the property states; the tests expect
the same check that passes on the product's function to find a counterexample here. Some are
wrappers that misuse the real function (a cap not passed on), some are small copies of the real
code with one thing changed (a comparison, a missing term); they replace the real function
either as the property's argument or, for internals, by monkeypatching the module's name.
"""

from __future__ import annotations

import decimal
import hashlib
from collections.abc import Collection, Sequence
from datetime import datetime
from decimal import Decimal

import sluice.domain.compliance_windows as compliance_windows
from sluice.domain.amounts import QUANTUM
from sluice.domain.coin_selection import (
    INPUTS_MAX,
    Candidate,
    Selection,
    plan_merge,
    select_around,
    select_inputs,
    spendable,
)
from sluice.domain.compliance import HOUR, TierLimits
from sluice.por.documents import Proof, Root
from sluice.por.verify import compute_root

# --- Coin selection ------------------------------------------------------------------------


def select_without_cap(
    candidates: Sequence[Candidate],
    target: Decimal,
    *,
    now: datetime,
    max_inputs: int = INPUTS_MAX,
    excluded: Collection[str] = (),
) -> Selection | None:
    """No cap at all: as many inputs as it takes."""
    cap = max(len(candidates), 1)
    return select_inputs(candidates, target, now=now, max_inputs=cap, excluded=excluded)


def select_ignoring_reservations(
    candidates: Sequence[Candidate],
    target: Decimal,
    *,
    now: datetime,
    max_inputs: int = INPUTS_MAX,
    excluded: Collection[str] = (),
) -> Selection | None:
    """Holdings reserved by other withdrawals are not left out."""
    return select_inputs(candidates, target, now=now, max_inputs=max_inputs)


def select_changeless_only(
    candidates: Sequence[Candidate],
    target: Decimal,
    *,
    now: datetime,
    max_inputs: int = INPUTS_MAX,
    excluded: Collection[str] = (),
) -> Selection | None:
    """Gives up instead of making change: no answer where only the fallback covers the target."""
    selection = select_inputs(candidates, target, now=now, max_inputs=max_inputs, excluded=excluded)
    return None if selection is None or selection.strategy == "fallback" else selection


def select_by_amount_lookup(
    candidates: Sequence[Candidate],
    target: Decimal,
    *,
    now: datetime,
    max_inputs: int = INPUTS_MAX,
    excluded: Collection[str] = (),
) -> Selection | None:
    """Largest amounts first, each amount mapped back to the first holding of that amount: two
    holdings of equal amounts become the same holding twice."""
    pool = [c for c in spendable(candidates, now) if c.contract_id not in excluded]
    pool = [c for c in pool if c.amount > 0]
    amounts = sorted((c.amount for c in pool), reverse=True)[:max_inputs]
    chosen: list[Candidate] = []
    total = Decimal(0)
    for amount in amounts:
        if total >= target:
            break
        chosen.append(next(c for c in pool if c.amount == amount))
        total += amount
    if total < target:
        return None
    return Selection(tuple(chosen), total, total - target, "fallback")


def around_anchor_not_counted(
    anchor: Candidate,
    candidates: Sequence[Candidate],
    target: Decimal,
    *,
    now: datetime,
    max_inputs: int = INPUTS_MAX,
    excluded: Collection[str] = (),
) -> Selection | None:
    """The anchor is not counted against the cap: up to ``max_inputs`` others besides it."""
    return select_around(
        anchor, candidates, target, now=now, max_inputs=max_inputs + 1, excluded=excluded
    )


def around_dropping_anchor(
    anchor: Candidate,
    candidates: Sequence[Candidate],
    target: Decimal,
    *,
    now: datetime,
    max_inputs: int = INPUTS_MAX,
    excluded: Collection[str] = (),
) -> Selection | None:
    """A retry that selects afresh, without the anchor its earlier attempts spent."""
    return select_inputs(candidates, target, now=now, max_inputs=max_inputs, excluded=excluded)


def merge_without_cap(
    candidates: Sequence[Candidate],
    *,
    now: datetime,
    threshold: int,
    small_below: Decimal,
    max_inputs: int = INPUTS_MAX,
    excluded: Collection[str] = (),
) -> list[Candidate] | None:
    """The merge's cap is not passed on (the default of 100 applies instead)."""
    return plan_merge(
        candidates, now=now, threshold=threshold, small_below=small_below, excluded=excluded
    )


# --- Amounts -------------------------------------------------------------------------------


def parse_rounding(text: object) -> Decimal:
    """Reads any decimal and rounds it to ten places (half-even) instead of refusing it."""
    assert isinstance(text, str | int | Decimal)
    return Decimal(text).quantize(QUANTUM)


def format_at_eight_places(value: Decimal) -> str:
    """Writes ten places, but only the first eight of them are the amount's (the other two are
    always zero): formatting at Bitcoin's scale."""
    return f"{value.quantize(Decimal('1E-8'), rounding=decimal.ROUND_DOWN):f}00"


# --- Limits --------------------------------------------------------------------------------


def over_without_request(
    limits: TierLimits, amount: Decimal, daily: Decimal, monthly: Decimal
) -> list[str]:
    """``compliance._over`` comparing the day's usage with the daily limit without the request
    itself."""
    over = []
    if limits.per_operation is not None and amount > limits.per_operation:
        over.append("per_operation")
    if limits.daily is not None and daily > limits.daily:
        over.append("daily")
    if limits.monthly is not None and monthly + amount > limits.monthly:
        over.append("monthly")
    return over


def over_at_limit(
    limits: TierLimits, amount: Decimal, daily: Decimal, monthly: Decimal
) -> list[str]:
    """``compliance._over`` refusing a request that reaches a limit exactly."""
    over = []
    if limits.per_operation is not None and amount >= limits.per_operation:
        over.append("per_operation")
    if limits.daily is not None and daily + amount >= limits.daily:
        over.append("daily")
    if limits.monthly is not None and monthly + amount >= limits.monthly:
        over.append("monthly")
    return over


def warnings_strictly_above(
    used_daily: Decimal,
    used_monthly: Decimal,
    daily: Decimal | None,
    monthly: Decimal | None,
    threshold: Decimal,
) -> tuple[str, ...]:
    """``exchange.limit_warnings`` warning only above the threshold, not at it."""
    warnings = []
    for name, used, limit in (("daily", used_daily, daily), ("monthly", used_monthly, monthly)):
        if limit is not None and limit > 0 and used > limit * threshold:
            percent = (used * 100 / limit).quantize(Decimal(1), rounding=decimal.ROUND_DOWN)
            warnings.append(f"{name} {percent} %")
    return tuple(warnings)


# --- Rolling windows -----------------------------------------------------------------------

_HOUR_BOUNDS = compliance_windows._hour_bounds
_HourBounds = compliance_windows._HourBounds


def hour_bounds_with_current_hour(now: datetime) -> tuple[_HourBounds, _HourBounds]:
    """``compliance_windows._hour_bounds`` whose last hour range also takes the hour of
    ``now`` from its hour bucket, though that hour's records are summed one by one too: usage
    in the current hour counted twice."""

    def widened(bounds: _HourBounds) -> _HourBounds:
        hour_0, hour_1, days, first_hour, last_hour = bounds
        if hour_1[0] < hour_1[1]:
            hour_1 = (hour_1[0], hour_1[1] + HOUR)
        else:
            hour_0 = (hour_0[0], hour_0[1] + HOUR)
        return hour_0, hour_1, days, first_hour, last_hour

    daily, monthly = _HOUR_BOUNDS(now)
    return widened(daily), widened(monthly)


# --- The Merkle-sum verifier ---------------------------------------------------------------


def verify_hash_only(proof: Proof, root: Root) -> bool:
    """Follows the path to the root hash, but never compares the path's sum with the published
    total."""
    try:
        root_hash, _ = compute_root(
            proof.snapshot_id,
            proof.instrument,
            proof.customer_id,
            proof.nonce,
            proof.units,
            proof.index,
            proof.siblings,
        )
    except ValueError:
        return False
    return root_hash == root.root_hash


def node_hash_without_sums(left: bytes, left_units: int, right: bytes, right_units: int) -> bytes:
    """A node hash over the children's hashes only: a plain Merkle tree, whose hashes commit to
    no sum at all."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def depth_with_one_too_many(leaf_count: int) -> int:
    """``hashing.depth_for`` off by one: ``leaf_count.bit_length()``."""
    return leaf_count.bit_length()


def select_cap_off_by_one(
    candidates: Sequence[Candidate],
    target: Decimal,
    *,
    now: datetime,
    max_inputs: int = INPUTS_MAX,
    excluded: Collection[str] = (),
) -> Selection | None:
    """One input more than the cap allows."""
    return select_inputs(candidates, target, now=now, max_inputs=max_inputs + 1, excluded=excluded)
