"""Risk scoring (sluice.domain.risk): the four rules, the score and the rules' configuration.

Each rule is shown firing and not firing at every boundary it has (counts, amounts, bands and
half-open windows), on small hand-built histories with rules tightened so the cases stay short.
Then the score (weights add up, a weight of 0 turns a rule off, the cap), the threshold, the
validation of :class:`RiskRules` and :meth:`RiskRules.from_mapping`, and how an assessment feeds
:func:`sluice.domain.compliance.decide`.
"""

from __future__ import annotations

import dataclasses
import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from sluice.domain.compliance import (
    NOTHING,
    ComplianceRequest,
    LimitLadder,
    Profile,
    TierLimits,
    UsageRecord,
    decide,
)
from sluice.domain.errors import InvalidInputError
from sluice.domain.risk import SCORE_MAX, RiskAssessment, RiskFlag, RiskRules, assess_risk

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
HOUR_S = 3600
DAY_S = 86400
_ids = itertools.count()


def record(
    operation: str, amount: str | int, seconds_ago: float, counterparty: str | None = None
) -> UsageRecord:
    return UsageRecord(
        f"op-{next(_ids)}",
        operation,
        Decimal(amount),
        NOW - timedelta(seconds=seconds_ago),
        counterparty,
    )


def current(operation: str, amount: str | int, counterparty: str | None = None) -> UsageRecord:
    return record(operation, amount, 0, counterparty)


def assess(
    history: list[UsageRecord],
    operation: UsageRecord,
    rules: RiskRules | None = None,
    limits: TierLimits | None = None,
) -> RiskAssessment:
    return assess_risk(history, operation, rules=rules or RiskRules(), limits=limits, now=NOW)


def names(
    history: list[UsageRecord],
    operation: UsageRecord,
    *,
    rules: RiskRules | None = None,
    limits: TierLimits | None = None,
) -> tuple[str, ...]:
    return assess(history, operation, rules, limits).flag_names()


# --- velocity ------------------------------------------------------------------------------------

VELOCITY = RiskRules(velocity_count_max=3, velocity_window_s=HOUR_S)


def test_velocity_fires_when_operations_in_the_window_with_the_current_exceed_the_max() -> None:
    history = [record("deposit", 1, 10), record("transfer", 1, 20), record("withdrawal", 1, 30)]
    assessment = assess(history, current("deposit", 1), VELOCITY)
    assert assessment.flag_names() == ("velocity",)
    assert assessment.score == VELOCITY.velocity_weight
    assert "4 operations within 1 h" in assessment.flags[0].detail


def test_velocity_does_not_fire_at_exactly_the_maximum() -> None:
    history = [record("deposit", 1, 10), record("deposit", 1, 20)]
    assert names(history, current("deposit", 1), rules=VELOCITY) == ()


def test_velocity_window_is_half_open_an_operation_exactly_one_window_old_does_not_count() -> None:
    recent = [record("deposit", 1, 10), record("deposit", 1, 20)]
    assert (
        names([*recent, record("deposit", 1, HOUR_S)], current("deposit", 1), rules=VELOCITY) == ()
    )
    assert names(
        [*recent, record("deposit", 1, HOUR_S - 1)], current("deposit", 1), rules=VELOCITY
    ) == ("velocity",)


def test_records_after_now_are_not_recent_activity() -> None:
    history = [record("deposit", 1, 10), record("deposit", 1, 20), record("deposit", 1, -5)]
    assert names(history, current("deposit", 1), rules=VELOCITY) == ()


# --- structuring ---------------------------------------------------------------------------------

# Band just under the per-operation limit: [900, 1000); just under the daily limit: [4500, 5000).
LIMITS = TierLimits(Decimal(1000), Decimal(5000), Decimal(100000))
STRUCTURING = RiskRules(structuring_count_min=3, structuring_window_s=7 * DAY_S)


def test_structuring_fires_on_repeated_amounts_just_under_the_per_operation_limit() -> None:
    history = [record("deposit", "900", DAY_S), record("deposit", "999.99", 2 * DAY_S)]
    assessment = assess(history, current("deposit", 950), STRUCTURING, LIMITS)
    assert assessment.flag_names() == ("structuring",)
    assert assessment.score == STRUCTURING.structuring_weight
    assert assessment.flags[0].detail == "3 deposit amounts within 10 % under a limit in 7 days"


def test_structuring_needs_the_minimum_count_including_the_current_operation() -> None:
    history = [record("deposit", "950", DAY_S)]
    assert names(history, current("deposit", 950), rules=STRUCTURING, limits=LIMITS) == ()


def test_structuring_band_includes_its_lower_edge_and_excludes_the_limit_itself() -> None:
    at_edge = [record("deposit", "900", DAY_S), record("deposit", "950", DAY_S)]
    below_edge = [record("deposit", "899.99", DAY_S), record("deposit", "950", DAY_S)]
    at_limit = [record("deposit", "1000", DAY_S), record("deposit", "950", DAY_S)]
    now = current("deposit", 950)
    assert names(at_edge, now, rules=STRUCTURING, limits=LIMITS) == ("structuring",)
    assert names(below_edge, now, rules=STRUCTURING, limits=LIMITS) == ()
    assert names(at_limit, now, rules=STRUCTURING, limits=LIMITS) == ()


def test_structuring_does_not_fire_when_the_current_amount_is_outside_the_band() -> None:
    history = [record("deposit", "950", hours * HOUR_S) for hours in range(1, 6)]
    for amount in ("899.99", "1000", "100"):
        assert names(history, current("deposit", amount), rules=STRUCTURING, limits=LIMITS) == ()


def test_structuring_fires_on_amounts_just_under_the_daily_limit() -> None:
    daily_only = TierLimits(None, Decimal(5000), None)
    history = [record("deposit", "4500", DAY_S), record("deposit", "4999", 3 * DAY_S)]
    assert names(history, current("deposit", 4800), rules=STRUCTURING, limits=daily_only) == (
        "structuring",
    )
    assert names(history, current("deposit", 950), rules=STRUCTURING, limits=daily_only) == ()


def test_structuring_counts_only_the_same_operation_within_the_window() -> None:
    other_operation = [record("withdrawal", "950", DAY_S), record("withdrawal", "950", DAY_S)]
    window_edge = [record("deposit", "950", DAY_S), record("deposit", "950", 7 * DAY_S)]
    inside = [record("deposit", "950", DAY_S), record("deposit", "950", 7 * DAY_S - 1)]
    now = current("deposit", 950)
    assert names(other_operation, now, rules=STRUCTURING, limits=LIMITS) == ()
    assert names(window_edge, now, rules=STRUCTURING, limits=LIMITS) == ()
    assert names(inside, now, rules=STRUCTURING, limits=LIMITS) == ("structuring",)


def test_structuring_cannot_fire_without_limits_or_with_zero_or_no_limits() -> None:
    history = [record("deposit", "950", DAY_S), record("deposit", "950", DAY_S)]
    now = current("deposit", 950)
    for limits in (None, NOTHING, TierLimits(None, None, Decimal(1000))):
        assert names(history, now, rules=STRUCTURING, limits=limits) == ()


# --- smurfing ------------------------------------------------------------------------------------

# Five deposits of 99 (sum 495); 80 % of them is 396.
SMURFING = RiskRules(
    small_deposit_below=Decimal(100),
    small_deposits_min=5,
    small_deposits_window_s=DAY_S,
    withdrawal_share_min=Decimal("0.8"),
    new_counterparty_weight=0,
)


def small_deposits(count: int, amount: str = "99") -> list[UsageRecord]:
    return [record("deposit", amount, (index + 1) * HOUR_S) for index in range(count)]


def test_smurfing_fires_when_a_withdrawal_takes_most_of_many_small_deposits() -> None:
    assessment = assess(small_deposits(5), current("withdrawal", 396), SMURFING)
    assert assessment.flag_names() == ("smurfing",)
    assert assessment.score == SMURFING.smurfing_weight
    detail = assessment.flags[0].detail
    assert detail == "withdrawal of 396 after 5 deposits below 100 totalling 495 in 24 h"


def test_smurfing_does_not_fire_when_the_withdrawal_takes_less_than_the_share() -> None:
    assert names(small_deposits(5), current("withdrawal", "395.99"), rules=SMURFING) == ()


def test_smurfing_needs_the_minimum_number_of_small_deposits() -> None:
    assert names(small_deposits(4), current("withdrawal", 1000), rules=SMURFING) == ()


def test_a_deposit_at_the_small_deposit_amount_is_not_small() -> None:
    history = [*small_deposits(4), record("deposit", "100", HOUR_S)]
    assert names(history, current("withdrawal", 1000), rules=SMURFING) == ()
    history = [*small_deposits(4), record("deposit", "99.99", HOUR_S)]
    assert names(history, current("withdrawal", 1000), rules=SMURFING) == ("smurfing",)


def test_smurfing_ignores_deposits_exactly_one_window_old() -> None:
    history = [*small_deposits(4), record("deposit", "99", DAY_S)]
    assert names(history, current("withdrawal", 1000), rules=SMURFING) == ()
    history = [*small_deposits(4), record("deposit", "99", DAY_S - 1)]
    assert names(history, current("withdrawal", 1000), rules=SMURFING) == ("smurfing",)


def test_smurfing_only_judges_withdrawals() -> None:
    for operation in ("transfer", "deposit", "exchange", "burn"):
        assert names(small_deposits(6), current(operation, 1000), rules=SMURFING) == ()


# --- new counterparty ----------------------------------------------------------------------------

NEW_COUNTERPARTY = RiskRules(new_counterparty_amount_min=Decimal(1000))


def test_new_counterparty_fires_for_a_withdrawal_at_the_minimum_amount() -> None:
    history = [record("withdrawal", 10, DAY_S, "alice")]
    assessment = assess(history, current("withdrawal", 1000, "bob"), NEW_COUNTERPARTY)
    assert assessment.flag_names() == ("new_counterparty",)
    assert assessment.score == NEW_COUNTERPARTY.new_counterparty_weight
    assert assessment.flags[0].detail == "withdrawal of 1000 to new counterparty bob"


def test_new_counterparty_does_not_fire_below_the_minimum_amount() -> None:
    assert names([], current("transfer", "999.99", "bob"), rules=NEW_COUNTERPARTY) == ()
    assert names([], current("transfer", "1000", "bob"), rules=NEW_COUNTERPARTY) == (
        "new_counterparty",
    )


def test_a_counterparty_seen_in_any_earlier_operation_is_not_new() -> None:
    history = [record("deposit", 5, 20 * DAY_S, "bob")]
    assert names(history, current("withdrawal", 5000, "bob"), rules=NEW_COUNTERPARTY) == ()


def test_new_counterparty_only_judges_withdrawals_and_transfers_with_a_counterparty() -> None:
    assert names([], current("deposit", 5000, "bob"), rules=NEW_COUNTERPARTY) == ()
    assert names([], current("exchange", 5000, "bob"), rules=NEW_COUNTERPARTY) == ()
    assert names([], current("withdrawal", 5000), rules=NEW_COUNTERPARTY) == ()


# --- score and threshold -------------------------------------------------------------------------


def everything_history() -> list[UsageRecord]:
    """Small deposits and near-limit withdrawals: every rule fires for a withdrawal of 950."""
    return [
        *small_deposits(5, "99"),
        record("withdrawal", "950", 2 * DAY_S, "alice"),
        record("withdrawal", "960", 3 * DAY_S, "alice"),
    ]


def test_the_score_is_the_sum_of_the_fired_rules_weights_in_rule_order() -> None:
    rules = RiskRules(
        velocity_count_max=7,
        velocity_weight=10,
        structuring_weight=20,
        small_deposit_below=Decimal(100),
        smurfing_weight=30,
        new_counterparty_amount_min=Decimal(1),
        new_counterparty_weight=15,
        velocity_window_s=4 * DAY_S,  # sees all 7 earlier operations: 8 with the current one
    )
    assessment = assess(everything_history(), current("withdrawal", 950, "bob"), rules, LIMITS)
    assert assessment.flag_names() == ("velocity", "structuring", "smurfing", "new_counterparty")
    assert assessment.score == 10 + 20 + 30 + 15
    assert [flag.weight for flag in assessment.flags] == [10, 20, 30, 15]


def test_the_score_is_capped_at_the_maximum() -> None:
    rules = RiskRules(
        velocity_count_max=7,
        velocity_window_s=4 * DAY_S,
        small_deposit_below=Decimal(100),
        new_counterparty_amount_min=Decimal(1),
    )
    assessment = assess(everything_history(), current("withdrawal", 950, "bob"), rules, LIMITS)
    assert len(assessment.flags) == 4
    assert sum(flag.weight for flag in assessment.flags) > SCORE_MAX
    assert assessment.score == SCORE_MAX
    assert assessment.over_threshold


def test_a_rule_with_weight_zero_is_off() -> None:
    rules = dataclasses.replace(SMURFING, smurfing_weight=0)
    assessment = assess(small_deposits(5), current("withdrawal", 1000), rules)
    assert assessment == RiskAssessment(0, (), rules.threshold)


def test_the_customer_is_over_the_threshold_from_a_score_equal_to_it() -> None:
    at = RiskRules(threshold=50, smurfing_weight=50, new_counterparty_weight=0)
    above = dataclasses.replace(at, threshold=51)
    assert assess(small_deposits(5), current("withdrawal", 1000), at).over_threshold
    assessment = assess(small_deposits(5), current("withdrawal", 1000), above)
    assert assessment.score == 50
    assert not assessment.over_threshold


def test_quiet_activity_scores_zero() -> None:
    history = [record("deposit", 500, DAY_S, "alice"), record("withdrawal", 300, HOUR_S, "alice")]
    assessment = assess(history, current("withdrawal", 100, "alice"), limits=LIMITS)
    assert assessment.score == 0
    assert assessment.flags == ()
    assert not assessment.over_threshold


def test_by_default_no_single_rule_reaches_the_threshold_but_two_strong_ones_do() -> None:
    rules = RiskRules()
    weights = [
        rules.velocity_weight,
        rules.structuring_weight,
        rules.smurfing_weight,
        rules.new_counterparty_weight,
    ]
    assert all(weight < rules.threshold for weight in weights)
    assert rules.velocity_weight + rules.structuring_weight >= rules.threshold
    assert rules.smurfing_weight + rules.new_counterparty_weight >= rules.threshold


def test_an_assessment_reads_as_a_dict_for_the_audit_trail() -> None:
    assessment = RiskAssessment(50, (RiskFlag("smurfing", 50, "why"),), 50)
    assert assessment.as_dict() == {
        "score": 50,
        "threshold": 50,
        "over_threshold": True,
        "flags": [{"name": "smurfing", "weight": 50, "detail": "why"}],
    }


def test_an_assessment_over_the_threshold_denies_the_operation_with_its_flags() -> None:
    rules = RiskRules(threshold=50, small_deposit_below=Decimal(100))
    assessment = assess(small_deposits(5), current("withdrawal", 100000, "bob"), rules)
    decision = decide(
        ComplianceRequest("c1", "withdrawal", Decimal(100000), "bob"),
        Profile("c1", 2, "active"),
        ladder=LimitLadder.default(),
        used_daily=Decimal(0),
        used_monthly=Decimal(0),
        risk_score=assessment.score,
        risk_threshold=assessment.threshold,
        risk_flags=assessment.flag_names(),
    )
    assert decision.code == 20
    assert decision.risk_flags == ("smurfing", "new_counterparty")
    assert [check.name for check in decision.failed] == ["risk"]
    assert "smurfing, new_counterparty" in decision.failed[0].reason


# --- rules' configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("threshold", 0),
        ("threshold", SCORE_MAX + 1),
        ("velocity_weight", -1),
        ("structuring_weight", -5),
        ("smurfing_weight", SCORE_MAX + 1),
        ("new_counterparty_weight", -1),
        ("velocity_count_max", 0),
        ("structuring_count_min", 0),
        ("small_deposits_min", -1),
        ("velocity_window_s", 0),
        ("structuring_window_s", 31 * DAY_S),
        ("small_deposits_window_s", float("nan")),
        ("structuring_band", Decimal(0)),
        ("structuring_band", Decimal("1.5")),
        ("withdrawal_share_min", Decimal(0)),
        ("small_deposit_below", Decimal(-1)),
        ("new_counterparty_amount_min", Decimal("-0.01")),
        ("new_counterparty_amount_min", Decimal("Infinity")),
        ("velocity_weight", True),
        ("threshold", 70.0),
        ("structuring_band", 0.1),
    ],
)
def test_rules_out_of_range_are_refused_naming_the_field(name: str, value: object) -> None:
    with pytest.raises(InvalidInputError, match=name):
        RiskRules(**{name: value})  # type: ignore[arg-type]


def test_rules_at_the_edges_of_their_ranges_are_accepted() -> None:
    rules = RiskRules(
        threshold=SCORE_MAX,
        velocity_weight=0,
        velocity_count_max=1,
        velocity_window_s=1,
        structuring_window_s=30 * DAY_S,
        structuring_band=Decimal(1),
        new_counterparty_amount_min=Decimal(0),
    )
    assert rules.threshold == SCORE_MAX


def test_rules_from_an_empty_mapping_are_the_defaults() -> None:
    assert RiskRules.from_mapping({}) == RiskRules()


def test_rules_from_a_mapping_read_text_and_numbers() -> None:
    rules = RiskRules.from_mapping(
        {
            "threshold": "60",
            "velocity_window_s": "1800",
            "velocity_count_max": 10,
            "structuring_band": 0.05,
            "small_deposit_below": "2500.50",
            "withdrawal_share_min": 1,
            "small_deposits_window_s": 43200,
        }
    )
    assert rules.threshold == 60
    assert rules.velocity_window_s == 1800.0
    assert rules.velocity_count_max == 10
    assert rules.structuring_band == Decimal("0.05")
    assert rules.small_deposit_below == Decimal("2500.50")
    assert rules.withdrawal_share_min == Decimal(1)
    assert rules.small_deposits_window_s == 43200.0
    assert rules.smurfing_weight == RiskRules().smurfing_weight


def test_every_rule_can_be_configured_from_text() -> None:
    defaults = RiskRules()
    text = {
        field.name: str(getattr(defaults, field.name)) for field in dataclasses.fields(defaults)
    }
    assert RiskRules.from_mapping(text) == defaults


def test_unknown_rules_in_a_mapping_are_refused_naming_each_of_them() -> None:
    with pytest.raises(
        InvalidInputError, match=r"unknown risk rule\(s\) threshhold, velocity_limit;"
    ):
        RiskRules.from_mapping({"velocity_limit": 3, "threshold": 50, "threshhold": 50})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("threshold", "seventy"),
        ("threshold", "70.5"),
        ("velocity_weight", 1.5),
        ("velocity_count_max", None),
        ("smurfing_weight", False),
        ("velocity_window_s", "an hour"),
        ("velocity_window_s", [3600]),
        ("structuring_band", "ten percent"),
        ("structuring_band", "NaN"),
        ("small_deposit_below", None),
        ("threshold", "-5"),
    ],
)
def test_rules_from_a_mapping_with_bad_values_are_refused_naming_the_field(
    name: str, value: object
) -> None:
    with pytest.raises(InvalidInputError, match=name):
        RiskRules.from_mapping({name: value})


def test_a_history_in_time_order_gives_the_same_assessment_in_order() -> None:
    """``in_order`` (a session's slice: in time order, nothing after now) finds the velocity
    window by halving; every rule scores as it does testing each record."""
    rules = RiskRules(velocity_count_max=3, structuring_count_min=2, small_deposits_min=2)
    limits = TierLimits(Decimal(1000), Decimal(1000), None)
    ages = (0, 1, HOUR_S - 1, HOUR_S, HOUR_S + 1, DAY_S, DAY_S + 1, 7 * DAY_S, 7 * DAY_S + 1)
    for size in range(len(ages) + 1):
        for operation, amount in (("deposit", 950), ("withdrawal", 900), ("transfer", 5)):
            history = sorted(
                (record("deposit", 950 - i, age, "cp") for i, age in enumerate(ages[:size])),
                key=lambda item: item.occurred_at,
            )
            now = current(operation, amount, "other")
            plain = assess_risk(history, now, rules=rules, limits=limits, now=NOW)
            fast = assess_risk(history, now, rules=rules, limits=limits, now=NOW, in_order=True)
            assert fast == plain
