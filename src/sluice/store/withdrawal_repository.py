"""Withdrawals, their attempts and holding reservations; incoming offers for the deposit worker."""

from __future__ import annotations

import json
from collections.abc import Collection
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, and_, bindparam, func, insert, select, update

from sluice.domain.amounts import ZERO
from sluice.domain.journal import AccountRef, JournalTransaction
from sluice.domain.ledger import (
    PENDING_INSTRUCTION_STATUSES,
    Cursor,
    Holding,
    InstrumentId,
    Lock,
    parse_timestamp,
)
from sluice.domain.withdrawals import LIVE_STATUSES, Withdrawal
from sluice.ports import IncomingOffer, InstrumentRecord
from sluice.store import tables as t
from sluice.store.repositories import (
    SqlIngestionRepository,
    _instruction_from_row,
    _now,
    instrument_from_row,
    post_journal,
    withdrawal_from_row,
    withdrawal_row,
)
from sluice.store.rows import ts


class SqlWithdrawalRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def get(self, withdrawal_id: str, *, lock: bool = False) -> Withdrawal | None:
        query = select(t.withdrawals).where(t.withdrawals.c.id == withdrawal_id)
        if lock:
            query = query.with_for_update()
        row = self._c.execute(query).first()
        return withdrawal_from_row(row) if row else None

    def insert(self, withdrawal: Withdrawal) -> None:
        self._c.execute(insert(t.withdrawals).values(**withdrawal_row(withdrawal, _now())))

    def update(self, withdrawal: Withdrawal, *, expected_status: str | None = None) -> bool:
        return self.update_many([withdrawal], expected_status=expected_status) == 1

    def update_many(
        self,
        withdrawals: Collection[Withdrawal],
        *,
        expected_status: str | None = None,
        same_attempt: bool = False,
    ) -> int:
        """Write the records (one statement, bound parameters); with ``expected_status``, only
        those that still have it; with ``same_attempt``, only those still on the record's attempt
        and ``trec_tgt`` (a status can leave and come back while a worker is away). Returns how
        many rows changed."""
        if not withdrawals:
            return 0
        now = _now()
        rows = []
        for withdrawal in withdrawals:
            row = withdrawal_row(withdrawal, now)
            del row["created_at"]
            rows.append({f"p_{key}": value for key, value in row.items()})
        table = t.withdrawals
        condition = table.c.id == bindparam("p_id")
        if expected_status is not None:
            condition = and_(condition, table.c.status == expected_status)
        if same_attempt:
            condition = and_(
                condition,
                table.c.attempt == bindparam("p_attempt"),
                table.c.trec_tgt.is_not_distinct_from(bindparam("p_trec_tgt")),
            )
        statement = (
            update(table)
            .where(condition)
            .values({key[2:]: bindparam(key) for key in rows[0] if key != "p_id"})
        )
        return int(self._c.execute(statement, rows).rowcount)

    def claim(
        self,
        statuses: Collection[str],
        limit: int,
        *,
        kinds: Collection[str] = (),
        trec_tgt_at_most: datetime | None = None,
    ) -> list[Withdrawal]:
        table = t.withdrawals
        query = select(table).where(table.c.status.in_(list(statuses)))
        if trec_tgt_at_most is not None:
            # Canonical timestamps: text order is time order.
            query = query.where(table.c.trec_tgt <= ts(trec_tgt_at_most))
        if kinds:
            query = query.where(table.c.kind.in_(list(kinds)))
        query = query.order_by(table.c.created_at, table.c.id).limit(limit)
        if self._c.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        return [withdrawal_from_row(row) for row in self._c.execute(query)]

    def find(
        self,
        *,
        statuses: Collection[str] = (),
        customer_id: str | None = None,
        kinds: Collection[str] = (),
        limit: int = 1000,
    ) -> list[Withdrawal]:
        table = t.withdrawals
        query = select(table)
        if statuses:
            query = query.where(table.c.status.in_(list(statuses)))
        if kinds:
            query = query.where(table.c.kind.in_(list(kinds)))
        if customer_id is not None:
            query = query.where(table.c.customer_id == customer_id)
        query = query.order_by(table.c.created_at, table.c.id).limit(limit)
        return [withdrawal_from_row(row) for row in self._c.execute(query)]

    def largest_live_trec_tgt(self) -> datetime | None:
        table = t.withdrawals
        value = self._c.execute(
            select(func.max(table.c.trec_tgt)).where(table.c.status.in_(list(LIVE_STATUSES)))
        ).scalar_one_or_none()
        return parse_timestamp(value) if value else None

    def record_attempt(
        self, withdrawal_id: str, attempt: int, inputs: tuple[str, ...], trec_tgt: datetime
    ) -> None:
        table = t.withdrawal_attempts
        exists = self._c.execute(
            select(table.c.attempt).where(
                and_(table.c.withdrawal_id == withdrawal_id, table.c.attempt == attempt)
            )
        ).first()
        values = {"inputs": json.dumps(list(inputs)), "trec_tgt": ts(trec_tgt)}
        if exists:
            self._c.execute(
                update(table)
                .where(and_(table.c.withdrawal_id == withdrawal_id, table.c.attempt == attempt))
                .values(**values)
            )
        else:
            self._c.execute(
                insert(table).values(
                    withdrawal_id=withdrawal_id,
                    attempt=attempt,
                    outcome=None,
                    error=None,
                    created_at=_now(),
                    **values,
                )
            )

    def close_attempt(
        self, withdrawal_id: str, attempt: int, outcome: str, error: str | None
    ) -> None:
        table = t.withdrawal_attempts
        self._c.execute(
            update(table)
            .where(and_(table.c.withdrawal_id == withdrawal_id, table.c.attempt == attempt))
            .values(outcome=outcome, error=error)
        )

    def spendable_holdings(self, owner: str, instrument: InstrumentId) -> list[Holding]:
        """Only what selection needs is read (this runs for every withdrawal request)."""
        table = t.holdings
        query = select(
            table.c.contract_id, table.c.amount, table.c.lock_holders, table.c.lock_expires_at
        ).where(
            and_(
                table.c.owner == owner,
                table.c.instrument_admin == instrument.admin,
                table.c.instrument_id == instrument.id,
                table.c.archived_update_id.is_(None),
                table.c.reserved_by.is_(None),
            )
        )
        found = []
        for cid, amount, lock_holders, lock_expires_at in self._c.execute(query):
            lock = None
            if lock_holders is not None:
                lock = Lock(
                    holders=(),
                    expires_at=parse_timestamp(lock_expires_at) if lock_expires_at else None,
                )
            found.append(Holding(cid, owner, instrument, amount, lock))
        return found

    def reserve(self, contract_ids: Collection[str], withdrawal_id: str) -> bool:
        table = t.holdings
        wanted = list(dict.fromkeys(contract_ids))
        if not wanted:
            return False
        changed = self._c.execute(
            update(table)
            .where(
                and_(
                    table.c.contract_id.in_(wanted),
                    table.c.reserved_by.is_(None),
                    table.c.archived_update_id.is_(None),
                )
            )
            .values(reserved_by=withdrawal_id)
        ).rowcount
        if changed != len(wanted):
            # Someone else got one of them first: give back what was taken here (and only that:
            # the record may hold its anchor from an earlier attempt).
            self._c.execute(
                update(table)
                .where(and_(table.c.contract_id.in_(wanted), table.c.reserved_by == withdrawal_id))
                .values(reserved_by=None)
            )
            return False
        return True

    def release(self, withdrawal_id: str) -> int:
        table = t.holdings
        return int(
            self._c.execute(
                update(table).where(table.c.reserved_by == withdrawal_id).values(reserved_by=None)
            ).rowcount
        )

    def reserved_by(self, holder_id: str) -> list[str]:
        table = t.holdings
        query = (
            select(table.c.contract_id)
            .where(table.c.reserved_by == holder_id)
            .order_by(table.c.contract_id)
        )
        return list(self._c.execute(query).scalars())

    def post(self, journal: list[JournalTransaction]) -> None:
        post_journal(self._c, journal, _now())

    def balance(self, account: AccountRef, *, lock: bool = False) -> Decimal:
        query = select(t.accounts.c.balance).where(t.accounts.c.id == account.id)
        if lock:
            query = query.with_for_update()
        value = self._c.execute(query).scalar_one_or_none()
        return value if value is not None else ZERO

    def cursor(self, connection: str) -> Cursor | None:
        return SqlIngestionRepository(self._c).load_cursor(connection)

    def control(self, key: str) -> str | None:
        return self._c.execute(
            select(t.control.c.value).where(t.control.c.key == key)
        ).scalar_one_or_none()

    def set_control(self, key: str, value: str | None) -> None:
        table = t.control
        changed = self._c.execute(
            update(table).where(table.c.key == key).values(value=value, updated_at=_now())
        ).rowcount
        if not changed:
            self._c.execute(insert(table).values(key=key, value=value, updated_at=_now()))

    def instrument(self, instrument: InstrumentId) -> InstrumentRecord | None:
        table = t.instruments
        row = self._c.execute(
            select(table).where(
                and_(table.c.admin == instrument.admin, table.c.id == instrument.id)
            )
        ).first()
        return instrument_from_row(row) if row else None

    def customer_exists(self, customer_id: str) -> bool:
        return (
            self._c.execute(select(t.customers.c.id).where(t.customers.c.id == customer_id)).first()
            is not None
        )

    def live_instruction(self, correlation_id: str) -> str | None:
        table = t.transfer_instructions
        return self._c.execute(
            select(table.c.contract_id)
            .where(
                and_(
                    table.c.correlation_id == correlation_id,
                    table.c.status.in_(sorted(PENDING_INSTRUCTION_STATUSES)),
                )
            )
            .limit(1)
        ).scalar_one_or_none()


class SqlDepositOfferRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def pending_incoming(self, party: str, limit: int = 1000) -> list[IncomingOffer]:
        ti = t.transfer_instructions
        actions = t.deposit_offer_actions
        accounts = t.deposit_accounts
        query = (
            select(
                ti,
                accounts.c.customer_id.label("customer_id"),
                actions.c.action.label("action"),
                actions.c.attempts.label("attempts"),
                actions.c.last_error.label("last_error"),
            )
            .select_from(
                ti.outerjoin(accounts, accounts.c.id == ti.c.reason).outerjoin(
                    actions, actions.c.instruction_cid == ti.c.contract_id
                )
            )
            .where(
                and_(
                    ti.c.direction == "in",
                    ti.c.receiver == party,
                    ti.c.status.in_(sorted(PENDING_INSTRUCTION_STATUSES)),
                )
            )
            .order_by(ti.c.requested_at, ti.c.contract_id)
            .limit(limit)
        )
        return [
            IncomingOffer(
                instruction=_instruction_from_row(row),
                status=row.status,
                customer_id=row.customer_id,
                action=row.action,
                attempts=row.attempts or 0,
                last_error=row.last_error,
            )
            for row in self._c.execute(query)
        ]

    def record_action(
        self, instruction_cid: str, action: str, error: str | None, decided: str
    ) -> None:
        table = t.deposit_offer_actions
        row = self._c.execute(
            select(table.c.attempts).where(table.c.instruction_cid == instruction_cid)
        ).first()
        if row is None:
            self._c.execute(
                insert(table).values(
                    instruction_cid=instruction_cid,
                    action=action,
                    decided=decided,
                    attempts=1,
                    last_error=error,
                    updated_at=_now(),
                )
            )
        else:
            self._c.execute(
                update(table)
                .where(table.c.instruction_cid == instruction_cid)
                .values(
                    action=action,
                    decided=decided,
                    attempts=row.attempts + 1,
                    last_error=error,
                    updated_at=_now(),
                )
            )
