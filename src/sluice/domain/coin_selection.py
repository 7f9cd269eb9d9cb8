"""Choosing the holdings (UTXOs) a token withdrawal spends.

:func:`select_inputs` drops locked holdings (unless the lock has expired), holdings reserved by
another withdrawal and empty ones, then tries in order:

1. **exact** - one holding worth exactly the target: one input, no change;
2. **branch and bound** - a depth-first search, largest amounts first, for a set worth exactly the
   target (so no change holding is created), pruned when the holdings left cannot reach the
   remainder, and bounded by ``bnb_tries`` node visits. When the amounts are so fine-grained and
   sparse compared with the target that the budget would almost surely run out without a hit,
   only pairs are looked for (cheap: only amounts of at least half the target are visited);
3. **fallback** - the largest holdings until the target is covered; the excess is change.

:func:`select_around` chooses the inputs of a retry: the record's *anchor* (the holding every
attempt of one withdrawal, merge or split spends, so that the ledger can commit at most one of
them) plus whatever :func:`select_inputs` finds for the part of the target it does not cover.

Nothing ever uses more than ``max_inputs`` inputs: if even the largest ``max_inputs`` holdings do
not cover the target the answer is ``None`` (merge small holdings first, see :func:`plan_merge`).
Ties between equal amounts go to the smallest contract id, so the answer depends only on the set
of candidates, not on their order. Amounts are ``Numeric 10`` decimals; the search works on
integer counts of 10^-10 units, and everything else stays in (exact) decimal arithmetic so that a
call over 10,000 holdings takes a few milliseconds.
"""

from __future__ import annotations

import decimal
import heapq
import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import accumulate
from operator import attrgetter

from sluice.domain.amounts import SCALE, parse_amount
from sluice.domain.errors import InvalidAmountError, InvalidInputError

INPUTS_MAX = 100

EXACT = "exact"
BRANCH_AND_BOUND = "branch_and_bound"
FALLBACK = "fallback"

# Pools this small are searched in full whatever their granularity (a few thousand nodes at most).
_SEARCH_ALWAYS_BELOW = 13
# The search recurses once per input; changeless sets of more inputs than this are not looked for.
_SEARCH_DEPTH_MAX = 200
# How many amounts are converted to find out whether they share a grain coarser than one unit.
_GRAIN_PROBE = 32

_UNIT = Decimal(10) ** SCALE
# Exact for sums of any number of Numeric(38, 10) amounts, and for amounts scaled to units.
_CONTEXT = decimal.Context(
    prec=80, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation]
)
_BY_CONTRACT = attrgetter("contract_id")
_BY_AMOUNT = attrgetter("amount")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A holding that could be spent.

    It is locked when ``locked`` is set or ``locked_until`` is given; the lock expires at
    ``locked_until`` (``locked=True`` without ``locked_until`` is locked for good).
    """

    contract_id: str
    amount: Decimal
    locked_until: datetime | None = None
    locked: bool = False


@dataclass(frozen=True, slots=True)
class Selection:
    """The chosen inputs (largest first, ties by contract id), their sum and the change.

    ``strategy`` is ``"exact"``, ``"branch_and_bound"`` or ``"fallback"``.
    """

    inputs: tuple[Candidate, ...]
    total: Decimal
    change: Decimal
    strategy: str


def spendable(candidates: Iterable[Candidate], now: datetime) -> list[Candidate]:
    """The candidates without a lock, or whose lock has expired at ``now``, in their order.

    A lock has expired when ``locked_until`` is at or before ``now``; ``locked`` without
    ``locked_until`` never expires, and a future ``locked_until`` locks even without ``locked``.
    """
    return [
        c
        for c in candidates
        if (c.locked_until is None and not c.locked)
        or (c.locked_until is not None and c.locked_until <= now)
    ]


def _available(
    candidates: Iterable[Candidate], now: datetime, excluded: Collection[str]
) -> list[Candidate]:
    pool = spendable(candidates, now)
    if excluded:
        skip = excluded if isinstance(excluded, set | frozenset) else frozenset(excluded)
        pool = [c for c in pool if c.contract_id not in skip]
    return pool


def select_inputs(
    candidates: Sequence[Candidate],
    target: Decimal,
    *,
    now: datetime,
    max_inputs: int = INPUTS_MAX,
    bnb_tries: int = 100_000,
    excluded: Collection[str] = (),
) -> Selection | None:
    """Choose the holdings to spend for ``target``; ``None`` when they cannot cover it.

    ``excluded`` holds contract ids reserved by other withdrawals; locked holdings (see
    :func:`spendable`) and holdings of no positive amount are never chosen either. Raises
    :class:`InvalidAmountError` for a target that is not a positive ``Numeric 10`` amount, and
    :class:`InvalidInputError` for ``max_inputs < 1`` or when two chosen candidates share a
    contract id (the candidates must not repeat one).
    """
    wanted = parse_amount(target, field="target")
    if wanted <= 0:
        raise InvalidAmountError(f"target: {target} is not positive")
    if max_inputs < 1:
        raise InvalidInputError(f"max_inputs: {max_inputs} is below 1")
    with decimal.localcontext(_CONTEXT):
        pool = _available(candidates, now, excluded)
        amounts = [c.amount for c in pool]
        if amounts and min(amounts) <= 0:
            pool = [c for c in pool if c.amount > 0]
            amounts = [c.amount for c in pool]
        if not pool:
            return None

        if wanted in amounts:
            single = min((c for c in pool if c.amount == wanted), key=_BY_CONTRACT)
            return _selection([single], wanted, EXACT)

        largest = heapq.nlargest(max_inputs, amounts)
        covered = list(accumulate(largest))
        if covered[-1] < wanted:
            return None  # also when all of them together fall short

        if bnb_tries > 0 and max_inputs > 1:
            changeless = _changeless(pool, wanted, max_inputs, bnb_tries)
            if changeless is not None:
                return _selection(changeless, wanted, BRANCH_AND_BOUND)

        count = bisect_left(covered, wanted) + 1
        least = largest[count - 1]
        kept = [c for c in pool if c.amount >= least]
        above = [c for c in kept if c.amount > least]
        level = sorted((c for c in kept if c.amount == least), key=_BY_CONTRACT)
        return _selection(above + level[: count - len(above)], wanted, FALLBACK)


def select_around(
    anchor: Candidate,
    candidates: Sequence[Candidate],
    target: Decimal,
    *,
    now: datetime,
    max_inputs: int = INPUTS_MAX,
    bnb_tries: int = 100_000,
    excluded: Collection[str] = (),
) -> Selection | None:
    """Inputs for ``target`` that always include ``anchor``; ``None`` when they cannot cover it.

    The anchor is taken whatever its lock (its record holds it already). When it alone covers the
    target it is the only input; otherwise :func:`select_inputs` chooses, among the other
    candidates and with one input fewer, holdings for what it leaves. Raises as
    :func:`select_inputs` does.
    """
    wanted = parse_amount(target, field="target")
    if wanted <= 0:
        raise InvalidAmountError(f"target: {target} is not positive")
    if max_inputs < 1:
        raise InvalidInputError(f"max_inputs: {max_inputs} is below 1")
    with decimal.localcontext(_CONTEXT):
        if anchor.amount >= wanted:
            return _selection([anchor], wanted, EXACT if anchor.amount == wanted else FALLBACK)
        if max_inputs == 1:
            return None
        others = [c for c in candidates if c.contract_id != anchor.contract_id]
        rest = select_inputs(
            others,
            wanted - anchor.amount,
            now=now,
            max_inputs=max_inputs - 1,
            bnb_tries=bnb_tries,
            excluded=excluded,
        )
        if rest is None:
            return None
        return _selection([anchor, *rest.inputs], wanted, rest.strategy)


def _changeless(
    pool: list[Candidate], wanted: Decimal, max_inputs: int, tries: int
) -> list[Candidate] | None:
    """Holdings (2 to ``max_inputs``) summing exactly to ``wanted``, which none of them equals.

    Every node of the search ends with one lookup "is the remainder itself a holding left?"; with
    ``n`` holdings below the goal that are multiples of ``g`` units, a lookup hits with a chance
    of about ``n * g / goal``. When ``tries`` lookups expect less than one hit (and the pool is not
    tiny), the full search would very likely spend its budget for nothing and only pairs are
    looked for.
    """
    fitting = [c for c in pool if c.amount < wanted]
    if len(fitting) < 2:
        return None
    goal = int(wanted * _UNIT)
    grain = 0
    for candidate in fitting[:_GRAIN_PROBE]:
        grain = math.gcd(grain, int(candidate.amount * _UNIT))
        if grain == 1:
            break
    units: list[int] = []
    if grain != 1:
        units = [int(c.amount * _UNIT) for c in fitting]
        grain = math.gcd(*units)
    if goal % grain:
        return None  # every sum of these amounts is a multiple of grain
    if len(fitting) >= _SEARCH_ALWAYS_BELOW and tries * len(fitting) * grain < goal:
        return _pair(fitting, wanted, tries)

    if not units:
        units = [int(c.amount * _UNIT) for c in fitting]
    elif grain > 1:  # smaller integers are faster
        units = [u // grain for u in units]
        goal //= grain
    descending = sorted(units, reverse=True)
    positions = _branch_and_bound(descending, goal, min(max_inputs, _SEARCH_DEPTH_MAX), tries)
    if positions is None:
        return None
    # Of holdings with equal amounts, take those with the smallest contract ids.
    needed = Counter(descending[p] for p in positions)
    matching = sorted(
        (k for k, u in enumerate(units) if u in needed), key=lambda k: fitting[k].contract_id
    )
    chosen: list[Candidate] = []
    for k in matching:
        if needed[units[k]] > 0:
            needed[units[k]] -= 1
            chosen.append(fitting[k])
    return chosen


def _pair(fitting: list[Candidate], wanted: Decimal, tries: int) -> list[Candidate] | None:
    """Two of ``fitting`` (all below ``wanted``) summing to it, the larger one as large as
    possible (the pair the full search finds first); about ``tries`` larger ones are tried.

    Only the amounts that can be part of a pair are converted to units.
    """
    half = wanted / 2
    larger = [c for c in fitting if c.amount >= half]
    if not larger:
        return None
    if len(larger) > tries:
        cut = heapq.nlargest(tries, (c.amount for c in larger))[-1]
        larger = [c for c in larger if c.amount >= cut]
    high = wanted - min(c.amount for c in larger)  # the largest partner a pair can need
    smaller = [c for c in fitting if c.amount <= high]
    goal = int(wanted * _UNIT)
    large_units = [int(c.amount * _UNIT) for c in larger]
    small_units = [int(c.amount * _UNIT) for c in smaller]
    for rest in sorted({goal - u for u in large_units}.intersection(small_units)):
        ones = sorted(
            (c for c, u in zip(smaller, small_units, strict=True) if u == rest), key=_BY_CONTRACT
        )
        if rest + rest == goal:
            if len(ones) > 1:
                return ones[:2]
            continue
        others = [c for c, u in zip(larger, large_units, strict=True) if u == goal - rest]
        return [min(others, key=_BY_CONTRACT), ones[0]]
    return None


def _branch_and_bound(
    values: list[int], goal: int, max_inputs: int, tries: int
) -> list[int] | None:
    """Positions in ``values`` (descending, all in ``(0, goal)``) summing exactly to ``goal``.

    Depth-first, taking the largest amount that still fits first. Each node first checks whether
    the remainder is itself one of the amounts left; it prunes when the largest amounts left, as
    many as inputs may still be added, sum below the remainder (then so do all smaller ones), and
    skips equal amounts at the same level (they lead to the same sums). At most ``tries`` nodes.
    """
    size = len(values)
    smallest = values[-1]
    negated = [-v for v in values]  # ascending, for bisect
    prefix = [0, *accumulate(values)]  # prefix[p] == sum(values[:p])
    prefix += [prefix[-1]] * max_inputs  # so that prefix[p + slots] needs no bounds check
    chosen: list[int] = []
    budget = tries

    def search(begin: int, need: int, slots: int) -> bool:
        nonlocal budget
        position = bisect_left(negated, -need, begin)  # the largest amount left that fits
        if position < size and values[position] == need:
            chosen.append(position)
            return True
        if slots == 1:
            return False
        # An amount that leaves less than the smallest one cannot be completed.
        position = bisect_left(negated, smallest - need, position)
        while position < size:
            if budget <= 0 or prefix[position + slots] - prefix[position] < need:
                return False
            budget -= 1
            value = values[position]
            chosen.append(position)
            if search(position + 1, need - value, slots - 1):
                return True
            chosen.pop()
            position = bisect_left(negated, 1 - value, position)  # the next smaller amount
        return False

    return chosen if search(0, goal, max_inputs) else None


def _distinct(inputs: list[Candidate]) -> list[Candidate]:
    """``inputs``, unless the candidates had duplicate contract ids and two of them were chosen."""
    counts = Counter(c.contract_id for c in inputs)
    repeated = sorted(cid for cid, count in counts.items() if count > 1)
    if repeated:
        raise InvalidInputError(f"the candidates repeat contract ids {repeated}")
    return inputs


def _selection(inputs: list[Candidate], target: Decimal, strategy: str) -> Selection:
    _distinct(inputs)
    ordered = sorted(sorted(inputs, key=_BY_CONTRACT), key=_BY_AMOUNT, reverse=True)
    with decimal.localcontext(_CONTEXT):
        total = sum((c.amount for c in ordered), Decimal(0))
        return Selection(tuple(ordered), total, total - target, strategy)


def plan_merge(
    candidates: Iterable[Candidate],
    *,
    now: datetime,
    threshold: int,
    small_below: Decimal,
    max_inputs: int = INPUTS_MAX,
    excluded: Collection[str] = (),
) -> list[Candidate] | None:
    """The small holdings to merge into one, when there are more than ``threshold`` of them.

    Small means spendable, not excluded and below ``small_below``. Returns the smallest ones (at
    most ``max_inputs``, at least two; ties by contract id), or ``None`` when no merge is due.
    Raises :class:`InvalidInputError` for ``max_inputs < 2``.
    """
    if max_inputs < 2:
        raise InvalidInputError(f"max_inputs: {max_inputs} is below 2")
    small = [c for c in _available(candidates, now, excluded) if c.amount < small_below]
    if len(small) <= threshold or len(small) < 2:
        return None
    small.sort(key=attrgetter("amount", "contract_id"))
    return _distinct(small[:max_inputs])


def plan_split(
    candidates: Iterable[Candidate],
    *,
    now: datetime,
    parallel: int,
    large_at_least: Decimal,
    excluded: Collection[str] = (),
) -> Candidate | None:
    """The holding to split in two, when fewer than ``parallel`` large holdings are available.

    Large means spendable, not excluded and at least ``large_at_least``. Returns the largest such
    holding worth at least twice ``large_at_least`` (ties by contract id), or ``None``. Raises
    :class:`InvalidAmountError` unless ``large_at_least`` is positive.
    """
    if large_at_least <= 0:
        raise InvalidAmountError(f"large_at_least: {large_at_least} is not positive")
    pool = _available(candidates, now, excluded)
    if sum(1 for c in pool if c.amount >= large_at_least) >= parallel:
        return None
    splittable = [c for c in pool if c.amount >= 2 * large_at_least]
    if not splittable:
        return None
    best = max(c.amount for c in splittable)
    return min((c for c in splittable if c.amount == best), key=_BY_CONTRACT)
