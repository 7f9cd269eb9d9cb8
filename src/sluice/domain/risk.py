"""Risk scoring (DESIGN §6): rules over a customer's recent activity that add up to a score.

:func:`assess_risk` looks at the operation being decided together with the customer's recent
usage records and fires each rule of :class:`RiskRules` at most once:

* ``velocity`` — too many operations (of any kind, the current one included) in a short window;
* ``structuring`` — repeated amounts just under a per-operation or daily limit of the tier;
* ``smurfing`` — many small deposits followed by a withdrawal that takes most of them out;
* ``new_counterparty`` — a sizeable withdrawal or transfer to a counterparty never seen before.

The score is the sum of the fired rules' weights, capped at :data:`SCORE_MAX`; at or over the
threshold the customer is put under review everywhere (the caller does that; this module only
decides). The assessment is a pure function of its arguments: the same history, operation, rules
and ``now`` always give the same score and flags, in the order above.

The records a decision hands over are a bounded recent slice: at most
``recent_operations_max`` (20) of the customer's latest operations, none older than the longest
rule window (7 days by default) — what velocity, structuring and smurfing look at, read the same
way however long the customer's history. Beyond the slice a rule sees nothing: velocity counts
at most that many earlier operations (enough to fire, since the bound is never below
``velocity_count_max``), and structuring and smurfing count the slice's records only. Whether a
counterparty is new is asked of the whole 30 days separately (``counterparties_seen``).

Windows are half-open like the limits' windows (:mod:`sluice.domain.compliance`): a record at
``t`` is in a window of length ``w`` ending at ``now`` when ``now - w < t <= now``. Records after
``now`` are ignored; the operation being decided is taken to happen at ``now``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import cache
from operator import attrgetter

from sluice.domain.compliance import MONTH, TierLimits, UsageRecord
from sluice.domain.errors import InvalidInputError

SCORE_MAX = 100
# Operations that move value out to someone else: where a new counterparty matters.
CASH_OUT_OPERATIONS = frozenset({"withdrawal", "transfer"})
# Usage is kept and looked up over 30 days, so no rule may look further back than that.
WINDOW_MAX_S = MONTH.total_seconds()

_WEIGHTS = ("velocity_weight", "structuring_weight", "smurfing_weight", "new_counterparty_weight")
_COUNTS = (
    "velocity_count_max",
    "structuring_count_min",
    "small_deposits_min",
    "recent_operations_max",
)
_WINDOWS = ("velocity_window_s", "structuring_window_s", "small_deposits_window_s")


@dataclass(frozen=True, slots=True)
class RiskRules:
    """The configurable rules; every weight, count, window and amount can be changed.

    Defaults (amounts in the instrument's reference units, like the limits):

    * ``threshold`` 70 — a score at or above it puts the customer under review. No single rule
      reaches it on its own by default; two strong patterns together do (velocity + structuring
      = 70, smurfing + new counterparty = 70, structuring + smurfing = 90).
    * velocity: more than ``velocity_count_max`` = 20 operations within ``velocity_window_s`` =
      1 h (the current one included) adds ``velocity_weight`` = 30.
    * structuring: the current amount and at least ``structuring_count_min`` - 1 = 2 earlier ones
      of the same operation within ``structuring_window_s`` = 7 days lie in the band just under
      a per-operation or daily limit — ``limit × (1 - structuring_band) <= amount < limit`` with
      ``structuring_band`` = 10 % — adds ``structuring_weight`` = 40. An amount exactly at the
      limit is not "just under" it.
    * smurfing: a withdrawal after at least ``small_deposits_min`` = 5 deposits each below
      ``small_deposit_below`` = 10 000 (1 % of tier 1's daily limit) within
      ``small_deposits_window_s`` = 24 h, the withdrawal taking at least ``withdrawal_share_min``
      = 80 % of their sum, adds ``smurfing_weight`` = 50.
    * new counterparty: a withdrawal or transfer of at least ``new_counterparty_amount_min`` =
      100 000 (10 % of tier 1's daily limit) to a counterparty absent from the history adds
      ``new_counterparty_weight`` = 20.

    * the slice of history the rules see: the latest ``recent_operations_max`` = 20 operations
      within the longest rule window (never fewer than the rules' own counts need).

    A weight of 0 turns its rule off. Windows are 1 s … 30 days (the history's depth).
    """

    threshold: int = 70
    velocity_window_s: float = 3600.0
    velocity_count_max: int = 20
    velocity_weight: int = 30
    structuring_band: Decimal = Decimal("0.10")
    structuring_count_min: int = 3
    structuring_window_s: float = 7 * 86400.0
    structuring_weight: int = 40
    small_deposit_below: Decimal = Decimal("10000")
    small_deposits_min: int = 5
    small_deposits_window_s: float = 86400.0
    withdrawal_share_min: Decimal = Decimal("0.8")
    smurfing_weight: int = 50
    new_counterparty_amount_min: Decimal = Decimal("100000")
    new_counterparty_weight: int = 20
    recent_operations_max: int = 20

    def __post_init__(self) -> None:
        _check_int("threshold", self.threshold, 1, SCORE_MAX)
        for name in _WEIGHTS:
            _check_int(name, getattr(self, name), 0, SCORE_MAX)
        for name in _COUNTS:
            _check_int(name, getattr(self, name), 1, None)
        for name in _WINDOWS:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not 1 <= value <= WINDOW_MAX_S
            ):
                raise InvalidInputError(
                    f"risk rule {name} must be 1 … {WINDOW_MAX_S:.0f} seconds, got {value!r}"
                )
        band = _check_decimal("structuring_band", self.structuring_band)
        if not 0 < band <= 1:
            raise InvalidInputError(f"risk rule structuring_band must be in (0, 1], got {band}")
        share = _check_decimal("withdrawal_share_min", self.withdrawal_share_min)
        if share <= 0:
            raise InvalidInputError(f"risk rule withdrawal_share_min must be positive, got {share}")
        below = _check_decimal("small_deposit_below", self.small_deposit_below)
        if below <= 0:
            raise InvalidInputError(f"risk rule small_deposit_below must be positive, got {below}")
        amount_min = _check_decimal("new_counterparty_amount_min", self.new_counterparty_amount_min)
        if amount_min < 0:
            raise InvalidInputError(
                f"risk rule new_counterparty_amount_min must not be negative, got {amount_min}"
            )

    @property
    def recent_operations(self) -> int:
        """How many of the latest operations a decision reads for the rules."""
        return max(
            self.recent_operations_max,
            self.velocity_count_max,
            self.structuring_count_min,
            self.small_deposits_min,
        )

    @property
    def recent_window(self) -> timedelta:
        """How far back the rules' windows reach."""
        seconds = max(
            self.velocity_window_s, self.structuring_window_s, self.small_deposits_window_s
        )
        return timedelta(seconds=seconds)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, object]) -> RiskRules:
        """Rules from configuration (e.g. a ``[compliance.risk]`` table); keys not given keep
        their defaults. Numbers may be given as text; amounts must be exact (text or integers,
        a float is read through its shortest text form)."""
        known = {item.name: item for item in fields(cls)}
        unknown = sorted(str(key) for key in mapping if key not in known)
        if unknown:
            raise InvalidInputError(
                f"unknown risk rule(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values: dict[str, object] = {}
        for name, value in mapping.items():
            reader = _readers[name]
            values[name] = reader(name, value)
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class RiskFlag:
    """One rule that fired: its name, what it adds to the score and what it saw."""

    name: str
    weight: int
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "weight": self.weight, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class RiskAssessment:
    score: int
    flags: tuple[RiskFlag, ...]
    threshold: int

    @property
    def over_threshold(self) -> bool:
        return self.score >= self.threshold

    def flag_names(self) -> tuple[str, ...]:
        return tuple(flag.name for flag in self.flags)

    def as_dict(self) -> dict[str, object]:
        return {
            "score": self.score,
            "threshold": self.threshold,
            "over_threshold": self.over_threshold,
            "flags": [flag.as_dict() for flag in self.flags],
        }


def assess_risk(
    history: Sequence[UsageRecord],
    current: UsageRecord,
    *,
    rules: RiskRules,
    limits: TierLimits | None,
    now: datetime,
    counterparties_seen: Collection[str] = (),
    in_order: bool = False,
) -> RiskAssessment:
    """Score ``current`` (not part of ``history``) against the customer's recent operations.

    ``limits`` are the customer's tier limits for ``current.operation``; without them the
    structuring rule cannot tell what "just under a limit" is and does not fire.
    ``counterparties_seen``: counterparties the customer dealt with in the last 30 days beyond
    those in ``history``. ``in_order``: ``history`` is a list in time order with no record after
    ``now`` (what a compliance session hands over), so the rules need not test each record's
    time — the same score and flags, found by halving.
    """
    past = history if in_order else [record for record in history if record.occurred_at <= now]
    velocity = _velocity(past, rules, now, in_order)
    structuring = _structuring(past, current, rules, limits, now)
    smurfing = _smurfing(past, current, rules, now)
    new_counterparty = _new_counterparty(past, current, rules, counterparties_seen)
    if velocity is None and structuring is None and smurfing is None and new_counterparty is None:
        return _unflagged(rules.threshold)  # what the general case gives, made once
    candidates = (velocity, structuring, smurfing, new_counterparty)
    flags = tuple([flag for flag in candidates if flag is not None and flag.weight > 0])
    score = min(SCORE_MAX, sum([flag.weight for flag in flags])) if flags else 0
    return RiskAssessment(score, flags, rules.threshold)


@cache
def _unflagged(threshold: int) -> RiskAssessment:
    """The assessment when no rule fires (immutable, so one per threshold)."""
    return RiskAssessment(0, (), threshold)


_occurred_at: Callable[[UsageRecord], datetime] = attrgetter("occurred_at")


def _velocity(
    past: Sequence[UsageRecord], rules: RiskRules, now: datetime, in_order: bool
) -> RiskFlag | None:
    start = now - _seconds(rules.velocity_window_s)
    if in_order:
        # Every record is at or before now: those after start are the ones past the halving.
        count = 1 + len(past) - bisect_right(past, start, key=_occurred_at)
    else:
        count = 1 + len([record for record in past if start < record.occurred_at <= now])
    if count <= rules.velocity_count_max:
        return None
    return RiskFlag(
        "velocity",
        rules.velocity_weight,
        f"{count} operations within {_duration(rules.velocity_window_s)} "
        f"(more than {rules.velocity_count_max})",
    )


def _structuring(
    past: Sequence[UsageRecord],
    current: UsageRecord,
    rules: RiskRules,
    limits: TierLimits | None,
    now: datetime,
) -> RiskFlag | None:
    if limits is None:
        return None
    bands = _bands(limits.per_operation, limits.daily, rules.structuring_band)
    if not _just_under(current.amount, bands):
        return None
    start = now - _seconds(rules.structuring_window_s)
    earlier = sum(
        1
        for record in past
        if record.operation == current.operation
        and start < record.occurred_at <= now
        and _just_under(record.amount, bands)
    )
    count = 1 + earlier
    if count < rules.structuring_count_min:
        return None
    return RiskFlag(
        "structuring",
        rules.structuring_weight,
        f"{count} {current.operation} amounts within {_plain(rules.structuring_band * 100)} % "
        f"under a limit in {_duration(rules.structuring_window_s)}",
    )


def _smurfing(
    past: Sequence[UsageRecord], current: UsageRecord, rules: RiskRules, now: datetime
) -> RiskFlag | None:
    if current.operation != "withdrawal":
        return None
    start = now - _seconds(rules.small_deposits_window_s)
    small = [
        record.amount
        for record in past
        if record.operation == "deposit"
        and record.amount < rules.small_deposit_below
        and start < record.occurred_at <= now
    ]
    if len(small) < rules.small_deposits_min:
        return None
    total = sum(small, Decimal(0))
    if current.amount < rules.withdrawal_share_min * total:
        return None
    return RiskFlag(
        "smurfing",
        rules.smurfing_weight,
        f"withdrawal of {_plain(current.amount)} after {len(small)} deposits below "
        f"{_plain(rules.small_deposit_below)} totalling {_plain(total)} "
        f"in {_duration(rules.small_deposits_window_s)}",
    )


def _new_counterparty(
    past: Sequence[UsageRecord],
    current: UsageRecord,
    rules: RiskRules,
    seen: Collection[str],
) -> RiskFlag | None:
    counterparty = current.counterparty
    if (
        counterparty is None
        or current.operation not in CASH_OUT_OPERATIONS
        or current.amount < rules.new_counterparty_amount_min
    ):
        return None
    if counterparty in seen or any(record.counterparty == counterparty for record in past):
        return None
    return RiskFlag(
        "new_counterparty",
        rules.new_counterparty_weight,
        f"{current.operation} of {_plain(current.amount)} to new counterparty {counterparty}",
    )


@cache
def _bands(
    per_operation: Decimal | None, daily: Decimal | None, band: Decimal
) -> tuple[tuple[Decimal, Decimal], ...]:
    """The ranges just under the per-operation and daily limits (computed once per tier and
    rules: every decision asks)."""
    return tuple(
        (limit * (1 - band), limit)
        for limit in (per_operation, daily)
        if limit is not None and limit > 0
    )


def _just_under(amount: Decimal, bands: tuple[tuple[Decimal, Decimal], ...]) -> bool:
    """Whether ``amount`` lies in one of ``bands`` (asked of every decision: no generator)."""
    for low, high in bands:  # noqa: SIM110 (a loop: any() would resume a generator per band)
        if low <= amount < high:
            return True
    return False


@cache
def _seconds(seconds: float) -> timedelta:
    """A rule's window as a duration (made once per length: every decision asks)."""
    return timedelta(seconds=seconds)


def _plain(value: Decimal) -> str:
    """A decimal without trailing zeros or exponent, for messages."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400 and seconds % 86400 == 0:
        return f"{int(seconds // 86400)} days"
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


def _check_int(name: str, value: object, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"risk rule {name} must be a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"{low} … {high}" if high is not None else f"at least {low}"
        raise InvalidInputError(f"risk rule {name} must be {bounds}, got {value}")
    return value


def _check_decimal(name: str, value: object) -> Decimal:
    if not isinstance(value, Decimal) or not value.is_finite():
        raise InvalidInputError(f"risk rule {name} must be a finite decimal, got {value!r}")
    return value


def _read_int(name: str, value: object) -> int:
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise InvalidInputError(
                f"risk rule {name} must be a whole number, got {value!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"risk rule {name} must be a whole number, got {value!r}")
    return value


def _read_seconds(name: str, value: object) -> float:
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise InvalidInputError(
                f"risk rule {name} must be a number of seconds, got {value!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"risk rule {name} must be a number of seconds, got {value!r}")
    return float(value)


def _read_decimal(name: str, value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise InvalidInputError(f"risk rule {name} must be a decimal number, got {value!r}")
    # A float's repr is its shortest round-tripping text: 0.1 reads as 0.1, not as the binary
    # fraction 0.1000000000000000055….
    text = repr(value) if isinstance(value, float) else value
    try:
        number = Decimal(text.strip() if isinstance(text, str) else text)
    except InvalidOperation:
        number = None
    if number is None:
        raise InvalidInputError(f"risk rule {name} must be a decimal number, got {value!r}")
    return _check_decimal(name, number)


_AMOUNTS = (
    "structuring_band",
    "small_deposit_below",
    "withdrawal_share_min",
    "new_counterparty_amount_min",
)
_readers: dict[str, Callable[[str, object], object]] = {
    "threshold": _read_int,
    **dict.fromkeys(_WEIGHTS + _COUNTS, _read_int),
    **dict.fromkeys(_WINDOWS, _read_seconds),
    **dict.fromkeys(_AMOUNTS, _read_decimal),
}
