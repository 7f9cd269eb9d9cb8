"""The lock that makes one process the ingestion writer for a (treasury party, node)."""

from __future__ import annotations

from typing import Protocol


class WriterLockError(Exception):
    """The lock's own session could not be reached (the database is down or refused it)."""


class WriterLock(Protocol):
    """Which process writes ingestion's results for one (treasury party, node): the one that
    holds this lock. It lives on a session (or an open file) of its own, never inside a unit of
    work, and the writer keeps it for its life; a standby holds nothing while it waits."""

    def try_acquire(self) -> bool:
        """Take the lock if it is free, without waiting; True when it is held (also when it was
        already). Raises :class:`WriterLockError` when the lock's session cannot be opened."""
        ...

    def held(self) -> bool:
        """Whether the lock is still ours, checked on its session: False once that session
        broke (the database restarted, the connection was cut) or the lock file was replaced."""
        ...

    def holder(self) -> str | None:
        """Who holds the lock, as far as can be told (e.g. ``pid 4711 on host-a``), or None."""
        ...

    def release(self) -> None:
        """Let go of the lock and close its session; :meth:`try_acquire` may be called again."""
        ...
