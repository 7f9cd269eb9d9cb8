"""The price oracle: the validated price of a pair, and every feed's health (DESIGN §9).

:meth:`OracleService.current_price` reads the pair's sources (outside any transaction: a slow
source holds no database lock), then in one transaction locks the pair's state, checks each
reading against the source's last accepted price (:func:`~sluice.domain.oracle.check_observation`),
chooses the price (:func:`~sluice.domain.oracle.decide`), records every rejection with its rule,
stores each source's newly accepted price and the pair's health, and commits. An inverted or
crossed pair evaluates its legs so, each as its own feed, and composes their prices.

What it guarantees:

* The price returned passed every rule; when none can be used, :class:`OracleOfflineError`
  (code 80) is raised, and nothing is ever priced on a rejected reading.
* Every rejection is recorded (``oracle_rejections``) in the same transaction as the state it
  led to, so the health shown and the rejections that explain it never disagree.
* The jump and round rules compare with the last price the *source* accepted, kept in the
  Integration DB, so they hold across restarts and across processes sharing the database.
  Two evaluations of one pair are serialised by the lock on its row (PostgreSQL); one that read
  its source before the other may then find its round behind and be rejected for it, which is
  the rule working, not a fault.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from sluice.domain.errors import NotFoundError, OracleOfflineError
from sluice.domain.ledger import format_timestamp
from sluice.domain.oracle import (
    Accepted,
    Decision,
    FeedKind,
    FeedSpec,
    Health,
    Observation,
    OracleLimits,
    OraclePrice,
    Reading,
    Rejection,
    Source,
    SourceSpec,
    check_observation,
    cross_price,
    decide,
    invert_price,
)
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.ports.oracle import FeedState, PriceReader, RecordedRejection

log = structlog.get_logger("sluice.oracle")

COMPOSITION_DEPTH_MAX = 8
_HEALTH_ORDER: Mapping[Health, int] = {"healthy": 0, "degraded": 1, "offline": 2}


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """One pair as ``sluice oracle status`` shows it: its last evaluation (``health`` None:
    never evaluated) and its newest rejection."""

    pair: str
    kind: FeedKind
    health: Health | None
    source: Source | None
    fallback_fee: bool
    price: str | None
    observed_at: datetime | None
    updated_at: datetime | None
    last_rejection: RecordedRejection | None


@dataclass(frozen=True, slots=True)
class OracleStatus:
    """Every configured pair's status; ``health`` is the worst of them (``healthy`` when no
    pair is configured; a pair never evaluated counts as healthy until it is)."""

    feeds: tuple[FeedStatus, ...]

    @property
    def health(self) -> Health:
        worst: Health = "healthy"
        for feed in self.feeds:
            if feed.health is not None and _HEALTH_ORDER[feed.health] > _HEALTH_ORDER[worst]:
                worst = feed.health
        return worst


class OracleService:
    """The configured feeds, read by ``reader`` and checked under ``limits`` at ``clock()``."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        reader: PriceReader,
        feeds: Mapping[str, FeedSpec],
        *,
        limits: OracleLimits | None = None,
        clock: Callable[[], datetime],
    ) -> None:
        self._uow = uow
        self._reader = reader
        self._feeds = dict(feeds)
        self.limits = limits or OracleLimits()
        self._clock = clock

    def close(self) -> None:
        """Release the reader's connections (a reader without ``close`` holds none)."""
        close = getattr(self._reader, "close", None)
        if callable(close):
            close()

    @property
    def pairs(self) -> tuple[str, ...]:
        return tuple(sorted(self._feeds))

    def spec(self, pair: str) -> FeedSpec:
        spec = self._feeds.get(pair)
        if spec is None:
            known = ", ".join(self.pairs) or "none"
            raise NotFoundError(f"no price feed for {pair} (configured: {known})")
        return spec

    # --- prices ----------------------------------------------------------------------------

    def current_price(self, pair: str) -> OraclePrice:
        """The pair's price now, validated; OracleOfflineError when none can be used,
        NotFoundError for a pair without a feed."""
        return self._price(pair, 0)

    def refresh(self) -> dict[str, Health]:
        """Evaluate every pair (a poller's round); each pair's health."""
        healths: dict[str, Health] = {}
        for pair in self.pairs:
            try:
                healths[pair] = self.current_price(pair).health
            except OracleOfflineError:
                healths[pair] = "offline"
        return healths

    def _price(self, pair: str, depth: int) -> OraclePrice:
        if depth > COMPOSITION_DEPTH_MAX:
            raise OracleOfflineError(pair, ("composed too deep",))
        spec = self.spec(pair)
        if spec.kind in ("http", "file"):
            return self._source_price(spec)
        return self._composed_price(spec, depth)

    def _source_price(self, spec: FeedSpec) -> OraclePrice:
        assert spec.primary is not None
        primary = self._reader.read(spec.primary)
        secondary = self._reader.read(spec.secondary) if spec.secondary is not None else None
        now = self._clock()
        with self._uow() as uow:
            state = uow.oracle.feed(spec.pair, lock=True)
            checked_primary = self._checked(uow, spec.pair, "primary", spec.primary, primary, now)
            checked_secondary = None
            if spec.secondary is not None and secondary is not None:
                checked_secondary = self._checked(
                    uow, spec.pair, "secondary", spec.secondary, secondary, now
                )
            decision = decide(
                checked_primary,
                checked_secondary,
                on_fallback=state.on_fallback if state is not None else False,
                limits=self.limits,
            )
            self._record(uow, spec.pair, decision, now)
            for source, reading in (
                ("primary", checked_primary),
                ("secondary", checked_secondary),
            ):
                if isinstance(reading, Observation):
                    uow.oracle.save_accepted(
                        spec.pair,
                        "primary" if source == "primary" else "secondary",
                        Accepted(reading.price, reading.at, reading.round_id, now),
                    )
            self._save_state(uow, spec.pair, state, decision, now)
            uow.commit()
        observation = decision.observation
        if decision.source is None or observation is None:
            raise OracleOfflineError(spec.pair, tuple(r.rule for _, r in decision.rejections))
        return OraclePrice(
            pair=spec.pair,
            price=observation.price,
            source=decision.source,
            health=decision.health,
            fallback_fee=decision.health == "degraded",
            observed_at=observation.at,
            round_id=observation.round_id,
        )

    def _checked(
        self,
        uow: UnitOfWork,
        pair: str,
        source: Source,
        spec: SourceSpec,
        reading: Reading,
        now: datetime,
    ) -> Reading:
        if isinstance(reading, Rejection):
            return reading
        last = uow.oracle.accepted(pair, source)
        rejection = check_observation(reading, source=spec, last=last, limits=self.limits, now=now)
        return rejection if rejection is not None else reading

    def _record(self, uow: UnitOfWork, pair: str, decision: Decision, now: datetime) -> None:
        for source, rejection in decision.rejections:
            uow.oracle.add_rejection(
                pair, source, rejection.rule, rejection.detail, rejection.observed, now
            )
            log.warning(
                "price rejected",
                pair=pair,
                source=source,
                rule=rejection.rule,
                detail=rejection.detail,
                observed=rejection.observed,
            )

    def _save_state(
        self,
        uow: UnitOfWork,
        pair: str,
        state: FeedState | None,
        decision: Decision,
        now: datetime,
    ) -> None:
        observation = decision.observation
        uow.oracle.save_feed(
            FeedState(
                pair=pair,
                health=decision.health,
                source=decision.source,
                on_fallback=decision.on_fallback,
                price=observation.price if observation is not None else None,
                observed_at=observation.at if observation is not None else None,
                updated_at=now,
            )
        )
        before = state.health if state is not None else None
        if before != decision.health:
            log.warning("oracle health changed", pair=pair, old=before, new=decision.health)

    def _composed_price(self, spec: FeedSpec, depth: int) -> OraclePrice:
        now = self._clock()
        try:
            legs = [self._price(leg, depth + 1) for leg in spec.legs]
        except OracleOfflineError as exc:
            with self._uow() as uow:
                state = uow.oracle.feed(spec.pair, lock=True)
                self._save_state(uow, spec.pair, state, Decision("offline", None, None, False), now)
                uow.commit()
            raise OracleOfflineError(spec.pair, exc.rules) from exc
        if spec.kind == "inverted":
            price = invert_price(legs[0].price, spec.decimals)
        else:
            price = cross_price(legs[0].price, legs[1].price, spec.decimals)
        on_secondary = any(leg.source == "secondary" for leg in legs)
        health: Health = "degraded" if any(leg.fallback_fee for leg in legs) else "healthy"
        observation = Observation(price=price, at=min(leg.observed_at for leg in legs))
        rejection = None
        bounds = spec.bounds
        if price <= 0:
            rejection = Rejection("not_positive", "the composed price is not positive", str(price))
        elif bounds is not None and (price <= bounds.low or price >= bounds.high):
            rejection = Rejection(
                "at_bound",
                f"the composed price is pinned at its bounds {bounds.low}..{bounds.high}",
                str(price),
            )
        with self._uow() as uow:
            state = uow.oracle.feed(spec.pair, lock=True)
            if rejection is not None:
                decision = Decision("offline", None, None, False, (("primary", rejection),))
                self._record(uow, spec.pair, decision, now)
            else:
                source: Source = "secondary" if on_secondary else "primary"
                decision = Decision(health, source, observation, on_secondary)
            self._save_state(uow, spec.pair, state, decision, now)
            uow.commit()
        if rejection is not None:
            raise OracleOfflineError(spec.pair, (rejection.rule,))
        return OraclePrice(
            pair=spec.pair,
            price=price,
            source="secondary" if on_secondary else "primary",
            health=health,
            fallback_fee=health == "degraded",
            observed_at=observation.at,
        )

    # --- status ----------------------------------------------------------------------------

    def oracle_status(self) -> OracleStatus:
        """Every configured pair's last evaluation and newest rejection (reads the database
        only: :meth:`refresh` first for a fresh look)."""
        with self._uow() as uow:
            states = {state.pair: state for state in uow.oracle.feeds()}
            last = uow.oracle.last_rejections()
        feeds = []
        for pair in self.pairs:
            state = states.get(pair)
            feeds.append(
                FeedStatus(
                    pair=pair,
                    kind=self._feeds[pair].kind,
                    health=state.health if state is not None else None,
                    source=state.source if state is not None else None,
                    fallback_fee=state is not None and state.health == "degraded",
                    price=str(state.price)
                    if state is not None and state.price is not None
                    else None,
                    observed_at=state.observed_at if state is not None else None,
                    updated_at=state.updated_at if state is not None else None,
                    last_rejection=last.get(pair),
                )
            )
        return OracleStatus(tuple(feeds))

    def rejections(self, pair: str | None = None, *, limit: int = 100) -> list[RecordedRejection]:
        """The newest rejections first (of one pair, or of all)."""
        if pair is not None:
            self.spec(pair)
        with self._uow() as uow:
            return uow.oracle.rejections(pair, limit=limit)


# --- as JSON ---------------------------------------------------------------------------------


def _time_text(value: datetime | None) -> str | None:
    return format_timestamp(value) if value is not None else None


def rejection_json(found: RecordedRejection | None) -> dict[str, Any] | None:
    """A rejection as ``sluice oracle rejections --json`` and the API show it."""
    if found is None:
        return None
    return {
        "pair": found.pair,
        "source": found.source,
        "rule": found.rule,
        "detail": found.detail,
        "observed": found.observed,
        "at": _time_text(found.at),
    }


def status_json(status: OracleStatus) -> dict[str, Any]:
    """The status as ``sluice oracle status --json`` prints it and the API answers it."""
    return {
        "health": status.health,
        "feeds": [
            {
                "pair": feed.pair,
                "kind": feed.kind,
                "health": feed.health,
                "source": feed.source,
                "fallback_fee": feed.fallback_fee,
                "price": feed.price,
                "observed_at": _time_text(feed.observed_at),
                "updated_at": _time_text(feed.updated_at),
                "last_rejection": rejection_json(feed.last_rejection),
            }
            for feed in status.feeds
        ],
    }
