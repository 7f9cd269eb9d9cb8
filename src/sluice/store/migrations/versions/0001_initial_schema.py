"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21 04:43:05.091984
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sluice.store.tables import Money

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(length=1200), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("instrument_admin", sa.String(length=512), nullable=False),
        sa.Column("instrument_id", sa.String(length=200), nullable=False),
        sa.Column("side", sa.String(length=10), nullable=False),
        sa.Column("balance", Money(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(length=700), nullable=False),
        sa.Column("severity", sa.String(length=10), nullable=False),
        sa.Column("kind", sa.String(length=60), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("update_id", sa.String(length=256), nullable=True),
        sa.Column("details", sa.Text(), nullable=True),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.Column("acknowledged_at", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alerts_kind"), ["kind"], unique=False)

    op.create_table(
        "customers",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
    )
    op.create_table(
        "history_entries",
        sa.Column("update_id", sa.String(length=256), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("connection", sa.String(length=600), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("record_time", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=True),
        sa.Column("sender", sa.String(length=512), nullable=True),
        sa.Column("receiver", sa.String(length=512), nullable=True),
        sa.Column("instrument_admin", sa.String(length=512), nullable=True),
        sa.Column("instrument_id", sa.String(length=200), nullable=True),
        sa.Column("amount", Money(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("correlation_id", sa.String(length=512), nullable=True),
        sa.Column("holdings_created", sa.Text(), nullable=False),
        sa.Column("holdings_archived", sa.Text(), nullable=False),
        sa.Column("disposition", sa.String(length=20), nullable=False),
        sa.Column("customer_id", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("update_id", "node_id", name=op.f("pk_history_entries")),
    )
    with op.batch_alter_table("history_entries", schema=None) as batch_op:
        batch_op.create_index("ix_history_entries_offset", ["connection", "offset"], unique=False)

    op.create_table(
        "holdings",
        sa.Column("contract_id", sa.String(length=512), nullable=False),
        sa.Column("owner", sa.String(length=512), nullable=False),
        sa.Column("instrument_admin", sa.String(length=512), nullable=False),
        sa.Column("instrument_id", sa.String(length=200), nullable=False),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("lock_holders", sa.Text(), nullable=True),
        sa.Column("lock_expires_at", sa.String(length=32), nullable=True),
        sa.Column("lock_context", sa.Text(), nullable=True),
        sa.Column("created_update_id", sa.String(length=256), nullable=False),
        sa.Column("created_offset", sa.BigInteger(), nullable=False),
        sa.Column("archived_update_id", sa.String(length=256), nullable=True),
        sa.Column("archived_offset", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("contract_id", name=op.f("pk_holdings")),
    )
    with op.batch_alter_table("holdings", schema=None) as batch_op:
        batch_op.create_index(
            "ix_holdings_active",
            ["owner", "instrument_admin", "instrument_id", "archived_update_id"],
            unique=False,
        )

    op.create_table(
        "ingested_updates",
        sa.Column("update_id", sa.String(length=256), nullable=False),
        sa.Column("connection", sa.String(length=600), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("record_time", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("update_id", name=op.f("pk_ingested_updates")),
    )
    op.create_table(
        "ingestion_failures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("connection", sa.String(length=600), nullable=False),
        sa.Column("update_id", sa.String(length=256), nullable=True),
        sa.Column("offset", sa.BigInteger(), nullable=True),
        sa.Column("problem", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=True),
        sa.Column("failed_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingestion_failures")),
    )
    op.create_table(
        "instruments",
        sa.Column("admin", sa.String(length=512), nullable=False),
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("registry_url", sa.String(length=1000), nullable=True),
        sa.Column("trusted", sa.Boolean(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("transfer_kinds", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("admin", "id", name=op.f("pk_instruments")),
    )
    op.create_table(
        "journal_transactions",
        sa.Column("id", sa.String(length=700), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("update_id", sa.String(length=256), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal_transactions")),
    )
    with op.batch_alter_table("journal_transactions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_journal_transactions_update_id"), ["update_id"], unique=False
        )

    op.create_table(
        "ledger_cursors",
        sa.Column("connection", sa.String(length=600), nullable=False),
        sa.Column("party", sa.String(length=512), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("update_id", sa.String(length=256), nullable=True),
        sa.Column("record_time", sa.String(length=32), nullable=True),
        sa.Column("synchronizer_id", sa.String(length=512), nullable=True),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("connection", name=op.f("pk_ledger_cursors")),
    )
    op.create_table(
        "quarantined_updates",
        sa.Column("update_id", sa.String(length=256), nullable=False),
        sa.Column("connection", sa.String(length=600), nullable=True),
        sa.Column("offset", sa.BigInteger(), nullable=True),
        sa.Column("problem", sa.Text(), nullable=True),
        sa.Column("raw", sa.Text(), nullable=True),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("requested_at", sa.String(length=32), nullable=False),
        sa.Column("skipped_at", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("update_id", name=op.f("pk_quarantined_updates")),
    )
    op.create_table(
        "transfer_instructions",
        sa.Column("contract_id", sa.String(length=512), nullable=False),
        sa.Column("correlation_id", sa.String(length=512), nullable=False),
        sa.Column("original_instruction_cid", sa.String(length=512), nullable=True),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("sender", sa.String(length=512), nullable=False),
        sa.Column("receiver", sa.String(length=512), nullable=False),
        sa.Column("instrument_admin", sa.String(length=512), nullable=False),
        sa.Column("instrument_id", sa.String(length=200), nullable=False),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("requested_at", sa.String(length=32), nullable=False),
        sa.Column("execute_before", sa.String(length=32), nullable=False),
        sa.Column("input_holding_cids", sa.Text(), nullable=False),
        sa.Column("transfer_meta", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=40), nullable=False),
        sa.Column("created_update_id", sa.String(length=256), nullable=False),
        sa.Column("closed_update_id", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("contract_id", name=op.f("pk_transfer_instructions")),
    )
    with op.batch_alter_table("transfer_instructions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_transfer_instructions_correlation_id"), ["correlation_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_transfer_instructions_status"), ["status"], unique=False
        )

    op.create_table(
        "deposit_accounts",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("customer_id", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"],
            ["customers.id"],
            name=op.f("fk_deposit_accounts_customer_id_customers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deposit_accounts")),
    )
    op.create_table(
        "journal_postings",
        sa.Column("transaction_id", sa.String(length=700), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.String(length=1200), nullable=False),
        sa.Column("amount", Money(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_journal_postings_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["journal_transactions.id"],
            name=op.f("fk_journal_postings_transaction_id_journal_transactions"),
        ),
        sa.PrimaryKeyConstraint("transaction_id", "seq", name=op.f("pk_journal_postings")),
    )
    with op.batch_alter_table("journal_postings", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_journal_postings_account_id"), ["account_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("journal_postings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_journal_postings_account_id"))

    op.drop_table("journal_postings")
    op.drop_table("deposit_accounts")
    with op.batch_alter_table("transfer_instructions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transfer_instructions_status"))
        batch_op.drop_index(batch_op.f("ix_transfer_instructions_correlation_id"))

    op.drop_table("transfer_instructions")
    op.drop_table("quarantined_updates")
    op.drop_table("ledger_cursors")
    with op.batch_alter_table("journal_transactions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_journal_transactions_update_id"))

    op.drop_table("journal_transactions")
    op.drop_table("instruments")
    op.drop_table("ingestion_failures")
    op.drop_table("ingested_updates")
    with op.batch_alter_table("holdings", schema=None) as batch_op:
        batch_op.drop_index("ix_holdings_active")

    op.drop_table("holdings")
    with op.batch_alter_table("history_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_history_entries_offset")

    op.drop_table("history_entries")
    op.drop_table("customers")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alerts_kind"))

    op.drop_table("alerts")
    op.drop_table("accounts")
