"""The Integration DB's events and monitoring tables: the transactional outbox, and the circuit
breakers an operator forced open or closed."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text, text

from sluice.store.tables import TIMESTAMP, metadata

SEQ = BigInteger().with_variant(Integer, "sqlite")

event_outbox = Table(
    "event_outbox",
    metadata,
    # Insertion order within an ordering key; never a cursor (taken before commit).
    Column("seq", SEQ, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("type", String(60), nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("aggregate_type", String(40), nullable=False),
    Column("aggregate_id", String(700), nullable=False),
    # One relay at a time publishes a key's rows, in seq order: the aggregate type.
    Column("ordering_key", String(40), nullable=False),
    Column("correlation_id", String(200), nullable=True),
    Column("occurred_at", TIMESTAMP, nullable=False),
    Column("payload", Text, nullable=False),  # JSON
    Column("published_at", TIMESTAMP, nullable=True),
    Column("stream_seq", BigInteger, nullable=True),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", Text, nullable=True),
    # What is left to publish, found without reading what was published.
    Index(
        "ix_event_outbox_pending",
        "ordering_key",
        "seq",
        postgresql_where=text("published_at IS NULL"),
        sqlite_where=text("published_at IS NULL"),
    ),
)

circuit_breakers = Table(
    "circuit_breakers",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("forced", String(8), nullable=True),  # open | closed | NULL (automatic)
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=True),
    Column("updated_at", TIMESTAMP, nullable=False),
)
