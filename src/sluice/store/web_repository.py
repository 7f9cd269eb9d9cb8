"""The web sessions (``web_sessions``) on SQLAlchemy Core, in the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, insert, or_, select, update

from sluice.ports.web import WebSession
from sluice.store.rows import optional_time, time_of, ts
from sluice.store.web_tables import web_sessions as sessions_t


def _session(row: Any) -> WebSession:
    return WebSession(
        id=row.id,
        principal_id=row.principal_id,
        role=row.role,
        customer_id=row.customer_id,
        csrf=row.csrf,
        client=row.client,
        created_at=time_of(row.created_at),
        last_seen_at=time_of(row.last_seen_at),
        expires_at=time_of(row.expires_at),
        revoked_at=optional_time(row.revoked_at),
    )


class SqlWebSessionRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def add(self, session: WebSession) -> None:
        self._c.execute(
            insert(sessions_t).values(
                id=session.id,
                principal_id=session.principal_id,
                role=session.role,
                customer_id=session.customer_id,
                csrf=session.csrf,
                client=session.client,
                created_at=ts(session.created_at),
                last_seen_at=ts(session.last_seen_at),
                expires_at=ts(session.expires_at),
                revoked_at=ts(session.revoked_at),
            )
        )

    def get(self, session_id: str) -> WebSession | None:
        row = self._c.execute(select(sessions_t).where(sessions_t.c.id == session_id)).first()
        return _session(row) if row is not None else None

    def touch(self, session_id: str, *, last_seen_at: datetime, expires_at: datetime) -> None:
        self._c.execute(
            update(sessions_t)
            .where(sessions_t.c.id == session_id)
            .values(last_seen_at=ts(last_seen_at), expires_at=ts(expires_at))
        )

    def revoke(self, session_id: str, at: datetime) -> bool:
        done = self._c.execute(
            update(sessions_t)
            .where(sessions_t.c.id == session_id, sessions_t.c.revoked_at.is_(None))
            .values(revoked_at=ts(at))
        )
        return bool(done.rowcount)

    def revoke_principal(self, principal_id: str, at: datetime) -> int:
        done = self._c.execute(
            update(sessions_t)
            .where(sessions_t.c.principal_id == principal_id, sessions_t.c.revoked_at.is_(None))
            .values(revoked_at=ts(at))
        )
        return int(done.rowcount)

    def purge(self, before: datetime) -> int:
        """Delete sessions expired or revoked before ``before``."""
        cut = ts(before)
        done = self._c.execute(
            delete(sessions_t).where(
                or_(sessions_t.c.expires_at < cut, sessions_t.c.revoked_at < cut)
            )
        )
        return int(done.rowcount)
