"""What the oracle service needs: a reader of price sources, and the repository of each feed's
state and of every rejected price, in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from sluice.domain.oracle import Accepted, Health, Reading, Rule, Source, SourceSpec


class PriceReader(Protocol):
    """Reads one source. Never raises for anything the source does: a failure is a
    ``unreachable`` or ``malformed`` :class:`~sluice.domain.oracle.Rejection`."""

    def read(self, source: SourceSpec) -> Reading: ...


@dataclass(frozen=True, slots=True)
class FeedState:
    """A pair's health after its last evaluation (a row of ``oracle_feeds``): the source in
    use (None: offline), the price used and its time, and whether it is on its fallback."""

    pair: str
    health: Health
    source: Source | None
    on_fallback: bool
    price: Decimal | None
    observed_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RecordedRejection:
    """One rejected price or failed read (a row of ``oracle_rejections``)."""

    id: int
    pair: str
    source: Source | None
    rule: Rule
    detail: str
    observed: str | None
    at: datetime


class OracleRepository(Protocol):
    """``oracle_feeds`` (health per pair), ``oracle_sources`` (the last accepted price per
    pair and source) and ``oracle_rejections``."""

    def feed(self, pair: str, *, lock: bool = False) -> FeedState | None:
        """The pair's state; ``lock``: hold its row until the transaction ends (PostgreSQL),
        so two evaluations of one pair do not interleave — also the first two: the row is
        created for that (None is returned), and the caller must save the pair's state
        before committing."""
        ...

    def feeds(self) -> list[FeedState]:
        """Every pair's state, by pair."""
        ...

    def save_feed(self, state: FeedState) -> None:
        """Insert or replace the pair's state."""
        ...

    def accepted(self, pair: str, source: Source) -> Accepted | None:
        """The last price ``source`` gave for ``pair`` that passed its own rules."""
        ...

    def save_accepted(self, pair: str, source: Source, accepted: Accepted) -> None:
        """Insert or replace it."""
        ...

    def add_rejection(
        self,
        pair: str,
        source: Source | None,
        rule: Rule,
        detail: str,
        observed: str | None,
        at: datetime,
    ) -> int:
        """Record a rejection; its id."""
        ...

    def rejections(self, pair: str | None = None, *, limit: int = 100) -> list[RecordedRejection]:
        """The newest rejections first (of one pair, or all), at most ``limit`` (≤ 1000)."""
        ...

    def last_rejections(self) -> dict[str, RecordedRejection]:
        """Each pair's newest rejection."""
        ...
