"""The audit trail in the Integration DB (DESIGN §6): an append-only, hash-chained log.

Guarantees:

* **One line, no forks.** ``append`` locks the head row (``SELECT … FOR UPDATE`` on PostgreSQL;
  SQLite transactions already begin with ``BEGIN IMMEDIATE``) and holds it until the caller's
  transaction ends, so appenders take turns: seqs are 1, 2, 3, … with no gap or duplicate and
  commit in seq order. A rolled-back append leaves nothing behind, not even a used seq.
* **The first append is safe too.** The head row is created on first use with
  ``INSERT … ON CONFLICT DO NOTHING`` before it is locked, so two first appenders racing on
  PostgreSQL end up waiting on the same row instead of failing.
* **Stored as hashed.** Each JSON column holds the normalised value the hash was computed over
  (:func:`sluice.domain.audit.canonical_content`), so a record read back verifies bit for bit.
* **Fast enough for ingestion.** One ``executemany`` insert and one head update per call;
  content without floats is hashed from orjson's bytes, which are then the canonical ones.
* **Readable after tampering.** A row that can no longer be decoded (a column that is not JSON,
  a timestamp that is not one) is still returned, with ``damage`` saying why, so verification
  names it instead of failing.

The table's triggers refuse UPDATE, DELETE (and TRUNCATE on PostgreSQL); verification finds what
was changed anyway by someone able to drop them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Row, select
from sqlalchemy.dialects import postgresql, sqlite

from sluice.domain.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditRecord,
    FloatFreeContent,
    bytes_hash,
    canonical_content,
    check_entry,
    content_hash,
    current_correlation_id,
)
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import parse_timestamp
from sluice.store import tables as t
from sluice.store.bulk import insert_rows, select_in, update_row

HEAD_ID = 1
PAGE_MAX = 10_000  # bound on the records one read returns
_UNREADABLE_TIME = datetime(1970, 1, 1, tzinfo=UTC)


class SqlAuditLog:
    """:class:`sluice.ports.AuditLog` on one connection, in the caller's transaction."""

    def __init__(self, connection: Connection) -> None:
        self._c = connection

    @property
    def _postgresql(self) -> bool:
        return self._c.dialect.name == "postgresql"

    def append(self, entries: Sequence[AuditEntry]) -> list[int]:
        if not entries:
            return []
        correlation_id = current_correlation_id.get()
        if correlation_id is not None:
            entries = [
                entry
                if entry.correlation_id is not None
                else replace(entry, correlation_id=correlation_id)
                for entry in entries
            ]
        for entry in entries:
            check_entry(entry)
        seq, previous_hash = self._lock_head()
        rows: list[tuple[object, ...]] = []
        for entry in entries:
            seq += 1
            content = canonical_content(seq, entry)
            digest = _content_hash(previous_hash, content)
            rows.append(_row(content, previous_hash, digest))
            previous_hash = digest
        insert_rows(self._c, t.audit_records, _COLUMNS, rows)
        update_row(self._c, t.audit_head, ("seq", "hash"), "id", (seq, previous_hash, HEAD_ID))
        first = seq - len(rows) + 1
        return list(range(first, seq + 1))

    def _lock_head(self) -> tuple[int, str]:
        rows = self._head_locked()
        if not rows:
            insert = (postgresql.insert if self._postgresql else sqlite.insert)(t.audit_head)
            self._c.execute(
                insert.values(id=HEAD_ID, seq=0, hash=GENESIS_HASH).on_conflict_do_nothing(
                    index_elements=["id"]
                )
            )
            # Read again, locked: under a race this is the row the other appender committed.
            rows = self._head_locked()
        ((seq, digest),) = rows
        return int(seq), str(digest)

    def _head_locked(self) -> list[Sequence[Any]]:
        """The head row (none or one), locked: ``FOR UPDATE`` on PostgreSQL; SQLite's
        transactions hold the database already."""
        return select_in(self._c, t.audit_head, ("seq", "hash"), "id", (HEAD_ID,), for_update=True)

    def records(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        query = (
            select(t.audit_records)
            .where(t.audit_records.c.seq > after_seq)
            .order_by(t.audit_records.c.seq)
            .limit(_page(limit))
        )
        return [_record(row) for row in self._c.execute(query)]

    def head(self) -> tuple[int, str] | None:
        row = self._c.execute(
            select(t.audit_head.c.seq, t.audit_head.c.hash).where(t.audit_head.c.id == HEAD_ID)
        ).first()
        return (int(row.seq), str(row.hash)) if row is not None else None

    def find(
        self,
        *,
        customer_id: str | None = None,
        operation_id: str | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """The latest ``limit`` records of a customer and/or an operation, oldest first."""
        table = t.audit_records
        query = select(table).order_by(table.c.seq.desc()).limit(_page(limit))
        if customer_id is not None:
            query = query.where(table.c.customer_id == customer_id)
        if operation_id is not None:
            query = query.where(table.c.operation_id == operation_id)
        rows = list(self._c.execute(query))
        rows.reverse()
        return [_record(row) for row in rows]


def _page(limit: int) -> int:
    if not 1 <= limit <= PAGE_MAX:
        raise InvalidInputError(f"audit page size must be 1–{PAGE_MAX}, got {limit}")
    return limit


def _content_hash(previous_hash: str, content: dict[str, object]) -> str:
    """:func:`content_hash`, from orjson's bytes when the content holds no float: for such
    content they are the canonical bytes (keys sorted by code point, no spaces, UTF-8, the same
    escapes; ``tests/unit/test_audit_chain.py`` compares both encoders), at a tenth of the cost.
    Anything orjson refuses (text that is not valid Unicode) takes the canonical path and its
    error."""
    if type(content) is FloatFreeContent:
        try:
            canonical = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            return content_hash(previous_hash, content)
        return bytes_hash(previous_hash, canonical)
    return content_hash(previous_hash, content)


_COLUMNS = (
    "seq",
    "operation_id",
    "recorded_at",
    "actor",
    "customer_id",
    "kyc",
    "operation",
    "parameters",
    "checks",
    "state_changes",
    "error",
    "correlation_id",
    "previous_hash",
    "hash",
)


def _row(content: dict[str, object], previous_hash: str, digest: str) -> tuple[object, ...]:
    """The row of ``_COLUMNS`` that stores ``content``."""
    kyc = content["kyc"]
    dumps = orjson.dumps  # four columns of every record
    return (
        content["seq"],
        content["operation_id"],
        content["recorded_at"],
        content["actor"],
        content["customer_id"],
        dumps(kyc).decode() if kyc is not None else None,
        content["operation"],
        dumps(content["parameters"]).decode(),
        dumps(content["checks"]).decode(),
        dumps(content["state_changes"]).decode(),
        content["error"],
        content.get("correlation_id"),
        previous_hash,
        digest,
    )


def _record(row: Row[Any]) -> AuditRecord:
    damage: list[str] = []

    def decoded(name: str, text: str | None) -> Any:
        if text is None:
            return None
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            damage.append(f"its {name} are not JSON")
            return None

    try:
        recorded_at = parse_timestamp(row.recorded_at, field="recorded_at")
    except InvalidInputError:
        damage.append(f"its time {row.recorded_at!r} is not a timestamp")
        recorded_at = _UNREADABLE_TIME
    entry = AuditEntry(
        operation_id=row.operation_id,
        operation=row.operation,
        actor=row.actor,
        recorded_at=recorded_at,
        customer_id=row.customer_id,
        kyc=decoded("KYC details", row.kyc),
        parameters=decoded("parameters", row.parameters),
        checks=decoded("checks", row.checks),
        state_changes=decoded("state changes", row.state_changes),
        error=row.error,
        correlation_id=row.correlation_id,
    )
    return AuditRecord(
        seq=int(row.seq),
        entry=entry,
        previous_hash=row.previous_hash,
        hash=row.hash,
        damage="; ".join(damage) or None,
    )
