"""The statement sizes of the bulk helpers: a batch's last chunk is padded or split into sizes
that recur, so the driver prepares each statement text once."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, MetaData, String, Table, bindparam, create_engine, delete, update

from sluice.store.bulk import (
    execute_many,
    insert_rows,
    padded,
    padded_size,
    statement_sizes,
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
