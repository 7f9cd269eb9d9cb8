"""Opening the Integration DB: engines for PostgreSQL and SQLite, migrations to the newest schema.

Nothing connects at import time; :func:`open_database` is called by ``bootstrap``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url

from sluice.store import tables

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")


def create_database_engine(url: str) -> Engine:
    """An engine for ``url`` (``sqlite:///path``, ``sqlite://`` or ``postgresql+psycopg://…``)."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        # Let SQLAlchemy's BEGIN reach SQLite itself (pysqlite otherwise defers it).
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=10)


SQLITE_PAGE_SIZE = 8192
WAL_CHECKPOINT_BYTES = 40 * 1024 * 1024


def _sqlite_pragmas(dbapi_connection: Any, _record: object) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun explicitly (above)
    cursor = dbapi_connection.cursor()
    # 8 KiB pages for a new database (SQLite's default is 4 KiB; an existing file keeps the size
    # it was made with, so this is a no-op there): an ingestion batch inserts into indexes on
    # random ids, dirtying one page per row in each, and at 8 KiB the same rows sit in half the
    # pages with shallower trees, so a batch's commit writes fewer WAL frames in fewer calls. Not
    # larger: a transaction of one update still dirties a page in each of some forty tables and
    # indexes, and every dirty page is written whole (16 KiB pages doubled the bytes, and the
    # system time, of live ingestion for no gain in batches).
    cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed transaction survives a power cut, not only a process crash.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # 64 MiB of page cache: the indexes on random ids (contract ids, update ids) outgrow the
    # default 2 MiB as soon as a few tens of thousands of updates are in.
    cursor.execute("PRAGMA cache_size=-65536")
    # Checkpoint once the WAL holds about 40 MiB of pages, not SQLite's default 1,000 pages: an
    # ingestion batch dirties more than 1,000 pages (its rows and the indexes on random ids), so
    # with the default every batch's commit copies all it wrote into the database at once; less
    # often, a page rewritten by several batches is copied once, and the checkpoint's reads,
    # writes and syncs come fewer. Durability is the WAL's, synced at every commit (FULL above);
    # when to checkpoint changes only when pages move from the WAL into the database file. The
    # count is in pages of the file's own size (4 KiB in a database made before 8 KiB pages).
    page_size = cursor.execute("PRAGMA page_size").fetchone()[0]
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_BYTES // page_size}")
    cursor.close()


# The newest migration's revision (``migrations/versions/``; a test checks it is alembic's head).
# A database already there is not handed to alembic at all: every command opens the database,
# and loading the migration scripts to learn there is nothing to do costs a command's start more
# than the rest of the work many of them do.
HEAD_REVISION = "0015"


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def schema_revision(engine: Engine) -> str | None:
    """The revision the database's schema is at (``None``: not managed by the migrations yet)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (a no-op when it is already there)."""
    if schema_revision(engine) == HEAD_REVISION:
        return
    from alembic import command

    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(url: str, *, run_migrations: bool = True) -> Engine:
    engine = create_database_engine(url)
    if run_migrations:
        migrate(engine)
    return engine


def empty_tables(engine: Engine) -> None:
    """Delete every row (TRUNCATE on PostgreSQL) — except the audit trail, which the database
    keeps append-only: its chain simply continues. For test and simulation resets only."""
    kept = {tables.audit_records.name, tables.audit_head.name}
    emptied = [table for table in tables.metadata.sorted_tables if table.name not in kept]
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            names = ", ".join(f'"{table.name}"' for table in emptied)
            connection.exec_driver_sql(f"TRUNCATE {names} CASCADE")
        else:
            for table in reversed(emptied):
                connection.execute(table.delete())


def conninfo(url: str | URL) -> str:
    """The libpq connection string for an SQLAlchemy PostgreSQL URL (driver name dropped)."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)
