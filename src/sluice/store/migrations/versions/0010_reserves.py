"""Reserves: reserve readings, reconciliation runs and discrepancies, proof-of-reserves
snapshots, roots and leaves

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TABLES = (
    "reserve_readings",
    "reconciliation_runs",
    "reconciliation_discrepancies",
    "por_snapshots",
    "por_roots",
    "por_leaves",
)


def upgrade() -> None:
    op.create_table(
        "por_leaves",
        sa.Column("snapshot_id", sa.String(length=64), nullable=False),
        sa.Column("instrument", sa.String(length=700), nullable=False),
        sa.Column("customer_id", sa.String(length=100), nullable=False),
        sa.Column("units", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint(
            "snapshot_id", "instrument", "customer_id", name=op.f("pk_por_leaves")
        ),
    )
    op.create_table(
        "por_roots",
        sa.Column("snapshot_id", sa.String(length=64), nullable=False),
        sa.Column("instrument", sa.String(length=700), nullable=False),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("total_units", sa.String(length=40), nullable=False),
        sa.Column("total", sa.String(length=60), nullable=False),
        sa.Column("leaf_count", sa.BigInteger(), nullable=False),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("taken_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("snapshot_id", "instrument", name=op.f("pk_por_roots")),
    )
    op.create_table(
        "por_snapshots",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("instruments", sa.Text(), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("reserves", sa.Text(), nullable=True),
        sa.Column("taken_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_por_snapshots")),
    )
    op.create_index(op.f("ix_por_snapshots_taken_at"), "por_snapshots", ["taken_at"], unique=False)
    op.create_table(
        "reconciliation_discrepancies",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=10), nullable=False),
        sa.Column("instrument", sa.String(length=700), nullable=False),
        sa.Column("severity", sa.String(length=10), nullable=False),
        sa.Column("expected_units", sa.String(length=40), nullable=False),
        sa.Column("actual_units", sa.String(length=40), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq", name=op.f("pk_reconciliation_discrepancies")),
    )
    op.create_index(
        "ix_reconciliation_discrepancies_at",
        "reconciliation_discrepancies",
        ["severity", "at"],
        unique=False,
    )
    op.create_table(
        "reconciliation_runs",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=14), nullable=False),
        sa.Column("worst", sa.String(length=10), nullable=True),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("actions", sa.Text(), nullable=False),
        sa.Column("started_at", sa.String(length=32), nullable=False),
        sa.Column("finished_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_runs")),
    )
    op.create_index(
        op.f("ix_reconciliation_runs_finished_at"),
        "reconciliation_runs",
        ["finished_at"],
        unique=False,
    )
    op.create_table(
        "reserve_readings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("instrument", sa.String(length=700), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("supply_units", sa.String(length=40), nullable=False),
        sa.Column("reserves_units", sa.String(length=40), nullable=False),
        sa.Column("ratio_bps", sa.BigInteger(), nullable=True),
        sa.Column("read_at", sa.Text(), nullable=False),
        sa.Column("figures", sa.Text(), nullable=False),
        sa.Column("taken_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reserve_readings")),
    )
    op.create_index(
        "ix_reserve_readings_instrument",
        "reserve_readings",
        ["instrument", "taken_at"],
        unique=False,
    )


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)
