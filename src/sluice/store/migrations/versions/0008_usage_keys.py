"""compliance usage keys: the usage row keyed by a digest of its operation id

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

A usage row was keyed by its operation id (~160 characters) and indexed by its counterparty
(~80): both indexes were larger than the rows, and every batch of new rows rewrote most of their
pages. The key becomes a 16-byte digest of the operation id (``operation_key``) and the
counterparty index holds a signed 64-bit digest of the party (``counterparty_key``); the ids
themselves stay in the row. The table is rebuilt with its rows, their digests computed here (the
same functions as ``store.compliance_usage``, copied so this revision never changes).
"""

from __future__ import annotations

from hashlib import blake2b

import sqlalchemy as sa
from alembic import op

from sluice.store.tables import Money

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OLD = "compliance_usage_0007"  # the table as it was, while its rows are copied
CHUNK = 1000


def operation_key(operation_id: str) -> bytes:
    return blake2b(operation_id.encode(), digest_size=16).digest()


def counterparty_key(counterparty: str | None) -> int | None:
    if counterparty is None:
        return None
    digest = blake2b(counterparty.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def upgrade() -> None:
    _set_aside()
    op.create_table(
        "compliance_usage",
        sa.Column("operation_key", sa.LargeBinary(length=16), nullable=False),
        sa.Column("operation_id", sa.String(length=300), nullable=False),
        sa.Column("customer_id", sa.String(length=100), nullable=False),
        sa.Column("operation", sa.String(length=20), nullable=False),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("counterparty", sa.String(length=512), nullable=True),
        sa.Column("counterparty_key", sa.BigInteger(), nullable=True),
        sa.Column("occurred_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("operation_key", name=op.f("pk_compliance_usage")),
    )
    _copy(with_keys=True)
    op.drop_table(OLD)
    op.create_index(
        "ix_compliance_usage_customer", "compliance_usage", ["customer_id", "occurred_at"]
    )
    op.create_index(
        "ix_compliance_usage_counterparty",
        "compliance_usage",
        ["customer_id", "counterparty_key", "occurred_at"],
    )


def downgrade() -> None:
    _set_aside()
    op.create_table(
        "compliance_usage",
        sa.Column("operation_id", sa.String(length=300), nullable=False),
        sa.Column("customer_id", sa.String(length=100), nullable=False),
        sa.Column("operation", sa.String(length=20), nullable=False),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("counterparty", sa.String(length=512), nullable=True),
        sa.Column("occurred_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("operation_id", name=op.f("pk_compliance_usage")),
    )
    _copy(with_keys=False)
    op.drop_table(OLD)
    op.create_index(
        "ix_compliance_usage_customer", "compliance_usage", ["customer_id", "occurred_at"]
    )
    op.create_index(
        "ix_compliance_usage_counterparty",
        "compliance_usage",
        ["customer_id", "counterparty", "occurred_at"],
    )


def _set_aside() -> None:
    """Rename the table out of the way, its indexes and primary key dropped (on PostgreSQL
    their names are the schema's, and the new table takes them)."""
    op.drop_index("ix_compliance_usage_counterparty", table_name="compliance_usage")
    op.drop_index("ix_compliance_usage_customer", table_name="compliance_usage")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("pk_compliance_usage", "compliance_usage", type_="primary")
    op.rename_table("compliance_usage", OLD)


def _copy(*, with_keys: bool) -> None:
    """Every row of the old table into the new one, ``CHUNK`` rows a statement in key order
    (memory stays bounded whatever the table holds)."""
    connection = op.get_bind()
    columns = ["operation_id", "customer_id", "operation", "amount", "counterparty", "occurred_at"]
    old = sa.table(OLD, *(sa.column(name) for name in columns))
    new_columns = columns + (["operation_key", "counterparty_key"] if with_keys else [])
    new = sa.table("compliance_usage", *(sa.column(name) for name in new_columns))
    after: str | None = None
    while True:
        query = sa.select(*old.c).order_by(old.c.operation_id).limit(CHUNK)
        if after is not None:
            query = query.where(old.c.operation_id > after)
        rows = [dict(row._mapping) for row in connection.execute(query)]
        if not rows:
            return
        if with_keys:
            for row in rows:
                row["operation_key"] = operation_key(row["operation_id"])
                row["counterparty_key"] = counterparty_key(row["counterparty"])
        connection.execute(sa.insert(new), rows)
        after = rows[-1]["operation_id"]
