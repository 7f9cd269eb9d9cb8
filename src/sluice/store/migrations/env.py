"""Alembic environment: runs on the connection handed over by ``database.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

# Imported for their tables, which they register on the metadata.
from sluice.store import (  # noqa: F401
    bitcoin_tables,
    events_tables,
    exchange_tables,
    issuance_tables,
    oracle_tables,
    reserves_tables,
    web_tables,
)
from sluice.store.tables import metadata

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through sluice.store.database.migrate(engine)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
