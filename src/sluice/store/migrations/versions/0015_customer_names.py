"""A customer's other names (other scripts, maiden names, aliases), each with its script, and
the script of the primary name

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: a customer registered before scripts were recorded (told when the name is read).
    op.add_column("customers", sa.Column("name_script", sa.String(length=40), nullable=True))
    op.create_table(
        "customer_names",
        sa.Column("customer_id", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("script", sa.String(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("added_by", sa.String(length=200), nullable=False),
        sa.Column("added_at", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_customer_names_customer_id_customers"),
        ),
        sa.PrimaryKeyConstraint("customer_id", "name", name=op.f("pk_customer_names")),
    )


def downgrade() -> None:
    op.drop_table("customer_names")
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("name_script")
