"""The ``[oracle]`` section: the price feeds the exchange is priced by, and the limits of the
rules every price must pass (DESIGN §9, ``docs/oracle.md``). No feeds by default.

Guarantees at load: every pair is well formed and defined once; every pointer is an RFC 6901
JSON pointer; a composed feed's legs exist, share their quote currency (crossed) or mirror the
pair (inverted), and no feed is composed of itself.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from sluice.config.sections import _check_url, _Section
from sluice.domain.oracle import (
    DECIMALS_MAX,
    Bounds,
    FeedSpec,
    OracleLimits,
    SourceSpec,
    check_pair,
    split_pair,
)
from sluice.oracle.pointers import parse_pointer

HEARTBEAT_S_MAX = 7 * 86_400


class BoundsConfig(_Section):
    """The aggregator's min and max answer: a price at either is pinned, never used."""

    min: Annotated[Decimal, Field(ge=0)]
    max: Annotated[Decimal, Field(gt=0)]

    @model_validator(mode="after")
    def _order(self) -> BoundsConfig:
        if self.min >= self.max:
            raise ValueError("bounds: min must be below max")
        return self

    def to_bounds(self) -> Bounds:
        return Bounds(self.min, self.max)


class SourceConfig(_Section):
    """Where a price is read: ``http`` (GET ``url``) or ``file`` (``path``), a JSON document;
    ``price_pointer``, ``time_pointer`` (Unix seconds or RFC 3339) and optional
    ``round_pointer`` are RFC 6901 JSON pointers into it. ``scaled``: the price is an integer
    of 10^-decimals units (Chainlink's ``answer``)."""

    kind: Literal["http", "file"]
    url: str | None = None
    path: Path | None = None
    price_pointer: str
    time_pointer: str
    round_pointer: str | None = None
    scaled: bool = False
    # A secondary's own heartbeat and bounds; by default its feed's heartbeat and no bounds.
    heartbeat_s: Annotated[int, Field(ge=1, le=HEARTBEAT_S_MAX)] | None = None
    bounds: BoundsConfig | None = None

    _check_source_url = field_validator("url")(_check_url)

    @field_validator("price_pointer", "time_pointer", "round_pointer")
    @classmethod
    def _pointer(cls, value: str | None) -> str | None:
        if value is not None:
            parse_pointer(value)
        return value

    @model_validator(mode="after")
    def _where(self) -> SourceConfig:
        if self.kind == "http" and (self.url is None or self.path is not None):
            raise ValueError("an http source needs url (and no path)")
        if self.kind == "file" and (self.path is None or self.url is not None):
            raise ValueError("a file source needs path (and no url)")
        return self

    def to_spec(self, decimals: int, heartbeat_s: int, bounds: Bounds | None) -> SourceSpec:
        return SourceSpec(
            kind=self.kind,
            location=self.url if self.kind == "http" else str(self.path),  # type: ignore[arg-type]
            price_pointer=self.price_pointer,
            time_pointer=self.time_pointer,
            round_pointer=self.round_pointer,
            decimals=decimals,
            heartbeat_s=self.heartbeat_s or heartbeat_s,
            bounds=self.bounds.to_bounds() if self.bounds else bounds,
            scaled=self.scaled,
        )


class FeedConfig(_Section):
    """One pair. ``kind`` ``http``/``file``: the primary source's fields are the feed's own
    (``url`` or ``path``, the pointers, ``scaled``), with an optional ``secondary`` source.
    ``inverted``: 1/x of the feed named in ``of``. ``crossed``: ``legs = ["A/Q", "B/Q"]`` gives
    A/B, each leg validated as its own feed. ``decimals``: the price's scale; ``heartbeat_s``:
    how often the source updates at least; ``bounds``: the aggregator's min and max."""

    pair: str
    kind: Literal["http", "file", "inverted", "crossed"]
    decimals: Annotated[int, Field(ge=0, le=DECIMALS_MAX)] = 8
    heartbeat_s: Annotated[int, Field(ge=1, le=HEARTBEAT_S_MAX)] = 3600
    bounds: BoundsConfig | None = None
    url: str | None = None
    path: Path | None = None
    price_pointer: str | None = None
    time_pointer: str | None = None
    round_pointer: str | None = None
    scaled: bool = False
    secondary: SourceConfig | None = None
    of: str | None = None
    legs: tuple[str, str] | None = None

    @field_validator("pair", "of")
    @classmethod
    def _pair(cls, value: str | None) -> str | None:
        return None if value is None else check_pair(value)

    @field_validator("legs")
    @classmethod
    def _legs(cls, value: tuple[str, str] | None) -> tuple[str, str] | None:
        if value is not None:
            for leg in value:
                check_pair(leg)
        return value

    @model_validator(mode="after")
    def _shape(self) -> FeedConfig:
        source_fields = (self.url, self.path, self.price_pointer, self.time_pointer)
        if self.kind in ("http", "file"):
            self.primary()  # checks the source's fields
            if self.of is not None or self.legs is not None:
                raise ValueError(f"a {self.kind} feed has no of or legs")
        else:
            if any(v is not None for v in source_fields) or self.secondary is not None:
                raise ValueError(
                    f"an {self.kind} feed has no source of its own (url, path, pointers,"
                    " secondary): its legs' sources are used"
                )
            base, quote = split_pair(self.pair)
            if self.kind == "inverted":
                if self.of is None or self.legs is not None:
                    raise ValueError("an inverted feed needs of (and no legs)")
                if split_pair(self.of) != (quote, base):
                    raise ValueError(f"{self.pair} is not the inverse of {self.of}")
            if self.kind == "crossed":
                if self.legs is None or self.of is not None:
                    raise ValueError("a crossed feed needs legs = [A/Q, B/Q] (and no of)")
                (a, q1), (b, q2) = split_pair(self.legs[0]), split_pair(self.legs[1])
                if q1 != q2 or (a, b) != (base, quote):
                    raise ValueError(
                        f"{self.pair} is not {self.legs[0]} ÷ {self.legs[1]}"
                        " (legs A/Q and B/Q give A/B)"
                    )
        return self

    def primary(self) -> SourceConfig:
        """An http or file feed's own source (its fields checked as a source's)."""
        if self.price_pointer is None or self.time_pointer is None:
            raise ValueError("an http or file feed needs price_pointer and time_pointer")
        return SourceConfig(
            kind="http" if self.kind == "http" else "file",
            url=self.url,
            path=self.path,
            price_pointer=self.price_pointer,
            time_pointer=self.time_pointer,
            round_pointer=self.round_pointer,
            scaled=self.scaled,
        )

    def to_spec(self) -> FeedSpec:
        bounds = self.bounds.to_bounds() if self.bounds else None
        if self.kind in ("http", "file"):
            return FeedSpec(
                pair=self.pair,
                kind=self.kind,
                decimals=self.decimals,
                primary=self.primary().to_spec(self.decimals, self.heartbeat_s, bounds),
                secondary=(
                    self.secondary.to_spec(self.decimals, self.heartbeat_s, None)
                    if self.secondary
                    else None
                ),
                bounds=bounds,
            )
        legs = (self.of,) if self.kind == "inverted" else self.legs
        assert legs is not None
        return FeedSpec(
            pair=self.pair,
            kind=self.kind,
            decimals=self.decimals,
            legs=tuple(leg for leg in legs if leg is not None),
            bounds=bounds,
        )


class OracleConfig(_Section):
    """``feeds``: the pairs (``[[oracle.feeds]]``). ``heartbeat_margin_s``: how far past its
    heartbeat a price may be; ``clock_skew_s``: how far in the future a source's time may be;
    ``jump_limit``: the largest move from the last accepted price (0.5 = 50 %);
    ``divergence_limit``: the largest difference between primary and secondary (0.05 = 5 %);
    ``timeout_s``: one HTTP read's whole budget."""

    feeds: list[FeedConfig] = Field(default_factory=list)
    heartbeat_margin_s: Annotated[int, Field(ge=0, le=86_400)] = 60
    clock_skew_s: Annotated[int, Field(ge=0, le=300)] = 1
    jump_limit: Annotated[Decimal, Field(gt=0, le=10)] = Decimal("0.5")
    divergence_limit: Annotated[Decimal, Field(gt=0, le=1)] = Decimal("0.05")
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    # How often `sluice serve` reads every feed (the API answers what was read last).
    poll_s: Annotated[float, Field(gt=0, le=3600)] = 15.0

    @model_validator(mode="after")
    def _feeds(self) -> OracleConfig:
        by_pair: dict[str, FeedConfig] = {}
        for feed in self.feeds:
            if feed.pair in by_pair:
                raise ValueError(f"feeds: {feed.pair} is defined twice")
            by_pair[feed.pair] = feed
        for feed in self.feeds:
            for leg in feed.to_spec().legs:
                if leg not in by_pair:
                    raise ValueError(f"feeds: {feed.pair} uses {leg}, which is not defined")
        for feed in self.feeds:
            _check_acyclic(feed.pair, by_pair, ())
        return self

    def limits(self) -> OracleLimits:
        return OracleLimits(
            heartbeat_margin_s=self.heartbeat_margin_s,
            clock_skew_s=self.clock_skew_s,
            jump_limit=self.jump_limit,
            divergence_limit=self.divergence_limit,
        )

    def specs(self) -> dict[str, FeedSpec]:
        """The feeds by pair, as the oracle service uses them."""
        return {feed.pair: feed.to_spec() for feed in self.feeds}


def _check_acyclic(pair: str, by_pair: dict[str, FeedConfig], path: tuple[str, ...]) -> None:
    if pair in path:
        raise ValueError(f"feeds: {' → '.join((*path, pair))} is composed of itself")
    for leg in by_pair[pair].to_spec().legs:
        _check_acyclic(leg, by_pair, (*path, pair))
