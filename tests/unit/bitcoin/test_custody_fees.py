"""Payouts' arithmetic (``sluice.domain.custody_fees``): the fee rate from ``estimatesmartfee``,
the dust rule, coin selection, the fee split with or without change, and BIP 125 fee bumps.

Examples pin the rules down; hypothesis properties check that no satoshi is created or lost:
inputs always equal the payouts' outputs plus change plus the fee, shares add up to the fee, a
bump pays more (by rate and by BIP 125's increment) and never takes a payout over its cap.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.domain.chains import CHAINS
from sluice.domain.custody_fees import (
    INCREMENTAL_RELAY_SAT_VB,
    BumpPlan,
    BumpRefused,
    Coin,
    dust_limit_sats,
    fee_for,
    fee_rate_from_estimate,
    plan_bump,
    plan_fees,
    select_coins,
    split_fee,
)

FLOOR, CAP = Decimal(2), Decimal(200)
P2WSH = "0020" + "11" * 32
P2WPKH = "0014" + "22" * 20
P2PKH = "76a914" + "33" * 20 + "88ac"
P2TR = "5120" + "44" * 32


def sizes(with_change: int, without: int) -> Callable[[bool], int]:
    return lambda change: with_change if change else without


def test_fee_rate_converts_coins_per_kvb_and_clamps() -> None:
    assert fee_rate_from_estimate({"feerate": Decimal("0.00010000")}, FLOOR, CAP) == 10
    assert fee_rate_from_estimate({"feerate": Decimal("0.00001234")}, FLOOR, CAP) == FLOOR
    assert fee_rate_from_estimate({"feerate": Decimal("0.00003333")}, FLOOR, CAP) == Decimal(
        "3.333"
    )
    assert fee_rate_from_estimate({"feerate": Decimal("0.5")}, FLOOR, CAP) == CAP


def test_a_young_chain_without_feerate_gets_the_floor() -> None:
    answer = {"errors": ["Insufficient data or no feerate found"], "blocks": 0}
    assert fee_rate_from_estimate(answer, FLOOR, CAP) == FLOOR
    assert fee_rate_from_estimate(None, FLOOR, CAP) == FLOOR
    assert fee_rate_from_estimate({"feerate": -1}, FLOOR, CAP) == FLOOR
    with pytest.raises(ValueError, match="above the cap"):
        fee_rate_from_estimate({}, CAP, FLOOR)


def test_dust_limits_follow_bitcoin_cores_rule() -> None:
    relay = CHAINS["bitcoin"].dust_relay_fee_sat_per_kvb
    assert dust_limit_sats(P2WSH, relay) == CHAINS["bitcoin"].p2wsh_dust_limit_sats == 330
    assert dust_limit_sats(P2WPKH, relay) == 294
    assert dust_limit_sats(P2PKH, relay) == 546
    assert dust_limit_sats(P2TR, relay) == 330
    litecoin = CHAINS["litecoin-regtest"]
    assert dust_limit_sats(P2WSH, litecoin.dust_relay_fee_sat_per_kvb) == 3300


def test_fees_round_up_and_split_evenly() -> None:
    assert fee_for(141, Decimal("2.5")) == 353
    assert fee_for(100, Decimal(2)) == 200
    assert split_fee(10, 3) == [4, 3, 3]
    assert split_fee(0, 2) == [0, 0]
    with pytest.raises(ValueError, match="at least one payout"):
        split_fee(5, 0)


def test_selection_takes_the_largest_coins_first() -> None:
    coins = [Coin("a:0", 5_000), Coin("b:0", 20_000), Coin("c:0", 10_000)]
    assert [c.key for c in select_coins(coins, 25_000, max_inputs=10) or []] == ["b:0", "c:0"]
    assert [c.key for c in select_coins(coins, 20_000, max_inputs=10) or []] == ["b:0"]
    assert select_coins(coins, 35_001, max_inputs=10) is None
    assert select_coins(coins, 30_000, max_inputs=1) is None


def test_change_is_kept_whole_and_the_payouts_pay_the_fee() -> None:
    plan = plan_fees(
        [100_000, 50_000], 200_000, rate=Decimal(2), vsize=sizes(300, 260), dust_limit=330
    )
    assert plan.change_sats == 50_000
    assert plan.fee_sats == 600
    assert plan.shares == (300, 300)


def test_a_change_that_would_be_dust_pays_the_fee_first() -> None:
    plan = plan_fees(
        [100_000, 50_000], 150_200, rate=Decimal(2), vsize=sizes(300, 260), dust_limit=330
    )
    assert plan.change_sats == 0
    assert plan.fee_sats == 520
    assert plan.shares == (160, 160)  # 520 − the 200 left over
    # A leftover above the whole fee still goes to the network (it is under dust).
    plan = plan_fees([100_000], 100_300, rate=Decimal(1), vsize=sizes(200, 150), dust_limit=330)
    assert (plan.shares, plan.fee_sats, plan.change_sats) == ((0,), 300, 0)


def test_a_bump_takes_from_the_change_first() -> None:
    plan = plan_bump(
        old_fee=600,
        old_rate=Decimal(2),
        shares=[300, 300],
        change_sats=50_000,
        vsize=sizes(300, 260),
        factor=Decimal("1.5"),
        fee_max=10_000,
        dust_limit=330,
    )
    assert isinstance(plan, BumpPlan)
    assert plan.fee_sats == 900  # max(300 × 3, 600 + 300 × 1)
    assert plan.change_sats == 49_700
    assert plan.shares == (300, 300)


def test_a_bump_pays_at_least_bip125s_increment() -> None:
    plan = plan_bump(
        old_fee=600,
        old_rate=Decimal(2),
        shares=[300, 300],
        change_sats=50_000,
        vsize=sizes(300, 260),
        factor=Decimal("1.01"),
        fee_max=10_000,
        dust_limit=330,
    )
    assert isinstance(plan, BumpPlan)
    assert plan.fee_sats == 600 + 300 * INCREMENTAL_RELAY_SAT_VB


def test_a_bump_goes_at_least_to_the_market_rate() -> None:
    plan = plan_bump(
        old_fee=600,
        old_rate=Decimal(2),
        shares=[300, 300],
        change_sats=50_000,
        vsize=sizes(300, 260),
        factor=Decimal("1.5"),
        fee_max=10_000,
        dust_limit=330,
        market_rate=Decimal(20),
    )
    assert isinstance(plan, BumpPlan)
    assert (plan.fee_sats, plan.rate) == (6_000, Decimal(20))


def test_a_bump_without_enough_change_drops_it_then_charges_the_payouts() -> None:
    plan = plan_bump(
        old_fee=600,
        old_rate=Decimal(2),
        shares=[300, 300],
        change_sats=400,
        vsize=sizes(300, 260),
        factor=Decimal(3),
        fee_max=10_000,
        dust_limit=330,
    )
    assert isinstance(plan, BumpPlan)
    # Without change: 260 vB at 6 sat/vB = 1,560; the change's 400 covers part of it.
    assert plan.change_sats == 0
    assert plan.fee_sats == 1_560
    assert sum(plan.shares) == 1_560 - 400
    assert plan.shares == (580, 580)


def test_a_bump_over_a_payouts_cap_is_not_made() -> None:
    plan = plan_bump(
        old_fee=600,
        old_rate=Decimal(2),
        shares=[300, 300],
        change_sats=0,
        vsize=sizes(300, 260),
        factor=Decimal(10),
        fee_max=1_000,
        dust_limit=330,
    )
    assert plan == BumpRefused("payout_share")


amounts = st.lists(st.integers(min_value=10_000, max_value=10**8), min_size=1, max_size=20)


@given(
    amounts=amounts,
    extra=st.integers(min_value=0, max_value=10**7),
    rate=st.decimals(min_value=1, max_value=500, places=3),
    base=st.integers(min_value=100, max_value=5_000),
)
def test_fee_plans_conserve_every_satoshi(
    amounts: list[int], extra: int, rate: Decimal, base: int
) -> None:
    inputs = sum(amounts) + extra
    plan = plan_fees(amounts, inputs, rate=rate, vsize=sizes(base + 43, base), dust_limit=330)
    outputs = sum(a - s for a, s in zip(amounts, plan.shares, strict=True))
    assert inputs == outputs + plan.change_sats + plan.fee_sats
    assert plan.change_sats == 0 or plan.change_sats >= 330
    assert plan.fee_sats >= fee_for(plan.vsize, rate)
    assert max(plan.shares) - min(plan.shares) <= 1
    assert all(share >= 0 for share in plan.shares)


@given(
    amounts=amounts,
    extra=st.integers(min_value=0, max_value=10**6),
    rate=st.decimals(min_value=1, max_value=100, places=2),
    factor=st.decimals(min_value=1, max_value=4, places=2),
    fee_max=st.integers(min_value=1_000, max_value=100_000),
    market=st.decimals(min_value=0, max_value=300, places=1),
    rate_max=st.decimals(min_value=1, max_value=400, places=1),
)
def test_bumps_pay_more_conserve_satoshis_and_respect_the_cap(
    amounts: list[int],
    extra: int,
    rate: Decimal,
    factor: Decimal,
    fee_max: int,
    market: Decimal,
    rate_max: Decimal,
) -> None:
    inputs = sum(amounts) + extra
    vsize = sizes(400 + 43 * len(amounts), 357 + 43 * len(amounts))
    first = plan_fees(amounts, inputs, rate=rate, vsize=vsize, dust_limit=330)
    old_rate = Decimal(first.fee_sats) / first.vsize
    plan = plan_bump(
        old_fee=first.fee_sats,
        old_rate=old_rate,
        shares=first.shares,
        change_sats=first.change_sats,
        vsize=vsize,
        factor=factor,
        fee_max=max(fee_max, max(first.shares)),
        dust_limit=330,
        market_rate=market,
        rate_max=rate_max,
    )
    if isinstance(plan, BumpRefused):
        return
    outputs = sum(a - s for a, s in zip(amounts, plan.shares, strict=True))
    assert inputs == outputs + plan.change_sats + plan.fee_sats
    assert plan.fee_sats >= first.fee_sats + plan.vsize * INCREMENTAL_RELAY_SAT_VB
    wanted = fee_for(plan.vsize, max(old_rate * factor, market))
    assert plan.fee_sats >= min(wanted, int(plan.vsize * rate_max))
    assert plan.fee_sats <= plan.vsize * rate_max
    assert max(plan.shares) <= max(fee_max, max(first.shares))
    assert all(new >= old for new, old in zip(plan.shares, first.shares, strict=True))
    assert plan.change_sats == 0 or plan.change_sats >= 330


@given(
    coins=st.lists(st.integers(min_value=1, max_value=10**8), min_size=0, max_size=30),
    target=st.integers(min_value=1, max_value=10**9),
)
def test_selection_reaches_the_target_whenever_the_coins_can(coins: list[int], target: int) -> None:
    pool = [Coin(f"{n:064x}:0", amount) for n, amount in enumerate(coins)]
    chosen = select_coins(pool, target, max_inputs=len(pool) or 1)
    if sum(coins) < target:
        assert chosen is None
        return
    assert chosen is not None
    assert sum(c.amount_sats for c in chosen) >= target
    # Fewest coins: dropping the smallest chosen one falls short.
    assert sum(c.amount_sats for c in chosen[:-1]) < target


def _bump(
    old_fee: int, old_rate: Decimal, change_sats: int, factor: str = "1.5", **more: object
) -> object:
    return plan_bump(
        old_fee=old_fee,
        old_rate=old_rate,
        shares=[300, 300],
        change_sats=change_sats,
        vsize=sizes(300, 260),
        factor=Decimal(factor),
        fee_max=100_000,
        dust_limit=330,
        **more,  # type: ignore[arg-type]
    )


def test_a_bump_never_goes_over_the_fee_rate_cap() -> None:
    """The rate a bump asks for is held at ``rate_max``; once the old fee plus BIP 125's
    increment is over it, no bump is made at all (with change or without)."""
    plan = _bump(12_000, Decimal(40), 500_000, rate_max=Decimal(50))
    assert isinstance(plan, BumpPlan)
    assert (plan.fee_sats, plan.rate) == (15_000, Decimal(50))  # not 60 sat/vB
    assert _bump(15_000, Decimal(50), 500_000, rate_max=Decimal(50)) == BumpRefused("rate_max")
    assert _bump(12_900, Decimal("49.6"), 0, rate_max=Decimal(50)) == BumpRefused("rate_max")
    # Without a cap the same bump goes on.
    assert isinstance(_bump(15_000, Decimal(50), 500_000), BumpPlan)


def test_a_bump_keeps_each_payout_above_its_dust_limit() -> None:
    """Without change the payouts pay the extra fee: 780 sats each here, which the second payout
    cannot pay and keep its output above dust (its limit is 700)."""
    plan = _bump(600, Decimal(2), 0, "3")
    assert isinstance(plan, BumpPlan) and plan.shares == (780, 780)
    refused = _bump(600, Decimal(2), 0, "3", share_max=[10_000, 700])
    assert refused == BumpRefused("payout_share")
