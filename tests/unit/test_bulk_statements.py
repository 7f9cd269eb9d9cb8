"""The statement sizes of the bulk helpers: a batch's last chunk is padded or split into sizes
that recur, so the driver prepares each statement text once."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, MetaData, String, Table, bindparam, create_engine, delete, update
from sqlalchemy.dialects import postgresql, sqlite

from sluice.store.bulk import (
    _select_in_statement,
    execute_many,
    has_rows,
    insert_if_all_new,
    insert_rows,
    padded,
    padded_size,
    select_in,
    statement_sizes,
    update_row,
)


@pytest.mark.parametrize(
    ("count", "limit", "size"),
    [(1, 500, 1), (2, 500, 2), (3, 500, 4), (64, 500, 64), (65, 500, 128), (300, 500, 500)],
)
def test_padded_size_is_the_next_power_of_two_or_the_limit(
    count: int, limit: int, size: int
) -> None:
    assert padded_size(count, limit) == size


def test_padded_repeats_the_last_value() -> None:
    assert padded(["a", "b", "c"], 500) == ("a", "b", "c", "c")
    assert padded(["a", "b"], 500) == ("a", "b")


@pytest.mark.parametrize("count", [0, 1, 7, 270, 499, 500, 501, 1270])
def test_statement_sizes_cover_every_row_in_recurring_sizes(count: int) -> None:
    sizes = list(statement_sizes(count, 500))
    assert sum(sizes) == count
    assert all(size == 500 or size & (size - 1) == 0 for size in sizes)
    assert sizes == sorted(sizes, reverse=True)


def test_execute_many_binds_rows_of_one_or_more_parameters_and_none_as_null() -> None:
    engine = create_engine("sqlite://")
    metadata = MetaData()
    table = Table("t", metadata, Column("k", String, primary_key=True), Column("v", String))
    metadata.create_all(engine)
    with engine.begin() as c:
        insert_rows(c, table, ("k", "v"), [("a", "x"), ("b", "y"), ("c", None)])
        execute_many(
            c,
            update(table).where(table.c.k == bindparam("key")).values(v=bindparam("value")),
            [{"key": "a", "value": None}, {"key": "b", "value": "z"}],
        )
        execute_many(c, delete(table).where(table.c.k == bindparam("key")), [{"key": "c"}])
        rows = c.exec_driver_sql("SELECT k, v, typeof(v) FROM t ORDER BY k").all()
    assert [tuple(row) for row in rows] == [("a", None, "null"), ("b", "z", "text")]


def _table() -> tuple[Table, MetaData]:
    metadata = MetaData()
    table = Table("t", metadata, Column("k", String, primary_key=True), Column("v", String))
    return table, metadata


def test_a_locking_select_in_reads_in_key_order_and_locks_rows_on_postgresql_only() -> None:
    columns = ("k", "v")
    assert _select_in_statement(postgresql.psycopg.dialect(), "t", columns, "k", 2, True) == (
        "SELECT k, v FROM t WHERE k IN (%s, %s) ORDER BY k FOR UPDATE"
    )
    assert _select_in_statement(sqlite.dialect(), "t", columns, "k", 2, True) == (
        "SELECT k, v FROM t WHERE k IN (?, ?) ORDER BY k"
    )
    assert _select_in_statement(sqlite.dialect(), "t", columns, "k", 2, False) == (
        "SELECT k, v FROM t WHERE k IN (?, ?)"
    )


def test_select_in_update_row_and_has_rows() -> None:
    engine = create_engine("sqlite://")
    table, metadata = _table()
    metadata.create_all(engine)
    with engine.begin() as c:
        assert not has_rows(c, table)
        insert_rows(c, table, ("k", "v"), [("b", "y"), ("a", "x"), ("c", None)])
        assert has_rows(c, table)
        assert update_row(c, table, ("v",), "k", ("z", "b")) == 1
        assert update_row(c, table, ("v",), "k", ("z", "missing")) == 0
        found = select_in(c, table, ("k", "v"), "k", ["c", "b", "a"], chunk=2, for_update=True)
    assert [tuple(row) for row in found] == [("b", "z"), ("c", None), ("a", "x")]


@pytest.mark.parametrize("count", [1, 3])
def test_insert_if_all_new_inserts_all_rows_or_none(count: int) -> None:
    engine = create_engine("sqlite://")
    table, metadata = _table()
    metadata.create_all(engine)
    rows = [(f"k{i}", "new") for i in range(count)]
    with engine.begin() as c:
        insert_rows(c, table, ("k", "v"), [(rows[-1][0], "old")])
        assert not insert_if_all_new(c, table, ("k", "v"), rows, key="k")
        assert insert_if_all_new(c, table, ("k", "v"), [("fresh", "new")], key="k")
        assert insert_if_all_new(c, table, ("k", "v"), [("x", "new"), ("y", "new")], key="k")
        assert c.in_transaction() and not c.in_nested_transaction()
        stored = c.exec_driver_sql("SELECT k, v FROM t ORDER BY k").all()
    assert [tuple(row) for row in stored] == [
        ("fresh", "new"),
        (rows[-1][0], "old"),
        ("x", "new"),
        ("y", "new"),
    ]
