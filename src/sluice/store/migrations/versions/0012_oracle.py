"""The price oracle: each pair's health, each source's last accepted price, and the rejections

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "oracle_feeds",
        sa.Column("pair", sa.String(length=65), nullable=False),
        sa.Column("health", sa.String(length=10), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=True),
        sa.Column("on_fallback", sa.Boolean(), nullable=False),
        sa.Column("price", sa.String(length=100), nullable=True),
        sa.Column("observed_at", sa.String(length=32), nullable=True),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("pair", name=op.f("pk_oracle_feeds")),
    )
    op.create_table(
        "oracle_sources",
        sa.Column("pair", sa.String(length=65), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("price", sa.String(length=100), nullable=False),
        sa.Column("round_id", sa.String(length=40), nullable=True),
        sa.Column("observed_at", sa.String(length=32), nullable=False),
        sa.Column("accepted_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("pair", "source", name=op.f("pk_oracle_sources")),
    )
    op.create_table(
        "oracle_rejections",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("pair", sa.String(length=65), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=True),
        sa.Column("rule", sa.String(length=20), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("observed", sa.String(length=200), nullable=True),
        sa.Column("at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oracle_rejections")),
    )
    op.create_index("ix_oracle_rejections_pair", "oracle_rejections", ["pair", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_oracle_rejections_pair", table_name="oracle_rejections")
    op.drop_table("oracle_rejections")
    op.drop_table("oracle_sources")
    op.drop_table("oracle_feeds")
