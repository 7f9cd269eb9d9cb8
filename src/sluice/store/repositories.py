"""Repositories over one SQL connection: bulk reads and writes shaped for ingestion's batches."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from decimal import Decimal
from itertools import groupby

from sqlalchemy import ColumnElement, Connection, and_, bindparam, insert, select, update

from sluice.domain.audit import timestamp_text
from sluice.domain.ledger import (
    Cursor,
    Holding,
    InstrumentId,
    Lock,
    TransferInstruction,
    format_timestamp,
    parse_timestamp,
)
from sluice.domain.withdrawals import TERMINAL_STATUSES, Withdrawal
from sluice.ports import IngestBatch
from sluice.store import tables as t
from sluice.store.bitcoin_rows import add_alert_events
from sluice.store.books_repository import SqlBooksRepository
from sluice.store.bulk import (
    execute_many,
    has_rows,
    insert_rows,
    money_read,
    money_value,
    select_in,
    update_row,
)
from sluice.store.postings import (
    _ARCHIVE_HOLDING,
    _CLOSE_INSTRUCTION,
    _ENTRY_COLUMNS,
    _HOLDING_COLUMNS,
    _SET_BALANCE,
    _entry_row,
    apply_balance_deltas,
    post_journal,
)
from sluice.store.records import (
    CHUNK,
    _account_from_id,
    _chunks,
    _holding_from_row,
    _instruction_from_row,
    _now,
    _stored_time,
    history_record_from_row,
    instrument_from_row,
    withdrawal_from_row,
    withdrawal_row,
)
from sluice.store.reference_repository import SqlReferenceRepository
from sluice.store.rows import ts

# The journal writes, the other repositories and the row conversions live in their own modules;
# they are re-exported here so that every name this module has offered stays importable from it.
__all__ = [
    "CHUNK",
    "_ARCHIVE_HOLDING",
    "_CLOSE_INSTRUCTION",
    "_ENTRY_COLUMNS",
    "_HOLDING_COLUMNS",
    "_SET_BALANCE",
    "SqlBooksRepository",
    "SqlIngestionRepository",
    "SqlReferenceRepository",
    "_account_from_id",
    "_chunks",
    "_entry_row",
    "_holding_from_row",
    "_instruction_from_row",
    "_now",
    "_stored_time",
    "apply_balance_deltas",
    "history_record_from_row",
    "instrument_from_row",
    "post_journal",
    "withdrawal_from_row",
    "withdrawal_row",
]


# The columns _holding_from_row reads, and whether the holding is archived.
_HOLDING_READ = (
    "contract_id",
    "owner",
    "instrument_admin",
    "instrument_id",
    "amount",
    "lock_holders",
    "lock_expires_at",
    "lock_context",
    "archived_update_id",
)

# Written through the driver's executemany as plain tuples, like the hot tables.
_INSTRUCTION_COLUMNS = (
    "contract_id",
    "correlation_id",
    "original_instruction_cid",
    "direction",
    "sender",
    "receiver",
    "instrument_admin",
    "instrument_id",
    "amount",
    "reason",
    "requested_at",
    "execute_before",
    "input_holding_cids",
    "transfer_meta",
    "status",
    "created_update_id",
)  # closed_update_id: NULL (left out: the driver binds a None more slowly than a value)
_ALERT_COLUMNS = (
    "id",
    "severity",
    "kind",
    "message",
    "update_id",
    "details",
    "created_at",
)  # acknowledged_at: NULL (left out, as closed_update_id above)
_CURSOR_COLUMNS = ("party", "offset", "update_id", "record_time", "synchronizer_id", "updated_at")
# Prebuilt, so that a look-up compiles nothing and derives no cache key (only the IN list, of
# the chunk's length, is rendered anew).
_INSTRUCTIONS = select(t.transfer_instructions).where(
    t.transfer_instructions.c.contract_id.in_(bindparam("ids", expanding=True))
)
_WITHDRAWALS_LOCKED = (
    select(t.withdrawals)
    .where(t.withdrawals.c.id.in_(bindparam("ids", expanding=True)))
    .with_for_update()
)
# An unlocked holding's row leaves the lock columns out (NULL): most holdings have no lock, and
# sqlite3 binds a None through its adapter look-up, which costs more than the rest of the value.
_UNLOCKED_HOLDING_COLUMNS = tuple(name for name in _HOLDING_COLUMNS if not name.startswith("lock_"))


def _insert_holdings(
    c: Connection,
    created: Sequence[tuple[Holding, str, int]],
    money: Callable[[Decimal], object],
) -> None:
    """The rows of new holdings, in order: each run of unlocked or locked ones in one
    ``executemany`` (unlocked: without the lock columns)."""

    def leading(h: Holding) -> tuple[object, ...]:
        return (h.contract_id, h.owner, h.instrument.admin, h.instrument.id, money(h.amount))

    for unlocked, run in groupby(created, key=lambda item: item[0].lock is None):
        rows: list[tuple[object, ...]]
        if unlocked:
            rows = [(*leading(h), update_id, offset) for h, update_id, offset in run]
            insert_rows(c, t.holdings, _UNLOCKED_HOLDING_COLUMNS, rows)
            continue
        rows = [
            (
                *leading(h),
                json.dumps(list(h.lock.holders)),
                ts(h.lock.expires_at),
                h.lock.context,
                update_id,
                offset,
            )
            for h, update_id, offset in run
            if h.lock is not None  # (all of them: for the type checker)
        ]
        insert_rows(c, t.holdings, _HOLDING_COLUMNS, rows)


class SqlIngestionRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def load_cursor(self, connection: str) -> Cursor | None:
        row = self._c.execute(
            select(t.ledger_cursors).where(t.ledger_cursors.c.connection == connection)
        ).first()
        if row is None:
            return None
        return Cursor(
            offset=row.offset,
            update_id=row.update_id,
            record_time=parse_timestamp(row.record_time) if row.record_time else None,
            synchronizer_id=row.synchronizer_id,
        )

    def set_cursor(self, connection: str, party: str, cursor: Cursor) -> None:
        values = (
            party,
            cursor.offset,
            cursor.update_id,
            ts(cursor.record_time),
            cursor.synchronizer_id,
            _now(),
        )
        table = t.ledger_cursors
        if not update_row(self._c, table, _CURSOR_COLUMNS, "connection", (*values, connection)):
            insert_rows(self._c, table, ("connection", *_CURSOR_COLUMNS), [(connection, *values)])

    def known_update_ids(self, update_ids: Collection[str]) -> set[str]:
        rows = select_in(self._c, t.ingested_updates, ("update_id",), "update_id", update_ids)
        return {row[0] for row in rows}

    def quarantined_keys(self, keys: Collection[str]) -> set[str]:
        # Nothing is quarantined nearly always: one row's look-up spares binding a batch's ids.
        table = t.quarantined_updates
        if not keys or not has_rows(self._c, table):
            return set()
        rows = select_in(self._c, table, ("update_id",), "update_id", keys)
        return {row[0] for row in rows}

    def holdings_by_ids(self, contract_ids: Collection[str]) -> dict[str, Holding]:
        found: dict[str, Holding] = {}
        # Only the primary key in the condition: with a second one, a planner working from
        # stale statistics (a fresh table under bulk load) may walk another index instead.
        rows = select_in(self._c, t.holdings, _HOLDING_READ, "contract_id", contract_ids)
        for cid, owner, admin, instrument_id, amount, holders, expires, context, archived in rows:
            if archived is None:
                lock = None
                if holders is not None:
                    lock = Lock(
                        holders=tuple(json.loads(holders)),
                        expires_at=parse_timestamp(expires) if expires else None,
                        context=context,
                    )
                found[cid] = Holding(
                    contract_id=cid,
                    owner=owner,
                    instrument=InstrumentId(admin, instrument_id),
                    # As the Money column reads it (text on SQLite).
                    amount=money_read(amount),
                    lock=lock,
                )
        return found

    def instructions_by_ids(self, contract_ids: Collection[str]) -> dict[str, TransferInstruction]:
        found: dict[str, TransferInstruction] = {}
        table = t.transfer_instructions
        # Most of a batch's consumed contracts are holdings: first find which ids are
        # instructions at all (a cheap driver query), then read only those rows.
        rows = select_in(self._c, table, ("contract_id",), "contract_id", contract_ids)
        for chunk in _chunks([row[0] for row in rows]):
            for row in self._c.execute(_INSTRUCTIONS, {"ids": chunk}):
                found[row.contract_id] = _instruction_from_row(row)
        return found

    def customers_for_reasons(self, reasons: Collection[str]) -> dict[str, str]:
        rows = select_in(self._c, t.deposit_accounts, ("id", "customer_id"), "id", reasons)
        return {row[0]: row[1] for row in rows}

    def onboarded_instruments(self) -> set[InstrumentId]:
        table = t.instruments
        rows = self._c.execute(select(table.c.admin, table.c.id).where(table.c.enabled.is_(True)))
        return {InstrumentId(row.admin, row.id) for row in rows}

    def withdrawals_by_ids(self, ids: Collection[str]) -> dict[str, Withdrawal]:
        found: dict[str, Withdrawal] = {}
        for chunk in _chunks(ids):
            rows = self._c.execute(_WITHDRAWALS_LOCKED, {"ids": chunk})
            found.update({row.id: withdrawal_from_row(row) for row in rows})
        return found

    def write_batch(self, batch: IngestBatch) -> None:
        c = self._c
        now = _now()
        money = money_value(c)
        # The hot tables (one row or more per update) go through the driver's executemany.
        insert_rows(
            c,
            t.ingested_updates,
            ("update_id", "connection", "offset", "record_time", "status"),
            [
                (
                    u.update_id,
                    batch.connection,
                    u.offset,
                    timestamp_text(u.record_time),
                    u.status,
                )
                for u in batch.updates
            ],
        )
        _insert_holdings(c, batch.holdings_created, money)
        execute_many(
            c,
            _ARCHIVE_HOLDING,
            [
                {"cid": cid, "upd": update_id, "off": offset}
                for cid, update_id, offset in batch.holdings_archived
            ],
        )
        insert_rows(
            c,
            t.transfer_instructions,
            _INSTRUCTION_COLUMNS,
            [
                (
                    i.contract_id,
                    i.correlation_id,
                    i.original_instruction_cid,
                    direction,
                    i.transfer.sender,
                    i.transfer.receiver,
                    i.transfer.instrument.admin,
                    i.transfer.instrument.id,
                    money(i.transfer.amount),
                    i.transfer.reason,
                    format_timestamp(i.transfer.requested_at),
                    format_timestamp(i.transfer.execute_before),
                    json.dumps(list(i.transfer.input_holding_cids)),
                    json.dumps(dict(i.transfer.meta)),
                    i.status,
                    update_id,
                )
                for i, direction, update_id in batch.instructions_created
            ],
        )
        execute_many(
            c,
            _CLOSE_INSTRUCTION,
            [
                {"cid": cid, "st": status, "upd": update_id}
                for cid, status, update_id in batch.instructions_closed
            ],
        )
        insert_rows(
            c,
            t.history_entries,
            _ENTRY_COLUMNS,
            [_entry_row(batch.connection, r, money) for r in batch.entries],
        )
        if batch.withdrawals_new:
            c.execute(
                insert(t.withdrawals),
                [withdrawal_row(w, now) for w in batch.withdrawals_new.values()],
            )
        if batch.withdrawals_changed:
            c.execute(
                update(t.withdrawals)
                .where(t.withdrawals.c.id == bindparam("wid"))
                .values(
                    status=bindparam("st"),
                    instruction_cid=bindparam("icid"),
                    offered_at=bindparam("oat"),
                    outcome_update_id=bindparam("oud"),
                    failure=bindparam("fail"),
                    updated_at=now,
                ),
                [
                    {
                        "wid": w.id,
                        "st": w.status,
                        "icid": w.instruction_cid,
                        "oat": ts(w.offered_at),
                        "oud": w.outcome_update_id,
                        "fail": w.failure,
                    }
                    for w in batch.withdrawals_changed.values()
                ],
            )
        finished = [
            {"wid": w.id}
            for w in batch.withdrawals_changed.values()
            if w.status in TERMINAL_STATUSES or w.status == "offered"
        ]
        if finished:
            # A finished record, or one whose offer is on the ledger, keeps nothing reserved: the
            # transfer seen here may have spent other inputs than the current attempt's (an
            # earlier attempt committing late while a retry was in flight, or a DB restore).
            c.execute(
                update(t.holdings)
                .where(t.holdings.c.reserved_by == bindparam("wid"))
                .values(reserved_by=None),
                finished,
            )
        if batch.journal:
            # A withdrawal rebuilt from the chain after a DB restore may leave its customer owing.
            post_journal(c, batch.journal, now, forbid_negative_customers=False)
        insert_rows(
            c,
            t.alerts,
            _ALERT_COLUMNS,
            [
                (
                    a.id,
                    a.severity,
                    a.kind,
                    a.message,
                    a.update_id,
                    json.dumps(dict(a.details), sort_keys=True),
                    now,
                )
                for a in batch.alerts
            ],
        )
        add_alert_events(c, batch.alerts, now)
        if batch.quarantine_skipped:
            c.execute(
                update(t.quarantined_updates)
                .where(t.quarantined_updates.c.update_id == bindparam("key"))
                .values(skipped_at=now),
                [{"key": key} for key in batch.quarantine_skipped],
            )
        if batch.cursor is not None:
            self.set_cursor(batch.connection, batch.party, batch.cursor)

    def refresh_statistics(self) -> None:
        """Let the query planner see how big ingestion's tables have grown (PostgreSQL).

        On a fresh database under bulk load the statistics say the tables are empty, and the
        planner answers the batch lookups (``update_id IN (…)``) with sequential scans that
        grow with the table; autovacuum catches up only a minute or so later.
        """
        if self._c.dialect.name == "postgresql":
            self._c.exec_driver_sql(
                "ANALYZE ingested_updates, holdings, transfer_instructions, history_entries, "
                "journal_transactions, journal_postings, accounts"
            )

    def record_failure(
        self, connection: str, update_id: str | None, offset: int | None, problem: str, raw: str
    ) -> None:
        self._c.execute(
            insert(t.ingestion_failures).values(
                connection=connection,
                update_id=update_id,
                offset=offset,
                problem=problem,
                raw=raw,
                failed_at=_now(),
            )
        )

    def last_failure(self, connection: str, update_id: str) -> tuple[int | None, str, str] | None:
        table = t.ingestion_failures
        return self._last_failure(
            and_(table.c.connection == connection, table.c.update_id == update_id)
        )

    def last_failure_at_offset(
        self, connection: str, offset: int
    ) -> tuple[int | None, str, str] | None:
        table = t.ingestion_failures
        return self._last_failure(and_(table.c.connection == connection, table.c.offset == offset))

    def _last_failure(self, condition: ColumnElement[bool]) -> tuple[int | None, str, str] | None:
        table = t.ingestion_failures
        row = self._c.execute(
            select(table.c.offset, table.c.problem, table.c.raw)
            .where(condition)
            .order_by(table.c.id.desc())
            .limit(1)
        ).first()
        return (row.offset, row.problem, row.raw or "") if row else None

    def quarantine(
        self,
        key: str,
        connection: str,
        offset: int | None,
        problem: str | None,
        raw: str | None,
        requested_by: str,
    ) -> bool:
        table = t.quarantined_updates
        if self._c.execute(select(table.c.update_id).where(table.c.update_id == key)).first():
            return False
        self._c.execute(
            insert(table).values(
                update_id=key,
                connection=connection,
                offset=offset,
                problem=problem,
                raw=raw,
                requested_by=requested_by,
                requested_at=_now(),
                skipped_at=None,
            )
        )
        return True
