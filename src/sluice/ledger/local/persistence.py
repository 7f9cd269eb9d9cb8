"""Where the embedded ledger keeps its history: nowhere (memory) or a SQLite file.

The ledger is persisted as a *journal*: every state-changing event (a node added, a party
allocated, an instrument or policy set, the clock moved, a committed update's record, a
checkpoint, a rejected command, a node restored or upgraded) is appended in order, and opening the
file replays the journal through the same code that produced it. The result is exactly the state
the writer had: parties, contracts, per-node offsets, updates, completions.

Writes are batched: entries are buffered and written in one SQLite transaction every
``batch_size`` entries, and on :meth:`SqliteJournal.flush` / :meth:`SqliteJournal.close`. A crash of
the writing process therefore loses at most the last unflushed batch — acceptable for a test bed
and demo engine, and the reason the ledger exposes ``flush()``. Only one process may write a file;
others may open it to read and call ``refresh()`` to pick up what the writer flushed since.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Protocol

FORMAT_VERSION = "1"
BATCH_SIZE_DEFAULT = 2000


class Journal(Protocol):
    def append(self, kind: str, body: str) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def entries(self, after_sequence: int = 0) -> Iterator[tuple[int, str, str]]:
        """(sequence, kind, body) of flushed entries with a greater sequence, in order."""
        ...

    def settings(self) -> str | None: ...

    def save_settings(self, text: str) -> None: ...

    @property
    def path(self) -> str | None: ...


class MemoryJournal:
    """No persistence: the ledger lives and dies with the process."""

    path: str | None = None

    def append(self, kind: str, body: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def entries(self, after_sequence: int = 0) -> Iterator[tuple[int, str, str]]:
        return iter(())

    def settings(self) -> str | None:
        return None

    def save_settings(self, text: str) -> None:
        pass


class SqliteJournal:
    """The journal in one SQLite file (WAL mode, batched inserts)."""

    def __init__(self, path: str, *, batch_size: int = BATCH_SIZE_DEFAULT) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._path = path
        self._batch_size = batch_size
        self._pending: list[tuple[str, str]] = []
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS journal ("
            " sequence INTEGER PRIMARY KEY, kind TEXT NOT NULL, body TEXT NOT NULL)"
        )
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        row = self._connection.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        if row is None:
            self._connection.execute(
                "INSERT INTO meta (key, value) VALUES ('format', ?)", (FORMAT_VERSION,)
            )
        elif row[0] != FORMAT_VERSION:
            raise ValueError(
                f"{path}: embedded ledger file format {row[0]!r}, expected {FORMAT_VERSION!r}"
            )
        self._closed = False

    @property
    def path(self) -> str | None:
        return self._path

    def append(self, kind: str, body: str) -> None:
        self._pending.append((kind, body))
        if len(self._pending) >= self._batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._pending or self._closed:
            return
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany("INSERT INTO journal (kind, body) VALUES (?, ?)", self._pending)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        self._pending.clear()

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._connection.close()

    def entries(self, after_sequence: int = 0) -> Iterator[tuple[int, str, str]]:
        cursor = self._connection.execute(
            "SELECT sequence, kind, body FROM journal WHERE sequence > ? ORDER BY sequence",
            (after_sequence,),
        )
        while True:
            rows = cursor.fetchmany(1000)
            if not rows:
                return
            yield from rows

    def settings(self) -> str | None:
        row = self._connection.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        return None if row is None else str(row[0])

    def save_settings(self, text: str) -> None:
        self._connection.execute(
            "INSERT INTO meta (key, value) VALUES ('settings', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (text,),
        )
