"""What the migrations create, compared with the tables sluice declares: the differences alembic's
autogenerate finds on a freshly migrated database, those whose description names ``word``."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sluice.store.database import open_database
from sluice.store.tables import metadata


def schema_differences(database_url: str, word: str) -> list[Any]:
    engine = open_database(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return [
                difference
                for difference in compare_metadata(context, metadata)
                if word in repr(difference)
            ]
    finally:
        engine.dispose()
