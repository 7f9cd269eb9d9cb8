"""Revision 0015 (customers' other names and the script of the primary name) on a database with
customers from before, on SQLite and PostgreSQL.

* Upgrading keeps every customer; their primary name has no recorded script (NULL) and no other
  names, and every name of every customer is still screened (``names_to_screen``).
* Names added afterwards come back in the order given, after the primary name.
* Going back to 0014 drops the table and the column and keeps the customers; upgrading again
  works.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import command
from sqlalchemy import Engine

from sluice.domain.customer_names import CustomerName
from sluice.domain.ledger import format_timestamp
from sluice.store.compliance_repository import SqlComplianceRepository
from sluice.store.database import alembic_config, create_database_engine
from sluice.store.reference_repository import SqlReferenceRepository

NOW = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
CUSTOMERS_0014 = sa.table("customers", sa.column("id"), sa.column("name"), sa.column("created_at"))


def _to(engine: Engine, revision: str, *, down: bool = False) -> None:
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        if down:
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)


def test_customers_from_before_keep_their_name_and_are_screened_after_the_upgrade(
    database_url: str,
) -> None:
    engine = create_database_engine(database_url)
    try:
        _to(engine, "0014")
        with engine.begin() as connection:
            connection.execute(
                CUSTOMERS_0014.insert(),
                [
                    {"id": "alice", "name": "Alice Example", "created_at": format_timestamp(NOW)},
                    {"id": "bob", "name": "Боб Пример", "created_at": format_timestamp(NOW)},
                ],
            )
        _to(engine, "head")
        with engine.begin() as connection:
            compliance = SqlComplianceRepository(connection)
            assert compliance.names_to_screen() == [
                ("alice", CustomerName("Alice Example", None, primary=True)),
                ("bob", CustomerName("Боб Пример", None, primary=True)),
            ]
            reference = SqlReferenceRepository(connection)
            reference.add_customer_names(
                "bob",
                [CustomerName("Bob Example", "latin"), CustomerName("鲍勃", "han")],
                actor="officer",
                at=NOW,
            )
            reference.add_customer_names(
                "bob", [CustomerName("Bobby", "latin")], actor="officer", at=NOW
            )
            assert reference.customer_names_of("bob") == [
                CustomerName("Боб Пример", None, primary=True),
                CustomerName("Bob Example", "latin"),
                CustomerName("鲍勃", "han"),
                CustomerName("Bobby", "latin"),
            ]
            assert reference.customer_names_of("nobody") is None
            assert [name for customer, name in compliance.names_to_screen()][1:] == (
                reference.customer_names_of("bob")
            )

        _to(engine, "0014", down=True)
        inspector = sa.inspect(engine)
        assert "customer_names" not in inspector.get_table_names()
        assert "name_script" not in {
            column["name"] for column in inspector.get_columns("customers")
        }
        with engine.connect() as connection:
            kept = connection.execute(sa.select(CUSTOMERS_0014.c.id)).scalars().all()
        assert sorted(kept) == ["alice", "bob"]
        _to(engine, "head")
    finally:
        engine.dispose()
