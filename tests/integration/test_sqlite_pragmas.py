"""The SQLite settings every connection gets (``store/database.py``): 8 KiB pages for a new
database, a file made with other pages kept as it is, and the WAL checkpointed at about 40 MiB in
the file's own pages, with full durability."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sluice.store.database import WAL_CHECKPOINT_BYTES, open_database


def pragmas(engine_url: str) -> dict[str, object]:
    engine = open_database(engine_url)
    try:
        with engine.connect() as connection:
            return {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("page_size", "wal_autocheckpoint", "journal_mode", "synchronous")
            }
    finally:
        engine.dispose()


def test_a_new_database_has_8_kib_pages_and_a_40_mib_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    settings = pragmas(f"sqlite:///{path}")
    assert settings == {
        "page_size": 8192,
        "wal_autocheckpoint": WAL_CHECKPOINT_BYTES // 8192,
        "journal_mode": "wal",
        "synchronous": 2,  # FULL
    }
    # The size is the file's own: a plain connection reads it from the header.
    with sqlite3.connect(path) as plain:
        assert plain.execute("PRAGMA page_size").fetchone()[0] == 8192


def test_a_database_made_with_4_kib_pages_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as plain:
        plain.execute("PRAGMA page_size=4096")
        plain.execute("PRAGMA journal_mode=WAL")
        plain.execute("CREATE TABLE made_before (id INTEGER PRIMARY KEY)")
    settings = pragmas(f"sqlite:///{path}")
    assert settings["page_size"] == 4096
    assert settings["wal_autocheckpoint"] == WAL_CHECKPOINT_BYTES // 4096 == 10240
    with sqlite3.connect(path) as plain:
        tables = {row[0] for row in plain.execute("SELECT name FROM sqlite_master")}
    assert {"made_before", "alembic_version"} <= tables  # migrated in place, not remade
