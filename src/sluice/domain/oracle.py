"""Price feeds and the rules a price must pass before sluice uses it (DESIGN §9).

A *source* (an HTTP JSON endpoint or a file) gives an :class:`Observation`: a price, the time
the source says it was set, and optionally a round id. :func:`check_observation` applies the
per-source rules against the last price that source had accepted; :func:`decide` then chooses,
for a feed with a secondary source, which price is used and the feed's health. Nothing here does
I/O; every function is pure and deterministic given its arguments (``now`` is passed in).

What it guarantees:

* A price is used only if it passes every rule below; a price that fails one is never used, and
  the failure is named by a stable rule identifier (:data:`RULES`):

  ``not_positive``  the price is zero or negative;
  ``zero_time``     the source gave no time (zero);
  ``future``        its time is later than now (beyond ``clock_skew_s``);
  ``stale``         its age is above the source's heartbeat plus ``heartbeat_margin_s``;
  ``round_backwards`` its round id is below the last accepted one;
  ``at_bound``      it is at (or beyond) the feed's min or max bound: a pinned aggregator;
  ``jump``          it moved from the last accepted price by more than ``jump_limit`` (50 %,
                    Liquity's rule);
  ``divergence``    the primary differs from a valid secondary by more than
                    ``divergence_limit`` (5 %), measured as (high − low) / low;
  ``unreachable``   the source could not be read (timeout, connection, non-2xx);
  ``malformed``     the source answered something that is not a price (bad JSON, a missing
                    pointer, a value of the wrong type).

* Health is ``healthy`` (the primary is used), ``degraded`` (the secondary is used: the fallback
  fee applies) or ``offline`` (neither can be used: callers must refuse). Once on the secondary,
  a feed returns to the primary only when both are valid and agree within the divergence limit;
  a valid primary alone does not bring it back.
* Arithmetic is exact :class:`~decimal.Decimal`, never float; prices are quantized to the feed's
  ``decimals`` (half-even) only where a division makes that necessary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation, localcontext
from typing import Literal

Rule = Literal[
    "not_positive",
    "zero_time",
    "future",
    "stale",
    "round_backwards",
    "at_bound",
    "jump",
    "divergence",
    "unreachable",
    "malformed",
]
RULES: tuple[Rule, ...] = (
    "not_positive",
    "zero_time",
    "future",
    "stale",
    "round_backwards",
    "at_bound",
    "jump",
    "divergence",
    "unreachable",
    "malformed",
)
Health = Literal["healthy", "degraded", "offline"]
HEALTHS: tuple[Health, ...] = ("healthy", "degraded", "offline")
Source = Literal["primary", "secondary"]
SOURCES: tuple[Source, ...] = ("primary", "secondary")
FeedKind = Literal["http", "file", "inverted", "crossed"]
SourceKind = Literal["http", "file"]

PAIR_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,32}/[A-Za-z0-9._-]{1,32}$")
DECIMALS_MAX = 30


def check_pair(text: str) -> str:
    """A pair is ``BASE/QUOTE`` (e.g. ``ISTSI/USD``): the price of one BASE in QUOTE."""
    if not PAIR_PATTERN.match(text):
        raise ValueError(f"{text!r} is not a pair BASE/QUOTE (letters, digits, . _ -)")
    return text


def split_pair(pair: str) -> tuple[str, str]:
    base, _, quote = check_pair(pair).partition("/")
    return base, quote


# --- what the feeds are ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bounds:
    """The range an aggregator clamps its answer to: a price at either end is pinned, not real."""

    low: Decimal
    high: Decimal

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high:
            raise ValueError("bounds must be 0 <= low < high")


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """Where one source's price is read and how: ``location`` is the URL (http) or the path
    (file); the pointers are RFC 6901 JSON pointers into its JSON document. ``scaled``: the
    value is an integer count of 10^-decimals (Chainlink's ``answer``), else a decimal."""

    kind: SourceKind
    location: str
    price_pointer: str
    time_pointer: str
    round_pointer: str | None
    decimals: int
    heartbeat_s: int
    bounds: Bounds | None = None
    scaled: bool = False


@dataclass(frozen=True, slots=True)
class FeedSpec:
    """One configured pair. ``http``/``file`` feeds read ``primary`` (and ``secondary`` if any);
    ``inverted`` is 1/x of the feed ``legs[0]``; ``crossed`` is ``legs[0] ÷ legs[1]`` (A/Q ÷
    B/Q = A/B), each leg validated as its own feed."""

    pair: str
    kind: FeedKind
    decimals: int
    primary: SourceSpec | None = None
    secondary: SourceSpec | None = None
    legs: tuple[str, ...] = ()
    bounds: Bounds | None = None


@dataclass(frozen=True, slots=True)
class OracleLimits:
    """The rules' thresholds (defaults: DESIGN §9, the ``[oracle]`` section)."""

    heartbeat_margin_s: int = 60
    clock_skew_s: int = 1
    jump_limit: Decimal = Decimal("0.5")
    divergence_limit: Decimal = Decimal("0.05")

    def __post_init__(self) -> None:
        if self.heartbeat_margin_s < 0 or self.clock_skew_s < 0:
            raise ValueError("margins must not be negative")
        if self.jump_limit <= 0 or self.divergence_limit <= 0:
            raise ValueError("limits must be positive")


# --- what a source said, and what was made of it -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Observation:
    """A price as a source gave it (``at``: the source's own time of the price)."""

    price: Decimal
    at: datetime
    round_id: int | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a price (or a read) was not used: the rule, a sentence, and the value seen (text,
    None when there was none)."""

    rule: Rule
    detail: str
    observed: str | None = None


Reading = Observation | Rejection


@dataclass(frozen=True, slots=True)
class Accepted:
    """The last observation a source gave that passed its own rules (the jump's and the round's
    reference)."""

    price: Decimal
    at: datetime
    round_id: int | None
    accepted_at: datetime


def check_observation(
    observation: Observation,
    *,
    source: SourceSpec,
    last: Accepted | None,
    limits: OracleLimits,
    now: datetime,
) -> Rejection | None:
    """The first per-source rule ``observation`` breaks, or None when it passes all of them."""
    price = observation.price
    if not price.is_finite() or price <= 0:
        return Rejection("not_positive", "the price is not positive", str(price))
    if observation.at.timestamp() == 0:
        return Rejection("zero_time", "the source gave no time for the price", "0")
    age_s = (now - observation.at).total_seconds()
    if age_s < -limits.clock_skew_s:
        return Rejection(
            "future",
            f"the price's time is {-age_s:.0f} s in the future",
            observation.at.isoformat(),
        )
    allowed_s = source.heartbeat_s + limits.heartbeat_margin_s
    if age_s > allowed_s:
        return Rejection(
            "stale",
            f"the price is {age_s:.0f} s old, over the {allowed_s} s allowed",
            observation.at.isoformat(),
        )
    if (
        last is not None
        and last.round_id is not None
        and observation.round_id is not None
        and observation.round_id < last.round_id
    ):
        return Rejection(
            "round_backwards",
            f"round {observation.round_id} is before the last accepted round {last.round_id}",
            str(observation.round_id),
        )
    bounds = source.bounds
    if bounds is not None and (price <= bounds.low or price >= bounds.high):
        return Rejection(
            "at_bound", f"the price is pinned at its bounds {bounds.low}..{bounds.high}", str(price)
        )
    if last is not None:
        move = relative_change(last.price, price)
        if move > limits.jump_limit:
            return Rejection(
                "jump",
                f"the price moved {move:.2%} from the last accepted {last.price}"
                f" (limit {limits.jump_limit:.0%})",
                str(price),
            )
    return None


def relative_change(reference: Decimal, price: Decimal) -> Decimal:
    """|price − reference| / reference, exact to 28 digits."""
    with localcontext() as context:
        context.prec = 28
        return abs(price - reference) / reference


def divergence(first: Decimal, second: Decimal) -> Decimal:
    """(high − low) / low of two positive prices (Liquity's similar-price test)."""
    low, high = sorted((first, second))
    with localcontext() as context:
        context.prec = 28
        return (high - low) / low


# --- choosing the price: the fallback state machine --------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """What one evaluation of a feed decided: the health, the source used and its observation
    (None when offline), the rejections to record (by source), and whether the feed is now on
    its fallback (which only an agreement of both sources clears)."""

    health: Health
    source: Source | None
    observation: Observation | None
    on_fallback: bool
    rejections: tuple[tuple[Source, Rejection], ...] = field(default=())


def decide(
    primary: Reading,
    secondary: Reading | None,
    *,
    on_fallback: bool,
    limits: OracleLimits,
) -> Decision:
    """Which price to use, given each source's reading *after* its own rules (a Rejection for a
    source that failed one) and whether the feed was on its fallback.

    Without a secondary: the primary or offline. With one: a primary that is valid but differs
    from a valid secondary beyond the limit is rejected (``divergence``). The primary is used
    when it is valid and either agrees with a valid secondary, or the secondary is not valid and
    the feed was not on its fallback. Otherwise a valid secondary is used (degraded); otherwise
    the feed is offline and keeps its fallback flag, so that a primary that failed before must
    agree with the secondary again before it is trusted.
    """
    rejections: list[tuple[Source, Rejection]] = []
    if isinstance(primary, Rejection):
        rejections.append(("primary", primary))
    if isinstance(secondary, Rejection):
        rejections.append(("secondary", secondary))
    if secondary is None:
        if isinstance(primary, Observation):
            return Decision("healthy", "primary", primary, False, tuple(rejections))
        return Decision("offline", None, None, False, tuple(rejections))
    secondary_ok = isinstance(secondary, Observation)
    agree = False
    if isinstance(primary, Observation) and isinstance(secondary, Observation):
        apart = divergence(primary.price, secondary.price)
        agree = apart <= limits.divergence_limit
        if not agree:
            rejections.append(
                (
                    "primary",
                    Rejection(
                        "divergence",
                        f"the primary {primary.price} differs from the secondary"
                        f" {secondary.price} by {apart:.2%} (limit {limits.divergence_limit:.0%})",
                        str(primary.price),
                    ),
                )
            )
    if isinstance(primary, Observation) and (agree or (not secondary_ok and not on_fallback)):
        return Decision("healthy", "primary", primary, False, tuple(rejections))
    if isinstance(secondary, Observation):
        return Decision("degraded", "secondary", secondary, True, tuple(rejections))
    return Decision("offline", None, None, on_fallback, tuple(rejections))


# --- composed feeds ----------------------------------------------------------------------------


def quantize_price(price: Decimal, decimals: int) -> Decimal:
    """``price`` at ``decimals`` places, half-even; raises ValueError when it does not fit."""
    try:
        with localcontext() as context:
            context.prec = 80
            return price.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN)
    except InvalidOperation as exc:
        raise ValueError(f"{price} does not fit {decimals} decimals") from exc


def invert_price(price: Decimal, decimals: int) -> Decimal:
    """1 / ``price`` at ``decimals`` places (``price`` positive)."""
    with localcontext() as context:
        context.prec = 80
        return quantize_price(Decimal(1) / price, decimals)


def cross_price(base: Decimal, quote: Decimal, decimals: int) -> Decimal:
    """A/B from A/Q (``base``) and B/Q (``quote``), at ``decimals`` places."""
    with localcontext() as context:
        context.prec = 80
        return quantize_price(base / quote, decimals)


def scale_raw(value: int, decimals: int) -> Decimal:
    """An integer count of 10^-decimals as a price (Chainlink's ``answer`` and ``decimals``)."""
    return Decimal(value).scaleb(-decimals)


def with_price(observation: Observation, price: Decimal) -> Observation:
    return replace(observation, price=price)


# --- what callers get --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OraclePrice:
    """A price that passed every rule, as a quote uses it. ``source``: ``primary`` or
    ``secondary`` (for a composed feed: ``secondary`` when any leg is on its secondary);
    ``fallback_fee``: the fallback fee applies (the feed, or a leg, is degraded);
    ``observed_at``: the source's time of the price (a composed feed's oldest leg's);
    ``round_id``: the source's round, None for composed feeds and sources without one."""

    pair: str
    price: Decimal
    source: Source
    health: Health
    fallback_fee: bool
    observed_at: datetime
    round_id: int | None = None
