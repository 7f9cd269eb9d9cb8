"""What every repository does with columns: timestamps and JSON in and out, bounded pages, and
an ``INSERT … ON CONFLICT`` for either dialect."""

from __future__ import annotations

from datetime import datetime

import orjson
from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import format_timestamp

PAGE_LIMIT_MAX = 1000


def check_page(offset: int, limit: int) -> None:
    """Refuse a page that is unbounded or starts before the first row."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise InvalidInputError(f"limit must be an integer, got {limit!r}")
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise InvalidInputError(f"offset must be an integer, got {offset!r}")
    if not 1 <= limit <= PAGE_LIMIT_MAX:
        raise InvalidInputError(f"limit must be between 1 and {PAGE_LIMIT_MAX}, got {limit}")
    if offset < 0:
        raise InvalidInputError(f"offset must not be negative, got {offset}")


def ts(value: datetime | None) -> str | None:
    """A timestamp column's text (None stays None)."""
    return format_timestamp(value) if value is not None else None


def time_of(text: str) -> datetime:
    """A timestamp this DB wrote (canonical RFC 3339 with ``Z``)."""
    return datetime.fromisoformat(text)


def optional_time(text: str | None) -> datetime | None:
    return time_of(text) if text is not None else None


def to_json(value: object) -> str:
    """A JSON column's text, keys sorted; decimals and anything else without a JSON form are
    kept as their text."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS, default=str).decode()


def is_postgresql(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def insert_for(connection: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT that can skip or merge rows whose key exists (both dialects spell it the same
    way: ``ON CONFLICT``)."""
    if is_postgresql(connection):
        return postgresql.insert(table)
    return sqlite.insert(table)
