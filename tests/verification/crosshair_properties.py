"""The properties the symbolic checks of tests/verification/test_crosshair.py verify, and the
runner that hands them to CrossHair.

Each property is a plain function written for CrossHair's ``asserts`` analysis: its leading
``assert`` statements bound the inputs (CrossHair only considers inputs that pass them), and any
later ``AssertionError`` is a counterexample. The function under check is a parameter of the
factory that makes the property, so that the same property runs against the product's function
and against a deliberately broken version of it (tests/verification/crosshair_mutants.py).

CrossHair explores the paths through the property by symbolic execution (an SMT solver chooses
inputs that take a branch not taken yet); it stops at the first counterexample, when every path
was explored (the property then holds for every input within the bounds), or at the per-check
time budget (then no counterexample was found on the paths explored, which is not a proof).

Some properties are run with Hypothesis instead (they take no leading asserts' bounds but
strategies that keep to them): the Merkle-sum verifier (:func:`merkle_sums_hold`: every value it
checks goes through SHA-256, which the solver cannot see through, so CrossHair could only try
concrete values one at a time, slowly), the input cap (:func:`cap_property`), the 80 % warning
and the rolling windows, for which CrossHair did not reach the inputs that matter within a
budget the suite can afford (docs/verification.md says what was measured).
"""

from __future__ import annotations

import collections
import dataclasses
import decimal
import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from multiprocessing.connection import Connection

from crosshair.core_and_libs import analyze_function, run_checkables
from crosshair.options import AnalysisKind, AnalysisOptionSet
from crosshair.statespace import MessageType

from sluice.domain.amounts import MAXIMUM, QUANTUM, SCALE
from sluice.domain.coin_selection import Candidate, Selection
from sluice.domain.compliance import (
    DAY,
    MONTH,
    ComplianceDecision,
    ComplianceRequest,
    LimitLadder,
    Profile,
    TierLimits,
    UsageRecord,
)
from sluice.domain.errors import InvalidAmountError
from sluice.por.documents import Proof, Root, Sibling, format_units
from sluice.por.tree import LiabilityTree

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
# Wide enough that quantizing any value the properties make to ten places loses no digit.
_WIDE = decimal.Context(prec=200)
UNIT = Decimal(1).scaleb(-SCALE)  # one 10^-10, the smallest amount
FREE, LOCKED, EXPIRED, LOCKED_UNTIL, RESERVED = range(5)
_MINUTE = timedelta(minutes=1)

SelectInputs = Callable[..., Selection | None]
SelectAround = Callable[..., Selection | None]
PlanMerge = Callable[..., list[Candidate] | None]
Parse = Callable[[object], Decimal]
Format = Callable[[Decimal], str]
Decide = Callable[..., ComplianceDecision]
UsedInWindows = Callable[[list[UsageRecord], str, datetime], tuple[Decimal, Decimal]]
LimitWarnings = Callable[
    [Decimal, Decimal, Decimal | None, Decimal | None, Decimal], tuple[str, ...]
]
Verify = Callable[[Proof, Root], bool]
Build = Callable[[Sequence[str], Sequence[int]], LiabilityTree]


# --- The runner ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What CrossHair said of one property: the counterexamples (empty when none was found),
    how many paths it explored and whether that was all of them."""

    counterexamples: tuple[str, ...]
    paths: int
    exhausted: bool


def check_symbolically(
    prop: Callable[..., None], *, timeout_s: float, path_timeout_s: float = 2.0
) -> Outcome:
    """Run CrossHair's ``asserts`` analysis on ``prop`` for at most ``timeout_s`` seconds of CPU
    (the budget is process time, so a loaded machine makes the wall time longer, not the
    search shorter).

    The analysis runs in a forked child process: CrossHair patches the interpreter while it
    runs, and one analysis stopped by its budget must leave nothing behind for the next one in
    the same test worker (it did once: the next property's preconditions were not honoured).
    The child inherits whatever the caller patched (a broken version under check)."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_analyse, args=(prop, timeout_s, path_timeout_s, sender))
    child.start()
    sender.close()
    try:
        # A bound on the wall time too, generous for a loaded machine.
        if not receiver.poll(timeout_s * 20 + 120):
            raise TimeoutError(f"CrossHair did not finish {prop.__qualname__}")
        outcome: Outcome = receiver.recv()
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receiver.close()
    return outcome


def _analyse(
    prop: Callable[..., None], timeout_s: float, path_timeout_s: float, sender: Connection
) -> None:
    stats: collections.Counter[str] = collections.Counter()
    options = AnalysisOptionSet(
        analysis_kind=[AnalysisKind.asserts],
        per_condition_timeout=timeout_s,
        per_path_timeout=path_timeout_s,
        stats=stats,
    )
    messages = run_checkables(analyze_function(prop, options))
    quiet = {MessageType.CONFIRMED, MessageType.CANNOT_CONFIRM}
    found = tuple(m.message for m in messages if m.state not in quiet)
    sender.send(Outcome(found, stats["num_paths"], stats["exhaustion"] > 0))
    sender.close()


# --- Coin selection ------------------------------------------------------------------------


def _candidates(units: Sequence[int], states: Sequence[int]) -> list[Candidate]:
    """Candidates ``c0``, ``c1``, … of ``units[i]`` 10^-10 each (0: an empty holding), in the
    state ``states[i]``: FREE, LOCKED for good, EXPIRED (a lock that ran out a minute ago),
    LOCKED_UNTIL (a lock that runs out in a minute) or RESERVED by another withdrawal."""
    return [
        Candidate(
            f"c{i}",
            Decimal(amount) * UNIT,
            NOW - _MINUTE if state == EXPIRED else NOW + _MINUTE if state == LOCKED_UNTIL else None,
            state == LOCKED,
        )
        for i, (amount, state) in enumerate(zip(units, states, strict=True))
    ]


def _reserved(states: Sequence[int]) -> frozenset[str]:
    return frozenset(f"c{i}" for i, state in enumerate(states) if state == RESERVED)


def _eligible(pool: list[Candidate], excluded: frozenset[str]) -> list[Candidate]:
    """What a selection may spend, written from the rules (not from the code): unlocked or with
    an expired lock, not reserved by another withdrawal, worth something."""
    return [
        c
        for c in pool
        if c.contract_id not in excluded
        and c.amount > 0
        and not c.locked
        and (c.locked_until is None or c.locked_until <= NOW)
    ]


def _reachable(pool: list[Candidate], max_inputs: int) -> Decimal:
    """The most ``max_inputs`` of ``pool`` can be worth together."""
    return sum(sorted((c.amount for c in pool), reverse=True)[:max_inputs], Decimal(0))


def _check_selection(
    selection: Selection | None,
    eligible: list[Candidate],
    target: Decimal,
    max_inputs: int,
    *,
    required: Candidate | None = None,
) -> None:
    """The promises of a selection: at most ``max_inputs`` inputs, each once, all from
    ``eligible`` (or the ``required`` anchor), worth at least the target with the change
    stated; and ``None`` only when no ``max_inputs`` of them could cover the target."""
    chosen_from = [*eligible, required] if required is not None else eligible
    if selection is None:
        if required is None:
            assert _reachable(eligible, max_inputs) < target
        else:
            rest = [c for c in eligible if c.contract_id != required.contract_id]
            assert required.amount + _reachable(rest, max_inputs - 1) < target
        return
    ids = [c.contract_id for c in selection.inputs]
    assert 1 <= len(ids) <= max_inputs
    assert len(set(ids)) == len(ids)
    assert all(c in chosen_from for c in selection.inputs)
    if required is not None:
        assert required.contract_id in ids
    assert selection.total == sum((c.amount for c in selection.inputs), Decimal(0))
    assert selection.total >= target
    assert selection.change == selection.total - target
    if selection.strategy in ("exact", "branch_and_bound"):
        assert selection.change == 0


def selection_property(select: SelectInputs) -> Callable[..., None]:
    """``select`` (shaped like :func:`~sluice.domain.coin_selection.select_inputs`) over four
    holdings (empty, locked or reserved ones among them), for any target and input cap."""

    def selection_is_sound(
        a: int, b: int, c: int, d: int, states: tuple[int, int, int, int], target: int, cap: int
    ) -> None:
        assert 0 <= a <= 10**6 and 0 <= b <= 10**6 and 0 <= c <= 10**6 and 0 <= d <= 10**6
        assert all(FREE <= state <= RESERVED for state in states)
        assert 0 < target <= 4 * 10**6
        assert 1 <= cap <= 3
        pool = _candidates((a, b, c, d), states)
        excluded = _reserved(states)
        wanted = Decimal(target) * UNIT
        selection = select(pool, wanted, now=NOW, max_inputs=cap, excluded=excluded)
        _check_selection(selection, _eligible(pool, excluded), wanted, cap)

    return selection_is_sound


def cap_property(select: SelectInputs) -> Callable[..., None]:
    """``select`` over four spendable holdings, for any target and input cap: the cap and the
    coverage alone (the selection property adds locks and reservations, which makes the search
    slower to reach selections of several inputs)."""

    def selection_is_capped(a: int, b: int, c: int, d: int, target: int, cap: int) -> None:
        assert 0 < a <= 10**6 and 0 < b <= 10**6 and 0 < c <= 10**6 and 0 < d <= 10**6
        assert 0 < target <= 4 * 10**6
        assert 1 <= cap <= 3
        pool = _candidates((a, b, c, d), (FREE,) * 4)
        wanted = Decimal(target) * UNIT
        selection = select(pool, wanted, now=NOW, max_inputs=cap)
        _check_selection(selection, pool, wanted, cap)

    return selection_is_capped


def around_property(select_around: SelectAround) -> Callable[..., None]:
    """``select_around`` (a retry's selection, which keeps the record's anchor) over three other
    holdings (empty, locked or reserved ones among them)."""

    def around_keeps_anchor(
        anchor: int, a: int, b: int, c: int, states: tuple[int, int, int], target: int, cap: int
    ) -> None:
        assert 0 < anchor <= 10**6
        assert 0 <= a <= 10**6 and 0 <= b <= 10**6 and 0 <= c <= 10**6
        assert all(FREE <= state <= RESERVED for state in states)
        assert 0 < target <= 4 * 10**6
        assert 1 <= cap <= 3
        pool = _candidates((a, b, c), states)
        # The anchor is held by the record: locked, and taken whatever its lock.
        held = Candidate("anchor", Decimal(anchor) * UNIT, None, True)
        excluded = _reserved(states)
        wanted = Decimal(target) * UNIT
        selection = select_around(held, pool, wanted, now=NOW, max_inputs=cap, excluded=excluded)
        _check_selection(selection, _eligible(pool, excluded), wanted, cap, required=held)

    return around_keeps_anchor


def merge_property(plan_merge: PlanMerge) -> Callable[..., None]:
    """``plan_merge`` (the merge of small holdings) over five holdings, some of them locked,
    reserved or not small."""

    def merge_is_bounded(
        units: tuple[int, int, int, int, int],
        states: tuple[int, int, int, int, int],
        threshold: int,
        cap: int,
    ) -> None:
        assert all(0 < amount <= 1_000 for amount in units)
        assert all(FREE <= state <= RESERVED for state in states)
        assert 0 <= threshold <= 5
        assert 2 <= cap <= 3
        small_below = Decimal(500) * UNIT
        pool = _candidates(units, states)
        excluded = _reserved(states)
        small = [c for c in _eligible(pool, excluded) if c.amount < small_below]
        merge = plan_merge(
            pool,
            now=NOW,
            threshold=threshold,
            small_below=small_below,
            max_inputs=cap,
            excluded=excluded,
        )
        if merge is None:
            assert len(small) <= threshold or len(small) < 2
            return
        assert len(small) > threshold
        ids = [c.contract_id for c in merge]
        assert 2 <= len(ids) <= cap
        assert len(set(ids)) == len(ids)
        assert all(c in small for c in merge)
        # The smallest ones: nothing left out is smaller than something taken.
        left_out = [c for c in small if c not in merge]
        assert all(c.amount >= max(m.amount for m in merge) for c in left_out)

    return merge_is_bounded


# --- Amounts -------------------------------------------------------------------------------


def round_trip_property(parse: Parse, format_: Format) -> Callable[[int, int], None]:
    """Any amount of at most ten fractional digits in range, written by ``format_`` and read
    back by ``parse``, is the same amount, written with exactly ten fractional digits."""

    def amount_round_trips(digits: int, exponent: int) -> None:
        assert -(10**38) < digits < 10**38
        assert -SCALE <= exponent <= 4
        value = Decimal(digits).scaleb(exponent)
        assert abs(value) <= MAXIMUM
        text = format_(value)
        whole, _, fraction = text.partition(".")
        assert len(fraction) == SCALE and fraction.isdigit()
        assert whole.lstrip("-").isdigit()
        back = parse(text)
        assert back == value
        assert back.as_tuple().exponent == -SCALE

    return amount_round_trips


def exact_parse_property(parse: Parse) -> Callable[[int, int], None]:
    """``parse`` either refuses a value or returns exactly it at the canonical scale: it never
    rounds (no value created or lost) and never returns more than ten fractional digits."""

    def parse_is_exact(digits: int, exponent: int) -> None:
        assert -(10**40) < digits < 10**40
        assert -20 <= exponent <= 20
        value = Decimal(digits).scaleb(exponent)
        fits = value == value.quantize(QUANTUM, context=_WIDE) and abs(value) <= MAXIMUM
        try:
            amount = parse(value)
        except InvalidAmountError:
            assert not fits
            return
        assert fits
        assert amount == value
        assert amount.as_tuple().exponent == -SCALE

    return parse_is_exact


# --- Limits --------------------------------------------------------------------------------


def limits_property(decide_: Decide) -> Callable[..., None]:
    """``decide_`` (shaped like :func:`~sluice.domain.compliance.decide`) for an active tier-1
    customer: the limits check fails exactly when the request, added to what was used in the
    window, goes past a limit (or the request alone past the per-operation limit); at the limit
    is still allowed. A refusal by the limits alone is code 21."""

    def limits_refuse_past(
        amount: int,
        used_daily: int,
        used_monthly: int,
        per_operation: int,
        daily: int,
        monthly: int,
    ) -> None:
        assert 0 < amount <= 10**6
        assert 0 <= used_daily <= used_monthly <= 10**7
        assert -1 <= per_operation <= 10**6
        assert -1 <= daily <= 10**7
        assert -1 <= monthly <= 10**7
        # -1 stands for no limit.
        limits = TierLimits(
            *(None if limit < 0 else Decimal(limit) for limit in (per_operation, daily, monthly))
        )
        ladder = LimitLadder({(1, "withdrawal"): limits})
        request = ComplianceRequest("cust", "withdrawal", Decimal(amount))
        decision = decide_(
            request,
            Profile("cust", 1, "active"),
            ladder=ladder,
            used_daily=Decimal(used_daily),
            used_monthly=Decimal(used_monthly),
        )
        within = (
            (per_operation < 0 or amount <= per_operation)
            and (daily < 0 or used_daily + amount <= daily)
            and (monthly < 0 or used_monthly + amount <= monthly)
        )
        (limits_check,) = [c for c in decision.checks if c.name == "limits"]
        assert limits_check.passed == within
        assert decision.code == (0 if within else 21)

    return limits_refuse_past


def warnings_property(limit_warnings: LimitWarnings) -> Callable[[int, int, int, int], None]:
    """``limit_warnings`` (the swap's warnings, :func:`~sluice.domain.exchange.limit_warnings`)
    at the 80 % threshold: a limit is named exactly when what is used of it (this swap
    included) is at least 80 % of a positive limit, with the share in whole percent, rounded
    down."""

    def warns_from_80_percent(used_daily: int, used_monthly: int, daily: int, monthly: int) -> None:
        assert 0 <= used_daily <= 10**7
        assert 0 <= used_monthly <= 10**7
        assert -1 <= daily <= 10**7
        assert -1 <= monthly <= 10**7
        warnings = limit_warnings(
            Decimal(used_daily),
            Decimal(used_monthly),
            None if daily < 0 else Decimal(daily),
            None if monthly < 0 else Decimal(monthly),
            Decimal("0.8"),
        )
        expected = []
        for name, used, limit in (("daily", used_daily, daily), ("monthly", used_monthly, monthly)):
            # used ≥ 80 % of limit, in integers: 5 × used ≥ 4 × limit.
            if limit > 0 and 5 * used >= 4 * limit:
                expected.append(f"{name} {used * 100 // limit} %")
        assert list(warnings) == expected

    return warns_from_80_percent


# --- Rolling windows -----------------------------------------------------------------------


def windows_property(used_in_windows: UsedInWindows) -> Callable[..., None]:
    """What ``used_in_windows`` (shaped like
    :func:`~sluice.domain.compliance_windows.usage_in_windows`) sums for the 24 h and 30 days
    before ``now``: every record with ``now - window < t <= now`` counted exactly once, and
    nothing else — written here as the plain sum over the records, against the code's sum of
    hour and day buckets plus records at the edges. ``now`` is ``now_s`` seconds after NOW;
    each record is ``ages_us[i]`` microseconds older than ``now``."""

    def windows_count_once(now_s: int, ages_us: list[int], amounts: list[int]) -> None:
        assert len(ages_us) == len(amounts)
        assert 0 <= now_s <= 2 * 86400
        assert all(0 <= age <= 32 * 86400 * 10**6 for age in ages_us)
        now = NOW + timedelta(seconds=now_s)
        records = [
            UsageRecord(f"op{i}", "withdrawal", Decimal(amount), now - timedelta(microseconds=age))
            for i, (age, amount) in enumerate(zip(ages_us, amounts, strict=True))
        ]
        daily, monthly = used_in_windows(records, "withdrawal", now)
        assert daily == sum(
            (r.amount for r in records if now - DAY < r.occurred_at <= now), Decimal(0)
        )
        assert monthly == sum(
            (r.amount for r in records if now - MONTH < r.occurred_at <= now), Decimal(0)
        )

    return windows_count_once


# --- The Merkle-sum verifier (checked with Hypothesis) -------------------------------------

CUSTOMERS = tuple(f"customer-{i}" for i in range(8))
SECRET = b"verification secret"


@dataclass(frozen=True, slots=True)
class Tampering:
    """Changes to an honest proof and its root: ``units`` to the leaf's units, ``siblings[i]``
    to sibling i's sum, ``moved`` units taken from sibling ``source`` and given to sibling
    ``sink`` (a change that keeps the total), ``total`` to the root's total."""

    units: int
    siblings: tuple[int, ...]
    moved: int
    source: int
    sink: int
    total: int


def merkle_sums_hold(build: Build, verify: Verify) -> Callable[[list[int], int, Tampering], None]:
    """A proof built by ``build`` verifies against its root; and a proof that ``verify``
    accepts carries the tree's sums: its leaf units and every sibling's sum are those of the
    honest tree, and they add up to the published total. (With SHA-256 taken as binding: no
    check can do better than the hash, so a tampered proof must be rejected.)"""

    def sums_hold(balances: list[int], who: int, tampering: Tampering) -> None:
        tree = build(CUSTOMERS[: len(balances)], balances)
        root = tree.root(NOW)
        honest = tree.proof_at(who % len(balances))
        assert verify(honest, root), "an honest proof was rejected"
        depth = len(honest.siblings)
        sums = [s.units for s in honest.siblings]
        for level, delta in enumerate(tampering.siblings[:depth]):
            sums[level] += delta
        if depth:
            sums[tampering.source % depth] -= tampering.moved
            sums[tampering.sink % depth] += tampering.moved
        units = honest.units + tampering.units
        proof = dataclasses.replace(
            honest,
            units=units,
            balance=format_units(units, 0) if units >= 0 else str(units),
            siblings=tuple(
                Sibling(s.hash, total) for s, total in zip(honest.siblings, sums, strict=True)
            ),
        )
        total = root.total_units + tampering.total
        published = dataclasses.replace(
            root, total_units=total, total=format_units(total, 0) if total >= 0 else str(total)
        )
        try:
            accepted = bool(verify(proof, published))
        except Exception as exc:  # a verdict is due for any proof, never an exception
            raise AssertionError(f"the verifier raised {exc!r}") from exc
        if accepted:
            assert proof.units + sum(s.units for s in proof.siblings) == published.total_units
            assert published.total_units == root.total_units, "a changed total was accepted"
            assert proof.units == honest.units, "changed leaf units were accepted"
            assert proof.siblings == honest.siblings, "changed sibling sums were accepted"

    return sums_hold
