"""What the compliance repository's parts share: the caller's connection and set-based reads
bounded to ``CHUNK`` ids per statement."""

from __future__ import annotations

from collections.abc import Collection, Iterator

from sqlalchemy import Connection

CHUNK = 500  # bound on the number of parameters in one IN (…) list


def _chunks(items: Collection[str], size: int = CHUNK) -> Iterator[list[str]]:
    # Sorted, so that row locks taken chunk by chunk are taken in one global order.
    ordered = sorted(set(items))
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]


def marks(mark: str, count: int) -> str:
    """``count`` placeholders ``mark`` for an ``IN (…)`` list of SQL text."""
    return ", ".join([mark] * count)


class ComplianceConnection:
    """The caller's connection, read and written in the caller's transaction."""

    def __init__(self, connection: Connection) -> None:
        self._c = connection

    @property
    def _mark(self) -> str:
        """The driver's positional placeholder for SQL text: ``?`` (sqlite3) or ``%s``
        (psycopg, which takes positional ``%s`` as well as its named default)."""
        style = self._c.dialect.paramstyle
        assert style in ("qmark", "format", "pyformat"), style
        return "?" if style == "qmark" else "%s"

    @property
    def _postgresql(self) -> bool:
        return self._c.dialect.name == "postgresql"
