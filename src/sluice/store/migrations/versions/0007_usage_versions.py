"""compliance usage versions: a per-customer counter moved by every change of usage

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

Ingestion keeps each customer's rolling-window usage in memory across batches and reads only what
it has not seen; the version tells it whether another writer (a withdrawal request, an officer's
release, a refund) changed the customer's usage since. Customers without a row are at version 0,
so the usage recorded so far needs nothing here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compliance_usage_versions",
        sa.Column("customer_id", sa.String(length=100), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_compliance_usage_versions")),
    )


def downgrade() -> None:
    op.drop_table("compliance_usage_versions")
