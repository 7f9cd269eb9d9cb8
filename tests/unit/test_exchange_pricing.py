"""The exchange's arithmetic and its ``[exchange]`` section, apart from any database: the depth
curve's interpolation, rounding against the customer (no unit invented), the balanced journal
entry, the 80 % warnings, and the section's checks at load."""

from __future__ import annotations

from decimal import Context, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sluice.config import ExchangeConfig
from sluice.domain.amounts import QUANTUM
from sluice.domain.errors import InvalidInputError
from sluice.domain.exchange import (
    DepthCurve,
    DepthPoint,
    inverse_rate,
    limit_warnings,
    minimum_received,
    price_sale,
    swap_transaction,
)
from sluice.domain.journal import balance_change
from sluice.domain.ledger import InstrumentId

D = Decimal
EXACT = Context(prec=80)  # wide enough that the reference computation is exact
A = InstrumentId("a::1", "A")
B = InstrumentId("b::1", "B")
CURVE = DepthCurve((DepthPoint(D(1000), D("0.001")), DepthPoint(D(5000), D("0.02"))))


def test_the_depth_curve_is_linear_between_its_points_and_flat_after() -> None:
    assert CURVE.impact(D(0)) == 0
    assert CURVE.impact(D(500)) == D("0.0005")
    assert CURVE.impact(D(1000)) == D("0.001")
    assert CURVE.impact(D(3000)) == D("0.0105")
    assert CURVE.impact(D(10**9)) == D("0.02")
    assert DepthCurve().impact(D(10**9)) == 0


def test_a_depth_curve_that_descends_or_reaches_half_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        DepthCurve((DepthPoint(D(10), D("0.01")), DepthPoint(D(5), D("0.02"))))
    with pytest.raises(InvalidInputError):
        DepthCurve((DepthPoint(D(10), D("0.02")), DepthPoint(D(20), D("0.01"))))
    with pytest.raises(InvalidInputError):
        DepthCurve((DepthPoint(D(10), D("0.5")),))


@given(
    sell=st.decimals(min_value=D("0.0000000001"), max_value=D(10**9), places=10),
    rate=st.decimals(min_value=D("0.00000001"), max_value=D(10**6), places=8),
    impact=st.decimals(min_value=D(0), max_value=D("0.49"), places=6),
    fee_rate=st.decimals(min_value=D(0), max_value=D("0.05"), places=4),
)
def test_a_sale_never_invents_a_unit_and_its_entry_balances(
    sell: Decimal, rate: Decimal, impact: Decimal, fee_rate: Decimal
) -> None:
    pricing = price_sale(sell, rate, impact, fee_rate, "oracle")
    exact = EXACT.multiply(EXACT.multiply(sell, rate), 1 - impact)
    assert pricing.gross <= exact
    assert exact - pricing.gross < QUANTUM
    assert pricing.fee >= EXACT.multiply(pricing.gross, fee_rate)
    assert pricing.received + pricing.fee == pricing.gross
    for amount in (pricing.gross, pricing.fee, pricing.received):
        assert amount == amount.quantize(QUANTUM)
    if pricing.received > 0:
        transaction = swap_transaction("q-1", "c", A, B, sell, pricing)  # asserts the balance
        moved = {
            (p.account.name, p.account.instrument.id): balance_change(p.account, p.amount)
            for p in transaction.postings
        }
        assert moved[("customer:c", "A")] == -sell
        assert moved.get(("customer:c", "B"), D(0)) == pricing.received


def test_an_inverse_rate_and_the_minimum_round_down() -> None:
    assert inverse_rate(D(3)) == D("0.333333333333333333")
    assert minimum_received(D("100.0000000001"), D("0.005")) == D("99.5000000000")


def test_a_warning_names_each_limit_used_to_80_percent() -> None:
    threshold = D("0.8")
    assert limit_warnings(D(799), D(10), D(1000), D(2000), threshold) == ()
    assert limit_warnings(D(800), D(1750), D(1000), D(2000), threshold) == (
        "daily 80 %",
        "monthly 87 %",
    )
    assert limit_warnings(D(10**9), D(10**9), None, None, threshold) == ()


def test_the_exchange_section_resolves_pairs_both_ways_and_checks_them() -> None:
    config = ExchangeConfig.model_validate(
        {
            "pairs": [{"sell": "ISTSI", "buy": "Amulet", "oracle_pair": "ISTSI/AMULET"}],
            "depth_curve": [{"amount": "1000", "impact": "0.001"}],
        }
    )
    settings = config.settings()
    assert settings.oracle_pair("ISTSI", "Amulet") == ("ISTSI/AMULET", False)
    assert settings.oracle_pair("Amulet", "ISTSI") == ("ISTSI/AMULET", True)
    assert settings.oracle_pair("ISTSI", "Other") is None
    assert (settings.fee_rate, settings.fallback_fee_rate) == (D("0.003"), D("0.005"))
    assert settings.depth_curve.impact(D(500)) == D("0.0005")
    for bad in (
        {"pairs": [{"sell": "A", "buy": "A", "oracle_pair": "A/B"}]},
        {
            "pairs": [
                {"sell": "A", "buy": "B", "oracle_pair": "A/B"},
                {"sell": "B", "buy": "A", "oracle_pair": "B/A"},
            ]
        },
        {"depth_curve": [{"amount": "10", "impact": "0.02"}, {"amount": "5", "impact": "0.03"}]},
        {"fee_rate": "0.5"},
    ):
        with pytest.raises(ValidationError):
            ExchangeConfig.model_validate(bad)
