"""Paged reads of customers and their accounts, and suspense assignment, over one SQL connection.

Guarantees:

* Every list is a bounded page (:func:`sluice.store.rows.check_page`): ``limit`` between 1 and
  1,000, ``offset`` not negative (anything else is refused with :class:`InvalidInputError`
  before a query runs), in a total order (ties broken by the key), so consecutive pages neither
  repeat nor skip a row.
* A customer's balances are the cached ``accounts`` rows of ``customer:<id>``, the same rows
  every posting moves under lock, so a read never sees half a transaction.
* A suspense item is the history entry of a deposit booked to suspense (a transfer into the
  treasury with no or an unknown reason, or of an instrument that is not onboarded). It is
  assigned at most once: the assignment is keyed like the entry, and a second insert is skipped
  by the database (``ON CONFLICT DO NOTHING``) rather than checked first, so two writers cannot
  both assign it.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import BindParameter, Connection, Row, Select, and_, literal_column, or_, select
from sqlalchemy.sql.dml import ReturningInsert

from sluice.domain.compliance import Profile, check_status
from sluice.domain.journal import customer_account_name
from sluice.domain.ledger import InstrumentId, format_timestamp, parse_timestamp
from sluice.domain.withdrawals import Withdrawal
from sluice.ports import CustomerRecord, HistoryRecord, SuspenseItem
from sluice.store import tables as t
from sluice.store.records import other_names_of
from sluice.store.repositories import history_record_from_row, withdrawal_from_row
from sluice.store.rows import check_page, insert_for

SUSPENSE_DISPOSITION = "suspense"
# What ingestion records for a deposit: the only kind of suspense entry a customer can be owed.
DEPOSIT_KIND = "transfer_in"


def balances_query(account_name: str | BindParameter[str]) -> Select[str, str, Decimal]:
    """A customer account's balances per instrument (the synchronous repository and the API's
    asyncio reads run this same statement)."""
    table = t.accounts
    return (
        select(table.c.instrument_admin, table.c.instrument_id, table.c.balance)
        .where(table.c.name == account_name)
        .order_by(table.c.instrument_id, table.c.instrument_admin)
    )


class SqlAccountsRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    # --- customers ----------------------------------------------------------------------------

    def customer(self, customer_id: str) -> CustomerRecord | None:
        row = self._c.execute(select(t.customers).where(t.customers.c.id == customer_id)).first()
        if row is None:
            return None
        return self._records([row])[0]

    def customers(self, *, offset: int = 0, limit: int = 100) -> list[CustomerRecord]:
        check_page(offset, limit)
        rows = self._c.execute(
            select(t.customers).order_by(t.customers.c.id).offset(offset).limit(limit)
        ).all()
        return self._records(rows)

    def _records(self, rows: Collection[Row[Any]]) -> list[CustomerRecord]:
        """Customer rows with their deposit accounts (one query for the whole page)."""
        if not rows:
            return []
        table = t.deposit_accounts
        accounts: dict[str, list[str]] = {}
        found = self._c.execute(
            select(table.c.id, table.c.customer_id)
            .where(table.c.customer_id.in_([row.id for row in rows]))
            .order_by(table.c.created_at, table.c.id)
        )
        for account_id, customer_id in found:
            accounts.setdefault(customer_id, []).append(account_id)
        names = other_names_of(self._c, [row.id for row in rows])
        return [
            CustomerRecord(
                id=row.id,
                name=row.name,
                created_at=parse_timestamp(row.created_at),
                profile=Profile(
                    row.id,
                    row.kyc_tier,
                    check_status(row.kyc_status),
                    row.status_reason,
                    row.risk_score,
                ),
                deposit_accounts=tuple(accounts.get(row.id, ())),
                name_script=row.name_script,
                other_names=tuple(names.get(row.id, ())),
            )
            for row in rows
        ]

    def customer_balances(self, customer_id: str) -> dict[InstrumentId, Decimal]:
        rows = self._c.execute(balances_query(customer_account_name(customer_id)))
        return {InstrumentId(admin, instrument): balance for admin, instrument, balance in rows}

    def account_balances(self, account_name: str) -> dict[InstrumentId, Decimal]:
        """Any liability account's balances per instrument, by the account's name."""
        rows = self._c.execute(balances_query(account_name))
        return {InstrumentId(admin, instrument): balance for admin, instrument, balance in rows}

    def customer_history(
        self, customer_id: str, *, offset: int = 0, limit: int = 100
    ) -> list[HistoryRecord]:
        check_page(offset, limit)
        entries = t.history_entries
        withdrawals = t.withdrawals
        own_withdrawals = select(withdrawals.c.id).where(
            and_(withdrawals.c.customer_id == customer_id, withdrawals.c.kind == "withdrawal")
        )
        query = (
            select(entries)
            .where(or_(entries.c.customer_id == customer_id, entries.c.reason.in_(own_withdrawals)))
            .order_by(
                entries.c.record_time.desc(),
                entries.c.offset.desc(),
                entries.c.update_id.desc(),
                entries.c.node_id.desc(),
            )
            .offset(offset)
            .limit(limit)
        )
        return [history_record_from_row(row) for row in self._c.execute(query)]

    def customer_withdrawals(
        self,
        customer_id: str | None,
        *,
        statuses: Collection[str] = (),
        offset: int = 0,
        limit: int = 100,
    ) -> list[Withdrawal]:
        check_page(offset, limit)
        table = t.withdrawals
        query = select(table).where(table.c.kind == "withdrawal")
        if customer_id is not None:
            query = query.where(table.c.customer_id == customer_id)
        if statuses:
            query = query.where(table.c.status.in_(sorted(set(statuses))))
        query = query.order_by(table.c.requested_at.desc(), table.c.id).offset(offset).limit(limit)
        return [withdrawal_from_row(row) for row in self._c.execute(query)]

    # --- suspense -----------------------------------------------------------------------------

    def _suspense_query(self) -> Any:
        entries = t.history_entries
        assigned = t.suspense_assignments
        return (
            select(
                entries.c.update_id,
                entries.c.node_id,
                entries.c.record_time,
                entries.c.instrument_admin,
                entries.c.instrument_id,
                entries.c.amount,
                entries.c.sender,
                entries.c.reason,
                assigned.c.customer_id.label("assigned_to"),
                assigned.c.assigned_by,
                assigned.c.assigned_at,
            )
            .select_from(
                entries.outerjoin(
                    assigned,
                    and_(
                        assigned.c.update_id == entries.c.update_id,
                        assigned.c.node_id == entries.c.node_id,
                    ),
                )
            )
            .where(
                and_(
                    entries.c.disposition == SUSPENSE_DISPOSITION,
                    entries.c.kind == DEPOSIT_KIND,
                    entries.c.instrument_admin.is_not(None),
                    # Bound through the Money type: on SQLite both sides are the canonical text
                    # with 10 fractional digits, whose text order puts every positive amount
                    # above zero and every negative one below it.
                    entries.c.amount > Decimal(0),
                )
            )
        )

    def suspense_items(
        self, *, open_only: bool = True, offset: int = 0, limit: int = 100
    ) -> list[SuspenseItem]:
        check_page(offset, limit)
        entries = t.history_entries
        query = self._suspense_query()
        if open_only:
            query = query.where(t.suspense_assignments.c.update_id.is_(None))
        query = (
            query.order_by(entries.c.record_time, entries.c.update_id, entries.c.node_id)
            .offset(offset)
            .limit(limit)
        )
        return [_suspense_item(row) for row in self._c.execute(query)]

    def suspense_item(self, update_id: str, node_id: int) -> SuspenseItem | None:
        entries = t.history_entries
        row = self._c.execute(
            self._suspense_query().where(
                and_(entries.c.update_id == update_id, entries.c.node_id == node_id)
            )
        ).first()
        return _suspense_item(row) if row is not None else None

    def assign_suspense(
        self,
        item: SuspenseItem,
        customer_id: str,
        *,
        actor: str,
        at: datetime,
        approval_id: str | None,
        reason: str | None,
    ) -> bool:
        table = t.suspense_assignments
        insert = insert_for(self._c, table)
        statement: ReturningInsert[Any] = (
            insert.values(
                update_id=item.update_id,
                node_id=item.node_id,
                customer_id=customer_id,
                instrument_admin=item.instrument.admin,
                instrument_id=item.instrument.id,
                amount=item.amount,
                assigned_by=actor,
                assigned_at=format_timestamp(at),
                approval_id=approval_id,
                reason=reason,
            )
            .on_conflict_do_nothing(index_elements=["update_id", "node_id"])
            .returning(literal_column("1"))
        )
        return self._c.execute(statement).first() is not None


def _suspense_item(row: Row[Any]) -> SuspenseItem:
    return SuspenseItem(
        update_id=row.update_id,
        node_id=row.node_id,
        record_time=parse_timestamp(row.record_time),
        instrument=InstrumentId(row.instrument_admin, row.instrument_id),
        amount=row.amount,
        sender=row.sender,
        reason=row.reason,
        assigned_to=row.assigned_to,
        assigned_by=row.assigned_by,
        assigned_at=parse_timestamp(row.assigned_at) if row.assigned_at else None,
    )
