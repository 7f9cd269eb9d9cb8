"""The ingestion writer's lock (:class:`sluice.ports.WriterLock`) for each engine.

One process writes ingestion's results per (treasury party, node); a second one waits as a hot
standby. What decides it:

* **PostgreSQL**: a session-level advisory lock, keyed by a stable hash of the pair's connection
  name, taken on a connection of its own (psycopg, autocommit, never from the engine's pool) and
  named ``sluice-ingestion pid=… host=…`` in ``pg_stat_activity`` so a standby can say who holds
  it. The server releases it when that session ends, however the process died; TCP keepalives
  and a user timeout make a vanished peer end the session within seconds.
* **SQLite (a file)**: ``fcntl.flock`` on a lock file next to the DB file, one per pair; the
  kernel releases it when the process dies. The holder writes its pid and host into the file.
* **SQLite in memory**: only the process itself can reach the DB, so there is nothing to decide.

Waiting is polling :meth:`try_acquire` (never a blocking call), so a standby holds no open
statement or transaction, and stopping it is immediate.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
from pathlib import Path

import psycopg
from sqlalchemy import Engine

from sluice.ports import WriterLock, WriterLockError
from sluice.store.database import conninfo

APPLICATION_PREFIX = "sluice-ingestion"
CONNECT_TIMEOUT_S = 10
# A lock session whose server vanished ends within about idle + interval * count seconds, and a
# statement waiting on a dead peer gives up after the user timeout.
KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_MS = 15_000
STATEMENT_TIMEOUT_MS = 10_000


def lock_key(connection: str) -> int:
    """The advisory lock key of an ingestion connection: a signed 64-bit hash, the same in
    every process and release."""
    digest = hashlib.sha256(f"sluice ingestion\0{connection}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _identity() -> tuple[int, str]:
    return os.getpid(), socket.gethostname()


def describe_holder(text: str) -> str | None:
    """``pid 4711 on host-a`` from ``… pid=4711 host=host-a`` (an application name or a lock
    file's content), or None if the text does not say."""
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    pid = fields.get("pid")
    if not pid:
        return None
    host = fields.get("host")
    return f"pid {pid} on {host}" if host else f"pid {pid}"


class PgWriterLock:
    """A session-level advisory lock on a PostgreSQL connection of its own."""

    def __init__(self, url: str, connection: str) -> None:
        self._conninfo = conninfo(url)
        self.connection = connection
        self.key = lock_key(connection)
        pid, host = _identity()
        # application_name is cut at 63 bytes by the server: pid first, the host may be cut.
        self.application_name = f"{APPLICATION_PREFIX} pid={pid} host={host}"[:63]
        self._session: psycopg.Connection[tuple[object, ...]] | None = None
        self._held = False

    def _open(self) -> psycopg.Connection[tuple[object, ...]]:
        if self._session is None or self._session.closed:
            try:
                self._session = psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    application_name=self.application_name,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    keepalives=1,
                    keepalives_idle=KEEPALIVE_IDLE_S,
                    keepalives_interval=KEEPALIVE_INTERVAL_S,
                    keepalives_count=KEEPALIVE_COUNT,
                    tcp_user_timeout=TCP_USER_TIMEOUT_MS,
                    options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                )
            except psycopg.Error as exc:
                raise WriterLockError(f"cannot open the ingestion lock's session: {exc}") from exc
            self._held = False
        return self._session

    def try_acquire(self) -> bool:
        if self._held and self.held():
            return True
        session = self._open()
        try:
            row = session.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        except psycopg.Error as exc:
            self._discard()
            raise WriterLockError(f"cannot take the ingestion lock: {exc}") from exc
        self._held = bool(row and row[0])
        return self._held

    def held(self) -> bool:
        """Asks the server whether this session holds the lock (a broken session does not)."""
        session = self._session
        if not self._held or session is None or session.closed:
            return False
        high, low = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
        try:
            row = session.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND pid = pg_backend_pid() AND objsubid = 1"
                " AND classid::text::bigint = %s AND objid::text::bigint = %s",
                (high, low),
            ).fetchone()
        except psycopg.Error:
            self._discard()
            return False
        self._held = bool(row and row[0])
        return self._held

    def holder(self) -> str | None:
        high, low = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
        try:
            row = (
                self._open()
                .execute(
                    "SELECT a.application_name, l.pid FROM pg_locks l"
                    " JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
                    " AND l.classid::text::bigint = %s AND l.objid::text::bigint = %s"
                    " AND l.database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())",
                    (high, low),
                )
                .fetchone()
            )
        except (psycopg.Error, WriterLockError):
            return None
        if row is None:
            return None
        name, backend = str(row[0] or ""), row[1]
        known = describe_holder(name) if name.startswith(APPLICATION_PREFIX) else None
        return known or f"PostgreSQL backend {backend} ({name or 'no application name'})"

    def release(self) -> None:
        # Unlock first: the server drops a closed session's locks only once its backend has
        # gone, a moment after the close returns, and a standby asking in between would be
        # refused. A session that cannot be reached is closed all the same, and its lock goes
        # with it.
        session = self._session
        if session is not None and self._held:
            with contextlib.suppress(psycopg.Error):
                session.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        self._discard()

    def _discard(self) -> None:
        session, self._session, self._held = self._session, None, False
        if session is not None:
            # A close that fails leaves the session gone either way, and its lock with it.
            with contextlib.suppress(psycopg.Error):
                session.close()


class FileWriterLock:
    """``fcntl.flock`` on a lock file; the holder's pid and host are written into it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None and self.held():
            return True
        self.release()
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WriterLockError(f"cannot open the lock file {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError as exc:
            os.close(fd)
            raise WriterLockError(f"cannot lock {self.path}: {exc}") from exc
        pid, host = _identity()
        # Written over the previous holder's line, then cut to length: a standby reading it
        # meanwhile never sees an empty file.
        written = os.pwrite(fd, f"pid={pid} host={host}\n".encode(), 0)
        os.ftruncate(fd, written)
        self._fd = fd
        return True

    def held(self) -> bool:
        """Ours while the path still names the file we locked (a deleted or replaced lock file
        would let another process lock a new one)."""
        if self._fd is None:
            return False
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            return False

    def holder(self) -> str | None:
        try:
            return describe_holder(self.path.read_text(errors="replace"))
        except OSError:
            return None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor of the open file drops the flock


class NoWriterLock:
    """In-memory SQLite: the DB lives in this process, so no other process can write it."""

    def __init__(self) -> None:
        self._held = False

    def try_acquire(self) -> bool:
        self._held = True
        return True

    def held(self) -> bool:
        return self._held

    def holder(self) -> str | None:
        return None

    def release(self) -> None:
        self._held = False


def lock_file_path(database: Path, connection: str) -> Path:
    """Next to the DB file, one per (party, node): ``<db>.ingestion-<hash>.lock``."""
    digest = hashlib.sha256(connection.encode()).hexdigest()[:16]
    return database.with_name(f"{database.name}.ingestion-{digest}.lock")


def writer_lock(engine: Engine, connection: str) -> WriterLock:
    """The ingestion writer's lock for ``connection`` (party@node) on the DB of ``engine``."""
    url = engine.url
    if url.get_backend_name() == "postgresql":
        return PgWriterLock(url.render_as_string(hide_password=False), connection)
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database and database != ":memory:":
        if database.startswith("file:"):
            raise WriterLockError(f"cannot place a lock file next to an SQLite URI: {database}")
        return FileWriterLock(lock_file_path(Path(database).resolve(), connection))
    return NoWriterLock()
