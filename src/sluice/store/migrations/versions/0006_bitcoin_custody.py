"""Bitcoin custody: deposit addresses, the watcher's blocks, custody outputs, payouts, batches

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "btc_addresses",
        sa.Column("address", sa.String(length=120), nullable=False),
        sa.Column("script_hex", sa.String(length=140), nullable=False),
        sa.Column("branch", sa.Integer(), nullable=False),
        sa.Column("derivation_index", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("funded_at", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_btc_addresses")),
        sa.UniqueConstraint("script_hex", name=op.f("uq_btc_addresses_script_hex")),
    )
    op.create_index(
        op.f("ix_btc_addresses_customer_id"), "btc_addresses", ["customer_id"], unique=False
    )
    op.create_index(
        "ix_btc_addresses_derivation", "btc_addresses", ["branch", "derivation_index"], unique=True
    )
    op.create_table(
        "btc_batches",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("outpoints", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("txid", sa.String(length=64), nullable=False),
        sa.Column("raw_hex", sa.Text(), nullable=False),
        sa.Column("versions", sa.Text(), nullable=False),
        sa.Column("fee_sats", sa.BigInteger(), nullable=False),
        sa.Column("fee_rate_sat_vb", sa.String(length=24), nullable=False),
        sa.Column("vsize", sa.Integer(), nullable=False),
        sa.Column("change_vout", sa.Integer(), nullable=True),
        sa.Column("change_address", sa.String(length=120), nullable=True),
        sa.Column("change_sats", sa.BigInteger(), nullable=False),
        sa.Column("broadcast_height", sa.Integer(), nullable=True),
        sa.Column("bumps", sa.Integer(), nullable=False),
        sa.Column("mined_height", sa.Integer(), nullable=True),
        sa.Column("mined_block_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_btc_batches")),
    )
    op.create_index(op.f("ix_btc_batches_status"), "btc_batches", ["status"], unique=False)
    op.create_table(
        "btc_blocks",
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("previous_hash", sa.String(length=64), nullable=True),
        sa.Column("outputs", sa.Integer(), nullable=False),
        sa.Column("processed_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("height", name=op.f("pk_btc_blocks")),
        sa.UniqueConstraint("hash", name=op.f("uq_btc_blocks_hash")),
    )
    op.create_table(
        "btc_outputs",
        sa.Column("txid", sa.String(length=64), nullable=False),
        sa.Column("vout", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("address", sa.String(length=120), nullable=False),
        sa.Column("script_hex", sa.String(length=140), nullable=False),
        sa.Column("customer_id", sa.String(length=100), nullable=True),
        sa.Column("amount_sats", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("block_height", sa.Integer(), nullable=True),
        sa.Column("block_hash", sa.String(length=64), nullable=True),
        sa.Column("input_outpoints", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.String(length=32), nullable=False),
        sa.Column("confirmed_at", sa.String(length=32), nullable=True),
        sa.Column("credited_at", sa.String(length=32), nullable=True),
        sa.Column("reserved_by", sa.String(length=100), nullable=True),
        sa.Column("spent_txid", sa.String(length=64), nullable=True),
        sa.Column("spent_height", sa.Integer(), nullable=True),
        sa.Column("spent_block_hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("txid", "vout", name=op.f("pk_btc_outputs")),
    )
    op.create_index("ix_btc_outputs_block", "btc_outputs", ["block_height"], unique=False)
    op.create_index(
        op.f("ix_btc_outputs_customer_id"), "btc_outputs", ["customer_id"], unique=False
    )
    op.create_index(
        op.f("ix_btc_outputs_reserved_by"), "btc_outputs", ["reserved_by"], unique=False
    )
    op.create_index("ix_btc_outputs_spent_height", "btc_outputs", ["spent_height"], unique=False)
    op.create_index(op.f("ix_btc_outputs_status"), "btc_outputs", ["status"], unique=False)
    op.create_table(
        "btc_payouts",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=120), nullable=False),
        sa.Column("script_hex", sa.String(length=140), nullable=False),
        sa.Column("amount_sats", sa.BigInteger(), nullable=False),
        sa.Column("fee_sats", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("batch_id", sa.String(length=100), nullable=True),
        sa.Column("vout", sa.Integer(), nullable=True),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("requested_at", sa.String(length=32), nullable=False),
        sa.Column("completed_at", sa.String(length=32), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_btc_payouts")),
    )
    op.create_index(op.f("ix_btc_payouts_batch_id"), "btc_payouts", ["batch_id"], unique=False)
    op.create_index(op.f("ix_btc_payouts_status"), "btc_payouts", ["status"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_btc_payouts_status"), table_name="btc_payouts")
    op.drop_index(op.f("ix_btc_payouts_batch_id"), table_name="btc_payouts")
    op.drop_table("btc_payouts")
    op.drop_index(op.f("ix_btc_outputs_status"), table_name="btc_outputs")
    op.drop_index("ix_btc_outputs_spent_height", table_name="btc_outputs")
    op.drop_index(op.f("ix_btc_outputs_reserved_by"), table_name="btc_outputs")
    op.drop_index(op.f("ix_btc_outputs_customer_id"), table_name="btc_outputs")
    op.drop_index("ix_btc_outputs_block", table_name="btc_outputs")
    op.drop_table("btc_outputs")
    op.drop_table("btc_blocks")
    op.drop_index(op.f("ix_btc_batches_status"), table_name="btc_batches")
    op.drop_table("btc_batches")
    op.drop_index("ix_btc_addresses_derivation", table_name="btc_addresses")
    op.drop_index(op.f("ix_btc_addresses_customer_id"), table_name="btc_addresses")
    op.drop_table("btc_addresses")
