"""Shared test fixtures: Integration DBs on SQLite and PostgreSQL, and the reference data.

A test that needs PostgreSQL or ``../shared/reference`` skips with a clear message when it is
missing, except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
PG_ADMIN_URL = os.environ.get(
    "SLUICE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI") == "true"


def missing(what: str) -> None:
    """Skip (or fail under CI) a test whose outside requirement is absent."""
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but missing")
    pytest.skip(f"{what} is not available here")


def reference_path(*parts: str) -> Path:
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        missing(f"reference data {path}")
    return path


_pg_checked: bool | None = None


def postgres_available() -> bool:
    global _pg_checked
    if _pg_checked is None:
        try:
            engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
            with engine.connect():
                pass
            engine.dispose()
            _pg_checked = True
        except sa.exc.OperationalError:
            _pg_checked = False
    return _pg_checked


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    if not postgres_available():
        missing(f"PostgreSQL at {PG_ADMIN_URL}")
    name = f"sluice_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sluice.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The Integration DB on each engine sluice supports."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sluice.db'}"
    else:
        yield request.getfixturevalue("postgres_url")
