"""The KYC registry's rules (sluice.domain.compliance.decide) and its rolling-window limits.

Properties (hypothesis): one customer's random sequence of operations against a random limit
ladder is run through ``usage_in_windows`` + ``decide``, recording only the allowed operations as
the service does. An independent model — integer seconds, sums written out by hand — says which
operations must be allowed, and which tier a denied one needs (brute force over the ladder). At
the end no 24 h or 30-day window of the allowed operations sums above the tier's limit. Times are
drawn on a 6-hour grid, give or take a second, so operations exactly 24 h and 30 days apart (the
windows' half-open edges) come up often.

Examples: each check's error code and reason (status, sanctions, unknown customer, tier 0), which
code wins when several checks fail, the limits' exact boundaries and the windows' edges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.domain.amounts import QUANTUM
from sluice.domain.compliance import (
    ComplianceDecision,
    ComplianceRequest,
    LimitLadder,
    Profile,
    TierLimits,
    UsageRecord,
    check_operation,
    decide,
    usage_in_windows,
)
from sluice.domain.errors import (
    AddressBlacklistedError,
    ComplianceError,
    InsufficientKycTierError,
)

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
DAY_S = 86400
MONTH_S = 30 * DAY_S
GRID_S = 6 * 3600
OPERATIONS = ("withdrawal", "deposit")
ZERO = Decimal(0)


# --- the independent model -----------------------------------------------------------------------

Limit = Decimal | None
Step = tuple[Limit, Limit, Limit]  # per operation, daily, monthly; None: no limit


@dataclass(frozen=True)
class Done:
    """An operation the model allowed, at whole seconds since EPOCH."""

    second: int
    operation: str
    amount: Decimal


def used_in(done: list[Done], operation: str, second: int, window_s: int) -> Decimal:
    """Sum of the allowed ``operation``s at ``t`` with ``second - window_s < t <= second``."""
    total = ZERO
    for item in done:
        if item.operation == operation and second - window_s < item.second <= second:
            total += item.amount
    return total


def fits(step: Step, amount: Decimal, daily: Decimal, monthly: Decimal) -> bool:
    per_operation, daily_limit, monthly_limit = step
    if per_operation is not None and amount > per_operation:
        return False
    if daily_limit is not None and daily + amount > daily_limit:
        return False
    return monthly_limit is None or monthly + amount <= monthly_limit


def ladder_of(steps: Mapping[tuple[int, str], Step]) -> LimitLadder:
    return LimitLadder({key: TierLimits(*step) for key, step in steps.items()})


def step_of(steps: Mapping[tuple[int, str], Step], tier: int, operation: str) -> Step:
    # A pair the ladder does not list may move nothing.
    return steps.get((tier, operation), (ZERO, ZERO, ZERO))


# --- strategies ----------------------------------------------------------------------------------

limits = st.one_of(st.none(), st.integers(0, 60).map(Decimal))
steps_strategy = st.dictionaries(
    st.tuples(st.integers(0, 4), st.sampled_from(OPERATIONS)),
    st.tuples(limits, limits, limits),
    max_size=10,
)
operation_strategy = st.tuples(
    st.integers(0, 200).map(lambda slot: slot * GRID_S),
    st.sampled_from((0, 0, 1, -1)),
    st.sampled_from(OPERATIONS),
    st.integers(1, 120).map(lambda quarters: Decimal(quarters) / 4),
)


def timeline(raw: list[tuple[int, int, str, Decimal]]) -> list[tuple[int, str, Decimal]]:
    return sorted(
        (max(0, slot + jitter), operation, amount) for slot, jitter, operation, amount in raw
    )


def at(second: int) -> datetime:
    return EPOCH + timedelta(seconds=second)


def run(
    steps: Mapping[tuple[int, str], Step], tier: int, operations: list[tuple[int, str, Decimal]]
) -> tuple[list[Done], list[tuple[int, str, Decimal, ComplianceDecision]]]:
    """Decide each operation against the usage of the previously allowed ones, as the service
    does, and check every decision against the model on the way."""
    ladder = ladder_of(steps)
    profile = Profile("c1", tier, "active")
    records: list[UsageRecord] = []
    done: list[Done] = []
    decisions = []
    for index, (second, operation, amount) in enumerate(operations):
        used_daily, used_monthly = usage_in_windows(records, operation, at(second))
        decision = decide(
            ComplianceRequest("c1", check_operation(operation), amount),
            profile,
            ladder=ladder,
            used_daily=used_daily,
            used_monthly=used_monthly,
        )
        model_daily = used_in(done, operation, second, DAY_S)
        model_monthly = used_in(done, operation, second, MONTH_S)
        assert (used_daily, used_monthly) == (model_daily, model_monthly)
        allowed = fits(step_of(steps, tier, operation), amount, model_daily, model_monthly)
        assert decision.allowed == allowed
        if allowed:
            records.append(UsageRecord(f"op-{index}", operation, amount, at(second)))
            done.append(Done(second, operation, amount))
        else:
            needed = [
                candidate
                for candidate in range(tier + 1, 5)
                if fits(step_of(steps, candidate, operation), amount, model_daily, model_monthly)
            ]
            assert decision.code == 21
            assert decision.required_tier == (needed[0] if needed else None)
            assert [check.name for check in decision.failed] == ["limits"]
            error = decision.error()
            assert isinstance(error, InsufficientKycTierError)
            assert error.required_tier == decision.required_tier
        decisions.append((second, operation, amount, decision))
    return done, decisions


# --- properties ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    steps=steps_strategy,
    tier=st.integers(0, 4),
    raw=st.lists(operation_strategy, max_size=40),
)
def test_decisions_follow_the_limits_over_rolling_windows_of_the_allowed_operations(
    steps: dict[tuple[int, str], Step], tier: int, raw: list[tuple[int, int, str, Decimal]]
) -> None:
    run(steps, tier, timeline(raw))


@settings(max_examples=300, deadline=None)
@given(
    steps=steps_strategy,
    tier=st.integers(0, 4),
    raw=st.lists(operation_strategy, max_size=40),
)
def test_allowed_operations_never_exceed_a_limit_in_any_window(
    steps: dict[tuple[int, str], Step], tier: int, raw: list[tuple[int, int, str, Decimal]]
) -> None:
    operations = timeline(raw)
    done, _ = run(steps, tier, operations)
    # A window's sum only grows when an operation enters it, so its largest values are taken at
    # operation times: checking every operation's time covers every window.
    for second, operation, _amount in operations:
        per_operation, daily, monthly = step_of(steps, tier, operation)
        if daily is not None:
            assert used_in(done, operation, second, DAY_S) <= daily
        if monthly is not None:
            assert used_in(done, operation, second, MONTH_S) <= monthly
    for item in done:
        per_operation, _daily, _monthly = step_of(steps, tier, item.operation)
        assert per_operation is None or item.amount <= per_operation


@settings(max_examples=200, deadline=None)
@given(
    tier=st.integers(1, 4),
    raw=st.lists(operation_strategy, max_size=30),
    scale=st.sampled_from((Decimal(10000), Decimal(100000))),
)
def test_the_default_ladder_asks_for_a_higher_tier_whenever_it_refuses(
    tier: int, raw: list[tuple[int, int, str, Decimal]], scale: Decimal
) -> None:
    default = LimitLadder.default()
    steps = {
        key: (value.per_operation, value.daily, value.monthly)
        for key, value in default.limits.items()
    }
    operations = [
        (second, operation, amount * scale) for second, operation, amount in timeline(raw)
    ]
    _, decisions = run(steps, tier, operations)
    for _second, _operation, _amount, decision in decisions:
        if not decision.allowed:
            assert decision.required_tier is None or decision.required_tier > tier


# --- examples ------------------------------------------------------------------------------------

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DEFAULT = LimitLadder.default()
TIER_1_DAILY = Decimal(1_000_000)
TIER_1_MONTHLY = Decimal(10_000_000)


def request(
    amount: Decimal | int = 100, operation: str = "withdrawal", counterparty: str | None = None
) -> ComplianceRequest:
    return ComplianceRequest("c1", check_operation(operation), Decimal(amount), counterparty)


def decide_for(
    profile: Profile | None,
    wanted: ComplianceRequest | None = None,
    *,
    used_daily: Decimal = ZERO,
    used_monthly: Decimal = ZERO,
    customer_listed: str | None = None,
    counterparty_listed: str | None = None,
) -> ComplianceDecision:
    return decide(
        wanted or request(),
        profile,
        ladder=DEFAULT,
        used_daily=used_daily,
        used_monthly=used_monthly,
        customer_listed=customer_listed,
        counterparty_listed=counterparty_listed,
    )


def active(tier: int = 1) -> Profile:
    return Profile("c1", tier, "active")


def test_an_active_customer_within_limits_is_allowed_and_every_check_passes() -> None:
    decision = decide_for(active(), request(counterparty="bob"))
    assert decision.allowed
    assert decision.code == 0
    assert [check.name for check in decision.checks] == [
        "status",
        "sanctions_customer",
        "sanctions_counterparty",
        "limits",
    ]
    assert decision.failed == ()
    assert decision.summary() == "allowed"


def test_a_frozen_customer_is_refused_with_code_20_and_the_reason() -> None:
    decision = decide_for(Profile("c1", 2, "frozen", status_reason="court order 17"))
    assert decision.code == 20
    assert [check.name for check in decision.failed] == ["status"]
    assert decision.failed[0].reason == "customer is frozen (court order 17)"
    error = decision.error()
    assert type(error) is ComplianceError
    assert error.code == 20
    assert "court order 17" in str(error)


def test_a_customer_under_review_is_refused_with_code_20() -> None:
    decision = decide_for(Profile("c1", 2, "under_review"))
    assert decision.code == 20
    assert decision.failed[0].reason == "customer is under compliance review"


def test_a_blacklisted_customer_is_refused_with_code_22() -> None:
    decision = decide_for(Profile("c1", 2, "blacklisted"))
    assert decision.code == 22
    assert isinstance(decision.error(), AddressBlacklistedError)


def test_a_customer_on_a_sanctions_list_is_refused_with_code_22() -> None:
    decision = decide_for(active(), customer_listed="OFAC SDN 1234")
    assert decision.code == 22
    assert decision.failed[0].reason == "customer on a sanctions list: OFAC SDN 1234"


def test_a_listed_counterparty_wins_over_a_limit_breach() -> None:
    decision = decide_for(
        active(0), request(counterparty="mallory"), counterparty_listed="on the OFAC SDN list"
    )
    assert decision.code == 22
    assert [check.name for check in decision.failed] == ["sanctions_counterparty", "limits"]
    assert isinstance(decision.error(), AddressBlacklistedError)


def test_a_frozen_customer_over_a_limit_gets_the_first_failing_code() -> None:
    decision = decide_for(Profile("c1", 0, "frozen"))
    assert decision.code == 20
    assert [check.name for check in decision.failed] == ["status", "limits"]


def test_an_unknown_customer_is_refused_with_code_20() -> None:
    decision = decide_for(None)
    assert decision.code == 20
    assert decision.failed[0].reason == "unknown customer 'c1'"


def test_a_listed_counterparty_wins_even_for_an_unknown_customer() -> None:
    decision = decide_for(
        None, request(counterparty="mallory"), counterparty_listed="on the OFAC SDN list"
    )
    assert decision.code == 22
    assert {check.name for check in decision.failed} == {"customer", "sanctions_counterparty"}


def test_tier_0_may_move_nothing_and_is_asked_for_tier_1() -> None:
    decision = decide_for(active(0), request(1))
    assert decision.code == 21
    assert decision.required_tier == 1
    assert "tier 1 is needed" in decision.failed[0].reason
    error = decision.error()
    assert isinstance(error, InsufficientKycTierError)
    assert error.required_tier == 1


def test_an_amount_no_tier_allows_says_so() -> None:
    decision = decide_for(active(4), request(Decimal(100_000_001)))
    assert decision.code == 21
    assert decision.required_tier is None
    assert "no KYC tier allows it" in decision.failed[0].reason


def test_a_non_positive_amount_is_refused() -> None:
    decision = decide_for(active(), request(0))
    assert decision.code == 20
    assert decision.failed[0].name == "amount"


def test_exactly_the_per_operation_limit_is_allowed_and_one_unit_more_is_not() -> None:
    assert decide_for(active(), request(TIER_1_DAILY)).allowed
    over = decide_for(active(), request(TIER_1_DAILY + QUANTUM))
    assert over.code == 21
    assert over.required_tier == 2
    assert "per_operation limit" in over.failed[0].reason


def test_exactly_the_daily_limit_is_allowed_and_one_unit_more_is_not() -> None:
    used = Decimal(400_000)
    assert decide_for(active(), request(Decimal(600_000)), used_daily=used).allowed
    over = decide_for(active(), request(Decimal(600_000) + QUANTUM), used_daily=used)
    assert over.code == 21
    assert over.required_tier == 2
    assert "daily limit" in over.failed[0].reason
    assert "per_operation" not in over.failed[0].reason


def test_exactly_the_monthly_limit_is_allowed_and_one_unit_more_is_not() -> None:
    used = TIER_1_MONTHLY - 500_000
    assert decide_for(active(), request(500_000), used_monthly=used).allowed
    over = decide_for(active(), request(Decimal(500_000) + QUANTUM), used_monthly=used)
    assert over.code == 21
    assert "monthly limit" in over.failed[0].reason


def usage(operation: str, amount: int, age: timedelta) -> UsageRecord:
    return UsageRecord(f"op-{operation}-{age}", operation, Decimal(amount), NOW - age)


def test_an_operation_exactly_24_h_old_no_longer_counts_in_the_daily_window() -> None:
    records = [usage("withdrawal", 7, timedelta(days=1))]
    assert usage_in_windows(records, "withdrawal", NOW) == (ZERO, Decimal(7))
    just_inside = [usage("withdrawal", 7, timedelta(days=1) - timedelta(microseconds=1))]
    assert usage_in_windows(just_inside, "withdrawal", NOW) == (Decimal(7), Decimal(7))


def test_an_operation_exactly_30_days_old_no_longer_counts_in_the_monthly_window() -> None:
    records = [usage("withdrawal", 7, timedelta(days=30))]
    assert usage_in_windows(records, "withdrawal", NOW) == (ZERO, ZERO)
    just_inside = [usage("withdrawal", 7, timedelta(days=30) - timedelta(microseconds=1))]
    assert usage_in_windows(just_inside, "withdrawal", NOW) == (ZERO, Decimal(7))


def test_an_operation_at_now_counts_and_one_after_now_or_of_another_kind_does_not() -> None:
    records = [
        usage("withdrawal", 3, timedelta(0)),
        usage("withdrawal", 5, -timedelta(seconds=1)),
        usage("deposit", 11, timedelta(hours=1)),
    ]
    assert usage_in_windows(records, "withdrawal", NOW) == (Decimal(3), Decimal(3))


def test_the_day_after_a_full_day_the_customer_may_use_the_daily_limit_again() -> None:
    records = [usage("withdrawal", 1_000_000, timedelta(days=1))]
    used_daily, used_monthly = usage_in_windows(records, "withdrawal", NOW)
    assert decide_for(
        active(), request(TIER_1_DAILY), used_daily=used_daily, used_monthly=used_monthly
    ).allowed
    records = [usage("withdrawal", 1_000_000, timedelta(hours=23, minutes=59, seconds=59))]
    used_daily, used_monthly = usage_in_windows(records, "withdrawal", NOW)
    refused = decide_for(active(), request(1), used_daily=used_daily, used_monthly=used_monthly)
    assert refused.code == 21
    assert refused.required_tier == 2


@pytest.mark.parametrize("threshold", [40, 41])
def test_a_risk_score_at_the_threshold_refuses_with_code_20(threshold: int) -> None:
    decision = decide(
        request(),
        active(),
        ladder=DEFAULT,
        used_daily=ZERO,
        used_monthly=ZERO,
        risk_score=41,
        risk_threshold=threshold,
        risk_flags=("structuring",),
    )
    assert decision.code == 20
    assert decision.failed[0].reason == f"risk score 41 ≥ threshold {threshold} (structuring)"


def test_a_risk_score_under_the_threshold_passes() -> None:
    decision = decide(
        request(),
        active(),
        ladder=DEFAULT,
        used_daily=ZERO,
        used_monthly=ZERO,
        risk_score=41,
        risk_threshold=42,
    )
    assert decision.allowed
    assert decision.checks[-1].name == "risk"
