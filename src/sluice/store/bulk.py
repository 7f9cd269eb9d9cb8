"""The driver's ``executemany`` and plain row reads for the hot paths, in the caller's transaction.

The hot write paths (ingestion's audit records and usage rows) insert thousands of rows a batch.
SQLAlchemy Core spends more time building each row's parameters than the driver spends writing
it, so these rows are handed to the driver as tuples, in the order of the columns named, with the
values already in the form the column stores (see :func:`money_value`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from functools import cache
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Dialect, Executable, Table
from sqlalchemy.sql.compiler import SQLCompiler

from sluice.domain.amounts import format_amount

# sqlite3 binds a value of a type it has no adapter for (None among them) only after looking for
# ``__adapt__`` and ``__conform__`` on it, which costs more than binding the rest of a row; an
# adapter registered for None (an empty dictionary's ``get`` returns None for any key, without a
# Python frame) is found in one dictionary look-up, and None is still bound as NULL. Registering
# one for a type other than int, float, str and bytearray leaves the binding of those unchanged.
_NOTHING: dict[object, None] = {}
sqlite3.register_adapter(type(None), _NOTHING.get)

_PLACEHOLDER = {"qmark": "?", "format": "%s", "pyformat": "%s", "numeric": ":{}"}


def positional(dialect: Dialect) -> str:
    """The driver's positional placeholder on ``dialect`` (``?`` for sqlite3, ``%s`` for psycopg),
    for statement texts built once per dialect and run with ``exec_driver_sql``."""
    placeholder = _PLACEHOLDER[dialect.paramstyle]
    assert "{}" not in placeholder, "positional placeholders only"
    return placeholder


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


def money_read(value: Any) -> Decimal:
    """A Money column's value as the driver returns it (text on SQLite), read as the column
    reads it: the other way of :func:`money_value`."""
    return value if type(value) is Decimal else Decimal(value)


def select_rows(
    connection: Connection, statement: Executable, parameters: Mapping[str, object]
) -> Sequence[Sequence[Any]]:
    """The rows of a prebuilt ``statement`` (no expanding parameters) as the driver returns them:
    no result processing, so a Money column comes back as the driver gives it (text on SQLite)."""
    compiled = _compiled(connection.dialect, statement)
    values = compiled.construct_params(dict(parameters))  # with the statement's own binds
    if compiled.positiontup is None:
        return connection.exec_driver_sql(compiled.string, values).all()
    positional = tuple(values[name] for name in compiled.positiontup)
    return connection.exec_driver_sql(compiled.string, positional).all()


def select_in(
    connection: Connection,
    table: Table,
    columns: Sequence[str],
    key: str,
    values: Iterable[object],
    *,
    chunk: int = 500,
    for_update: bool = False,
) -> list[Sequence[Any]]:
    """``SELECT columns FROM table WHERE key IN (values)`` as the driver returns the rows (no
    result processing, see :func:`select_rows`), at most ``chunk`` values a statement (the last
    one :func:`padded`). ``for_update``: the rows are locked while read (``FOR UPDATE`` on
    PostgreSQL; SQLite's transactions hold the database already), in the order of ``key``, so
    that two writers take their locks in one order and never wait on each other.

    For the batch lookups of ingestion: SQLAlchemy renders an expanding ``IN`` anew for every
    execution and processes every row, which costs more than the query itself."""
    found: list[Sequence[Any]] = []
    pending = list(values)
    names = tuple(columns)
    for start in range(0, len(pending), chunk):
        part = padded(pending[start : start + chunk], chunk)
        sql = _select_in_statement(
            connection.dialect, table.name, names, key, len(part), for_update
        )
        found.extend(connection.exec_driver_sql(sql, part).all())
    return found


def has_rows(connection: Connection, table: Table) -> bool:
    """Whether ``table`` holds a row at all: one row's look-up."""
    sql = _any_row_statement(connection.dialect, table.name)
    return connection.exec_driver_sql(sql).first() is not None


@cache
def _any_row_statement(dialect: Dialect, table: str) -> str:
    return f"SELECT 1 FROM {dialect.identifier_preparer.quote(table)} LIMIT 1"


def update_row(
    connection: Connection,
    table: Table,
    columns: Sequence[str],
    key: str,
    values: tuple[object, ...],
) -> int:
    """``UPDATE table SET columns WHERE key = …``, ``values`` the columns' new values and then
    the key's; returns the driver's count of the rows it matched."""
    sql = _update_statement(connection.dialect, table.name, tuple(columns), key)
    return connection.exec_driver_sql(sql, values).rowcount


@cache
def _update_statement(dialect: Dialect, table: str, columns: tuple[str, ...], key: str) -> str:
    quote = dialect.identifier_preparer.quote
    mark = positional(dialect)
    assignments = ", ".join(f"{quote(column)} = {mark}" for column in columns)
    return f"UPDATE {quote(table)} SET {assignments} WHERE {quote(key)} = {mark}"


def padded_size(count: int, limit: int) -> int:
    """How many values a statement for ``count`` of them (at most ``limit``) takes: the next
    power of two, or ``limit``. A batch's last chunk has any size; padded, its statement's text
    recurs across batches, and the driver prepares it once instead of once a batch (preparing an
    ``IN`` list of hundreds costs more than running it)."""
    assert 0 < count <= limit, f"{count} values for statements of at most {limit}"
    return min(1 << (count - 1).bit_length(), limit)


def padded(values: Sequence[Any], limit: int) -> tuple[Any, ...]:
    """``values`` (at least one, at most ``limit``) with the last repeated up to
    :func:`padded_size`: for an ``IN`` list, where a value listed twice matches the same rows."""
    missing = padded_size(len(values), limit) - len(values)
    return (*values, *[values[-1]] * missing)


def statement_sizes(count: int, limit: int) -> Iterator[int]:
    """Split ``count`` rows into statements of ``limit`` rows and then powers of two (largest
    first), so the multi-row statements' texts recur across batches (see :func:`padded_size`)."""
    while count >= limit:
        yield limit
        count -= limit
    while count:
        size = 1 << (count.bit_length() - 1)
        yield size
        count -= size


@cache
def _select_in_statement(
    dialect: Dialect,
    table: str,
    columns: tuple[str, ...],
    key: str,
    count: int,
    for_update: bool,
) -> str:
    quote = dialect.identifier_preparer.quote
    names = ", ".join(quote(column) for column in columns)
    marks = ", ".join([positional(dialect)] * count)
    sql = f"SELECT {names} FROM {quote(table)} WHERE {quote(key)} IN ({marks})"
    if for_update:
        sql += f" ORDER BY {quote(key)}{for_update_clause(dialect)}"
    return sql


def for_update_clause(dialect: Dialect) -> str:
    """`` FOR UPDATE`` where the database has row locks (PostgreSQL), else nothing, as SQLAlchemy
    renders ``with_for_update()``: SQLite's transactions begin ``IMMEDIATE`` and hold the
    database already."""
    return " FOR UPDATE" if dialect.name == "postgresql" else ""


@cache
def _compiled(dialect: Dialect, statement: Executable) -> SQLCompiler:
    compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    assert isinstance(compiled, SQLCompiler), "a select compiles to SQL"
    return compiled


def execute_many(
    connection: Connection, statement: Executable, rows: Sequence[Mapping[str, object]]
) -> None:
    """A prebuilt ``statement`` once per row of parameters, one ``executemany`` of the driver
    (the values already in the form the columns store, see :func:`money_value`)."""
    if not rows:
        return
    compiled = _compiled(connection.dialect, statement)
    names = compiled.positiontup
    if names is None:
        connection.exec_driver_sql(compiled.string, [dict(row) for row in rows])
    elif len(names) == 1:
        (name,) = names
        connection.exec_driver_sql(compiled.string, [(row[name],) for row in rows])
    else:
        # (an itemgetter of two names or more gives the tuple itself, without a generator a row)
        values = itemgetter(*names)
        connection.exec_driver_sql(compiled.string, [values(row) for row in rows])


def insert_new_rows(
    connection: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[tuple[object, ...]],
    key: str,
) -> set[object]:
    """Insert ``rows``, skipping those whose ``key`` (a unique column, one of ``columns``) is
    already taken; returns the keys of the rows that went in. Multi-row statements of at most
    :data:`ROWS_PER_STATEMENT` rows (sizes from :func:`statement_sizes`)."""
    inserted: set[object] = set()
    start = 0
    for size in statement_sizes(len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + size]
        start += size
        sql = _insert_new_statement(connection.dialect, table.name, tuple(columns), key, size)
        values = tuple(value for row in chunk for value in row)
        inserted.update(row[0] for row in connection.exec_driver_sql(sql, values))
    return inserted


ROWS_PER_STATEMENT = 500  # well under SQLite's limit on bound values in one statement


def insert_if_all_new(
    connection: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[tuple[object, ...]],
    key: str,
) -> bool:
    """Insert ``rows`` if no ``key`` of theirs (a unique column, one of ``columns``) is taken or
    repeated among them; returns whether they went in (if not, none did). For SQLite, where a
    row a time through ``executemany`` costs about half a multi-row statement with ``RETURNING``
    (:func:`insert_new_rows`, which a caller runs when this returns False): the rows go in
    within a savepoint, rolled back unless the driver counts every row as inserted. A single row
    needs no savepoint: it either went in or nothing did."""
    assert connection.dialect.name == "sqlite", "the driver's row count of an executemany"
    if not rows:
        return True
    sql = _insert_new_statement(connection.dialect, table.name, tuple(columns), key, 1)
    sql = sql.removesuffix(f" RETURNING {connection.dialect.identifier_preparer.quote(key)}")
    if len(rows) == 1:
        return connection.exec_driver_sql(sql, rows[0]).rowcount == 1
    savepoint = connection.begin_nested()
    if connection.exec_driver_sql(sql, list(rows)).rowcount == len(rows):
        savepoint.commit()
        return True
    savepoint.rollback()
    return False


@cache
def _insert_new_statement(
    dialect: Dialect, table: str, columns: tuple[str, ...], key: str, rows: int
) -> str:
    quote = dialect.identifier_preparer.quote
    placeholder = positional(dialect)
    row = "(" + ", ".join([placeholder] * len(columns)) + ")"
    names = ", ".join(quote(column) for column in columns)
    return (
        f"INSERT INTO {quote(table)} ({names}) VALUES {', '.join([row] * rows)} "
        f"ON CONFLICT ({quote(key)}) DO NOTHING RETURNING {quote(key)}"
    )


def bump_counters(
    connection: Connection, table: Table, key: str, counter: str, keys: Sequence[object]
) -> dict[object, int]:
    """Move ``counter`` by one for each of ``keys`` (a row starting at 1 when there is none, in
    the same statement); returns each key's new value. Multi-row statements of at most
    :data:`ROWS_PER_STATEMENT` rows (sizes from :func:`statement_sizes`)."""
    found: dict[object, int] = {}
    unique = sorted(set(keys), key=str)  # sorted: two bumpers lock rows in the same order
    start = 0
    for size in statement_sizes(len(unique), ROWS_PER_STATEMENT):
        chunk = unique[start : start + size]
        start += size
        sql = _bump_statement(connection.dialect, table.name, key, counter, size)
        for name, value in connection.exec_driver_sql(sql, tuple(chunk)):
            found[name] = int(value)
    return found


@cache
def _bump_statement(dialect: Dialect, table: str, key: str, counter: str, rows: int) -> str:
    quote = dialect.identifier_preparer.quote
    placeholder = positional(dialect)
    values = ", ".join([f"({placeholder}, 1)"] * rows)
    name, column = quote(table), quote(counter)
    return (
        f"INSERT INTO {name} ({quote(key)}, {column}) VALUES {values} "
        f"ON CONFLICT ({quote(key)}) DO UPDATE SET {column} = {name}.{column} + 1 "
        f"RETURNING {quote(key)}, {column}"
    )
