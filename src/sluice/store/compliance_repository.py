"""The KYC registry's tables (DESIGN §6), read and written in the caller's transaction.

Guarantees:

* Replays write nothing twice: usage rows are keyed by operation id, holds and review items by
  their ids, flags by address; a second insert of the same key is skipped by the database
  (``ON CONFLICT DO NOTHING``) rather than checked first, so two writers cannot both insert.
  Whether a row went in is read from ``RETURNING`` (the row count of such an insert is not
  reported by every driver).
* ``profiles(…, lock=True)`` holds the customers' rows until commit on PostgreSQL
  (``SELECT … FOR UPDATE``, always in id order so two lockers never wait on each other). SQLite
  transactions begin with ``BEGIN IMMEDIATE`` and so are already serialised; nothing more is done.
* Reads for many customers or addresses are set-based (one query per ``CHUNK`` of ids), because
  ingestion asks for a whole batch at once.
* A hold leaves ``held`` at most once; a review item is closed at most once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Row, and_, delete, literal_column, select, update
from sqlalchemy.sql.dml import ReturningInsert

from sluice.domain.compliance import (
    HeldDeposit,
    HoldStatus,
    KycStatus,
    Profile,
    ReviewItem,
    TierLimits,
    UsageRecord,
    check_status,
)
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import format_timestamp
from sluice.store import tables as t
from sluice.store.rows import insert_for, optional_time, time_of, to_json, ts

CHUNK = 500  # bound on the number of parameters in one IN (…) list
HOLD_STATUSES: tuple[HoldStatus, ...] = ("held", "released", "returned")


@dataclass(frozen=True, slots=True)
class RiskRecord:
    """What the KYC registry stored about a customer beyond their :class:`Profile`."""

    risk_score: int
    risk_flags: tuple[str, ...]
    sanctions_match: dict[str, Any] | None
    updated_at: datetime | None


def _chunks(items: Collection[str], size: int = CHUNK) -> Iterator[list[str]]:
    # Sorted, so that row locks taken chunk by chunk are taken in one global order.
    ordered = sorted(set(items))
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


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


class SqlComplianceRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    @property
    def _postgresql(self) -> bool:
        return self._c.dialect.name == "postgresql"

    # --- profiles ---------------------------------------------------------------------------

    def profiles(self, customer_ids: Collection[str], *, lock: bool = False) -> dict[str, Profile]:
        table = t.customers
        columns = (
            table.c.id,
            table.c.kyc_tier,
            table.c.kyc_status,
            table.c.status_reason,
            table.c.risk_score,
        )
        found: dict[str, Profile] = {}
        for chunk in _chunks(customer_ids):
            query = select(*columns).where(table.c.id.in_(chunk)).order_by(table.c.id)
            if lock and self._postgresql:
                query = query.with_for_update()
            for customer_id, tier, status, reason, risk_score in self._c.execute(query):
                found[customer_id] = Profile(
                    customer_id, tier, check_status(status), reason, risk_score
                )
        return found

    def set_profile(
        self,
        customer_id: str,
        *,
        at: datetime,
        tier: int | None = None,
        status: KycStatus | None = None,
        status_reason: str | None = None,
        risk_score: int | None = None,
        risk_flags: Sequence[str] | None = None,
        sanctions_match: Mapping[str, object] | None = None,
    ) -> bool:
        """Change only the fields given (``None``: leave as is); False for an unknown customer.

        ``status_reason`` goes with ``status``: it is written whenever a status is (even as
        ``None``), so a new status never keeps the old status's reason; given alone, it only
        changes the reason. ``sanctions_match={}`` clears the stored
        screening hit (``None`` leaves it alone, as for every other field).
        """
        values: dict[str, object] = {"kyc_updated_at": format_timestamp(at)}
        if tier is not None:
            values["kyc_tier"] = tier
        if status is not None:
            values["kyc_status"] = check_status(status)
        if status is not None or status_reason is not None:
            values["status_reason"] = status_reason
        if risk_score is not None:
            values["risk_score"] = risk_score
        if risk_flags is not None:
            values["risk_flags"] = to_json(list(risk_flags))
        if sanctions_match is not None:
            values["sanctions_match"] = to_json(dict(sanctions_match)) if sanctions_match else None
        table = t.customers
        changed = self._c.execute(
            update(table).where(table.c.id == customer_id).values(**values)
        ).rowcount
        return bool(changed)

    def risk_record(self, customer_id: str) -> RiskRecord | None:
        """The stored risk flags and last sanctions hit (not part of :class:`Profile`)."""
        table = t.customers
        row = self._c.execute(
            select(
                table.c.risk_score,
                table.c.risk_flags,
                table.c.sanctions_match,
                table.c.kyc_updated_at,
            ).where(table.c.id == customer_id)
        ).first()
        if row is None:
            return None
        return RiskRecord(
            risk_score=row.risk_score,
            risk_flags=tuple(orjson.loads(row.risk_flags)) if row.risk_flags else (),
            sanctions_match=orjson.loads(row.sanctions_match) if row.sanctions_match else None,
            updated_at=optional_time(row.kyc_updated_at),
        )

    def customer_names(self) -> list[tuple[str, str]]:
        table = t.customers
        rows = self._c.execute(select(table.c.id, table.c.name).order_by(table.c.id))
        return [(row.id, row.name) for row in rows]

    # --- usage and limits -------------------------------------------------------------------

    def usage(self, customer_ids: Collection[str], since: datetime) -> dict[str, list[UsageRecord]]:
        """Usage strictly after ``since``, oldest first; every customer asked about has a list
        (empty if they used nothing)."""
        table = t.compliance_usage
        after = format_timestamp(since)  # canonical text: text order is time order
        found: dict[str, list[UsageRecord]] = {customer_id: [] for customer_id in customer_ids}
        for chunk in _chunks(customer_ids):
            rows = self._c.execute(
                select(table)
                .where(and_(table.c.customer_id.in_(chunk), table.c.occurred_at > after))
                .order_by(table.c.customer_id, table.c.occurred_at, table.c.operation_id)
            )
            for row in rows:
                found[row.customer_id].append(
                    UsageRecord(
                        operation_id=row.operation_id,
                        operation=row.operation,
                        amount=row.amount,
                        occurred_at=time_of(row.occurred_at),
                        counterparty=row.counterparty,
                    )
                )
        return found

    def record_usage(self, customer_id: str, records: Sequence[UsageRecord]) -> None:
        if not records:
            return
        self._c.execute(
            insert_for(self._c, t.compliance_usage).on_conflict_do_nothing(
                index_elements=["operation_id"]
            ),
            [
                {
                    "operation_id": record.operation_id,
                    "customer_id": customer_id,
                    "operation": record.operation,
                    "amount": record.amount,
                    "counterparty": record.counterparty,
                    "occurred_at": format_timestamp(record.occurred_at),
                }
                for record in records
            ],
        )

    def forget_usage(self, operation_ids: Collection[str]) -> int:
        """Remove the usage of operations that moved nothing in the end (a refunded withdrawal)."""
        if not operation_ids:
            return 0
        table = t.compliance_usage
        removed = 0
        ids = sorted(set(operation_ids))
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            removed += int(
                self._c.execute(delete(table).where(table.c.operation_id.in_(chunk))).rowcount
            )
        return removed

    def limit_overrides(self) -> dict[tuple[int, str], TierLimits]:
        table = t.compliance_limits
        rows = self._c.execute(select(table).order_by(table.c.tier, table.c.operation))
        return {
            (row.tier, row.operation): TierLimits(row.per_operation, row.daily, row.monthly)
            for row in rows
        }

    def set_limits(
        self, tier: int, operation: str, limits: TierLimits, actor: str, at: datetime
    ) -> None:
        values = {
            "per_operation": limits.per_operation,
            "daily": limits.daily,
            "monthly": limits.monthly,
            "updated_by": actor,
            "updated_at": format_timestamp(at),
        }
        statement = insert_for(self._c, t.compliance_limits).values(
            tier=tier, operation=operation, **values
        )
        self._c.execute(
            statement.on_conflict_do_update(
                index_elements=["tier", "operation"],
                set_={name: statement.excluded[name] for name in values},
            )
        )

    # --- flagged addresses ------------------------------------------------------------------

    def flagged(self, addresses: Collection[str]) -> dict[str, str]:
        table = t.flagged_addresses
        found: dict[str, str] = {}
        for chunk in _chunks(addresses):
            rows = self._c.execute(
                select(table.c.address, table.c.reason).where(table.c.address.in_(chunk))
            )
            found.update({row.address: row.reason for row in rows})
        return found

    def flag_address(self, address: str, reason: str, actor: str, at: datetime) -> bool:
        """False if already flagged: the first flag (its reason, officer and time) stays."""
        statement: ReturningInsert[Any] = (
            insert_for(self._c, t.flagged_addresses)
            .values(address=address, reason=reason, flagged_by=actor, flagged_at=ts(at))
            .on_conflict_do_nothing(index_elements=["address"])
            .returning(literal_column("1"))
        )
        return self._c.execute(statement).first() is not None

    def unflag_address(self, address: str) -> bool:
        table = t.flagged_addresses
        return bool(self._c.execute(delete(table).where(table.c.address == address)).rowcount)

    def flagged_addresses(self) -> list[tuple[str, str, str, datetime]]:
        table = t.flagged_addresses
        rows = self._c.execute(select(table).order_by(table.c.flagged_at, table.c.address))
        return [(row.address, row.reason, row.flagged_by, time_of(row.flagged_at)) for row in rows]

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
