"""Symbolic checks of the domain functions that move or limit money (docs/verification.md,
"Symbolic checks (CrossHair)").

CrossHair explores, by symbolic execution, the paths through each property of
tests/verification/crosshair_properties.py — coin selection (withdrawals, retries around an
anchor, merges), reading and writing amounts, the KYC limits, the 80 % warning and the rolling
windows — within the property's input bounds and a CPU-time budget per check. The Merkle-sum
verifier of proof of liabilities, whose every check goes through SHA-256, and the 100-input cap
over pools larger than a symbolic list can hold are checked with Hypothesis instead.

Every check must be able to fail: each has at least one deliberately broken version
(tests/verification/crosshair_mutants.py) on which the same check, with the same budget, must
find a counterexample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import sluice.domain.compliance as compliance
import sluice.domain.compliance_windows as compliance_windows
import sluice.por.tree as por_tree
import sluice.por.verify as por_verify
from sluice.domain.amounts import format_amount, parse_amount
from sluice.domain.coin_selection import (
    INPUTS_MAX,
    Candidate,
    Selection,
    plan_merge,
    select_around,
    select_inputs,
)
from sluice.domain.compliance import decide, usage_in_windows
from sluice.domain.exchange import limit_warnings
from sluice.por.documents import Proof, Root
from sluice.por.tree import LiabilityTree, build_tree
from sluice.por.verify import verify_proof
from tests.verification import crosshair_mutants as mutants
from tests.verification.crosshair_properties import (
    FREE,
    NOW,
    RESERVED,
    SECRET,
    UNIT,
    Build,
    Tampering,
    Verify,
    _check_selection,
    around_property,
    cap_property,
    check_symbolically,
    exact_parse_property,
    limits_property,
    merge_property,
    merkle_sums_hold,
    round_trip_property,
    selection_property,
    warnings_property,
    windows_property,
)

# Enough paths that the inputs' bounds were not all refused at the start: every property
# below explores many more than this within its budget.
PATHS_MIN = 10
# A broken version must be caught within this much CPU time (most take a few seconds).
MUTANT_TIMEOUT_S = 30.0

Patch = tuple[object, str, object]


@dataclass(frozen=True)
class Symbolic:
    """One symbolic check: the property and the CPU seconds CrossHair may spend on it."""

    prop: Callable[..., None]
    timeout_s: float


@dataclass(frozen=True)
class Mutant:
    """A broken version: the property made with it, or the names to patch for it."""

    prop: Callable[..., None]
    patches: tuple[Patch, ...] = ()


CHECKS = {
    "select_inputs": Symbolic(selection_property(select_inputs), 12),
    "select_around": Symbolic(around_property(select_around), 8),
    "plan_merge": Symbolic(merge_property(plan_merge), 6),
    "amount_round_trip": Symbolic(round_trip_property(parse_amount, format_amount), 5),
    "parse_amount_exact": Symbolic(exact_parse_property(parse_amount), 5),
    "limits": Symbolic(limits_property(decide), 6),
}

MUTANTS = {
    "select_ignoring_reservations": Mutant(
        selection_property(mutants.select_ignoring_reservations)
    ),
    "select_changeless_only": Mutant(selection_property(mutants.select_changeless_only)),
    "select_by_amount_lookup": Mutant(selection_property(mutants.select_by_amount_lookup)),
    "around_anchor_not_counted": Mutant(around_property(mutants.around_anchor_not_counted)),
    "around_dropping_anchor": Mutant(around_property(mutants.around_dropping_anchor)),
    "merge_without_cap": Mutant(merge_property(mutants.merge_without_cap)),
    "parse_rounding": Mutant(exact_parse_property(mutants.parse_rounding)),
    "format_at_eight_places": Mutant(
        round_trip_property(parse_amount, mutants.format_at_eight_places)
    ),
    "over_without_request": Mutant(
        limits_property(decide), ((compliance, "_over", mutants.over_without_request),)
    ),
    "over_at_limit": Mutant(
        limits_property(decide), ((compliance, "_over", mutants.over_at_limit),)
    ),
}


@contextmanager
def patched(monkeypatch: pytest.MonkeyPatch, patches: Sequence[Patch]) -> Iterator[None]:
    with monkeypatch.context() as context:
        for target, name, value in patches:
            context.setattr(target, name, value)
        yield


@pytest.mark.slow
@pytest.mark.parametrize("name", CHECKS)
def test_no_counterexample_on_any_path_explored(name: str) -> None:
    check = CHECKS[name]
    outcome = check_symbolically(check.prop, timeout_s=check.timeout_s)
    assert outcome.counterexamples == (), f"{name}: {outcome.counterexamples}"
    assert outcome.paths >= PATHS_MIN, f"{name}: only {outcome.paths} paths explored"


@pytest.mark.slow
@pytest.mark.parametrize("name", MUTANTS)
def test_broken_version_is_caught(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mutant = MUTANTS[name]
    with patched(monkeypatch, mutant.patches):
        outcome = check_symbolically(mutant.prop, timeout_s=MUTANT_TIMEOUT_S)
    assert outcome.counterexamples, (
        f"{name}: no counterexample in {outcome.paths} paths "
        f"({'all' if outcome.exhausted else 'not all'} explored)"
    )


# --- Hypothesis, where CrossHair does not fit ----------------------------------------------

SelectFunction = Callable[..., Selection | None]


def run_examples(
    prop: Callable[..., None], *strategies: Any, max_examples: int, shrink: bool = True
) -> None:
    """``prop`` on ``max_examples`` generated inputs, the same ones every run (derandomized);
    a broken version needs no shrinking, only to be caught (``shrink=False``)."""

    @settings(
        max_examples=max_examples,
        phases=[Phase.explicit, Phase.generate, *([Phase.shrink] if shrink else [])],
        deadline=None,
        database=None,
        derandomize=True,
        report_multiple_bugs=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.tuples(*strategies))
    def run(args: tuple[Any, ...]) -> None:
        prop(*args)

    run()


def _deltas() -> st.SearchStrategy[int]:
    """Mostly no change, sometimes a small or a large one."""
    return st.one_of(st.just(0), st.integers(-3, 3), st.integers(-(2**64), 2**64))


_NONZERO = st.one_of(st.integers(-3, 3), st.integers(-(2**64), 2**64)).filter(bool)
_LEVEL = st.integers(0, 2)


def _change(
    units: int = 0,
    level: int | None = None,
    delta: int = 0,
    moved: int = 0,
    source: int = 0,
    sink: int = 0,
    total: int = 0,
) -> Tampering:
    siblings = () if level is None else (0,) * level + (delta,)
    return Tampering(units, siblings, moved, source, sink, total)


# One change at a time (each one a verifier must refuse on its own), or any mix of them.
TAMPERINGS = st.one_of(
    st.builds(_change, units=_NONZERO),
    st.builds(_change, total=_NONZERO),
    st.builds(_change, level=_LEVEL, delta=_NONZERO),
    st.builds(_change, moved=_NONZERO, source=_LEVEL, sink=_LEVEL),
    st.builds(
        Tampering,
        units=_deltas(),
        siblings=st.lists(_deltas(), max_size=3).map(tuple),
        moved=_deltas(),
        source=_LEVEL,
        sink=_LEVEL,
        total=_deltas(),
    ),
)
BALANCES = st.lists(st.integers(0, 10**12), min_size=1, max_size=6)


def merkle_check(native: bool, verify: Verify | None = None) -> Callable[..., None]:
    def build(customer_ids: Sequence[str], units: Sequence[int]) -> LiabilityTree:
        return build_tree(
            SECRET, "snapshot-1", "USD", customer_ids, units, decimals=0, native=native
        )

    def verify_with(proof: Proof, root: Root) -> bool:
        return bool(verify_proof(proof, root, native=native))

    builder: Build = build
    return merkle_sums_hold(builder, verify or verify_with)


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_merkle_sum_verifier_accepts_only_the_trees_sums(native: bool) -> None:
    """Both verifiers (pure Python and the C extension, which must be built) against trees of
    one to six customers, with honest and tampered proofs."""
    run_examples(merkle_check(native), BALANCES, st.integers(0, 5), TAMPERINGS, max_examples=300)


MERKLE_MUTANTS: dict[str, tuple[Verify | None, tuple[Patch, ...]]] = {
    "verify_hash_only": (mutants.verify_hash_only, ()),
    "node_hash_without_sums": (
        None,
        (
            (por_tree, "node_hash", mutants.node_hash_without_sums),
            (por_verify, "node_hash", mutants.node_hash_without_sums),
        ),
    ),
    "depth_with_one_too_many": (
        None,
        ((por_verify, "depth_for", mutants.depth_with_one_too_many),),
    ),
}


@pytest.mark.parametrize("name", MERKLE_MUTANTS)
def test_broken_merkle_verifier_is_caught(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    verify, patches = MERKLE_MUTANTS[name]
    with patched(monkeypatch, patches), pytest.raises(AssertionError):
        run_examples(
            merkle_check(False, verify),
            BALANCES,
            st.integers(0, 5),
            TAMPERINGS,
            max_examples=300,
            shrink=False,
        )


def large_pool_check(select: SelectFunction) -> Callable[[tuple[list[int], int]], None]:
    """``select`` with its default cap over 101 to 300 holdings, for targets that need up to
    all of them: never more than 100 inputs, and an answer whenever 100 of them suffice."""

    def capped(pool_and_target: tuple[list[int], int]) -> None:
        units, target_units = pool_and_target
        pool = [Candidate(f"c{i}", Decimal(u) * UNIT) for i, u in enumerate(units)]
        target = Decimal(target_units) * UNIT
        _check_selection(select(pool, target, now=NOW), pool, target, INPUTS_MAX)

    return capped


def _large_targets(units: list[int]) -> st.SearchStrategy[int]:
    """Any target the pool can cover, or one near what its 100 largest holdings are worth."""
    top = sum(sorted(units, reverse=True)[:INPUTS_MAX])
    return st.one_of(st.integers(1, sum(units)), st.integers(max(top - 2, 1), top + 2))


LARGE_POOLS = st.lists(st.integers(1, 1000), min_size=101, max_size=300).flatmap(
    lambda units: st.tuples(st.just(units), _large_targets(units))
)
AMOUNTS = st.integers(1, 10**6)
SMALL_CAP = (AMOUNTS, AMOUNTS, AMOUNTS, AMOUNTS, st.integers(1, 4 * 10**6), st.integers(1, 3))


def test_selection_never_spends_more_inputs_than_its_cap() -> None:
    """Four holdings and caps of 1 to 3 (CrossHair takes too long to reach selections of
    several inputs through the search, see docs/verification.md), and 101 to 300 holdings
    under the default cap of 100."""
    run_examples(cap_property(select_inputs), *SMALL_CAP, max_examples=300)
    run_examples(large_pool_check(select_inputs), LARGE_POOLS, max_examples=100)


@pytest.mark.parametrize("name", ["select_without_cap", "select_cap_off_by_one"])
def test_selection_beyond_its_cap_is_caught(name: str) -> None:
    broken = getattr(mutants, name)
    with pytest.raises(AssertionError):
        run_examples(cap_property(broken), *SMALL_CAP, max_examples=300, shrink=False)


def test_selection_without_any_cap_is_caught_over_large_pools() -> None:
    def uncapped(
        candidates: Sequence[Candidate], target: Decimal, *, now: datetime
    ) -> Selection | None:
        return mutants.select_without_cap(candidates, target, now=now)

    with pytest.raises(AssertionError):
        run_examples(large_pool_check(uncapped), LARGE_POOLS, max_examples=100, shrink=False)


# The selection properties again, on generated pools: CrossHair's paths through the real
# selection reach single-input selections and None only (measured: 60 paths, see
# docs/verification.md), so selections of several inputs are sampled here. Small amounts make
# equal amounts and exact sums common.
_UNITS = st.one_of(st.integers(1, 40), st.integers(0, 10**6))
_STATE = st.one_of(st.just(FREE), st.integers(FREE, RESERVED))
_TARGET = st.one_of(st.integers(1, 120), st.integers(1, 4 * 10**6))
_CAP = st.integers(1, 3)


@st.composite
def _pools(draw: st.DrawFn, size: int) -> tuple[list[int], tuple[int, ...], int, int]:
    """``size`` amounts, their states, a target (mostly what two or more of them add up to, give
    or take one unit, so that selections of several inputs, exact or with change, come up) and
    a cap."""
    units = draw(st.lists(_UNITS, min_size=size, max_size=size))
    states = tuple(draw(st.lists(_STATE, min_size=size, max_size=size)))
    some = draw(st.lists(st.sampled_from(range(size)), min_size=2, unique=True))
    near = max(sum(units[i] for i in some) + draw(st.integers(-1, 1)), 1)
    target = draw(st.sampled_from([near, near, near, draw(_TARGET)]))
    return units, states, target, draw(_CAP)


def selection_case(select: SelectFunction) -> Callable[..., None]:
    prop = selection_property(select)

    def check(case: tuple[list[int], tuple[int, ...], int, int]) -> None:
        units, states, target, cap = case
        prop(*units, states, target, cap)

    return check


def around_case(select: SelectFunction) -> Callable[..., None]:
    prop = around_property(select)

    def check(case: tuple[list[int], tuple[int, ...], int, int]) -> None:
        (anchor, *units), (_, *states), target, cap = case
        prop(max(anchor, 1), *units, tuple(states), target, cap)

    return check


def test_selection_holds_its_promises_on_generated_pools() -> None:
    run_examples(selection_case(select_inputs), _pools(4), max_examples=400)
    run_examples(around_case(select_around), _pools(4), max_examples=300)


@pytest.mark.parametrize(
    "name", ["select_ignoring_reservations", "select_changeless_only", "select_by_amount_lookup"]
)
def test_broken_selection_is_caught_on_generated_pools(name: str) -> None:
    with pytest.raises(AssertionError):
        run_examples(
            selection_case(getattr(mutants, name)),
            _pools(4),
            max_examples=400,
            shrink=False,
        )


def _near_80_percent(limit: int) -> st.SearchStrategy[int]:
    """Any usage, or one within a unit of 80 % of ``limit`` (the warning's edge)."""
    edge = -(-4 * limit // 5)  # the least usage at or above 80 %
    near = st.integers(max(edge - 1, 0), edge + 1)
    return st.one_of(st.integers(0, 10**7), near) if limit > 0 else st.integers(0, 10**7)


LIMIT_AND_USAGE = st.integers(-1, 10**7).flatmap(
    lambda limit: st.tuples(st.just(limit), _near_80_percent(limit))
)


def warnings_check(warn: Callable[..., tuple[str, ...]]) -> Callable[..., None]:
    prop = warnings_property(warn)

    def check(daily: tuple[int, int], monthly: tuple[int, int]) -> None:
        (daily_limit, used_daily), (monthly_limit, used_monthly) = daily, monthly
        prop(used_daily, used_monthly, daily_limit, monthly_limit)

    return check


def test_limit_warning_from_80_percent() -> None:
    run_examples(warnings_check(limit_warnings), LIMIT_AND_USAGE, LIMIT_AND_USAGE, max_examples=300)


def test_warning_only_above_80_percent_is_caught() -> None:
    with pytest.raises(AssertionError):
        run_examples(
            warnings_check(mutants.warnings_strictly_above),
            LIMIT_AND_USAGE,
            LIMIT_AND_USAGE,
            max_examples=300,
            shrink=False,
        )


_US = 10**6


def _ages(now_s: int) -> st.SearchStrategy[list[int]]:
    """Records' ages (µs before ``now``): anywhere in 32 days, or within a few µs of an edge the
    code sums differently on either side of — ``now`` itself, the start of ``now``'s hour,
    the windows' starts and the hour boundaries next to them."""
    into_hour_us = ((NOW.minute * 60 + now_s) % 3600) * _US
    edges = [0, into_hour_us]
    for window_us in (86400 * _US, 30 * 86400 * _US):
        edges += [window_us, window_us - (3600 * _US - into_hour_us), window_us + into_hour_us]
    near = st.tuples(st.sampled_from(edges), st.integers(-2, 2)).map(lambda e: max(sum(e), 0))
    anywhere = st.integers(0, 32 * 86400 * _US)
    return st.lists(st.one_of(near, anywhere), max_size=6)


USAGE = st.integers(0, 2 * 86400).flatmap(lambda now_s: st.tuples(st.just(now_s), _ages(now_s)))


def windows_check(prop: Callable[..., None]) -> Callable[[tuple[int, list[int]]], None]:
    def check(usage: tuple[int, list[int]]) -> None:
        now_s, ages = usage
        # Distinct powers of two: any record counted twice or missed shows in the sum.
        prop(now_s, ages, [2**i for i in range(len(ages))])

    return check


def test_rolling_windows_count_usage_exactly_once() -> None:
    run_examples(windows_check(windows_property(usage_in_windows)), USAGE, max_examples=300)


def test_windows_counting_the_current_hour_twice_are_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(compliance_windows, "_hour_bounds", mutants.hour_bounds_with_current_hour)
    with pytest.raises(AssertionError):
        run_examples(
            windows_check(windows_property(usage_in_windows)),
            USAGE,
            max_examples=300,
            shrink=False,
        )
