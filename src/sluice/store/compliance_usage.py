"""Rolling-window usage as stored: usage rows keyed by operation id, the hour and day totals
that move with them, and the bounded reads a decision makes (see ``compliance_repository``)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache, lru_cache
from hashlib import blake2b
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Row,
    and_,
    delete,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.expression import Executable

from sluice.domain.amounts import format_amount
from sluice.domain.audit import timestamp_text
from sluice.domain.compliance import (
    BUCKET_LENGTHS_S,
    OPERATIONS,
    UsageBucket,
    UsageRecord,
    UsageSpan,
    UsageWindows,
    usage_buckets,
)
from sluice.domain.ledger import format_timestamp
from sluice.ports.repositories import UsageWrite
from sluice.store import tables as t
from sluice.store.bulk import (
    bump_counters,
    execute_many,
    insert_if_all_new,
    insert_new_rows,
    money_read,
    money_value,
    padded,
    padded_size,
)
from sluice.store.compliance_connection import CHUNK, ComplianceConnection, _chunks, marks
from sluice.store.rows import time_of

RECENT_CHUNK = 50  # customers per statement reading each one's latest usage rows
FEW_USAGE_ROWS = 32  # rows written by one multi-row statement on SQLite too (record_usage_of)


def operation_key(operation_id: str) -> bytes:
    """The usage row's key: a 16-byte digest of the operation id. Operation ids are ~160
    characters; an index of them was larger than the rows it pointed at, and a batch's new ids
    land all over it (it was rewritten page by page on every commit). Two ids sharing a key
    (probability ~2^-128 for a pair) would make the second look like a replay."""
    return blake2b(operation_id.encode(), digest_size=16).digest()


@lru_cache(maxsize=4096)
def counterparty_key(counterparty: str) -> int:
    """What ``ix_compliance_usage_counterparty`` indexes of a counterparty: a signed 64-bit
    digest (a party id is ~80 characters). A look-up compares the party itself too, so two
    parties sharing a key are still told apart. Cached: a customer deals with few parties."""
    digest = blake2b(counterparty.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


SPAN_RANGES = 3  # a span's record and hour ranges, at most (see UsageSpan.of)


def _padded(chunk: list[str]) -> tuple[str, ...]:
    """A chunk of an ``IN`` list padded to a size whose statement recurs (see ``padded``)."""
    return padded(chunk, CHUNK)


_NO_TIME = datetime(1970, 1, 1, tzinfo=UTC)


def _range_values(ranges: Sequence[tuple[datetime, datetime]], count: int) -> list[tuple[str, str]]:
    """``count`` ranges as canonical text; missing ones are empty (low = high)."""
    assert len(ranges) <= count, f"{len(ranges)} ranges, at most {count} expected"
    empty = ranges[-1][1] if ranges else _NO_TIME
    padded = list(ranges) + [(empty, empty)] * (count - len(ranges))
    return [(format_timestamp(low), format_timestamp(high)) for low, high in padded]


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
    """A row of :func:`_usage_columns` as the driver returns it (money as text on SQLite)."""
    customer_id, operation_id, operation, amount, occurred_at, counterparty = row
    return customer_id, UsageRecord(
        operation_id,
        operation,
        money_read(amount),
        time_of(occurred_at),
        counterparty,
    )


# The reads below are SQL text run by the driver, the same on both engines: a batch runs each of
# them for every chunk of its customers, and SQLAlchemy spent more time expanding the IN lists
# and converting the rows of a Core statement than the database spent answering it.
_USAGE_COLUMN_NAMES = "customer_id, operation_id, operation, amount, occurred_at, counterparty"


@lru_cache(maxsize=256)
def _usage_ranges_sql(mark: str, ids: int, operations: int, totals: bool, records: bool) -> str:
    """What :meth:`SqlComplianceUsage.read_usage_ranges` reads in one round, in one statement
    (parts are disjoint, so UNION ALL repeats no row; each part is one indexed range):

    * with ``totals``, the totals of three hour ranges and one day range, as rows
      ``(customer_id, operation, length_s, starts_at, amount, NULL, NULL)``; parameters per
      part: the ids, the length, the range's low and high, the operations;
    * with ``records``, the usage rows in three time ranges, as rows ``(customer_id, operation,
      0, occurred_at, amount, operation_id, counterparty)`` — a length of 0 tells them from
      totals; parameters per part: the ids, the range's low and high, the operations.
    """
    total = (
        "SELECT customer_id, operation, length_s, starts_at, amount, NULL, NULL "
        f"FROM compliance_usage_totals WHERE customer_id IN ({marks(mark, ids)}) "
        f"AND length_s = {mark} AND starts_at >= {mark} AND starts_at < {mark} "
        f"AND operation IN ({marks(mark, operations)})"
    )
    record = (
        "SELECT customer_id, operation, 0, occurred_at, amount, operation_id, counterparty "
        f"FROM compliance_usage WHERE customer_id IN ({marks(mark, ids)}) "
        f"AND occurred_at >= {mark} AND occurred_at < {mark} "
        f"AND operation IN ({marks(mark, operations)})"
    )
    parts = [total] * (SPAN_RANGES + 1) if totals else []
    parts += [record] * SPAN_RANGES if records else []
    return " UNION ALL ".join(parts)


@lru_cache(maxsize=256)
def _usage_between_sql(mark: str, ids: int) -> str:
    return (
        f"SELECT {_USAGE_COLUMN_NAMES} FROM compliance_usage "
        f"WHERE customer_id IN ({marks(mark, ids)}) AND occurred_at > {mark} "
        f"AND occurred_at <= {mark} ORDER BY customer_id, occurred_at, operation_id"
    )


@lru_cache(maxsize=256)
def _versions_sql(mark: str, ids: int) -> str:
    return (
        "SELECT customer_id, version FROM compliance_usage_versions "
        f"WHERE customer_id IN ({marks(mark, ids)})"
    )


@lru_cache(maxsize=64)
def _latest_usage_sql(mark: str, customers: int) -> str:
    """The latest ``limit`` usage rows in ``(low, high]`` of each of ``customers`` customers
    (parameters ``(customer, low, high, limit)`` per customer): one index range per customer,
    newest first, read no further than the limit. Written as SQL text, the same on both engines:
    SQLAlchemy took ~15 ms to compile the union of 50 parts, once per chunk size."""
    part = (
        f"SELECT {_USAGE_COLUMN_NAMES} FROM {t.compliance_usage.name} WHERE customer_id = {mark} "
        f"AND occurred_at > {mark} AND occurred_at <= {mark} "
        f"ORDER BY occurred_at DESC, operation_id DESC LIMIT {mark}"
    )
    return " UNION ALL ".join(
        f"SELECT * FROM ({part}) AS latest_{index}" for index in range(customers)
    )


# The usage row's columns as record_usage_of writes them (operation_key first: the key).
_USAGE_COLUMNS = (
    "operation_key",
    "operation_id",
    "customer_id",
    "operation",
    "amount",
    "counterparty",
    "counterparty_key",
    "occurred_at",
)


@cache
def _totals_upsert(dialect: str) -> Executable:
    """Totals inserted or added to, in PostgreSQL (exact ``NUMERIC``); SQLite's is
    ``_SQLITE_TOTALS_UPSERT``."""
    assert dialect == "postgresql", dialect
    totals = t.compliance_usage_totals
    insert = postgresql.insert(totals)
    excluded = insert.excluded
    new_values = {
        "amount": totals.c.amount + excluded.amount,
        "count": totals.c.count + excluded.count,
    }
    return insert.on_conflict_do_update(
        index_elements=["customer_id", "length_s", "starts_at", "operation"], set_=new_values
    )


# SQLite's totals, read and written as the driver takes them (``_add_to_totals``).
@lru_cache(maxsize=256)
def _sqlite_totals_of_sql(ids: int, starts: tuple[int, ...]) -> str:
    """The totals of ``ids`` customers starting at given times, one part per bucket length with
    ``starts`` of them (parameters per part: the ids, the length, the starts): the hours and
    days a write touches in one statement, each part an indexed look-up."""
    return " UNION ALL ".join(
        'SELECT customer_id, length_s, starts_at, operation, amount, "count" '
        "FROM compliance_usage_totals "
        f"WHERE customer_id IN ({marks('?', ids)}) AND length_s = ? "
        f"AND starts_at IN ({marks('?', count)})"
        for count in starts
    )


_SQLITE_TOTALS_UPSERT = (
    "INSERT INTO compliance_usage_totals "
    '(customer_id, length_s, starts_at, operation, amount, "count") '
    "VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (customer_id, length_s, starts_at, operation) "
    'DO UPDATE SET amount = excluded.amount, "count" = excluded."count"'
)


def _usage_from_row(row: Row[Any]) -> UsageRecord:
    return UsageRecord(
        operation_id=row.operation_id,
        operation=row.operation,
        amount=row.amount,
        occurred_at=time_of(row.occurred_at),
        counterparty=row.counterparty,
    )


def _total_key(
    customer_id: str, bucket: UsageBucket, texts: Mapping[datetime, str]
) -> tuple[str, int, str, str]:
    """A bucket's key as stored (its start as text, from ``texts``)."""
    return (customer_id, bucket.length_s, texts[bucket.starts_at], bucket.operation)


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


class SqlComplianceUsage(ComplianceConnection):
    """Usage rows and their totals, written in the operation's own transaction."""

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
        self.read_usage_ranges(found, span.record_ranges, span.hour_ranges, span.day_ranges)
        return found

    def read_usage_ranges(
        self,
        windows: Mapping[str, UsageWindows],
        record_ranges: Sequence[tuple[datetime, datetime]],
        hour_ranges: Sequence[tuple[datetime, datetime]],
        day_ranges: Sequence[tuple[datetime, datetime]],
    ) -> None:
        """Add to each customer's ``windows`` (all of the same operations) the usage records in
        ``record_ranges`` and the hour and day totals starting in ``hour_ranges`` and
        ``day_ranges`` (half-open ranges; each read through an index)."""
        if not windows:
            return
        kinds = sorted({operation for found in windows.values() for operation in found.operations})
        rounds = max(
            -(-len(record_ranges) // SPAN_RANGES),
            -(-len(hour_ranges) // SPAN_RANGES),
            len(day_ranges),
        )
        mark = self._mark
        for index in range(rounds):
            cut = slice(index * SPAN_RANGES, (index + 1) * SPAN_RANGES)
            parts = [(3600, *pair) for pair in _range_values(hour_ranges[cut], SPAN_RANGES)]
            parts += [(86400, *pair) for pair in _range_values(day_ranges[index : index + 1], 1)]
            edges = _range_values(record_ranges[cut], SPAN_RANGES)
            totals = bool(hour_ranges[cut] or day_ranges[index : index + 1])
            records = bool(record_ranges[cut])
            for chunk in map(_padded, _chunks(list(windows))):
                # The totals and the edge records in one statement (see _usage_ranges_sql).
                sql = _usage_ranges_sql(mark, len(chunk), len(kinds), totals, records)
                values: list[object] = []
                if totals:
                    values += [value for part in parts for value in (*chunk, *part, *kinds)]
                if records:
                    values += [value for edge in edges for value in (*chunk, *edge, *kinds)]
                for (
                    customer_id,
                    operation,
                    length_s,
                    at,
                    amount,
                    operation_id,
                    counterparty,
                ) in self._c.exec_driver_sql(sql, tuple(values)):
                    amount = money_read(amount)
                    if length_s:
                        windows[customer_id].add_total(operation, length_s, time_of(at), amount)
                    else:
                        windows[customer_id].add_record(
                            UsageRecord(operation_id, operation, amount, time_of(at), counterparty)
                        )

    def usage_versions(self, customer_ids: Collection[str]) -> dict[str, int]:
        """Each customer's usage version (0 when their usage never changed)."""
        found = dict.fromkeys(customer_ids, 0)
        for chunk in map(_padded, _chunks(list(found))):
            rows = self._c.exec_driver_sql(_versions_sql(self._mark, len(chunk)), chunk)
            for customer_id, version in rows:
                found[customer_id] = int(version)
        return found

    def _bump_versions(self, customer_ids: Collection[str]) -> dict[str, int]:
        """Move the usage version of each customer whose usage this transaction changed."""
        table = t.compliance_usage_versions
        bumped = bump_counters(self._c, table, "customer_id", "version", list(customer_ids))
        return {str(customer_id): version for customer_id, version in bumped.items()}

    def recent_usage(
        self, customer_ids: Collection[str], after: datetime, until: datetime, limit: int
    ) -> dict[str, list[UsageRecord]]:
        """Each customer's latest ``limit`` usage rows in ``(after, until]``, oldest first."""
        low, high = format_timestamp(after), format_timestamp(until)
        found: dict[str, list[UsageRecord]] = {customer_id: [] for customer_id in customer_ids}
        for chunk in _chunks(customer_ids, RECENT_CHUNK):
            # Padded with parts that read nothing (a limit of 0): see padded_size.
            parts = [(customer_id, low, high, limit) for customer_id in chunk]
            parts += [(chunk[-1], low, high, 0)] * (
                padded_size(len(chunk), RECENT_CHUNK) - len(chunk)
            )
            sql = _latest_usage_sql(self._mark, len(parts))
            parameters = tuple(value for part in parts for value in part)
            for row in self._c.exec_driver_sql(sql, parameters):
                customer_id, record = _usage_from_tuple(row)
                found[customer_id].append(record)
        for records in found.values():
            records.sort(key=lambda record: (record.occurred_at, record.operation_id))
        return found

    def usage_between(
        self, customer_ids: Collection[str], after: datetime, until: datetime
    ) -> dict[str, list[UsageRecord]]:
        """Every usage row of each customer in ``(after, until]``, oldest first (for a span as
        short as a batch's: bounded by time)."""
        found: dict[str, list[UsageRecord]] = {customer_id: [] for customer_id in customer_ids}
        low, high = format_timestamp(after), format_timestamp(until)
        for chunk in map(_padded, _chunks(list(found))):
            sql = _usage_between_sql(self._mark, len(chunk))
            for row in self._c.exec_driver_sql(sql, (*chunk, low, high)):
                customer_id, record = _usage_from_tuple(row)
                found[customer_id].append(record)
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
                    usage.c.counterparty_key == counterparty_key(counterparty),
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

    def record_usage_of(
        self, records_by_customer: Mapping[str, Sequence[UsageRecord]]
    ) -> UsageWrite:
        """Insert usage rows of many customers at once, add the new ones to the totals and move
        the usage version of every customer with a new row."""
        money = money_value(self._c)
        ids: dict[bytes, str] = {}  # each row's key: its operation
        rows: list[tuple[object, ...]] = []
        for customer_id, records in records_by_customer.items():
            for record in records:
                key = operation_key(record.operation_id)
                ids[key] = record.operation_id
                rows.append(
                    (
                        # bound as a bytearray: sqlite3 takes it as it is, while bytes go
                        # through the driver's adapter look-up first (the same BLOB is stored)
                        bytearray(key),
                        record.operation_id,
                        customer_id,
                        record.operation,
                        money(record.amount),
                        record.counterparty,
                        None
                        if record.counterparty is None
                        else counterparty_key(record.counterparty),
                        timestamp_text(record.occurred_at),
                    )
                )
        if not rows:
            return UsageWrite({}, set())
        # A replayed row is skipped by the database; only the rows that went in count. On
        # SQLite, a batch of new rows (the rule) goes in through executemany at half the cost —
        # of many rows: for a few (a transaction of live ingestion), the savepoint this needs
        # costs more than the multi-row statement with RETURNING does.
        table = t.compliance_usage
        added: Mapping[str, Sequence[UsageRecord]]
        if (
            not self._postgresql
            and len(rows) > FEW_USAGE_ROWS
            and insert_if_all_new(self._c, table, _USAGE_COLUMNS, rows, key="operation_key")
        ):
            went_in = set(ids.values())
            added = records_by_customer
        else:
            inserted = insert_new_rows(self._c, table, _USAGE_COLUMNS, rows, key="operation_key")
            # bytes(): a driver may return a BLOB as a memoryview
            went_in = {ids[bytes(key)] for key in cast("set[bytes | memoryview]", inserted)}
            added = {
                customer_id: [r for r in records if r.operation_id in went_in]
                for customer_id, records in records_by_customer.items()
            }
        self._add_to_totals(added, sign=1)
        versions = self._bump_versions([customer for customer, new in added.items() if new])
        return UsageWrite(versions, went_in)

    def forget_usage(self, operation_ids: Collection[str]) -> int:
        """Remove the usage of operations that moved nothing in the end (a refunded withdrawal),
        and take it off the totals."""
        if not operation_ids:
            return 0
        table = t.compliance_usage
        removed: dict[str, list[UsageRecord]] = {}
        keys = sorted({operation_key(operation_id) for operation_id in operation_ids})
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            rows = self._c.execute(
                delete(table).where(table.c.operation_key.in_(chunk)).returning(*table.c)
            )
            for row in rows:
                removed.setdefault(row.customer_id, []).append(_usage_from_row(row))
        self._add_to_totals(removed, sign=-1)
        self._bump_versions(removed)
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
        # The customers' buckets share a few hours and days: each start's text is made once.
        texts: dict[datetime, str] = {}
        for _, bucket in changes:
            if bucket.starts_at not in texts:
                texts[bucket.starts_at] = format_timestamp(bucket.starts_at)
        if self._postgresql:
            execute_many(
                self._c,
                _totals_upsert(self._c.dialect.name),
                [
                    {
                        "customer_id": customer_id,
                        "length_s": bucket.length_s,
                        "starts_at": texts[bucket.starts_at],
                        "operation": bucket.operation,
                        "amount": bucket.amount,
                        "count": bucket.count,
                    }
                    for customer_id, bucket in changes
                ],
            )
            return
        # SQLite: money is text, so add in Python (the transaction is already exclusive). The
        # rows go to the driver as tuples: this runs for every batch ingestion commits.
        known = self._totals_of(changes, texts)
        rows = []
        for customer_id, bucket in changes:
            key = (customer_id, bucket.length_s, texts[bucket.starts_at], bucket.operation)
            amount, count = bucket.amount, bucket.count
            stored = known.get(key)
            if stored is not None:
                amount, count = stored[0] + amount, stored[1] + count
            rows.append((*key, format_amount(amount), count))
        self._c.exec_driver_sql(_SQLITE_TOTALS_UPSERT, rows)

    def _totals_of(
        self, changes: Sequence[tuple[str, UsageBucket]], texts: Mapping[datetime, str]
    ) -> dict[tuple[str, int, str, str], tuple[Decimal, int]]:
        """The stored totals of the buckets ``changes`` touch (an indexed look-up per customer
        chunk, bucket length and chunk of starts, those of one customer chunk and n-th start
        chunk in one statement; SQLite only: the amounts are read as their text)."""
        customers = sorted({customer_id for customer_id, _ in changes})
        starts_of: dict[int, set[str]] = {length_s: set() for length_s in BUCKET_LENGTHS_S}
        for _, bucket in changes:
            starts_of[bucket.length_s].add(texts[bucket.starts_at])
        start_chunks = [
            (length_s, list(map(_padded, _chunks(starts))))
            for length_s, starts in starts_of.items()
        ]
        found: dict[tuple[str, int, str, str], tuple[Decimal, int]] = {}
        for customer_chunk in map(_padded, _chunks(customers)):
            for index in range(max(len(chunks) for _, chunks in start_chunks)):
                parts = [
                    (length_s, chunks[index])
                    for length_s, chunks in start_chunks
                    if index < len(chunks)
                ]
                sql = _sqlite_totals_of_sql(
                    len(customer_chunk), tuple(len(starts) for _, starts in parts)
                )
                values = [
                    value
                    for length_s, starts in parts
                    for value in (*customer_chunk, length_s, *starts)
                ]
                rows = self._c.exec_driver_sql(sql, tuple(values))
                for customer_id, length, starts_at, operation, amount, count in rows:
                    found[(customer_id, length, starts_at, operation)] = (Decimal(amount), count)
        return found
