"""The books as stored: balances, holdings, pending instructions, history and alerts."""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, select

from sluice.domain.amounts import ZERO
from sluice.domain.deposits import Alert
from sluice.domain.journal import AccountRef, balance_change
from sluice.domain.ledger import PENDING_INSTRUCTION_STATUSES, Holding, TransferInstruction
from sluice.ports import HistoryRecord
from sluice.store import tables as t
from sluice.store.records import (
    _account_from_id,
    _holding_from_row,
    _instruction_from_row,
    history_record_from_row,
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
