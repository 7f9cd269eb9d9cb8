"""Repositories over one SQL connection: bulk reads and writes shaped for ingestion's batches."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    and_,
    bindparam,
    func,
    insert,
    select,
    update,
)

from sluice.domain.amounts import ZERO
from sluice.domain.deposits import Alert
from sluice.domain.journal import AccountRef, JournalTransaction, balance_change
from sluice.domain.ledger import (
    PENDING_INSTRUCTION_STATUSES,
    Cursor,
    Holding,
    InstrumentId,
    Lock,
    Transfer,
    TransferInstruction,
    format_timestamp,
    parse_timestamp,
)
from sluice.domain.withdrawals import TERMINAL_STATUSES, Withdrawal
from sluice.ports import EntryRecord, HistoryRecord, IngestBatch, InstrumentRecord
from sluice.store import tables as t
from sluice.store.bulk import execute_many, insert_rows, money_value
from sluice.store.rows import ts

CHUNK = 500  # bound on the number of parameters in one IN (…) list
T = TypeVar("T")


def _chunks(items: Collection[T], size: int = CHUNK) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _now() -> str:
    return format_timestamp(datetime.now(UTC))


def history_record_from_row(row: Row[Any]) -> HistoryRecord:
    return HistoryRecord(
        update_id=row.update_id,
        offset=row.offset,
        record_time=parse_timestamp(row.record_time),
        node_id=row.node_id,
        kind=row.kind,
        status=row.status,
        sender=row.sender,
        receiver=row.receiver,
        instrument=(
            InstrumentId(row.instrument_admin, row.instrument_id)
            if row.instrument_admin is not None
            else None
        ),
        amount=row.amount,
        reason=row.reason,
        correlation_id=row.correlation_id,
        holdings_created=tuple(json.loads(row.holdings_created)),
        holdings_archived=tuple(json.loads(row.holdings_archived)),
        disposition=row.disposition,
        customer_id=row.customer_id,
    )


def _holding_from_row(row: Row[Any]) -> Holding:
    lock = None
    if row.lock_holders is not None:
        lock = Lock(
            holders=tuple(json.loads(row.lock_holders)),
            expires_at=parse_timestamp(row.lock_expires_at) if row.lock_expires_at else None,
            context=row.lock_context,
        )
    return Holding(
        contract_id=row.contract_id,
        owner=row.owner,
        instrument=InstrumentId(row.instrument_admin, row.instrument_id),
        amount=row.amount,
        lock=lock,
    )


def _instruction_from_row(row: Row[Any]) -> TransferInstruction:
    meta = json.loads(row.transfer_meta)
    transfer = Transfer(
        sender=row.sender,
        receiver=row.receiver,
        amount=row.amount,
        instrument=InstrumentId(row.instrument_admin, row.instrument_id),
        requested_at=parse_timestamp(row.requested_at),
        execute_before=parse_timestamp(row.execute_before),
        input_holding_cids=tuple(json.loads(row.input_holding_cids)),
        meta=meta,
    )
    return TransferInstruction(
        contract_id=row.contract_id,
        transfer=transfer,
        status=row.status,
        original_instruction_cid=row.original_instruction_cid,
    )


def _account_from_id(account_id: str) -> AccountRef:
    name, admin, instrument_id = account_id.split("|", 2)
    return AccountRef(name, InstrumentId(admin, instrument_id))


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
        values = {
            "party": party,
            "offset": cursor.offset,
            "update_id": cursor.update_id,
            "record_time": ts(cursor.record_time),
            "synchronizer_id": cursor.synchronizer_id,
            "updated_at": _now(),
        }
        changed = self._c.execute(
            update(t.ledger_cursors)
            .where(t.ledger_cursors.c.connection == connection)
            .values(**values)
        ).rowcount
        if not changed:
            self._c.execute(insert(t.ledger_cursors).values(connection=connection, **values))

    def known_update_ids(self, update_ids: Collection[str]) -> set[str]:
        found: set[str] = set()
        column = t.ingested_updates.c.update_id
        for chunk in _chunks(update_ids):
            found.update(self._c.execute(select(column).where(column.in_(chunk))).scalars())
        return found

    def quarantined_keys(self, keys: Collection[str]) -> set[str]:
        found: set[str] = set()
        column = t.quarantined_updates.c.update_id
        for chunk in _chunks(keys):
            found.update(self._c.execute(select(column).where(column.in_(chunk))).scalars())
        return found

    def holdings_by_ids(self, contract_ids: Collection[str]) -> dict[str, Holding]:
        found: dict[str, Holding] = {}
        for chunk in _chunks(contract_ids):
            # Only the primary key in the condition: with a second one, a planner working from
            # stale statistics (a fresh table under bulk load) may walk another index instead.
            rows = self._c.execute(select(t.holdings).where(t.holdings.c.contract_id.in_(chunk)))
            for row in rows:
                if row.archived_update_id is None:
                    found[row.contract_id] = _holding_from_row(row)
        return found

    def instructions_by_ids(self, contract_ids: Collection[str]) -> dict[str, TransferInstruction]:
        found: dict[str, TransferInstruction] = {}
        table = t.transfer_instructions
        for chunk in _chunks(contract_ids):
            for row in self._c.execute(select(table).where(table.c.contract_id.in_(chunk))):
                found[row.contract_id] = _instruction_from_row(row)
        return found

    def customers_for_reasons(self, reasons: Collection[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        table = t.deposit_accounts
        for chunk in _chunks(reasons):
            rows = self._c.execute(
                select(table.c.id, table.c.customer_id).where(table.c.id.in_(chunk))
            )
            found.update({row.id: row.customer_id for row in rows})
        return found

    def onboarded_instruments(self) -> set[InstrumentId]:
        table = t.instruments
        rows = self._c.execute(select(table.c.admin, table.c.id).where(table.c.enabled.is_(True)))
        return {InstrumentId(row.admin, row.id) for row in rows}

    def withdrawals_by_ids(self, ids: Collection[str]) -> dict[str, Withdrawal]:
        found: dict[str, Withdrawal] = {}
        table = t.withdrawals
        for chunk in _chunks(ids):
            rows = self._c.execute(select(table).where(table.c.id.in_(chunk)).with_for_update())
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
                    format_timestamp(u.record_time),
                    u.status,
                )
                for u in batch.updates
            ],
        )
        insert_rows(
            c,
            t.holdings,
            _HOLDING_COLUMNS,
            [
                (
                    h.contract_id,
                    h.owner,
                    h.instrument.admin,
                    h.instrument.id,
                    money(h.amount),
                    json.dumps(list(h.lock.holders)) if h.lock else None,
                    ts(h.lock.expires_at) if h.lock else None,
                    h.lock.context if h.lock else None,
                    update_id,
                    offset,
                )
                for h, update_id, offset in batch.holdings_created
            ],
        )
        execute_many(
            c,
            _ARCHIVE_HOLDING,
            [
                {"cid": cid, "upd": update_id, "off": offset}
                for cid, update_id, offset in batch.holdings_archived
            ],
        )
        if batch.instructions_created:
            c.execute(
                insert(t.transfer_instructions),
                [
                    {
                        "contract_id": i.contract_id,
                        "correlation_id": i.correlation_id,
                        "original_instruction_cid": i.original_instruction_cid,
                        "direction": direction,
                        "sender": i.transfer.sender,
                        "receiver": i.transfer.receiver,
                        "instrument_admin": i.transfer.instrument.admin,
                        "instrument_id": i.transfer.instrument.id,
                        "amount": i.transfer.amount,
                        "reason": i.transfer.reason,
                        "requested_at": format_timestamp(i.transfer.requested_at),
                        "execute_before": format_timestamp(i.transfer.execute_before),
                        "input_holding_cids": json.dumps(list(i.transfer.input_holding_cids)),
                        "transfer_meta": json.dumps(dict(i.transfer.meta)),
                        "status": i.status,
                        "created_update_id": update_id,
                        "closed_update_id": None,
                    }
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
        if batch.alerts:
            c.execute(
                insert(t.alerts),
                [
                    {
                        "id": a.id,
                        "severity": a.severity,
                        "kind": a.kind,
                        "message": a.message,
                        "update_id": a.update_id,
                        "details": json.dumps(dict(a.details), sort_keys=True),
                        "created_at": now,
                        "acknowledged_at": None,
                    }
                    for a in batch.alerts
                ],
            )
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


def post_journal(
    c: Connection,
    journal: Iterable[JournalTransaction],
    now: str,
    *,
    forbid_negative_customers: bool = True,
) -> None:
    """Journal transactions, their postings and the cached balances they move."""
    deltas: dict[str, Decimal] = {}
    refs: dict[str, AccountRef] = {}
    money = money_value(c)
    postings: list[tuple[object, ...]] = []
    transactions: list[tuple[object, ...]] = []
    for txn in journal:
        transactions.append((txn.id, txn.kind, txn.update_id, txn.description, now))
        for seq, posting in enumerate(txn.postings):
            account_id = posting.account.id
            refs[account_id] = posting.account
            deltas[account_id] = deltas.get(account_id, ZERO) + balance_change(
                posting.account, posting.amount
            )
            postings.append((txn.id, seq, account_id, money(posting.amount)))
    if not transactions:
        return
    insert_rows(
        c,
        t.journal_transactions,
        ("id", "kind", "update_id", "description", "created_at"),
        transactions,
    )
    apply_balance_deltas(c, deltas, refs, forbid_negative_customers=forbid_negative_customers)
    insert_rows(c, t.journal_postings, ("transaction_id", "seq", "account_id", "amount"), postings)


def apply_balance_deltas(
    c: Connection,
    deltas: dict[str, Decimal],
    refs: dict[str, AccountRef],
    *,
    forbid_negative_customers: bool = True,
) -> None:
    """Move cached balances, creating accounts on first use; rows are locked while read."""
    existing: dict[str, Decimal] = {}
    for chunk in _chunks(sorted(deltas)):
        rows = c.execute(
            select(t.accounts.c.id, t.accounts.c.balance)
            .where(t.accounts.c.id.in_(chunk))
            # Locks taken in one order everywhere, so two writers never wait on each other.
            .order_by(t.accounts.c.id)
            .with_for_update()
        )
        existing.update({row.id: row.balance for row in rows})
    new_rows = []
    changed: list[tuple[str, Decimal]] = []
    for account_id, delta in deltas.items():
        if account_id in existing:
            if delta:
                changed.append((account_id, existing[account_id] + delta))
        else:
            ref = refs[account_id]
            new_rows.append(
                {
                    "id": account_id,
                    "name": ref.name,
                    "instrument_admin": ref.instrument.admin,
                    "instrument_id": ref.instrument.id,
                    "side": ref.side,
                    "balance": delta,
                }
            )
    for account_id, balance in changed if forbid_negative_customers else ():
        ref = refs[account_id]
        assert not (ref.customer_id and balance < 0), (
            f"customer account {ref.id} would go negative: {balance}"
        )
    if new_rows:
        c.execute(insert(t.accounts), new_rows)
    if changed:
        money = money_value(c)
        execute_many(
            c,
            _SET_BALANCE,
            [{"aid": account_id, "bal": money(balance)} for account_id, balance in changed],
        )


# Prebuilt, so the driver's executemany runs each one compiled once (see store/bulk.py).
_ARCHIVE_HOLDING = (
    update(t.holdings)
    .where(t.holdings.c.contract_id == bindparam("cid"))
    .values(archived_update_id=bindparam("upd"), archived_offset=bindparam("off"))
)
_CLOSE_INSTRUCTION = (
    update(t.transfer_instructions)
    .where(t.transfer_instructions.c.contract_id == bindparam("cid"))
    .values(status=bindparam("st"), closed_update_id=bindparam("upd"))
)
_SET_BALANCE = (
    update(t.accounts).where(t.accounts.c.id == bindparam("aid")).values(balance=bindparam("bal"))
)
_HOLDING_COLUMNS = (
    "contract_id",
    "owner",
    "instrument_admin",
    "instrument_id",
    "amount",
    "lock_holders",
    "lock_expires_at",
    "lock_context",
    "created_update_id",
    "created_offset",
)
_ENTRY_COLUMNS = (
    "update_id",
    "node_id",
    "connection",
    "offset",
    "record_time",
    "kind",
    "status",
    "sender",
    "receiver",
    "instrument_admin",
    "instrument_id",
    "amount",
    "reason",
    "correlation_id",
    "holdings_created",
    "holdings_archived",
    "disposition",
    "customer_id",
)


def _entry_row(
    connection: str, record: EntryRecord, money: Callable[[Decimal], object]
) -> tuple[object, ...]:
    """The row of ``_ENTRY_COLUMNS`` that stores ``record``."""
    e = record.entry
    return (
        record.update_id,
        e.node_id,
        connection,
        record.offset,
        format_timestamp(record.record_time),
        e.kind,
        e.status,
        e.sender,
        e.receiver,
        e.instrument.admin if e.instrument else None,
        e.instrument.id if e.instrument else None,
        money(e.amount) if e.amount is not None else None,
        e.reason,
        e.correlation_id,
        json.dumps([h.contract_id for h in e.holdings_created]),
        json.dumps([h.contract_id for h in e.holdings_archived]),
        record.disposition,
        record.customer_id,
    )


class SqlBooksRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def balances(self) -> dict[AccountRef, Decimal]:
        rows = self._c.execute(select(t.accounts.c.id, t.accounts.c.balance))
        return {_account_from_id(row.id): row.balance for row in rows}

    def balances_from_postings(self) -> dict[AccountRef, Decimal]:
        result: dict[AccountRef, Decimal] = {}
        table = t.journal_postings
        if self._c.dialect.name == "sqlite":
            rows: Iterable[Any] = self._c.execute(select(table.c.account_id, table.c.amount))
            sums: dict[str, Decimal] = {}
            for row in rows:
                sums[row.account_id] = sums.get(row.account_id, ZERO) + row.amount
        else:
            rows = self._c.execute(
                select(table.c.account_id, func.sum(table.c.amount).label("total")).group_by(
                    table.c.account_id
                )
            )
            sums = {row.account_id: Decimal(row.total) for row in rows}
        for account_id, total in sums.items():
            ref = _account_from_id(account_id)
            result[ref] = balance_change(ref, total)
        return result

    def active_holdings(self, owner: str | None = None) -> list[Holding]:
        query = select(t.holdings).where(t.holdings.c.archived_update_id.is_(None))
        if owner is not None:
            query = query.where(t.holdings.c.owner == owner)
        query = query.order_by(t.holdings.c.created_offset, t.holdings.c.contract_id)
        return [_holding_from_row(row) for row in self._c.execute(query)]

    def pending_instructions(self) -> list[tuple[TransferInstruction, str, str]]:
        table = t.transfer_instructions
        rows = self._c.execute(
            select(table)
            .where(table.c.status.in_(sorted(PENDING_INSTRUCTION_STATUSES)))
            .order_by(table.c.created_update_id, table.c.contract_id)
        )
        return [(_instruction_from_row(row), row.direction, row.status) for row in rows]

    def history(self, connection: str) -> list[HistoryRecord]:
        table = t.history_entries
        rows = self._c.execute(
            select(table)
            .where(table.c.connection == connection)
            .order_by(table.c.offset, table.c.node_id)
        )
        return [history_record_from_row(row) for row in rows]

    def alerts(self, limit: int = 1000) -> list[Alert]:
        rows = self._c.execute(
            select(t.alerts).order_by(t.alerts.c.created_at, t.alerts.c.id).limit(limit)
        )
        return [
            Alert(
                id=row.id,
                severity=row.severity,
                kind=row.kind,
                message=row.message,
                update_id=row.update_id,
                details=json.loads(row.details) if row.details else {},
            )
            for row in rows
        ]


class SqlReferenceRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def add_customer(self, customer_id: str, name: str) -> bool:
        table = t.customers
        if self._c.execute(select(table.c.id).where(table.c.id == customer_id)).first():
            return False
        self._c.execute(insert(table).values(id=customer_id, name=name, created_at=_now()))
        return True

    def add_deposit_account(self, account_id: str, customer_id: str) -> bool:
        table = t.deposit_accounts
        if self._c.execute(select(table.c.id).where(table.c.id == account_id)).first():
            return False
        self._c.execute(
            insert(table).values(id=account_id, customer_id=customer_id, created_at=_now())
        )
        return True

    def customer_of_deposit_account(self, account_id: str) -> str | None:
        table = t.deposit_accounts
        return self._c.execute(
            select(table.c.customer_id).where(table.c.id == account_id)
        ).scalar_one_or_none()

    def add_instrument(
        self,
        instrument: InstrumentId,
        registry_url: str | None,
        trusted: bool,
        kinds: str,
        limits: Mapping[str, str] | None = None,
    ) -> bool:
        table = t.instruments
        exists = self._c.execute(
            select(table.c.id).where(
                and_(table.c.admin == instrument.admin, table.c.id == instrument.id)
            )
        ).first()
        if exists:
            return False
        self._c.execute(
            insert(table).values(
                admin=instrument.admin,
                id=instrument.id,
                registry_url=registry_url,
                trusted=trusted,
                enabled=True,
                transfer_kinds=kinds,
                created_at=_now(),
                limits=json.dumps(dict(limits), sort_keys=True) if limits else None,
            )
        )
        return True

    def set_instrument_enabled(self, instrument: InstrumentId, enabled: bool) -> bool:
        table = t.instruments
        return bool(
            self._c.execute(
                update(table)
                .where(and_(table.c.admin == instrument.admin, table.c.id == instrument.id))
                .values(enabled=enabled)
            ).rowcount
        )

    def instruments(self) -> list[InstrumentRecord]:
        table = t.instruments
        rows = self._c.execute(select(table).order_by(table.c.id, table.c.admin))
        return [instrument_from_row(row) for row in rows]

    def customers(self) -> list[tuple[str, str]]:
        rows = self._c.execute(
            select(t.customers.c.id, t.customers.c.name).order_by(t.customers.c.id)
        )
        return [(row.id, row.name) for row in rows]


def instrument_from_row(row: Row[Any]) -> InstrumentRecord:
    return InstrumentRecord(
        instrument=InstrumentId(row.admin, row.id),
        registry_url=row.registry_url,
        trusted=bool(row.trusted),
        enabled=bool(row.enabled),
        transfer_kinds=tuple(k for k in row.transfer_kinds.split(",") if k),
        limits=json.loads(row.limits) if row.limits else {},
    )


def _stored_time(text: str) -> datetime:
    """A timestamp this DB wrote (canonical, ``...Z``): the fast path of ``parse_timestamp``."""
    return datetime.fromisoformat(text)


def withdrawal_from_row(row: Row[Any]) -> Withdrawal:
    return Withdrawal(
        id=row.id,
        kind=row.kind,
        customer_id=row.customer_id,
        sender=row.sender,
        receiver=row.receiver,
        instrument=InstrumentId(row.instrument_admin, row.instrument_id),
        amount=row.amount,
        status=row.status,
        attempt=row.attempt,
        attempts_max=row.attempts_max,
        idempotency_key=row.idempotency_key,
        trec_tgt=_stored_time(row.trec_tgt) if row.trec_tgt else None,
        inputs=tuple(json.loads(row.inputs)),
        requested_at=_stored_time(row.requested_at) if row.requested_at else None,
        instruction_cid=row.instruction_cid,
        offered_at=_stored_time(row.offered_at) if row.offered_at else None,
        outcome_update_id=row.outcome_update_id,
        failure=row.failure,
        last_error=row.last_error,
        rebuilt=bool(row.rebuilt),
    )


def withdrawal_row(w: Withdrawal, now: str) -> dict[str, object]:
    return {
        "id": w.id,
        "kind": w.kind,
        "customer_id": w.customer_id,
        "idempotency_key": w.idempotency_key,
        "sender": w.sender,
        "receiver": w.receiver,
        "instrument_admin": w.instrument.admin,
        "instrument_id": w.instrument.id,
        "amount": w.amount,
        "status": w.status,
        "attempt": w.attempt,
        "attempts_max": w.attempts_max,
        "trec_tgt": ts(w.trec_tgt),
        "inputs": json.dumps(list(w.inputs)),
        "requested_at": ts(w.requested_at),
        "instruction_cid": w.instruction_cid,
        "offered_at": ts(w.offered_at),
        "outcome_update_id": w.outcome_update_id,
        "failure": w.failure,
        "last_error": w.last_error,
        "rebuilt": w.rebuilt,
        "created_at": now,
        "updated_at": now,
    }
