"""Many rows into one table through the driver's ``executemany``, in the caller's transaction.

The hot write paths (ingestion's audit records and usage rows) insert thousands of rows a batch.
SQLAlchemy Core spends more time building each row's parameters than the driver spends writing
it, so these rows are handed to the driver as tuples, in the order of the columns named, with the
values already in the form the column stores (see :func:`money_value`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import cache

from sqlalchemy import Connection, Dialect, Table

from sluice.domain.amounts import format_amount

_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s", "numeric": ":{}"}


def insert_rows(
    connection: Connection, table: Table, columns: Sequence[str], rows: Sequence[tuple[object, ...]]
) -> None:
    """``INSERT INTO table (columns) VALUES (…)`` once per row, one ``executemany``."""
    if rows:
        sql = _insert_statement(connection.dialect, table.name, tuple(columns))
        connection.exec_driver_sql(sql, list(rows))


@cache
def _insert_statement(dialect: Dialect, table: str, columns: tuple[str, ...]) -> str:
    quote = dialect.identifier_preparer.quote
    placeholder = _PLACEHOLDER[dialect.paramstyle]
    marks = ", ".join(placeholder.format(i + 1) for i in range(len(columns)))
    names = ", ".join(quote(column) for column in columns)
    return f"INSERT INTO {quote(table)} ({names}) VALUES ({marks})"


def money_value(connection: Connection) -> Callable[[Decimal], object]:
    """How a Money column stores an amount on this connection's database (text on SQLite)."""
    if connection.dialect.name == "sqlite":
        return format_amount
    return _same


def _same(value: Decimal) -> object:
    return value
