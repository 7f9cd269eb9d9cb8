"""The cross-token exchange: quotes and swaps

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sluice.store.tables import Money

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exchange_quotes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=100), nullable=False),
        sa.Column("sell_admin", sa.String(length=512), nullable=False),
        sa.Column("sell_id", sa.String(length=200), nullable=False),
        sa.Column("buy_admin", sa.String(length=512), nullable=False),
        sa.Column("buy_id", sa.String(length=200), nullable=False),
        sa.Column("sell_amount", Money(), nullable=False),
        sa.Column("rate", sa.String(length=100), nullable=False),
        sa.Column("price_impact", sa.String(length=100), nullable=False),
        sa.Column("fee_rate", sa.String(length=100), nullable=False),
        sa.Column("fee_kind", sa.String(length=10), nullable=False),
        sa.Column("fee_amount", Money(), nullable=False),
        sa.Column("gross", Money(), nullable=False),
        sa.Column("received", Money(), nullable=False),
        sa.Column("minimum_received", Money(), nullable=False),
        sa.Column("oracle_pair", sa.String(length=65), nullable=False),
        sa.Column("oracle_source", sa.String(length=10), nullable=False),
        sa.Column("oracle_health", sa.String(length=10), nullable=False),
        sa.Column("oracle_round", sa.String(length=40), nullable=True),
        sa.Column("observed_at", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exchange_quotes")),
    )
    op.create_index(
        "ix_exchange_quotes_customer",
        "exchange_quotes",
        ["customer_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "exchange_swaps",
        sa.Column("quote_id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=100), nullable=False),
        sa.Column("sell_admin", sa.String(length=512), nullable=False),
        sa.Column("sell_id", sa.String(length=200), nullable=False),
        sa.Column("buy_admin", sa.String(length=512), nullable=False),
        sa.Column("buy_id", sa.String(length=200), nullable=False),
        sa.Column("sell_amount", Money(), nullable=False),
        sa.Column("rate", sa.String(length=100), nullable=False),
        sa.Column("price_impact", sa.String(length=100), nullable=False),
        sa.Column("fee_rate", sa.String(length=100), nullable=False),
        sa.Column("fee_kind", sa.String(length=10), nullable=False),
        sa.Column("fee_amount", Money(), nullable=False),
        sa.Column("gross", Money(), nullable=False),
        sa.Column("received", Money(), nullable=False),
        sa.Column("minimum_received", Money(), nullable=False),
        sa.Column("journal_transaction_id", sa.String(length=100), nullable=False),
        sa.Column("oracle_source", sa.String(length=10), nullable=False),
        sa.Column("oracle_health", sa.String(length=10), nullable=False),
        sa.Column("oracle_round", sa.String(length=40), nullable=True),
        sa.Column("warnings", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("executed_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("quote_id", name=op.f("pk_exchange_swaps")),
    )
    op.create_index(
        "ix_exchange_swaps_customer", "exchange_swaps", ["customer_id", "executed_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_exchange_swaps_customer", table_name="exchange_swaps")
    op.drop_table("exchange_swaps")
    op.drop_index("ix_exchange_quotes_customer", table_name="exchange_quotes")
    op.drop_table("exchange_quotes")
