"""Events and monitoring: the transactional outbox, forced circuit breakers, and the alert
columns of alert rules and notification

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _alert_columns() -> tuple[sa.Column, ...]:  # type: ignore[type-arg]
    """Made afresh for each use: a column belongs to one table once added."""
    return (
        sa.Column("rule", sa.String(length=100), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=200), nullable=True),
        sa.Column("resolved_at", sa.String(length=32), nullable=True),
        sa.Column("last_seen_at", sa.String(length=32), nullable=True),
        sa.Column("occurrences", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("notified_at", sa.String(length=32), nullable=True),
        sa.Column("notify_attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )


# What the evaluator and the notifier read every round, found without the resolved history:
# a rule's unresolved alerts (and the open / acknowledged counts), the alerts not notified yet.
ALERT_INDEXES = (
    ("ix_alerts_unresolved", ("rule", "severity"), "resolved_at IS NULL"),
    ("ix_alerts_to_notify", ("severity", "created_at"), "notified_at IS NULL"),
)


def upgrade() -> None:
    op.create_table(
        "event_outbox",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("type", sa.String(length=60), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("aggregate_type", sa.String(length=40), nullable=False),
        sa.Column("aggregate_id", sa.String(length=700), nullable=False),
        sa.Column("ordering_key", sa.String(length=40), nullable=False),
        sa.Column("correlation_id", sa.String(length=200), nullable=True),
        sa.Column("occurred_at", sa.String(length=32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("published_at", sa.String(length=32), nullable=True),
        sa.Column("stream_seq", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_event_outbox")),
        sa.UniqueConstraint("event_id", name=op.f("uq_event_outbox_event_id")),
    )
    op.create_index(
        "ix_event_outbox_pending",
        "event_outbox",
        ["ordering_key", "seq"],
        unique=False,
        postgresql_where=sa.text("published_at IS NULL"),
        sqlite_where=sa.text("published_at IS NULL"),
    )
    op.create_table(
        "circuit_breakers",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("forced", sa.String(length=8), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_circuit_breakers")),
    )
    with op.batch_alter_table("alerts") as batch:
        for column in _alert_columns():
            batch.add_column(column)
    # The alerts raised before: they were delivered (to the log) when raised, so they are not
    # notified again; a product alert acknowledged before is resolved, as acknowledging one
    # resolves it from now on. Without this the notifier would send the whole history.
    op.execute("UPDATE alerts SET notified_at = created_at WHERE notified_at IS NULL")
    op.execute(
        "UPDATE alerts SET resolved_at = acknowledged_at"
        " WHERE rule IS NULL AND acknowledged_at IS NOT NULL AND resolved_at IS NULL"
    )
    for name, columns, where in ALERT_INDEXES:
        op.create_index(
            name,
            "alerts",
            list(columns),
            unique=False,
            postgresql_where=sa.text(where),
            sqlite_where=sa.text(where),
        )


def downgrade() -> None:
    for name, _columns, _where in reversed(ALERT_INDEXES):
        op.drop_index(name, table_name="alerts")
    with op.batch_alter_table("alerts") as batch:
        for column in reversed(_alert_columns()):
            batch.drop_column(column.name)
    op.drop_table("circuit_breakers")
    op.drop_index("ix_event_outbox_pending", table_name="event_outbox")
    op.drop_table("event_outbox")
