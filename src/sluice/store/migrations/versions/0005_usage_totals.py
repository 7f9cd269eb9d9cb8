"""compliance usage totals: usage summed per customer, operation and hour or day

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

Decisions sum a customer's rolling-window usage from these totals (and the individual usage rows
only at the windows' edges), so their cost does not grow with the customer's history. The usage
recorded so far is summed into the new table here, in the migration's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa
from alembic import op

from sluice.store.tables import Money

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BUCKET_LENGTHS_S = (3600, 86400)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Key = tuple[str, int, str, str]  # customer, length, start (canonical text), operation


def upgrade() -> None:
    totals = op.create_table(
        "compliance_usage_totals",
        sa.Column("customer_id", sa.String(length=100), nullable=False),
        sa.Column("length_s", sa.Integer(), nullable=False),
        sa.Column("starts_at", sa.String(length=32), nullable=False),
        sa.Column("operation", sa.String(length=20), nullable=False),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "customer_id",
            "length_s",
            "starts_at",
            "operation",
            name=op.f("pk_compliance_usage_totals"),
        ),
    )
    assert totals is not None
    with op.batch_alter_table("compliance_usage", schema=None) as batch_op:
        batch_op.create_index(
            "ix_compliance_usage_counterparty",
            ["customer_id", "counterparty", "occurred_at"],
            unique=False,
        )
    _sum_existing_usage(op.get_bind(), totals)


def downgrade() -> None:
    with op.batch_alter_table("compliance_usage", schema=None) as batch_op:
        batch_op.drop_index("ix_compliance_usage_counterparty")
    op.drop_table("compliance_usage_totals")


def _sum_existing_usage(connection: sa.Connection, totals: sa.Table) -> None:
    """Sum every usage row into its hour and day, one customer at a time (memory stays bounded
    by one customer's rows); amounts are added as exact decimals in Python."""
    usage = sa.table(
        "compliance_usage",
        sa.column("customer_id", sa.String()),
        sa.column("operation", sa.String()),
        sa.column("amount", Money()),
        sa.column("occurred_at", sa.String()),
    )
    customers = connection.execute(
        sa.select(usage.c.customer_id).distinct().order_by(usage.c.customer_id)
    ).scalars()
    for customer_id in list(customers):
        rows = connection.execute(
            sa.select(usage.c.operation, usage.c.amount, usage.c.occurred_at).where(
                usage.c.customer_id == customer_id
            )
        )
        sums: dict[Key, tuple[Decimal, int]] = {}
        for operation, amount, occurred_at in rows:
            for length_s in BUCKET_LENGTHS_S:
                key = (customer_id, length_s, _bucket_start(occurred_at, length_s), operation)
                total, count = sums.get(key, (Decimal(0), 0))
                sums[key] = (total + amount, count + 1)
        _write(connection, totals, sums)


def _bucket_start(occurred_at: str, length_s: int) -> str:
    at = datetime.fromisoformat(occurred_at)
    elapsed = at - _EPOCH
    seconds = elapsed.days * 86400 + elapsed.seconds
    start = _EPOCH + timedelta(seconds=seconds - seconds % length_s)
    return start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write(
    connection: sa.Connection, totals: sa.Table, sums: dict[Key, tuple[Decimal, int]]
) -> None:
    rows: Iterable[dict[str, object]] = [
        {
            "customer_id": customer_id,
            "length_s": length_s,
            "starts_at": starts_at,
            "operation": operation,
            "amount": amount,
            "count": count,
        }
        for (customer_id, length_s, starts_at, operation), (amount, count) in sums.items()
    ]
    if sums:
        connection.execute(totals.insert(), list(rows))
