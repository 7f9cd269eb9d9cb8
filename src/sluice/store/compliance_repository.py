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
* Usage totals (``compliance_usage_totals``, per customer, operation and hour or day) move with
  the usage rows in the same statement sequence: a row inserted (not a replay skipped by the
  conflict clause) adds to its hour and day, a row forgotten takes its amount off again. On
  PostgreSQL the totals are upserted with the addition done by the database (``amount +
  excluded.amount``, exact ``NUMERIC``); SQLite keeps money as text and serialises whole
  transactions, so there the totals are read, added in Python and upserted with the result.
* What a decision reads is bounded whatever the customer's history: the totals and edge records
  of :class:`UsageSpan`, and at most ``limit`` recent rows per customer.
* A hold leaves ``held`` at most once; a review item is closed at most once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    and_,
    bindparam,
    delete,
    false,
    literal_column,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import ReturningInsert
from sqlalchemy.sql.expression import BindParameter, Executable

from sluice.domain.compliance import (
    BUCKET_LENGTHS_S,
    OPERATIONS,
    HeldDeposit,
    HoldStatus,
    KycStatus,
    Profile,
    ReviewItem,
    TierLimits,
    UsageBucket,
    UsageRecord,
    UsageSpan,
    UsageWindows,
    check_status,
    usage_buckets,
)
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import format_timestamp
from sluice.store import tables as t
from sluice.store.bulk import execute_many, insert_new_rows, money_value, select_rows
from sluice.store.rows import insert_for, optional_time, time_of, to_json, ts

CHUNK = 500  # bound on the number of parameters in one IN (…) list
RECENT_CHUNK = 50  # customers per statement reading each one's latest usage rows
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


def _in_ranges(
    column: ColumnElement[Any], ranges: Sequence[tuple[datetime, datetime]]
) -> ColumnElement[bool]:
    """``column`` (a timestamp's canonical text) in any of the half-open ``ranges``."""
    if not ranges:
        return false()
    return or_(
        *(
            and_(column >= format_timestamp(low), column < format_timestamp(high))
            for low, high in ranges
        )
    )


SPAN_RANGES = 3  # a span's record and hour ranges, at most (see UsageSpan.of)


def _range_parameters(
    name: str, ranges: Sequence[tuple[datetime, datetime]], count: int
) -> dict[str, str]:
    """Bind values for ``count`` ranges; missing ones are empty (low = high)."""
    assert len(ranges) <= count, f"{len(ranges)} {name} ranges, at most {count} expected"
    padded = list(ranges) + [(ranges[-1][1], ranges[-1][1])] * (count - len(ranges))
    values = {}
    for index, (low, high) in enumerate(padded):
        values[f"{name}_low_{index}"] = format_timestamp(low)
        values[f"{name}_high_{index}"] = format_timestamp(high)
    return values


def _usage_columns() -> tuple[ColumnElement[Any], ...]:
    """The columns :func:`_usage_from_tuple` reads, in its order."""
    usage = t.compliance_usage
    return (
        usage.c.customer_id,
        usage.c.operation_id,
        usage.c.operation,
        usage.c.amount,
        usage.c.occurred_at,
        usage.c.counterparty,
    )


def _usage_from_tuple(row: Sequence[Any]) -> tuple[str, UsageRecord]:
    customer_id, operation_id, operation, amount, occurred_at, counterparty = row
    return customer_id, UsageRecord(
        operation_id, operation, amount, time_of(occurred_at), counterparty
    )


def _totals_statement() -> Executable:
    """The totals of a span: one indexed range of the primary key per part (parts are disjoint,
    so UNION ALL repeats no row)."""
    totals = t.compliance_usage_totals
    ids: BindParameter[list[str]] = bindparam("ids", expanding=True)
    operations: BindParameter[list[str]] = bindparam("operations", expanding=True)
    columns = (
        totals.c.customer_id,
        totals.c.operation,
        totals.c.length_s,
        totals.c.starts_at,
        totals.c.amount,
    )
    parts = [("hour", 3600, index) for index in range(SPAN_RANGES)] + [("day", 86400, 0)]
    return union_all(
        *(
            select(*columns).where(
                totals.c.customer_id.in_(ids),
                totals.c.length_s == length_s,
                totals.c.starts_at >= bindparam(f"{name}_low_{index}"),
                totals.c.starts_at < bindparam(f"{name}_high_{index}"),
                totals.c.operation.in_(operations),
            )
            for name, length_s, index in parts
        )
    )


def _edge_records_statement() -> Executable:
    usage = t.compliance_usage
    ids: BindParameter[list[str]] = bindparam("ids", expanding=True)
    operations: BindParameter[list[str]] = bindparam("operations", expanding=True)
    return union_all(
        *(
            select(*_usage_columns()).where(
                usage.c.customer_id.in_(ids),
                usage.c.occurred_at >= bindparam(f"edge_low_{index}"),
                usage.c.occurred_at < bindparam(f"edge_high_{index}"),
                usage.c.operation.in_(operations),
            )
            for index in range(SPAN_RANGES)
        )
    )


@cache
def _latest_usage_statement(customers: int) -> Executable:
    """The latest ``:limit`` usage rows in ``(:low, :high]`` of each of ``customers`` customers
    (``:id_0`` …): one index range per customer, newest first, read no further than the limit.
    Built once per chunk size, so each call only binds values."""
    usage = t.compliance_usage
    low: BindParameter[str] = bindparam("low")
    high: BindParameter[str] = bindparam("high")
    limit: BindParameter[int] = bindparam("limit")
    latest = [
        select(*_usage_columns())
        .where(
            usage.c.customer_id == bindparam(f"id_{index}"),
            usage.c.occurred_at > low,
            usage.c.occurred_at <= high,
        )
        .order_by(usage.c.occurred_at.desc(), usage.c.operation_id.desc())
        .limit(limit)
        .subquery()
        for index in range(customers)
    ]
    return union_all(*(select(part) for part in latest))


# The usage row's columns as record_usage_of writes them (operation_id first: the key).
_USAGE_COLUMNS = (
    "operation_id",
    "customer_id",
    "operation",
    "amount",
    "counterparty",
    "occurred_at",
)


@cache
def _totals_upsert(dialect: str) -> Executable:
    """Totals inserted or merged: PostgreSQL adds in the database (exact ``NUMERIC``); on SQLite
    the caller passes the new total (money is text there, and the transaction is exclusive)."""
    totals = t.compliance_usage_totals
    insert = postgresql.insert(totals) if dialect == "postgresql" else sqlite.insert(totals)
    excluded = insert.excluded
    if dialect == "postgresql":
        new_values = {
            "amount": totals.c.amount + excluded.amount,
            "count": totals.c.count + excluded.count,
        }
    else:
        new_values = {"amount": excluded.amount, "count": excluded.count}
    return insert.on_conflict_do_update(
        index_elements=["customer_id", "length_s", "starts_at", "operation"], set_=new_values
    )


def _totals_of_buckets_statement() -> Executable:
    totals = t.compliance_usage_totals
    ids: BindParameter[list[str]] = bindparam("ids", expanding=True)
    starts: BindParameter[list[str]] = bindparam("starts", expanding=True)
    return select(
        totals.c.customer_id,
        totals.c.length_s,
        totals.c.starts_at,
        totals.c.operation,
        totals.c.amount,
        totals.c.count,
    ).where(
        totals.c.customer_id.in_(ids),
        totals.c.length_s == bindparam("length_s"),
        totals.c.starts_at.in_(starts),
    )


def _flagged_statement() -> Executable:
    table = t.flagged_addresses
    addresses: BindParameter[list[str]] = bindparam("addresses", expanding=True)
    return select(table.c.address, table.c.reason).where(table.c.address.in_(addresses))


_TOTALS_OF_BUCKETS = _totals_of_buckets_statement()
_FLAGGED = _flagged_statement()
_TOTALS_IN_SPAN = _totals_statement()
_EDGE_RECORDS = _edge_records_statement()


def _usage_from_row(row: Row[Any]) -> UsageRecord:
    return UsageRecord(
        operation_id=row.operation_id,
        operation=row.operation,
        amount=row.amount,
        occurred_at=time_of(row.occurred_at),
        counterparty=row.counterparty,
    )


def _bucket_key(bucket: UsageBucket) -> tuple[int, str, str]:
    return (bucket.length_s, format_timestamp(bucket.starts_at), bucket.operation)


def _plus(bucket: UsageBucket, known: tuple[Decimal, int] | None) -> UsageBucket:
    if known is None:
        return bucket
    amount, count = known
    return UsageBucket(
        bucket.operation,
        bucket.length_s,
        bucket.starts_at,
        amount + bucket.amount,
        count + bucket.count,
    )


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

    def usage_windows(
        self,
        customer_ids: Collection[str],
        first: datetime,
        last: datetime,
        operations: Collection[str] = OPERATIONS,
    ) -> dict[str, UsageWindows]:
        """What decisions at times in ``[first, last]`` need of each customer's usage: the hour
        and day totals and the edge records of :class:`UsageSpan` — a bounded number of rows
        however long the history, each range read through an index."""
        span = UsageSpan.of(first, last)
        found = {customer_id: UsageWindows(span, operations) for customer_id in customer_ids}
        ranges = {
            **_range_parameters("hour", span.hour_ranges, SPAN_RANGES),
            **_range_parameters("day", span.day_ranges, 1),
        }
        edges = _range_parameters("edge", span.record_ranges, SPAN_RANGES)
        for chunk in _chunks(customer_ids):
            kinds = sorted(set(operations))
            rows = self._c.execute(_TOTALS_IN_SPAN, {"ids": chunk, "operations": kinds, **ranges})
            for customer_id, operation, length_s, starts_at, amount in rows:
                found[customer_id].add_total(operation, length_s, time_of(starts_at), amount)
            edge_rows = self._c.execute(_EDGE_RECORDS, {"ids": chunk, "operations": kinds, **edges})
            for row in edge_rows:
                customer_id, record = _usage_from_tuple(row)
                found[customer_id].add_record(record)
        return found

    def recent_usage(
        self, customer_ids: Collection[str], after: datetime, until: datetime, limit: int
    ) -> dict[str, list[UsageRecord]]:
        """Each customer's latest ``limit`` usage rows in ``(after, until]``, oldest first."""
        low, high = format_timestamp(after), format_timestamp(until)
        found: dict[str, list[UsageRecord]] = {customer_id: [] for customer_id in customer_ids}
        for chunk in _chunks(customer_ids, RECENT_CHUNK):
            parameters: dict[str, object] = {"low": low, "high": high, "limit": limit}
            parameters.update(
                {f"id_{index}": customer_id for index, customer_id in enumerate(chunk)}
            )
            rows = select_rows(self._c, _latest_usage_statement(len(chunk)), parameters)
            for customer_id, operation_id, operation, amount, occurred_at, counterparty in rows:
                found[customer_id].append(
                    UsageRecord(
                        operation_id,
                        operation,
                        amount if type(amount) is Decimal else Decimal(amount),
                        time_of(occurred_at),
                        counterparty,
                    )
                )
        for records in found.values():
            records.sort(key=lambda record: (record.occurred_at, record.operation_id))
        return found

    def counterparties_seen(
        self, customer_id: str, counterparties: Collection[str], after: datetime, until: datetime
    ) -> set[str]:
        """Which of ``counterparties`` the customer dealt with in ``(after, until]`` (one indexed
        look-up each)."""
        usage = t.compliance_usage
        seen: set[str] = set()
        for counterparty in sorted(set(counterparties)):
            row = self._c.execute(
                select(usage.c.counterparty)
                .where(
                    usage.c.customer_id == customer_id,
                    usage.c.counterparty == counterparty,
                    usage.c.occurred_at > format_timestamp(after),
                    usage.c.occurred_at <= format_timestamp(until),
                )
                .limit(1)
            ).first()
            if row is not None:
                seen.add(counterparty)
        return seen

    def record_usage(self, customer_id: str, records: Sequence[UsageRecord]) -> None:
        self.record_usage_of({customer_id: records})

    def record_usage_of(self, records_by_customer: Mapping[str, Sequence[UsageRecord]]) -> None:
        """Insert usage rows of many customers at once, and add the new ones to the totals."""
        money = money_value(self._c)
        rows = [
            (
                record.operation_id,
                customer_id,
                record.operation,
                money(record.amount),
                record.counterparty,
                format_timestamp(record.occurred_at),
            )
            for customer_id, records in records_by_customer.items()
            for record in records
        ]
        if not rows:
            return
        # A replayed row is skipped by the database; only the rows that went in count.
        inserted = insert_new_rows(
            self._c, t.compliance_usage, _USAGE_COLUMNS, rows, key="operation_id"
        )
        self._add_to_totals(
            {
                customer_id: [r for r in records if r.operation_id in inserted]
                for customer_id, records in records_by_customer.items()
            },
            sign=1,
        )

    def forget_usage(self, operation_ids: Collection[str]) -> int:
        """Remove the usage of operations that moved nothing in the end (a refunded withdrawal),
        and take it off the totals."""
        if not operation_ids:
            return 0
        table = t.compliance_usage
        removed: dict[str, list[UsageRecord]] = {}
        ids = sorted(set(operation_ids))
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            rows = self._c.execute(
                delete(table).where(table.c.operation_id.in_(chunk)).returning(*table.c)
            )
            for row in rows:
                removed.setdefault(row.customer_id, []).append(_usage_from_row(row))
        self._add_to_totals(removed, sign=-1)
        return sum(len(records) for records in removed.values())

    def _add_to_totals(
        self, records_by_customer: Mapping[str, Sequence[UsageRecord]], *, sign: int
    ) -> None:
        changes = [
            (customer_id, bucket)
            for customer_id, records in records_by_customer.items()
            for bucket in usage_buckets(records, sign).values()
        ]
        if not changes:
            return
        if not self._postgresql:
            # SQLite: money is text, so add in Python (the transaction is already exclusive).
            known = self._totals_of(changes)
            changes = [
                (customer_id, _plus(bucket, known.get((customer_id, *_bucket_key(bucket)))))
                for customer_id, bucket in changes
            ]
        money = money_value(self._c)
        execute_many(
            self._c,
            _totals_upsert(self._c.dialect.name),
            [
                {
                    "customer_id": customer_id,
                    "length_s": bucket.length_s,
                    "starts_at": format_timestamp(bucket.starts_at),
                    "operation": bucket.operation,
                    "amount": money(bucket.amount),
                    "count": bucket.count,
                }
                for customer_id, bucket in changes
            ],
        )

    def _totals_of(
        self, changes: Sequence[tuple[str, UsageBucket]]
    ) -> dict[tuple[str, int, str, str], tuple[Decimal, int]]:
        """The stored totals of the buckets ``changes`` touch (one indexed look-up per customer
        chunk and bucket length)."""
        customers = sorted({customer_id for customer_id, _ in changes})
        found: dict[tuple[str, int, str, str], tuple[Decimal, int]] = {}
        for length_s in BUCKET_LENGTHS_S:
            starts = sorted(
                {
                    format_timestamp(bucket.starts_at)
                    for _, bucket in changes
                    if bucket.length_s == length_s
                }
            )
            for customer_chunk in _chunks(customers):
                for start_chunk in _chunks(starts):
                    rows = self._c.execute(
                        _TOTALS_OF_BUCKETS,
                        {"ids": customer_chunk, "length_s": length_s, "starts": start_chunk},
                    )
                    for customer_id, length, starts_at, operation, amount, count in rows:
                        found[(customer_id, length, starts_at, operation)] = (amount, count)
        return found

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
        found: dict[str, str] = {}
        for chunk in _chunks(addresses):
            rows = self._c.execute(_FLAGGED, {"addresses": chunk})
            found.update((address, reason) for address, reason in rows)
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
