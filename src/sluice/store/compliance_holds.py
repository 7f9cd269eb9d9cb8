"""Held deposits and the review queue as stored: a hold leaves ``held`` at most once, a review
item is closed at most once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, literal_column, select, update
from sqlalchemy.sql.dml import ReturningInsert

from sluice.domain.compliance import HeldDeposit, HoldStatus, ReviewItem
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import format_timestamp
from sluice.store import tables as t
from sluice.store.compliance_connection import ComplianceConnection
from sluice.store.rows import insert_for, optional_time, time_of, ts

HOLD_STATUSES: tuple[HoldStatus, ...] = ("held", "released", "returned")


def _hold_status(value: str) -> HoldStatus:
    for status in HOLD_STATUSES:
        if value == status:
            return status
    raise InvalidInputError(f"unknown hold status {value!r}; one of {', '.join(HOLD_STATUSES)}")


def _hold_from_row(row: Row[Any]) -> HeldDeposit:
    return HeldDeposit(
        id=row.id,
        sender=row.sender,
        instrument_admin=row.instrument_admin,
        instrument_id=row.instrument_id,
        amount=row.amount,
        update_id=row.update_id,
        why=row.why,
        held_at=time_of(row.held_at),
        customer_id=row.customer_id,
        deposit_account=row.deposit_account,
        status=_hold_status(row.status),
        decided_by=row.decided_by,
        decided_at=optional_time(row.decided_at),
        withdrawal_id=row.withdrawal_id,
    )


def _review_from_row(row: Row[Any]) -> ReviewItem:
    return ReviewItem(
        id=row.id,
        kind=row.kind,
        reason=row.reason,
        opened_at=time_of(row.opened_at),
        customer_id=row.customer_id,
        subject=row.subject,
        closed_at=optional_time(row.closed_at),
        closed_by=row.closed_by,
        resolution=row.resolution,
    )


class SqlComplianceHolds(ComplianceConnection):
    """Held deposits and review items, keyed by their ids."""

    # --- held deposits ----------------------------------------------------------------------

    def add_hold(self, hold: HeldDeposit) -> bool:
        """False if a hold with this id exists (an ingestion replay): the first one stays."""
        statement: ReturningInsert[Any] = (
            insert_for(self._c, t.compliance_holds)
            .values(
                id=hold.id,
                customer_id=hold.customer_id,
                deposit_account=hold.deposit_account,
                sender=hold.sender,
                instrument_admin=hold.instrument_admin,
                instrument_id=hold.instrument_id,
                amount=hold.amount,
                update_id=hold.update_id,
                why=hold.why,
                status=_hold_status(hold.status),
                held_at=format_timestamp(hold.held_at),
                decided_by=hold.decided_by,
                decided_at=ts(hold.decided_at),
                withdrawal_id=hold.withdrawal_id,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(literal_column("1"))
        )
        return self._c.execute(statement).first() is not None

    def holds(
        self, *, status: str | None = "held", offset: int = 0, limit: int = 1000
    ) -> list[HeldDeposit]:
        """Holds in ``status`` (None: all), oldest first, from the ``offset``-th on."""
        table = t.compliance_holds
        query = select(table)
        if status is not None:
            query = query.where(table.c.status == _hold_status(status))
        query = query.order_by(table.c.held_at, table.c.id).offset(offset).limit(limit)
        return [_hold_from_row(row) for row in self._c.execute(query)]

    def hold(self, hold_id: str, *, lock: bool = False) -> HeldDeposit | None:
        table = t.compliance_holds
        query = select(table).where(table.c.id == hold_id)
        if lock and self._postgresql:
            query = query.with_for_update()
        row = self._c.execute(query).first()
        return _hold_from_row(row) if row else None

    def close_hold(
        self, hold_id: str, status: str, actor: str, at: datetime, withdrawal_id: str | None = None
    ) -> bool:
        """Release or return a hold that is still ``held``; False if unknown or already closed."""
        closed = _hold_status(status)
        if closed == "held":
            raise InvalidInputError("a hold is closed as 'released' or 'returned', not 'held'")
        table = t.compliance_holds
        changed = self._c.execute(
            update(table)
            .where(and_(table.c.id == hold_id, table.c.status == "held"))
            .values(
                status=closed,
                decided_by=actor,
                decided_at=format_timestamp(at),
                withdrawal_id=withdrawal_id,
            )
        ).rowcount
        return bool(changed)

    def reopen_hold(self, withdrawal_id: str) -> HeldDeposit | None:
        """The hold a failed return (``withdrawal_id``) came from, set back to ``held``."""
        table = t.compliance_holds
        row = self._c.execute(
            select(table.c.id).where(
                and_(table.c.withdrawal_id == withdrawal_id, table.c.status == "returned")
            )
        ).first()
        if row is None:
            return None
        self._c.execute(
            update(table)
            .where(table.c.id == row.id)
            .values(status="held", decided_by=None, decided_at=None, withdrawal_id=None)
        )
        return self.hold(row.id)

    # --- the review queue -------------------------------------------------------------------

    def open_review(self, review: ReviewItem) -> bool:
        """False if an item with this id exists (a replay): the first one stays."""
        statement: ReturningInsert[Any] = (
            insert_for(self._c, t.compliance_reviews)
            .values(
                id=review.id,
                kind=review.kind,
                customer_id=review.customer_id,
                subject=review.subject,
                reason=review.reason,
                opened_at=format_timestamp(review.opened_at),
                closed_at=ts(review.closed_at),
                closed_by=review.closed_by,
                resolution=review.resolution,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(literal_column("1"))
        )
        return self._c.execute(statement).first() is not None

    def reviews(
        self, *, open_only: bool = True, offset: int = 0, limit: int = 1000
    ) -> list[ReviewItem]:
        """Review items, oldest first (``open_only``: those not yet closed), from the
        ``offset``-th on."""
        table = t.compliance_reviews
        query = select(table)
        if open_only:
            query = query.where(table.c.closed_at.is_(None))
        query = query.order_by(table.c.opened_at, table.c.id).offset(offset).limit(limit)
        return [_review_from_row(row) for row in self._c.execute(query)]

    def review(self, review_id: str) -> ReviewItem | None:
        table = t.compliance_reviews
        row = self._c.execute(select(table).where(table.c.id == review_id)).first()
        return _review_from_row(row) if row is not None else None

    def close_reviews_of(self, subject: str, actor: str, resolution: str, at: datetime) -> int:
        """Close every open review item about ``subject`` (a held deposit, say)."""
        table = t.compliance_reviews
        return int(
            self._c.execute(
                update(table)
                .where(and_(table.c.subject == subject, table.c.closed_at.is_(None)))
                .values(closed_at=format_timestamp(at), closed_by=actor, resolution=resolution)
            ).rowcount
        )

    def close_review(self, review_id: str, actor: str, resolution: str, at: datetime) -> bool:
        table = t.compliance_reviews
        changed = self._c.execute(
            update(table)
            .where(and_(table.c.id == review_id, table.c.closed_at.is_(None)))
            .values(closed_at=format_timestamp(at), closed_by=actor, resolution=resolution)
        ).rowcount
        return bool(changed)
