"""The KYC registry's tables (DESIGN §6), read and written in the caller's transaction.

Guarantees:

* Replays write nothing twice: usage rows are keyed by operation id, holds and review items by
  their ids, flags by address; a second insert of the same key is skipped by the database
  (``ON CONFLICT DO NOTHING``) rather than checked first, so two writers cannot both insert.
  Whether a row went in is read from ``RETURNING`` (the row count of such an insert is not
  reported by every driver).
* ``profiles(…, lock=True)`` holds the customers' rows until commit on PostgreSQL
  (``SELECT … FOR UPDATE``, always in id order so two lockers never wait on each other). SQLite
  transactions begin with ``BEGIN IMMEDIATE`` and so are already serialised; nothing more is done.
* Reads for many customers or addresses are set-based (one query per ``CHUNK`` of ids), because
  ingestion asks for a whole batch at once.
* Usage totals (``compliance_usage_totals``, per customer, operation and hour or day) move with
  the usage rows in the same statement sequence: a row inserted (not a replay skipped by the
  conflict clause) adds to its hour and day, a row forgotten takes its amount off again. On
  PostgreSQL the totals are upserted with the addition done by the database (``amount +
  excluded.amount``, exact ``NUMERIC``); SQLite keeps money as text and serialises whole
  transactions, so there the totals are read, added in Python and upserted with the result.
* Every change of a customer's usage rows (a row recorded, not a replay; a row forgotten) moves
  the customer's usage version (``compliance_usage_versions``) by one in the same transaction, so
  a writer that keeps usage in memory across transactions (ingestion) can tell whether anyone
  else changed it since.
* What a decision reads is bounded whatever the customer's history: the totals and edge records
  of :class:`UsageSpan`, and at most ``limit`` recent rows per customer.
* A hold leaves ``held`` at most once; a review item is closed at most once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import delete, literal_column, select, update
from sqlalchemy.sql.dml import ReturningInsert

from sluice.domain.compliance import KycStatus, Profile, TierLimits, check_status
from sluice.domain.customer_names import CustomerName
from sluice.domain.ledger import format_timestamp
from sluice.store import tables as t
from sluice.store.bulk import money_read
from sluice.store.compliance_connection import CHUNK, ComplianceConnection, _chunks, marks
from sluice.store.compliance_holds import HOLD_STATUSES, SqlComplianceHolds
from sluice.store.compliance_usage import RECENT_CHUNK, SPAN_RANGES, SqlComplianceUsage
from sluice.store.rows import insert_for, optional_time, time_of, to_json, ts

# Usage and its totals, and the holds and reviews, live in their own modules; the names this
# module has offered are re-exported so that they stay importable from it.
__all__ = [
    "CHUNK",
    "HOLD_STATUSES",
    "RECENT_CHUNK",
    "SPAN_RANGES",
    "ComplianceConnection",
    "RiskRecord",
    "SqlComplianceRepository",
]


@dataclass(frozen=True, slots=True)
class RiskRecord:
    """What the KYC registry stored about a customer beyond their :class:`Profile`."""

    risk_score: int
    risk_flags: tuple[str, ...]
    sanctions_match: dict[str, Any] | None
    updated_at: datetime | None


# Ingestion reads the profiles and flags of each batch's customers and parties: SQL text run by
# the driver (SQLAlchemy's expansion of an IN list cost more than the database's answer).
@lru_cache(maxsize=256)
def _profiles_sql(mark: str, ids: int, lock: bool) -> str:
    return (
        "SELECT id, kyc_tier, kyc_status, status_reason, risk_score FROM customers "
        f"WHERE id IN ({marks(mark, ids)}) ORDER BY id" + (" FOR UPDATE" if lock else "")
    )


@lru_cache(maxsize=256)
def _flagged_sql(mark: str, addresses: int) -> str:
    return (
        f"SELECT address, reason FROM flagged_addresses WHERE address IN ({marks(mark, addresses)})"
    )


_LIMIT_OVERRIDES_SQL = (
    "SELECT tier, operation, per_operation, daily, monthly FROM compliance_limits "
    "ORDER BY tier, operation"
)


def _money(value: Any) -> Decimal | None:
    """A Money column's value as the driver returns it (text on SQLite), read as the column
    reads it (``tables.Money``)."""
    if value is None:
        return None
    return money_read(value)


class SqlComplianceRepository(SqlComplianceUsage, SqlComplianceHolds):
    """The KYC registry: profiles and limits here; usage and totals from
    :class:`SqlComplianceUsage`, holds and reviews from :class:`SqlComplianceHolds`."""

    # --- profiles ---------------------------------------------------------------------------

    def profiles(self, customer_ids: Collection[str], *, lock: bool = False) -> dict[str, Profile]:
        found: dict[str, Profile] = {}
        for chunk in _chunks(customer_ids):
            sql = _profiles_sql(self._mark, len(chunk), lock and self._postgresql)
            for customer_id, tier, status, reason, risk_score in self._c.exec_driver_sql(
                sql, tuple(chunk)
            ):
                found[customer_id] = Profile(
                    customer_id, tier, check_status(status), reason, risk_score
                )
        return found

    def set_profile(
        self,
        customer_id: str,
        *,
        at: datetime,
        tier: int | None = None,
        status: KycStatus | None = None,
        status_reason: str | None = None,
        risk_score: int | None = None,
        risk_flags: Sequence[str] | None = None,
        sanctions_match: Mapping[str, object] | None = None,
    ) -> bool:
        """Change only the fields given (``None``: leave as is); False for an unknown customer.

        ``status_reason`` goes with ``status``: it is written whenever a status is (even as
        ``None``), so a new status never keeps the old status's reason; given alone, it only
        changes the reason. ``sanctions_match={}`` clears the stored
        screening hit (``None`` leaves it alone, as for every other field).
        """
        values: dict[str, object] = {"kyc_updated_at": format_timestamp(at)}
        if tier is not None:
            values["kyc_tier"] = tier
        if status is not None:
            values["kyc_status"] = check_status(status)
        if status is not None or status_reason is not None:
            values["status_reason"] = status_reason
        if risk_score is not None:
            values["risk_score"] = risk_score
        if risk_flags is not None:
            values["risk_flags"] = to_json(list(risk_flags))
        if sanctions_match is not None:
            values["sanctions_match"] = to_json(dict(sanctions_match)) if sanctions_match else None
        table = t.customers
        changed = self._c.execute(
            update(table).where(table.c.id == customer_id).values(**values)
        ).rowcount
        return bool(changed)

    def risk_record(self, customer_id: str) -> RiskRecord | None:
        """The stored risk flags and last sanctions hit (not part of :class:`Profile`)."""
        table = t.customers
        row = self._c.execute(
            select(
                table.c.risk_score,
                table.c.risk_flags,
                table.c.sanctions_match,
                table.c.kyc_updated_at,
            ).where(table.c.id == customer_id)
        ).first()
        if row is None:
            return None
        return RiskRecord(
            risk_score=row.risk_score,
            risk_flags=tuple(orjson.loads(row.risk_flags)) if row.risk_flags else (),
            sanctions_match=orjson.loads(row.sanctions_match) if row.sanctions_match else None,
            updated_at=optional_time(row.kyc_updated_at),
        )

    def customer_names(self) -> list[tuple[str, str]]:
        table = t.customers
        rows = self._c.execute(select(table.c.id, table.c.name).order_by(table.c.id))
        return [(row.id, row.name) for row in rows]

    def names_to_screen(self) -> list[tuple[str, CustomerName]]:
        customers, others = t.customers, t.customer_names
        primary = self._c.execute(
            select(customers.c.id, customers.c.name, customers.c.name_script).order_by(
                customers.c.id
            )
        )
        found: dict[str, list[CustomerName]] = {
            row.id: [CustomerName(row.name, row.name_script, primary=True)] for row in primary
        }
        rows = self._c.execute(
            select(others.c.customer_id, others.c.name, others.c.script).order_by(
                others.c.customer_id, others.c.position
            )
        )
        for row in rows:
            # A customer registered after the first read (PostgreSQL reads committed rows
            # afresh per statement) is screened next time.
            if row.customer_id in found:
                found[row.customer_id].append(CustomerName(row.name, row.script))
        return [(customer_id, name) for customer_id, names in found.items() for name in names]

    # --- limits -----------------------------------------------------------------------------

    def limit_overrides(self) -> dict[tuple[int, str], TierLimits]:
        # Read by every compliance session (once a transaction of live ingestion): SQL text run
        # by the driver, money converted as the Money column does.
        return {
            (tier, operation): TierLimits(_money(per_operation), _money(daily), _money(monthly))
            for tier, operation, per_operation, daily, monthly in self._c.exec_driver_sql(
                _LIMIT_OVERRIDES_SQL
            )
        }

    def set_limits(
        self, tier: int, operation: str, limits: TierLimits, actor: str, at: datetime
    ) -> None:
        values = {
            "per_operation": limits.per_operation,
            "daily": limits.daily,
            "monthly": limits.monthly,
            "updated_by": actor,
            "updated_at": format_timestamp(at),
        }
        statement = insert_for(self._c, t.compliance_limits).values(
            tier=tier, operation=operation, **values
        )
        self._c.execute(
            statement.on_conflict_do_update(
                index_elements=["tier", "operation"],
                set_={name: statement.excluded[name] for name in values},
            )
        )

    # --- flagged addresses ------------------------------------------------------------------

    def flagged(self, addresses: Collection[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in _chunks(addresses):
            rows = self._c.exec_driver_sql(_flagged_sql(self._mark, len(chunk)), tuple(chunk))
            found.update((address, reason) for address, reason in rows)
        return found

    def flag_address(self, address: str, reason: str, actor: str, at: datetime) -> bool:
        """False if already flagged: the first flag (its reason, officer and time) stays."""
        statement: ReturningInsert[Any] = (
            insert_for(self._c, t.flagged_addresses)
            .values(address=address, reason=reason, flagged_by=actor, flagged_at=ts(at))
            .on_conflict_do_nothing(index_elements=["address"])
            .returning(literal_column("1"))
        )
        return self._c.execute(statement).first() is not None

    def unflag_address(self, address: str) -> bool:
        table = t.flagged_addresses
        return bool(self._c.execute(delete(table).where(table.c.address == address)).rowcount)

    def flagged_addresses(self) -> list[tuple[str, str, str, datetime]]:
        table = t.flagged_addresses
        rows = self._c.execute(select(table).order_by(table.c.flagged_at, table.c.address))
        return [(row.address, row.reason, row.flagged_by, time_of(row.flagged_at)) for row in rows]
