"""API keys, approvals of critical operations and run-time settings over one SQL connection.

Guarantees:

* An API key row holds the sha256 of the key's secret, never the secret itself.
* Approvals keep their parameters, votes and result as JSON (orjson, keys sorted), so a proposal
  reads back exactly as it was written: votes in the order they were cast, timestamps canonical.
* ``approval(id, lock=True)`` holds the row until commit on PostgreSQL (``SELECT … FOR UPDATE``),
  so two votes on one proposal are decided one after the other. SQLite transactions begin with
  ``BEGIN IMMEDIATE`` and are already serialised.
* Inserting a proposal or a setting whose key exists writes nothing (``ON CONFLICT DO NOTHING``,
  checked through ``RETURNING``), so two writers cannot both insert.
* Every list is paged and bounded (:func:`sluice.store.rows.check_page`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import orjson
from sqlalchemy import Connection, Row, and_, literal_column, select, update
from sqlalchemy.sql.dml import ReturningInsert

from sluice.domain.approvals import APPROVAL_STATUSES, Approval, ApprovalStatus, Vote
from sluice.domain.errors import DuplicateOperationError, InvalidInputError
from sluice.domain.ledger import format_timestamp
from sluice.ports import ApiKeyRecord, SettingRecord
from sluice.store import tables as t
from sluice.store.rows import (
    check_page,
    insert_for,
    optional_time,
    time_of,
    to_json,
    ts,
)


def _status(value: str) -> ApprovalStatus:
    for status in APPROVAL_STATUSES:
        if value == status:
            return status
    raise InvalidInputError(
        f"unknown approval status {value!r}; one of {', '.join(APPROVAL_STATUSES)}"
    )


def _votes_json(votes: tuple[Vote, ...]) -> str:
    return to_json(
        [
            {
                "principal_id": v.principal_id,
                "role": v.role,
                "decision": v.decision,
                "at": format_timestamp(v.at),
                "comment": v.comment,
            }
            for v in votes
        ]
    )


def _decision(value: str) -> Literal["approve", "reject"]:
    if value == "approve":
        return "approve"
    if value == "reject":
        return "reject"
    raise InvalidInputError(f"unknown vote decision {value!r}")


def _votes(text: str) -> tuple[Vote, ...]:
    return tuple(
        Vote(
            principal_id=item["principal_id"],
            role=item["role"],
            decision=_decision(item["decision"]),
            at=time_of(item["at"]),
            comment=item.get("comment"),
        )
        for item in orjson.loads(text)
    )


def _mapping(value: Mapping[str, object] | None) -> str | None:
    return to_json(dict(value)) if value is not None else None


def _api_key_from_row(row: Row[Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        secret_hash=row.secret_hash,
        role=row.role,
        customer_id=row.customer_id,
        label=row.label,
        created_by=row.created_by,
        created_at=time_of(row.created_at),
        revoked_by=row.revoked_by,
        revoked_at=optional_time(row.revoked_at),
    )


def _approval_values(approval: Approval) -> dict[str, object]:
    return {
        "operation": approval.operation,
        "parameters": to_json(dict(approval.parameters)),
        "proposed_by": approval.proposed_by,
        "proposed_at": format_timestamp(approval.proposed_at),
        "required": approval.required,
        "status": _status(approval.status),
        "votes": _votes_json(approval.votes),
        "customer_id": approval.customer_id,
        "timelock_s": float(approval.timelock_s),
        "effective_at": ts(approval.effective_at),
        "executed_at": ts(approval.executed_at),
        "result": _mapping(approval.result),
        "error": approval.error,
        "correlation_id": approval.correlation_id,
        "reason": approval.reason,
    }


def _approval_from_row(row: Row[Any]) -> Approval:
    return Approval(
        id=row.id,
        operation=row.operation,
        parameters=orjson.loads(row.parameters),
        proposed_by=row.proposed_by,
        proposed_at=time_of(row.proposed_at),
        required=row.required,
        status=_status(row.status),
        votes=_votes(row.votes),
        customer_id=row.customer_id,
        timelock_s=float(row.timelock_s),
        effective_at=optional_time(row.effective_at),
        executed_at=optional_time(row.executed_at),
        result=orjson.loads(row.result) if row.result is not None else None,
        error=row.error,
        correlation_id=row.correlation_id,
        reason=row.reason,
    )


def _setting_from_row(row: Row[Any]) -> SettingRecord:
    return SettingRecord(
        key=row.key,
        value=orjson.loads(row.value),
        effective_at=time_of(row.effective_at),
        set_by=row.set_by,
        approval_id=row.approval_id,
    )


class SqlAccessRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    @property
    def _postgresql(self) -> bool:
        return self._c.dialect.name == "postgresql"

    # --- API keys ---------------------------------------------------------------------------

    def add_api_key(self, record: ApiKeyRecord) -> None:
        """Insert a key; :class:`DuplicateOperationError` if its id is taken."""
        statement: ReturningInsert[Any] = (
            insert_for(self._c, t.api_keys)
            .values(
                id=record.id,
                secret_hash=record.secret_hash,
                role=record.role,
                customer_id=record.customer_id,
                label=record.label,
                created_by=record.created_by,
                created_at=format_timestamp(record.created_at),
                revoked_by=record.revoked_by,
                revoked_at=ts(record.revoked_at),
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(literal_column("1"))
        )
        if self._c.execute(statement).first() is None:
            raise DuplicateOperationError(f"an API key with id {record.id!r} exists")

    def api_key(self, key_id: str) -> ApiKeyRecord | None:
        table = t.api_keys
        row = self._c.execute(select(table).where(table.c.id == key_id)).first()
        return _api_key_from_row(row) if row is not None else None

    def api_keys(self, *, offset: int = 0, limit: int = 100) -> list[ApiKeyRecord]:
        """Oldest first."""
        check_page(offset, limit)
        table = t.api_keys
        rows = self._c.execute(
            select(table).order_by(table.c.created_at, table.c.id).offset(offset).limit(limit)
        )
        return [_api_key_from_row(row) for row in rows]

    def revoke_api_key(self, key_id: str, actor: str, at: datetime) -> bool:
        table = t.api_keys
        changed = self._c.execute(
            update(table)
            .where(and_(table.c.id == key_id, table.c.revoked_at.is_(None)))
            .values(revoked_by=actor, revoked_at=format_timestamp(at))
        ).rowcount
        return bool(changed)

    # --- approvals --------------------------------------------------------------------------

    def add_approval(self, approval: Approval) -> bool:
        statement: ReturningInsert[Any] = (
            insert_for(self._c, t.approvals)
            .values(id=approval.id, **_approval_values(approval))
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(literal_column("1"))
        )
        return self._c.execute(statement).first() is not None

    def approval(self, approval_id: str, *, lock: bool = False) -> Approval | None:
        table = t.approvals
        query = select(table).where(table.c.id == approval_id)
        if lock and self._postgresql:
            query = query.with_for_update()
        row = self._c.execute(query).first()
        return _approval_from_row(row) if row is not None else None

    def update_approval(self, approval: Approval) -> None:
        """Write every field of a stored proposal (its id, operation and proposer never change);
        :class:`InvalidInputError` if no proposal has its id."""
        table = t.approvals
        values = _approval_values(approval)
        for fixed in ("operation", "proposed_by", "proposed_at"):
            del values[fixed]
        changed = self._c.execute(
            update(table).where(table.c.id == approval.id).values(**values)
        ).rowcount
        if not changed:
            raise InvalidInputError(f"no approval {approval.id!r} to update")

    def approvals(
        self,
        *,
        status: str | None = None,
        customer_id: str | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> list[Approval]:
        check_page(offset, limit)
        table = t.approvals
        query = select(table)
        if status is not None:
            query = query.where(table.c.status == _status(status))
        if customer_id is not None:
            query = query.where(table.c.customer_id == customer_id)
        query = (
            query.order_by(table.c.proposed_at.desc(), table.c.id.desc())
            .offset(offset)
            .limit(limit)
        )
        return [_approval_from_row(row) for row in self._c.execute(query)]

    # --- run-time settings ------------------------------------------------------------------

    def add_setting(self, record: SettingRecord) -> None:
        """Insert a value of a setting. Writing the same value for the same (key, effective_at)
        again is a no-op (an executor that ran twice); a different value there is refused with
        :class:`DuplicateOperationError`."""
        text = to_json(record.value)
        statement: ReturningInsert[Any] = (
            insert_for(self._c, t.runtime_settings)
            .values(
                key=record.key,
                effective_at=format_timestamp(record.effective_at),
                value=text,
                set_by=record.set_by,
                approval_id=record.approval_id,
            )
            .on_conflict_do_nothing(index_elements=["key", "effective_at"])
            .returning(literal_column("1"))
        )
        if self._c.execute(statement).first() is not None:
            return
        table = t.runtime_settings
        existing = self._c.execute(
            select(table.c.value).where(
                and_(
                    table.c.key == record.key,
                    table.c.effective_at == format_timestamp(record.effective_at),
                )
            )
        ).scalar_one()
        if orjson.loads(existing) != orjson.loads(text):
            raise DuplicateOperationError(
                f"setting {record.key!r} already has another value taking effect at "
                f"{format_timestamp(record.effective_at)}"
            )

    def settings(self) -> list[SettingRecord]:
        table = t.runtime_settings
        rows = self._c.execute(select(table).order_by(table.c.key, table.c.effective_at))
        return [_setting_from_row(row) for row in rows]
