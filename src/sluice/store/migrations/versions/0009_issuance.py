"""iSTSi issuance: the router's operations and steps, mints, burns, the guard's row, decisions on
held transfers, customers' parties, contract addresses

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "issuance_operations",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("correlation_id", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("customer_id", sa.String(length=100), nullable=False),
        sa.Column("amount_sats", sa.BigInteger(), nullable=False),
        sa.Column("step", sa.String(length=40), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.Column("completed_at", sa.String(length=32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_issuance_operations")),
    )
    op.create_index(
        op.f("ix_issuance_operations_customer_id"),
        "issuance_operations",
        ["customer_id"],
        unique=False,
    )
    op.create_index(
        "ix_issuance_operations_due", "issuance_operations", ["status", "next_attempt_at"]
    )
    op.create_index("ix_issuance_operations_type", "issuance_operations", ["type", "created_at"])
    op.create_table(
        "issuance_steps",
        sa.Column("operation_id", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.Column("outcome", sa.String(length=8), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("operation_id", "seq", name=op.f("pk_issuance_steps")),
    )
    for table in ("issuance_mints", "issuance_burns"):
        columns = [
            sa.Column("id", sa.String(length=220), nullable=False),
            sa.Column("operation_id", sa.String(length=200), nullable=False),
            sa.Column("customer_id", sa.String(length=100), nullable=False),
            sa.Column("owner", sa.String(length=512), nullable=False),
            sa.Column("amount_sats", sa.BigInteger(), nullable=False),
            sa.Column("reason", sa.String(length=240), nullable=False),
            sa.Column("status", sa.String(length=10), nullable=False),
            sa.Column("update_id", sa.String(length=200), nullable=True),
        ]
        if table == "issuance_mints":
            columns.append(sa.Column("credited", sa.Boolean(), nullable=False))
        columns.append(sa.Column("created_at", sa.String(length=32), nullable=False))
        op.create_table(
            table,
            *columns,
            sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{table}")),
            sa.UniqueConstraint("reason", name=op.f(f"uq_{table}_reason")),
        )
        op.create_index(op.f(f"ix_{table}_operation_id"), table, ["operation_id"], unique=False)
    state = op.create_table(
        "issuance_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guard_seq", sa.BigInteger(), nullable=False),
        sa.Column("minting_halted", sa.Boolean(), nullable=False),
        sa.Column("halted_reason", sa.Text(), nullable=True),
        sa.Column("halted_at", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_issuance_state")),
    )
    op.bulk_insert(state, [{"id": 1, "guard_seq": 0, "minting_halted": False}])
    op.create_table(
        "issuance_transfer_decisions",
        sa.Column("instruction_cid", sa.String(length=512), nullable=False),
        sa.Column("sender", sa.String(length=512), nullable=False),
        sa.Column("receiver", sa.String(length=512), nullable=False),
        sa.Column("amount_sats", sa.BigInteger(), nullable=False),
        sa.Column("approve", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("decided_at", sa.String(length=32), nullable=False),
        sa.Column("update_id", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("instruction_cid", name=op.f("pk_issuance_transfer_decisions")),
    )
    op.create_table(
        "customer_parties",
        sa.Column("party", sa.String(length=512), nullable=False),
        sa.Column("customer_id", sa.String(length=100), nullable=False),
        sa.Column("mint_to_party", sa.Boolean(), nullable=False),
        sa.Column("registered_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("party", name=op.f("pk_customer_parties")),
        sa.UniqueConstraint("customer_id", name=op.f("uq_customer_parties_customer_id")),
    )
    op.create_table(
        "issuance_contracts",
        sa.Column("approval_id", sa.String(length=120), nullable=False),
        sa.Column("addresses", sa.Text(), nullable=False),
        sa.Column("effective_at", sa.String(length=32), nullable=False),
        sa.Column("recorded_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("approval_id", name=op.f("pk_issuance_contracts")),
    )
    op.create_index(
        op.f("ix_issuance_contracts_effective_at"),
        "issuance_contracts",
        ["effective_at"],
        unique=False,
    )


def downgrade() -> None:
    for table in (
        "issuance_contracts",
        "customer_parties",
        "issuance_transfer_decisions",
        "issuance_state",
        "issuance_burns",
        "issuance_mints",
        "issuance_steps",
        "issuance_operations",
    ):
        op.drop_table(table)
