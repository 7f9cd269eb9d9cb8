"""The events relay's lock: one relay publishes an ordering key's rows at a time.

The ingestion writer lock's machinery (:mod:`sluice.store.writer_lock`) with keys of its own: a
session-level advisory lock on PostgreSQL (a session of its own, named ``sluice-relay pid=…
host=…``), ``flock`` on a lock file next to an SQLite file, nothing for in-memory SQLite.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import Engine

from sluice.ports import WriterLock, WriterLockError
from sluice.store.writer_lock import FileWriterLock, NoWriterLock, PgWriterLock, _identity

APPLICATION_PREFIX = "sluice-relay"


def relay_lock_name(ordering_key: str) -> str:
    return f"events-relay:{ordering_key}"


def relay_lock_key(ordering_key: str) -> int:
    """The advisory lock key of an ordering key's relay: a signed 64-bit hash, the same in every
    process and release (and never an ingestion lock's)."""
    digest = hashlib.sha256(f"sluice {relay_lock_name(ordering_key)}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def relay_lock(engine: Engine, ordering_key: str) -> WriterLock:
    """The lock that makes one relay the publisher of ``ordering_key``'s rows."""
    url = engine.url
    name = relay_lock_name(ordering_key)
    if url.get_backend_name() == "postgresql":
        lock = PgWriterLock(url.render_as_string(hide_password=False), name)
        lock.key = relay_lock_key(ordering_key)
        pid, host = _identity()
        lock.application_name = f"{APPLICATION_PREFIX} pid={pid} host={host}"[:63]
        return lock
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database and database != ":memory:":
        if database.startswith("file:"):
            raise WriterLockError(f"cannot place a lock file next to an SQLite URI: {database}")
        path = Path(database).resolve()
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        return FileWriterLock(path.with_name(f"{path.name}.relay-{digest}.lock"))
    return NoWriterLock()
