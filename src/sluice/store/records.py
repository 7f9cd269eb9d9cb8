"""Stored rows and the domain records they become, shared by the store's repositories."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, select

from sluice.domain.customer_names import CustomerName
from sluice.domain.journal import AccountRef
from sluice.domain.ledger import (
    Holding,
    InstrumentId,
    Lock,
    Transfer,
    TransferInstruction,
    format_timestamp,
    parse_timestamp,
)
from sluice.domain.withdrawals import Withdrawal
from sluice.ports import HistoryRecord, InstrumentRecord
from sluice.store import tables as t
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


def other_names_of(
    connection: Connection, customer_ids: Collection[str]
) -> dict[str, list[CustomerName]]:
    """The other names of these customers (one query per :data:`CHUNK` of ids), each
    customer's in the order they were given."""
    table = t.customer_names
    found: dict[str, list[CustomerName]] = {}
    for chunk in _chunks(list(customer_ids)):
        rows = connection.execute(
            select(table.c.customer_id, table.c.name, table.c.script)
            .where(table.c.customer_id.in_(chunk))
            .order_by(table.c.customer_id, table.c.position)
        )
        for row in rows:
            found.setdefault(row.customer_id, []).append(CustomerName(row.name, row.script))
    return found
