"""The Integration DB of one simulation run: a copy of a migrated, empty SQLite file (the
default), or a database given by URL, emptied first."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory

from sluice import bootstrap
from sluice.store.database import MIGRATIONS, empty_tables

_templates: dict[str, Path] = {}


@functools.cache
def _migration_head() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    return str(head)


def _template() -> Path:
    """A migrated, empty SQLite Integration DB, made once per process and migration head:
    copying it is several times faster than migrating a new file for every run."""
    head = _migration_head()
    path = _templates.get(head)
    if path is None:
        directory = Path(tempfile.mkdtemp(prefix="sluice-sim-template-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        path = directory / f"{head}.db"
        bootstrap.database(f"sqlite:///{path}").dispose()
        _templates[head] = path
    return path


def fast_sqlite(connection: Any, _record: object) -> None:
    """A ``connect`` listener for the run's own SQLite file."""
    # The run's file is thrown away afterwards: durability buys nothing here.
    cursor = connection.cursor()
    cursor.execute("PRAGMA synchronous=OFF")
    cursor.close()


def empty_database(url: str) -> None:
    """Migrate the DB at ``url`` and empty every table (TRUNCATE on PostgreSQL)."""
    database = bootstrap.database(url)
    try:
        empty_tables(database.engine)
    finally:
        database.dispose()


@contextmanager
def database_url(db_url: str | None) -> Iterator[str]:
    """The URL of the run's Integration DB: ``db_url`` emptied, or (None) a fresh SQLite file in
    a temporary directory, deleted afterwards."""
    if db_url is not None:
        empty_database(db_url)
        yield db_url
        return
    directory = Path(tempfile.mkdtemp(prefix="sluice-sim-"))
    try:
        path = directory / "sluice.db"
        shutil.copyfile(_template(), path)
        yield f"sqlite:///{path}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)
