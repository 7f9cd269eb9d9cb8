"""The part of a simulation run's state that the price oracle and the cross-token exchange add: the
exchange's context over the run's Integration DB, clock and KYC registry; the oracle over a price
reader whose readings the exchange actor sets from the run's random source; the exchange's own
wallet on the ledger (the *house*, whose deposits with no reason fund the inventory); and what
the actor did that the checks compare with the DB.

Every reading the reader serves is *labelled* when it is served, by construction rather than by
the oracle's code: ``valid``, or the rule it breaks whatever the oracle remembers — a planted jump
lies outside the band every valid price stays in (so it is more than 50 % away from any price
that was ever accepted), a round going backwards is below every round a valid reading has, a
stale, future, pinned or non-positive price is so at the time it is read, and a primary valid on
its own is ``divergence`` when the secondary, valid too, is more than 5 % away. The checks
(:mod:`sluice.sim.exchange_invariants`) then hold every swap to a price served as valid by the
source it names.

Kept beside the run's :class:`~sluice.sim.state.SimulationState` (by identity), as the reserves
side is, so that the exchange is one actor module, one state module and one invariants module.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from sluice.domain.compliance import TierLimits
from sluice.domain.exchange import DepthCurve, DepthPoint, ExchangeSettings
from sluice.domain.oracle import (
    Bounds,
    Observation,
    OracleLimits,
    Reading,
    Rejection,
    SourceSpec,
    divergence,
)
from sluice.services.exchange import ExchangeContext
from sluice.sim.state import SimulationState

ACTOR_NAME = "sim-exchange"
# Quotes live shorter than most clock moves of the ledger's admin, so that a quote executed a
# step or more later has often expired; the depth curve makes large sales pay an impact.
SETTINGS_LIFETIME_S = 30
DEPTH_CURVE = DepthCurve(
    (DepthPoint(Decimal(50), Decimal("0.001")), DepthPoint(Decimal(400), Decimal("0.02")))
)
LIMITS = OracleLimits()
HEARTBEAT_S = 300
# Valid prices stay within this band around the feed's base: any two of them are less than 50 %
# apart (1.15 / 0.85 < 1.5), so a valid price never breaks the jump rule, whatever was accepted
# last; a planted jump goes beyond the band far enough to break it against any of them.
BAND = (Decimal("0.85"), Decimal("1.15"))
# Rounds of valid primary readings start here and only go up; a round going backwards is below.
ROUND_FLOOR = 100
# The officer's exchange limits (reference units; the sandbox's registry values one unit of any
# instrument at one): tier 1 by the day (the run lasts hours: its 30 days never bind first), and
# tier 2 — the last customer's — by the 30 days only.
TIER_LIMITS = {
    1: TierLimits(None, Decimal(300), Decimal(3000)),
    2: TierLimits(None, None, Decimal(200)),
}
MONTHLY_TIER = 2


@dataclass(frozen=True, slots=True)
class FeedModel:
    """One oracle pair of the run: its base price and its primary's bounds (far outside the
    band: only a planted reading is pinned at them)."""

    pair: str
    base: Decimal

    @property
    def bounds(self) -> Bounds:
        return Bounds(self.base / 100, self.base * 100)

    def in_band(self, price: Decimal) -> bool:
        return self.base * BAND[0] <= price <= self.base * BAND[1]


@dataclass(slots=True)
class FeedReadings:
    """What a feed's two sources serve now, and the feed's true price (always in band)."""

    price: Decimal
    primary: Reading
    secondary: Reading
    round_id: int = ROUND_FLOOR


@dataclass(frozen=True, slots=True)
class Served:
    """One evaluation's readings of a pair, as served, with their labels (``valid`` or a rule)."""

    pair: str
    at: datetime
    primary: Reading
    primary_label: str
    secondary: Reading
    secondary_label: str

    def valid_price(self, source: str) -> Decimal | None:
        """The price ``source`` served, when it was labelled valid."""
        reading, label = (
            (self.primary, self.primary_label)
            if source == "primary"
            else (self.secondary, self.secondary_label)
        )
        if label != "valid" or not isinstance(reading, Observation):
            return None
        return reading.price


def source_spec(pair: str, source: str, bounds: Bounds | None) -> SourceSpec:
    return SourceSpec(
        "file", f"{pair}#{source}", "/price", "/time", "/round", 18, HEARTBEAT_S, bounds
    )


def label(reading: Reading, feed: FeedModel, *, primary: bool, now: datetime) -> str:
    """The rule ``reading`` breaks by construction at ``now`` (see the module docstring), or
    ``valid``."""
    if isinstance(reading, Rejection):
        return reading.rule
    if not reading.price.is_finite() or reading.price <= 0:
        return "not_positive"
    if reading.at.timestamp() == 0:
        return "zero_time"
    age_s = (now - reading.at).total_seconds()
    if age_s < -LIMITS.clock_skew_s:
        return "future"
    if age_s > HEARTBEAT_S + LIMITS.heartbeat_margin_s:
        return "stale"
    if primary and reading.round_id is not None and reading.round_id < ROUND_FLOOR:
        return "round_backwards"
    bounds = feed.bounds
    if primary and (reading.price <= bounds.low or reading.price >= bounds.high):
        return "at_bound"
    if not feed.in_band(reading.price):
        return "jump"
    return "valid"


class SimPriceReader:
    """The oracle's sources: each serves what the actor last set for it, and every evaluation's
    readings are logged with their labels under the execution running (``running``)."""

    def __init__(self, world: ExchangeWorld, clock: Callable[[], datetime]) -> None:
        self._world = world
        self._clock = clock

    def read(self, source: SourceSpec) -> Reading:
        pair, _, which = source.location.partition("#")
        world = self._world
        readings = world.readings[pair]
        if which == "primary":
            world.log(self._serve(pair, readings))
            return readings.primary
        return readings.secondary

    def _serve(self, pair: str, readings: FeedReadings) -> Served:
        feed = self._world.feeds[pair]
        now = self._clock()
        primary_label = label(readings.primary, feed, primary=True, now=now)
        secondary_label = label(readings.secondary, feed, primary=False, now=now)
        if (
            primary_label == secondary_label == "valid"
            and isinstance(readings.primary, Observation)
            and isinstance(readings.secondary, Observation)
            and divergence(readings.primary.price, readings.secondary.price)
            > LIMITS.divergence_limit
        ):
            primary_label = "divergence"
        return Served(
            pair, now, readings.primary, primary_label, readings.secondary, secondary_label
        )


@dataclass(slots=True)
class OpenQuote:
    """A quote the actor holds, to execute later (or again)."""

    quote_id: str
    customer_id: str


@dataclass(slots=True)
class ExchangeWorld:
    """The run's exchange: its context, the feeds and what their sources serve, the house's
    party and deposits, and what the actor did (the checks read these)."""

    ctx: ExchangeContext | None
    feeds: dict[str, FeedModel]
    readings: dict[str, FeedReadings]
    house: str = ""
    # House deposits with no reason: update id → (instrument id, amount); those funded.
    house_deposits: dict[str, tuple[str, Decimal]] = field(default_factory=dict)
    funded: set[str] = field(default_factory=set)
    open_quotes: list[OpenQuote] = field(default_factory=list)
    executed: list[OpenQuote] = field(default_factory=list)
    # The readings served during each execution of a quote (by quote id), across its attempts.
    served: dict[str, list[Served]] = field(default_factory=dict)
    running: str | None = None  # the quote whose execution is reading the oracle
    priced: set[str] = field(default_factory=set)  # swaps whose price was checked
    # What the checks read last (reused while the Integration DB is unchanged).
    reading: object | None = None
    reading_of: object | None = None

    def log(self, served: Served) -> None:
        if self.running is not None:
            self.served.setdefault(self.running, []).append(served)


def settings(pairs: tuple[tuple[str, str, str], ...]) -> ExchangeSettings:
    return ExchangeSettings(
        pairs=pairs, quote_lifetime_s=SETTINGS_LIFETIME_S, depth_curve=DEPTH_CURVE
    )


EPOCH = datetime.fromtimestamp(0, UTC)

_worlds: weakref.WeakKeyDictionary[SimulationState, ExchangeWorld] = weakref.WeakKeyDictionary()


def world_of(sim: SimulationState) -> ExchangeWorld | None:
    """The run's exchange, if its actor has acted."""
    return _worlds.get(sim)


def keep(sim: SimulationState, world: ExchangeWorld) -> ExchangeWorld:
    _worlds[sim] = world
    return world
