"""Reference data as stored: customers, their deposit accounts and the instruments."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import Connection, and_, func, insert, select, update

from sluice.domain.customer_names import CustomerName
from sluice.domain.ledger import InstrumentId, format_timestamp
from sluice.ports import InstrumentRecord
from sluice.store import tables as t
from sluice.store.records import _now, instrument_from_row, other_names_of


class SqlReferenceRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def add_customer(self, customer_id: str, name: str, name_script: str | None = None) -> bool:
        table = t.customers
        if self._c.execute(select(table.c.id).where(table.c.id == customer_id)).first():
            return False
        values = {"id": customer_id, "name": name, "created_at": _now()}
        if name_script is not None:  # left out unless known (databases before migration 0015)
            values["name_script"] = name_script
        self._c.execute(insert(table).values(**values))
        return True

    def customer_names_of(self, customer_id: str) -> list[CustomerName] | None:
        customers = t.customers
        row = self._c.execute(
            select(customers.c.name, customers.c.name_script).where(customers.c.id == customer_id)
        ).first()
        if row is None:
            return None
        others = other_names_of(self._c, [customer_id]).get(customer_id, [])
        return [CustomerName(row.name, row.name_script, primary=True), *others]

    def add_customer_names(
        self, customer_id: str, names: Sequence[CustomerName], *, actor: str, at: datetime
    ) -> None:
        """Append ``names`` after the customer's other names (the caller left out those the
        customer already has)."""
        if not names:
            return
        table = t.customer_names
        last = self._c.execute(
            select(func.max(table.c.position)).where(table.c.customer_id == customer_id)
        ).scalar()
        first = 1 if last is None else last + 1
        self._c.execute(
            insert(table),
            [
                {
                    "customer_id": customer_id,
                    "name": name.name,
                    "script": name.script or "other",
                    "position": first + offset,
                    "added_by": actor,
                    "added_at": format_timestamp(at),
                }
                for offset, name in enumerate(names)
            ],
        )

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
