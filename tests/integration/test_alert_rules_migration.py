"""The alert columns of revision 0011 on a database with alerts from before, on SQLite and
PostgreSQL, and the order the notifier takes alerts in.

* Upgrading marks the alerts raised before as notified (they went to the log when raised) and
  resolves the product alerts acknowledged before (acknowledging one resolves it from now on):
  the notifier sends none of the history, only alerts raised afterwards.
* The partial indexes for unresolved and not-notified alerts exist; going back to 0010 drops
  them with the columns and keeps the alerts; upgrading again works.
* Alerts are notified critical first, newest first, so a backlog cannot delay a new critical one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine

from sluice.domain.deposits import Alert
from sluice.domain.ledger import format_timestamp
from sluice.store.alerts_repository import SqlAlertRepository
from sluice.store.bitcoin_rows import insert_alert
from sluice.store.database import alembic_config, create_database_engine

NOW = datetime(2026, 12, 5, 13, 30, tzinfo=UTC)
INDEXES = {"ix_alerts_unresolved", "ix_alerts_to_notify"}

ALERTS_0010 = sa.table(
    "alerts",
    sa.column("id"),
    sa.column("severity"),
    sa.column("kind"),
    sa.column("message"),
    sa.column("details"),
    sa.column("created_at"),
    sa.column("acknowledged_at"),
)


def _to(engine: Engine, revision: str, *, down: bool = False) -> None:
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        if down:
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)


def _indexes(engine: Engine) -> set[str]:
    return {str(index["name"]) for index in sa.inspect(engine).get_indexes("alerts")}


def _old(alert_id: str, severity: str, *, days: int, acked: int | None = None) -> dict[str, str]:
    created = NOW - timedelta(days=days)
    return {
        "id": alert_id,
        "severity": severity,
        "kind": "suspense",
        "message": alert_id,
        "details": "{}",
        "created_at": format_timestamp(created),
        "acknowledged_at": (
            format_timestamp(created + timedelta(hours=acked)) if acked is not None else None
        ),
    }


def test_upgrading_a_database_with_alerts_notifies_none_of_the_history(
    database_url: str,
) -> None:
    engine = create_database_engine(database_url)
    try:
        _to(engine, "0010")
        with engine.begin() as connection:
            connection.execute(
                ALERTS_0010.insert(),
                [
                    _old("old-acked", "warning", days=300, acked=2),
                    _old("old-open", "critical", days=200),
                ],
            )
        _to(engine, "head")
        assert _indexes(engine) >= INDEXES

        with engine.connect() as connection:
            repo = SqlAlertRepository(connection)
            acked = repo.get("old-acked")
            still_open = repo.get("old-open")
            assert repo.to_notify(max_attempts=12) == []
        assert acked is not None and still_open is not None
        assert acked.notified_at == acked.created_at == NOW - timedelta(days=300)
        assert acked.resolved_at == acked.acknowledged_at == acked.created_at + timedelta(hours=2)
        assert acked.status == "resolved"
        assert still_open.notified_at == still_open.created_at
        assert still_open.resolved_at is None and still_open.status == "open"

        with engine.begin() as connection:  # raised after the upgrade: notified
            insert_alert(
                connection, Alert(id="new", severity="info", kind="dust", message="dust"), NOW
            )
        with engine.connect() as connection:
            assert [r.id for r in SqlAlertRepository(connection).to_notify(max_attempts=12)] == [
                "new"
            ]

        _to(engine, "0010", down=True)
        assert not INDEXES & _indexes(engine)
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT id FROM alerts ORDER BY id")).scalars()
            assert list(rows) == ["new", "old-acked", "old-open"]
            columns = {c["name"] for c in sa.inspect(connection).get_columns("alerts")}
        assert not {"rule", "resolved_at", "notified_at", "notify_attempts"} & columns
        _to(engine, "head")
        assert _indexes(engine) >= INDEXES
        with engine.connect() as connection:
            # Back at head: the alerts are again taken as delivered before the upgrade.
            assert SqlAlertRepository(connection).to_notify(max_attempts=12) == []
    finally:
        engine.dispose()


def test_alerts_are_notified_critical_first_newest_first(database_url: str) -> None:
    engine = create_database_engine(database_url)
    try:
        _to(engine, "head")
        with engine.begin() as connection:
            for n in range(5):  # an older backlog
                insert_alert(
                    connection,
                    Alert(id=f"backlog:{n}", severity="critical", kind="k", message="old"),
                    NOW - timedelta(hours=10 - n),
                )
            insert_alert(connection, Alert(id="w", severity="warning", kind="k", message="w"), NOW)
            insert_alert(connection, Alert(id="i", severity="info", kind="k", message="i"), NOW)
            insert_alert(
                connection,
                Alert(id="fresh", severity="critical", kind="k", message="new"),
                NOW - timedelta(minutes=1),
            )
        with engine.connect() as connection:
            repo = SqlAlertRepository(connection)
            assert [r.id for r in repo.to_notify(max_attempts=12, limit=2)] == [
                "fresh",
                "backlog:4",
            ]
            assert [r.id for r in repo.to_notify(max_attempts=12)] == [
                "fresh",
                "backlog:4",
                "backlog:3",
                "backlog:2",
                "backlog:1",
                "backlog:0",
                "w",
                "i",
            ]
    finally:
        engine.dispose()
