"""Coin selection for withdrawals: which holdings a withdrawal spends.

Examples for each strategy (exact, branch and bound, fallback), locks, reservations, the input
cap, insufficient funds and bad arguments; hypothesis properties on random pools (the invariants
of every answer, when ``None`` is allowed, independence from the candidates' order, and that the
search finds a changeless set whenever one exists in a small pool); selection around a retry's
anchor (examples and a property: the anchor is always an input, the answer is otherwise valid and
exists whenever the anchor plus the largest others cover the target); merge and split planning;
and a smoke run of the selection benchmark (no timing assertions).
"""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.bench.selection import measure_selection
from sluice.domain.amounts import from_units
from sluice.domain.coin_selection import (
    INPUTS_MAX,
    Candidate,
    Selection,
    plan_merge,
    plan_split,
    select_around,
    select_inputs,
    spendable,
)
from sluice.domain.errors import InvalidAmountError, InvalidInputError

NOW = datetime(2025, 1, 1, tzinfo=UTC)
PAST = NOW - timedelta(hours=1)
FUTURE = NOW + timedelta(hours=1)


def holding(
    contract_id: str,
    amount: str | int | Decimal,
    *,
    locked: bool = False,
    locked_until: datetime | None = None,
) -> Candidate:
    return Candidate(contract_id, Decimal(amount), locked_until, locked)


def pool_of(*amounts: str | int) -> list[Candidate]:
    return [holding(f"c{index:03d}", amount) for index, amount in enumerate(amounts)]


def ids(selection: Selection | None) -> list[str]:
    assert selection is not None
    return [c.contract_id for c in selection.inputs]


# --- exact ---------------------------------------------------------------------------------------


def test_exact_match_takes_the_single_holding_of_the_target() -> None:
    pool = [holding("z", 5), holding("b", 10), holding("a", "10.0000000000"), holding("y", 20)]
    selection = select_inputs(pool, Decimal(10), now=NOW)
    assert selection is not None
    assert selection.strategy == "exact"
    assert ids(selection) == ["a"]  # of equal amounts, the smallest contract id
    assert selection.total == Decimal(10)
    assert selection.change == 0


def test_exact_match_does_not_depend_on_the_order() -> None:
    pool = [holding(f"h{i}", 7) for i in range(5)] + [holding("big", 100)]
    for seed in range(5):
        shuffled = pool[:]
        random.Random(seed).shuffle(shuffled)
        assert ids(select_inputs(shuffled, Decimal(7), now=NOW)) == ["h0"]


# --- branch and bound ----------------------------------------------------------------------------


def test_branch_and_bound_finds_a_changeless_pair_among_decoys() -> None:
    pool = pool_of(3, "4.5", 11, 7, 25, "0.25")
    selection = select_inputs(pool, Decimal(10), now=NOW)
    assert selection is not None
    assert selection.strategy == "branch_and_bound"
    assert sorted(c.amount for c in selection.inputs) == [Decimal(3), Decimal(7)]
    assert selection.total == Decimal(10)
    assert selection.change == 0
    # Largest first, as the search takes them.
    assert [c.amount for c in selection.inputs] == [Decimal(7), Decimal(3)]


def test_branch_and_bound_finds_a_changeless_triple() -> None:
    pool = pool_of(8, "1.5", "0.5", "0.7", 30, "9.9")
    selection = select_inputs(pool, Decimal(10), now=NOW)
    assert selection is not None
    assert selection.strategy == "branch_and_bound"
    assert sorted(c.amount for c in selection.inputs) == [Decimal("0.5"), Decimal("1.5"), 8]
    assert selection.change == 0


def test_branch_and_bound_with_fine_grained_amounts_finds_a_pair_in_a_large_pool() -> None:
    rng = random.Random(7)
    pool = [holding(f"c{i:04d}", from_units(rng.randrange(1, 10**12))) for i in range(2_000)]
    target = pool[10].amount + pool[1_500].amount
    selection = select_inputs(pool, target, now=NOW)
    assert selection is not None
    assert selection.strategy == "branch_and_bound"
    assert len(selection.inputs) == 2
    assert selection.total == target
    assert selection.change == 0


def test_branch_and_bound_on_round_amounts_in_a_large_pool() -> None:
    rng = random.Random(3)
    pool = [holding(f"c{i:05d}", rng.randrange(1, 1_000)) for i in range(5_000)]
    for target in (Decimal(12_345), Decimal(50_001), Decimal(1_001)):
        selection = select_inputs(pool, target, now=NOW)
        assert selection is not None
        assert selection.strategy in {"exact", "branch_and_bound"}
        assert selection.change == 0
        assert len(selection.inputs) <= INPUTS_MAX


def test_branch_and_bound_skipped_when_the_grain_cannot_reach_the_target() -> None:
    # Only whole amounts: 10.5 cannot be reached exactly, so the largest cover it.
    pool = pool_of(4, 4, 4, 3, 20)
    selection = select_inputs(pool, Decimal("10.5"), now=NOW)
    assert selection is not None
    assert selection.strategy == "fallback"
    assert [c.amount for c in selection.inputs] == [Decimal(20)]
    assert selection.change == Decimal("9.5")


def test_no_search_when_bnb_tries_is_zero() -> None:
    selection = select_inputs(pool_of(3, 7, 11), Decimal(10), now=NOW, bnb_tries=0)
    assert selection is not None
    assert selection.strategy == "fallback"
    assert [c.amount for c in selection.inputs] == [Decimal(11)]
    assert selection.change == 1


# --- fallback ------------------------------------------------------------------------------------


def test_fallback_takes_the_largest_first_and_makes_change() -> None:
    pool = pool_of(3, 4, 6)  # sums: 3 4 6 7 9 10 13, so 12 needs change
    selection = select_inputs(pool, Decimal(12), now=NOW)
    assert selection is not None
    assert selection.strategy == "fallback"
    assert [c.amount for c in selection.inputs] == [Decimal(6), Decimal(4), Decimal(3)]
    assert selection.total == Decimal(13)
    assert selection.change == Decimal(1)


def test_fallback_stops_as_soon_as_the_target_is_covered() -> None:
    pool = pool_of(1, 2, 50, 40)
    selection = select_inputs(pool, Decimal("45.5"), now=NOW)
    assert selection is not None
    assert selection.strategy == "fallback"
    assert [c.amount for c in selection.inputs] == [Decimal(50)]
    assert selection.change == Decimal("4.5")


def test_fallback_ties_go_to_the_smallest_contract_ids() -> None:
    pool = [holding(name, 5) for name in ("e", "b", "d", "a", "c")] + [holding("x", 1)]
    selection = select_inputs(pool, Decimal("12.5"), now=NOW)
    assert selection is not None
    assert selection.strategy == "fallback"
    assert ids(selection) == ["a", "b", "c"]
    assert selection.change == Decimal("2.5")


# --- locks and reservations ----------------------------------------------------------------------


def test_spendable_drops_unexpired_locks() -> None:
    pool = [
        holding("free", 1),
        holding("forever", 1, locked=True),
        holding("expired", 1, locked=True, locked_until=PAST),
        holding("expires-now", 1, locked=True, locked_until=NOW),
        holding("future", 1, locked=True, locked_until=FUTURE),
        holding("future-no-flag", 1, locked_until=FUTURE),
        holding("past-no-flag", 1, locked_until=PAST),
    ]
    assert [c.contract_id for c in spendable(pool, NOW)] == [
        "free",
        "expired",
        "expires-now",
        "past-no-flag",
    ]


def test_locked_holdings_are_never_selected() -> None:
    pool = [
        holding("forever", 10, locked=True),
        holding("future", 10, locked=True, locked_until=FUTURE),
        holding("a", 6),
        holding("b", 5),
    ]
    selection = select_inputs(pool, Decimal(10), now=NOW)
    assert selection is not None
    assert ids(selection) == ["a", "b"]
    assert selection.change == 1


def test_an_expired_lock_no_longer_blocks() -> None:
    pool = [holding("old", 10, locked=True, locked_until=PAST), holding("a", 60)]
    selection = select_inputs(pool, Decimal(10), now=NOW)
    assert selection is not None
    assert selection.strategy == "exact"
    assert ids(selection) == ["old"]


def test_only_locked_funds_is_none() -> None:
    pool = [holding("a", 100, locked=True), holding("b", 100, locked_until=FUTURE)]
    assert select_inputs(pool, Decimal(1), now=NOW) is None


def test_excluded_holdings_are_skipped() -> None:
    pool = [holding("ten", 10), holding("seven", 7), holding("three", 3), holding("big", 50)]
    first = select_inputs(pool, Decimal(10), now=NOW, excluded={"ten"})
    assert first is not None
    assert first.strategy == "branch_and_bound"
    assert ids(first) == ["seven", "three"]
    second = select_inputs(pool, Decimal(10), now=NOW, excluded=["ten", "seven"])
    assert second is not None
    assert ids(second) == ["big"]
    assert select_inputs(pool, Decimal(10), now=NOW, excluded=("ten", "seven", "big")) is None


# --- the input cap -------------------------------------------------------------------------------


def test_more_than_the_input_cap_is_impossible() -> None:
    pool = [holding(f"c{i:03d}", 1) for i in range(150)]
    assert select_inputs(pool, Decimal(120), now=NOW) is None


def test_exactly_the_input_cap() -> None:
    pool = [holding(f"c{i:03d}", 1) for i in reversed(range(150))]
    selection = select_inputs(pool, Decimal(100), now=NOW)
    assert selection is not None
    assert len(selection.inputs) == INPUTS_MAX == 100
    assert selection.change == 0
    assert ids(selection) == [f"c{i:03d}" for i in range(100)]


def test_just_over_the_cap_takes_the_largest() -> None:
    pool = [holding(f"c{i:03d}", 1) for i in range(150)] + [holding("two", 2)]
    selection = select_inputs(pool, Decimal("100.5"), now=NOW)
    assert selection is not None
    assert selection.strategy == "fallback"
    assert len(selection.inputs) == 100
    assert "two" in ids(selection)
    assert selection.change == Decimal("0.5")


def test_a_smaller_cap() -> None:
    pool = pool_of(1, 1, 1, 1, 1)
    assert select_inputs(pool, Decimal(4), now=NOW, max_inputs=3) is None
    selection = select_inputs(pool, Decimal(3), now=NOW, max_inputs=3)
    assert selection is not None
    assert len(selection.inputs) == 3
    assert select_inputs(pool, Decimal(2), now=NOW, max_inputs=1) is None


# --- insufficient funds and bad arguments --------------------------------------------------------


def test_insufficient_funds_is_none() -> None:
    assert select_inputs(pool_of(1, 2, 3), Decimal("6.0000000001"), now=NOW) is None
    assert select_inputs([], Decimal(1), now=NOW) is None


def test_empty_and_negative_holdings_are_ignored() -> None:
    pool = pool_of(0, -5, 4, 6)
    selection = select_inputs(pool, Decimal(10), now=NOW)
    assert selection is not None
    assert sorted(c.amount for c in selection.inputs) == [Decimal(4), Decimal(6)]
    assert select_inputs(pool_of(0, -5, 4), Decimal(5), now=NOW) is None


@pytest.mark.parametrize(
    "target", [Decimal(0), Decimal(-1), Decimal("NaN"), Decimal("Infinity"), Decimal("1e-11")]
)
def test_a_bad_target_is_refused(target: Decimal) -> None:
    with pytest.raises(InvalidAmountError):
        select_inputs(pool_of(1, 2), target, now=NOW)


def test_a_bad_cap_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        select_inputs(pool_of(1, 2), Decimal(1), now=NOW, max_inputs=0)


def test_choosing_a_repeated_contract_id_is_refused() -> None:
    pool = [holding("same", 5), holding("same", 5)]
    with pytest.raises(InvalidInputError, match="same"):
        select_inputs(pool, Decimal(10), now=NOW)


# --- properties ----------------------------------------------------------------------------------

LOCKS = ("none", "forever", "expired", "future", "future-no-flag")

amounts = st.one_of(
    st.integers(1, 10**11),  # fine-grained, up to 10 tokens
    st.integers(1, 200).map(lambda n: n * 10**9),  # round tenths
    st.sampled_from([10**10, 25 * 10**9, 10**11]),  # repeated amounts
).map(from_units)


@st.composite
def pools(draw: st.DrawFn, max_size: int = 40) -> list[Candidate]:
    entries = draw(st.lists(st.tuples(amounts, st.sampled_from(LOCKS)), max_size=max_size))
    pool = []
    for index, (amount, lock) in enumerate(entries):
        locked = lock in ("forever", "expired", "future")
        until = {"expired": PAST, "future": FUTURE, "future-no-flag": FUTURE}.get(lock)
        pool.append(Candidate(f"c{index:03d}", amount, until, locked))
    return pool


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[Candidate], Decimal, int, int, frozenset[str]]:
    pool = draw(pools())
    ids_ = [c.contract_id for c in pool]
    excluded = frozenset(draw(st.lists(st.sampled_from(ids_), max_size=5))) if ids_ else frozenset()
    kind = draw(st.sampled_from(["random", "subset", "large"]))
    if kind == "subset" and pool:
        subset = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=6, unique=True))
        target = sum((c.amount for c in subset), Decimal(0))
    elif kind == "large":
        target = from_units(draw(st.integers(10**11, 10**13)))
    else:
        target = from_units(draw(st.integers(1, 2 * 10**11)))
    max_inputs = draw(st.sampled_from([1, 2, 3, 5, 8, INPUTS_MAX]))
    tries = draw(st.sampled_from([0, 5, 1_000, 100_000]))
    return pool, target, max_inputs, tries, excluded


def usable(pool: list[Candidate], excluded: frozenset[str]) -> list[Decimal]:
    return [
        c.amount for c in spendable(pool, NOW) if c.contract_id not in excluded and c.amount > 0
    ]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_property_every_answer_is_valid(
    case: tuple[list[Candidate], Decimal, int, int, frozenset[str]],
) -> None:
    pool, target, max_inputs, tries, excluded = case
    selection = select_inputs(
        pool, target, now=NOW, max_inputs=max_inputs, bnb_tries=tries, excluded=excluded
    )
    available = sorted(usable(pool, excluded), reverse=True)
    if selection is None:
        assert sum(available) < target or sum(available[:max_inputs]) < target
        return
    inputs = selection.inputs
    assert 1 <= len(inputs) <= max_inputs
    assert len({c.contract_id for c in inputs}) == len(inputs)
    for candidate in inputs:
        assert candidate in pool
        assert candidate.contract_id not in excluded
        assert candidate.amount > 0
        if candidate.locked or candidate.locked_until is not None:
            assert candidate.locked_until is not None and candidate.locked_until <= NOW
    assert selection.total == sum(c.amount for c in inputs)
    assert selection.change == selection.total - target
    assert selection.change >= 0
    assert selection.strategy in {"exact", "branch_and_bound", "fallback"}
    if selection.strategy == "exact":
        assert len(inputs) == 1 and selection.change == 0
    if selection.strategy == "branch_and_bound":
        assert len(inputs) >= 2 and selection.change == 0
    assert [c.amount for c in inputs] == sorted((c.amount for c in inputs), reverse=True)


@settings(max_examples=200, deadline=None)
@given(cases(), st.randoms(use_true_random=False))
def test_property_the_order_of_candidates_does_not_matter(
    case: tuple[list[Candidate], Decimal, int, int, frozenset[str]], rng: random.Random
) -> None:
    pool, target, max_inputs, tries, excluded = case
    shuffled = pool[:]
    rng.shuffle(shuffled)
    first = select_inputs(
        pool, target, now=NOW, max_inputs=max_inputs, bnb_tries=tries, excluded=excluded
    )
    second = select_inputs(
        shuffled, target, now=NOW, max_inputs=max_inputs, bnb_tries=tries, excluded=excluded
    )
    assert first == second


@settings(max_examples=300, deadline=None)
@given(pools(max_size=10), st.data())
def test_property_a_changeless_set_in_a_small_pool_is_found(
    pool: list[Candidate], data: st.DataObject
) -> None:
    available = [c for c in spendable(pool, NOW) if c.amount > 0]
    if not available:
        return
    subset = data.draw(st.lists(st.sampled_from(available), min_size=1, max_size=4, unique=True))
    target = sum((c.amount for c in subset), Decimal(0))
    max_inputs = data.draw(st.integers(1, 6))
    selection = select_inputs(pool, target, now=NOW, max_inputs=max_inputs)
    amounts_ = [c.amount for c in available]
    exists = any(
        sum(combination) == target
        for size in range(1, min(max_inputs, len(amounts_)) + 1)
        for combination in itertools.combinations(amounts_, size)
    )
    if exists:
        assert selection is not None
        assert selection.change == 0


# --- around an anchor ----------------------------------------------------------------------------


def test_an_anchor_that_covers_the_target_is_the_only_input() -> None:
    anchor = holding("anchor", 150)
    selection = select_around(anchor, pool_of(100, 60), Decimal(100), now=NOW)
    assert ids(selection) == ["anchor"]
    assert selection is not None and (selection.change, selection.strategy) == (50, "fallback")
    exact = select_around(anchor, pool_of(100), Decimal(150), now=NOW)
    assert exact is not None and (ids(exact), exact.strategy) == (["anchor"], "exact")


def test_the_rest_is_selected_for_what_the_anchor_leaves() -> None:
    anchor = holding("anchor", 30)
    # 70 is left: a changeless pair of the others (40 + 30) rather than the single 100.
    selection = select_around(anchor, pool_of(100, 40, 30, 5), Decimal(100), now=NOW)
    assert selection is not None
    assert sorted(ids(selection)) == ["anchor", "c001", "c002"]
    assert (selection.total, selection.change) == (Decimal(100), Decimal(0))


def test_a_locked_or_listed_anchor_is_still_the_anchor_and_never_taken_twice() -> None:
    anchor = holding("anchor", 10, locked=True, locked_until=FUTURE)
    others = [anchor, holding("a", 5), holding("b", 20)]
    selection = select_around(anchor, others, Decimal(25), now=NOW)
    assert sorted(ids(selection)) == ["anchor", "b"]


def test_around_an_anchor_the_input_cap_counts_the_anchor() -> None:
    anchor = holding("anchor", 1)
    pool = pool_of(*[1] * 10)
    assert select_around(anchor, pool, Decimal(5), now=NOW, max_inputs=4) is None
    assert len(ids(select_around(anchor, pool, Decimal(5), now=NOW, max_inputs=5))) == 5
    assert select_around(anchor, pool, Decimal(2), now=NOW, max_inputs=1) is None


def test_around_an_anchor_not_enough_is_none_and_bad_arguments_are_refused() -> None:
    anchor = holding("anchor", 10)
    assert select_around(anchor, pool_of(5, 5), Decimal(21), now=NOW) is None
    with pytest.raises(InvalidAmountError):
        select_around(anchor, pool_of(5), Decimal(0), now=NOW)
    with pytest.raises(InvalidInputError):
        select_around(anchor, pool_of(5), Decimal(1), now=NOW, max_inputs=0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(), amounts)
def test_property_the_anchor_is_always_an_input(
    case: tuple[list[Candidate], Decimal, int, int, frozenset[str]], anchor_amount: Decimal
) -> None:
    pool, target, max_inputs, tries, excluded = case
    anchor = Candidate("anchor", anchor_amount)
    selection = select_around(
        anchor, pool, target, now=NOW, max_inputs=max_inputs, bnb_tries=tries, excluded=excluded
    )
    others = sorted(usable(pool, excluded), reverse=True)[: max_inputs - 1]
    if selection is None:
        assert anchor_amount < target
        assert max_inputs == 1 or anchor_amount + sum(others) < target
        return
    inputs = selection.inputs
    assert anchor in inputs
    assert 1 <= len(inputs) <= max_inputs
    assert len({c.contract_id for c in inputs}) == len(inputs)
    assert all(c.contract_id not in excluded for c in inputs)
    assert selection.total == sum(c.amount for c in inputs) >= target
    assert selection.change == selection.total - target
    if anchor_amount >= target:
        assert inputs == (anchor,)


# --- merge and split -----------------------------------------------------------------------------


def test_plan_merge_takes_the_smallest_when_there_are_too_many_small_holdings() -> None:
    pool = pool_of("0.5", "0.1", 3, "0.3", "0.2", 50, "0.1")
    merge = plan_merge(pool, now=NOW, threshold=4, small_below=Decimal(1), max_inputs=3)
    assert merge is not None
    assert [(c.contract_id, c.amount) for c in merge] == [
        ("c001", Decimal("0.1")),
        ("c006", Decimal("0.1")),
        ("c004", Decimal("0.2")),
    ]
    everything = plan_merge(pool, now=NOW, threshold=4, small_below=Decimal(1))
    assert everything is not None
    assert len(everything) == 5


def test_plan_merge_not_due() -> None:
    pool = pool_of("0.5", "0.1", 3, "0.3")
    assert plan_merge(pool, now=NOW, threshold=3, small_below=Decimal(1)) is None
    assert plan_merge(pool, now=NOW, threshold=2, small_below=Decimal(1)) is not None
    # One small holding is more than a threshold of 0, but there is nothing to merge it with.
    assert plan_merge(pool_of("0.5", 4), now=NOW, threshold=0, small_below=Decimal(1)) is None


def test_plan_merge_ignores_locked_and_excluded_holdings() -> None:
    pool = [
        holding("a", "0.1"),
        holding("b", "0.1", locked=True),
        holding("c", "0.1", locked_until=FUTURE),
        holding("d", "0.1", locked=True, locked_until=PAST),
        holding("e", "0.1"),
        holding("f", "0.1"),
    ]
    merge = plan_merge(pool, now=NOW, threshold=2, small_below=Decimal(1), excluded={"e"})
    assert merge is not None
    assert [c.contract_id for c in merge] == ["a", "d", "f"]
    assert plan_merge(pool, now=NOW, threshold=3, small_below=Decimal(1), excluded={"e"}) is None


def test_plan_merge_needs_room_for_two() -> None:
    with pytest.raises(InvalidInputError):
        plan_merge(
            pool_of("0.1", "0.1"), now=NOW, threshold=0, small_below=Decimal(1), max_inputs=1
        )


def test_plan_split_splits_the_largest_when_too_few_large_holdings() -> None:
    pool = pool_of(5, 300, 120, 250, 300)
    split = plan_split(pool, now=NOW, parallel=5, large_at_least=Decimal(100))
    assert split is not None
    assert split.contract_id == "c001"  # 300, the smallest id of the two
    assert plan_split(pool, now=NOW, parallel=4, large_at_least=Decimal(100)) is None


def test_plan_split_needs_a_holding_of_twice_the_large_size() -> None:
    pool = pool_of(150, 199, 5)
    assert plan_split(pool, now=NOW, parallel=3, large_at_least=Decimal(100)) is None
    pool.append(holding("x", 200))
    split = plan_split(pool, now=NOW, parallel=5, large_at_least=Decimal(100))
    assert split is not None
    assert split.contract_id == "x"


def test_plan_split_ignores_locked_and_excluded_holdings() -> None:
    pool = [
        holding("locked", 1_000, locked=True),
        holding("reserved", 900),
        holding("free", 400),
        holding("expired", 500, locked=True, locked_until=PAST),
    ]
    split = plan_split(
        pool, now=NOW, parallel=3, large_at_least=Decimal(100), excluded={"reserved"}
    )
    assert split is not None
    assert split.contract_id == "expired"
    with pytest.raises(InvalidAmountError):
        plan_split(pool, now=NOW, parallel=3, large_at_least=Decimal(0))


# --- the benchmark -------------------------------------------------------------------------------


def test_measure_selection_reports_latencies() -> None:
    result = measure_selection(holdings=500, runs=20, seed=3)
    assert set(result) == {"holdings", "runs", "p50_ms", "p99_ms", "max_ms"}
    assert result["holdings"] == 500
    assert result["runs"] == 20
    assert all(value > 0 for value in result.values())
    assert result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
