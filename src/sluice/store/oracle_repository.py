"""The price oracle's tables (``oracle_feeds``, ``oracle_sources``, ``oracle_rejections``) on
SQLAlchemy Core, in the caller's transaction. Prices go in and out as exact decimal text."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, select

from sluice.domain.oracle import HEALTHS, RULES, SOURCES, Accepted, Health, Rule, Source
from sluice.ports.oracle import FeedState, RecordedRejection
from sluice.store.oracle_tables import oracle_feeds as feeds_t
from sluice.store.oracle_tables import oracle_rejections as rejections_t
from sluice.store.oracle_tables import oracle_sources as sources_t
from sluice.store.rows import check_page, insert_for, optional_time, time_of, ts

DETAIL_CHARS_MAX = 2000
OBSERVED_CHARS_MAX = 200


def _health(text: str) -> Health:
    for health in HEALTHS:
        if health == text:
            return health
    raise AssertionError(f"oracle_feeds holds an unknown health {text!r}")


def _source(text: str | None) -> Source | None:
    for source in SOURCES:
        if source == text:
            return source
    assert text is None, f"an oracle table holds an unknown source {text!r}"
    return None


def _rule(text: str) -> Rule:
    for rule in RULES:
        if rule == text:
            return rule
    raise AssertionError(f"oracle_rejections holds an unknown rule {text!r}")


def _feed(row: Any) -> FeedState:
    return FeedState(
        pair=row.pair,
        health=_health(row.health),
        source=_source(row.source),
        on_fallback=bool(row.on_fallback),
        price=Decimal(row.price) if row.price is not None else None,
        observed_at=optional_time(row.observed_at),
        updated_at=time_of(row.updated_at),
    )


def _rejection(row: Any) -> RecordedRejection:
    return RecordedRejection(
        id=row.id,
        pair=row.pair,
        source=_source(row.source),
        rule=_rule(row.rule),
        detail=row.detail,
        observed=row.observed,
        at=time_of(row.at),
    )


class SqlOracleRepository:
    """:class:`~sluice.ports.oracle.OracleRepository` on the unit of work's connection."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def feed(self, pair: str, *, lock: bool = False) -> FeedState | None:
        statement = select(feeds_t).where(feeds_t.c.pair == pair)
        if lock:
            # A pair's first evaluation has no row to lock: insert a placeholder (the caller
            # replaces it before committing), so that two first evaluations wait for each other
            # too. A concurrent insert of the same key waits for this transaction's end.
            created = self._connection.execute(
                insert_for(self._connection, feeds_t)
                .values(
                    pair=pair,
                    health="offline",
                    source=None,
                    on_fallback=False,
                    updated_at=ts(datetime.now(UTC)),
                )
                .on_conflict_do_nothing(index_elements=["pair"])
                .returning(feeds_t.c.pair)
            ).first()
            if created is not None:
                return None
            statement = statement.with_for_update()
        row = self._connection.execute(statement).first()
        return _feed(row) if row is not None else None

    def feeds(self) -> list[FeedState]:
        rows = self._connection.execute(select(feeds_t).order_by(feeds_t.c.pair)).all()
        return [_feed(row) for row in rows]

    def save_feed(self, state: FeedState) -> None:
        values = {
            "health": state.health,
            "source": state.source,
            "on_fallback": state.on_fallback,
            "price": str(state.price) if state.price is not None else None,
            "observed_at": ts(state.observed_at),
            "updated_at": ts(state.updated_at),
        }
        statement = insert_for(self._connection, feeds_t).values(pair=state.pair, **values)
        self._connection.execute(
            statement.on_conflict_do_update(index_elements=["pair"], set_=values)
        )

    def accepted(self, pair: str, source: Source) -> Accepted | None:
        row = self._connection.execute(
            select(sources_t).where(sources_t.c.pair == pair, sources_t.c.source == source)
        ).first()
        if row is None:
            return None
        return Accepted(
            price=Decimal(row.price),
            at=time_of(row.observed_at),
            round_id=int(row.round_id) if row.round_id is not None else None,
            accepted_at=time_of(row.accepted_at),
        )

    def save_accepted(self, pair: str, source: Source, accepted: Accepted) -> None:
        values = {
            "price": str(accepted.price),
            "round_id": str(accepted.round_id) if accepted.round_id is not None else None,
            "observed_at": ts(accepted.at),
            "accepted_at": ts(accepted.accepted_at),
        }
        statement = insert_for(self._connection, sources_t).values(
            pair=pair, source=source, **values
        )
        self._connection.execute(
            statement.on_conflict_do_update(index_elements=["pair", "source"], set_=values)
        )

    def add_rejection(
        self,
        pair: str,
        source: Source | None,
        rule: Rule,
        detail: str,
        observed: str | None,
        at: datetime,
    ) -> int:
        result = self._connection.execute(
            rejections_t.insert()
            .values(
                pair=pair,
                source=source,
                rule=rule,
                detail=detail[:DETAIL_CHARS_MAX],
                observed=observed[:OBSERVED_CHARS_MAX] if observed is not None else None,
                at=ts(at),
            )
            .returning(rejections_t.c.id)
        )
        return int(result.scalar_one())

    def rejections(self, pair: str | None = None, *, limit: int = 100) -> list[RecordedRejection]:
        check_page(0, limit)
        statement = select(rejections_t).order_by(rejections_t.c.id.desc()).limit(limit)
        if pair is not None:
            statement = statement.where(rejections_t.c.pair == pair)
        return [_rejection(row) for row in self._connection.execute(statement).all()]

    def last_rejections(self) -> dict[str, RecordedRejection]:
        newest = select(func.max(rejections_t.c.id)).group_by(rejections_t.c.pair).scalar_subquery()
        rows = self._connection.execute(
            select(rejections_t).where(rejections_t.c.id.in_(newest))
        ).all()
        return {row.pair: _rejection(row) for row in rows}
