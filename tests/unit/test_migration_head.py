"""The schema revision sluice checks before handing a database to alembic is alembic's head: a
new migration that forgot to move it would leave databases at the old revision unmigrated."""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from sluice.store.database import HEAD_REVISION, alembic_config, migrate, schema_revision


def test_the_head_revision_is_alembics_head() -> None:
    engine = create_engine("sqlite://")
    scripts = ScriptDirectory.from_config(alembic_config(engine))
    assert scripts.get_heads() == [HEAD_REVISION]


def test_a_fresh_database_is_migrated_to_the_head_and_then_left_alone(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert schema_revision(engine) is None
    migrate(engine)
    assert schema_revision(engine) == HEAD_REVISION
    migrate(engine)  # already there: nothing to do
    assert schema_revision(engine) == HEAD_REVISION
