"""The web sessions' table (migration 0014) and repository on SQLite and PostgreSQL: the
migration creates the table as declared; a session is added, found by its id, touched, revoked
(once), revoked with every other session of its principal, and purged once expired."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sluice.ports.web import WebSession
from sluice.store.database import open_database
from sluice.store.unit_of_work import SqlUnitOfWork
from tests.schema_check import schema_differences

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


def _session(number: int, principal: str = "key:abc") -> WebSession:
    return WebSession(
        id=f"{number:064x}",
        principal_id=principal,
        role="operator",
        customer_id=None,
        csrf="c" * 43,
        client="127.0.0.1",
        created_at=NOW,
        last_seen_at=NOW,
        expires_at=NOW + timedelta(minutes=15),
    )


def test_migration_0014_creates_the_web_sessions_table_as_declared(database_url: str) -> None:
    assert schema_differences(database_url, "web_sessions") == []


def test_sessions_are_added_found_touched_revoked_and_purged(database_url: str) -> None:
    engine = open_database(database_url)
    try:
        with SqlUnitOfWork(engine) as uow:
            for number, principal in ((1, "key:abc"), (2, "key:abc"), (3, "key:other")):
                uow.web_sessions.add(_session(number, principal))
            uow.commit()
        with SqlUnitOfWork(engine) as uow:
            found = uow.web_sessions.get(f"{1:064x}")
            assert found == _session(1)
            assert found is not None and found.live(NOW) and not found.live(found.expires_at)
            assert uow.web_sessions.get("0" * 63 + "f") is None
            later = NOW + timedelta(minutes=5)
            uow.web_sessions.touch(found.id, last_seen_at=later, expires_at=later + timedelta(1))
            assert uow.web_sessions.revoke(found.id, later)
            assert not uow.web_sessions.revoke(found.id, later)  # once
            assert uow.web_sessions.revoke_principal("key:abc", later) == 1
            uow.commit()
        with SqlUnitOfWork(engine) as uow:
            first = uow.web_sessions.get(f"{1:064x}")
            assert first is not None and first.revoked_at is not None
            assert first.last_seen_at == NOW + timedelta(minutes=5)
            assert not first.live(NOW)
            other = uow.web_sessions.get(f"{3:064x}")
            assert other is not None and other.live(NOW)
            assert uow.web_sessions.purge(NOW + timedelta(days=3)) == 3
            uow.commit()
    finally:
        engine.dispose()
